"""vitlab's benchmarks, in one place beside the tasks (as timm keeps ``benchmark.py`` beside ``train.py``).

- ``python -m vitlab.bench`` (``make bench``, :mod:`vitlab.bench.training`): training/eval throughput, MFU and
  memory of ``vitlab.train`` vs a plain PyTorch loop vs timm, each (model, way, repeat) in its own
  :mod:`vitlab.bench.worker` process;
- ``python -m vitlab.bench.data`` (``make bench-data``, :mod:`vitlab.bench.data`): input-pipeline throughput of
  vitlab's loaders vs torchvision's ImageFolder.
"""
