"""Who is writing a run: a lock on a ``<run_id>.h5.lock`` file beside the record.

HDF5's own file locking is turned off for record files (a reader left open in a notebook
must never block training), so recordkit keeps its own lock, on a separate file:

- one writer per run: opening a run for writing while another process holds it fails;
- a reader can tell a live run (``running``, lock held) from an interrupted one.

The lock file holds one line of JSON naming its holder: ``host``, ``pid``, ``started``
(the process's start time, from psutil: a pid reused by another process does not look
alive), ``token`` (random, this lock's own), ``mode`` and ``since``.

Two ways of holding it:

- ``flock`` (local disks, NFS with NLM, most cluster filesystems): an advisory ``flock``
  on the file. It dies with its process, so a SIGKILLed writer leaves no live lock; the
  file it leaves is taken over by the next writer.
- ``exclusive``, where ``flock`` is not available (``ENOLCK``, ``ENOTSUP``/``EOPNOTSUPP``
  and the like, as on NFS mounted with ``nolock`` and some Lustre and FUSE mounts): the
  lock file itself, created with ``O_CREAT | O_EXCL`` (atomic on NFSv3 and later, the
  method Optuna's ``JournalFileOpenLock`` relies on). Nothing removes it when the writer
  is killed, so whether its holder is alive is judged from the file:

  * **same host**: alive while a process with that pid and that start time runs;
  * **another host**: alive while its heartbeat is fresh. The holder touches the lock
    file every :func:`heartbeat_seconds` from a daemon thread; the lock is stale once
    its mtime is older than :func:`stale_after_seconds` (``$RECORDKIT_LOCK_STALE_AFTER``,
    default 600 s). The age is taken against the file server's clock (the mtime of a
    file touched beside it just now), so clocks of the hosts need not agree.

  Why a heartbeat and not a refusal: a job killed or preempted on one node and requeued
  on another (SLURM ``--requeue``) resumes its run without someone removing files by hand,
  and a thread (not the commits) keeps it fresh, so an epoch of hours does not lose its
  lock. The cost: a writer stopped for longer than the timeout (``scontrol suspend``,
  SIGSTOP, a host cut off from the server) can have its lock taken over; its heartbeat
  then sees another token in the file and :meth:`RunLock.check` raises at the writer's
  next call, instead of two writers going on. A cluster whose jobs are suspended for
  long sets ``RECORDKIT_LOCK_STALE_AFTER`` above that. A stale lock is taken over by
  renaming it aside and checking the renamed file is the one judged stale (its inode and
  token), so two processes taking over one dead lock do not both win.

A lock file written by a process holding ``flock`` where another host has none is judged
by its own mode: an ``exclusive`` holder is respected by a host whose ``flock`` works.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from recordkit.errors import RecordLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no liveness check
    fcntl = None  # type: ignore[assignment]

__all__ = ["LockOwner", "RunLock", "heartbeat_seconds", "is_locked", "lock_owner",
           "lock_path", "stale_after_seconds"]

#: ``flock`` errors that mean another process holds the lock; any other error means the
#: filesystem cannot lock (ENOLCK, ENOTSUP, EOPNOTSUPP, ENOSYS, Linux's 524 ENOTSUPP...).
_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})
_STALE_AFTER = 600.0
_STALE_VARIABLE = "RECORDKIT_LOCK_STALE_AFTER"


def lock_path(record: Path) -> Path:
    return record.with_name(record.name + ".lock")


def stale_after_seconds() -> float:
    """How old (seconds) the heartbeat of an ``exclusive`` lock held on another host may
    be before the lock is stale: ``$RECORDKIT_LOCK_STALE_AFTER``, else 600."""
    try:
        value = float(os.environ.get(_STALE_VARIABLE, _STALE_AFTER))
    except ValueError:
        return _STALE_AFTER
    return value if value > 0 else _STALE_AFTER


def heartbeat_seconds() -> float:
    """How often the holder of an ``exclusive`` lock touches it: a tenth of
    :func:`stale_after_seconds`, at most 30 s."""
    return max(0.05, min(30.0, stale_after_seconds() / 10))


@dataclass(frozen=True)
class LockOwner:
    """What a lock file says of its holder."""

    host: str
    pid: int
    started: float | None
    token: str
    mode: str
    since: str


_START_TIMES: dict[int, float | None] = {}


def _start_time(pid: int) -> float | None:
    """The start time of process *pid* (seconds since the epoch), None when unknown."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def _own_start_time() -> float | None:
    pid = os.getpid()
    if pid not in _START_TIMES:  # keyed by pid: a forked child has its own
        _START_TIMES[pid] = _start_time(pid)
    return _START_TIMES[pid]


