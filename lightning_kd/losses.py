"""The pure loss functions of every method (tensors in, scalar out), like torch.nn.functional."""
from lightning_kd.methods.at import at_loss
from lightning_kd.methods.fitnet import fitnet_loss
from lightning_kd.methods.fsp import fsp_loss, fsp_matrix
from lightning_kd.methods.dml import dml_loss
from lightning_kd.methods.iekd import exploration_loss, inheritance_loss
from lightning_kd.methods.kd import kd_loss
from lightning_kd.methods.metric import batch_hard_triplet_loss
from lightning_kd.methods.rkd import rkd_angle_loss, rkd_distance_loss

__all__ = ["at_loss", "fitnet_loss", "fsp_loss", "fsp_matrix", "dml_loss", "exploration_loss", "inheritance_loss", "kd_loss",
           "rkd_angle_loss", "rkd_distance_loss", "batch_hard_triplet_loss"]
