from callbacks.mutual import MutualAlternation  # noqa: F401
