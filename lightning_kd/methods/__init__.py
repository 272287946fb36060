"""One file per method; each class is named by ``class_path`` in the YAML configs."""
from lightning_kd.methods.at import AT
from lightning_kd.methods.ban import BAN
from lightning_kd.methods.crd import CRD
from lightning_kd.methods.dist import DIST
from lightning_kd.methods.dkd import DKD
from lightning_kd.methods.fitnet import FitNet
from lightning_kd.methods.fsp import FSP
from lightning_kd.methods.dml import DML
from lightning_kd.methods.iekd import IEKD
from lightning_kd.methods.iedml import IEDML
from lightning_kd.methods.kd import KD
from lightning_kd.methods.metric import MetricLearning, MetricRKD
from lightning_kd.methods.reviewkd import ReviewKD
from lightning_kd.methods.rkd import RKD
from lightning_kd.methods.supervised import Supervised

__all__ = ["AT", "BAN", "CRD", "DIST", "DKD", "FitNet", "FSP", "DML", "IEKD", "IEDML", "KD", "Supervised", "RKD", "ReviewKD",
           "MetricLearning", "MetricRKD"]
