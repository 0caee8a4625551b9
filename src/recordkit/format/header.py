"""The run's header: its root attributes, params, system info and run facts, written when
the run is created or reopened and read back as plain values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import h5py

from recordkit.codec import dumps_json, loads_json, params_hash
from recordkit.format.attrs import attr_str, read_attr, read_text, write_root_attrs, write_text
from recordkit.format.extras import extra_keys
from recordkit.format.history import HistoryTable
from recordkit.format.layout import (
    EXTRAS,
    FORMAT_ATTR,
    FORMAT_NAME,
    FORMAT_VERSION,
    INFO,
    PARAMS,
    RUN_FIELDS,
    SYSTEM,
    UNSERIALISABLE_ATTR,
    VERSION_ATTR,
)
from recordkit.format.summary import drop_summary, write_summary
from recordkit.format.weights import SnapshotStore

__all__ = ["Header", "read_fields", "read_format_version", "read_header", "read_info",
           "read_params", "write_end",
           "write_info", "write_new_run", "write_params", "write_reopened"]


def write_new_run(f: h5py.File, fields: Mapping[str, Any], *, params: str,
                  unserialisable: str, system: Mapping[str, Any], checksum: bool) -> None:
    """Every object of a new record: the root attributes (format and run fields), params,
    system info, empty info, and the empty history, snapshot table, weights and extras."""
    write_root_attrs(f, {FORMAT_ATTR: FORMAT_NAME, VERSION_ATTR: FORMAT_VERSION, **fields})
    write_params(f, params, unserialisable)
    write_text(f, SYSTEM, dumps_json(dict(system)))
    write_text(f, INFO, "{}")
    HistoryTable.create(f, checksum=checksum)
    SnapshotStore.create(f, checksum=checksum)
    f.require_group(EXTRAS)


def write_params(f: h5py.File, document: str, unserialisable: str) -> None:
    """The params document, its flagged keys and its hash (the root's ``params_hash``)."""
    write_text(f, PARAMS, document)
    f[PARAMS].attrs[UNSERIALISABLE_ATTR] = unserialisable
    f.attrs["params_hash"] = params_hash(document)


def write_info(f: h5py.File, text: str) -> None:
    """The run facts (``/info``), as JSON text."""
    write_text(f, INFO, text)


def write_reopened(f: h5py.File, *, name: str, restarts: str, params: str,
                   unserialisable: str) -> None:
    """A resumed run's header: running again (its summary dropped: it would be stale),
    its name, the ``restarts`` list (JSON) and the params merged with the new ones."""
    drop_summary(f)
    write_root_attrs(f, {"status": "running", "ended": "", "error": "", "name": name,
                         "restarts": restarts})
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


def read_params(f: h5py.File) -> tuple[str, list[Any]]:
    """The params document and the keys it flags as stored by repr (``unserialisable``)."""
    text = read_text(f, PARAMS)
    if text is None:
        return "{}", []
    # its attribute read through the low-level object: h5py's Dataset costs more
    params = h5py.h5o.open(f.id, PARAMS.encode())
    return text or "{}", list(loads_json(attr_str(params, UNSERIALISABLE_ATTR, "[]")))


def read_info(f: h5py.File) -> dict[str, Any]:
    """The run facts (``/info``)."""
    info = loads_json(read_text(f, INFO) or "{}")
    return info if isinstance(info, dict) else {}


def read_header(f: h5py.File) -> Header:
    """The header of a record whose layout was checked."""
    params_text, unserialisable = read_params(f)
    return Header(
        fields=read_fields(f),
        format_version=read_format_version(f),
        params_text=params_text,
        unserialisable=unserialisable,
        system=loads_json(read_text(f, SYSTEM) or "{}"),
        info=loads_json(read_text(f, INFO) or "{}"),
        extra_keys=extra_keys(f),
    )
