"""An exclusive lock on a run directory, shared by every process that writes into it.

Appending a part needs no lock: each part is a new file, renamed into place. Reading, changing
and rewriting ``manifest.json``, and compacting parts, do: two ranks finishing at once would
otherwise overwrite each other's manifest, or one would delete parts the other is merging.

``flock`` works across processes on one machine and on NFS (Linux emulates it with POSIX
locks there). Where the filesystem refuses file locks (Lustre mounted without ``flock``), an
atomic ``mkdir`` serves instead, broken after ``stale_s`` in case its holder died.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from audit.errors import RunDirError

try:
    import fcntl
except ImportError:  # not a POSIX system: only the folder lock is available
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
LOCK_FOLDER = ".lock.d"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_POLL_S = 0.05

# flock excludes other open files, but a process's threads share nothing else that would
# stop them from interleaving inside the lock on filesystems where flock is a POSIX lock.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(root: Path) -> threading.Lock:
    key = str(root.resolve())
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


@contextmanager
def run_lock(root: Path, timeout_s: float = 600.0, stale_s: float = 900.0) -> Iterator[None]:
    """Hold the run directory's lock for the duration of the ``with`` block.

    Raises ``RunDirError`` when another process holds it for longer than ``timeout_s``.
    """
    root.mkdir(parents=True, exist_ok=True)
    with _thread_lock(root):
        if fcntl is None:
            with _folder_lock(root, timeout_s, stale_s):
                yield
            return
        with open(root / LOCK_FILE, "a+b") as handle:
            if not _acquire_flock(handle.fileno(), root, timeout_s):
                with _folder_lock(root, timeout_s, stale_s):
                    yield
                return
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire_flock(fd: int, root: Path, timeout_s: float) -> bool:
    """True once locked; False when the filesystem does not support ``flock``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                return False
            raise
        if time.monotonic() > deadline:
            raise _timeout(root / LOCK_FILE, timeout_s)
        time.sleep(_POLL_S)


@contextmanager
def _folder_lock(root: Path, timeout_s: float, stale_s: float) -> Iterator[None]:
    folder = root / LOCK_FOLDER
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            folder.mkdir()
            break
        except FileExistsError:
            if _age_s(folder) > stale_s:  # its holder died inside the lock
                _remove(folder)
                continue
        if time.monotonic() > deadline:
            raise _timeout(folder, timeout_s)
        time.sleep(_POLL_S)
    try:
        yield
    finally:
        _remove(folder)


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(folder: Path) -> None:
    with suppress(FileNotFoundError):
        os.rmdir(folder)


def _timeout(path: Path, timeout_s: float) -> RunDirError:
    return RunDirError(
        f"{path}: another process has held the run directory's lock for over {timeout_s:.0f} s; "
        "if no other 'audit run' is writing there, delete this file and retry"
    )
