"""Disk space before a write, and the errors of a write that failed: checked before HDF5
starts, because a write that fails inside HDF5 leaves the library unable to flush or close
the file (and h5py can crash the process when it frees the handles), so the record then
stays as the last commit left it; and errno mapped to a message that says what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from recordkit.errors import RecordWriteError

__all__ = ["SpaceCheck", "size_text", "write_error"]

#: Bytes kept free beyond a write's data for HDF5's metadata (chunk index, headers, heap).
SPACE_MARGIN = 256 * 1024
#: A free-space reading is reused for a second only while this much more stays free.
SPACE_RECHECK = 1024 ** 3


def size_text(nbytes: float) -> str:
    """A size for people: ``512 B``, ``1.5 MiB``.

    Example:
        >>> size_text(1536), size_text(3 * 1024 ** 3)
        ('1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk of *folder* for this user; None when it cannot be asked."""
    try:
        usage = os.statvfs(folder)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize


class SpaceCheck:
    """Refuses a write the disk (or RLIMIT_FSIZE) cannot take, for one record file.

    A commit of a few history rows asks every epoch; the ``statvfs`` call cost 15 % of
    such a commit, so a reading stays good for a second while the writes since it are far
    below what it found (above :data:`SPACE_RECHECK` to spare): a disk with little room
    is asked every time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._reading: tuple[float, int | None, int] | None = None  # (when, free, used since)

    def ensure(self, nbytes: int, what: str, *, file_size: Callable[[], int]) -> None:
        """Raise :class:`RecordWriteError` (errno ENOSPC or EFBIG) when *nbytes* more do
        not fit. *file_size* gives the open file's size (asked only under a finite
        RLIMIT_FSIZE)."""
        needed = nbytes + nbytes // 16 + SPACE_MARGIN  # chunk index, headers, heap
        free = self._free(needed)
        if free is not None and needed > free:
            error = RecordWriteError(
                f"cannot {what} in {str(self._path)!r}: the disk is full; it needs about "
                f"{size_text(needed)} and {size_text(free)} are free. Free space or choose "
                "another root; the epochs committed so far stay readable")
            error.errno = errno.ENOSPC
            raise error
        try:
            import resource
        except ImportError:  # pragma: no cover - Windows: no RLIMIT_FSIZE
            return
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        try:
            size = file_size()
        except Exception:
            return
        if size + needed > limit:
            error = RecordWriteError(
                f"cannot {what} in {str(self._path)!r}: the file is larger than this "
                f"process may write (RLIMIT_FSIZE / quota): it needs about "
                f"{size_text(needed)} more and may grow by {size_text(max(0, limit - size))}; "
                "the epochs committed so far stay readable")
            error.errno = errno.EFBIG
            raise error

    def _free(self, needed: int) -> int | None:
        now = time.monotonic()
        last = self._reading
        if last is not None:
            taken_at, free, used = last
            if (now - taken_at < 1.0 and free is not None
                    and free - used - needed > SPACE_RECHECK):
                self._reading = (taken_at, free, used + needed)
                return free - used
        free = free_bytes(self._path.parent)
        self._reading = (now, free, needed)
        return free


def write_error(err: OSError, what: str, path: Path) -> RecordWriteError:
    """The :class:`RecordWriteError` for a write that failed with *err*: what could not be
    done, in which file, and what to do; its ``errno`` is the system's."""
    text = str(err)
    code = err.errno
    if code is None and "No space left" in text:
        code = errno.ENOSPC
    if code is None:  # HDF5 puts the errno in the message: "errno = 27, ..."
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    if code == errno.ENOSPC:
        hint = "the disk is full; free space or choose another root"
        with contextlib.suppress(OSError):
            free = os.statvfs(Path(path).parent).f_bavail * os.statvfs(
                Path(path).parent).f_frsize
            hint += f" ({free} bytes free)"
    elif code == errno.EFBIG:
        hint = "the file is larger than this process may write (RLIMIT_FSIZE / quota)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the folder is not writable; choose another root"
    elif code == errno.ENOENT:
        hint = "the folder was removed while the run was being written"
    else:
        hint = text
    error = RecordWriteError(f"cannot {what} in {str(path)!r}: {hint}")
    error.errno = code
    return error
