"""``python -m vitlab.bench``: the training bench (``--worker <spec.json>``: one of its worker processes);
``python -m vitlab.bench startup``: launch -> first step vs bare imports; ``python -m vitlab.bench timm_script``:
``python -m vitlab.train`` vs timm's own ``train.py`` + ``validate.py`` on the same job."""

import sys

from vitlab.bench import startup, timm_script
from vitlab.bench.training import main_cli
from vitlab.bench.worker import worker_cli

if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    worker_cli(sys.argv[2])
elif len(sys.argv) > 1 and sys.argv[1] == "startup":
    startup.main(sys.argv[2:])
elif len(sys.argv) > 1 and sys.argv[1] == "timm_script":
    timm_script.main(sys.argv[2:])
else:
    main_cli()
