"""Deprecated name of :mod:`vitlab.data.throughput` (``python -m vitlab.data.bench`` still runs it, saying so)."""

from __future__ import annotations

import sys

from vitlab.data.throughput import main

if __name__ == "__main__":
    print("vitlab: python -m vitlab.data.bench is deprecated, use python -m vitlab.data.throughput", file=sys.stderr)
    main()
