"""Checks on an opened record before anything in it is read.

A record may come from a stranger. HDF5 was not designed to parse hostile files (its
SECURITY.md says so), and a few of its features reach outside the file or allocate what
the file claims. :func:`check_file` walks every link and dataset header of a file
(metadata only) and refuses, with :class:`~recordkit.errors.UnsafeRecordError`:

- external links, soft links and user-defined links (recordkit writes hard links only);
- datasets with external storage (``Dataset.external``: raw data in another file, which
  could be any local file, h5py#2891);
- virtual datasets whose sources are in another file;
- datasets whose one read (a whole dataset, or one snapshot of a weight) claims more bytes
  than the file could hold (:func:`read_limit`), so a crafted shape is never allocated: a
  variable-length element (a string) counts as the 16 bytes of its descriptor at least,
  and compressed data may expand past what the file holds only up to an absolute cap
  (:data:`MAX_READ_BYTES`, which ``max_read_bytes=`` of :func:`recordkit.load` and
  :func:`recordkit.load_all`, or ``$RECORDKIT_MAX_READ_BYTES``, raise);
- attributes longer than :data:`MAX_ATTR_BYTES`;
- more than :data:`MAX_OBJECTS` links, or groups nested more than :data:`MAX_DEPTH` deep.

Every walk is recordkit's own, one group at a time (``H5Literate``), never HDF5's
recursive visit (``H5Lvisit``, ``H5Ovisit``), which overflows the C stack on a file of
10,000 nested groups (issue 17): no nesting of a file can crash it.

:class:`~recordkit.Record` makes the same checks object by object, each before the
object is first touched, so that opening a record costs the same whatever it holds: when
it opens the file, the root group (:func:`check_root_links`, :func:`read_root_attrs`,
:func:`check_header`) and every root object recordkit does not write; then each of
:data:`RECORD_OBJECTS` with everything under it (:func:`check_object`) and its layout
(:func:`check_history_layout`, :func:`check_snapshots_layout`,
:func:`check_weights_layout`) on the first read of that part.

What cannot be checked from metadata is left to the callers: a crafted file can still
crash the HDF5 parser itself, which is why ``recordkit verify`` reads in a subprocess.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from recordkit.codec import loads_json
from recordkit.errors import NotARecordError, RecordDamagedError, UnsafeRecordError
from recordkit.format.attrs import read_attr
from recordkit.format.layout import (
    CHECKSUMS,
    EXTRAS,
    FIRST_SNAPSHOT_ATTR,
    FORMAT_ATTR,
    FORMAT_NAME,
    FORMAT_VERSION,
    HISTORY,
    HISTORY_METRICS,
    HISTORY_ROW_DTYPE,
    HISTORY_TABLE,
    INFO,
    PARAMS,
    RUN_FIELDS,
    SNAPSHOT_DTYPE,
    SNAPSHOTS,
    STATUSES,
    SYSTEM,
    VERSION_ATTR,
    WEIGHTS,
)

__all__ = ["MAX_ATTR_BYTES", "MAX_DEPTH", "MAX_OBJECTS", "MAX_READ_BYTES",
           "MAX_READ_BYTES_VARIABLE", "RECORD_OBJECTS", "VLEN_ELEMENT_BYTES", "WEIGHT_OBJECTS",
           "check_dataset", "check_fields", "check_file", "check_header",
           "check_history_layout", "check_layout", "check_links", "check_member",
           "check_object", "check_root", "check_root_links", "check_snapshots_layout",
           "check_weights_layout", "max_read_bytes", "read_limit", "read_root_attrs"]

#: An attribute longer than this is refused (recordkit's own stay under 64 KiB; the
#: ``restarts`` list of a run resumed a thousand times is about 100 KiB).
MAX_ATTR_BYTES = 1 << 20
#: A record with more links than this is refused instead of walked (a file can hold
#: millions of empty groups that each cost a little to visit).
MAX_OBJECTS = 200_000
#: Groups nested deeper than this under the root are refused instead of walked (recordkit
#: writes three levels at most, ``/extras/<name>/<key>``; HDF5's own recursive walk
#: crashed the process at about 10,000).
MAX_DEPTH = 64
#: The root objects that hold the weights: ``/weights`` and, in format version 2, the
#: CRC32Cs of their chunks (``/checksums``).
WEIGHT_OBJECTS = (WEIGHTS, CHECKSUMS)
#: The root objects recordkit writes (a new one goes here, and into the part of
#: :func:`recordkit.opening.read_parts` that reads it, or every load walks it). A
#: record checks each with everything under it
#: (:func:`check_object`) when it first reads it; any other object at the root is
#: checked when the file is opened.
RECORD_OBJECTS = (PARAMS, SYSTEM, INFO, HISTORY, SNAPSHOTS, *WEIGHT_OBJECTS, EXTRAS)
#: Reads below this size are always allowed: a slack for chunks left unallocated by a
#: killed writer and for tiny files.
SMALL_READ = 16 << 20
#: gzip's best case is about 1032:1; a compressed dataset claiming more than this ratio
#: over the whole file is a decompression bomb.
MAX_COMPRESSION_RATIO = 1100
#: Compressed data may always expand to this many times the file's size (weights compress
#: 1.1-3 times; a record of one snapshot of a large tensor must stay readable).
PLAIN_COMPRESSION_RATIO = 8
#: The most bytes one read of compressed data may produce beyond what
#: :data:`PLAIN_COMPRESSION_RATIO` allows, unless raised (issue 17: a 2 MB file of gzip
#: data could claim 2 GB within the ratio bound): ``max_read_bytes=`` of
#: :func:`recordkit.load` / :func:`recordkit.load_all`, or the environment variable
#: :data:`MAX_READ_BYTES_VARIABLE`.
MAX_READ_BYTES = 1 << 30
#: The environment variable that sets the cap (a number of bytes) when no
#: ``max_read_bytes=`` is given.
MAX_READ_BYTES_VARIABLE = "RECORDKIT_MAX_READ_BYTES"
#: What one variable-length element (a string, a sequence) counts at least: its
#: descriptor in the file (length, heap address, heap index) and its memory (a pointer and
#: a length, or a Python object), so an unallocated dataset of 2**31 strings claims 32 GiB,
#: not nothing.
VLEN_ELEMENT_BYTES = 16
#: What numpy counts for one variable-length value (a pointer to a Python object).
_POINTER_BYTES = np.dtype(object).itemsize


def _as_path(path: str | os.PathLike[str]) -> Path:
    return path if isinstance(path, Path) else Path(path)


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _unsafe(path: Path, what: str) -> UnsafeRecordError:
    return UnsafeRecordError(
        f"{str(path)!r} was refused unread: {what}. recordkit never writes this, so the "
        "file was made or changed by another program; open it with plain h5py only if "
        "you trust where it came from"
    )


def max_read_bytes(value: int | None = None, *, caller: str = "load") -> int:
    """The cap on what one read of compressed data may expand to: *value* when given,
    else ``$RECORDKIT_MAX_READ_BYTES``, else :data:`MAX_READ_BYTES`.

    Raises:
        ValueError: *value* (or the variable) is not a positive number of bytes.

    Example:
        >>> max_read_bytes(), max_read_bytes(4 << 30)
        (1073741824, 4294967296)
    """
    if value is None:
        text = os.environ.get(MAX_READ_BYTES_VARIABLE, "").strip()
        if not text:
            return MAX_READ_BYTES
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number <= 0:
            raise ValueError(f"${MAX_READ_BYTES_VARIABLE}={text!r}: must be a positive "
                             "number of bytes, e.g. 4294967296 for 4 GiB")
        return number
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{caller}(max_read_bytes={value!r}): must be a positive int "
                         f"(bytes) or None. Received: {value!r}")
    return value


def read_limit(file_size: int, compressed: bool, cap: int | None = None) -> int:
    """The most bytes one read of a dataset may produce in a file of *file_size* bytes:
    what the file could hold (plus :data:`SMALL_READ`); for compressed data
    :data:`PLAIN_COMPRESSION_RATIO` times that, or up to *cap*
    (:func:`max_read_bytes` when None) within gzip's best ratio."""
    plain = file_size + SMALL_READ
    if not compressed:
        return plain
    if cap is None:
        cap = max_read_bytes()
    return max(file_size * PLAIN_COMPRESSION_RATIO + SMALL_READ,
               min(file_size * MAX_COMPRESSION_RATIO + SMALL_READ, cap))


