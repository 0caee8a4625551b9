"""Taking snapshots on the write side: the checks that make a bad snapshot fail in the
call that caused it, the host copies (into reused buffers) and the background writer
that writes them, slice by slice, through :class:`~recordkit.format.weights.SnapshotStore`."""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from recordkit.diskspace import free_bytes, size_text
from recordkit.dtypes import (
    BFloat16Bits,
    cast_for_storage,
    encode_tensor,
    stored_nbytes,
    stored_spec,
)
from recordkit.errors import RecordClosedError, RecordkitWarning, SnapshotError, describe_error
from recordkit.format.chunkread import page_aligned
from recordkit.format.directio import MIN_DIRECT_BYTES
from recordkit.format.filters import dataset_options
from recordkit.format.weights import (
    Last,
    SnapshotStore,
    SnapshotTarget,
    TensorSpec,
    read_aliases,
    read_last_snapshot,
    replaces_snapshot,
)
from recordkit.policy import SnapshotPolicy
from recordkit.runfile import RunFile
from recordkit.tensors import to_arrays
from recordkit.writer import SnapshotJob, SnapshotWriter

__all__ = ["SLICE_BYTES", "Snapshots", "slices"]

#: The writer thread writes a big tensor in slices of about this size, taking the run's
#: lock for one slice at a time, so a log() call never waits for a whole snapshot.
SLICE_BYTES = 16 * 1024 * 1024


