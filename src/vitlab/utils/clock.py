"""When this process's command began its own work: the end of its imports, just before Hydra composes.

:func:`vitlab.tasks.hydra_app` marks it; :class:`vitlab.callbacks.timing.HookProfiler` reports it, so the
start-up bench splits one process's launch -> first step into its imports and the rest, measured in that
process (no second process's import time, which swings by a second on a loaded machine, is subtracted).
"""

from __future__ import annotations

import time

#: (``time.time()``, ``time.process_time()``) at the first :func:`mark_main`; None before
main_started: tuple[float, float] | None = None


def mark_main() -> None:
    global main_started
    if main_started is None:
        main_started = (time.time(), time.process_time())