def _object_slots(dtype: np.dtype) -> int:
    """How many variable-length (object) values one element of *dtype* holds."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return _object_slots(base) * math.prod(shape)
    fields = dtype.fields
    if fields is not None:
        return sum(_object_slots(fields[n][0]) for n in dtype.names or ())
    return 1 if dtype.kind == "O" else 0


def _element_bytes(dtype: np.dtype) -> int:
    """What one element of *dtype* counts for a read: its size, each variable-length
    value in it counted :data:`VLEN_ELEMENT_BYTES` (numpy counts a pointer)."""
    if not dtype.hasobject:
        return dtype.itemsize
    return dtype.itemsize + _object_slots(dtype) * (VLEN_ELEMENT_BYTES - _POINTER_BYTES)



def _filters(plist: h5py.h5p.PropDCID) -> list[int]:
    try:
        return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    except Exception:
        return []


def _read_unit(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one read recordkit makes: one snapshot of a weight, else the whole."""
    if name.startswith(WEIGHTS + "/") and len(shape) >= 1:
        return shape[1:]
    return shape


def _attr_sizes(oid: h5py.h5o.ObjectID) -> list[tuple[str, int]]:
    """``(name, stored size)`` of an object's attributes, from their headers only: one
    walk, or, when the walk fails on a damaged header, attribute by attribute, leaving out
    those that cannot be opened (the reads that need them say what is wrong)."""
    found: list[tuple[bytes, int]] = []

    def collect(name: bytes, info: h5py.h5a.AttrInfo) -> None:
        found.append((name, info.data_size))

    try:
        h5py.h5a.iterate(oid, collect, info=True)
    except Exception:
        found = []
        try:
            count = h5py.h5o.get_info(oid).num_attrs
        except Exception:
            count = 0
        for index in range(count):
            try:
                attr = h5py.h5a.open(oid, index=index)
                found.append((attr.name, attr.get_storage_size()))
            except Exception:
                continue
    return [(name.decode("utf-8", "surrogateescape"), size) for name, size in found]


