"""Every Lightning callback of vitlab: checkpointing, exact resume, signals, the non-finite guard, EMA, compute
tracking, evaluation protocols during training (``protocols.ProtocolCallback``) and W&B best-value summaries
(``conf/callbacks/`` names them).

A callback runs a protocol or an inspection; the protocol itself lives in :mod:`vitlab.protocols` /
:mod:`vitlab.inspection`, so it also runs standalone."""
