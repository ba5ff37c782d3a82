"""The run-assembly layer: every task gets its objects here, and no task imports another.

- :mod:`vitlab.runs.read`: read a finished run back from its checkpoint (``read_run``, ``load_run``), with one
  precedence for every value: command line > checkpoint > vitlab's config defaults.
- :mod:`vitlab.runs.assemble`: build a job's objects from a composed config, by name as lightning-hydra-template's
  ``train()`` does: a training run (``assemble``: data, objective, stats, callbacks, loggers, trainer) or an
  evaluation (``assemble_evaluation``: a checkpoint's module and data, loggers, trainer).
- :mod:`vitlab.runs.resume`: where a training run resumes from (``resolve_resume``), its checkpoint checked first.
"""

from vitlab.runs.read import (
    CODE_KEYS,
    CONFIG_SECTIONS,
    HYDRA_CONTROL_KEYS,
    OBJECTIVES,
    Run,
    _data_group,
    check_checkpoint,
    checkpoint_config,
    data_groups,
    load_checkpoint,
    load_run,
    objective_class,
    read_run,
    rebuild_data_cfg,
    strip_instructions,
)

__all__ = [
    "CODE_KEYS", "CONFIG_SECTIONS", "HYDRA_CONTROL_KEYS", "OBJECTIVES", "Run", "_data_group", "check_checkpoint",
    "checkpoint_config", "data_groups", "load_checkpoint", "load_run", "objective_class", "read_run",
    "rebuild_data_cfg", "strip_instructions",
]
