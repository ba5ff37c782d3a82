"""``python -m vitlab.bench``: the training bench (``--worker <spec.json>``: one of its worker processes)."""

import sys

from vitlab.bench.training import main_cli
from vitlab.bench.worker import worker_cli

if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    worker_cli(sys.argv[2])
else:
    main_cli()
