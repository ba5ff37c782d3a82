"""Lightning callbacks of vitlab's protocols (EMA / Polyak averaging, compute tracking, ...)."""
