"""One live writer per run directory, and temp-file names unique per writer.

A run (or a resume) holds an exclusive ``fcntl.flock`` on ``<run dir>/.alpha.lock``
for as long as it writes there; a second ``alpha train`` on the same folder is
refused with one line. The kernel drops the lock when the process dies (even by
``kill -9``), so a crashed run never leaves a stale lock. The lock file itself
stays (deleting it would let two processes lock two different inodes); it is a
dot-file that the "run dir is empty" checks ignore.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from pathlib import Path

from model.errors import ConfigError

LOCK_NAME = ".alpha.lock"


class RunDirLock:
    """An exclusive lock on a run directory; ``release()`` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:  # a Trainer dropped without fit(): free the folder
        with contextlib.suppress(Exception):
            self.release()

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(path: Path, *, fresh: bool, flag: str = "--run-dir") -> RunDirLock:
    """Create ``path`` if needed and lock it; ``ConfigError`` if another process holds it.

    ``fresh``: a new run, so the folder must hold nothing but the lock file (checked
    again under the lock: two runs started at once both saw an empty folder).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot create {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_pid(fd)
        os.close(fd)
        raise ConfigError(_in_use(path, holder, flag)) from None
    lock = RunDirLock(path, fd)
    if fresh and not is_empty_run_dir(path):
        lock.release()
        raise ConfigError(f"{flag}: {path} is not empty (use --resume to continue a run)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return lock


def run_dir_holder(path: Path) -> int | None:
    """The pid holding ``path``'s lock (0 if unknown), or None when nobody holds it.

    A probe: it takes and drops the lock without creating or writing anything.
    """
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd)
    finally:
        os.close(fd)  # also drops a lock taken by the probe
    return None


def check_not_in_use(path: Path, flag: str = "--run-dir") -> Path:
    """``path``, unless a live process holds its lock (then a one-line ``ConfigError``)."""
    holder = run_dir_holder(path)
    if holder is not None:
        raise ConfigError(_in_use(path, holder, flag))
    return path


def is_empty_run_dir(path: Path) -> bool:
    """True when ``path`` holds nothing but (possibly) the lock file."""
    return all(p.name == LOCK_NAME for p in path.iterdir())


def tmp_name(path: Path) -> Path:
    """A temp sibling of ``path`` no other writer (process or thread) uses: a dot-file."""
    tag = f"{os.getpid()}-{threading.get_ident() % 100000}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{tag}.tmp")


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files (``.*.tmp``) that dead writers left in a run dir and its ``data/``.

    Call only while holding the folder's lock: then no live writer owns any of
    them (a ``kill -9`` during a checkpoint save leaves one as big as the model).
    """
    removed = []
    for folder in (path, path / "data"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _in_use(path: Path, holder: int, flag: str) -> str:
    who = f"pid {holder}" if holder else "another process"
    return (
        f"{flag}: {path} is in use by a live alpha run ({who}); "
        "wait for it to end or choose another folder"
    )