def slices(target: SnapshotTarget) -> list[slice | None]:
    """Slices along a tensor's first axis, aligned to whole chunks, of about
    :data:`SLICE_BYTES` each; ``[None]`` when the tensor is written in one piece."""
    shape, chunks = target.array.shape, target.chunks
    if not shape or chunks is None:
        return [None]
    row_bytes = target.array.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    if shape[0] * row_bytes <= SLICE_BYTES:
        return [None]
    per_chunk = max(1, chunks[1])
    step = per_chunk * max(1, SLICE_BYTES // max(1, per_chunk * row_bytes))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


class Snapshots:
    """The snapshots of one run: checked in the caller's thread, copied, written.

    Args:
        run: the run's file and locks.
        store: writes into the file.
        background: write on a writer thread (the caller only copies); False writes in
            the caller's thread without copying.
        max_pending_bytes: bound on copied-but-unwritten bytes (None: one snapshot).
        size_warning_bytes: warn before the first snapshot above this estimate.
        durable: fsync after each snapshot.
        compressed: the store compresses (said in the size warning).
    """

    def __init__(self, run: RunFile, store: SnapshotStore, *, background: bool,
                 max_pending_bytes: int | None, size_warning_bytes: int | None,
                 durable: bool) -> None:
        self._run = run
        self._store = store
        self._background = background
        self._max_pending_bytes = max_pending_bytes
        self._size_warning_bytes = size_warning_bytes
        self._durable = durable
        self._writer: SnapshotWriter | None = None
        self._pool: dict[str, np.ndarray] = {}  # written snapshot buffers, for reuse
        self._pool_lock = threading.Lock()
        self._planned: int | None = None
        self._size_checked = False
        self._specs: dict[str, TensorSpec] | None = None  # read from the file once
        self._last: Last = None  # the last snapshot's (epoch, step)
        self._aliases_read = False  # the file's tied tensors are in the store

    @staticmethod
    def store(*, checksum: bool, compression: str | None, compression_opts: Any,
              chunk_bytes: Any) -> SnapshotStore:
        """The store of a recorder's storage options, checked (see ``Recorder``)."""
        filters = dataset_options(compression, compression_opts)
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1024:
            raise ValueError(f"Recorder(chunk_bytes={chunk_bytes!r}): must be an int >= 1024")
        return SnapshotStore(checksum=checksum, compression=filters.get("compression"),
                             compression_opts=filters.get("compression_opts"),
                             chunk_bytes=chunk_bytes)

    @staticmethod
    def check_bound(max_pending_bytes: Any) -> None:
        """Refuse a *max_pending_bytes* that is not an int >= 0 or None."""
        if max_pending_bytes is not None and (isinstance(max_pending_bytes, bool) or not
                                              isinstance(max_pending_bytes, int)
                                              or max_pending_bytes < 0):
            raise ValueError(f"Recorder(max_pending_bytes={max_pending_bytes!r}): must be "
                             "an int >= 0 or None (one snapshot at a time)")

    @property
    def writer(self) -> SnapshotWriter | None:
        """The background writer, once a snapshot started it."""
        return self._writer

    def plan(self, count: int | None) -> None:
        """How many snapshots the run will take (for the size warning)."""
        self._planned = count
        self._size_checked = False

    def rewind(self, epoch: int) -> None:
        """Drop the snapshots of *epoch* and later (with the run's lock held, the writer
        drained)."""
        self._specs = None  # read from the file again
        assert self._run.file is not None
        self._store.drop_from(self._run.file, epoch)

    def tensor_names(self) -> list[str]:
        """Tensors that earlier snapshots hold (aliases of tied ones included); call with
        the run's lock held."""
        held = [name for name, spec in self._known().items() if spec.held]
        return held + [alias for alias, target in self._aliases().items() if target in held]

    def tie(self, arrays: Mapping[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        """*arrays* without the aliases of tied tensors (call with the run's lock held).

        Two names whose arrays are the same memory (address, shape, strides, dtype: a
        torch ``state_dict`` gives one tensor under each name of a shared parameter) are
        one tensor: when they first appear together, it is stored under the first of its
        names and the others are recorded as its aliases (whose snapshots are then
        exactly its own). A name stored as a tensor of its own stays one, and a name tied
        to a tensor that earlier snapshots hold without it is stored as a tensor of its
        own.

        Raises:
            SnapshotError: a name recorded as an alias is no longer tied to its tensor.
        """
        aliases = self._aliases()
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, array in arrays.items():
            groups.setdefault(_memory_of(array, name), []).append(name)
        stored = self._known()  # every tensor with a dataset (held or not yet)
        tied: dict[str, str] = {}
        for names in groups.values():
            if len(names) < 2:
                continue
            if any(name in stored for name in names):  # the aliases it had, no new ones
                tied.update((n, aliases[n]) for n in names if aliases.get(n) in names)
            else:  # tied from their first snapshot on: an alias's snapshots are its tensor's
                tied.update((n, names[0]) for n in names[1:])
        for alias, target in aliases.items():
            if alias in arrays and tied.get(alias) != target:
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {alias!r} was tied to {target!r} "
                    f"(one tensor in memory) in earlier snapshots of {str(self._run.path)!r} "
                    "and is not now; a tied tensor must stay tied across snapshots")
        if any(aliases.get(alias) != target for alias, target in tied.items()):
            self._store.aliases = {**aliases, **tied}
        return {name: a for name, a in arrays.items() if name not in tied}

    def _aliases(self) -> dict[str, str]:
        if not self._aliases_read:
            assert self._run.file is not None
            self._store.aliases = read_aliases(self._run.file)
            self._aliases_read = True
        return self._store.aliases

    @staticmethod
    def select(weights: Any, policy: SnapshotPolicy | None,
               frozen: Collection[str]) -> tuple[dict[str, np.ndarray], str]:
        """The tensors of *weights* a snapshot keeps (``{name: array}``, not copied) and
        their storage dtype: the policy's include / exclude and dtype, frozen left out."""
        arrays = to_arrays(weights, copy=False)
        if policy is not None:
            return {name: arrays[name] for name in policy.select(arrays, frozen)}, policy.dtype
        if frozen:
            arrays = {name: a for name, a in arrays.items() if name not in frozen}
        return arrays, "keep"

    def pending_error(self, *, wait: bool) -> BaseException | None:
        """The error of a queued snapshot: after waiting for the queue to be written
        (without the run's lock), or, without *wait*, one already known."""
        if wait:
            return self.drain()
        try:
            self.check()
        except BaseException as err:
            return err
        return None

    def check(self) -> None:
        """Raise the error of an earlier queued snapshot, once."""
        if self._writer is not None:
            self._writer.check()

    def take(self, arrays: Mapping[str, np.ndarray], dtype: str, epoch: int,
             step: int) -> int | None:
        """Check a snapshot (with the run's lock held) and, without a background writer,
        write it. Returns the bytes to :meth:`queue` it with, or None when written.

        Raises:
            SnapshotError: a tensor changed shape or dtype, or one held earlier is missing.
        """
        self._check_tensors(arrays, dtype, epoch, step)
        nbytes = sum(stored_nbytes(a, dtype) for a in arrays.values())
        self._check_size(nbytes)
        if not self._background:  # the caller waits, so its arrays need no copy
            self._write({name: cast_for_storage(a, dtype) for name, a in arrays.items()},
                        epoch, step)
            return None
        self._start_writer()
        return nbytes

    def queue(self, arrays: Mapping[str, np.ndarray], dtype: str, epoch: int, step: int,
              nbytes: int) -> None:
        """Copy a checked snapshot (without the run's lock) and queue it for the writer;
        waits while the writer is *max_pending_bytes* behind.

        The job is queued before the copies are made and each copy is handed over as it
        is made, so the writer writes the first tensors while the next are copied: the
        copy and the write of one snapshot overlap instead of following each other."""
        writer = self._writer
        assert writer is not None
        try:
            writer.reserve(nbytes)  # back-pressure: waits, without the lock, for room
        except BaseException:
            with self._run.lock:
                self._specs = None  # this snapshot was checked but is not queued
            raise
        specs = {name: (tuple(a.shape), *stored_spec(a, dtype)) for name, a in arrays.items()}
        job = SnapshotJob({}, epoch, step, nbytes, specs=specs, owner=self)
        writer.submit(job)
        try:
            for name, a in arrays.items():
                # The next training step may change the tensors: copy now. A cast is a copy.
                job.add(name, self._host_copy(name, a) if dtype == "keep"
                        else cast_for_storage(a, dtype))
        except BaseException as err:
            job.abort(err)  # the writer drops it and releases its reservation
            with self._run.lock:
                self._specs = None
            raise

    def drain(self) -> BaseException | None:
        """Wait until the queued snapshots are written; return the writer's error, if any.
        Called without the run's lock: the writer takes it for each slice it writes."""
        writer = self._writer
        if writer is None:
            return None
        try:
            writer.wait()
        except BaseException as err:
            return err
        return None

    def wait_written(self) -> None:
        """Wait until the queued snapshots are written, keeping a writer error for the
        next commit or close. Called without the run's lock."""
        writer = self._writer
        if writer is not None:
            writer.wait_idle()

    def stop(self) -> BaseException | None:
        """Write what is queued, end the writer and return its error, if any."""
        writer = self._writer
        if writer is None:
            return None
        writer.stop()  # writes what is queued; without the lock, which it needs
        return self.drain()

    def stop_for_close(self, error: BaseException | str | None
                       ) -> tuple[BaseException | str | None, BaseException | None]:
        """Stop the writer before the run closes. Returns the error to store in the run
        and the writer's error to raise after closing: a snapshot that was not written is
        stored as the run's error; when the run closes after a crash (*error* given) it
        is added to that error and warned about instead of raised, so it does not hide
        the crash."""
        writer_error = self.stop()
        if writer_error is None:
            return error, None
        lost = f"a snapshot was not written: {type(writer_error).__name__}: {writer_error}"
        if error is None:
            return lost, writer_error
        warnings.warn(f"recordkit: {str(self._run.path)!r}: {lost}", RecordkitWarning,
                      stacklevel=3)  # this, Recorder.close, its caller
        return f"{describe_error(error)}; {lost}", None

    def release_buffers(self) -> None:
        with self._pool_lock:
            self._pool.clear()

    def read_last(self) -> dict[str, np.ndarray]:
        """Every tensor of the last snapshot in the file (with the run's lock held, after
        :meth:`drain`)."""
        assert self._run.file is not None
        return read_last_snapshot(self._run.file, self._run.path)

    # --- internals ----------------------------------------------------------------------

    def _host_copy(self, name: str, array: np.ndarray) -> np.ndarray:
        """A copy of *array* that training can no longer change, made into the buffer of
        the same tensor's last written snapshot when there is one: fresh memory costs a
        page fault per 4 KiB, which made the copy 2-3x slower than the memcpy itself
        (docs/BENCHMARKS.md). At most one set of buffers is kept between snapshots."""
        with self._pool_lock:
            buffer = self._pool.pop(name, None)
        if (buffer is not None and buffer.shape == array.shape
                and buffer.dtype == array.dtype and type(buffer) is type(array)):
            np.copyto(buffer, array)
            return buffer
        if type(array) is np.ndarray and array.nbytes > MIN_DIRECT_BYTES:
            # page-aligned, as a direct write of its chunks needs (format.directio)
            buffer = page_aligned(array.nbytes).view(array.dtype).reshape(array.shape)
            np.copyto(buffer, array)
            return buffer
        return array.copy()  # .copy() keeps BFloat16Bits

    def _start_writer(self) -> SnapshotWriter:
        if self._writer is None or not self._writer.alive:
            ref = weakref.ref(self)

            def write_job(job: SnapshotJob) -> None:
                # A queued job holds its snapshots (job.owner), so a recorder collected
                # in a cycle, whose weak references die before its finalizers run, still
                # writes what it queued; once written the job lets go of them.
                snapshots, job.owner = job.owner or ref(), None
                if snapshots is None:
                    raise RecordClosedError("the recorder was garbage-collected with "
                                            "snapshots still queued")
                snapshots._write_job(job)

            self._writer = SnapshotWriter(write_job, max_pending_bytes=self._max_pending_bytes,
                                          name=f"recordkit-writer-{self._run.path.stem}")
            # Queued snapshots are written when the recorder is dropped or at exit.
            weakref.finalize(self, self._writer.stop)
        return self._writer

    def _write_job(self, job: SnapshotJob) -> None:
        try:
            self._write(job.arrays, job.epoch, job.step, job)
        except BaseException:
            with self._run.lock:
                self._specs = None  # re-read from the file on the next call
            raise
        with self._pool_lock:  # written: its buffers take the next snapshot
            self._pool.update(job.arrays)

    def _known(self) -> dict[str, TensorSpec]:
        if self._specs is None:
            assert self._run.file is not None
            self._specs, self._last = SnapshotStore.specs(self._run.file)
        return self._specs

    def _check_tensors(self, arrays: Mapping[str, np.ndarray], dtype: str, epoch: int,
                       step: int) -> None:
        """Raise SnapshotError in the caller's thread, before anything is queued, when a
        tensor changed shape or dtype or went missing. The writer checks again against
        the file; this check only makes the error come from the call that caused it."""
        specs = self._known()
        path = self._run.path
        checked = {}  # (each stored_spec costs ~20 us: numpy's dtype.name is Python code)
        for name, array in arrays.items():
            known = specs.get(name)
            stored = checked[name] = stored_spec(array, dtype)
            if known is not None and (known.shape, known.dtype, known.stored_dtype) != (
                    tuple(array.shape), *stored):
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {name!r} is {stored[1]}"
                    f"{list(array.shape)} but earlier snapshots in {str(path)!r} hold "
                    f"{known.stored_dtype}{list(known.shape)}; a tensor must keep its shape "
                    "and dtype across snapshots"
                )
        if not replaces_snapshot(self._last, epoch, step):
            for name, spec in specs.items():
                if spec.held and name not in arrays:
                    raise SnapshotError(
                        f"snapshot at epoch {epoch}: tensor {name!r}, held in earlier "
                        f"snapshots of {str(path)!r}, is missing; snapshot the same "
                        "tensors each time (same include/exclude/frozen)"
                    )
        for name, array in arrays.items():
            specs[name] = TensorSpec(tuple(array.shape), *checked[name], True)
        self._last = (epoch, step)

    def _check_size(self, snapshot_bytes: int) -> None:
        """Warn once, before the first snapshot, when the record will not fit."""
        if self._size_checked:
            return
        self._size_checked = True
        planned = self._planned
        total = snapshot_bytes * (planned if planned is not None else 1)
        path = self._run.path
        free = free_bytes(path.parent)
        about = (f"{planned} planned snapshot(s)" if planned is not None
                 else "one snapshot (call Recorder.plan(epochs=...) for a full estimate)")
        compressed = " before compression" if self._store.compressed else ""
        if free is not None and total > free:
            problem = f"only {size_text(free)} are free on the disk"
        elif (planned is not None and self._size_warning_bytes is not None
              and total > self._size_warning_bytes):
            problem = f"above the warning threshold of {size_text(self._size_warning_bytes)}"
        else:
            return
        warnings.warn(
            f"recordkit: {str(path)!r} will hold about {size_text(total)}{compressed} of "
            f"weights ({about} of {size_text(snapshot_bytes)}), {problem}; snapshot less "
            "often (snapshot_every=N or 'best'), exclude tensors, store float16/bfloat16, "
            "or choose another root",
            RecordkitWarning, stacklevel=4,  # _check_size, take, Recorder.snapshot, caller
        )

    def _write(self, arrays: Mapping[str, np.ndarray], epoch: int, step: int,
               job: SnapshotJob | None = None) -> None:
        """Write one snapshot: on the writer thread, or on the caller's in sync mode.

        The run's lock is held for the metadata steps and for each slice of data, not
        for the whole snapshot. The table row goes last: readers trust only snapshots the
        table lists, so a crash mid-snapshot leaves the previous snapshots intact. A
        streamed *job* gives each tensor's copy when it is made (:meth:`SnapshotJob.take`,
        waited for without the lock); until then the datasets are made from its specs.
        """
        if job is not None and job.specs is not None:
            encoded = {name: (_placeholder(shape, stored), name_)
                       for name, (shape, stored, name_) in job.specs.items()}
        else:
            encoded = {}
            for name, array in arrays.items():
                try:
                    encoded[name] = encode_tensor(np.asarray(array) if not isinstance(
                        array, BFloat16Bits) else array)
                except TypeError as err:
                    raise SnapshotError(f"snapshot: tensor {name!r}: {err}") from None
        run = self._run
        what = f"write the snapshot of epoch {epoch}"
        with run.lock:
            f = run.file
            if f is None:
                raise RecordClosedError(f"snapshot of epoch {epoch}: {str(run.path)!r} "
                                        "was closed before the snapshot was written")
            with run.as_write_error(what):
                self._store.check_missing(f, run.path, epoch, step, encoded)
                # Checked before HDF5 starts: a write that fails inside it can damage
                # what earlier commits wrote.
                run.ensure_space(sum(int(a.nbytes) for a, _ in encoded.values()), what)
                plan = self._store.prepare(f, run.path, epoch, step, encoded)
        try:
            for target in plan.targets:
                if job is not None and job.specs is not None:
                    if target.members:  # a pack: written once all its members are copied
                        for name, offset in target.members:
                            array = _stored(name, job.take(name), encoded[name][0])
                            target.array[offset:offset + array.size] = array.reshape(-1)
                    else:
                        target.array = _stored(target.name, job.take(target.name),
                                               target.array)
                for part in slices(target):
                    with run.lock, run.as_write_error(what):
                        SnapshotStore.write(target, part)
            with run.lock, run.as_write_error(what):
                self._store.finish(f, plan)
                fd = run.fsync_handle() if self._durable else None
        finally:
            plan.close()  # its direct writes' descriptor, when it failed before finish
        if fd is not None:  # without the lock: log() need not wait for the disk
            with run.as_write_error(what):
                os.fsync(fd)


def _memory_of(array: np.ndarray, name: str) -> tuple[Any, ...]:
    """What makes two arrays one tensor in memory; an empty array (whose address means
    nothing) is one of its own."""
    if not array.size:
        return ("empty", name)
    return (array.__array_interface__["data"][0], array.shape, array.strides,
            array.dtype.str, type(array).__name__)


def _placeholder(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An array of *shape* and *dtype* that holds no memory: what a streamed snapshot's
    datasets are made from before its copies exist."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))


def _stored(name: str, copy: Any, placeholder: np.ndarray) -> np.ndarray:
    """The stored form of a streamed tensor's copy, which must match its spec."""
    try:
        array, _ = encode_tensor(np.asarray(copy) if not isinstance(copy, BFloat16Bits)
                                 else copy)
    except TypeError as err:
        raise SnapshotError(f"snapshot: tensor {name!r}: {err}") from None
    if array.shape != placeholder.shape or array.dtype != placeholder.dtype:
        raise SnapshotError(f"snapshot: tensor {name!r} changed while it was copied: "
                            f"{array.dtype}{list(array.shape)}, expected "
                            f"{placeholder.dtype}{list(placeholder.shape)}")
    return array
