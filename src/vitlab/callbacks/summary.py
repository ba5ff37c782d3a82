"""The model summary printed when fitting starts: Lightning's rich table without its FLOPs column.

Lightning counts FLOPs only when the module defines ``example_input_array`` and prints ``0`` otherwise; vitlab
counts training compute itself (``model/gflops``, ``train/exaflops``: :mod:`vitlab.callbacks.compute`)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)
from rich import get_console
from rich.table import Table


class ModelSummary(RichModelSummary):
    """Layers (name, type, parameters, mode) and the parameter totals; no FLOPs."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        for name, _ in columns[1:]:
            table.add_column(name, justify="left" if name in ("Name", "Type", "Mode") else "right")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"[bold]Params[/]: {get_human_readable_count(int(trainable_parameters))} trainable, "
            f"{get_human_readable_count(int(frozen))} frozen, {get_formatted_model_size(model_size)} MB"
        )
