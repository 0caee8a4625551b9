"""Reading one snapshot of a tensor chunk by chunk, with the fletcher32 checksums verified
here instead of inside HDF5.

Why: HDF5's fletcher32 filter reads each chunk into a scratch buffer, checks it, copies it
to a second buffer without the checksum, then copies that into the caller's array: three
passes over the data besides the read, all on the calling thread. Here each stored chunk
(data + 4 checksum bytes) is read straight into its place in the result
(``H5Dread_chunk``), and the checksums are computed by HDF5's own ``H5_checksum_fletcher32``
on a few threads while the next chunk is read (``ctypes`` releases the GIL; the
function is an HDF5 internal, isolated in :mod:`.fletcher32`). On a 16 MiB
tensor this is about 1.7× faster than ``ds[i]`` (docs/BENCHMARKS.md).

The result is the same as HDF5's or the read is not taken: :func:`read_snapshot` returns
None for any layout other than the plain one recordkit writes (one snapshot per chunk,
chunks split along the first tensor axis only, fletcher32 as the only filter, native byte
order) and for any chunk that is missing, has a skipped filter or fails its checksum. The
caller then reads through HDF5, which gives the values, or its own error for damage.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import h5py
import h5py.h5d
import h5py.h5z
import numpy as np

from recordkit.format.checksums import chunk_grid, crc32c, crc32c_combine
from recordkit.format.chunks import read_chunk
from recordkit.format.fletcher32 import combine, native, piece_sums, same

__all__ = ["ChunkChecksumError", "RowLayout", "check_stored_chunks", "file_fd",
           "fold_laid_out_rows", "page_aligned", "read_checked_row", "read_laid_out_row",
           "read_snapshot", "read_unfiltered", "row_layout", "stored_chunks", "stored_fd"]

#: Below this a tensor is read through HDF5: the saving is smaller than a thread hop.
MIN_BYTES = 1 << 20
#: Checksum pieces are not made smaller than this.
MIN_PIECE = 1 << 20
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()
T = TypeVar("T")


#: Buffers that ``preadv`` fills start on a page of this size (see :func:`page_aligned`).
PAGE = 4096


def page_aligned(nbytes: int) -> np.ndarray:
    """An uninitialised ``uint8`` buffer of *nbytes* that starts on a page.

    A large numpy array that malloc maps afresh starts 16 bytes past a page (the
    allocator's header), and the kernel's copy out of the page cache into such a buffer
    ran three times slower here than into a page-aligned one: ``preadv`` of 16 MiB took
    15.7 ms against 4.2 ms (AMD EPYC, median of 30). The buffer's base keeps the few
    bytes skipped.
    """
    raw = np.empty(nbytes + PAGE, np.uint8)
    skip = (-raw.ctypes.data) % PAGE
    return raw[skip:skip + nbytes]


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The checksum threads, made again in a forked child (a pool's threads do not survive
    fork, and a copied pool would wait for them forever)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(
                _workers(), thread_name_prefix="recordkit-checksum")
            _pool_pid = os.getpid()
        return _pool


def _plain_layout(ds: h5py.Dataset) -> tuple[int, int] | None:
    """(rows per chunk, bytes per row) when *ds* has the layout read here, else None."""
    chunks = ds.chunks
    shape = ds.shape
    if chunks is None or len(shape) < 2 or chunks[0] != 1 or tuple(chunks[2:]) != shape[2:]:
        return None
    dtype = ds.dtype
    if dtype.kind not in "biufc" or not dtype.isnative or dtype.names:
        return None
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1 or plist.get_filter(0)[0] != h5py.h5z.FILTER_FLETCHER32:
        return None
    row_bytes = dtype.itemsize * math.prod(shape[2:])
    if row_bytes % 2 or not row_bytes or not shape[1]:
        return None  # odd pieces would not combine; empty tensors need no speed
    return int(chunks[1]), row_bytes


def read_snapshot(ds: h5py.Dataset, index: int) -> np.ndarray | None:
    """``ds[index]`` of a weight dataset, checksums verified, or None when this read does
    not apply (then read ``ds[index]`` through HDF5).

    Args:
        ds: a weight dataset: (snapshots, *tensor_shape).
        index: a snapshot position, ``0 <= index < ds.shape[0]``.
    """
    layout = _plain_layout(ds)
    checksum = native()
    if layout is None or checksum is None:
        return None
    rows_per_chunk, row_bytes = layout
    rows = int(ds.shape[1])
    total = rows * row_bytes
    if total < MIN_BYTES:
        return None
    chunk_bytes = rows_per_chunk * row_bytes
    n_chunks = -(-rows // rows_per_chunk)
    pool = _executor()
    splits = max(1, min(_workers() // n_chunks + (_workers() % n_chunks > 0),
                        chunk_bytes // MIN_PIECE))
    # 4 bytes of slack: each chunk's checksum lands where the next chunk's data goes.
    out = page_aligned(total + 4)
    pending: list[tuple[int, list[concurrent.futures.Future[tuple[int, int, int]]]]] = []
    dsid = ds.id
    offsets_tail = (0,) * (len(ds.shape) - 2)
    try:
        for chunk in range(n_chunks):
            start = chunk * row_bytes * rows_per_chunk
            partial = start + chunk_bytes > total
            target = np.empty(chunk_bytes + 4, np.uint8) if partial else out[start:]
            mask, stored = read_chunk(dsid, (index, chunk * rows_per_chunk, *offsets_tail),
                                      out=target)
            if mask != 0 or len(stored) != chunk_bytes + 4:
                return None
            expected = int.from_bytes(bytes(target[chunk_bytes:chunk_bytes + 4]), "little")
            base = target.ctypes.data
            piece = (chunk_bytes // splits) & ~1
            bounds = [i * piece for i in range(splits)] + [chunk_bytes]
            futures = [pool.submit(piece_sums, checksum, base + lo, hi - lo)
                       for lo, hi in itertools.pairwise(bounds)]
            if partial:
                # The scratch buffer is read by the checksum threads: wait for them.
                if not same(combine([f.result() for f in futures]), expected):
                    return None
                out[start:total] = target[:total - start]
            else:
                pending.append((expected, futures))
        for expected, futures in pending:
            if not same(combine([f.result() for f in futures]), expected):
                return None
    except (OSError, RuntimeError, ValueError, TypeError):
        return None  # a missing chunk, an old h5py without out=: HDF5 reads it
    finally:
        for _, futures in pending:
            concurrent.futures.wait(futures)  # never free a buffer a thread still reads
    return out[:total].view(ds.dtype).reshape(ds.shape[1:])


# --- format version 2: CRC32C per stored chunk ---------------------------------------------


class ChunkChecksumError(ValueError):
    """A stored chunk of a weight row is missing or fails its CRC32C."""

    def __init__(self, offset: tuple[int, ...], problem: str) -> None:
        super().__init__(f"the chunk at {list(offset)} {problem}")
        self.offset = offset
        #: the dataset row, when a read of several rows says which one
        self.row: int | None = None


#: Below this a row is read and checked on the calling thread alone, in cache-sized
#: pieces; from it on, half of it is handed to a helper thread when that thread has
#: been starting in time (:class:`_Sharer`). Measured at 4 MiB (300 reads, each paired
#: with an ``np.fromfile`` of 4 MiB, medians of the ratios): idle machine, shared 1.32x
#: against alone 1.53x; both cores busy, 1.50x against 1.42x (after a miss the helper
#: is left out). The hand-over (a lock released, the helper woken) costs 20-80 us, as
#: much as reading 0.5 MiB, so smaller rows are read alone.
MIN_PIPELINED_BYTES = 2 << 20
_helper: concurrent.futures.ThreadPoolExecutor | None = None
_helper_pid = 0


def _helper_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One thread that reads and checks half of a row while the caller does the other."""
    global _helper, _helper_pid
    with _pool_lock:
        if _helper is None or _helper_pid != os.getpid():
            _helper = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="recordkit-crc32c")
            _helper_pid = os.getpid()
        return _helper


