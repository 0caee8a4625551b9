"""The run's header: its root attributes, params, system info and run facts, written when
the run is created or reopened and read back as plain values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from recordkit.codec import bounded, dumps_json, loads_json, params_hash
from recordkit.errors import RecordDamagedError
from recordkit.format.attrs import attr_str, read_attr, read_text, write_root_attrs, write_text
from recordkit.format.checksums import CHECKSUM_DTYPE, crc32c, identity_crc
from recordkit.format.extras import extra_keys
from recordkit.format.files import flush
from recordkit.format.history import HistoryTable
from recordkit.format.layout import (
    EXTRAS,
    FORMAT_ATTR,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_CRC_ATTR,
    HEADER_CRC_FIELDS,
    INFO,
    PARAMS,
    RUN_FIELDS,
    SUMMARY_ATTR,
    SYSTEM,
    UNSERIALISABLE_ATTR,
    VERSION_ATTR,
)
from recordkit.format.summary import drop_summary, write_summary
from recordkit.format.weights import SnapshotStore

__all__ = [
    "Header",
    "check_header_crcs",
    "params_hash_crcs",
    "read_checked_text",
    "read_fields",
    "read_format_version",
    "read_header",
    "read_info",
    "read_params",
    "read_system",
    "sign_header",
    "write_end",
    "write_info",
    "write_new_run",
    "write_params",
    "write_reopened",
]

# --- the header's identity CRCs (format version 2) ----------------------------------------
#
# Strings in the global heap carry no HDF5 checksum: one changed byte renamed a run or
# changed its status unseen. The root attribute ``header_crc32c`` holds the identity CRC
# (checksums.identity_crc) of each of HEADER_CRC_FIELDS twice, as it is now and as it was
# before the last change of the header, then a CRC32C of those entries. A change writes
# the new CRCs first (the old ones kept as "before") and flushes, then the values: a kill
# leaves each value either old or new, and each verifies; a changed byte in a value or in
# the attribute verifies against neither.

_N = len(HEADER_CRC_FIELDS)
#: The entries of HEADER_CRC_FIELDS that are root attributes (the others are texts).
_ROOT_KEYS = tuple(key for key in HEADER_CRC_FIELDS if not key.startswith("/"))
_TEXTS = {"/system": SYSTEM, "/info": INFO}


def _damaged(f: h5py.File, what: str) -> RecordDamagedError:
    return RecordDamagedError(f"{f.filename!r} is damaged: {what}; run `recordkit verify` "
                              "on it")


def _header_value(f: h5py.File, key: str) -> str:
    """A covered value as text, as the CRC takes it ("" when absent)."""
    if key in _TEXTS:
        return read_text(f, _TEXTS[key]) or ""
    return attr_str(f, key)


def _stored_crcs(f: h5py.File, root_attrs: Mapping[str, object] | None = None
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(now, before) of ``header_crc32c`` (taken from *root_attrs* when they hold it, the
    root attributes as already read); None when the file has none.

    Raises:
        RecordDamagedError: it is not one recordkit writes, or fails its own CRC32C.
    """
    if root_attrs is not None and HEADER_CRC_ATTR in root_attrs:
        stored = root_attrs[HEADER_CRC_ATTR]
    else:
        stored = read_attr(f, HEADER_CRC_ATTR)
    if stored is None:
        return None
    arr = np.asarray(stored)
    if arr.shape != (2 * _N + 1,) or arr.dtype.kind not in "iu":
        raise _damaged(f, f"its root attribute {HEADER_CRC_ATTR!r} is not "
                          f"{2 * _N + 1} CRC32Cs")
    entries = arr[:2 * _N].astype(CHECKSUM_DTYPE)
    if crc32c(entries.tobytes()) != int(arr[-1]):
        raise _damaged(f, f"its root attribute {HEADER_CRC_ATTR!r} fails its own CRC32C "
                          "(the stored bytes changed)")
    return entries[:_N], entries[_N:]


def _write_crcs(f: h5py.File, now: np.ndarray, before: np.ndarray) -> None:
    entries = np.concatenate([now, before]).astype(CHECKSUM_DTYPE)
    value = np.append(entries, np.array([crc32c(entries.tobytes())], CHECKSUM_DTYPE))
    # in place when it exists (same shape and type): one small write in the root's header
    f.attrs.modify(HEADER_CRC_ATTR, value)


def sign_header(f: h5py.File) -> None:
    """Write ``header_crc32c`` from the header's values as stored (a new run's, once
    written). A tool that edits a version 2 header by hand calls it afterwards, or the
    record reads as damaged."""
    now = np.array([identity_crc(_header_value(f, key)) for key in HEADER_CRC_FIELDS],
                   CHECKSUM_DTYPE)
    _write_crcs(f, now, now)


