"""Every exception vitlab raises on purpose, in one module that imports nothing of vitlab's.

Why one module: a layer that raises an error and a layer that catches it (the command line, the
checkpoint reader, the data loaders) can then both import it without importing each other (this is what
removed the ``config`` <-> ``utils.secrets`` import cycle), and a newcomer finds every error in one place:
every module imports them from here.

A user's mistake is an error of vitlab's own that derives from ``ValueError`` (each message names the key or
file and the fix); ``vitlab.tasks.user_error`` recognises it by that and prints it as :class:`UserError`,
without a stack trace. Anything else is a bug, or a fault the run reports in its own words.
"""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """A user's mistake (a wrong config value, a missing file, a busy run directory) on the command line: Hydra
    prints its message alone, without a stack trace (``HYDRA_FULL_ERROR=1`` shows the full chain)."""


# ---- configuration -----------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what was expected."""


class DataConfigError(ConfigError):
    """A data config asks for something the data cannot give."""


class ModelConfigError(ConfigError):
    """A model config names something that does not exist or does not fit together."""


class OptimConfigError(ConfigError):
    """An optim config asks for an optimiser or schedule vitlab does not have, or one that does not fit the run."""


class BenchConfigError(ValueError):
    """A bench config asks for something that cannot run; the message names the key."""


class PackError(ConfigError):
    """A pack command that must not run as given (where it would write, what it would overwrite)."""


class ResumeError(ConfigError):
    """A resume was asked for and cannot be done as asked."""


class RunDirBusyError(ConfigError):
    """Another live process owns this run (or sweep) directory."""


class PaperKeyError(KeyError):
    """A lookup the paper has no number for; the message lists what the table does have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# ---- files from others: datasets, pretrained weights, W&B run files ----------------------------------------
class DatasetNotFoundError(FileNotFoundError):
    """The dataset root (or a file the layout needs) is not there; the message shows the expected layout."""


class DatasetFormatError(ValueError):
    """A file of the dataset is there but does not read as the format says (the message names file and line)."""


class CorruptImageError(RuntimeError):
    """An image file cannot be decoded; the message names the file."""


class RefusedImageError(CorruptImageError):
    """An image file refused before decoding: not a regular file, or over ``data.max_file_bytes`` /
    ``data.max_image_pixels``. A :class:`CorruptImageError`, so ``data.skip_corrupt`` skips it too."""


class UnsafeArchiveError(DatasetFormatError):
    """An archive member would be written outside the extraction folder."""


class PackedDataError(DatasetFormatError):
    """A pack folder is incomplete, damaged, or was written for something else; the message says which."""


class PretrainedError(ValueError):
    """A pretrained checkpoint cannot be read, or does not fit the model; the message names the file."""


class PretrainedMismatchError(PretrainedError):
    """The checkpoint is of another architecture than the model (width, depth, patch, ...)."""


class WandbFileError(ValueError):
    """A ``.wandb`` file is not a W&B transaction log, or is truncated/corrupt; the message names the file."""


class ReportError(ValueError):
    """Nothing to report, or a run that cannot be read; the message names the path and what was expected."""


class NotAViTError(ValueError):
    """The model has no ViT parts to inspect (e.g. a BiT ResNet); the message says which part is missing."""


# ---- faults during a run -----------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients are NaN/inf; the message names the step, the batch and the last good checkpoint."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoints are untouched."""