def _check_attrs(path: Path, where: str, obj: h5py.HLObject | h5py.h5o.ObjectID,
                 read_strings: bool) -> dict[str, object]:
    """Sizes of attributes from their headers; with *read_strings* their values are read
    too (after every size was checked) and returned, and the length of their text checked
    (the root's, which a Record keeps: a variable-length string lives in the file's global
    heap and its header says nothing of its length; reading every object's would cost
    more than the rest of opening a file). An attribute that cannot be read is left out
    (the reads that need it say what is wrong)."""
    oid = obj.id if isinstance(obj, h5py.HLObject) else obj
    sizes = _attr_sizes(oid)
    file_size: int | None = None
    for key, size in sizes:
        if size > MAX_ATTR_BYTES:
            raise _unsafe(path, f"attribute {key!r} of {where} claims {size} bytes "
                                f"(limit {MAX_ATTR_BYTES})")
        if size > VLEN_ELEMENT_BYTES:  # more than one string's descriptor, maybe
            if file_size is None:
                file_size = _file_size(path)
            _check_vlen_attr(path, where, oid, key, file_size)
    read: dict[str, object] = {}
    if not read_strings:
        return read
    for key, _ in sizes:
        try:  # the read is bounded by the file's size
            value = read_attr(oid, key)
        except Exception:
            continue
        values = value.ravel().tolist() if isinstance(value, np.ndarray) else [value]
        size = sum(len(v) for v in values if isinstance(v, (str, bytes)))
        if size > MAX_ATTR_BYTES:
            raise _unsafe(path, f"attribute {key!r} of {where} holds {size} characters "
                                f"(limit {MAX_ATTR_BYTES})")
        read[key] = value
    return read


def _check_vlen_attr(path: Path, where: str, oid: h5py.h5o.ObjectID, key: str,
                     file_size: int) -> None:
    """Refuse an attribute of many variable-length values that could claim more than the
    file holds: each is at most the file's size, but many may name one stored string,
    and an attribute's descriptors cannot be read raw (recordkit writes one string per
    attribute)."""
    try:
        attr = h5py.h5a.open(oid, key.encode("utf-8", "surrogateescape"))
        htype = attr.get_type()
        count = attr.get_space().get_simple_extent_npoints()
    except Exception:
        return  # the read that needs it says what is wrong
    if not (isinstance(htype, h5py.h5t.TypeVlenID)
            or (isinstance(htype, h5py.h5t.TypeStringID) and htype.is_variable_str())):
        return
    if count > 1 and count * max(file_size, 1) > read_limit(file_size, compressed=False):
        raise _unsafe(path, f"attribute {key!r} of {where} holds {count} variable-length "
                            f"values in a file of {file_size} bytes: together they may "
                            "claim more than the file holds, and their lengths cannot be "
                            "checked before they are read")


def _first_snapshot(dsid: h5py.h5d.DatasetID) -> int | None:
    try:
        attr = h5py.h5a.open(dsid, FIRST_SNAPSHOT_ATTR.encode())
        if attr.dtype.kind not in "iu" or attr.shape not in ((), (1,)):
            return None
        value = np.zeros(attr.shape, attr.dtype)
        attr.read(value)
        return int(value.reshape(-1)[0])
    except Exception:
        return None


