"""A run's results file, ``metrics.json``: its name, how it is written and how it is read back. The one home.

Every task writes its closing numbers here (:func:`write_results`: atomically, non-finite floats as ``null``); sweep
summaries, the VTAB and transfer tables and ``vitlab.report`` read them back (:func:`read_results`, :func:`collect_results`).
A results file is data like any other input: it is read only up to :data:`MAX_BYTES` and must hold one flat
mapping (``{"val/acc_best": 0.93, "model/name": "vit_micro", ...}``; a value may be a scalar or a list or
mapping of scalars, e.g. VTAB's accuracy per lr), else a one-line error names the file and the fix.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitlab.errors import ReportError
from vitlab.utils.run_files import MAX_RUN_FILE_BYTES, read_bytes

#: the file every job writes into its output directory
RESULT_FILE = "metrics.json"
#: what vitlab writes is a few KB; a larger file is not a results file of its own
MAX_BYTES = MAX_RUN_FILE_BYTES

_SCALARS = (str, int, float, bool, type(None))

log = logging.getLogger("vitlab")


def path(job_dir: str | Path) -> Path:
    """``<job_dir>/metrics.json``."""
    return Path(job_dir) / RESULT_FILE


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``<out_dir>/metrics.json`` atomically (a reader never sees half a file); NaN / inf become ``null``."""
    out = path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True))
    tmp.replace(out)
    return out


def read_results(job_dir: str | Path) -> dict[str, Any]:
    """The mapping in ``<job_dir>/metrics.json``, read as data (:func:`vitlab.utils.run_files.read_bytes`: a regular
    file of at most :data:`MAX_BYTES`); a file that is not JSON or not a flat mapping is refused, naming it."""
    p = path(job_dir)
    try:
        data = json.loads(read_bytes(p, MAX_BYTES))
    except ReportError as e:
        raise ReportError(f"{e}; it is not a results file vitlab wrote: move it out of the job directory") from None
    except RecursionError:
        raise ReportError(f"{p}: nested too deeply to be results (vitlab writes a flat mapping)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise ReportError(f"{p}: not valid JSON ({e}); delete it to fall back to the CSV log") from e
    if not isinstance(data, dict):
        raise ReportError(f"{p}: holds a JSON {type(data).__name__}, not the mapping of results vitlab writes; "
                          "delete it to fall back to the CSV log")
    for k, v in data.items():
        inner = v.values() if isinstance(v, dict) else v if isinstance(v, list) else (v,)
        if not all(isinstance(x, _SCALARS) for x in inner):
            raise ReportError(f"{p}: key {k!r} holds nested data, not a result (a scalar, or a list or mapping of "
                              "scalars); delete the file to fall back to the CSV log")
    return data


def collect_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's results under a sweep directory (``<sweep>/<job>/metrics.json``), in job order (0, 1, ..., 10),
    each with its ``job_dir``."""
    rows = []
    for p in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            rows.append({**read_results(p.parent), "job_dir": str(p.parent)})
        except ReportError as e:  # one job's unreadable file must not sink the whole sweep's summary
            log.warning("left out: %s", e)
    return rows
