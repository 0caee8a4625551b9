"""Who is writing a run: an advisory lock on a ``<run_id>.h5.lock`` file beside the record.

HDF5's own file locking is turned off for record files (a reader left open in a notebook
must never block training), so recordkit keeps its own lock, on a separate file:

- one writer per run: opening a run for writing while another process holds it fails;
- ``flock`` locks die with their process, so a SIGKILLed writer leaves no stale lock;
- a reader can tell a live run (``running``, lock held) from an interrupted one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from recordkit.errors import RecordLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no liveness check
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "is_locked", "lock_path"]


def lock_path(record: Path) -> Path:
    return record.with_name(record.name + ".lock")


class RunLock:
    """An exclusive lock on one run, held while a :class:`~recordkit.Recorder` writes it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, record: Path) -> RunLock:
        path = lock_path(record)
        if fcntl is None:  # pragma: no cover
            return cls(path, None)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            # A folder we may write records into but not lock files into is unusual; the
            # record itself will report the real problem when it is created.
            return cls(path, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RecordLockedError(
                f"run {str(record)!r} is open for writing in another live process; "
                "wait for it to end, or record a new run"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def is_locked(record: Path) -> bool:
    """Whether a live process holds the run open for writing."""
    path = lock_path(record)
    if fcntl is None or not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