def _check_dataset(path: Path, name: str, dsid: h5py.h5d.DatasetID, file_size: int,
                   table_rows: int | None, cap: int | None = None) -> None:
    where = f"dataset /{name}"
    plist = dsid.get_create_plist()
    if plist.get_external_count():
        target = plist.get_external(0)[0]
        target = target.decode("utf-8", "replace") if isinstance(target, bytes) else target
        raise _unsafe(path, f"{where} keeps its data in another file "
                            f"(external storage: {str(target)!r})")
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        for index in range(plist.get_virtual_count()):
            source = plist.get_virtual_filename(index)
            if source not in (".", ""):
                raise _unsafe(path, f"{where} is a virtual dataset reading {source!r}")
    shape = tuple(int(d) for d in dsid.shape or ())
    dtype = dsid.dtype
    unit_bytes = math.prod(_read_unit(name, shape)) * _element_bytes(dtype)
    if unit_bytes <= read_limit(file_size, compressed=False):
        if dtype.hasobject:
            _check_vlen_lengths(path, where, dsid, plist, math.prod(shape), file_size)
        return  # what the file could hold, compressed or not: nothing more to learn
    if name.startswith(WEIGHTS + "/") and table_rows is not None:
        first = _first_snapshot(dsid)
        if first is not None and first >= table_rows:
            return  # no committed snapshot: never read (a killed writer's leftover)
    if dtype.hasobject:
        # Each stored string is a heap object of 16 bytes or more, never compressed:
        # more elements than the file could hold descriptors for are a claim, whatever
        # the filters.
        raise _unsafe(path, f"{where} claims {unit_bytes} bytes per read in a file of "
                            f"{file_size} bytes (shape {shape}, dtype {dtype}: "
                            f"{math.prod(shape)} variable-length elements, "
                            f"{VLEN_ELEMENT_BYTES} bytes each at least)")
    compressed = _compresses(plist)
    if compressed:
        cap = max_read_bytes() if cap is None else cap
    limit = read_limit(file_size, compressed=compressed, cap=cap)
    if unit_bytes <= limit:
        return
    if compressed and unit_bytes <= file_size * MAX_COMPRESSION_RATIO + SMALL_READ:
        assert cap is not None  # the cap refused it, not the ratio
        raise UnsafeRecordError(
            f"{str(path)!r} was refused unread: {where} claims {unit_bytes} bytes per "
            f"read ({_mib(unit_bytes)}; shape {shape}, dtype {dtype}, compressed) in a "
            f"file of {file_size} bytes, more than the cap on what compressed data may "
            f"expand to, {cap} bytes ({_mib(cap)}). If you trust the file, raise the "
            f"cap: recordkit.load(..., max_read_bytes={_suggest(unit_bytes)}) (or "
            f"load_all), or set the environment variable {MAX_READ_BYTES_VARIABLE}="
            f"{_suggest(unit_bytes)}")
    raise _unsafe(path, f"{where} claims {unit_bytes} bytes per read in a file of "
                        f"{file_size} bytes (shape {shape}, dtype {dtype})")


def _check_vlen_lengths(path: Path, where: str, dsid: h5py.h5d.DatasetID,
                        plist: h5py.h5p.PropDCID, count: int, file_size: int) -> None:
    """Refuse variable-length elements whose lengths add up to more than the file could
    hold. Each stored element is at most the file's size, but many descriptors may name
    one heap object (a 1 MB file read back as 1 GB of 1,000 copies of one string), so
    unless *count* elements of the file's size fit, the lengths are read from the
    descriptors themselves, before HDF5 reads what they point at."""
    limit = read_limit(file_size, compressed=False)
    if count <= 1 or count * max(file_size, 1) <= limit:
        return  # even the worst case fits
    total = _vlen_lengths(path, dsid, plist, count)
    if total is None:
        raise _unsafe(path, f"{where} holds {count} variable-length elements whose "
                            "lengths cannot be checked before they are read (stored "
                            "compact, filtered or outside the file)")
    if count * VLEN_ELEMENT_BYTES + total > limit:
        raise _unsafe(path, f"{where} claims {count * VLEN_ELEMENT_BYTES + total} bytes "
                            f"per read in a file of {file_size} bytes: its {count} "
                            f"variable-length elements add up to {total} bytes (many "
                            "name the same stored data)")


def _vlen_lengths(path: Path, dsid: h5py.h5d.DatasetID, plist: h5py.h5p.PropDCID,
                  count: int) -> int | None:
    """The bytes the variable-length elements of a dataset of strings or sequences
    claim, from the length field of their descriptors (read raw from the file); 0 for
    other object types (references); None when the descriptors cannot be read so."""
    htype = dsid.get_type()
    if isinstance(htype, h5py.h5t.TypeStringID) and htype.is_variable_str():
        base = 1
    elif isinstance(htype, h5py.h5t.TypeVlenID):
        base = max(1, htype.get_super().get_size())
    elif dsid.dtype.kind == "O":
        return 0  # references: no heap data
    else:
        return None  # variable-length fields inside a compound or array type
    sizeof_addr = h5py.h5i.get_file_id(dsid).get_create_plist().get_sizes()[0]
    width = 8 + sizeof_addr  # length (4 bytes), heap collection address, object index
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dsid.get_offset()
        if offset is None:
            return 0  # never written: every element is empty
        size = count * width
        try:
            with open(path, "rb") as fh:
                raw = os.pread(fh.fileno(), size, offset)
        except OSError:
            return None
        if len(raw) < size:
            return None  # outside the file
        return _lengths(raw, width).sum(dtype=np.int64).item() * base
    if layout != h5py.h5d.CHUNKED or _filters(plist):
        return None
    shape = tuple(int(d) for d in dsid.shape or ())
    chunk_shape = tuple(plist.get_chunk())
    total = 0
    for index in range(dsid.get_num_chunks()):
        chunk = tuple(dsid.get_chunk_info(index).chunk_offset)
        raw = dsid.read_direct_chunk(chunk)[1]
        if len(raw) < math.prod(chunk_shape) * width:
            return None
        lengths = _lengths(raw, width)[:math.prod(chunk_shape)].reshape(chunk_shape)
        inside = tuple(slice(0, max(0, min(size, extent - start)))
                       for size, extent, start in zip(chunk_shape, shape, chunk))
        total += lengths[inside].sum(dtype=np.int64).item()  # the edge chunks' padding not
    return total * base


