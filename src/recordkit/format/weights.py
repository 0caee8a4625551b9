"""The weights: one dataset per tensor (``/weights/<tensor>``, snapshot axis first), in
format version 2 the CRC32C of each of its chunks (``/checksums/<tensor>``), and the
snapshot table (``/snapshots``) that says which epoch each snapshot index is.

Crash safety rests on one order: a snapshot's tensors (and their checksums) are written
and flushed before its table row, and readers trust only the snapshots the table lists.

Version 2 writes each chunk whole straight from the snapshot's buffer, its CRC32C
computed alongside: with a direct write (``O_DIRECT``, :mod:`.directio`) where the chunk
is larger than HDF5's chunk cache and the file system allows it, else with
``H5Dwrite_chunk`` (no HDF5 filter, so no copy but the kernel's); version 1 files
(resumed by this writer) keep HDF5's fletcher32 filter, as they were written."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from recordkit.dtypes import BFLOAT16, decode_tensor
from recordkit.errors import RecordDamagedError, SnapshotError
from recordkit.format.attrs import attr_str, members, object_name, read_attr
from recordkit.format.checksums import (
    CHECKSUM_DTYPE,
    checksum_chunk_rows,
    chunk_grid,
    crc32c,
    grid_size,
    identity_crc,
)
from recordkit.format.chunkread import (
    ChunkChecksumError,
    RowLayout,
    check_stored_chunks,
    file_fd,
    fold_laid_out_rows,
    read_checked_row,
    read_laid_out_row,
    read_snapshot,
    read_unfiltered,
    row_layout,
    stored_fd,
)
from recordkit.format.chunks import read_chunk, write_chunk
from recordkit.format.directio import (
    direct_size,
    early_allocation,
    open_direct,
    write_at,
    writes_directly,
)
from recordkit.format.files import file_stamp, settled
from recordkit.format.filters import ensure_readable
from recordkit.format.history import check_rows
from recordkit.format.layout import (
    ALIASES_ATTR,
    ALIASES_CRC_ATTR,
    ATTRS_CRC_ATTR,
    ATTRS_CRC_COVERS,
    CHECKSUMS,
    DEFAULT_CHUNK_BYTES,
    DTYPE_ATTR,
    FIRST_SNAPSHOT_ATTR,
    KIND_ATTR,
    NAME_ATTR,
    PACK_BYTES,
    PACK_KIND,
    PACK_MEMBERS_ATTR,
    PACK_MEMBERS_CHARS,
    PACK_MEMBERS_CRC_ATTR,
    PACK_MIN_TENSORS,
    PACK_PREFIX,
    PACK_TENSOR_BYTES,
    SNAPSHOT_CHUNK_ROWS,
    SNAPSHOT_DTYPE,
    SNAPSHOTS,
    VERSION_ATTR,
    WEIGHT_CHECKSUM_ATTR,
    WEIGHTS,
    escape_metric,
    escape_name,
    unescape_name,
)

__all__ = [
    "Last",
    "SnapshotPlan",
    "SnapshotStore",
    "SnapshotTarget",
    "StoredTensor",
    "TensorSpec",
    "check_checksummed_rows",
    "check_object_name",
    "dataset_aliases",
    "fold_rows",
    "is_pack",
    "lay_out",
    "no_rows",
    "pack_members",
    "read_aliases",
    "read_last_snapshot",
    "read_row",
    "read_row_unopened",
    "read_rows",
    "read_table",
    "read_tensors_at",
    "replaces_snapshot",
    "sign_attrs",
    "stored_tensor",
    "stored_tensors",
    "weight_chunks",
    "write_aliases",
    "write_name",
]
T = TypeVar("T")


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)


def _attrs_crc(obj: h5py.HLObject, known: dict[str, Any] | None = None) -> int:
    """The identity CRC of *obj*'s covered attributes; those in *known* (their values
    as read) are not read again (each read costs about 40 us)."""
    known = known or {}
    return identity_crc(*(_as_text(known[key] if key in known else read_attr(obj, key))
                          for key in ATTRS_CRC_COVERS))


def write_name(obj: h5py.HLObject, name: str) -> None:
    """The ``name`` attribute of a tensor or an extra: escaped for NUL and %."""
    obj.attrs[NAME_ATTR] = escape_metric(name)


def sign_attrs(obj: h5py.HLObject, version: int, written: dict[str, Any] | None = None
               ) -> None:
    """(v2) The ``attrs_crc32c`` of a tensor or an extra, once its attributes are written:
    the identity CRC of its name, kind, dtype and checksum attributes (those in *written*,
    the values just written or None for one left out, are not read back). A string in the
    global heap has no HDF5 checksum: one changed byte read as another name, or as
    another dtype (other numbers)."""
    if version >= 2:
        obj.attrs[ATTRS_CRC_ATTR] = np.uint32(_attrs_crc(obj, written))


def check_object_name(obj: h5py.HLObject, key: str, name: str, *,
                      required: bool = True, known: dict[str, Any] | None = None) -> None:
    """(v2) The name, kind, dtype and checksum attributes of a tensor or an extra against
    its ``attrs_crc32c``, and its link name *key* against its name (*name*, as read: two
    copies of the name in different places of the file); nothing for a version 1 file.
    Without *required* (extras: a group of them may hold objects recordkit did not
    write), an object with no ``attrs_crc32c`` has its link name compared alone, when it
    has a ``name``. *known*: covered attributes already read (their values as read).
    A pack (v3, ``kind`` "pack") is named by its link name itself, which starts with
    :data:`~recordkit.format.layout.PACK_PREFIX` (no tensor's link name can).

    Raises:
        RecordDamagedError: either does not match, or a version 2 object has no CRC.
    """
    known = dict(known or {})
    crc = read_attr(obj, ATTRS_CRC_ATTR)
    stored = known[NAME_ATTR] if NAME_ATTR in known else read_attr(obj, NAME_ATTR)
    known[NAME_ATTR] = stored
    if crc is None and (required or stored is not None) and int(read_attr(
            h5py.h5i.get_file_id(obj.id), VERSION_ATTR, 1)) < 2:
        return  # version 1: no CRC (docs/FORMAT.md)
    if crc is None and required:
        what = f"has no {ATTRS_CRC_ATTR!r} attribute, which format version 2 writes"
    else:
        try:
            same = crc is None or _attrs_crc(obj, known) == int(crc)
        except (TypeError, ValueError):
            same = False
        if not same:
            what = (f"(named {_as_text(stored)[:80]!r} as read) has "
                    f"{'/'.join(ATTRS_CRC_COVERS)} attributes that do not match their "
                    f"CRC32C ({ATTRS_CRC_ATTR!r}: the stored bytes changed)")
        elif stored is not None and (
                (name != key or not key.startswith(PACK_PREFIX)) if _as_text(
                    known[KIND_ATTR] if KIND_ATTR in known else read_attr(obj, KIND_ATTR)
                ) == PACK_KIND else escape_name(name) != key):
            what = f"is named {name[:80]!r}, which its link name does not match"
        else:
            return
    raise RecordDamagedError(f"{obj.file.filename!r} is damaged: {obj.name!r} {what}; run "
                             "`recordkit verify` on it")


#: Longest aliases text read (a hostile file's attribute may claim gigabytes).
MAX_ALIASES_CHARS = 16 * 1024 * 1024


def write_aliases(ds: h5py.Dataset, aliases: list[str]) -> None:
    """The other names of a tied tensor (original names) and their identity CRC, on its
    dataset, when it is made; nothing when there are none."""
    if not aliases:
        return
    text = json.dumps(sorted(aliases), ensure_ascii=False)
    ds.attrs[ALIASES_ATTR] = text
    ds.attrs[ALIASES_CRC_ATTR] = np.uint32(identity_crc(text))


def dataset_aliases(ds: h5py.Dataset, name: str) -> list[str]:
    """The other names of the tensor *name* stored in *ds* (``[]`` when it is not tied).

    Raises:
        RecordDamagedError: the text does not match its CRC, or is not a JSON list of
            names.
    """
    stored = read_attr(ds, ALIASES_ATTR)
    if stored is None:
        return []
    where = f"{ds.file.filename!r} is damaged: {ds.name!r} attribute {ALIASES_ATTR!r}"
    text = _as_text(stored) if isinstance(stored, (str, bytes)) else None
    if text is None or len(text) > MAX_ALIASES_CHARS:
        raise RecordDamagedError(f"{where} is not a text of at most {MAX_ALIASES_CHARS} "
                                 "characters; run `recordkit verify` on it")
    crc = read_attr(ds, ALIASES_CRC_ATTR)
    try:
        same = crc is not None and int(crc) == identity_crc(text)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise RecordDamagedError(f"{where} does not match its CRC32C "
                                 f"({ALIASES_CRC_ATTR!r}); run `recordkit verify` on it")
    try:
        aliases = json.loads(text)
    except ValueError:
        aliases = None
    if not isinstance(aliases, list) or not all(
            isinstance(a, str) and a != name for a in aliases):
        raise RecordDamagedError(f"{where} is not a JSON list of tensor names")
    return aliases


def read_aliases(f: h5py.File) -> dict[str, str]:
    """Every tied tensor of the record, ``{alias: tensor}`` (``{}`` when none)."""
    out: dict[str, str] = {}
    for _, ds in members(f.get(WEIGHTS)):
        if is_pack(ds):
            for member in pack_members(ds):
                out.update((alias, member.name) for alias in member.aliases)
            continue
        name = object_name(ds)
        out.update((alias, name) for alias in dataset_aliases(ds, name))
    return out


@dataclasses.dataclass(frozen=True)
class PackMember:
    """(v3) One tensor of a pack: its original name, its element offset in the pack's
    row, its shape, and the other names it has when it is tied."""

    name: str
    offset: int
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def is_pack(ds: h5py.Dataset) -> bool:
    """(v3) Whether a weight dataset is a pack of small tensors (its ``kind``)."""
    return _as_text(read_attr(ds, KIND_ATTR)) == PACK_KIND


def members_text(members: list[PackMember]) -> str:
    """The text of a pack's ``members`` attribute."""
    return json.dumps([[m.name, m.offset, list(m.shape), *([sorted(m.aliases)]
                                                          if m.aliases else [])]
                       for m in members], ensure_ascii=False)


def write_members(ds: h5py.Dataset, members: list[PackMember]) -> None:
    """A pack's members and their identity CRC, on its dataset, when it is made."""
    text = members_text(members)
    ds.attrs[PACK_MEMBERS_ATTR] = text
    ds.attrs[PACK_MEMBERS_CRC_ATTR] = np.uint32(identity_crc(text))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pack_members(ds: h5py.Dataset) -> list[PackMember]:
    """(v3) The members of the pack *ds*, checked: the text against its CRC, each member
    inside the row and after the one before it, every name once.

    Raises:
        RecordDamagedError: any of that does not hold.
    """
    where = f"{ds.file.filename!r} is damaged: {ds.name!r} attribute {PACK_MEMBERS_ATTR!r}"
    stored = read_attr(ds, PACK_MEMBERS_ATTR)
    text = _as_text(stored) if isinstance(stored, (str, bytes)) else None
    if text is None or len(text) > MAX_ALIASES_CHARS or ds.ndim != 2:
        raise RecordDamagedError(f"{where} is missing, or not a text of at most "
                                 f"{MAX_ALIASES_CHARS} characters on a dataset of rank 2; "
                                 "run `recordkit verify` on it")
    crc = read_attr(ds, PACK_MEMBERS_CRC_ATTR)
    try:
        same = crc is not None and int(crc) == identity_crc(text)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise RecordDamagedError(f"{where} does not match its CRC32C "
                                 f"({PACK_MEMBERS_CRC_ATTR!r}); run `recordkit verify` on it")
    try:
        entries = json.loads(text)
    except ValueError:
        entries = None
    out: list[PackMember] = []
    seen: set[str] = set()
    end, length = 0, int(ds.shape[1])
    for entry in entries if isinstance(entries, list) else [None]:
        member = None
        if (isinstance(entry, list) and len(entry) in (3, 4) and isinstance(entry[0], str)
                and _is_count(entry[1]) and isinstance(entry[2], list)
                and all(_is_count(d) for d in entry[2])
                and (len(entry) == 3 or (isinstance(entry[3], list) and all(
                    isinstance(a, str) for a in entry[3])))):
            member = PackMember(entry[0], entry[1], tuple(entry[2]),
                                tuple(entry[3]) if len(entry) == 4 else ())
        names = {member.name, *member.aliases} if member is not None else set()
        if (member is None or member.offset < end or member.offset + member.size > length
                or names & seen or len(names) != 1 + len(member.aliases)):
            raise RecordDamagedError(f"{where} is not a JSON list of [name, offset, shape"
                                     "(, aliases)] in offset order inside the row, each "
                                     "name once; run `recordkit verify` on it")
        seen |= names
        end = member.offset + member.size
        out.append(member)
    if not out:
        raise RecordDamagedError(f"{where} lists no tensor; run `recordkit verify` on it")
    return out


def weight_chunks(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunk shape of a weight dataset: one snapshot per chunk, tensor axes split from the
    first on until the chunk is at most *chunk_bytes*, an axis split into equal parts (so
    that the padded edge chunk wastes at most part of one row, not most of a chunk).

    Example:
        >>> weight_chunks((1000, 1000), 4, 4 * 1024 * 1024)
        (1, 1000, 1000)
        >>> weight_chunks((4096, 4096), 4, 4 * 1024 * 1024)
        (1, 256, 4096)
        >>> weight_chunks((1000, 1100), 4, 4 * 1024 * 1024)
        (1, 500, 1100)
    """
    chunk = [max(1, d) for d in shape]
    for axis in range(len(chunk)):
        rest = itemsize * math.prod(chunk[axis + 1 :])
        if rest * chunk[axis] <= chunk_bytes:
            break
        most = max(1, chunk_bytes // rest)  # rows of this axis one chunk can hold
        parts = -(-chunk[axis] // most)
        chunk[axis] = -(-chunk[axis] // parts)
    return (1, *chunk)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """What earlier snapshots fix about a tensor: a later snapshot must match it."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    stored_dtype: str
    #: Whether an earlier snapshot holds it (then every later snapshot must too).
    held: bool


@dataclasses.dataclass
class SnapshotTarget:
    """Where one tensor of a snapshot goes: a row of its dataset."""

    dataset: h5py.Dataset
    row: int
    array: np.ndarray
    #: The dataset's chunk shape (snapshot axis first), for writing in slices.
    chunks: tuple[int, ...] | None
    #: (v2) The tensor's /checksums dataset and the CRC32C of each chunk of this row, in
    #: chunk order, filled in as the chunks are written; None without checksums.
    checksums: h5py.Dataset | None = None
    crcs: np.ndarray | None = None
    #: (v2, no compression) Chunks are written whole from the buffer (H5Dwrite_chunk).
    direct: bool = False
    #: The tensor written (its original name); for a pack, its link name.
    name: str = ""
    #: (v3) For a pack: ``(name, element offset)`` of each member, whose stored array is
    #: copied, flattened, into *array* at its offset.
    members: tuple[tuple[str, int], ...] = ()
    #: A descriptor for direct writes of its chunks (:mod:`.directio`), else None.
    fd: int | None = None
    #: Bytes of its chunks written with direct writes so far.
    direct_bytes: int = 0


@dataclasses.dataclass
class SnapshotPlan:
    """Where one snapshot goes, made by :meth:`SnapshotStore.prepare`: its table index,
    whether it replaces the last snapshot, and the dataset row of each tensor."""

    epoch: int
    step: int
    index: int
    replaces: bool
    targets: list[SnapshotTarget]
    #: The descriptor its direct writes use (:func:`.directio.open_direct`), else None:
    #: closed by :meth:`close`.
    fd: int | None = None

    def close(self) -> None:
        """Close the descriptor of its direct writes (safe to call twice)."""
        fd, self.fd = self.fd, None
        for target in self.targets:
            target.fd = None
        if fd is not None:
            os.close(fd)


@dataclasses.dataclass
class _Known:
    """What the writer keeps of one tensor of the open file between snapshots."""

    dataset: h5py.Dataset
    checksums: h5py.Dataset | None
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    stored_dtype: str
    first: int
    rows: int
    chunks: tuple[int, ...] | None
    per_row: int
    direct: bool
    #: (v3) A pack's members, in offset order; empty for a tensor's own dataset.
    members: tuple[PackMember, ...] = ()
    #: The link name under /weights.
    key: str = ""
    #: Its chunks may be written with direct writes (:func:`.directio.writes_directly`).
    early: bool = False
    #: Rows it had when this open of the file first saw it: only rows grown since, whose
    #: chunks this open placed, are written directly. An older row's chunks may lie past
    #: the end the file's superblock records (a writer killed while a flush wrote the
    #: chunk index and not yet the superblock), where HDF5 places new blocks on reopening;
    #: ``H5Dwrite_chunk`` refuses such a place ("addr overflow"), a direct write would
    #: write over those blocks.
    bound_rows: int = 0

    @classmethod
    def of(cls, ds: h5py.Dataset, key: str, sums_group: h5py.Group | None,
           version: int, packed: tuple[PackMember, ...] = ()) -> _Known:
        checked = version >= 2 and attr_str(ds, WEIGHT_CHECKSUM_ATTR) == "crc32c"
        sums = sums_group.get(key) if checked and sums_group is not None else None
        direct = checked and ds.id.get_create_plist().get_nfilters() == 0
        return cls(ds, sums, tuple(ds.shape[1:]), ds.dtype, attr_str(ds, DTYPE_ATTR),
                   int(read_attr(ds, FIRST_SNAPSHOT_ATTR, 0)), int(ds.shape[0]), ds.chunks,
                   int(sums.shape[1]) if sums is not None else 0, direct, packed, key,
                   direct and sums is not None and writes_directly(ds), int(ds.shape[0]))

    def grow(self, rows: int) -> None:
        """Make room for *rows* rows (dataset and checksums), with h5py's checks skipped."""
        if rows > self.rows:
            self.dataset.id.set_extent((rows, *self.shape))
            if self.checksums is not None:
                self.checksums.id.set_extent((rows, self.per_row))
            self.rows = rows


@dataclasses.dataclass
class _Member:
    """(v3) What the writer keeps of one packed tensor: its pack and place in it."""

    pack: _Known
    offset: int
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.pack.dtype

    @property
    def stored_dtype(self) -> str:
        return self.pack.stored_dtype

    @property
    def first(self) -> int:
        return self.pack.first

    @property
    def rows(self) -> int:
        return self.pack.rows


def _weight_datasets(f: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    """(link name, dataset) of each member of /weights."""
    weights = f.get(WEIGHTS)
    return [(key, weights[key]) for key in weights] if weights is not None else []


def _writer_members(ds: h5py.Dataset, table_rows: int) -> tuple[PackMember, ...]:
    """A pack's members as the writer takes them: none when they do not read back and
    the table lists none of its snapshots (a kill cut its first one: it is left as it
    is, and its tensors are packed anew).

    Raises:
        RecordDamagedError: the members of a pack the table lists do not read back.
    """
    try:
        return tuple(pack_members(ds))
    except RecordDamagedError:
        if int(read_attr(ds, FIRST_SNAPSHOT_ATTR, 0)) >= table_rows:
            return ()
        raise


def _expand(known: _Known, out: dict[str, _Known | _Member]) -> None:
    """*known* under each name it stores: a tensor's own dataset under its name, a pack
    under each of its members'."""
    if not known.members:
        out[object_name(known.dataset)] = known
    for member in known.members:
        out[member.name] = _Member(known, member.offset, member.shape)


#: The epoch and step of a record's last snapshot (step -1: not known); None before any.
Last = tuple[int, int] | None


def _last(table: h5py.Dataset, n: int) -> Last:
    """The (epoch, step) of row *n* - 1 of the snapshot table, None when *n* is 0."""
    if not n:
        return None
    row = table[n - 1]
    return int(row["epoch"]), int(row["step"])


def replaces_snapshot(last: Last, epoch: int, step: int) -> bool:
    """Whether a snapshot of (*epoch*, *step*) replaces the *last* one rather than adding
    a row: it does when it is of the same epoch, unless both steps are known and differ
    (several snapshots inside one epoch, e.g. one per validation, each at its own step).

        >>> replaces_snapshot((3, -1), 3, -1), replaces_snapshot((3, 40), 3, 40)
        (True, True)
        >>> replaces_snapshot((3, 20), 3, 40), replaces_snapshot((3, 20), 4, 20)
        (False, False)
    """
    if last is None or last[0] != epoch:
        return False
    return step < 0 or last[1] < 0 or step == last[1]


class SnapshotStore:
    """Writes snapshots into one open record: datasets made on a tensor's first snapshot
    with the recorder's storage options, rows added, the table row last."""

    def __init__(self, *, checksum: bool, compression: Any = None,
                 compression_opts: Any = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self._checksum = checksum
        #: Whether the weights are compressed (sizes are then estimates).
        self.compressed = compression is not None
        self._compression = compression
        self._compression_opts = compression_opts
        self._chunk_bytes = chunk_bytes
        self._file: h5py.File | None = None
        self._known: dict[str, _Known | _Member] | None = None
        self._version = 1
        self._table: tuple[int, Last] = (0, None)  # (rows, last snapshot's epoch and step)
        #: The record's tied tensors ``{alias: tensor}``: a tensor's aliases are written
        #: on its dataset when it is made (a tensor and its aliases first appear together).
        self.aliases: dict[str, str] = {}
        #: Bytes of weight chunks written with direct writes (:mod:`.directio`), in all:
        #: what a benchmark or a test reads to see which write each snapshot took.
        self.direct_bytes = 0

    @staticmethod
    def create(f: h5py.File, *, checksum: bool) -> None:
        """The empty snapshot table, weights group and (v2) checksums group of a new record.
        Every group is made here, with the file: adding a link to the root group later
        (at the first snapshot) would widen the window in which a kill can leave the root's
        symbol table half written."""
        f.create_dataset(SNAPSHOTS, shape=(0,), maxshape=(None,), dtype=SNAPSHOT_DTYPE,
                         chunks=(SNAPSHOT_CHUNK_ROWS,), fletcher32=checksum)
        f.require_group(WEIGHTS)
        if int(read_attr(f, VERSION_ATTR, 1)) >= 2 and checksum:
            f.require_group(CHECKSUMS)

    @staticmethod
    def specs(f: h5py.File) -> tuple[dict[str, TensorSpec], Last]:
        """Each tensor's :class:`TensorSpec`, and the epoch and step of the last snapshot."""
        specs: dict[str, TensorSpec] = {}
        table_rows = int(f[SNAPSHOTS].shape[0])
        for key, ds in _weight_datasets(f):
            held = ds.shape[0] + int(read_attr(ds, FIRST_SNAPSHOT_ATTR)) > 0
            if key.startswith(PACK_PREFIX):
                packed = _writer_members(ds, table_rows)
                specs.update((m.name, TensorSpec(m.shape, ds.dtype, attr_str(ds, DTYPE_ATTR),
                                                 held)) for m in packed)
                continue
            specs[object_name(ds)] = TensorSpec(tuple(ds.shape[1:]), ds.dtype,
                                                attr_str(ds, DTYPE_ATTR), held)
        table = f[SNAPSHOTS]
        return specs, _last(table, int(table.shape[0]))

    def _bind(self, f: h5py.File) -> dict[str, _Known | _Member]:
        """What the store knows of *f*'s tensors, read from the file once per file: asking
        HDF5 for each tensor's attributes, shape and checksums on every snapshot cost as
        much as writing the snapshot's bytes (docs/BENCHMARKS.md)."""
        known = self._known
        if known is not None and f.id.valid and self._file is f:
            return known
        version = int(read_attr(f, VERSION_ATTR, 1))
        sums = f.get(CHECKSUMS)
        known = {}
        table = f[SNAPSHOTS]
        n = int(table.shape[0])
        for key, ds in _weight_datasets(f):  # link names: /checksums's too
            packed = _writer_members(ds, n) if key.startswith(PACK_PREFIX) else ()
            if key.startswith(PACK_PREFIX) and not packed:
                continue  # never listed, its members unreadable: a kill's leftover
            _expand(_Known.of(ds, key, sums, version, packed), known)
        self._file, self._known, self._version = f, known, version
        self._table = (n, _last(table, n))
        return known

    def prepare(self, f: h5py.File, path: Path, epoch: int, step: int,
                encoded: dict[str, tuple[np.ndarray, str]]) -> SnapshotPlan:
        """Make the datasets of new tensors (v3: many small new ones packed, see
        :meth:`_packs`) and grow the others by a row (a snapshot of the last epoch again
        replaces it), after :meth:`check_missing`. A pack's target comes after that of
        the tensors before its last member, in *encoded*'s order (a streamed snapshot's
        copies are made in that order).

        Raises:
            SnapshotError: a tensor changed shape or dtype, one appears in a snapshot
                older than its first, or a packed tensor is missing while others of its
                pack are there.
        """
        known = self._bind(f)
        index, replaces = self._index(f, epoch, step)
        for key, group in self._packs(f, encoded, known, index).items():
            _expand(self._pack(f, key, group, encoded, index), known)
        for name, (array, stored_dtype) in encoded.items():
            if name not in known:
                known[name] = self._dataset(f, name, array, stored_dtype, index)
        last: dict[int, str] = {}  # pack (by id) -> its member that comes last in encoded
        for name in encoded:
            tensor = known[name]
            if isinstance(tensor, _Member):
                last[id(tensor.pack)] = name
        targets = []
        for name, (array, stored_dtype) in encoded.items():
            tensor = known[name]
            if tensor.shape != array.shape or tensor.dtype != array.dtype or (
                    tensor.stored_dtype != stored_dtype):
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {name!r} is {stored_dtype}"
                    f"{list(array.shape)} but earlier snapshots in {str(path)!r} hold "
                    f"{tensor.stored_dtype}{list(tensor.shape)}; a tensor must keep "
                    "its shape and dtype across snapshots"
                )
            row = index - tensor.first
            if row < 0:
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {name!r} first appeared in a "
                    f"later snapshot of {str(path)!r}; it cannot be added to an earlier one"
                )
            if isinstance(tensor, _Member):
                if last[id(tensor.pack)] == name:
                    targets.append(self._pack_target(tensor.pack, row, encoded, epoch, path))
                continue
            targets.append(SnapshotTarget(
                tensor.dataset, row, array, tensor.chunks, tensor.checksums,
                None if tensor.checksums is None else np.zeros(tensor.per_row,
                                                                CHECKSUM_DTYPE),
                tensor.direct, name))
        early = []
        for target in targets:
            grown = known[target.members[0][0] if target.members else target.name]
            grown = grown.pack if isinstance(grown, _Member) else grown
            grown.grow(target.row + 1)  # an early-allocated dataset's chunks placed here
            if grown.early and target.row >= grown.bound_rows:
                early.append(target)
        plan = SnapshotPlan(epoch, step, index, replaces, targets)
        if early:
            plan.fd = open_direct(f, path)
            for target in early:
                target.fd = plan.fd
        return plan

    def _packs(self, f: h5py.File, encoded: dict[str, tuple[np.ndarray, str]],
               known: dict[str, _Known | _Member], index: int) -> dict[str, list[str]]:
        """(v3) The packs to make for this snapshot, ``{link name: member names}``: when
        it brings at least :data:`~recordkit.format.layout.PACK_MIN_TENSORS` new tensors
        of 1 to :data:`~recordkit.format.layout.PACK_TENSOR_BYTES` bytes (an empty one
        has nothing to pack), those of one stored dtype go together, in their order, a
        new pack each time a row would pass :data:`~recordkit.format.layout.PACK_BYTES`
        (or the members text its bound). A group of one stays a tensor of its own."""
        if self._version < 3:
            return {}  # an older record keeps its layout (its readers know no packs)
        row_bytes = min(PACK_BYTES, self._chunk_bytes)  # one chunk per row
        small = [name for name, (array, _) in encoded.items() if name not in known
                 and 0 < array.nbytes <= min(PACK_TENSOR_BYTES, row_bytes)]
        if len(small) < PACK_MIN_TENSORS:
            return {}
        groups: dict[tuple[str, str], list[list[str]]] = {}
        sizes: dict[tuple[str, str], tuple[int, int]] = {}  # bytes, text of the last
        tied: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            tied.setdefault(target, []).append(alias)
        for name in small:
            array, stored_dtype = encoded[name]
            kind = (array.dtype.str, stored_dtype)
            # at least the UTF-8 bytes of its entry: [name, offset, shape(, aliases)]
            text = len(json.dumps([name, *tied.get(name, ())])) + 40 + 21 * array.ndim
            used, chars = sizes.get(kind, (row_bytes + 1, 0))
            if used + array.nbytes > row_bytes or chars + text > PACK_MEMBERS_CHARS:
                groups.setdefault(kind, []).append([])
                used, chars = 0, 0
            groups[kind][-1].append(name)
            sizes[kind] = (used + array.nbytes, chars + text)
        packs: dict[str, list[str]] = {}
        weights = f[WEIGHTS]
        for (_, stored_dtype), parts in groups.items():
            for names in parts:
                if len(names) < 2:
                    continue
                base = f"{PACK_PREFIX}{index}-{stored_dtype}"
                key, n = base, 0
                while key in packs or key in weights:
                    n += 1
                    key = f"{base}-{n}"
                packs[key] = names
        return packs

    def _pack(self, f: h5py.File, key: str, names: list[str],
              encoded: dict[str, tuple[np.ndarray, str]], first_snapshot: int) -> _Known:
        """(v3) The pack dataset of *names* (and its checksums), made on their first
        snapshot: a weight dataset of one row per snapshot, each member flattened at its
        offset."""
        offset = 0
        packed = []
        for name in names:
            array = encoded[name][0]
            packed.append(PackMember(name, offset, tuple(int(d) for d in array.shape),
                                     tuple(sorted(alias for alias, target in
                                                  self.aliases.items() if target == name))))
            offset += int(array.size)
        array, stored_dtype = encoded[names[0]]
        return self._dataset(f, key, np.zeros(offset, array.dtype), stored_dtype,
                             first_snapshot, packed)

    @staticmethod
    def _pack_target(pack: _Known, row: int, encoded: dict[str, tuple[np.ndarray, str]],
                     epoch: int, path: Path) -> SnapshotTarget:
        """(v3) The row of a pack: its members' arrays copied into one buffer."""
        missing = [m.name for m in pack.members if m.name not in encoded]
        if missing:
            raise SnapshotError(
                f"snapshot at epoch {epoch}: tensor {missing[0]!r}, held in earlier "
                f"snapshots of {str(path)!r} with the other small tensors of its pack, is "
                "missing; snapshot the same tensors each time (same include/exclude/frozen)")
        buffer = np.empty(pack.shape, pack.dtype)
        for m in pack.members:
            buffer[m.offset:m.offset + m.size] = encoded[m.name][0].reshape(-1)
        return SnapshotTarget(
            pack.dataset, row, buffer, pack.chunks, pack.checksums,
            None if pack.checksums is None else np.zeros(pack.per_row, CHECKSUM_DTYPE),
            pack.direct, pack.key,
            tuple((m.name, m.offset) for m in pack.members))

    def _index(self, f: h5py.File, epoch: int, step: int) -> tuple[int, bool]:
        """The table index a snapshot of (*epoch*, *step*) goes to, and whether it replaces
        the last snapshot (:func:`replaces_snapshot`)."""
        self._bind(f)
        n, last = self._table
        replaces = bool(n) and replaces_snapshot(last, epoch, step)
        return (n - 1 if replaces else n), replaces

    def check_missing(self, f: h5py.File, path: Path, epoch: int, step: int,
                      encoded: dict[str, tuple[np.ndarray, str]]) -> None:
        """Raise SnapshotError when a tensor that earlier snapshots hold is not in the
        snapshot (a replacement need not hold tensors the replaced one did not)."""
        known = self._bind(f)
        index, _ = self._index(f, epoch, step)
        for name, tensor in known.items():
            if name not in encoded and tensor.rows > index:
                continue  # replacing a snapshot that did not hold this tensor either
            if name not in encoded and tensor.rows + tensor.first > 0:
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {name!r}, held in earlier "
                    f"snapshots of {str(path)!r}, is missing; snapshot the same "
                    "tensors each time (same include/exclude/frozen)"
                )

    def _dataset(self, f: h5py.File, name: str, array: np.ndarray, stored_dtype: str,
                 first_snapshot: int, packed: list[PackMember] | None = None) -> _Known:
        """The dataset of one tensor (and in v2 its checksums), made on its first
        snapshot; with *packed* (v3), the pack *name* (its link name) of those tensors,
        *array* a row of it."""
        group = f[WEIGHTS]
        key = name if packed else escape_name(name)
        version = self._version
        if key in group and not packed:  # pragma: no cover - the store knows every tensor
            return _Known.of(group[key], key, f.get(CHECKSUMS), version)
        shape = tuple(int(d) for d in array.shape)
        chunks = weight_chunks(shape, array.dtype.itemsize, self._chunk_bytes)
        # (v2, checked, unfiltered, large chunks) placed as the dataset grows, so that
        # each chunk can be written directly at its place
        early = (version >= 2 and self._checksum and self._compression is None
                 and not packed and direct_size(math.prod(chunks) * array.dtype.itemsize))
        ds = group.create_dataset(
            key,
            shape=(0, *shape),
            # A chunk holds at least one element per axis, and HDF5 refuses a chunk larger
            # than a fixed axis: a zero-length axis is left unlimited (it never grows).
            maxshape=(None, *(d if d else None for d in shape)),
            dtype=array.dtype,
            chunks=chunks,
            fletcher32=self._checksum and version < 2,
            compression=self._compression,
            compression_opts=self._compression_opts,
            dcpl=early_allocation() if early else None,
        )
        write_name(ds, name)
        kind = None
        if packed:
            kind = ds.attrs[KIND_ATTR] = PACK_KIND
        ds.attrs[DTYPE_ATTR] = stored_dtype
        ds.attrs[FIRST_SNAPSHOT_ATTR] = first_snapshot
        if packed:
            write_members(ds, packed)
        else:
            write_aliases(ds, [alias for alias, target in self.aliases.items()
                               if target == name])
        sums = None
        per_row = 0
        if version >= 2:
            per_row = grid_size(shape, chunks[1:])
            checked = self._checksum and per_row > 0
            checksum = "crc32c" if checked else "none"
            ds.attrs[WEIGHT_CHECKSUM_ATTR] = checksum
            # what was just written, not read back (a first snapshot of many small
            # tensors spent a third of its time reading its own attributes)
            sign_attrs(ds, version, {NAME_ATTR: escape_metric(name), KIND_ATTR: kind,
                                     DTYPE_ATTR: stored_dtype, WEIGHT_CHECKSUM_ATTR: checksum})
            if checked:
                sums = f.require_group(CHECKSUMS).create_dataset(
                    key, shape=(0, per_row), maxshape=(None, per_row), dtype=CHECKSUM_DTYPE,
                    chunks=(checksum_chunk_rows(per_row), per_row))
            else:
                per_row = 0
        direct = sums is not None and ds.id.get_create_plist().get_nfilters() == 0
        return _Known(ds, sums, shape, ds.dtype, stored_dtype, first_snapshot, 0, ds.chunks,
                      per_row, direct, tuple(packed or ()), key,
                      early and direct and writes_directly(ds))

    @staticmethod
    def write(target: SnapshotTarget, part: slice | None) -> None:
        """Write one tensor's row of a snapshot, or the slice *part* of its first axis
        (whole chunks of it), with the CRC32C of each chunk in v2."""
        if target.direct:
            _write_chunks(target, part)
            return
        if part is None:
            target.dataset[target.row] = target.array
        else:
            target.dataset[target.row, part] = target.array[part]
        if target.crcs is not None:  # filtered (compressed): the stored chunks, read back
            _read_back_crcs(target, part)

    def finish(self, f: h5py.File, plan: SnapshotPlan) -> None:
        """List the snapshot in the table, after its tensors (and their checksums) reached
        the file: one flush does not order its writes, and a kill inside it could leave a
        listed snapshot unwritten (benchmarks/crash_kills.py found it). Flushed on its
        own, so it is committed whether or not ``commit()`` waits for it."""
        for target in plan.targets:
            if target.checksums is not None and target.crcs is not None:
                target.checksums[target.row] = target.crcs
            self.direct_bytes += target.direct_bytes
        plan.close()
        f.flush()
        table = f[SNAPSHOTS]
        if not plan.replaces:
            table.resize((plan.index + 1,))
        table[plan.index] = (plan.epoch, plan.step, time.time())
        if self._file is f:
            self._table = (plan.index + 1, (plan.epoch, plan.step))
        f.flush()

    def drop_from(self, f: h5py.File, epoch: int) -> None:
        """Drop the snapshots of *epoch* and later (the table rows, then tensor rows)."""
        self._known = None  # read from the file again
        table = f[SNAPSHOTS]
        epochs = table["epoch"][:] if len(table) else np.zeros(0, np.int64)
        stale = np.nonzero(epochs >= epoch)[0]
        if not len(stale):
            return
        first = int(stale[0])
        table.resize((first,))
        sums = f.get(CHECKSUMS)
        weights = f[WEIGHTS]
        for key in weights:  # link names, which /checksums shares
            ds = weights[key]
            rows = max(0, first - int(ds.attrs[FIRST_SNAPSHOT_ATTR]))
            if ds.shape[0] > rows:
                ds.resize((rows, *ds.shape[1:]))
            crcs = sums.get(key) if sums is not None else None
            if crcs is not None and crcs.shape[0] > rows:
                crcs.resize((rows, crcs.shape[1]))


def _chunk_ranges(target: SnapshotTarget, part: slice | None
                  ) -> list[tuple[int, tuple[int, ...]]]:
    """(checksum index, chunk offset along the tensor axes) of the chunks of *part*."""
    assert target.chunks is not None
    shape, chunks = target.array.shape, target.chunks[1:]
    out = []
    for k, offset in enumerate(chunk_grid(shape, chunks)):
        if part is None or (offset and part.start <= offset[0] < part.stop):
            out.append((k, offset))
    return out


def _write_chunks(target: SnapshotTarget, part: slice | None) -> None:
    """Write the chunks of *part* whole with ``H5Dwrite_chunk``, from the buffer itself
    where a chunk is a contiguous run of it (a full chunk of a tensor split along its
    first axis only), else from a padded copy of the chunk (an edge chunk)."""
    assert target.chunks is not None
    array = np.require(target.array, requirements='C')  # (ascontiguousarray makes 0-d 1-d)
    shape, chunks = array.shape, target.chunks[1:]
    plain = tuple(chunks[1:]) == tuple(shape[1:])
    dsid = target.dataset.id
    crcs = target.crcs
    for k, offset in _chunk_ranges(target, part):
        ends = [min(o + c, d) for o, c, d in zip(offset, chunks, shape)]
        whole = plain and (not shape or ends[0] - offset[0] == chunks[0])
        if whole:
            data = array[offset[0]:ends[0]] if shape else array
        else:  # an edge chunk: HDF5 stores it padded to the full chunk shape
            data = np.zeros(chunks, array.dtype)
            data[tuple(slice(0, e - o) for o, e in zip(offset, ends))] = array[
                tuple(slice(o, e) for o, e in zip(offset, ends))]
        raw = data.reshape(-1).view(np.uint8)  # a view: the bytes as they are stored
        if crcs is not None:
            crcs[k] = crc32c(raw)
        coord = (target.row, *offset)
        if target.fd is not None and whole and write_at(target.fd, dsid, coord, raw):
            target.direct_bytes += raw.nbytes
            continue
        write_chunk(dsid, coord, raw)


def _read_back_crcs(target: SnapshotTarget, part: slice | None) -> None:
    """The CRC32C of each stored (filtered) chunk of *part*, read back from the file."""
    assert target.crcs is not None
    dsid = target.dataset.id
    for k, offset in _chunk_ranges(target, part):
        _, stored = read_chunk(dsid, (target.row, *offset))
        target.crcs[k] = crc32c(stored)


# --- reading ------------------------------------------------------------------------------


def read_table(f: h5py.File) -> np.ndarray:
    """The snapshot table (SNAPSHOT_DTYPE rows); empty when the file has none.

    Raises:
        RecordDamagedError: (v2) a row is zeroed (see :func:`.history.check_rows`).
    """
    if SNAPSHOTS not in f:
        return np.zeros(0, SNAPSHOT_DTYPE)
    return check_rows(f, f[SNAPSHOTS][()], f"/{SNAPSHOTS}")


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of a record as a reader sees it."""

    key: str  # the escaped link name under /weights
    stored_dtype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    #: Snapshot index of the tensor's first row.
    first: int
    #: Snapshots of it the table lists (its dataset rows from 0 on): rows past them were
    #: written by a commit that did not finish.
    count: int
    #: (v3) A packed tensor: its element offset in the pack's row, its number of
    #: elements (None: the dataset's row is the tensor), its name in the pack.
    offset: int = 0
    size: int | None = None
    member: str = ""

    def row(self, index: int) -> int | None:
        """The dataset row of snapshot *index* (a row of ``/snapshots``); None when that
        snapshot does not hold this tensor."""
        return index - self.first if self.first <= index < self.first + self.count else None

    def epochs(self, table: np.ndarray) -> np.ndarray:
        """The epoch of each of its snapshots, from the snapshot table."""
        return np.asarray(table["epoch"][self.first:self.first + self.count], dtype=np.int64)


def stored_tensors(f: h5py.File, table_rows: int) -> dict[str, StoredTensor]:
    """Every tensor of the record, by original name; *table_rows* is the length of the
    snapshot table. A pack (v3) gives one :class:`StoredTensor` per member, all with its
    ``key``; one the table does not list (a kill cut its first snapshot) gives none. An
    alias of a tied tensor (:func:`read_aliases`) is listed after its tensor, as the
    same :class:`StoredTensor`; one whose tensor is not stored or that names a stored
    tensor is left out."""
    weights = f.get(WEIGHTS)
    tensors: dict[str, StoredTensor] = {}
    aliases: dict[str, str] = {}
    for key in weights if weights is not None else []:
        for name, tensor, others in _stored_tensors(weights, key, table_rows):
            tensors[name] = tensor
            aliases.update((alias, name) for alias in others)
    for alias, target in aliases.items():
        if alias not in tensors:
            tensors[alias] = tensors[target]
    return tensors


def stored_tensor(weights: h5py.Group, key: str, table_rows: int
                  ) -> tuple[str, StoredTensor]:
    """The tensor under link name *key* of *weights* (``/weights``): its original name and
    what a reader needs of it (one tensor, without listing the others). In version 2 the
    name and dtype of a tensor the table lists are checked (:func:`check_object_name`);
    one it does not list (a kill cut its first snapshot) is never read.

    Raises:
        RecordDamagedError: (v2) its attributes do not match their CRC, or its name its
            link name; (v3) *key* is a pack's.
    """
    found = _stored_tensors(weights, key, table_rows)
    if len(found) != 1 or found[0][1].size is not None:
        raise RecordDamagedError(f"{weights.file.filename!r} is damaged: /{WEIGHTS}/{key} "
                                 "is a pack, not one tensor; run `recordkit verify` on it")
    name, tensor, _ = found[0]
    return name, tensor


def _stored_tensors(weights: h5py.Group, key: str, table_rows: int
                    ) -> list[tuple[str, StoredTensor, list[str]]]:
    """What :func:`stored_tensor` gives, and the tensor's aliases (checked when it has
    snapshots); for a pack, that of each member."""
    ds = weights[key]
    first = int(read_attr(ds, FIRST_SNAPSHOT_ATTR, 0))
    stored = read_attr(ds, NAME_ATTR)
    # object_name's rule, from the value read once (each attribute read costs ~40 us)
    text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored
    name = ((unescape_name(text) if text != "%" else text) if isinstance(text, str)
            else unescape_name(key))
    count = max(0, min(ds.shape[0], table_rows - first))
    dtype = read_attr(ds, DTYPE_ATTR)
    packed = key.startswith(PACK_PREFIX)  # (no tensor's link name starts so)
    kind = read_attr(ds, KIND_ATTR) if packed else None  # (a weight dataset has no kind)
    if count:
        check_object_name(ds, key, name, known={NAME_ATTR: stored, DTYPE_ATTR: dtype,
                                                KIND_ATTR: kind})
    stored_dtype = ds.dtype.name if dtype is None else (
        dtype.decode("utf-8", "replace") if isinstance(dtype, bytes) else str(dtype))
    if packed:
        if not count:
            return []  # never listed: its members are never read
        if _as_text(kind) != PACK_KIND:
            raise RecordDamagedError(f"{ds.file.filename!r} is damaged: {ds.name!r} has "
                                     f"the link name of a pack but is not one; run "
                                     "`recordkit verify` on it")
        return [(m.name, StoredTensor(key, stored_dtype, m.shape, ds.dtype, first, count,
                                      m.offset, m.size, m.name), list(m.aliases))
                for m in pack_members(ds)]
    aliases = dataset_aliases(ds, name) if count else []
    return [(name, StoredTensor(key, stored_dtype, tuple(ds.shape[1:]), ds.dtype, first,
                                count), aliases)]


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """A weight dataset, its compression filters made available (hdf5plugin, lazily)."""
    ds = f[WEIGHTS][key]
    ensure_readable(ds, path)
    return ds


@dataclasses.dataclass
class _Reader:
    """What reading a tensor of an open file needs, kept while that file object lives
    (a ``with record:`` block reads many snapshots through one): opening the dataset, its
    checksums and their attributes through h5py cost more than reading 4 MiB."""

    dataset: h5py.Dataset
    kind: str | None  # "crc32c", "none", or None for a version 1 dataset
    sums: h5py.Dataset | None
    fd: int | None
    table: np.ndarray | None = None  # the checksums read so far (all rows at once)


_READERS: weakref.WeakKeyDictionary[Any, dict[str, _Reader]] = weakref.WeakKeyDictionary()
_READERS_LOCK = threading.Lock()


def _reader(f: h5py.File, key: str, path: Path) -> _Reader:
    with _READERS_LOCK:
        cache = _READERS.get(f)
        if cache is None:
            cache = _READERS[f] = {}
        reader = cache.get(key)
    if reader is not None and reader.dataset.id.valid:
        return reader
    ds = _dataset(f, key, path)
    kind = read_attr(ds, WEIGHT_CHECKSUM_ATTR)
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    sums = None
    if kind == "crc32c":
        group = f.get(CHECKSUMS)
        sums = group.get(key) if isinstance(group, h5py.Group) else None
    reader = _Reader(ds, None if kind is None else str(kind), sums, stored_fd(ds))
    with _READERS_LOCK:
        cache[key] = reader
    return reader


def _expected_crcs(reader: _Reader, key: str, row: int, path: Path) -> np.ndarray | None:
    """(v2) The CRC32Cs of row *row* of a weight dataset, or None when it has none
    (``checksum=False``, or a version 1 dataset)."""
    kind = reader.kind
    if kind is None or kind == "none":
        return None  # version 1: fletcher32 (or nothing), checked by HDF5 / chunkread
    table = reader.table
    if table is None or row >= len(table):
        sums = reader.sums
        if (sums is not None and sums.ndim == 2 and sums.dtype == CHECKSUM_DTYPE
                and row < sums.shape[0]):
            table = reader.table = sums[()]
    if table is None or row >= len(table):
        raise RecordDamagedError(
            f"{str(path)!r}: tensor {object_name(reader.dataset)!r} says its chunks are "
            f"checked by {kind!r} but /{CHECKSUMS}/{key} has no row {row}: the file is "
            "damaged (run `recordkit verify` on it)")
    return table[row]


def _damaged_chunk(path: Path, ds: h5py.Dataset, tensor: StoredTensor, row: int,
                   err: ChunkChecksumError) -> RecordDamagedError:
    where = (f"tensor {tensor.member!r} (packed in {ds.name!r})" if tensor.size is not None
             else f"tensor {object_name(ds)!r}")
    return RecordDamagedError(
        f"{str(path)!r}: {where}, dataset row {row}: {err}; the file is damaged there "
        "(run `recordkit verify` on it); other snapshots and tensors may still read")


@dataclasses.dataclass(frozen=True)
class _Laid:
    """(v2) What reading rows of an unfiltered, CRC32C-checked weight dataset needs
    without opening it through h5py (which costs more than reading a 4 MiB row): where
    its chunks are and its checksums, both read once; kept while the file is unchanged
    on disk (:func:`~recordkit.format.files.file_stamp`). None when the dataset is read
    otherwise."""

    stamp: tuple[int, int, int]
    layout: RowLayout | None
    crcs: np.ndarray | None


#: (device, inode, link name) -> its _Laid; emptied when it grows past _MAX_LAID.
_LAID: dict[tuple[int, int, str], _Laid] = {}
_MAX_LAID = 4096


def _lay_out(f: h5py.File, key: str, path: Path, stamp: tuple[int, int, int]) -> _Laid:
    reader = _reader(f, key, path)
    sums = reader.sums
    if (reader.kind != "crc32c" or sums is None or sums.ndim != 2
            or sums.dtype != CHECKSUM_DTYPE):
        return _Laid(stamp, None, None)  # v1, no checksum, or damage said by the slow path
    layout = row_layout(reader.dataset)
    fd = reader.fd
    # read from the file, not through HDF5's chunk cache, which may hold what this open
    # read before the stamp changed
    crcs = None if layout is None or fd is None else read_unfiltered(fd, sums)
    return _Laid(stamp, layout if crcs is not None else None, crcs)


def _laid_rows(f: h5py.File, tensor: StoredTensor, last: int, path: Path
               ) -> tuple[int, tuple[int, int, str], RowLayout, np.ndarray] | None:
    """(fd, its key in _LAID, layout, checksums) of an unfiltered v2 dataset whose rows up
    to *last* that read applies to (read once per dataset while the file is unchanged),
    else None."""
    fd = file_fd(f)  # asked each time: h5py objects hash by HDF5 ids, which are reused
    if fd is None:
        return None
    st = os.fstat(fd)
    stamp = file_stamp(st)
    where = (st.st_dev, st.st_ino, tensor.key)
    laid = _LAID.get(where)
    if laid is None or laid.stamp != stamp or (
            laid.layout is not None and laid.crcs is not None
            and last >= min(laid.layout.rows, len(laid.crcs))):
        laid = _lay_out(f, tensor.key, path, stamp)
        if settled(st):  # else used for this read only: the next write may keep the stamp
            if len(_LAID) >= _MAX_LAID:
                _LAID.clear()
            _LAID[where] = laid
    layout, crcs = laid.layout, laid.crcs
    if layout is None or crcs is None or last >= min(layout.rows, len(crcs)):
        return None  # read otherwise; a row past the checksums is damage said there
    return fd, where, layout, crcs


def _read_laid_out(f: h5py.File, tensor: StoredTensor, row: int, path: Path
                   ) -> np.ndarray | None:
    """Row *row* of an unfiltered v2 dataset through its :class:`_Laid`, checked; None
    when that read does not apply."""
    laid = _laid_rows(f, tensor, row, path)
    if laid is None:
        return None
    fd, where, layout, crcs = laid
    try:
        return read_laid_out_row(fd, layout, row, crcs[row])
    except ChunkChecksumError as err:
        _LAID.pop(where, None)
        raise _damaged_chunk(path, _reader(f, tensor.key, path).dataset, tensor, row,
                             err) from None


def read_row_unopened(path: Path, tensor: StoredTensor, row: int) -> np.ndarray | None:
    """:func:`read_row` without opening the file through HDF5, when the :class:`_Laid` of
    the tensor's dataset is known for the file as it is now (the same device, inode and
    :func:`~recordkit.format.files.file_stamp`): the file's descriptor opened,
    ``fstat``, and the row read and checked with ``preadv`` and CRC32C alone. None when
    that does not apply (not laid out yet in this process, the file changed or was
    replaced since, a row past what is known, no ``preadv``) or the row fails its check
    (the entry is dropped, so that the read through HDF5 lays the dataset out again and
    says what is wrong): then read it with :func:`read_row`.

    The checks of the open through HDF5 (:func:`recordkit.opening.open_record`) were
    made when the entry was: a file whose stamp is unchanged since holds the same bytes.
    """
    if not hasattr(os, "preadv"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # renamed, removed, not allowed: the open through HDF5 says which
    try:
        try:
            st = os.fstat(fd)
        except OSError:
            return None  # (a stale handle on NFS): the read through HDF5 says what is wrong
        where = (st.st_dev, st.st_ino, tensor.key)
        laid = _LAID.get(where)
        if (laid is None or laid.stamp != file_stamp(st) or laid.layout is None
                or laid.crcs is None or not 0 <= row < min(laid.layout.rows, len(laid.crcs))):
            return None
        try:
            return _member_of(read_laid_out_row(fd, laid.layout, row, laid.crcs[row]),
                              tensor)
        except (ChunkChecksumError, OSError, ValueError, MemoryError):
            # the read through HDF5 lays it out again and says what is wrong, as before
            _LAID.pop(where, None)
            return None
    finally:
        os.close(fd)


def lay_out(f: h5py.File, tensor: StoredTensor, path: Path) -> None:
    """Read where the chunks of the tensor's dataset are and their checksums now (one
    :class:`_Laid`, kept while the file is unchanged), so that the first snapshot read
    needs no second open (:func:`read_row_unopened`). Damage found here is left for that
    read to say, with the snapshot it is in. Nothing is read for a file written just
    now (not :func:`~recordkit.format.files.settled`: it would not be kept)."""
    fd = file_fd(f)
    try:
        if fd is None or not settled(os.fstat(fd)):
            return
        _laid_rows(f, tensor, 0, path)
    except (RecordDamagedError, ChunkChecksumError, OSError, RuntimeError, KeyError,
            ValueError, TypeError):
        pass


def fold_rows(f: h5py.File, tensor: StoredTensor, rows: list[int], path: Path,
              fold: Callable[[int, np.ndarray, int], T]) -> list[list[tuple[int, T]]] | None:
    """Snapshots *rows* of a tensor folded piece by piece as they are read and checked,
    never one whole (:func:`.chunkread.fold_laid_out_rows`: ``fold(j, piece, at)`` gets a
    ``uint8`` view of a piece of the j-th row, stored in the dataset's dtype, and its
    first byte in the row); None when that read does not apply (a packed tensor, a
    bfloat16 one, a version 1 or filtered dataset, a file not on the default driver, a
    row without its checksums yet): then read them with :func:`read_row`.

    Raises:
        RecordDamagedError: a chunk of a row fails its check.
    """
    if tensor.size is not None or tensor.stored_dtype == BFLOAT16 or not rows:
        return None
    laid = _laid_rows(f, tensor, max(rows), path)
    if laid is None:
        return None
    fd, where, layout, crcs = laid
    try:
        return fold_laid_out_rows(fd, layout, rows, [crcs[row] for row in rows], fold)
    except ChunkChecksumError as err:
        _LAID.pop(where, None)
        raise _damaged_chunk(path, _reader(f, tensor.key, path).dataset, tensor,
                             rows[0] if err.row is None else err.row, err) from None


def _read_stored_row(f: h5py.File, tensor: StoredTensor, row: int, path: Path
                     ) -> np.ndarray:
    """Row *row* of the dataset of *tensor* as stored (not decoded), verified."""
    data = _read_laid_out(f, tensor, row, path)
    if data is not None:
        return data
    reader = _reader(f, tensor.key, path)
    ds = reader.dataset
    expected = _expected_crcs(reader, tensor.key, row, path)
    if expected is None:
        data = read_snapshot(ds, row)
        return ds[row] if data is None else data
    try:
        data = read_checked_row(ds, row, expected, fd=reader.fd)
        if data is None:  # filtered: check the stored chunks, then let HDF5 decode them
            check_stored_chunks(ds, row, expected)
            data = ds[row]
    except ChunkChecksumError as err:
        raise _damaged_chunk(path, ds, tensor, row, err) from None
    return data


def _member_of(stored: np.ndarray, tensor: StoredTensor) -> np.ndarray:
    """The tensor's own array: a packed one's elements of its pack's row (a copy, so
    that it holds no reference to the others'), decoded."""
    if tensor.size is not None:
        stored = stored[tensor.offset:tensor.offset + tensor.size].reshape(
            tensor.shape).copy()
    return decode_tensor(stored, tensor.stored_dtype)


