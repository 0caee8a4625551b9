"""(v2) Weight chunks written with ``O_DIRECT``: from the snapshot's buffer straight to
the disk, with no copy into the page cache.

A buffered ``pwrite`` (what ``H5Dwrite_chunk`` does) copies every byte into the page cache
on the writer's CPU, and the disk gets it later, at the closing fsync, after the
training thread has waited for it; a direct write hands the buffer to the disk and costs
no CPU (docs/BENCHMARKS.md). HDF5 keeps the chunk index: a dataset made with
:func:`early_allocation` gets every chunk of a new row a place in the file when it grows
(:meth:`~recordkit.format.weights.SnapshotStore.prepare`), each chunk is then written at
its place (:func:`write_at`), and the snapshot's table row still goes last.

Only chunks that HDF5's chunk cache never holds are written so (larger than the cache,
:func:`writes_directly`): a copy of the chunk in that cache could otherwise be read, or
written back, over the bytes written here. A file system that refuses ``O_DIRECT``
(or a platform without it) gets the buffered write, as before.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import h5py
import numpy as np

from recordkit.format.chunkread import PAGE  # (the page covers every disk's logical block)
from recordkit.format.files import file_handle

__all__ = ["MIN_DIRECT_BYTES", "direct_size", "early_allocation", "open_direct",
           "write_at", "writes_directly"]

#: HDF5's default chunk cache (1 MiB): a chunk written directly must be larger than the
#: dataset's cache, and than this.
MIN_DIRECT_BYTES = 1 << 20


def early_allocation() -> h5py.h5p.PropDCID:
    """A new dataset's creation property list: chunks placed when the dataset grows
    (``H5D_ALLOC_TIME_EARLY``), never filled (the writer writes each one whole)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def direct_size(chunk_bytes: int) -> bool:
    """Whether a chunk of *chunk_bytes* is one to write directly (its dataset then made
    with :func:`early_allocation`)."""
    return chunk_bytes > MIN_DIRECT_BYTES and chunk_bytes % PAGE == 0


def writes_directly(ds: h5py.Dataset) -> bool:
    """Whether the chunks of *ds* may be written with :func:`write_at`: unfiltered,
    placed when it grows, whole pages long and larger than its chunk cache."""
    try:
        dcpl = ds.id.get_create_plist()
        if dcpl.get_alloc_time() != h5py.h5d.ALLOC_TIME_EARLY or dcpl.get_nfilters():
            return False
        chunks = ds.chunks
        if chunks is None:
            return False
        nbytes = math.prod(chunks) * ds.dtype.itemsize
        cache = int(ds.id.get_access_plist().get_chunk_cache()[1])
    except (AttributeError, RuntimeError, ValueError, TypeError, OSError):
        return False
    return direct_size(nbytes) and nbytes > cache


def open_direct(f: h5py.File, path: Path) -> int | None:
    """A descriptor of *f*'s file opened for direct writes (by the name HDF5 opened it
    by, else by *path*, which a published resume was renamed to; only when that is still
    the same file), or None where ``O_DIRECT`` is not available."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        held = os.fstat(file_handle(f))
    except (OSError, ValueError, RuntimeError):
        return None
    for name in dict.fromkeys((str(f.filename), str(path))):
        try:
            fd = os.open(name, os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)
    return None


def write_at(fd: int, dsid: h5py.h5d.DatasetID, coord: tuple[int, ...],
             raw: np.ndarray) -> bool:
    """Write *raw* (a chunk's bytes) with a direct write at the place HDF5 gave the chunk
    at *coord*. False, nothing written, when this write does not apply (the buffer or the
    place is not page-aligned, the chunk has no place or another size, or the file
    system refuses it): then write the chunk through HDF5.

    Raises:
        OSError: the write failed (ENOSPC, EIO, ...), or stopped short.
    """
    if raw.ctypes.data % PAGE or raw.nbytes % PAGE:  # what O_DIRECT needs
        return False
    try:
        info = dsid.get_chunk_info_by_coord(coord)
    except (AttributeError, RuntimeError, ValueError, TypeError, OSError):
        return False
    at = info.byte_offset
    if at is None or info.size != raw.nbytes or at % PAGE or info.filter_mask:
        return False
    view = memoryview(raw.data).cast("B")
    done = 0
    while done < raw.nbytes:
        try:
            n = os.pwrite(fd, view[done:], at + done)
        except OSError as err:
            if done == 0 and err.errno == errno.EINVAL:
                return False  # this file system's alignment rules: write it buffered
            raise
        if n <= 0:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a direct write of "
                          f"{raw.nbytes} bytes stopped at {done})")
        done += n
    return True
