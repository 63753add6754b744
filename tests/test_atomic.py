"""atomic.py: a folder is published all or nothing; kill tests (SIGKILL at random and at injected points) in
subprocesses check that OUT is always the complete old or new folder and that the next save cleans up."""

import inspect
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from optimum_awp import atomic
from optimum_awp.atomic import atomic_directory, cleanup_leftovers, leftovers, recover

FILES = ("config.json", "model-00001.safetensors", "model-00002.safetensors")
SIZE = 256 * 1024


def write_version(folder: Path, version: int) -> None:
    (folder / FILES[0]).write_text(f"{version}\n")
    for i, name in enumerate(FILES[1:], 1):
        (folder / name).write_bytes(bytes([version % 251]) * (SIZE * i))


def version_of(folder: Path) -> int:
    """The version the folder holds, complete; AssertionError if it is missing, partial or mixed."""
    assert folder.is_dir(), f"{folder} is missing"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(FILES), names
    version = int((folder / FILES[0]).read_text())
    for i, name in enumerate(FILES[1:], 1):
        data = (folder / name).read_bytes()
        assert len(data) == SIZE * i and set(data) == {version % 251}, f"{name} is partial or of another version"
    return version


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- one save ------------------------------------------------------------------------------------------------

def test_new_folder_then_replaced_without_leftovers(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".out.awp-partial-") and not out.exists()
        write_version(staged, 1)
    assert version_of(out) == 1
    inode = out.stat().st_ino
    with atomic_directory(out) as staged:
        write_version(staged, 2)
        assert version_of(out) == 1, "the old folder stays until the new one is complete"
    assert version_of(out) == 2 and out.stat().st_ino != inode
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_error_keeps_the_old_folder_and_leaves_nothing(tmp_path, error):
    out = tmp_path / "out"
    with atomic_directory(out) as staged:
        write_version(staged, 1)
    with pytest.raises(error):
        with atomic_directory(out) as staged:
            write_version(staged, 2)
            raise error("interrupted")
    assert version_of(out) == 1 and hidden(tmp_path) == []


def test_replace_false_keeps_a_folder_published_meanwhile(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, replace=False) as staged:
        write_version(staged, 2)
        out.mkdir()
        write_version(out, 1)  # another process published first
    assert version_of(out) == 1 and hidden(tmp_path) == []


