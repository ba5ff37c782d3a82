"""Evaluation protocols of the paper: few-shot linear probes (fewshot), the VTAB-1k suite (vtab), the
pretrain -> fine-tune comparison (transfer). Each runs standalone (a task) or inside training (a callback)."""
