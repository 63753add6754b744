"""Write a folder all or nothing: the one helper behind every folder optimum-awp publishes (pure stdlib).

``with atomic_directory(out) as staged: ...`` writes into a hidden folder beside ``out`` and publishes it when
the block ends without an error. At every instant, a SIGKILL or a power cut included, ``out`` is either the
complete previous folder or the complete new one:

- a new ``out`` appears with one ``rename``;
- an existing ``out`` is swapped with the staged folder in one ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+,
  glibc 2.28+, supported by ext4, xfs, btrfs, tmpfs, overlayfs, ...), after which the previous folder sits at
  the staged name and is deleted. Why a swap and not the alternatives: two renames (``out`` away, then the new
  folder in) leave ``out`` missing between them; a symlink ``out`` -> versioned folder swaps atomically too, but
  turns the user's folder into a link that other tools copy, upload or replace differently; replacing files
  one by one inside ``out`` (plus a manifest) keeps the folder but shows a mix of old and new files, which
  transformers, reading no manifest, would load. Where the swap is not supported (other systems, NFS), the two
  renames are the fallback: that window remains, the previous folder survives it under a hidden name, and the
  next save to the same place (or :func:`recover`) puts it back;
- files and folders are fsync'ed before the rename, so the published folder is complete after a power cut too.

Leftovers are named ``.<out name>.awp-<partial|old>-<host>-<pid>-<token>``. Every save first removes those of
``out`` whose process is gone (the pid is not alive on this host; another host's after a day), so killed saves
never accumulate; an ``old`` one when ``out`` is missing is the fallback's previous folder, and is put back
rather than deleted. The staged folder is made with ``os.mkdir(path, 0o777)``, so it gets the umask (and any
default ACL) exactly as transformers' own ``os.makedirs`` would, not ``tempfile.mkdtemp``'s 0700.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_directory", "cleanup_leftovers", "exchange", "leftovers", "recover"]

_TAG = "awp"
FOREIGN_HOST_AGE_S = 24 * 3600  # leftovers of another host are removed after this long


def _leftover_prefix(target: Path) -> str:
    return f".{target.name}.{_TAG}-"


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _new_name(target: Path, kind: str) -> Path:
    return target.parent / f"{_leftover_prefix(target)}{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner_alive(host: str, pid: int, path: Path) -> bool:
    if host != _host():
        try:
            return time.time() - path.lstat().st_mtime < FOREIGN_HOST_AGE_S
        except FileNotFoundError:
            return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def leftovers(target: str | os.PathLike) -> list[tuple[Path, str, bool]]:
    """The hidden folders of saves to ``target``: (path, "partial" or "old", whether its process still runs)."""
    target = Path(target)
    prefix = _leftover_prefix(target)
    found = []
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return found
    for name in names:
        if not name.startswith(prefix):
            continue
        kind, _, rest = name[len(prefix):].partition("-")
        parts = rest.rsplit("-", 2)  # host, pid, token
        if kind not in ("partial", "old") or len(parts) != 3 or not parts[1].isdigit():
            continue
        path = target.parent / name
        found.append((path, kind, _owner_alive(parts[0], int(parts[1]), path)))
    return found


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def recover(target: str | os.PathLike) -> bool:
    """Put back the previous folder that a killed fallback save left hidden while ``target`` is missing.

    Returns True when it put one back. Only leftovers of processes that are gone are considered.
    """
    target = Path(target)
    if os.path.lexists(target):
        return False
    olds = sorted((p for p, kind, alive in leftovers(target) if kind == "old" and not alive),
                  key=lambda p: p.lstat().st_mtime, reverse=True)
    for old in olds:
        try:
            os.rename(old, target)
        except OSError:
            continue
        logger.warning("put back %s: a save killed between its two renames had left it as %s", target, old.name)
        return True
    return False


def cleanup_leftovers(target: str | os.PathLike) -> int:
    """Remove the hidden folders of killed saves to ``target`` (after :func:`recover`); returns how many."""
    target = Path(target)
    recover(target)
    removed = 0
    for path, _kind, alive in leftovers(target):
        if not alive:
            _remove(path)
            removed += 1
    if removed:
        logger.info("removed %d folder(s) left by killed saves to %s", removed, target)
    return removed


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one step (``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the system or the file system cannot; raises OSError for
    any other failure.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (and ``folder``), so a rename publishes written data."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder
    finally:
        os.close(fd)


def _apply_umask_to_files(folder: Path, dir_mode: int) -> None:
    """Give every file the mode a plain ``open()`` under this umask gives (safetensors writes its files 0600)."""
    file_mode = dir_mode & 0o666
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)


def _publish(staged: Path, target: Path, replace: bool, before_replace: Callable[[Path], object] | None) -> bool:
    """Move the complete ``staged`` folder to ``target``; returns False when ``replace`` is False and another
    folder is already there (then ``staged`` is left for the caller to delete)."""
    if not os.path.lexists(target):
        try:
            os.rename(staged, target)  # a non-empty target appearing meanwhile makes this fail, never merge
            return True
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not os.path.lexists(target):
                raise
    if not replace:
        return False
    if before_replace is not None:
        before_replace(target)
    if exchange(staged, target):
        return True  # staged now holds the previous folder
    # Fallback: two renames. Between them ``target`` is missing; ``recover`` puts the previous one back.
    old = _new_name(target, "old")
    os.rename(target, old)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(old, target)
        raise
    os.rename(old, staged)  # the caller deletes staged
    return True


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike,
    *,
    replace: bool = True,
    before_replace: Callable[[Path], object] | None = None,
    umask_files: bool = False,
    fsync: bool = True,
) -> Iterator[Path]:
    """Yield an empty folder to write into; publish it as ``target`` when the block ends without an error.

    Args:
        target: the folder to create or replace; its parent is created if needed. A symlink to a folder
            is kept: the folder it points to is replaced.
        replace: replace an existing ``target``; when False an existing one (e.g. another process's, in a
            cache) is kept and what was written is discarded.
        before_replace: called with ``target`` just before an existing one is replaced; raise to refuse.
        umask_files: also give every written file the mode of a plain ``open()`` under the umask.
        fsync: flush the written files and folders to disk before publishing.

    On any error or interruption (KeyboardInterrupt included) the staged folder is deleted and ``target`` is
    left as it was; a SIGKILL leaves it as it was too, and the next save to ``target`` removes the leftover.
    """
    target = Path(target).expanduser().absolute()
    if target.is_symlink() and target.is_dir():
        target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    cleanup_leftovers(target)
    staged = _new_name(target, "partial")
    os.mkdir(staged, 0o777)  # mode & ~umask, as os.makedirs in transformers' save_pretrained
    try:
        yield staged
        if umask_files:
            _apply_umask_to_files(staged, os.stat(staged).st_mode & 0o777)
        if fsync:
            _fsync_tree(staged)
        published = _publish(staged, target, replace, before_replace)
        if fsync:
            _fsync_dir(target.parent)
        if not published:
            logger.info("%s was written meanwhile by another process; keeping that one", target)
    finally:
        if os.path.lexists(staged):
            _remove(staged)
