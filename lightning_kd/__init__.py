"""lightning_kd: knowledge distillation methods as PyTorch Lightning modules."""
from lightning_kd.base import DistillationModule
from lightning_kd.features import FeatureHooks

__version__ = "0.1.0"
__all__ = ["DistillationModule", "FeatureHooks", "__version__"]
