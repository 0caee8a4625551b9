"""Extras: what ``Recorder.add`` stored under ``/extras``, a dataset, a group of datasets
or tagged JSON per key, each checksummed (fletcher32 per chunk plus, since format
version 2, a CRC32C per stored chunk in the ``crc32c`` attribute, since fletcher32 passes
a zeroed chunk; a SHA-256 attribute where HDF5 cannot checksum), so damage reads as an
error, never as other values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from recordkit.codec import encode_repr, encode_value, loads_json
from recordkit.dtypes import BFLOAT16, BFloat16Bits, decode_tensor, encode_tensor
from recordkit.format.attrs import attr_str, object_name, read_attr, read_text, write_text
from recordkit.format.checksums import CHECKSUM_DTYPE, chunk_grid, crc32c
from recordkit.format.chunks import read_chunk
from recordkit.format.layout import (
    CHECKSUM_ATTR,
    CRC32C_ATTR,
    DEFAULT_CHUNK_BYTES,
    DTYPE_ATTR,
    EXTRAS,
    KIND_ATTR,
    UNSERIALISABLE_ATTR,
    VERSION_ATTR,
    escape_name,
)
from recordkit.format.weights import check_object_name, sign_attrs, weight_chunks, write_name
from recordkit.tensors import to_arrays

__all__ = ["PreparedExtra", "extra_flags", "extra_keys", "prepare_extra", "read_extra",
           "write_extra"]

def _numeric_array(value: Any) -> np.ndarray | None:
    """*value* as a numeric (or bool) array, or None when it is not one."""
    if isinstance(value, np.ndarray):
        arr = value
    elif hasattr(value, "__array__") or hasattr(value, "numpy"):
        try:
            arr = to_arrays({"x": value}, copy=False)["x"]
        except Exception:
            return None
    elif isinstance(value, (list, tuple)) and value and not any(
        isinstance(v, np.ndarray) or hasattr(v, "__array__") for v in value
    ):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):  # ragged
            return None
    else:
        return None
    if isinstance(arr, BFloat16Bits) or arr.dtype.name == BFLOAT16:
        return arr
    if arr.dtype.kind not in "biufc" or arr.dtype == object:
        return None
    return arr


def _array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__array__")


@dataclasses.dataclass
class PreparedExtra:
    """What :func:`write_extra` stores for one ``Recorder.add`` call, encoded before the
    file is touched, so that the writer can check the disk space first.

    Attributes:
        key: the name given to ``add``.
        kind: ``array``, ``list``, ``arrays``, ``dict`` or ``json`` (see :func:`write_extra`).
        arrays: (link name, original name, array as stored, dtype name) of each dataset;
            one for ``array``/``list``, one per member for ``arrays``/``dict``.
        text: the tagged JSON of a ``json`` extra.
        flagged: keys inside the value stored as their repr (not faithfully).
    """

    key: str
    kind: str
    arrays: list[tuple[str, str, np.ndarray, str]]
    text: str | None
    flagged: list[str]

    @property
    def nbytes(self) -> int:
        """Bytes of data the extra adds to the file (before HDF5's own overhead)."""
        data = sum(int(a.nbytes) for _, _, a, _ in self.arrays)
        return data + (len(self.text.encode("utf-8")) if self.text is not None else 0)


def prepare_extra(key: str, value: Any) -> PreparedExtra:
    """Encode what ``Recorder.add`` received; nothing is written. See :func:`write_extra`."""
    arr = _numeric_array(value)
    if arr is not None:
        kind = "list" if isinstance(value, (list, tuple)) else "array"
        return PreparedExtra(key, kind, [(escape_name(key), key, *encode_tensor(arr))],
                             None, [])
    if isinstance(value, (list, tuple)) and value and all(
        _array_like(v) and _numeric_array(v) is not None for v in value
    ):
        items = [_numeric_array(item) for item in value]
        return PreparedExtra(key, "arrays", [(str(i), str(i), *encode_tensor(a))
                                             for i, a in enumerate(items) if a is not None],
                             None, [])
    if isinstance(value, Mapping) and value and all(
        isinstance(k, str) and _array_like(v) and _numeric_array(v) is not None
        for k, v in value.items()
    ):
        members = {k: _numeric_array(v) for k, v in value.items()}
        return PreparedExtra(key, "dict", [(escape_name(k), k, *encode_tensor(a))
                                           for k, a in members.items() if a is not None],
                             None, [])
    flagged: list[str] = []
    try:
        text = json.dumps(encode_value(value, key, flagged), ensure_ascii=False,
                          allow_nan=False)
    except RecursionError:  # nested deeper than Python recurses: keep its repr
        flagged.clear()
        text = json.dumps(encode_repr(value, key, flagged), ensure_ascii=False)
    return PreparedExtra(key, "json", [], text, flagged)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Chunks an extra's ``crc32c`` attribute holds at most (64 KiB of attribute, the limit
#: of HDF5's compact attribute storage): an extra array of more chunks (above 60 GiB)
#: keeps fletcher32 alone.
MAX_CRC_ATTR = 15_000


def _stored_crcs(ds: h5py.Dataset) -> np.ndarray:
    """The CRC32C of each stored chunk of *ds* (bytes as stored, fletcher32 trailer
    included), in the C order of its chunk grid: fletcher32 passes a zeroed chunk."""
    assert ds.chunks is not None
    return np.array([crc32c(read_chunk(ds.id, offset)[1])
                     for offset in chunk_grid(ds.shape, ds.chunks)], CHECKSUM_DTYPE)


def _check_crcs(ds: h5py.Dataset) -> None:
    expected = ds.attrs.get(CRC32C_ATTR)
    if expected is None or ds.chunks is None:
        return  # written before format version 2
    try:
        found = _stored_crcs(ds)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{ds.name}: a chunk cannot be read ({err})") from None
    expected = np.asarray(expected)
    if found.shape != expected.shape or not np.array_equal(found, expected):
        bad = ([int(i) for i in np.flatnonzero(found != expected)[:5]]
               if found.shape == expected.shape else "their number")
        raise ValueError(f"{ds.name}: chunks {bad} do not match their {CRC32C_ATTR} "
                         "checksums")


def _write_array(group: h5py.Group, key: str, stored: np.ndarray, stored_dtype: str,
                 name: str, kind: str, version: int) -> None:
    """One array dataset of an extra. Arrays with data are chunked with a fletcher32
    checksum per chunk; a 0-d array (HDF5 cannot chunk it) gets a SHA-256 attribute."""
    if stored.ndim and stored.size:
        ds = group.create_dataset(
            key, data=stored, fletcher32=True,
            chunks=weight_chunks(stored.shape, stored.dtype.itemsize, DEFAULT_CHUNK_BYTES)[1:])
        crcs = _stored_crcs(ds)
        if len(crcs) <= MAX_CRC_ATTR:
            ds.attrs[CRC32C_ATTR] = crcs
    else:
        ds = group.create_dataset(key, data=stored)
        if stored.size:
            ds.attrs[CHECKSUM_ATTR] = _sha256(np.ascontiguousarray(stored).tobytes())
    write_name(ds, name)
    ds.attrs[KIND_ATTR] = kind
    ds.attrs[DTYPE_ATTR] = stored_dtype
    sign_attrs(ds, version)


def write_extra(f: h5py.File, key: str | PreparedExtra, value: Any = None) -> list[str]:
    """Store what ``Recorder.add`` received under ``/extras``; return the keys inside it
    that were stored as their repr (flagged in the ``unserialisable`` attribute).

    kinds (the ``kind`` attribute): ``array`` (a numeric array), ``list`` (a list of
    numbers, read back as a list), ``arrays`` (a group ``0``, ``1``, ... of arrays: a list
    of arrays of different shapes, like the old Record's model weights), ``dict`` (a group
    of named arrays), ``json`` (anything else, as tagged JSON).

    Array data is checksummed (fletcher32 per chunk; a 0-d array and JSON text carry a
    ``sha256`` attribute instead), so damage reads as an error, never as other values.

    Args:
        f: the open record.
        key: the extra's name, or an extra already encoded by :func:`prepare_extra`.
        value: the value, when *key* is a name.
    """
    extra = key if isinstance(key, PreparedExtra) else prepare_extra(key, value)
    version = int(read_attr(f, VERSION_ATTR, 1))
    group = f.require_group(EXTRAS)
    escaped = escape_name(extra.key)
    if escaped in group:
        del group[escaped]
    if extra.kind in ("array", "list"):
        _, _, stored, stored_dtype = extra.arrays[0]
        _write_array(group, escaped, stored, stored_dtype, extra.key, extra.kind, version)
        return []
    if extra.kind in ("arrays", "dict"):
        sub = group.create_group(escaped)
        write_name(sub, extra.key)
        sub.attrs[KIND_ATTR] = extra.kind
        for link, name, stored, stored_dtype in extra.arrays:
            _write_array(sub, link, stored, stored_dtype, name, "array", version)
        sign_attrs(sub, version)
        return []
    assert extra.text is not None
    write_text(group, escaped, extra.text)
    ds = group[escaped]
    write_name(ds, extra.key)
    ds.attrs[KIND_ATTR] = "json"
    ds.attrs[CHECKSUM_ATTR] = _sha256(extra.text.encode("utf-8"))
    if extra.flagged:
        ds.attrs[UNSERIALISABLE_ATTR] = json.dumps(extra.flagged, ensure_ascii=False)
    sign_attrs(ds, version)
    return list(extra.flagged)


def _check_sha256(obj: h5py.HLObject, data: bytes) -> None:
    expected = obj.attrs.get(CHECKSUM_ATTR)
    if expected is None:  # written before checksums, or checksummed by HDF5
        return
    if isinstance(expected, bytes):
        expected = expected.decode("ascii", "replace")
    if _sha256(data) != str(expected):
        raise ValueError(f"{obj.name} does not match its {CHECKSUM_ATTR} checksum: the "
                         "stored bytes changed")


def read_array(ds: h5py.Dataset) -> np.ndarray:
    _check_crcs(ds)
    data = ds[()]
    if CHECKSUM_ATTR in ds.attrs:
        _check_sha256(ds, np.ascontiguousarray(data).tobytes())
    return decode_tensor(data, attr_str(ds, DTYPE_ATTR))


def extra_flags(obj: h5py.HLObject) -> list[str]:
    """Keys inside an extra stored as their repr, not faithfully (empty for most)."""
    text = attr_str(obj, UNSERIALISABLE_ATTR, "[]")
    try:
        flagged = json.loads(text)
    except ValueError:
        return []
    return [str(k) for k in flagged] if isinstance(flagged, list) else []


def read_extra(obj: h5py.HLObject) -> Any:
    """Invert :func:`write_extra`."""
    kind = attr_str(obj, KIND_ATTR, "array")
    if kind == "json":
        text = read_text(obj.parent, obj.name.rsplit("/", 1)[-1]) or "null"
        _check_sha256(obj, text.encode("utf-8"))
        return loads_json(text)
    if kind == "arrays":
        members = [(k, obj[k]) for k in sorted(obj, key=int)]
        for k, member in members:
            check_object_name(member, k, object_name(member), required=False)
        return [read_array(member) for _, member in members]
    if kind == "dict":
        out = {}
        for k in obj:
            member = obj[k]
            name = object_name(member)
            check_object_name(member, k, name, required=False)
            out[name] = read_array(member)
        return out
    arr = read_array(obj)
    if kind == "list":
        return arr.tolist()
    return arr


def extra_keys(f: h5py.File) -> dict[str, str]:
    """``{original name: link name}`` of every extra, each name checked (v2:
    :func:`~.weights.check_object_name`: its name, kind and dtype against their CRC, its
    link name against its name).

    Raises:
        RecordDamagedError: (v2) a name does not match its CRC or its link name.
    """
    group = f.get(EXTRAS)
    if group is None:
        return {}
    out = {}
    for k in group:
        obj = group[k]
        name = object_name(obj)
        check_object_name(obj, k, name, required=False)
        out[name] = k
    return out


def read_extra_at(f: h5py.File, key: str) -> Any:
    """The extra stored under link name *key*."""
    return read_extra(f[EXTRAS][key])


def extra_flags_at(f: h5py.File, key: str) -> list[str]:
    """The keys inside the extra under link name *key* stored as their repr."""
    return extra_flags(f[EXTRAS][key])
