"""The ``_target_`` of every ``conf/trainer/*.yaml``: ``lightning.Trainer`` plus vitlab's own ``trainer.*`` keys.

vitlab keeps a few switches that users think of as trainer settings under ``trainer.`` (for example
``trainer.skip_nonfinite``, read by the non-finite guard callback through interpolation). They are
dropped here, so every task can ``instantiate(cfg.trainer, ...)`` without knowing about them.
"""

from __future__ import annotations

from typing import Any

import lightning as L

#: trainer.* keys that are vitlab's, not Lightning's
VITLAB_TRAINER_KEYS = ("skip_nonfinite",)


def make_trainer(**kwargs: Any) -> L.Trainer:
    for k in VITLAB_TRAINER_KEYS:
        kwargs.pop(k, None)
    return L.Trainer(**kwargs)
