"""The pure loss functions of every method (tensors in, scalar out), like torch.nn.functional."""
from lightning_kd.methods.dml import dml_loss
from lightning_kd.methods.kd import kd_loss

__all__ = ["dml_loss", "kd_loss"]
