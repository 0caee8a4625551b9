"""Opening a record read-only, and turning every failure into the right RecordkitError:
not found, a folder, not HDF5, busy (a live writer), damaged (with a repair or verify
hint); what a record reads when it is opened (:func:`read_opened`: the root and the
params, whatever else the file holds) and each part it reads on first use
(:func:`read_parts`), each after the safety checks of that part."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recordkit.codec import loads_json, params_hash
from recordkit.errors import (
    NotARecordError,
    RecordBusyError,
    RecordDamagedError,
    RecordkitError,
    RecordNotFoundError,
    RecordTooLargeError,
)
from recordkit.format.attrs import is_record, read_attr
from recordkit.format.checksums import identity_crc
from recordkit.format.chunkread import file_fd
from recordkit.format.extras import extra_keys
from recordkit.format.files import (
    RecordFile,
    file_stamp,
    is_open,
    open_id,
    open_read_only,
    settled,
)
from recordkit.format.header import (
    params_hash_crcs,
    read_checked_text,
    read_format_version,
    read_params,
)
from recordkit.format.history import read_history
from recordkit.format.layout import (
    EXTRAS,
    FORMAT_ATTR,
    FORMAT_NAME,
    FORMAT_VERSION,
    HISTORY,
    INFO,
    PARAMS,
    READ_VERSIONS,
    RUN_FIELDS,
    SNAPSHOTS,
    SYSTEM,
    VERSION_ATTR,
    WEIGHTS,
    escape_name,
)
from recordkit.format.safety import (
    MAX_OBJECTS,
    RECORD_OBJECTS,
    WEIGHT_OBJECTS,
    check_dataset,
    check_header,
    check_history_layout,
    check_member,
    check_object,
    check_root,
    check_root_links,
    check_snapshots_layout,
    check_weights_layout,
    read_root_attrs,
)
from recordkit.format.summary import read_summary
from recordkit.format.weights import lay_out, read_table, stored_tensor, stored_tensors
from recordkit.locking import is_locked
from recordkit.repair import damage_hint, has_hdf5_signature, open_with_patched_eof

__all__ = ["PARTS", "Opened", "check_params_hash", "open_record", "out_of_memory",
           "read_closed_summary", "read_consistently", "read_info_alone", "read_lazily",
           "read_opened", "read_parts", "read_tensor", "reading", "recalled",
           "remembered", "settled_stat"]

T = TypeVar("T")

#: Attempts of a read that a live writer's write got in the way of, and the first pause.
_ATTEMPTS = 3
_PAUSE = 0.05


def open_record(path: Path) -> RecordFile:
    """Open a record file read-only, turning every failure into a RecordkitError.

    Raises:
        RecordNotFoundError: nothing at *path*.
        NotARecordError: a folder, or a file that is not HDF5.
        RecordBusyError: a live writer holds it and it could not be read consistently.
        RecordDamagedError: an HDF5 file HDF5 cannot open (with what to do about it).
    """
    patched = open_with_patched_eof(path)  # a killed flush's stale end address, read around
    if patched is not None:
        return patched
    try:
        return open_read_only(path)
    except OSError as err:
        if not path.exists():
            raise RecordNotFoundError(f"no record at {str(path)!r}") from None
        if path.is_dir():
            raise NotARecordError(f"{str(path)!r} is a folder, not a record file; "
                                  "use recordkit.load_all for a folder of runs") from None
        if "locking flag values don't match" in str(err):
            # Already open in this process through plain h5py, whose default locking
            # HDF5 will not mix with ours: share that setting instead.
            try:
                return open_read_only(path, shared_locking=True)
            except OSError:
                pass
        if not has_hdf5_signature(path):
            raise NotARecordError(
                f"{str(path)!r} is not a recordkit record (not an HDF5 file)"
            ) from None
        if is_locked(path):
            raise RecordBusyError(
                f"{str(path)!r} is being written by another process and could not be read "
                f"consistently ({err}); try again in a moment"
            ) from None
        raise RecordDamagedError(
            f"{str(path)!r} is damaged and cannot be opened ({err}); "
            f"{damage_hint(path, err)}"
        ) from None


def read_closed_summary(path: Path) -> dict[str, Any] | None:
    """The one-attribute summary of a closed run of this format version, read with
    HDF5's low-level calls: root attributes only (their sizes checked), no link followed
    and no dataset read. None when the run has none that can be used (running, killed,
    too large, another version, or not readable this way): the full read says why.

    Raises:
        UnsafeRecordError: a root attribute claims more than the safety limit.
    """
    # A file whose superblock a killed flush left short (repair.open_with_patched_eof)
    # needs no patched view here: a read within the old end address gets the same
    # bytes, and an open or a read past it fails, which sends the run to the full read,
    # which patches.
    try:
        fid = open_id(path)
    except Exception:
        return None  # missing, not HDF5, busy, damaged: the full read says which
    try:
        check_root(fid, path)
        # The rest of the file is checked (check_file) when the full header is needed.
        summary = read_summary(fid)
        if summary is None:
            return None
        if "format" in summary:  # it says what the root's attributes say
            known = (summary["format"], summary.get("format_version"))
        else:
            known = (FORMAT_NAME if is_record(fid) else "", read_format_version(fid))
        # A version this recordkit reads, and the root's own: a v1 record's v1 summary
        # is as good as a v2 one's.
        trusted = (known[0] == FORMAT_NAME and known[1] in READ_VERSIONS
                   and known[1] == read_format_version(fid))
        return summary if trusted else None
    except RecordkitError:
        raise
    except Exception:
        return None  # the full read says what is wrong
    finally:
        fid.close()


def out_of_memory(path: Path, err: BaseException, what: str = "") -> RecordTooLargeError:
    """The error for a read that ran out of memory (a ``MemoryError``, or HDF5 failing to
    allocate): it names the file and what was read, and what to do."""
    cause = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return RecordTooLargeError(
        f"{str(path)!r}: reading {what or 'it'} needs more memory than this process may "
        f"allocate ({cause}); free memory, raise the process's memory limit, or read "
        "less at a time (one tensor or one snapshot: record.weight(name)[i]). A file from "
        "a stranger may claim sizes it does not hold: the bound on what compressed data "
        "may expand to is max_read_bytes= of recordkit.load (or "
        "$RECORDKIT_MAX_READ_BYTES)")


def _is_out_of_memory(err: BaseException) -> bool:
    """Whether *err* says an allocation failed (Python's, or HDF5's own)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, (OSError, RuntimeError, ValueError)) and (
        "memory allocation failed" in text or "unable to allocate" in text
        or "out of memory" in text)


