"""vitlab.fewshot: few-shot linear accuracy of a frozen model (paper §4.1; big_vision's ``fewshot_lsr``).

    python -m vitlab.fewshot ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt data=digits
    python -m vitlab.fewshot model=vit_b16 model.pretrained=ViT-B_16.npz data=cifar10 data.root=/data/cifar
    python -m vitlab.fewshot ckpt_path=<ckpt> data=shapes 'protocol.shots=[1,5]' protocol.seeds=5

``python -m vitlab.probe protocol=fewshot`` under the task's own name (``conf/fewshot.yaml``): prints a table
(data, shots, mean accuracy over seeds, std, L2) and writes ``metrics.json`` with ``fewshot/<data>_<k>shot``.
The protocol: :mod:`vitlab.protocols.fewshot`; its options: ``conf/protocol/fewshot.yaml``.
"""

from vitlab.runs.probe import SCORE, probe
from vitlab.tasks import hydra_app

main = hydra_app("fewshot", returns=SCORE)(probe)

if __name__ == "__main__":
    main()
