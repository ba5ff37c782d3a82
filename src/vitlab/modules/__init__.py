from vitlab.modules.classification import ClassificationModule

__all__ = ["ClassificationModule"]
