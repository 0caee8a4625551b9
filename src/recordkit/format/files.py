"""Opening record files: created and reopened for writing with the writer's access
options, opened read-only without HDF5's file locking (a reader must never block the
writer, research/HDF5-NOTES.md)."""

from __future__ import annotations

import functools
import io
import os
import time
from pathlib import Path

import h5py
import numpy as np

from recordkit.format.chunks import read_chunk, write_chunk
from recordkit.format.layout import WRITE_OPTIONS

__all__ = ["RecordFile", "close", "file_handle", "file_stamp", "flush", "hdf5_lock_held",
           "hdf5_size", "is_open", "new_file", "open_file_object", "open_id",
           "open_read_only", "preallocate", "reopen", "settled"]

#: An open record file, for modules outside this package that hold one without reading
#: into it.
RecordFile = h5py.File


def new_file(path: str | os.PathLike[str]) -> h5py.File:
    """Create a record file; fails if it exists."""
    return _WriterFile(str(path), "x", locking=False, **WRITE_OPTIONS)


def reopen(path: str | os.PathLike[str]) -> h5py.File:
    """Open an existing record to continue writing it (resume)."""
    return _WriterFile(str(path), "r+", locking=False, **WRITE_OPTIONS)


@functools.cache
def _read_only_access() -> h5py.h5p.PropFAID:
    """What ``h5py.File(path, "r", locking=False)`` opens with, made once: h5py builds
    it anew for every file, a tenth of opening a small record."""
    plist = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    plist.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    plist.set_file_locking(False, ignore_when_disabled=False)
    return plist


def open_id(path: str | os.PathLike[str]) -> h5py.h5f.FileID:
    """HDF5's own open, read-only and without file locking; OSError when it fails."""
    return h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=_read_only_access())


def open_read_only(path: str | os.PathLike[str], *, shared_locking: bool = False) -> h5py.File:
    """The file, read-only. *shared_locking*: with HDF5's default locking, for a file this
    process already holds open through plain h5py (HDF5 will not mix the two settings)."""
    if shared_locking:
        return h5py.File(str(path), "r")
    return h5py.File(open_id(Path(path)))


def open_file_object(view: io.RawIOBase) -> h5py.File:
    """A record read through a file-like object (a patched view of its bytes)."""
    return h5py.File(view, "r", locking=False)


def file_handle(f: h5py.File) -> int:
    """The OS file descriptor of an open record (for fsync and fstat)."""
    return int(f.id.get_vfd_handle())


def file_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What changes when a file is written: its size, mtime and ctime (ns). What a
    reader keeps of a file across opens (a dataset's chunk places, a checked root) is
    kept with it, and used while the file's stamp is the same (and it is the same file:
    device and inode) and it was :func:`settled` when kept."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


#: A file's times are trusted to change on its next write only once they are this many
#: seconds in the past: the kernel stamps a write with a clock that moves by ticks (a
#: few ms on Linux), so a second write in the same tick that keeps the size (an
#: attribute rewritten in place) would leave the stamp as it was. File systems whose
#: times are whole seconds (FAT's are 2 s) get :data:`SETTLED_COARSE`. (Git's index
#: has the same rule for its "racily clean" files.)
SETTLED = 0.1
SETTLED_COARSE = 3.0


def settled(st: os.stat_result, now: float | None = None) -> bool:
    """Whether what was read of a file whose ``fstat`` was *st* (before the read) may be
    kept by its :func:`file_stamp`: its mtime and ctime are far enough in the past that
    any later write changes one of them."""
    now = time.time() if now is None else now
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    return now - newest / 1e9 >= (SETTLED_COARSE if coarse else SETTLED)


def hdf5_lock_held() -> bool:
    """Whether this thread holds h5py's library lock: a garbage collection can run inside
    any h5py call, and a finalizer that then waits for another thread's HDF5 call (a
    snapshot writer's) would wait forever."""
    try:
        from h5py._objects import phil
        return bool(phil._is_owned())
    except Exception:  # another h5py: assume held, the safe answer
        return True


