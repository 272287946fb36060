"""The shipped YAML configs, installed as ``lightning_kd.configs`` (``configs/`` in the repository)."""
from pathlib import Path

#: The folder of the shipped configs (``configs/`` of the repository, ``lightning_kd/configs`` installed).
SHIPPED_CONFIGS = Path(__file__).resolve().parent