def read_row(f: h5py.File, tensor: StoredTensor, row: int, path: Path) -> np.ndarray:
    """One snapshot of a tensor (its dataset row, or its part of a pack's row), decoded
    and verified: v2 chunks against their CRC32C (read straight into the result when
    unfiltered), v1 chunks straight from the file when they have the plain layout
    (fletcher32 checked by :mod:`.chunkread`), else through HDF5."""
    return _member_of(_read_stored_row(f, tensor, row, path), tensor)


def read_tensors_at(f: h5py.File, tensors: dict[str, StoredTensor], index: int,
                    path: Path) -> dict[str, np.ndarray]:
    """Every tensor of snapshot *index* (a row of ``/snapshots``) that holds it, decoded:
    each dataset row read once (a pack's for all its members), and a tied tensor's
    aliases given the same array as the tensor."""
    rows: dict[str, np.ndarray] = {}  # by link name
    out: dict[str, np.ndarray] = {}
    made: dict[tuple[str, int], np.ndarray] = {}
    for name, tensor in tensors.items():
        row = tensor.row(index)
        if row is None:
            continue
        at = (tensor.key, tensor.offset)
        if at not in made:
            if tensor.key not in rows:
                rows[tensor.key] = _read_stored_row(f, tensor, row, path)
            made[at] = _member_of(rows[tensor.key], tensor)
        out[name] = made[at]
    return out


