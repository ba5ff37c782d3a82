"""Deprecated name of :mod:`vitlab.inspection` (kept so ``python -m vitlab.analysis.flops`` still runs)."""
