"""The cache folder of converted models and prepared text (written with :mod:`optimum_awp.atomic`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The folder for converted models and prepared text.

    ``$OPTIMUM_AWP_CACHE`` if set, else ``$HF_HOME/optimum_awp``, else
    ``$XDG_CACHE_HOME/optimum_awp``, else ``~/.cache/optimum_awp``. Not created here.
    """
    if os.environ.get("OPTIMUM_AWP_CACHE"):
        return Path(os.environ["OPTIMUM_AWP_CACHE"]).expanduser()
    for var in ("HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser() / "optimum_awp"
    return Path.home() / ".cache" / "optimum_awp"