def _new_owner(mode: str) -> LockOwner:
    return LockOwner(host=socket.gethostname(), pid=os.getpid(), started=_own_start_time(),
                     token=secrets.token_hex(8), mode=mode,
                     since=_dt.datetime.now(_dt.timezone.utc).isoformat())


def _parse_owner(data: bytes) -> LockOwner | None:
    try:
        doc = json.loads(data.decode("utf-8"))
        started = doc.get("started")
        return LockOwner(host=str(doc["host"]), pid=int(doc["pid"]),
                         started=None if started is None else float(started),
                         token=str(doc["token"]), mode=str(doc["mode"]),
                         since=str(doc.get("since", "")))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return None  # empty (a holder between create and write), older, or damaged


def _read_fd(fd: int) -> LockOwner | None:
    try:
        return _parse_owner(os.pread(fd, 4096, 0))
    except OSError:
        return None


def _write_fd(fd: int, owner: LockOwner) -> None:
    text = json.dumps({"host": owner.host, "pid": owner.pid, "started": owner.started,
                       "token": owner.token, "mode": owner.mode, "since": owner.since})
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode(), 0)


def lock_owner(record: Path) -> LockOwner | None:
    """What the lock file of *record* says of its holder (None: no file, or nothing
    readable in it). It does not say whether that holder is alive: :func:`is_locked`."""
    try:
        return _parse_owner(lock_path(record).read_bytes())
    except OSError:
        return None


def _try_flock(fd: int, operation: int) -> bool | None:
    """True: locked; False: another process holds the lock; None: no flock here."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as err:
        return False if err.errno in _HELD else None
    return True


def _server_now(folder: Path) -> float:
    """The time as the filesystem holding *folder* sets mtimes (a file touched there
    now), else this host's clock."""
    probe = folder / f".recordkit-clock-{socket.gethostname()}-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.utime(fd)
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError:
        return time.time()


def _alive(owner: LockOwner | None, mtime: float, path: Path) -> bool:
    """Whether the holder an ``exclusive`` lock file names (*owner*, None when it says
    nothing yet) still holds it, by the rules of the module docstring."""
    if owner is not None and owner.host == socket.gethostname():
        started = _start_time(owner.pid)
        if started is None:
            try:
                import psutil

                return bool(psutil.pid_exists(owner.pid))  # alive, start time unreadable
            except Exception:
                return True
        return owner.started is None or abs(started - owner.started) < 1.0
    # another host, or a holder that has not written its name yet: the heartbeat
    return _server_now(path.parent) - mtime < stale_after_seconds()


def _describe(owner: LockOwner | None) -> str:
    if owner is None:
        return "its lock file names no holder yet"
    return f"process {owner.pid} on host {owner.host!r} (since {owner.since})"


def _locked_error(record: Path, owner: LockOwner | None, *, exclusive: bool
                  ) -> RecordLockedError:
    message = (f"run {str(record)!r} is open for writing in another live process "
               f"({_describe(owner)}); wait for it to end, or record a new run")
    if exclusive:
        message += (f". The filesystem has no flock: the lock is the file "
                    f"{str(lock_path(record))!r}; if that process is gone (killed on a "
                    "host you cannot reach), remove the file, or wait until its heartbeat "
                    f"is {stale_after_seconds():g} s old ({_STALE_VARIABLE})")
    return RecordLockedError(message)


_TAKEOVER_STALE = 60.0  # seconds: a taker killed inside its take-over left its mutex


def _take_over(path: Path, judged: os.stat_result, data: bytes) -> None:
    """Remove the stale lock file *path* as it was judged (its stat *judged* and bytes
    *data*), under a take-over mutex (``<lock>.takeover``, made with ``O_EXCL``): only the
    mutex's holder removes a lock, and only when the file is still the one judged (same
    inode, mtime and bytes), so a lock made since is never removed. Returns without
    removing anything when another process holds the mutex (the caller tries again)."""
    mutex = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):  # left by a taker that died inside it
            if _server_now(path.parent) - mutex.stat().st_mtime > _TAKEOVER_STALE:
                mutex.unlink()
        time.sleep(0.01)
        return
    except OSError:
        return
    try:
        now = os.stat(path)
        same = (now.st_ino == judged.st_ino and now.st_mtime_ns == judged.st_mtime_ns
                and path.read_bytes()[:4096] == data)
        if same:
            path.unlink()
    except OSError:
        pass  # gone already: the caller tries again
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            mutex.unlink()


def lock_owner_file(path: Path) -> LockOwner | None:
    """What the lock file at *path* (not the record's path) says of its holder."""
    try:
        return _parse_owner(path.read_bytes())
    except OSError:
        return None