def _lengths(raw: bytes, width: int) -> np.ndarray:
    """The length fields (little-endian uint32, first in each) of the descriptors in
    *raw*, *width* bytes each."""
    usable = len(raw) // width * width
    records = np.frombuffer(raw[:usable], np.uint8).reshape(-1, width)
    return records[:, :4].copy().view("<u4").reshape(-1)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def _suggest(size: int) -> int:
    """A cap that admits a read of *size* bytes: the next power of two."""
    return 1 << max(0, size - 1).bit_length()


def _compresses(plist: h5py.h5p.PropDCID) -> bool:
    # fletcher32 (3) and shuffle (2) do not change the size; any other filter may.
    return any(code not in (2, 3) for code in _filters(plist))


def _link_refused(f: h5py.File, name: str, path: Path) -> UnsafeRecordError:
    """The refusal of the link at /*name*, which is not a hard link (its header is read,
    its target is not)."""
    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return _unsafe(path, f"link /{name} points to {link.path!r} in the file "
                             f"{link.filename!r} (an external link)")
    if isinstance(link, h5py.SoftLink):
        return _unsafe(path, f"link /{name} is a soft link to {link.path!r}")
    return _unsafe(path, f"link /{name} is a {type(link).__name__}")


def _shown(name: str) -> str:
    """An object path for a message: a long one (deep nesting) cut in the middle."""
    return name if len(name) <= 160 else f"{name[:80]}...{name[-60:]} ({len(name)} characters)"


def _walk(f: h5py.File, start: h5py.h5o.ObjectID, prefix: str, path: Path, *,
          limit: int, table_rows: int | None = None, cap: int | None = None,
          headers: bool = True) -> int:
    """Everything under *start*, the object at /*prefix* ("" for the root), one group at
    a time with recordkit's own stack (never HDF5's recursive visit, which a file of
    10,000 nested groups crashed): every link a hard link, at most *limit* links in all,
    groups nested at most :data:`MAX_DEPTH` deep under the root, each group walked once
    (a hard link cycle is not followed twice); with *headers*, the attribute headers of
    *start* (but not the root's: the caller reads those) and of every object, and the
    dataset headers (:func:`_check_dataset`). Reads link and object headers only.

    Returns:
        The number of links walked under *start*.

    Raises:
        UnsafeRecordError: what was found, where, and the limit it passed.
    """
    file_size = _file_size(path) if headers else 0
    start_depth = prefix.count("/") + 1 if prefix else 0
    if headers and prefix:
        _check_header_of(path, prefix, start, file_size, table_rows, cap)
    if not isinstance(start, h5py.h5g.GroupID):
        return 0
    seen = {_address(start)}
    stack: list[tuple[h5py.h5g.GroupID, str, int]] = [(start, prefix, start_depth)]
    walked = 0
    while stack:
        group, where, depth = stack.pop()
        found = _links_of(group, limit - walked)
        if walked + len(found) > limit:
            raise _unsafe(path, f"it holds more than {MAX_OBJECTS} objects (links; "
                                f"found while walking /{_shown(where)})")
        walked += len(found)
        for raw_name, kind in found:
            name = raw_name.decode("utf-8", "surrogateescape")
            child = f"{where}/{name}" if where else name
            if kind != h5py.h5l.TYPE_HARD:
                raise _link_refused(f, child, path)
            if depth + 1 > MAX_DEPTH:
                raise _unsafe(path, f"/{_shown(child)} is nested {depth + 1} groups deep "
                                    f"(limit {MAX_DEPTH}; recordkit writes 3 at most)")
            try:
                obj = h5py.h5o.open(group, raw_name)
            except Exception:
                continue  # a damaged header: the reads that need it say so
            if headers:
                _check_header_of(path, child, obj, file_size, table_rows, cap)
            if isinstance(obj, h5py.h5g.GroupID):
                address = _address(obj)
                if address not in seen:
                    seen.add(address)
                    stack.append((obj, child, depth + 1))
    return walked


def _links_of(group: h5py.h5g.GroupID, room: int) -> list[tuple[bytes, int]]:
    """``(name, link type)`` of the links of *group* itself (link headers only), at most
    *room* + 1 of them (one more than that says there are too many)."""
    found: list[tuple[bytes, int]] = []

    def collect(name: bytes, info: h5py.h5l.LinkInfo) -> bool | None:
        found.append((name, info.type))
        return True if len(found) > room else None

    group.links.iterate(collect, info=True)
    return found


def _address(oid: h5py.h5o.ObjectID) -> tuple[int, int]:
    info = h5py.h5o.get_info(oid)
    return info.fileno, info.addr


def _check_header_of(path: Path, name: str, oid: h5py.h5o.ObjectID, file_size: int,
                     table_rows: int | None, cap: int | None) -> None:
    """The attribute headers of the object /*name* and, for a dataset, its header."""
    if h5py.h5o.get_info(oid).num_attrs:
        _check_attrs(path, f"/{name}", oid, read_strings=False)
    if isinstance(oid, h5py.h5d.DatasetID):
        _check_dataset(path, name, oid, file_size, table_rows, cap)


