"""Analysis of models and runs: compute accounting (FLOPs) and the paper's inspection figures (§4.5)."""
