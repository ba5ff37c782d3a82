"""Datasets: one ``VisionDataModule`` base (``base.py``) and one module per dataset, each reading only its files."""
