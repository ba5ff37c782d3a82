"""A CSV logger that appends to an existing ``metrics.csv`` instead of deleting it.

Lightning's ``CSVLogger`` removes ``metrics.csv`` when its directory is not empty, so a resumed run
(same job directory) would lose the curve of everything before the interruption. This one keeps the
rows and continues the file (rows between the last checkpoint and the kill stay, with their steps).

It also re-reads the file's header before every save. Under ``ddp_spawn`` (trainer=ddp_sim) fit and test
each run in freshly spawned processes whose writer never saw the columns the other wrote; Lightning's writer
then rewrites the file with its own, shorter header and crashes ("dict contains fields not in fieldnames").
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _file_header(self) -> list[str]:
        if not self._fs.isfile(self.metrics_file_path):
            return []
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            return next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:
        self.metrics_keys = sorted(set(self.metrics_keys) | set(self._file_header()))

    def save(self) -> None:
        """Append the buffered rows; rewrite the file first when its header lacks a column (ours or its own)."""
        if not self.metrics:
            return
        file_exists = self._fs.isfile(self.metrics_file_path)
        header = self._file_header() if file_exists else []
        self.metrics_keys = sorted(set(self.metrics_keys) | set(header) | set().union(*self.metrics))
        if file_exists and header != self.metrics_keys:
            self._rewrite_with_new_header(self.metrics_keys)
        with self._fs.open(self.metrics_file_path, mode="a" if file_exists else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            if not file_exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


class CSVLogger(_LightningCSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