class RunLock:
    """An exclusive lock on one run, held while a :class:`~recordkit.Recorder` writes it."""

    def __init__(self, path: Path, fd: int | None, owner: LockOwner | None = None) -> None:
        self.path = path
        self._fd = fd
        self.owner = owner
        """Who holds it (this process), None without a lock file."""
        self._lost: LockOwner | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def mode(self) -> str | None:
        """``"flock"``, ``"exclusive"`` (no flock on this filesystem), or None (no lock
        could be made: Windows, or a folder that takes no lock files)."""
        return self.owner.mode if self.owner is not None and self._fd is not None else None

    @classmethod
    def acquire(cls, record: Path) -> RunLock:
        """Lock *record*.

        Raises:
            RecordLockedError: a live process holds it (the message names its host and
                pid, and, without flock, the lock file and how it goes stale).
        """
        path = lock_path(record)
        if fcntl is None:  # pragma: no cover
            return cls(path, None)
        owner: LockOwner | None = None
        for _attempt in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(path, os.O_RDWR)
                except FileNotFoundError:
                    continue  # released in between
                except OSError:
                    return cls(path, None)
                created = False
            except OSError:
                # A folder we may write records into but not lock files into is unusual;
                # the record itself will report the real problem when it is created.
                return cls(path, None)
            got = _try_flock(fd, fcntl.LOCK_EX)
            if got is False:
                owner = _read_fd(fd)
                os.close(fd)
                raise _locked_error(record, owner, exclusive=False)
            if got is True:
                if not _same_file(fd, path):  # unlinked by its releaser before we locked
                    os.close(fd)
                    continue
                owner = None if created else _read_fd(fd)
                if owner is not None and owner.mode == "exclusive" and _alive(
                        owner, os.fstat(fd).st_mtime, path):
                    os.close(fd)  # held by a host without flock, and alive
                    raise _locked_error(record, owner, exclusive=True)
                mine = _new_owner("flock")
                _write_fd(fd, mine)
                return cls(path, fd, mine)
            # no flock on this filesystem: the file made with O_EXCL is the lock
            if created:
                mine = _new_owner("exclusive")
                _write_fd(fd, mine)
                lock = cls(path, fd, mine)
                lock._start_heartbeat()
                return lock
            try:
                data = os.pread(fd, 4096, 0)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            owner = _parse_owner(data)
            if _alive(owner, st.st_mtime, path):
                raise _locked_error(record, owner, exclusive=True)
            _take_over(path, st, data)
        raise _locked_error(record, owner, exclusive=True)

    def _start_heartbeat(self) -> None:
        thread = threading.Thread(target=self._beat, name=f"recordkit-lock {self.path.name}",
                                  daemon=True)
        self._heartbeat = thread
        thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_seconds()):
            fd = self._fd
            if fd is None or self.owner is None:
                return
            found = lock_owner_file(self.path)
            if found is None or found.token != self.owner.token:
                # taken over (this process was judged dead: stopped too long) or removed
                self._lost = found or self.owner
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def check(self) -> None:
        """Raise when the lock was taken over by another process (an ``exclusive`` lock
        whose heartbeat stopped for longer than :func:`stale_after_seconds`).

        Raises:
            RecordLockedError: the lock is no longer this process's.
        """
        lost = self._lost
        if lost is None:
            return
        held_by = "no process (its lock file was removed)" if (
            self.owner is not None and lost.token == self.owner.token) else _describe(lost)
        raise RecordLockedError(
            f"the lock of {str(self.path)!r} is now held by {held_by}: this process "
            f"stopped refreshing it for more than {stale_after_seconds():g} s "
            f"({_STALE_VARIABLE}); what it writes now may conflict with that writer. Stop "
            "this run, or remove the lock file if you know no other process writes it")

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5)
        ours = self.mode == "flock" or (
            self.owner is not None and self._lost is None
            and (lock_owner_file(self.path) or self.owner).token == self.owner.token)
        if ours:  # never remove a lock another process took over
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def is_locked(record: Path) -> bool:
    """Whether a live process holds the run open for writing (a flock held, or an
    ``exclusive`` lock file whose holder is alive by the rules of this module)."""
    path = lock_path(record)
    if fcntl is None or not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        got = _try_flock(fd, fcntl.LOCK_SH)
        if got is False:
            return True
        owner = _read_fd(fd)
        if got is True and (owner is None or owner.mode != "exclusive"):
            return False  # a flock holder's file, left by a process that died
        return _alive(owner, os.fstat(fd).st_mtime, path)
    except OSError:
        return False
    finally:
        os.close(fd)
