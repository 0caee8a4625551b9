"""The background snapshot writer: one thread that writes queued snapshots to the file.

The training thread only copies tensors to host memory and queues the copies; this thread
does the HDF5 work, during which h5py releases the GIL (the big ``H5Dwrite`` of a chunk:
checksum, filters and ``pwrite``), so training goes on while a snapshot is written.

Who touches the file: every HDF5 call of the writer runs inside the job function
:class:`~recordkit.snapshots.Snapshots` hands over, and that function holds the run's
lock while it touches the file, one slice of a few MiB at a time. All HDF5 access stays
serialised (h5py also has one global lock of its own), and a :meth:`Recorder.log` call from
the training thread waits at most for one slice. The writer never owns the file alone.

Queue bound: :meth:`SnapshotWriter.reserve` blocks the caller while the bytes queued or
being written plus the new snapshot would exceed *max_pending_bytes*; a snapshot larger
than the bound is let in once the queue is empty, so a run always makes progress. The
recorder reserves *before* it copies, so memory holds at most the snapshot being written
and the copy being made.

Errors: the first exception a job raises is kept; jobs queued after it are dropped (they
were taken after a failure the caller has not seen yet). :meth:`SnapshotWriter.check`
raises the kept error once, on the caller's next call, so it is never lost.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["WRITER_NICENESS", "JobAborted", "SnapshotJob", "SnapshotWriter"]

#: How much lower than the training threads' priority the writer thread runs (Linux gives
#: each thread a nice value of its own). On a machine whose cores the training threads
#: keep busy, the writer then takes the CPU they leave (data loading, the optimizer's
#: Python work, epoch ends) instead of slowing a step; back-pressure still bounds how far
#: it may fall behind. 0 turns it off.
WRITER_NICENESS = 10


@dataclass
class SnapshotJob:
    """One queued snapshot: the host copies of its tensors and where they go.

    A job may be queued before its copies are made (*streamed*): the caller then adds
    each copy with :meth:`add` as soon as it is made, and the writer, which waits for
    each tensor with :meth:`take`, writes the first tensors while the next are copied.
    """

    arrays: dict[str, Any]
    epoch: int
    step: int
    nbytes: int
    #: For a streamed job: the tensor names to come, in order, with (shape, dtype, stored
    #: dtype name) of their copies; None when *arrays* holds every copy already.
    specs: dict[str, tuple[tuple[int, ...], Any, str]] | None = None
    #: Set when the caller gave up making the copies (its error was raised to it).
    aborted: BaseException | None = None
    #: What writes the job, held while it is queued: a recorder dropped (or collected
    #: with its callback) right after queueing a snapshot still writes it when it closes.
    owner: Any = None

    def __post_init__(self) -> None:
        self._ready = threading.Condition()

    def add(self, name: str, copy: Any) -> None:
        """Hand over the copy of one tensor of a streamed job."""
        with self._ready:
            self.arrays[name] = copy
            self._ready.notify_all()

    def abort(self, error: BaseException) -> None:
        """The caller's copies failed: the writer drops the job without writing its row."""
        with self._ready:
            self.aborted = error
            self._ready.notify_all()

    def take(self, name: str) -> Any:
        """The copy of *name*, waiting until it is made; raises :class:`JobAborted` when
        the caller gave up."""
        with self._ready:
            while name not in self.arrays and self.aborted is None:
                self._ready.wait()
            if name not in self.arrays:
                raise JobAborted(f"the snapshot of epoch {self.epoch} was not copied")
            return self.arrays[name]


class JobAborted(Exception):
    """A streamed job whose copies were not all made; the caller saw the error."""


