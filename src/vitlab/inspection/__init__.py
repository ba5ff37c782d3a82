"""Inspecting models: compute accounting (flops), what a trained ViT learned (inspect_vit, paper §4.5)
and its figures (plots). Not named ``inspect``, which would read as the standard library's module."""