class _Share:
    """A piece of work handed to the read helper thread, done by whichever thread claims
    it first: the helper when it starts in time, else the caller once its own part is
    done (a busy machine, where the helper waits for a core). Lighter than a
    ``concurrent.futures`` future (two locks, no condition): at 4 MiB the hand-over is
    what decides whether sharing pays.

    The caller must :meth:`claim_or_wait` before it returns (the work writes into the
    caller's buffer); the work's arguments are dropped once it ran, so that a buffer
    is not kept alive by a finished item."""

    __slots__ = ("_claimed", "_done", "_work", "error", "result")

    def __init__(self, work: Callable[[], Any]) -> None:
        self._claimed = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()
        self._work: Callable[[], Any] | None = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> bool:
        """Do the work unless the other thread claimed it; whether it was done here."""
        if not self._claimed.acquire(blocking=False):
            return False
        work, self._work = self._work, None
        try:
            assert work is not None
            self.result = work()
        except BaseException as err:  # handed to the caller
            self.error = err
        finally:
            self._done.release()
        return True

    def claim_or_wait(self) -> bool:
        """Do the work here if the helper has not started it, else wait until it is done;
        True when the helper did it."""
        if self.run():
            return False
        self._done.acquire()
        self._done.release()
        return True

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _Sharer:
    """The read helper thread, and whether handing it work pays now: after a hand-over
    the helper did not start on before the caller was done (the machine's cores are
    busy), rows are read alone for the next :data:`_ALONE_AFTER_MISS` reads."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Share] = queue.SimpleQueue()
        self._alone = 0
        self._thread = threading.Thread(target=self._serve, name="recordkit-read-helper",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            self._queue.get().run()

    def wanted(self) -> bool:
        if self._alone:
            self._alone -= 1
            return False
        return True

    def hand(self, work: Callable[[], Any]) -> _Share:
        share = _Share(work)
        self._queue.put(share)
        return share

    def settle(self, share: _Share) -> Any:
        """Wait for (or do) *share*; its result. A share the helper had not started is
        counted as a miss."""
        if not share.claim_or_wait():
            self._alone = _ALONE_AFTER_MISS
        return share.value()


#: Rows read alone after a hand-over the helper did not start on in time.
_ALONE_AFTER_MISS = 32
_sharer: _Sharer | None = None
_sharer_pid = 0


def _read_sharer() -> _Sharer:
    """This process's :class:`_Sharer` (made again in a forked child: a thread does not
    survive fork)."""
    global _sharer, _sharer_pid
    with _pool_lock:
        if _sharer is None or _sharer_pid != os.getpid():
            _sharer = _Sharer()
            _sharer_pid = os.getpid()
        return _sharer


def stored_fd(ds: h5py.Dataset) -> int | None:
    """The OS file descriptor of a dataset's file (sec2 driver), else None."""
    try:
        if ds.file.driver != "sec2":
            return None
        fd = ds.file.id.get_vfd_handle()
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError):
        return None
    return fd if isinstance(fd, int) else None