class SnapshotWriter:
    """A daemon thread that runs *write* on each submitted job, in order.

    Args:
        write: called on the writer thread with each job; it serialises its own HDF5
            access (the recorder's lock).
        max_pending_bytes: bound on the bytes queued or being written; None means one
            snapshot at a time (so memory holds at most two: the one written and the next
            copy).
        name: the thread name, shown in tracebacks and profilers.

    Example:
        >>> done = []
        >>> writer = SnapshotWriter(lambda job: done.append(job.epoch), max_pending_bytes=100)
        >>> for epoch in range(3):
        ...     writer.reserve(10)
        ...     writer.submit(SnapshotJob({}, epoch, -1, 10))
        >>> writer.wait(); writer.stop(); done
        [0, 1, 2]
    """

    def __init__(self, write: Callable[[SnapshotJob], None], *,
                 max_pending_bytes: int | None = None, name: str = "recordkit-writer") -> None:
        if max_pending_bytes is not None and (
            isinstance(max_pending_bytes, bool) or not isinstance(max_pending_bytes, int)
            or max_pending_bytes < 0
        ):
            raise ValueError(f"max_pending_bytes={max_pending_bytes!r}: must be an int >= 0 "
                             "or None (one snapshot at a time)")
        self._write = write
        self._limit = max_pending_bytes
        self._cond = threading.Condition()
        self._queue: collections.deque[SnapshotJob] = collections.deque()
        self._pending_bytes = 0  # reserved: queued, being copied or being written
        self._busy = False
        self._error: BaseException | None = None
        self._dropped = 0
        self._stopping = False
        self.peak_pending_bytes = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending_bytes(self) -> int:
        """Bytes reserved for snapshots not yet written."""
        with self._cond:
            return self._pending_bytes

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def reserve(self, nbytes: int) -> None:
        """Block until *nbytes* fit under the bound, then reserve them for a snapshot.

        Raises the kept error of an earlier job instead of waiting, if there is one.
        """
        with self._cond:
            while True:
                self._raise_kept()
                if self._stopping:
                    raise RuntimeError("the snapshot writer is stopped")
                limit = self._limit
                if self._pending_bytes == 0 or (
                    limit is not None and self._pending_bytes + nbytes <= limit
                ):
                    break
                self._cond.wait()
            self._pending_bytes += nbytes
            self.peak_pending_bytes = max(self.peak_pending_bytes, self._pending_bytes)

    def release(self, nbytes: int) -> None:
        """Give back a reservation that will not be submitted (e.g. the copy failed)."""
        with self._cond:
            self._pending_bytes -= nbytes
            self._cond.notify_all()

    def submit(self, job: SnapshotJob) -> None:
        """Queue a job whose ``nbytes`` were reserved with :meth:`reserve`."""
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()

    def check(self) -> None:
        """Raise the error a job raised, once; it is never dropped silently."""
        with self._cond:
            self._raise_kept()

    def wait(self) -> None:
        """Block until every queued job is written, then raise a job's error if any."""
        with self._cond:
            while self._queue or self._busy:
                if not self._thread.is_alive():  # pragma: no cover - the loop never dies
                    break
                self._cond.wait()
            self._raise_kept()

    def wait_idle(self) -> None:
        """Block until every queued job is written (or dropped after an error); a job's
        error stays kept for :meth:`wait` or :meth:`check` to raise."""
        with self._cond:
            while self._queue or self._busy:
                if not self._thread.is_alive():  # pragma: no cover - the loop never dies
                    break
                self._cond.wait()

    def stop(self) -> None:
        """Finish the queued jobs and end the thread. Safe to call twice. Does not raise
        a kept error: call :meth:`wait` first for that."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _raise_kept(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            dropped, self._dropped = self._dropped, 0
            if dropped and hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(f"recordkit: {dropped} snapshot(s) queued after this failure "
                               "were not written")
            raise error

    def _run(self) -> None:
        _lower_priority(WRITER_NICENESS)
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._busy = True
                skip = self._error is not None
            try:
                if skip:
                    with self._cond:
                        self._dropped += 1
                else:
                    self._write(job)
            except JobAborted:
                pass  # the caller's copy failed and raised there: nothing to keep
            except BaseException as err:  # kept for the caller: never lost, never raised here
                with self._cond:
                    if self._error is None:
                        self._error = err
                    else:
                        self._dropped += 1
            finally:
                nbytes = job.nbytes
                job.arrays.clear()  # free the copies now, not when the next job arrives
                del job
                with self._cond:
                    self._pending_bytes -= nbytes
                    self._busy = False
                    self._cond.notify_all()


def _lower_priority(niceness: int) -> None:
    """Raise this thread's nice value by *niceness* (Linux; elsewhere nothing happens)."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))
    except (OSError, AttributeError):  # not permitted here: the writer runs as it is
        pass
