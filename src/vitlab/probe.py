"""vitlab.probe: evaluate a frozen network with a named protocol (``vitlab.protocols.<name>``).

    python -m vitlab.probe protocol=knn ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt data=digits
    python -m vitlab.probe protocol=fewshot model=vit_b16 model.pretrained=ViT-B_16.npz data=cifar10 data.root=<dir>
    python -m vitlab.probe protocol=knn model=vit_micro random_init=true data=digits     # the untrained baseline
    python -m vitlab.probe protocol=knn ckpt_path=<ckpt> protocol.k=10                   # a protocol's option

The protocol's options are ``protocol.<key>=...`` (``conf/protocol/<name>.yaml``); ``python -m vitlab.fewshot``
is ``protocol=fewshot`` under its own name. The run itself: :func:`vitlab.runs.probe.probe`.
"""

from vitlab.runs.probe import SCORE, probe
from vitlab.tasks import hydra_app

main = hydra_app("probe", returns=SCORE)(probe)

if __name__ == "__main__":
    main()