def stored_chunks(ds: h5py.Dataset) -> tuple[tuple[int, ...], int, bool]:
    """(chunk shape over the tensor axes, bytes per stored chunk, whether a chunk is a
    contiguous run of the row: split along the first tensor axis only)."""
    assert ds.chunks is not None
    chunks = tuple(ds.chunks[1:])
    return chunks, ds.dtype.itemsize * math.prod(chunks), chunks[1:] == tuple(ds.shape[2:])


def read_checked_row(ds: h5py.Dataset, index: int, expected: np.ndarray, *,
                     fd: int | None = -1) -> np.ndarray | None:
    """``ds[index]`` of an unfiltered (v2) weight dataset, each stored chunk checked
    against its CRC32C in *expected* (a row of ``/checksums/<tensor>``); None when the
    dataset has filters (then check with :func:`check_stored_chunks` and read through
    HDF5).

    The chunks are located through HDF5 (``H5Dget_chunk_info_by_coord``) and read with
    ``preadv`` straight into the result (see :func:`read_laid_out_row`). Reading many rows
    of one dataset, :func:`row_layout` once and :func:`read_laid_out_row` per row cost
    less.

    Args:
        ds: an unfiltered v2 weight dataset.
        index: the dataset row.
        expected: that row of its checksums.
        fd: the file's descriptor (:func:`stored_fd`, None when it has none); asked for
            when not given.

    Raises:
        ChunkChecksumError: a chunk is missing, has the wrong size or fails its CRC32C.
    """
    if ds.id.get_create_plist().get_nfilters():
        return None
    shape = tuple(ds.shape[1:])
    chunks, chunk_bytes, plain = stored_chunks(ds)
    grid = list(chunk_grid(shape, chunks))
    if len(grid) != len(expected):
        raise ChunkChecksumError((index,), f"has {len(expected)} checksums for {len(grid)} "
                                 "chunks")
    if fd == -1:
        fd = stored_fd(ds)
    dsid = ds.id
    if not plain or fd is None:
        out = np.empty(shape, ds.dtype)
        for k, offset in enumerate(grid):
            _, stored = read_chunk(dsid, (index, *offset))
            if len(stored) != chunk_bytes or crc32c(stored) != int(expected[k]):
                raise ChunkChecksumError(offset, "fails its CRC32C checksum")
            ends = [min(o + c, d) for o, c, d in zip(offset, chunks, shape)]
            block = np.frombuffer(stored, ds.dtype).reshape(chunks)
            out[tuple(slice(o, e) for o, e in zip(offset, ends))] = block[
                tuple(slice(0, e - o) for o, e in zip(offset, ends))]
        return out
    places = np.full((1, max(1, len(grid))), -1, np.int64)
    sizes = np.zeros_like(places)
    for k, offset in enumerate(grid):
        info = dsid.get_chunk_info_by_coord((index, *offset))
        if info.byte_offset is not None:
            places[0, k], sizes[0, k] = info.byte_offset, info.size
    layout = RowLayout(shape, ds.dtype, grid, chunk_bytes, places, sizes)
    return read_laid_out_row(fd, layout, 0, expected, where=index)


