from lightning_kd.callbacks.mutual import MutualAlternation  # noqa: F401
from lightning_kd.callbacks.route import RouteConstrainedTeacher, RouteRecorder  # noqa: F401