def no_rows(tensor: StoredTensor) -> np.ndarray:
    """What :func:`read_rows` gives for an empty range (no file needed): zero snapshots
    of the tensor's shape and dtype."""
    return decode_tensor(np.zeros((0, *tensor.shape), dtype=tensor.dtype),
                         tensor.stored_dtype)


def read_rows(f: h5py.File, tensor: StoredTensor, rows: range, path: Path) -> np.ndarray:
    """Several snapshots of a tensor (dataset rows), stacked along the first axis,
    decoded (and in v2 each row verified)."""
    if not rows:
        return no_rows(tensor)
    reader = _reader(f, tensor.key, path)
    ds = reader.dataset
    if (reader.kind is not None and reader.kind != "none") or tensor.size is not None:
        return np.stack([read_row(f, tensor, i, path) for i in rows])
    data = (ds[rows.start:rows.stop:rows.step] if rows.step > 0
            else np.stack([ds[i] for i in rows]))
    return decode_tensor(data, tensor.stored_dtype)


def read_last_snapshot(f: h5py.File, path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the last snapshot the table lists, decoded; ``{}`` before any."""
    n = int(f[SNAPSHOTS].shape[0]) if SNAPSHOTS in f else 0
    if not n:
        return {}
    return read_tensors_at(f, stored_tensors(f, n), n - 1, path)


def check_checksummed_rows(f: h5py.File, key: str, listed: int) -> list[str]:
    """(v2) Check every stored chunk of the first *listed* rows of ``/weights/<key>``
    against ``/checksums/<key>``; the problems found (empty when all verify, or when the
    dataset is not checked by CRC32C). At most 5 problems are listed per tensor."""
    ds = f[WEIGHTS][key]
    if attr_str(ds, WEIGHT_CHECKSUM_ATTR) != "crc32c" or not ds.size:
        return []
    label = f"tensor {object_name(ds)!r}"
    if key.startswith(PACK_PREFIX):
        try:
            names = [m.name for m in pack_members(ds)]
        except RecordDamagedError:
            names = []
        label = (f"pack {key!r} (of tensors {', '.join(repr(n) for n in names[:3])}"
                 f"{', ...' if len(names) > 3 else ''})")
    sums = f[CHECKSUMS].get(key) if CHECKSUMS in f else None
    if sums is None:
        if int(read_attr(ds, FIRST_SNAPSHOT_ATTR, 0)) >= listed:
            return []  # no listed snapshot holds it yet: a kill before its checksums
        return [f"{label} is checked by crc32c but /{CHECKSUMS}/{key} is missing"]
    problems = []
    rows = min(listed, int(ds.shape[0]))
    if sums.shape[0] < rows:
        problems.append(f"{label}: /{CHECKSUMS}/{key} holds {sums.shape[0]} rows, "
                        f"the table lists {rows}")
        rows = int(sums.shape[0])
    table = sums[:rows]
    for row in range(rows):
        try:
            check_stored_chunks(ds, row, table[row])
        except ChunkChecksumError as err:
            problems.append(f"{label}, dataset row {row}: {err} (the stored bytes "
                            "changed)")
            if len(problems) >= 5:
                break
    return problems