def check_links(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """Refuse external and soft links (and more than :data:`MAX_OBJECTS` objects, or
    groups nested deeper than :data:`MAX_DEPTH`) in the whole file. Reads link headers
    only (and object headers, to walk each group once).

    Raises:
        UnsafeRecordError: the first link that points outside the file, or the limit
            passed.
    """
    _walk(f, f.id, "", _as_path(path), limit=MAX_OBJECTS, headers=False)


def check_root_links(f: h5py.File, path: str | os.PathLike[str]) -> list[str]:
    """The names of the root group's own links, refused unless each is a hard link (what
    a record checks when it is opened; what is under each is checked by
    :func:`check_object` when it is first read).

    Raises:
        UnsafeRecordError: a link of the root that is not a hard link, or more than
            :data:`MAX_OBJECTS` of them.
    """
    file_path = _as_path(path)
    found: list[tuple[bytes, int]] = []

    def collect(name: bytes, info: h5py.h5l.LinkInfo) -> bool | None:
        found.append((name, info.type))
        return True if len(found) > MAX_OBJECTS else None

    f.id.links.iterate(collect, info=True)  # this group's links only, headers only
    if len(found) > MAX_OBJECTS:
        raise _unsafe(file_path, f"it holds more than {MAX_OBJECTS} objects")
    names = [raw.decode("utf-8", "surrogateescape") for raw, _ in found]
    for name, (_, kind) in zip(names, found):
        if kind != h5py.h5l.TYPE_HARD:
            raise _link_refused(f, name, file_path)
    return names


def check_object(f: h5py.File, name: str, path: str | os.PathLike[str], *,
                 table_rows: int | None = None, limit: int = MAX_OBJECTS,
                 max_read_bytes: int | None = None) -> int:
    """The root object /*name* and everything under it, before any of it is read: what
    :func:`check_file` checks of the whole file (links, attribute headers, dataset
    headers), for that part only. Nothing when the root has no such link.

    Args:
        f: the open file (the root's links were checked: :func:`check_root_links`).
        name: a link of the root group.
        path: the file's path, for messages and its size.
        table_rows: the rows of the snapshot table, when known: a weight dataset whose
            first snapshot is not among them (a killed writer's leftover) is never read,
            so its size is no reason to refuse the file.
        limit: at most this many links under it.
        max_read_bytes: the cap on what one read of compressed data may expand to
            (:func:`max_read_bytes` when None).

    Returns:
        The number of links walked (the object's own included), for a caller that
        bounds the objects of several parts together.

    Raises:
        UnsafeRecordError: what was found and where.
    """
    file_path = _as_path(path)
    raw = name.encode("utf-8", "surrogateescape")
    if not f.id.links.exists(raw):
        return 0
    if f.id.links.get_info(raw).type != h5py.h5l.TYPE_HARD:
        raise _link_refused(f, name, file_path)
    try:
        oid = h5py.h5o.open(f.id, raw)
    except Exception:
        return 1  # a damaged header: the read that needs it says so
    return 1 + _walk(f, oid, name, file_path, limit=max(0, limit - 1),
                     table_rows=table_rows, cap=max_read_bytes)


def check_member(f: h5py.File, name: str, key: str, path: str | os.PathLike[str], *,
                 table_rows: int | None = None, limit: int = MAX_OBJECTS,
                 max_read_bytes: int | None = None) -> int | None:
    """The member *key* of the root group /*name* with everything under it, and the
    attributes of /*name* itself, before any of it is read; nothing else of /*name* (one
    tensor read without listing the others). The same checks as :func:`check_object`.

    Returns:
        The links walked; None when there is no such member, or /*name* is not a group
        or cannot be opened (:func:`check_object` of the whole part then says why).

    Raises:
        UnsafeRecordError: what was found and where.
    """
    file_path = _as_path(path)
    raw = name.encode("utf-8", "surrogateescape")
    if not f.id.links.exists(raw):
        return None
    if f.id.links.get_info(raw).type != h5py.h5l.TYPE_HARD:
        raise _link_refused(f, name, file_path)
    try:
        group = h5py.h5o.open(f.id, raw)
        if not isinstance(group, h5py.h5g.GroupID):
            return None
        if h5py.h5o.get_info(group).num_attrs:
            _check_attrs(file_path, f"/{name}", group, read_strings=False)
        member = key.encode("utf-8", "surrogateescape")
        if not group.links.exists(member):
            return None
        kind = group.links.get_info(member).type
    except UnsafeRecordError:
        raise
    except Exception:
        return None  # a damaged header: the check of the whole part says so
    if kind != h5py.h5l.TYPE_HARD:
        raise _link_refused(f, f"{name}/{key}", file_path)
    try:
        oid = h5py.h5o.open(group, member)
    except Exception:
        return None
    return 2 + _walk(f, oid, f"{name}/{key}", file_path, limit=max(0, limit - 2),
                     table_rows=table_rows, cap=max_read_bytes)


def check_dataset(f: h5py.File, name: str, path: str | os.PathLike[str], *,
                  max_read_bytes: int | None = None) -> h5py.Dataset:
    """One root-level dataset, checked alone, for a reader that needs only it (e.g. the
    ``/info`` of every run under a root): its link is a hard link, and its header claims
    no storage outside the file and no read larger than the file could hold. Nothing else
    in the file is walked.

    Raises:
        KeyError: the file has no such object.
        UnsafeRecordError: the link or the dataset reaches outside the file.
        RecordDamagedError: the object is not a dataset.
    """
    file_path = Path(path)
    raw = name.encode("utf-8")
    if not f.id.links.exists(raw):
        raise KeyError(f"{str(file_path)!r} has no /{name}")
    if f.id.links.get_info(raw).type != h5py.h5l.TYPE_HARD:
        raise _unsafe(file_path, f"link /{name} is not a hard link")
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise RecordDamagedError(f"{str(file_path)!r} is damaged: /{name} is not a dataset")
    try:
        file_size = os.stat(file_path).st_size
    except OSError:
        file_size = 0
    _check_dataset(file_path, name, obj.id, file_size, None, max_read_bytes)
    return obj


def check_root(f: h5py.File | h5py.h5f.FileID, path: str | os.PathLike[str]) -> None:
    """The check of a fast open that reads root attributes only: their sizes, from their
    headers (no link is followed, no dataset read).

    Raises:
        UnsafeRecordError: an attribute claims more than :data:`MAX_ATTR_BYTES`.
    """
    _check_attrs(Path(path), "the root group", f, read_strings=False)


def read_root_attrs(f: h5py.File | h5py.h5f.FileID, path: str | os.PathLike[str]
                    ) -> dict[str, object]:
    """Every root attribute, each read once after the sizes of all were checked from
    their headers, and the length of its text checked: what a record keeps of the root,
    for :func:`check_header` and the run fields. An attribute that cannot be read is
    left out (read it by name to learn what is wrong).

    Raises:
        UnsafeRecordError: an attribute claims or holds more than :data:`MAX_ATTR_BYTES`.
    """
    return _check_attrs(_as_path(path), "the root group", f, read_strings=True)


def check_file(f: h5py.File, path: str | os.PathLike[str], *,
               max_read_bytes: int | None = None) -> None:
    """Refuse a file that reaches outside itself or claims sizes it cannot hold.

    Reads metadata only (links, dataset headers, attribute headers), never data: every
    link, the root's attributes (their text too), then every object.

    Args:
        f: the open file.
        path: its path, for messages and its size.
        max_read_bytes: the cap on what one read of compressed data may expand to
            (:func:`max_read_bytes` when None).

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
    check_links(f, file_path)
    read_root_attrs(f, file_path)
    table = f.get(SNAPSHOTS, getclass=True)
    table_rows = None
    if table is h5py.Dataset:
        table_rows = int(f[SNAPSHOTS].shape[0]) if f[SNAPSHOTS].shape else None
    _walk(f, f.id, "", file_path, limit=MAX_OBJECTS, table_rows=table_rows,
          cap=max_read_bytes)


def _fields_ok(ds: object, dtype: np.dtype) -> bool:
    return (isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.dtype.names is not None
            and all(n in ds.dtype.names and ds.dtype[n].kind == dtype[n].kind
                    for n in dtype.names or ()))


def _is_iso_time(text: str) -> bool:
    try:
        _dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _is_json_list(text: str) -> bool:
    try:
        return isinstance(loads_json(text), list)
    except (ValueError, TypeError, KeyError):
        return False


def check_fields(fields: Mapping[str, str], path: str | os.PathLike[str]) -> None:
    """Refuse run fields a :class:`~recordkit.Record` could not turn into its properties
    (``created`` and ``ended`` as datetimes, ``restarts`` as a list), so that a damaged
    or forged header is reported when the file is opened, naming the attribute, and not
    as a ``ValueError`` from a property later. *fields* are the root attributes (or the
    ``fields`` of the summary), as strings; a missing one is absent or ``""``.

    Raises:
        RecordDamagedError: the first field that is missing or malformed.
    """
    def damaged(key: str, what: str) -> RecordDamagedError:
        return RecordDamagedError(f"{str(path)!r} is damaged: its root attribute {key!r} "
                                  f"{what}; run `recordkit verify` on it")

    if not fields.get("run_id"):
        raise damaged("run_id", "is missing")
    status = fields.get("status", "")
    if status not in STATUSES:
        raise damaged("status", f"is {status!r}, not one of {', '.join(STATUSES)}"
                      if status else "is missing")
    created = fields.get("created", "")
    if not created:
        raise damaged("created", "is missing")
    if not _is_iso_time(created):
        raise damaged("created", f"is {created[:60]!r}, not an ISO 8601 time")
    ended = fields.get("ended", "")
    if ended and not _is_iso_time(ended):
        raise damaged("ended", f"is {ended[:60]!r}, not an ISO 8601 time")
    restarts = fields.get("restarts", "")
    if restarts and not _is_json_list(restarts):
        raise damaged("restarts", f"is {restarts[:60]!r}, not a JSON list")


def check_header(attrs: Mapping[str, object], path: str | os.PathLike[str]) -> int | None:
    """The root attributes of a file (*attrs*, as :func:`read_root_attrs` gives them: a
    missing one is absent) that says it is a record (``format='recordkit'``): its format
    version, and its run fields (:func:`check_fields`) when this reader knows the version.
    None for a file that does not say it is a record (the reader says so).

    Raises:
        NotARecordError: the file says it is a record but has no ``format_version``.
        RecordDamagedError: ``format_version`` is not an integer, or a run field is
            missing or malformed.
    """
    name = attrs.get(FORMAT_ATTR)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if name != FORMAT_NAME:
        return None  # not a record: the reader says so
    version = attrs.get(VERSION_ATTR)
    if version is None:
        raise NotARecordError(
            f"{str(path)!r} is marked format='recordkit' but has no root attribute "
            "'format_version': it was not written by recordkit, or its header is lost")
    try:
        number = int(version)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise RecordDamagedError(
            f"{str(path)!r} is damaged: its root attribute 'format_version' is "
            f"{str(version)[:60]!r}, not an integer; run `recordkit verify` on it") from None
    if number > FORMAT_VERSION:
        return number  # a newer format: the reader asks for an upgrade
    check_fields({key: value.decode("utf-8", "replace") if isinstance(value, bytes)
                  else str(value) for key in RUN_FIELDS
                  if (value := attrs.get(key)) is not None}, path)
    return number


def _check_header(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """:func:`check_header` of the root attributes of *f*, read by name."""
    keys = (FORMAT_ATTR, VERSION_ATTR, *RUN_FIELDS)
    check_header({key: value for key in keys if (value := read_attr(f, key)) is not None},
                 path)


def _damaged(path: str | os.PathLike[str], what: str) -> RecordDamagedError:
    return RecordDamagedError(f"{str(path)!r} is damaged: {what}; run "
                              "`recordkit verify` on it")


def check_snapshots_layout(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """Refuse a snapshot table (``/snapshots``) that lost its layout (not a 1-D table of
    the snapshot fields), so that it is reported as damage, not as a ``ValueError``
    later. Nothing when there is none.

    Raises:
        RecordDamagedError: what is malformed.
    """
    table = f.get(SNAPSHOTS)
    if table is not None and not _fields_ok(table, SNAPSHOT_DTYPE):
        raise _damaged(path, f"/{SNAPSHOTS} is not the snapshot table "
                             f"({getattr(table, 'dtype', type(table).__name__)})")


def check_history_layout(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """Refuse a ``/history`` that lost its layout: not a group, its table not a 1-D
    table of the row fields, its names not a 1-D list of strings.

    Raises:
        RecordDamagedError: what is malformed.
    """
    history = f.get(HISTORY)
    if history is None:
        return
    if not isinstance(history, h5py.Group):
        raise _damaged(path, f"/{HISTORY} is not a group")
    rows = history.get(HISTORY_TABLE)
    if rows is not None and not _fields_ok(rows, HISTORY_ROW_DTYPE):
        raise _damaged(path, f"/{HISTORY}/{HISTORY_TABLE} is not the history table")
    names = history.get(HISTORY_METRICS)
    if names is not None and not (isinstance(names, h5py.Dataset) and names.ndim == 1
                                  and h5py.check_string_dtype(names.dtype)):
        raise _damaged(path, f"/{HISTORY}/{HISTORY_METRICS} is not a list of names")


def check_weights_layout(f: h5py.File, path: str | os.PathLike[str],
                         keys: Iterable[str] | None = None) -> None:
    """Refuse a ``/weights`` that is not a group of numeric datasets with a snapshot
    axis (of those members only, with *keys*: their link names).

    Raises:
        RecordDamagedError: what is malformed.
    """
    group = f.get(WEIGHTS)
    if group is None:
        return
    if not isinstance(group, h5py.Group):
        raise _damaged(path, f"/{WEIGHTS} is not a group")
    for key in group if keys is None else keys:
        # low-level: h5py's Dataset costs more than the check, once per tensor
        ds = h5py.h5o.open(group.id, key.encode("utf-8", "surrogateescape"))
        if not (isinstance(ds, h5py.h5d.DatasetID) and ds.rank >= 1
                and ds.dtype.kind in "biufc"):
            raise _damaged(path, f"/{WEIGHTS}/{key} is not a weight dataset")


def check_layout(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """Refuse a record whose header (:func:`check_header`) or tables do not have the
    layout of format version 1, so that a damaged header is reported when the file is
    opened, not as a ``ValueError`` later: every check a record makes on first use of
    each part, at once.

    Raises:
        NotARecordError: the file says it is a record but has no ``format_version``.
        RecordDamagedError: which attribute or object is malformed.
    """
    _check_header(f, path)
    check_snapshots_layout(f, path)
    check_history_layout(f, path)
    check_weights_layout(f, path)