def _announce(f: h5py.File, changes: Mapping[str, Any]) -> None:
    """Before the header values *changes* (covered key -> value as it will be stored) are
    written: their CRCs become the current ones, the values' present CRCs are kept as
    those before, and that is flushed, so that a kill before or while the values are
    written leaves a header that verifies. Nothing in a file without ``header_crc32c``
    (version 1, or a new file before :func:`sign_header`)."""
    try:
        stored = _stored_crcs(f)
    except RecordDamagedError:
        return  # damaged: left as found, for verify to report
    if stored is None:
        return
    now, before = stored
    settled = now.copy()
    for i in np.flatnonzero(now != before):  # a change a kill cut: what the value is
        actual = identity_crc(_header_value(f, HEADER_CRC_FIELDS[i]))
        if actual in (int(now[i]), int(before[i])):
            settled[i] = actual
    new = settled.copy()
    for key, value in changes.items():
        text = bounded(value) if isinstance(value, str) else str(value)
        new[HEADER_CRC_FIELDS.index(key)] = identity_crc(text)
    if np.array_equal(new, now):
        return  # nothing changes
    _write_crcs(f, new, settled)
    flush(f)  # the writer's own flush (its order of blocks), no fsync


def check_header_crcs(f: h5py.File, keys: tuple[str, ...] = _ROOT_KEYS, *,
                      values: Mapping[str, object] | None = None) -> None:
    """(v2) Check the root attributes (or the covered *keys*) against ``header_crc32c``;
    a version 1 file has none, and nothing is checked.

    Args:
        f: the open record.
        keys: which of :data:`~.layout.HEADER_CRC_FIELDS` to check.
        values: the root attributes as already read (a missing one absent), so that they
            are not read twice (each read costs about as much as this whole check).

    Raises:
        RecordDamagedError: a value matches neither its CRC now nor the one before the
            last change (naming the attribute), or ``header_crc32c`` is missing from a
            version 2 file or damaged itself.
    """
    stored = _stored_crcs(f, values)
    if stored is None:
        if read_format_version(f) >= 2:
            raise _damaged(f, f"its root attribute {HEADER_CRC_ATTR!r}, which format "
                              "version 2 writes, is missing")
        return
    now, before = stored
    for key in keys:
        i = HEADER_CRC_FIELDS.index(key)
        if values is not None and key not in _TEXTS:
            value = values.get(key, "")
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        else:
            text = _header_value(f, key)
        if identity_crc(text) not in (int(now[i]), int(before[i])):
            what = (f"the text of {key}" if key in _TEXTS
                    else f"its root attribute {key!r}")
            raise _damaged(f, f"{what} does not match its CRC32C in {HEADER_CRC_ATTR!r} "
                              "(the stored bytes changed)")


def write_new_run(f: h5py.File, fields: Mapping[str, Any], *, params: str,
                  unserialisable: str, system: Mapping[str, Any], checksum: bool) -> None:
    """Every object of a new record: the root attributes (format and run fields), params,
    system info, empty info, and the empty history, snapshot table, weights and extras."""
    # the summary empty until the run closes: rewritten in place then, never created
    write_root_attrs(f, {FORMAT_ATTR: FORMAT_NAME, VERSION_ATTR: FORMAT_VERSION, **fields,
                         SUMMARY_ATTR: ""})
    write_params(f, params, unserialisable)
    write_text(f, SYSTEM, dumps_json(dict(system)))
    write_text(f, INFO, "{}")
    if FORMAT_VERSION >= 2:
        sign_header(f)  # the file is published once complete: no kill sees it before
    HistoryTable.create(f, checksum=checksum)
    SnapshotStore.create(f, checksum=checksum)
    f.require_group(EXTRAS)


def write_params(f: h5py.File, document: str, unserialisable: str) -> None:
    """The params document, its flagged keys and its hash (the root's ``params_hash``,
    which ``header_crc32c`` covers: its new CRC is written and flushed first)."""
    digest = params_hash(document)
    _announce(f, {"params_hash": digest})
    write_text(f, PARAMS, document)
    # in place, as the root's attributes (a deleted and re-created attribute moved the
    # header's messages: a kill in the next flush left "addr overflow"; issue 17)
    write_root_attrs(f[PARAMS], {UNSERIALISABLE_ATTR: unserialisable})
    write_root_attrs(f, {"params_hash": digest})


def params_hash_crcs(f: h5py.File, root_attrs: Mapping[str, object] | None = None
                     ) -> tuple[int, ...]:
    """(v2) The CRCs ``header_crc32c`` holds for ``params_hash``, now and before its last
    change; ``()`` without them. A kill can cut :func:`write_params` between the params
    text and its hash: the text is then either the announced params or those before,
    and its hash has one of these CRCs (see :func:`~recordkit.opening.check_params_hash`).
    *root_attrs*: the root attributes when the caller read them already."""
    try:
        crcs = _stored_crcs(f, root_attrs)
    except RecordDamagedError:
        return ()
    if crcs is None:
        return ()
    i = HEADER_CRC_FIELDS.index("params_hash")
    return (int(crcs[0][i]), int(crcs[1][i]))


