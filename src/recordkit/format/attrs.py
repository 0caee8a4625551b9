"""Attributes and text datasets: the low-level reads that opening thousands of runs needs,
the root attributes, and the original names of stored objects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import h5py
import numpy as np

from recordkit.codec import bounded
from recordkit.format.layout import (
    FORMAT_ATTR,
    FORMAT_NAME,
    NAME_ATTR,
    VERSION_ATTR,
    unescape_name,
)

__all__ = ["attr_str", "is_record", "members", "object_name", "read_attr", "read_text",
           "text_capacity", "write_root_attrs", "write_text"]

_VLEN_STR = h5py.h5t.py_create(h5py.string_dtype())


def read_attr(obj: h5py.HLObject | h5py.h5o.ObjectID, key: str, default: Any = None) -> Any:
    """``obj.attrs.get(key, default)``, the same value, read with h5py's low-level calls;
    *obj* may also be a low-level object id (a ``FileID`` reads the root's attributes).

    h5py's ``.attrs`` builds an attribute manager (and on a File, a Group for ``/``) on
    every access, which costs more than reading a small attribute; opening thousands of
    runs reads a few root attributes of each. The attribute's type and dataspace are
    asked once each (each h5py call costs 4-8 us: ``attr.shape`` and ``attr.dtype`` ask
    them again), and the memory type of a plain numeric dtype is made once."""
    oid = obj.id if isinstance(obj, h5py.HLObject) else obj
    try:
        attr = h5py.h5a.open(oid, key.encode("utf-8", "surrogateescape"))
    except KeyError:
        return default
    stored = attr.get_type()
    space = attr.get_space()
    extent = space.get_simple_extent_type()
    if (extent == _SCALAR and isinstance(stored, h5py.h5t.TypeStringID)
            and stored.is_variable_str()):
        # recordkit's own attributes: one variable-length string
        text = np.empty((), dtype=object)
        attr.read(text, mtype=_VLEN_STR)
        value = text[()]
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    # Anything else as h5py's AttributeManager.__getitem__ reads it.
    dtype = stored.dtype
    if extent == _NULL:
        return h5py.Empty(dtype)
    shape = space.get_simple_extent_dims()
    htype = _memory_type(dtype)
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


_SCALAR = h5py.h5s.SCALAR
_NULL = h5py.h5s.NULL
#: HDF5 memory types of plain numeric dtypes (no metadata: a vlen or enum dtype compares
#: equal to its base dtype, so only these are safe to key by the dtype).
_MEMORY_TYPES: dict[np.dtype[Any], h5py.h5t.TypeID] = {}


def _memory_type(dtype: np.dtype[Any]) -> h5py.h5t.TypeID:
    if dtype.kind not in "biuf" or dtype.metadata is not None or dtype.subdtype is not None:
        return h5py.h5t.py_create(dtype)
    htype = _MEMORY_TYPES.get(dtype)
    if htype is None:
        htype = _MEMORY_TYPES[dtype] = h5py.h5t.py_create(dtype)
    return htype


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
    """Set root attributes; strings are cut to the attribute bound.

    An attribute that exists is rewritten in place (``attrs.modify``: its message keeps
    its place and size, a variable-length string's value being a reference into the
    global heap), never deleted and created again as ``attrs[key] = value`` does: that
    moved the root's messages and could move them into a new header block, which a kill
    inside the flush left referenced but unwritten (the file no longer opened: "addr
    overflow", "corrupt object header"; issue 17). HDF5 frees the old value's heap object
    in the same flush, so a kill inside it can still leave that one attribute unreadable;
    a value that did not change is therefore not written at all."""
    for key, value in attrs.items():
        if isinstance(value, str):
            value = bounded(value)
        if key in f.attrs and _same_kind(f, key, value):
            if _stored(f, key) != value:  # an unchanged value is not written again
                _modify(f, key, value)
        elif key not in f.attrs and key in FIXED_WIDTH_ATTRS and isinstance(value, str) and (
                len(value.encode("utf-8")) <= FIXED_WIDTH_ATTRS[key]):
            f.attrs.create(key, np.bytes_(value.encode("utf-8")),
                           dtype=h5py.string_dtype("utf-8", FIXED_WIDTH_ATTRS[key]))
        else:
            f.attrs[key] = value


#: Attributes created as fixed-length strings of this many bytes: rewritten in place in the
#: object's header, with no global heap object to free (a variable-length value's old heap
#: object is freed in the flush that writes the new one: a kill inside it left "bad heap
#: pointer"; issue 17). ``params_hash`` is 16 hex digits.
FIXED_WIDTH_ATTRS = {"params_hash": 16}


def _modify(f: h5py.HLObject, key: str, value: Any) -> None:
    attr = h5py.h5a.open(f.id, key.encode("utf-8", "surrogateescape"))
    stored = attr.get_type()
    if isinstance(value, str) and isinstance(stored, h5py.h5t.TypeStringID) and (
            not stored.is_variable_str()):
        attr.write(np.array(value.encode("utf-8"), dtype=attr.dtype))  # NUL padded
    else:
        f.attrs.modify(key, value)


def _stored(f: h5py.File, key: str) -> Any:
    try:
        return read_attr(f, key)
    except Exception:  # unreadable (damaged): written again
        return _OTHER


def _same_kind(f: h5py.File, key: str, value: Any) -> bool:
    """Whether *value* can be written over the root attribute *key* as it is stored (a
    string over a variable-length string, a number over a scalar number)."""
    attr = h5py.h5a.open(f.id, key.encode("utf-8", "surrogateescape"))
    stored = attr.get_type()
    if attr.get_space().get_simple_extent_type() != h5py.h5s.SCALAR:
        return False
    if isinstance(value, str):
        return isinstance(stored, h5py.h5t.TypeStringID) and (
            stored.is_variable_str() or len(value.encode("utf-8")) <= stored.get_size())
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return attr.dtype.kind in "iu"
    return False


def write_text(group: h5py.Group, key: str, text: str) -> None:
    """Write (or replace) a scalar UTF-8 string dataset.

    A new one at the root of a version 2 record (params, system info, run facts: what a
    run rewrites) is a fixed-length string with room to spare (:func:`text_capacity`):
    its text is then replaced in place, one raw write that changes no metadata and no
    global heap object, so a kill leaves the old text or the new one. Deleting and
    creating it again (as this did) let a kill leave the link pointing at a header or
    heap object never written ("bad heap index" on /params after a killed resume; issue
    17), and a variable-length string cannot be rewritten in place either: HDF5 frees the
    old value's heap object in the flush that writes the new one. A text that no longer
    fits, or a variable-length one of an older record, goes into a new, unlinked
    dataset (with the old one's attributes), flushed, then linked in the old one's
    place: the window left is the group's symbol table entry and its name (the caller
    flushes that switch). Text that is already stored is not written again."""
    data = text.encode("utf-8", "surrogateescape")
    # a version 1 record keeps variable-length texts (it stays version 1)
    fixed = group.name == "/" and int(read_attr(group, VERSION_ATTR, 1)) >= 2
    if key not in group:
        _new_text(group, key, data, fixed=fixed)
        return
    stored = _scalar_text(group, key)
    if stored is _OTHER:
        stored = _fixed_text(group, key)
    if isinstance(stored, str):
        stored = stored.encode("utf-8", "surrogateescape")
    if stored == data:
        return
    old = group[key]
    if (_fixed_text(group, key) is not _OTHER and old.dtype.itemsize >= len(data)
            and not data.endswith(b"\0")):
        old[()] = np.bytes_(data)  # in place: padded with NULs, which a read strips
        return
    new = _new_text(group, None, data, fixed=fixed)  # anonymous: not linked yet
    for name, value in old.attrs.items():
        new.attrs[name] = value
    group.file.flush()  # its header and data before any link to it
    del group[key]
    group[key] = new  # a hard link to it: the switch


def text_capacity(nbytes: int) -> int:
    """The bytes a text dataset holds for a text of *nbytes*: twice that, at least 1 KiB,
    in whole KiB, so that a text that grows (run facts merged in) is still replaced in
    place."""
    return max(1024, -(-2 * nbytes // 1024) * 1024)


def _new_text(group: h5py.Group, key: str | None, data: bytes, *, fixed: bool
              ) -> h5py.Dataset:
    """A text dataset: fixed-length with room to spare (*fixed*: the root's params,
    system info and run facts, which a run rewrites), else a variable-length string (an
    extra's JSON, written once)."""
    if not fixed:
        return group.create_dataset(key, data=data.decode("utf-8", "surrogateescape"),
                                    dtype=h5py.string_dtype("utf-8"))
    dtype = h5py.string_dtype("utf-8", text_capacity(len(data)))
    return group.create_dataset(key, data=np.array(data, dtype=dtype), dtype=dtype)


def _fixed_text(group: h5py.Group, key: str) -> Any:
    """The bytes of a scalar fixed-length string dataset (NUL padding stripped), or
    :data:`_OTHER` for anything else."""
    try:
        dsid = h5py.h5d.open(group.id, key.encode("utf-8", "surrogateescape"))
    except Exception:
        return _OTHER
    stored = dsid.get_type()
    if not (isinstance(stored, h5py.h5t.TypeStringID) and not stored.is_variable_str()
            and dsid.get_space().get_simple_extent_type() == h5py.h5s.SCALAR):
        return _OTHER
    value = np.zeros((), dsid.dtype)
    dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, value)
    return bytes(value[()])


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

