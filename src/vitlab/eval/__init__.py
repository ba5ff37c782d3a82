"""Evaluation protocols: few-shot linear probes (fewshot), VTAB-1k suite (vtab), sweep summaries."""
