"""Reporting: read finished runs (metrics.json, CSV logs, W&B offline files) and draw the paper's scaling figures."""
