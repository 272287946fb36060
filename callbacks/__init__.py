from callbacks.mutual import MutualAlternation  # noqa: F401
from callbacks.route import RouteConstrainedTeacher, RouteRecorder  # noqa: F401
