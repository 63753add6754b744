"""The cache folder of converted models and prepared text, and publishing a finished folder into it atomically."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


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


def publish_dir(tmp: Path, target: Path) -> Path:
    """Rename the finished folder ``tmp`` to ``target`` atomically.

    If another process published ``target`` first, keep theirs and delete ``tmp``.
    """
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        logger.info("%s was written concurrently by another process; keeping that one", target)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def temp_dir_beside(target: Path) -> Path:
    """A fresh, empty, hidden folder next to ``target`` (same file system, so rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def apply_umask(folder: Path) -> None:
    """Give the files in ``folder`` the usual permissions (safetensors writes its file as 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)
