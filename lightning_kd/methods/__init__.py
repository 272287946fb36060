"""One file per method; each class is named by ``class_path`` in the YAML configs."""
from lightning_kd.methods.dml import DML
from lightning_kd.methods.kd import KD
from lightning_kd.methods.supervised import Supervised

__all__ = ["DML", "KD", "Supervised"]
