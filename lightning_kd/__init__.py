"""lightning_kd: knowledge distillation methods as PyTorch Lightning modules."""
from lightning_kd.base import DistillationModule, StudentModule
from lightning_kd.features import FeatureHooks, NetOutput
from lightning_kd.teacher import FrozenTeacher

__version__ = "0.1.0"
__all__ = ["DistillationModule", "StudentModule", "FeatureHooks", "FrozenTeacher", "NetOutput", "__version__"]