def file_fd(f: h5py.File) -> int | None:
    """The OS file descriptor of an open file (sec2 driver), else None."""
    try:
        if f.driver != "sec2":
            return None
        fd = f.id.get_vfd_handle()
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError):
        return None
    return fd if isinstance(fd, int) else None


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Where the stored chunks of an unfiltered (v2) weight dataset are, read once for
    many rows: an h5py property read costs microseconds and a chunk lookup tens of them,
    as much as reading a 64 KiB row."""

    shape: tuple[int, ...]  # of one row (the tensor)
    dtype: np.dtype[Any]
    grid: list[tuple[int, ...]]  # each chunk's offset in a row, in C order
    chunk_bytes: int
    #: (rows, chunks per row): each stored chunk's byte offset in the file (-1: missing)
    #: and its stored size.
    places: np.ndarray
    sizes: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.places.shape[0])


def row_layout(ds: h5py.Dataset) -> RowLayout | None:
    """The :class:`RowLayout` of every row *ds* holds now, from one walk of its chunk
    index (``H5Dchunk_iter``); None when the dataset has filters, chunks that are not
    contiguous runs of a row, no chunks, or HDF5 has no chunk iteration (then read with
    :func:`read_checked_row`)."""
    if ds.chunks is None or ds.id.get_create_plist().get_nfilters():
        return None
    shape = tuple(ds.shape[1:])
    chunks, chunk_bytes, plain = stored_chunks(ds)
    grid = list(chunk_grid(shape, chunks))
    if not plain or not grid or not ds.shape[0] or ds.chunks[0] != 1:
        return None
    places = np.full((int(ds.shape[0]), len(grid)), -1, np.int64)
    sizes = np.zeros_like(places)
    step = chunks[0] if chunks else 1

    def each(info: Any) -> None:
        at = info.chunk_offset
        row = at[0]
        k = at[1] // step if len(at) > 1 else 0
        if row < places.shape[0] and k < places.shape[1]:
            places[row, k] = info.byte_offset
            # a chunk a filter was skipped for is not its plain bytes: treat as wrong size
            sizes[row, k] = info.size if not info.filter_mask else -1
    try:
        ds.id.chunk_iter(each)
    except (AttributeError, RuntimeError, ValueError, TypeError):
        return None  # an HDF5 before 1.12.3: no iteration
    return RowLayout(shape, ds.dtype, grid, chunk_bytes, places, sizes)


def read_unfiltered(fd: int, ds: h5py.Dataset) -> np.ndarray | None:
    """All of an unfiltered chunked dataset, its chunks read with ``preadv`` from *fd*
    (the bytes on disk now, not what HDF5's chunk cache kept from earlier in this open);
    None when it has filters, more than one chunk across its later axes, a chunk that
    is missing or lies past the end of the file, or HDF5 has no chunk iteration."""
    chunks = ds.chunks
    if (chunks is None or ds.id.get_create_plist().get_nfilters() or not ds.shape
            or tuple(chunks[1:]) != tuple(ds.shape[1:]) or not ds.dtype.isnative):
        return None
    out = np.empty(ds.shape, ds.dtype)
    chunk_bytes = ds.dtype.itemsize * math.prod(chunks)
    size = os.fstat(fd).st_size
    found: list[tuple[int, int, int]] = []
    try:
        ds.id.chunk_iter(lambda info: found.append(
            (info.chunk_offset[0], info.byte_offset, info.size)))
    except (AttributeError, RuntimeError, ValueError, TypeError):
        return None
    if len(found) != -(-ds.shape[0] // chunks[0]):
        return None
    flat = out.reshape(ds.shape[0], -1).view(np.uint8)
    for first, at, stored in found:
        if stored != chunk_bytes or at + stored > size:
            return None
        block = np.empty(chunk_bytes, np.uint8)
        if os.preadv(fd, [block.data], at) != chunk_bytes:
            return None
        rows = min(chunks[0], ds.shape[0] - first)
        flat[first:first + rows] = block.reshape(chunks[0], -1)[:rows]
    return out


#: A row is read and checked in pieces of this many bytes, each CRC32C'd as it lands
#: (still in the CPU's cache): measured on this machine, a 4 MiB row in 1 MiB pieces
#: took 0.69-0.75 ms against 0.82-0.87 ms read whole, then checked.
PIECE_BYTES = 1 << 20


def read_laid_out_row(fd: int, layout: RowLayout, index: int, expected: np.ndarray, *,
                      where: int | None = None) -> np.ndarray:
    """Row *index* of a dataset laid out as *layout* (:func:`row_layout`), read with
    ``preadv`` from *fd* straight into the result and each chunk checked against its
    CRC32C in *expected*; the edge chunk is read whole, padding included, into a buffer
    padded to whole chunks.

    Args:
        fd: the file's descriptor (:func:`file_fd`).
        layout: the dataset's layout; *index* must be below ``layout.rows``.
        index: the row of ``layout.places``.
        expected: that row of its checksums.
        where: the dataset row, for messages (*index* by default).

    Raises:
        ChunkChecksumError: a chunk is missing, has the wrong size, lies past the end
            of the file or fails its CRC32C.
    """
    grid = layout.grid
    chunk_bytes = layout.chunk_bytes
    places = _places(fd, layout, index, expected, index if where is None else where)
    total = layout.dtype.itemsize * math.prod(layout.shape)
    # Padded to whole chunks, so the edge chunk is read in place too.
    buffer = page_aligned(len(grid) * chunk_bytes)
    if total < MIN_PIPELINED_BYTES or not _pipelined(fd, buffer, chunk_bytes, places,
                                                     expected):
        starts = {k: at for k, _, at in places}
        crcs = _read_pieces(fd, buffer, chunk_bytes, starts,
                            [(k, offset, 0, chunk_bytes) for k, offset, _ in places])
        for (k, offset, _), crc in zip(places, crcs):
            if crc != int(expected[k]):
                raise ChunkChecksumError(offset, "fails its CRC32C checksum")
    return buffer[:total].view(layout.dtype).reshape(layout.shape)


#: One piece of a row: (chunk index, its offset, first byte in the chunk, end byte).
_Piece = tuple[int, tuple[int, ...], int, int]
#: Where one stored chunk of a row is: (chunk index, its offset in the row, file offset).
_Place = tuple[int, tuple[int, ...], int]


def _places(fd: int, layout: RowLayout, index: int, expected: np.ndarray, row: int
            ) -> list[_Place]:
    """Each chunk of row *index*, checked to be stored whole inside the file."""
    grid = layout.grid
    if len(grid) != len(expected):
        raise ChunkChecksumError((row,), f"has {len(expected)} checksums for {len(grid)} "
                                 "chunks")
    chunk_bytes = layout.chunk_bytes
    size = os.fstat(fd).st_size
    places = []
    for k, (at, stored) in enumerate(zip(layout.places[index].tolist(),
                                         layout.sizes[index].tolist())):
        if at < 0:
            raise ChunkChecksumError(grid[k], "is missing (never written)")
        if stored != chunk_bytes or at + stored > size:
            raise ChunkChecksumError(grid[k], f"is stored as {stored} bytes at {at}, past "
                                     "the file or not one chunk")
        places.append((k, grid[k], at))
    return places


def _check_pieces(places: list[_Place], pieces: list[_Piece], crcs: list[int],
                  expected: np.ndarray) -> None:
    """Check each chunk's CRC32C, combined from those of its *pieces* (in row order)."""
    sums: dict[int, int] = {}
    for (k, _, lo, hi), crc in zip(pieces, crcs):
        sums[k] = crc if lo == 0 else crc32c_combine(sums[k], crc, hi - lo)
    for k, offset, _ in places:
        if sums[k] != int(expected[k]):
            raise ChunkChecksumError(offset, "fails its CRC32C checksum")


#: Rows are folded (:func:`fold_laid_out_rows`) in pieces of this many bytes. Measured
#: here (weights.distance from init over 20 x 64 MiB in 16 MiB tensors, two threads,
#: idle machine, speed over raw reads): 512 KiB pieces 0.89x, 1 MiB 0.97x, 2 MiB
#: 1.02-1.06x: the calls per piece cost more than a larger piece's cache misses.
FOLD_PIECE_BYTES = 1 << 21
#: Rows of at least this many bytes are folded on two threads.
MIN_SPLIT_FOLD_BYTES = 1 << 21
_scratch = threading.local()

#: fold(j, piece, first byte): a function of one piece of the j-th row folded.
RowFold = Callable[[int, np.ndarray, int], Any]


def _fold_buffer() -> np.ndarray:
    """This thread's piece buffer (kept: a buffer the kernel already mapped and the CPU
    has in cache is where a copy from the page cache is fastest)."""
    buffer = getattr(_scratch, "piece", None)
    if buffer is None or buffer.size != FOLD_PIECE_BYTES:
        buffer = _scratch.piece = page_aligned(FOLD_PIECE_BYTES)
    return buffer


def _fold_pieces(fd: int, chunk_bytes: int, total: int, indices: list[int],
                 starts: list[dict[int, int]], pieces: list[_Piece], handed: list[RowFold]
                 ) -> tuple[list[list[int]], list[list[tuple[int, Any]]]]:
    """Fold *pieces* of each row (``starts[j]``: the chunk places of dataset row
    ``indices[j]``), piece by piece across the rows: each :data:`FOLD_PIECE_BYTES` of
    row 0, then the same span of row 1, and so on, each read into this thread's buffer,
    CRC32C'd, and its bytes that belong to the row (not the edge chunk's padding) handed
    to the fold in *handed*. Per row: the CRC32C of each piece, and [(first byte,
    fold's result)]."""
    fold = handed[0]
    buffer = _fold_buffer()
    rows = range(len(starts))
    crcs: list[list[int]] = [[] for _ in rows]
    folded: list[list[tuple[int, Any]]] = [[] for _ in rows]
    for k, offset, lo, hi in pieces:
        running = [0] * len(starts)
        for part in range(lo, hi, FOLD_PIECE_BYTES):
            end = min(hi, part + FOLD_PIECE_BYTES)
            view = buffer[:end - part]
            at = k * chunk_bytes + part
            for j in rows:
                if os.preadv(fd, [view.data], starts[j][k] + part) != end - part:
                    err = ChunkChecksumError(offset, "is cut short by the end of the file")
                    err.row = indices[j]
                    raise err
                running[j] = crc32c(view, running[j])
                if at < total:
                    folded[j].append((at, fold(j, view[:min(end - part, total - at)], at)))
        for j in rows:
            crcs[j].append(running[j])
    return crcs, folded


def _halves(places: list[_Place], chunk_bytes: int, total: int
            ) -> tuple[list[_Piece], list[_Piece]]:
    """A row's chunks as pieces cut in two halves of about the same bytes, the cut on a
    page (a chunk across it is cut in two, its CRC32C combined from the halves)."""
    cut = (total // 2) // PAGE * PAGE
    first: list[_Piece] = []
    second: list[_Piece] = []
    for k, offset, _ in places:
        lo, hi = k * chunk_bytes, (k + 1) * chunk_bytes
        if hi <= cut:
            first.append((k, offset, 0, chunk_bytes))
        elif lo >= cut:
            second.append((k, offset, 0, chunk_bytes))
        else:
            first.append((k, offset, 0, cut - lo))
            second.append((k, offset, cut - lo, chunk_bytes))
    return first, second


@contextlib.contextmanager
def _in_row(index: int) -> Iterator[None]:
    """A ChunkChecksumError raised inside says it is of dataset row *index*."""
    try:
        yield
    except ChunkChecksumError as err:
        err.row = index
        raise


def fold_laid_out_rows(fd: int, layout: RowLayout, indices: list[int],
                       expected: list[np.ndarray], fold: Callable[[int, np.ndarray, int], T]
                       ) -> list[list[tuple[int, T]]]:
    """Fold rows *indices* of a dataset laid out as *layout*, never holding one whole:
    piece by piece across the rows (a span of each row, then the next span), each piece
    read with ``preadv`` into a small buffer of the reading thread, CRC32C'd, and its
    bytes passed to ``fold(j, piece, first_byte)`` (*j*: the row's place in *indices*)
    while they are in the CPU's cache; what *fold* compares the pieces of one span
    with stays in the cache across the rows. Rows of :data:`MIN_SPLIT_FOLD_BYTES` or
    more are shared out in two halves of their bytes, one folded here and one by a
    helper thread (this thread does both when the helper has not started by the time it
    is done: a busy machine).

    *fold* gets a ``uint8`` view of the row's bytes ``[first_byte, first_byte +
    piece.size)``, valid only during the call (copy what it keeps; it may write over
    it: the buffer is the reading thread's, read into again), on either thread. A
    chunk's checksum is known only once all of it was read, so *fold* may see bytes of a
    chunk that then fails: the results are only returned when every chunk passed.
    *fold* must not read rows itself: a read on the same thread fills the same buffer.

    Args:
        fd: the file's descriptor (:func:`file_fd`).
        layout: the dataset's layout; each index must be below ``layout.rows``.
        indices: rows of ``layout.places``.
        expected: each row's checksums.

    Returns:
        Per row, ``(first byte, fold's result)`` for each piece, in row order.

    Raises:
        ChunkChecksumError: as :func:`read_laid_out_row`, for the first row that fails.
    """
    places = []
    for index, sums in zip(indices, expected):
        with _in_row(index):
            places.append(_places(fd, layout, index, sums, index))
    if not places:
        return []
    chunk_bytes = layout.chunk_bytes
    total = layout.dtype.itemsize * math.prod(layout.shape)
    starts = [{k: at for k, _, at in row} for row in places]
    handed: list[RowFold] = [fold]
    if total < MIN_SPLIT_FOLD_BYTES:
        pieces = [(k, offset, 0, chunk_bytes) for k, offset, _ in places[0]]
        crcs, folded = _fold_pieces(fd, chunk_bytes, total, indices, starts, pieces, handed)
        for index, row, row_crcs, sums in zip(indices, places, crcs, expected):
            with _in_row(index):
                _check_pieces(row, pieces, row_crcs, sums)
        return folded
    theirs, mine = _halves(places[0], chunk_bytes, total)
    # *fold* goes over in a list emptied below (on an error too), as the buffer in
    # _pipelined: a work item keeps its arguments (and whatever *fold* holds) a while.
    try:
        future = _helper_executor().submit(_fold_pieces, fd, chunk_bytes, total,
                                           indices, starts, theirs, handed)
        try:
            mine_crcs, mine_folded = _fold_pieces(fd, chunk_bytes, total, indices, starts,
                                                  mine, handed)
        finally:
            stolen = future.cancel()  # not started yet: do it here rather than wait
            if not stolen:
                concurrent.futures.wait([future])
        their_crcs, their_folded = (
            _fold_pieces(fd, chunk_bytes, total, indices, starts, theirs, handed) if stolen
            else future.result())
    finally:
        handed.clear()
    for j, (row, sums) in enumerate(zip(places, expected)):
        with _in_row(indices[j]):
            _check_pieces(row, theirs + mine, their_crcs[j] + mine_crcs[j], sums)
    return [t + m for t, m in zip(their_folded, mine_folded)]


def _read_pieces(fd: int, buffer: np.ndarray, chunk_bytes: int,
                 starts: dict[int, int], pieces: list[_Piece]) -> list[int]:
    """Read each piece into its place in *buffer*, :data:`PIECE_BYTES` at a time, each
    part CRC32C'd while it is in the cache; the CRC32C of each piece."""
    crcs = []
    for k, offset, lo, hi in pieces:
        crc = 0
        base = k * chunk_bytes
        for part in range(lo, hi, PIECE_BYTES):
            end = min(hi, part + PIECE_BYTES)
            view = buffer[base + part:base + end]
            if os.preadv(fd, [view.data], starts[k] + part) != end - part:
                raise ChunkChecksumError(offset, "is cut short by the end of the file")
            crc = crc32c(view, crc)
        crcs.append(crc)
    return crcs


def _pipelined(fd: int, buffer: np.ndarray, chunk_bytes: int,
               places: list[_Place], expected: np.ndarray) -> bool:
    """Read and check a row on two threads: the row's pieces (its chunks, a single chunk
    cut in two) are shared out in two halves, one read and checked here, one by the
    helper thread (``preadv`` and ``crc32c`` both release the GIL); a chunk cut in two
    is checked by combining its halves' CRCs. One hand-over per row; when the helper
    has not started by the time this thread is done (a busy machine), this thread does
    its half too. False, and nothing read, when the helper is not used now
    (:meth:`_Sharer.wanted`)."""
    sharer = _read_sharer()
    if not sharer.wanted():
        return False
    pieces: list[_Piece] = []
    for k, offset, _ in places:
        if len(places) == 1:  # one chunk: two halves, on whole pages
            half = (chunk_bytes // 2) & ~(PAGE - 1) or chunk_bytes // 2
            pieces += [(k, offset, 0, half), (k, offset, half, chunk_bytes)]
        else:
            pieces.append((k, offset, 0, chunk_bytes))
    starts = {k: at for k, _, at in places}
    mine, theirs = pieces[len(pieces) // 2:], pieces[:len(pieces) // 2]
    # The helper reads through its own descriptor: a caller interrupted while it waits
    # (Ctrl-C) closes its own, and that number may name another file by then.
    share = sharer.hand(functools.partial(_read_pieces_dup, os.dup(fd), buffer,
                                          chunk_bytes, starts, theirs))
    try:
        mine_crcs = _read_pieces(fd, buffer, chunk_bytes, starts, mine)
    finally:
        their_crcs = sharer.settle(share)  # never return a buffer the helper still fills
    _check_pieces(places, theirs + mine, their_crcs + mine_crcs, expected)
    return True


def _read_pieces_dup(fd: int, buffer: np.ndarray, chunk_bytes: int,
                     starts: dict[int, int], pieces: list[_Piece]) -> list[int]:
    """:func:`_read_pieces` through *fd*, a descriptor of its own, closed after."""
    try:
        return _read_pieces(fd, buffer, chunk_bytes, starts, pieces)
    finally:
        os.close(fd)


def check_stored_chunks(ds: h5py.Dataset, index: int, expected: np.ndarray) -> None:
    """Check every stored chunk of row *index* against its CRC32C (any filters: the
    bytes as stored).

    Raises:
        ChunkChecksumError: a chunk is missing or fails its CRC32C.
    """
    chunks, _, _ = stored_chunks(ds)
    grid = list(chunk_grid(tuple(ds.shape[1:]), chunks))
    if len(grid) != len(expected):
        raise ChunkChecksumError((index,), f"has {len(expected)} checksums for {len(grid)} "
                                 "chunks")
    for k, offset in enumerate(grid):
        try:
            _, stored = read_chunk(ds.id, (index, *offset))
        except (OSError, RuntimeError, ValueError) as err:
            raise ChunkChecksumError(offset, f"cannot be read ({err})") from None
        if crc32c(stored) != int(expected[k]):
            raise ChunkChecksumError(offset, "fails its CRC32C checksum")
