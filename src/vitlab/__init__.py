"""vitlab: the ViT paper (Dosovitskiy et al., ICLR 2021) as a Lightning + Hydra experiment project."""

from vitlab.config import register_resolvers

__version__ = "0.1.0"

register_resolvers()
