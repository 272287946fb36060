"""Callbacks, one concern each: RCO's route, mutual-learning alternation, the NaN/Inf check, the RNG
states in checkpoints and safe checkpoint loading (the last three are added by every method)."""
from lightning_kd.callbacks.finite import FiniteCheck
from lightning_kd.callbacks.mutual import MutualAlternation
from lightning_kd.callbacks.rng import RNGState
from lightning_kd.callbacks.route import RouteConstrainedTeacher, RouteRecorder
from lightning_kd.callbacks.safe_loading import SafeLoading

__all__ = ["FiniteCheck", "MutualAlternation", "RNGState", "RouteConstrainedTeacher", "RouteRecorder", "SafeLoading"]
