"""The shipped YAML configs, installed as ``lightning_kd.configs`` (``configs/`` in the repository)."""
