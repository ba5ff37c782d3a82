"""The one wording of the value checks every object runs on its own arguments (a DataModule its batch size, the
optimiser its lr, the training job its seed), so a wrong number reads the same wherever it is caught.

Bottom layer: imports nothing of vitlab's but :mod:`vitlab.errors`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from vitlab.errors import ConfigError

#: the most classes a head or a dataset may have (ImageNet-21k has 21,843; a typo such as 1e11 would allocate
#: terabytes for the head before anything else is checked)
MAX_CLASSES = 1_000_000
#: the seeds numpy (hence ``lightning.seed_everything``) accepts
SEED_RANGE = (0, 2**32 - 1)


def check_positive(key: str, val: Any, allow_zero: bool = False, optional: bool = False) -> None:
    """A finite number > 0 (``allow_zero``: >= 0; ``optional``: None passes)."""
    if val is None and optional:
        return
    if isinstance(val, bool) or not isinstance(val, numbers.Real):
        raise ConfigError(f"{key}={val!r} must be a number, got {type(val).__name__}")
    if not math.isfinite(val):
        raise ConfigError(f"{key}={val} must be a finite number")
    if val < 0 or (val == 0 and not allow_zero):
        raise ConfigError(f"{key}={val} must be {'>= 0' if allow_zero else '> 0'}")


def check_count(key: str, val: Any, minimum: int = 1, maximum: int | None = None, optional: bool = False,
                what: str = "") -> int | None:
    """A whole number in [minimum, maximum] (an int, or a float with no fraction such as 2.0); returns it as int.

    ``1.5`` (a fraction), ``nan`` and ``1e21`` (beyond ``maximum``) are each named, instead of failing later in
    ``int()``, inside a tensor allocation, or silently truncated. ``what``: the range's reason, e.g. "px".
    """
    if val is None and optional:
        return None
    if isinstance(val, bool) or not isinstance(val, numbers.Real):
        raise ConfigError(f"{key}={val!r} must be a number, got {type(val).__name__}")
    if not math.isfinite(val) or val != int(val):
        near = max(minimum, round(val)) if math.isfinite(val) else minimum
        raise ConfigError(f"{key}={val} must be a whole number, e.g. {key}={near}")
    n = int(val)
    if n < minimum:
        raise ConfigError(f"{key}={val} must be {'> 0' if minimum == 1 else f'>= {minimum}'}")
    if maximum is not None and n > maximum:
        raise ConfigError(f"{key}={val} is larger than vitlab accepts ({maximum}{' ' + what if what else ''}): "
                          f"use at most {key}={maximum}")
    return n


def check_seed(seed: Any, key: str = "seed") -> None:
    """An int numpy can seed with, checked before anything is written (seed_everything fails late, unnamed)."""
    lo, hi = SEED_RANGE
    if seed is None:  # Lightning draws one and logs it
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not lo <= seed <= hi:
        raise ConfigError(f"{key}={seed!r} must be an int from {lo} to {hi} (numpy's seed range), e.g. {key}=42")
