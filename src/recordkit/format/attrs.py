"""Attributes and text datasets: the low-level reads that opening thousands of runs needs,
the root attributes, and the original names of stored objects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import h5py
import numpy as np

from recordkit.codec import bounded
from recordkit.format.layout import FORMAT_ATTR, FORMAT_NAME, NAME_ATTR, unescape_name

__all__ = ["attr_str", "is_record", "members", "object_name", "read_attr", "read_text",
           "write_root_attrs", "write_text"]

_VLEN_STR = h5py.h5t.py_create(h5py.string_dtype())


def read_attr(obj: h5py.HLObject | h5py.h5o.ObjectID, key: str, default: Any = None) -> Any:
    """``obj.attrs.get(key, default)``, the same value, read with h5py's low-level calls;
    *obj* may also be a low-level object id (a ``FileID`` reads the root's attributes).

    h5py's ``.attrs`` builds an attribute manager (and on a File, a Group for ``/``) on
    every access, which costs more than reading a small attribute; opening thousands of
    runs reads a few root attributes of each."""
    oid = obj.id if isinstance(obj, h5py.HLObject) else obj
    try:
        attr = h5py.h5a.open(oid, key.encode("utf-8", "surrogateescape"))
    except KeyError:
        return default
    stored = attr.get_type()
    if (isinstance(stored, h5py.h5t.TypeStringID) and stored.is_variable_str()
            and attr.get_space().get_simple_extent_type() == h5py.h5s.SCALAR):
        # recordkit's own attributes: one variable-length string
        text = np.empty((), dtype=object)
        attr.read(text, mtype=_VLEN_STR)
        value = text[()]
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    # Anything else as h5py's AttributeManager.__getitem__ reads it.
    shape = attr.shape
    if shape is None:
        return h5py.Empty(attr.dtype)
    dtype = attr.dtype
    htype = h5py.h5t.py_create(dtype)
    if dtype.subdtype is not None:  # numpy has no top-level array type: fold it into shape
        dtype, subshape = dtype.subdtype
        shape = shape + subshape
    arr = np.zeros(shape, dtype=dtype, order="C")
    attr.read(arr, mtype=htype)
    string = h5py.check_string_dtype(dtype)
    if string is not None and string.length is None:
        arr = np.array([b.decode("utf-8", "surrogateescape") for b in arr.flat],
                       dtype=dtype).reshape(arr.shape)
    return arr[()] if arr.ndim == 0 else arr


def is_record(f: h5py.File | h5py.h5f.FileID) -> bool:
    """Whether the root says ``format='recordkit'``."""
    name = read_attr(f, FORMAT_ATTR)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name == FORMAT_NAME


def attr_str(f: h5py.HLObject | h5py.h5o.ObjectID, key: str, default: str = "") -> str:
    """An attribute as text (bytes decoded), *default* when absent."""
    value = read_attr(f, key, default)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)



def object_name(obj: h5py.HLObject) -> str:
    """The original name of a metric, tensor or extra: its ``name`` attribute, else the
    unescaped link name."""
    stored = read_attr(obj, NAME_ATTR)
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8", "replace")
    if isinstance(stored, str):
        return unescape_name(stored) if stored != "%" else stored
    return unescape_name(obj.name.rsplit("/", 1)[-1])


def members(group: h5py.Group | None) -> Iterable[tuple[str, Any]]:
    """(original name, h5py object) for every member of a group, in name order."""
    if group is None:
        return []
    return [(object_name(group[key]), group[key]) for key in group]



def write_root_attrs(f: h5py.File, attrs: Mapping[str, Any]) -> None:
    """Set root attributes; strings are cut to the attribute bound."""
    for key, value in attrs.items():
        if isinstance(value, str):
            value = bounded(value)
        f.attrs[key] = value


def write_text(group: h5py.Group, key: str, text: str) -> None:
    """Write (or replace) a scalar UTF-8 string dataset."""
    if key in group:
        del group[key]
    group.create_dataset(key, data=text, dtype=h5py.string_dtype("utf-8"))


def read_text(group: h5py.Group, key: str) -> str | None:
    """A scalar string dataset as text; None when absent.

    recordkit's own (one variable-length string) are read with h5py's low-level calls:
    building h5py's Dataset costs more than reading the text, and opening a record reads
    its params so."""
    value = _scalar_text(group, key)
    if value is _OTHER:  # absent, or not one of recordkit's: as h5py reads it
        if key not in group:
            return None
        value = group[key][()]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


#: What :func:`_scalar_text` gives for a dataset it does not read.
_OTHER = object()


def _scalar_text(group: h5py.Group, key: str) -> Any:
    """The value h5py's ``group[key][()]`` gives for a scalar variable-length string
    dataset (bytes), read with low-level calls; :data:`_OTHER` for anything else."""
    try:
        dsid = h5py.h5d.open(group.id, key.encode("utf-8", "surrogateescape"))
    except Exception:
        return _OTHER  # absent, not a dataset or damaged: the general path says which
    stored = dsid.get_type()
    if not (isinstance(stored, h5py.h5t.TypeStringID) and stored.is_variable_str()
            and dsid.get_space().get_simple_extent_type() == h5py.h5s.SCALAR):
        return _OTHER
    text = np.empty((), dtype=object)
    dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, text, mtype=_VLEN_STR)
    return text[()]