def check_params_hash(path: Path, text: str, stored: str, crcs: tuple[int, ...] = ()
                      ) -> str:
    """The params text carries no HDF5 checksum; its hash in the root attribute
    ``params_hash`` is one. A mismatch is damage, never params read as other values.

    A kill can cut a change of the params between the text and its hash; *crcs* (v2:
    what ``header_crc32c`` holds for the hash, now and before that change) vouch for a
    text whose hash has either CRC: the params announced, or those before them.

    Returns:
        The params hash of *text*: *stored*, or the one *crcs* vouch for.

    Raises:
        RecordDamagedError: *text* does not have the hash *stored* (when there is one),
            nor one that *crcs* vouch for.
    """
    if not stored:  # a file that never had one: nothing to compare
        return stored
    try:
        digest = params_hash(text)
    except ValueError:  # not even JSON any more
        digest = None
    if digest == stored:
        return stored
    if digest is not None and identity_crc(digest) in crcs:
        return digest
    raise RecordDamagedError(
        f"{str(path)!r} is damaged: its params (/params) do not match the "
        f"params_hash {stored!r} written with them, so the stored bytes changed; "
        f"run `recordkit verify` on it")


def _text(value: object) -> str:
    """A root attribute as text, as :func:`recordkit.format.attrs.attr_str` gives it."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class Opened:
    """What a record reads when it is opened (:func:`read_opened`)."""

    #: The run fields (:data:`~recordkit.format.layout.RUN_FIELDS`) as text; "" if missing.
    fields: dict[str, str]
    format_version: int
    params_text: str
    unserialisable: list[Any]
    #: The links the safety checks walked so far (all parts together are bounded).
    walked: int
    #: (v2) The CRCs of the params hash now and before its last change (``()`` without).
    params_hash_crcs: tuple[int, ...] = ()


def read_opened(f: RecordFile, path: Path, *, max_read_bytes: int | None = None,
                check_params: bool = True) -> Opened:
    """What opening a record reads, whatever else the file holds: the root group's links
    (hard links only) and attributes (their sizes, then their values, once), the format
    and run fields, any root object recordkit does not write (checked in full: nothing
    reads it, and no check of a part would reach it), and the params (their hash
    compared, unless *check_params* is false: the caller compares it before it decodes
    them, :func:`check_params_hash`). Every other part is checked when
    :func:`read_parts` first reads it. *max_read_bytes* is the cap on what one read of
    compressed data may expand to (:func:`~recordkit.format.safety.max_read_bytes`).

    Raises:
        UnsafeRecordError: the root, the params or an object unknown to recordkit
            reaches outside the file or claims more than it could hold.
        NotARecordError: the file is not a record, or of a newer format version.
        RecordDamagedError: the run fields or the params are damaged.
    """
    names = check_root_links(f, path)
    attrs = read_root_attrs(f, path)
    for key in (FORMAT_ATTR, VERSION_ATTR, *RUN_FIELDS):
        if key not in attrs:  # absent, or its read failed: by name, which says why
            value = read_attr(f, key)
            if value is not None:
                attrs[key] = value
    version = check_header(attrs, path)
    if version is None:
        raise NotARecordError(
            f"{str(path)!r} is an HDF5 file but not a recordkit record "
            "(no root attribute format='recordkit')"
        )
    if version > FORMAT_VERSION:
        raise NotARecordError(
            f"{str(path)!r} is a record of format version {version}; this "
            f"recordkit reads up to version {FORMAT_VERSION}: upgrade recordkit"
        )
    walked = len(names)
    for name in names:
        if name not in RECORD_OBJECTS:
            walked += check_object(f, name, path, limit=MAX_OBJECTS - walked,
                                   max_read_bytes=max_read_bytes)
    walked += check_object(f, PARAMS, path, limit=MAX_OBJECTS - walked,
                           max_read_bytes=max_read_bytes)
    fields = {key: _text(attrs.get(key, "")) for key in RUN_FIELDS}
    try:
        params_text, unserialisable = read_params(f, root_attrs=attrs)
    except MemoryError as err:
        raise out_of_memory(path, err, f"the params (/{PARAMS})") from None
    crcs = params_hash_crcs(f, attrs)
    if check_params:
        fields["params_hash"] = check_params_hash(path, params_text, fields["params_hash"],
                                                  crcs)
    return Opened(fields, version, params_text, unserialisable, walked, crcs)


#: The parts of a record read on first use (:func:`read_parts`), in the order they are
#: read together: the tensors need the snapshot table.
PARTS = ("system", "info", "history", "snapshots", "tensors", "extras")


def read_parts(f: RecordFile, path: Path, parts: Iterable[str], *, snapshots: Any = None,
               walked: int = 0, max_read_bytes: int | None = None
               ) -> tuple[dict[str, Any], int]:
    """Each of *parts* (names of :data:`PARTS`), each after the safety checks of its
    objects (:func:`~recordkit.format.safety.check_object`: links, attribute and
    dataset headers, of everything under it) and of its layout: ``system`` and ``info``
    (decoded JSON), ``history`` (rows per metric), ``snapshots`` (the table), ``tensors``
    (:class:`~recordkit.format.weights.StoredTensor` by name; the snapshot table is
    *snapshots*, read here first when None), ``extras`` (link name by extra name).

    *walked* is the number of links the checks made before this call walked (of the root
    and of other parts): all of them together stay under
    :data:`~recordkit.format.safety.MAX_OBJECTS`, as the walk of the whole file did.
    *max_read_bytes* is the cap on what one read of compressed data may expand to.

    Returns:
        The value of each part read (``snapshots`` too when the tensors needed it), and
        the links walked in all.

    Raises:
        UnsafeRecordError: a part reaches outside the file or claims more than it holds.
        RecordDamagedError: a part lost its layout.
        RecordkitError: reading a part ran out of memory (which part, in the message).
    """
    wanted = set(parts)
    if "tensors" in wanted and snapshots is None:
        wanted.add("snapshots")
    out: dict[str, Any] = {}
    cap = max_read_bytes
    for part in PARTS:
        if part not in wanted:
            continue
        try:
            if part in ("system", "info"):
                name = SYSTEM if part == "system" else INFO
                walked += check_object(f, name, path, limit=MAX_OBJECTS - walked,
                                       max_read_bytes=cap)
                out[part] = loads_json(read_checked_text(f, name) or "{}")
            elif part == "history":
                walked += check_object(f, HISTORY, path, limit=MAX_OBJECTS - walked,
                                       max_read_bytes=cap)
                check_history_layout(f, path)
                out[part] = read_history(f)
            elif part == "snapshots":
                walked += check_object(f, SNAPSHOTS, path, limit=MAX_OBJECTS - walked,
                                       max_read_bytes=cap)
                check_snapshots_layout(f, path)
                out[part] = snapshots = read_table(f)
            elif part == "tensors":
                rows = len(snapshots)
                for name in WEIGHT_OBJECTS:
                    walked += check_object(f, name, path, table_rows=rows,
                                           limit=MAX_OBJECTS - walked, max_read_bytes=cap)
                check_weights_layout(f, path)
                out[part] = stored_tensors(f, rows)
            elif part == "extras":
                walked += check_object(f, EXTRAS, path, limit=MAX_OBJECTS - walked,
                                       max_read_bytes=cap)
                out[part] = extra_keys(f)
        except RecordkitError:
            raise
        except Exception as err:
            if _is_out_of_memory(err):
                raise out_of_memory(path, err, f"its {_PART_OBJECTS[part]}") from None
            raise
    return out, walked


#: What each part is, for messages.
_PART_OBJECTS = {"system": f"system info (/{SYSTEM})", "info": f"run facts (/{INFO})",
                 "history": f"history (/{HISTORY})",
                 "snapshots": f"snapshot table (/{SNAPSHOTS})",
                 "tensors": f"list of tensors (/{WEIGHTS})", "extras": f"extras (/{EXTRAS})"}


def read_consistently(path: Path, read: Callable[[RecordFile], T]) -> T:
    """``read(file)`` on the record opened read-only. A run being written can be caught
    mid-write: a live writer is given a moment (three attempts), damage found while it
    writes included (a table row it is appending reads as zeros until it is written);
    any other failure of *read* is damage.

    Raises:
        RecordkitError: what :func:`open_record` or *read* raised, or
            RecordBusyError / RecordDamagedError for another exception of *read*.
    """
    last_error: RecordkitError | None = None
    for attempt in range(_ATTEMPTS):
        try:
            with open_record(path) as f:
                return read(f)
        except RecordBusyError as err:
            last_error = err
            time.sleep(_PAUSE * (attempt + 1))
        except RecordDamagedError as err:
            if not is_locked(path):
                raise
            last_error = RecordBusyError(
                f"{str(path)!r} is being written by another process and could not be read "
                f"consistently ({err}); try again")
            time.sleep(_PAUSE * (attempt + 1))
        except RecordkitError:
            raise
        except Exception as err:
            if _is_out_of_memory(err):
                raise out_of_memory(path, err) from None
            if is_locked(path):
                last_error = RecordBusyError(
                    f"{str(path)!r} is being written by another process and could "
                    f"not be read consistently ({type(err).__name__}: {err}); try again"
                )
                time.sleep(_PAUSE * (attempt + 1))
                continue
            raise RecordDamagedError(
                f"{str(path)!r} is damaged: {type(err).__name__}: {err}; "
                f"{damage_hint(path, err)}"
            ) from None
    assert last_error is not None
    raise last_error


@contextlib.contextmanager
def reading(path: Path, held: RecordFile | None = None, what: str = ""
            ) -> Iterator[RecordFile]:
    """The record for one lazy read (of *what*, for messages): *held* when it is open (a
    ``with record:`` block), else opened for this read only (a handle left open would
    clash with plain h5py in this process). Damage found by the read (e.g. a fletcher32
    checksum) is a RecordDamagedError that says where and what; running out of memory
    a RecordkitError that says what was read."""
    try:
        if is_open(held):
            assert held is not None
            yield held
            return
        with open_record(path) as f:
            yield f
    except RecordkitError:
        raise
    except MemoryError as err:
        raise out_of_memory(path, err, what) from None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        if _is_out_of_memory(err):
            raise out_of_memory(path, err, what) from None
        raise RecordDamagedError(
            f"{str(path)!r} is damaged: reading it failed with "
            f"{type(err).__name__}: {err}; {damage_hint(path, err)}"
        ) from None


def read_tensor(f: RecordFile, path: Path, name: str, *, snapshots: Any = None,
                walked: int = 0, max_read_bytes: int | None = None
                ) -> tuple[Any, Any, int]:
    """One tensor, by its original name, without listing the others: the member of
    ``/weights`` (and of what format version 2 keeps beside it) that recordkit names
    after it (:func:`~recordkit.format.layout.escape_name`), after the safety checks of
    that member (:func:`~recordkit.format.safety.check_member`), the layout of its
    dataset, and those of the snapshot table (read here first when *snapshots* is None).

    Returns:
        The :class:`~recordkit.format.weights.StoredTensor`, or None when the file holds
        no such member or it has another name (the full listing of :func:`read_parts`
        then says what there is); the snapshot table; the links walked in all.

    Raises:
        UnsafeRecordError: the member, or the table, reaches outside the file or claims
            more than it holds.
        RecordDamagedError: the table or the dataset lost its layout.
    """
    if snapshots is None:
        values, walked = read_parts(f, path, ("snapshots",), walked=walked,
                                    max_read_bytes=max_read_bytes)
        snapshots = values["snapshots"]
    key = escape_name(name)
    rows = len(snapshots)
    for group in WEIGHT_OBJECTS:
        checked = check_member(f, group, key, path, table_rows=rows,
                               limit=MAX_OBJECTS - walked, max_read_bytes=max_read_bytes)
        if group == WEIGHTS and checked is None:
            return None, snapshots, walked  # not there: the full listing says what is
        walked += checked or 0
    check_weights_layout(f, path, (key,))
    stored, tensor = stored_tensor(f[WEIGHTS], key, rows)
    if stored != name:
        return None, snapshots, walked
    lay_out(f, tensor, path)  # its first snapshot read then needs no second open
    return tensor, snapshots, walked


def read_lazily(path: Path, held: RecordFile | None, read: Callable[[RecordFile], T]) -> T:
    """``read(file)`` for a part of a record read on first use: on *held* when it is open
    (a ``with record:`` block), else on the record opened for this read, with the
    attempts of :func:`read_consistently` (a live writer's write may get in the way). A
    failure of *read* on *held* while a live writer holds the run is read again, opened
    anew; any other failure is damage.

    Raises:
        RecordkitError: what *read* or the open raised, or RecordDamagedError for
            another exception of *read*.
    """
    if is_open(held):
        assert held is not None
        try:
            return read(held)
        except RecordkitError:
            raise
        except Exception as err:
            if _is_out_of_memory(err):
                raise out_of_memory(path, err) from None
            if not is_locked(path):
                raise RecordDamagedError(
                    f"{str(path)!r} is damaged: {type(err).__name__}: {err}; "
                    f"{damage_hint(path, err)}"
                ) from None
    return read_consistently(path, read)


#: What reads of a file gave, kept for the next open of the same file in this process
#: while it is unchanged: (device, inode) -> (its stamp, {what: value}). Each value is
#: the result of a read that passed its safety checks on the file as it was then; the
#: same bytes pass them again. Emptied when it holds :data:`_MAX_REMEMBERED` files.
_REMEMBERED: dict[tuple[int, int], tuple[tuple[int, int, int], dict[Hashable, Any]]] = {}
_MAX_REMEMBERED = 256


def current_stat(path: Path) -> os.stat_result | None:
    """The ``fstat`` of the file at *path* now, through an open descriptor (a network
    file system revalidates what it cached of a file on open, not on ``stat``); None
    when it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        return os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def recalled(path: Path, what: Hashable) -> Any:
    """What :func:`remembered` kept as *what* of the file now at *path*, if the file is
    unchanged since (same device, inode and :func:`~recordkit.format.files.file_stamp`);
    else None."""
    st = current_stat(path)
    if st is None:
        return None
    entry = _REMEMBERED.get((st.st_dev, st.st_ino))
    if entry is None or entry[0] != file_stamp(st):
        return None
    return entry[1].get(what)


def settled_stat(path: Path) -> os.stat_result | None:
    """The file at *path* as it is before a read that may be remembered (taken before
    the file is opened: HDF5 reads the superblock and the root at the open), when it is
    :func:`~recordkit.format.files.settled` now; else None (the read is not kept)."""
    st = current_stat(path)
    return st if st is not None and settled(st) else None


def remembered(f: RecordFile, what: Hashable, read: Callable[[RecordFile], T],
               before: os.stat_result | None) -> T:
    """``read(f)``, kept as *what* for :func:`recalled` when the file is the one
    *before* (:func:`settled_stat`, taken before *f* was opened) and unchanged from then
    until the read is done; a write in between changes the stamp, since the file's
    times were settled. A file read through a patched view, or on another driver, is
    not kept; nor is anything when *before* is None. A value a tuple of which holds an
    array equal to one kept for the same file keeps that one (the snapshot table read
    with each tensor is kept once). Never None."""
    value = read(f)
    fd = file_fd(f) if before is not None else None
    if before is None or fd is None:
        return value
    after = os.fstat(fd)
    stamp = file_stamp(before)
    key = (before.st_dev, before.st_ino)
    if file_stamp(after) != stamp or (after.st_dev, after.st_ino) != key:
        return value
    entry = _REMEMBERED.get(key)
    if entry is None or entry[0] != stamp:
        if len(_REMEMBERED) >= _MAX_REMEMBERED:
            _REMEMBERED.clear()
        entry = _REMEMBERED[key] = (stamp, {})
    entry[1][what] = _sharing_arrays(entry[1], value)
    return value


#: The key, in a file's entry of :data:`_REMEMBERED`, of the distinct arrays its values
#: hold (the snapshot table, usually one): what a new value's arrays are matched with.
_ARRAYS = ("arrays",)


def _sharing_arrays(kept: dict[Hashable, Any], value: T) -> T:
    """*value* with each array among its items (a tuple's, nested once, or a dict's)
    replaced by an equal one of the file's (``kept[_ARRAYS]``), which gets those it
    lacked: each is compared with the few distinct arrays of the file, not with every
    value kept (thousands of tensors read one by one)."""
    known: list[np.ndarray] = kept.setdefault(_ARRAYS, [])

    def shared(item: Any, depth: int = 0) -> Any:
        if isinstance(item, np.ndarray):
            for other in known:
                if (other.dtype == item.dtype and other.shape == item.shape
                        and np.array_equal(other, item)):
                    return other
            if len(known) < 8:
                known.append(item)
            return item
        if isinstance(item, tuple) and depth < 2:
            return tuple(shared(x, depth + 1) for x in item)
        if isinstance(item, dict) and depth < 2:
            return {k: shared(x, depth + 1) for k, x in item.items()}
        return item

    return shared(value)


def read_info_alone(path: str | os.PathLike[str]) -> Any:
    """The run facts (``/info``) of a record, read and checked alone (nothing else in the
    file is walked: about 1 ms per file); None when the file is not a record or has no
    facts.

    Raises:
        RecordkitError: the file cannot be opened, or its ``/info`` is unsafe.
        ValueError: the facts are not JSON.
    """
    file_path = Path(path)
    with open_record(file_path) as f:
        if not is_record(f):
            return None
        try:
            check_dataset(f, INFO, file_path)
        except KeyError:
            return None
        text = read_checked_text(f, INFO)
    return None if not text else loads_json(text)