def write_info(f: h5py.File, text: str) -> None:
    """The run facts (``/info``), as JSON text (its CRC in ``header_crc32c`` first)."""
    _announce(f, {"/info": text})
    write_text(f, INFO, text)


def write_reopened(f: h5py.File, *, name: str, restarts: str, params: str,
                   unserialisable: str) -> None:
    """A resumed run's header: running again (its summary dropped: it would be stale),
    its name, the ``restarts`` list (JSON) and the params merged with the new ones."""
    drop_summary(f)
    fields = {"status": "running", "ended": "", "error": "", "name": name,
              "restarts": restarts}
    _announce(f, {**fields, "params_hash": params_hash(params)})  # one flush for all
    write_root_attrs(f, fields)
    write_params(f, params, unserialisable)


def write_end(f: h5py.File, status: str, *, ended: str | None, error: str | None) -> None:
    """The status a run is closed with (``ended`` and ``error`` when given), and the
    summary of a run that is not left running (a table of many runs reads that one
    attribute)."""
    fields: dict[str, Any] = {"status": status}
    if ended is not None:
        fields["ended"] = ended
    if error is not None:
        fields["error"] = error
    _announce(f, fields)  # status, ended and error change together
    write_root_attrs(f, fields)
    if status != "running":
        write_summary(f)


def read_fields(f: h5py.File | h5py.h5f.FileID) -> dict[str, str]:
    """The run fields (:data:`RUN_FIELDS`) as text; a missing one is ``""``."""
    return {key: attr_str(f, key) for key in RUN_FIELDS}


@dataclasses.dataclass
class Header:
    """What a record's header holds, as plain values (see :func:`read_header`)."""

    fields: dict[str, str]
    format_version: int
    params_text: str
    unserialisable: list[str]
    system: dict[str, Any]
    info: dict[str, Any]
    extra_keys: dict[str, str]


def read_format_version(f: h5py.File | h5py.h5f.FileID) -> int:
    """The root's ``format_version`` (0 when absent)."""
    return int(read_attr(f, VERSION_ATTR, 0))


def read_params(f: h5py.File, *, root_attrs: Mapping[str, object] | None = None
                ) -> tuple[str, list[Any]]:
    """The params document and the keys it flags as stored by repr (``unserialisable``),
    after the run fields were checked against ``header_crc32c`` (every reader of a
    record's header reads its params: load and resume). *root_attrs*: the root
    attributes when the caller read them already (see :func:`check_header_crcs`).

    Raises:
        RecordDamagedError: (v2) a root attribute does not match its CRC.
    """
    check_header_crcs(f, values=root_attrs)
    text = read_text(f, PARAMS)
    if text is None:
        return "{}", []
    # its attribute read through the low-level object: h5py's Dataset costs more
    params = h5py.h5o.open(f.id, PARAMS.encode())
    return text or "{}", list(loads_json(attr_str(params, UNSERIALISABLE_ATTR, "[]")))


def read_checked_text(f: h5py.File, name: str) -> str:
    """The text of ``/system`` or ``/info`` (*name* ``system`` or ``info``; "" when
    absent), checked against ``header_crc32c`` in version 2: what a reader of either
    calls instead of :func:`~.attrs.read_text`.

    Raises:
        RecordDamagedError: (v2) the text does not match its CRC.
    """
    check_header_crcs(f, (f"/{name}",))
    return read_text(f, name) or ""


def read_system(f: h5py.File) -> Any:
    """The system info (``/system``), decoded, after its CRC (v2) was checked.

    Raises:
        RecordDamagedError: (v2) its text does not match its CRC.
    """
    return loads_json(read_checked_text(f, SYSTEM) or "{}")


def read_info(f: h5py.File) -> dict[str, Any]:
    """The run facts (``/info``), after their CRC (v2) was checked.

    Raises:
        RecordDamagedError: (v2) its text does not match its CRC.
    """
    info = loads_json(read_checked_text(f, INFO) or "{}")
    return info if isinstance(info, dict) else {}


def read_header(f: h5py.File) -> Header:
    """The header of a record whose layout was checked."""
    params_text, unserialisable = read_params(f)
    return Header(
        fields=read_fields(f),
        format_version=read_format_version(f),
        params_text=params_text,
        unserialisable=unserialisable,
        system=read_system(f),
        info=loads_json(read_checked_text(f, INFO) or "{}"),
        extra_keys=extra_keys(f),
    )