def test_before_replace_can_refuse(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")

    def refuse(target):
        raise ValueError(f"{target} is not a model")

    with pytest.raises(ValueError, match="not a model"):
        with atomic_directory(out, before_replace=refuse) as staged:
            write_version(staged, 1)
    assert (out / "notes.txt").read_text() == "keep" and hidden(tmp_path) == []


def test_a_symlinked_folder_stays_a_symlink(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    with atomic_directory(real) as staged:
        write_version(staged, 1)
    link.symlink_to(real)
    with atomic_directory(link) as staged:
        write_version(staged, 2)
    assert link.is_symlink() and version_of(real) == 2 and hidden(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_permissions_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        os.makedirs(plain)  # what transformers' save_pretrained does
        with atomic_directory(tmp_path / "out") as staged:
            (staged / "a.json").write_text("{}")
            os.chmod(staged / "a.json", 0o600)  # as safetensors writes
        with atomic_directory(tmp_path / "shared", umask_files=True) as staged:
            (staged / "a.json").write_text("{}")
            os.chmod(staged / "a.json", 0o600)
    finally:
        os.umask(previous)
    mode = stat.S_IMODE
    assert mode((tmp_path / "out").stat().st_mode) == mode(plain.stat().st_mode) == 0o777 & ~umask
    assert mode((tmp_path / "out" / "a.json").stat().st_mode) == 0o600  # files as their writer made them
    assert mode((tmp_path / "shared" / "a.json").stat().st_mode) == 0o666 & ~umask


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, version in ((a, 1), (b, 2)):
        folder.mkdir()
        write_version(folder, version)
    if not atomic.exchange(a, b):
        pytest.skip("this file system cannot exchange two paths (the fallback is tested below)")
    assert version_of(a) == 2 and version_of(b) == 1


def test_fallback_without_exchange_replaces_too(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    out = tmp_path / "out"
    for version in (1, 2):
        with atomic_directory(out) as staged:
            write_version(staged, version)
    assert version_of(out) == 2 and hidden(tmp_path) == []


# --- leftovers -------------------------------------------------------------------------------------------------

def _leftover(out: Path, kind: str, pid: int, version: int) -> Path:
    path = out.parent / f".{out.name}.awp-{kind}-{atomic._host()}-{pid}-0000"
    path.mkdir()
    write_version(path, version)
    return path


def test_the_next_save_removes_leftovers_of_dead_saves_only(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staged:
        write_version(staged, 1)
    pid = dead_pid()
    _leftover(out, "partial", pid, 7)
    _leftover(out, "old", pid, 8)
    live = _leftover(out, "partial", os.getppid(), 9)  # a save still running in another process
    other = tmp_path / ".other.awp-partial-host-1-0000"
    other.mkdir()  # another folder's
    assert {kind for _, kind, alive in leftovers(out) if not alive} == {"partial", "old"}
    with atomic_directory(out) as staged:
        write_version(staged, 2)
    assert version_of(out) == 2 and hidden(tmp_path) == sorted([live.name, other.name])


def test_recover_puts_back_the_folder_a_killed_fallback_left_hidden(tmp_path):
    out = tmp_path / "out"
    _leftover(out, "old", dead_pid(), 5)
    assert not out.exists() and recover(out)
    assert version_of(out) == 5 and hidden(tmp_path) == []
    assert not recover(out) and cleanup_leftovers(out) == 0


# --- kill tests ------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import importlib.util, os, signal, sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("atomic", sys.argv[3])  # pure stdlib: no torch to import
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    FILES, SIZE = %r, %d
    %s
    out, point, version = Path(sys.argv[1]), sys.argv[2], int(sys.argv[4])
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if point == "after-exchange":
        real_exchange = atomic.exchange
        atomic.exchange = lambda a, b: (real_exchange(a, b), kill())
    if point == "between-fallback-renames":
        atomic.exchange = lambda a, b: False
        real_rename = os.rename
        def rename(a, b):
            real_rename(a, b)
            if ".awp-old-" in str(b):
                kill()
        os.rename = rename
    while True:
        version += 1
        with atomic.atomic_directory(out) as staged:
            write_version(staged, version)
            if point == "before-publish":
                kill()
        print(version, flush=True)
""")


def run_child(out: Path, point: str, version: int) -> subprocess.Popen:
    source = CHILD % (FILES, SIZE, inspect.getsource(write_version))
    return subprocess.Popen([sys.executable, "-c", source, str(out), point, atomic.__file__, str(version)],
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_at_random_instants_leaves_the_old_or_new_folder_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staged:
        write_version(staged, 1)
    rng = random.Random(0)
    seen = set()
    missing = []
    stop = threading.Event()

    def watch():  # OUT must exist at every instant, not only after each kill
        while not stop.is_set():
            if not os.path.isdir(out) or not (out / FILES[0]).exists():
                missing.append(time.monotonic())
            time.sleep(0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(20):
            before = version_of(out)
            child = run_child(out, "random", before)
            child.stdout.readline()  # it has published at least once
            time.sleep(rng.uniform(0, 0.05))
            child.send_signal(signal.SIGKILL)
            child.wait()
            after = version_of(out)  # complete, one version
            assert after > before
            seen.add(after)
            assert len(leftovers(out)) <= 1  # at most the killed save's own folder
    finally:
        stop.set()
        watcher.join()
    assert missing == [], f"OUT was missing {len(missing)} times"
    with atomic_directory(out) as staged:
        write_version(staged, 0)
    assert version_of(out) == 0 and hidden(tmp_path) == []


@pytest.mark.parametrize("point", ["before-publish", "after-exchange", "between-fallback-renames"])
def test_sigkill_at_injected_points(tmp_path, point):
    out = tmp_path / "out"
    with atomic_directory(out) as staged:
        write_version(staged, 1)
    child = run_child(out, point, 1)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    kinds = sorted(kind for _, kind, alive in leftovers(out) if not alive)
    if point == "between-fallback-renames":  # the fallback's window: OUT is missing, the old one hidden
        assert not out.exists() and kinds == ["old", "partial"]
        assert recover(out) and version_of(out) == 1
    else:
        assert version_of(out) == (1 if point == "before-publish" else 2) and kinds == ["partial"]
    with atomic_directory(out) as staged:
        write_version(staged, 3)
    assert version_of(out) == 3 and hidden(tmp_path) == []


MODEL_CHILD = textwrap.dedent("""
    import sys
    from transformers import AutoModelForCausalLM
    from optimum_awp.hub import save_pretrained

    out, refs = sys.argv[1], [AutoModelForCausalLM.from_pretrained(path) for path in sys.argv[2:]]
    print("ready", flush=True)
    i = 0
    while True:
        save_pretrained(refs[i % 2], out, card=False)
        i += 1
        print(i, flush=True)
""")


def test_sigkill_during_a_model_save_leaves_one_of_the_two_checkpoints(tmp_path):
    from tiny_checkpoints import dense_model

    from optimum_awp.hub import save_pretrained

    refs = [save_pretrained(dense_model(seed=seed), tmp_path / f"ref{seed}", card=False) for seed in (0, 1)]
    contents = [{p.name: p.read_bytes() for p in ref.iterdir()} for ref in refs]
    out = save_pretrained(dense_model(seed=0), tmp_path / "out", card=False)
    rng = random.Random(1)
    for _ in range(2):
        child = subprocess.Popen([sys.executable, "-c", MODEL_CHILD, str(out), *map(str, refs)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        child.stdout.readline()  # one save done
        time.sleep(rng.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert {p.name: p.read_bytes() for p in out.iterdir()} in contents
    save_pretrained(dense_model(seed=1), out, card=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == contents[1] and hidden(tmp_path) == []
