"""Backbones by family (``vitlab.models.registry``): ViT-{Ti,S,B,L,H}/{32,16,14}, BiT ResNetV2-{50,101,152,200}x{1,2,3,4},
R50+ViT hybrids, ConvNeXt-{T,S,B}; one module per family."""

from vitlab.models.bit import BIT_SHAPES
from vitlab.models.factory import build_model, count_params
from vitlab.models.vit import VIT_SHAPES

__all__ = ["BIT_SHAPES", "VIT_SHAPES", "build_model", "count_params"]
