"""vitlab: the ViT paper (Dosovitskiy et al., ICLR 2021) as a Lightning + Hydra experiment project.

Importing the package imports nothing else: each task imports what it needs (``vitlab.config`` registers the
config resolvers).
"""

__version__ = "0.1.0"