def is_open(f: h5py.File | None) -> bool:
    """Whether *f* is an open file (False once closed, or for None)."""
    return f is not None and bool(f.id.valid)


#: Per open file (its id), how many datasets it had open at its last flush.
_OPEN_AT_FLUSH: dict[tuple[int, int], int] = {}
_DATASETS = h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_LOCAL


def flush(f: h5py.File, *, fsync: bool = False) -> None:
    """Write HDF5's buffers to the file; with *fsync* also to the disk (power loss).

    When datasets were opened since the last flush (a new tensor's), each open dataset's
    own blocks (its header, its chunk index, its chunks) are written first, then the rest
    (the groups that link it, the root, the superblock). One ``H5Fflush`` writes its
    blocks in no fixed order: a kill inside it could leave a group's symbol table
    listing a new tensor whose header was not yet written, losing access to everything
    committed before ("bad object header version number", "wrong B-tree signature";
    issue 17). Flushed first, a new dataset is complete on disk before any link to it
    is. (Listing the open datasets costs about 8 us each: done only when their number
    grew.) The files :func:`new_file` and :func:`reopen` give flush so from their own
    ``flush()`` too."""
    _ordered_flush(f)
    if fsync:
        os.fsync(file_handle(f))


def _ordered_flush(f: h5py.File) -> None:
    key = (id(f.id), f.id.id)
    count = h5py.h5f.get_obj_count(f.id, _DATASETS)
    if count > _OPEN_AT_FLUSH.get(key, 0):
        for oid in h5py.h5f.get_obj_ids(f.id, types=_DATASETS):
            if isinstance(oid, h5py.h5d.DatasetID) and oid.valid:
                oid.flush()
    _OPEN_AT_FLUSH[key] = count
    h5py.File.flush(f)


class _WriterFile(h5py.File):
    """A record open for writing: its ``flush()`` is :func:`flush`'s, so that every
    flush of the write path (the snapshot writer's too) writes new datasets first."""

    def flush(self) -> None:
        _ordered_flush(self)


def close(f: h5py.File) -> None:
    """Close an open file."""
    _OPEN_AT_FLUSH.pop((id(f.id), f.id.id), None)
    f.close()


def hdf5_size(f: h5py.File) -> int:
    """The file's size as HDF5 knows it (it may be ahead of the size on disk)."""
    return int(f.id.get_filesize())


def preallocate(f: h5py.File) -> None:
    """Make, in a new file not yet published, the index blocks its first writes would
    otherwise allocate: the chunk index (a B-tree) of every empty growing dataset and the
    first symbol table node of every empty group.

    HDF5 writes a flush's blocks in no fixed order, and a block made by the flush is
    referenced by a block that already existed (a dataset's header, a group's B-tree):
    a kill between the two left that reference pointing at nothing ("wrong B-tree
    signature", "bad symbol table node signature"; issue 17). Made here, before the
    file is published, those blocks are in place before any commit; later writes
    change them in place."""
    datasets: list[h5py.Dataset] = []
    groups: list[h5py.Group] = []

    def collect(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            datasets.append(obj)
        elif isinstance(obj, h5py.Group):
            groups.append(obj)

    f.visititems(collect)
    for ds in datasets:
        if ds.chunks is None or ds.shape[:1] != (0,) or ds.maxshape[0] is not None:
            continue
        # The first chunk, written whole (as HDF5's filters store it) beyond the extent:
        # the first append then rewrites it in place, and the dataset's header (its new
        # extent) is the one block that changes.
        shape = tuple(int(n) for n in ds.chunks)
        rows = np.zeros(shape, ds.dtype)
        if ds.dtype.kind == "O":  # variable-length strings
            rows[...] = ""
        ds.resize(shape)
        ds[tuple(slice(0, n) for n in shape)] = rows
        _, stored = read_chunk(ds.id, (0,) * ds.ndim)
        ds.resize((0, *ds.shape[1:]))  # its chunk goes, the index stays
        write_chunk(ds.id, (0,) * ds.ndim, np.frombuffer(stored, np.uint8))
