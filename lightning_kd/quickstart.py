"""``python -m lightning_kd.quickstart``: the README's first command (see :mod:`lightning_kd.tools.quickstart`)."""
from lightning_kd.tools.quickstart import main

if __name__ == "__main__":
    main()
