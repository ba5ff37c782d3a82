"""Deprecated name of :mod:`vitlab.inspection.flops` (``python -m vitlab.analysis.flops`` still runs it, saying so)."""

from __future__ import annotations

import sys

from vitlab.inspection.flops import main

if __name__ == "__main__":
    print("vitlab: python -m vitlab.analysis.flops is deprecated, use python -m vitlab.inspection.flops", file=sys.stderr)
    main()
