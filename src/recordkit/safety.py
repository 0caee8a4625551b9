"""Checks on an opened record before anything in it is read.

A record may come from a stranger. HDF5 was not designed to parse hostile files (its
SECURITY.md says so), and a few of its features reach outside the file or allocate what
the file claims. Before :class:`~recordkit.Record` reads a byte of data, :func:`check_file`
walks every link and dataset header (metadata only) and refuses, with
:class:`~recordkit.errors.UnsafeRecordError`:

- external links, soft links and user-defined links (recordkit writes hard links only);
- datasets with external storage (``Dataset.external``: raw data in another file, which
  could be any local file, h5py#2891);
- virtual datasets whose sources are in another file;
- datasets whose one read (a whole dataset, or one snapshot of a weight) claims more bytes
  than the file could hold (:func:`read_limit`), so a crafted shape is never allocated;
- attributes longer than :data:`MAX_ATTR_BYTES`.

What cannot be checked from metadata is left to the callers: a crafted file can still
crash the HDF5 parser itself, which is why ``recordkit verify`` reads in a subprocess.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from recordkit import format as fmt
from recordkit.errors import RecordDamagedError, UnsafeRecordError

__all__ = ["MAX_ATTR_BYTES", "MAX_OBJECTS", "check_file", "check_layout", "check_links",
           "check_root", "read_limit"]

#: An attribute longer than this is refused (recordkit's own stay under 64 KiB; the
#: ``restarts`` list of a run resumed a thousand times is about 100 KiB).
MAX_ATTR_BYTES = 1 << 20
#: A record with more links than this is refused instead of walked (a file can hold
#: millions of empty groups that each cost a little to visit).
MAX_OBJECTS = 200_000
#: Reads below this size are always allowed: a slack for chunks left unallocated by a
#: killed writer and for tiny files.
SMALL_READ = 16 << 20
#: gzip's best case is about 1032:1; a compressed dataset claiming more than this ratio
#: over the whole file is a decompression bomb.
MAX_COMPRESSION_RATIO = 1100


def _unsafe(path: Path, what: str) -> UnsafeRecordError:
    return UnsafeRecordError(
        f"{str(path)!r} was refused unread: {what}. recordkit never writes this, so the "
        "file was made or changed by another program; open it with plain h5py only if "
        "you trust where it came from"
    )


def read_limit(file_size: int, compressed: bool) -> int:
    """The most bytes one read of a dataset may produce in a file of *file_size* bytes."""
    ratio = MAX_COMPRESSION_RATIO if compressed else 1
    return max(SMALL_READ, file_size * ratio + SMALL_READ)


def _filters(ds: h5py.Dataset) -> list[int]:
    try:
        plist = ds.id.get_create_plist()
        return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    except Exception:
        return []


def _read_unit(name: str, ds: h5py.Dataset) -> tuple[int, ...]:
    """The shape of one read recordkit makes: one snapshot of a weight, else the whole."""
    shape = tuple(int(d) for d in ds.shape or ())
    if name.startswith(fmt.WEIGHTS + "/") and len(shape) >= 1:
        return shape[1:]
    return shape


def _check_attrs(path: Path, where: str, obj: h5py.HLObject, read_strings: bool) -> None:
    """Sizes of attributes from their headers; the text of variable-length strings only
    with *read_strings* (the root's, which a Record keeps: reading every object's would
    cost more than the rest of opening a file)."""
    attrs = obj.attrs  # h5py builds a new manager on every .attrs
    for key in attrs:
        try:
            attr = attrs.get_id(key)
            size = attr.get_storage_size()
            vlen_string = attr.dtype.kind == "O"
        except Exception:  # unreadable attribute headers are damage, found by the reads
            continue
        if size > MAX_ATTR_BYTES:
            raise _unsafe(path, f"attribute {key!r} of {where} claims {size} bytes "
                                f"(limit {MAX_ATTR_BYTES})")
        if vlen_string and read_strings:
            # A variable-length string lives in the file's global heap: its header says
            # nothing of its length, and the read is bounded by the file's size.
            try:
                value = attrs[key]
            except Exception:
                continue
            values = value.ravel().tolist() if isinstance(value, np.ndarray) else [value]
            size = sum(len(v) for v in values if isinstance(v, (str, bytes)))
            if size > MAX_ATTR_BYTES:
                raise _unsafe(path, f"attribute {key!r} of {where} holds {size} characters "
                                    f"(limit {MAX_ATTR_BYTES})")


def _check_dataset(path: Path, name: str, ds: h5py.Dataset, file_size: int,
                   table_rows: int | None) -> None:
    where = f"dataset /{name}"
    external = ds.external
    if external:
        target = external[0][0] if isinstance(external[0], tuple) else external[0]
        raise _unsafe(path, f"{where} keeps its data in another file "
                            f"(external storage: {str(target)!r})")
    if ds.is_virtual:
        for source in ds.virtual_sources():
            if source.file_name not in (".", ""):
                raise _unsafe(path, f"{where} is a virtual dataset reading "
                                    f"{source.file_name!r}")
    # variable-length strings count 0: their read is bounded by the file itself
    unit_bytes = 0 if ds.dtype.kind == "O" else math.prod(_read_unit(name, ds)) * (
        ds.dtype.itemsize)
    if name.startswith(fmt.WEIGHTS + "/") and table_rows is not None:
        first = ds.attrs.get("first_snapshot", 0)
        if isinstance(first, (int, np.integer)) and int(first) >= table_rows:
            return  # no committed snapshot: never read (a killed writer's leftover)
    limit = read_limit(file_size, compressed=bool(_filters(ds)) and _compresses(ds))
    if unit_bytes > limit:
        raise _unsafe(path, f"{where} claims {unit_bytes} bytes per read in a file of "
                            f"{file_size} bytes (shape {tuple(ds.shape)}, dtype {ds.dtype})")


def _compresses(ds: h5py.Dataset) -> bool:
    # fletcher32 (3) and shuffle (2) do not change the size; any other filter may.
    return any(code not in (2, 3) for code in _filters(ds))


def check_links(f: h5py.File, path: str | os.PathLike[str]) -> list[tuple[str, object]]:
    """Refuse external and soft links (and more than :data:`MAX_OBJECTS` objects); return
    every ``(name, link)``. Reads link headers only.

    Raises:
        UnsafeRecordError: the first link that points outside the file.
    """
    file_path = Path(path)
    links: list[tuple[str, object]] = []

    def collect(name: str, link: object) -> bool | None:
        links.append((name, link))
        return True if len(links) > MAX_OBJECTS else None

    f.visititems_links(collect)
    if len(links) > MAX_OBJECTS:
        raise _unsafe(file_path, f"it holds more than {MAX_OBJECTS} objects")
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise _unsafe(file_path, f"link /{name} points to {link.path!r} in the file "
                                     f"{link.filename!r} (an external link)")
        if isinstance(link, h5py.SoftLink):
            raise _unsafe(file_path, f"link /{name} is a soft link to {link.path!r}")
        if not isinstance(link, h5py.HardLink):
            raise _unsafe(file_path, f"link /{name} is a {type(link).__name__}")
    return links


def check_root(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """The check of a fast open that reads root attributes only: their sizes, from their
    headers (no link is followed, no dataset read).

    Raises:
        UnsafeRecordError: an attribute claims more than :data:`MAX_ATTR_BYTES`.
    """
    _check_attrs(Path(path), "the root group", f, read_strings=False)


def check_file(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """Refuse a file that reaches outside itself or claims sizes it cannot hold.

    Reads metadata only (links, dataset headers, attribute headers), never data.

    Args:
        f: the open file.
        path: its path, for messages and its size.

    Raises:
        UnsafeRecordError: what was found and where.

    Example:
        >>> import tempfile, h5py, numpy as np
        >>> p = tempfile.mktemp(suffix=".h5")
        >>> with h5py.File(p, "w") as f:
        ...     f["a"] = np.arange(3)
        ...     f["b"] = h5py.ExternalLink("/etc/passwd", "/")
        >>> with h5py.File(p, "r") as f:
        ...     check_file(f, p)
        Traceback (most recent call last):
        ...
        recordkit.errors.UnsafeRecordError: ... link /b points to '/' in the file '/etc/passwd' ...
    """
    file_path = Path(path)
    try:
        file_size = os.stat(file_path).st_size
    except OSError:
        file_size = 0
    links = check_links(f, file_path)
    _check_attrs(file_path, "the root group", f, read_strings=True)
    table = f.get(fmt.SNAPSHOTS, getclass=True)
    table_rows = None
    if table is h5py.Dataset:
        table_rows = int(f[fmt.SNAPSHOTS].shape[0]) if f[fmt.SNAPSHOTS].shape else None
    for name, _ in links:
        obj = f.get(name)
        if obj is None:
            continue
        _check_attrs(file_path, f"/{name}", obj, read_strings=False)
        if isinstance(obj, h5py.Dataset):
            _check_dataset(file_path, name, obj, file_size, table_rows)


def _fields_ok(ds: object, dtype: np.dtype) -> bool:
    return (isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.dtype.names is not None
            and all(n in ds.dtype.names and ds.dtype[n].kind == dtype[n].kind
                    for n in dtype.names or ()))


def check_layout(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """Refuse a record whose tables do not have the layout of format version 1, so that a
    damaged header is reported when the file is opened, not as a ``ValueError`` later.

    Raises:
        RecordDamagedError: which object is malformed.
    """
    def damaged(what: str) -> RecordDamagedError:
        return RecordDamagedError(f"{str(path)!r} is damaged: {what}; run "
                                  "`recordkit verify` on it")

    table = f.get(fmt.SNAPSHOTS)
    if table is not None and not _fields_ok(table, fmt.SNAPSHOT_DTYPE):
        raise damaged(f"/{fmt.SNAPSHOTS} is not the snapshot table "
                      f"({getattr(table, 'dtype', type(table).__name__)})")
    history = f.get(fmt.HISTORY)
    if history is not None:
        if not isinstance(history, h5py.Group):
            raise damaged(f"/{fmt.HISTORY} is not a group")
        rows = history.get(fmt.HISTORY_ROWS)
        if rows is not None and not _fields_ok(rows, fmt.HISTORY_ROW_DTYPE):
            raise damaged(f"/{fmt.HISTORY}/{fmt.HISTORY_ROWS} is not the history table")
        names = history.get(fmt.HISTORY_METRICS)
        if names is not None and not (isinstance(names, h5py.Dataset) and names.ndim == 1
                                      and h5py.check_string_dtype(names.dtype)):
            raise damaged(f"/{fmt.HISTORY}/{fmt.HISTORY_METRICS} is not a list of names")
    for group_name in (fmt.WEIGHTS,):
        group = f.get(group_name)
        if group is None:
            continue
        if not isinstance(group, h5py.Group):
            raise damaged(f"/{group_name} is not a group")
        for key in group:
            ds = group[key]
            if not (isinstance(ds, h5py.Dataset) and ds.ndim >= 1
                    and ds.dtype.kind in "biufc"):
                raise damaged(f"/{group_name}/{key} is not a weight dataset")
