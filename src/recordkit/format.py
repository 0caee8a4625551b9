"""The HDF5 layout of a record (format version 1).

This is the only module that knows paths inside a record file. docs/FORMAT.md describes
every object listed here for readers who use plain h5py or h5dump.

Layout of ``<root>/<experiment>/<run_id>.h5``::

    /                       attrs: format, format_version, run_id, name, experiment,
                                   status, created, ended, error, params_hash,
                                   recordkit_version, restarts
    /params                 scalar UTF-8 string: the params as tagged JSON
    /system                 scalar UTF-8 string: system info as JSON
    /info                   scalar UTF-8 string: facts about the run (trainer, optimizer, ...)
    /history/metrics        1-D UTF-8 strings: metric names, in the order first logged
    /history/rows           1-D compound (metric i4, epoch i8, step i8, value f8, time f8)
    /snapshots              1-D compound (epoch i8, step i8, time f8): one row per snapshot
    /weights/<tensor>       (n_snapshots, *tensor_shape), snapshot axis first, growing
    /extras/<key>           what Recorder.add stored: a dataset, a group of datasets, or JSON

Names of tensors and extras are escaped (see :func:`escape_name`) and the original
name is kept in the ``name`` attribute of each object.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

import h5py
import numpy as np

from recordkit.errors import RecordkitWarning

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HISTORY_DTYPE",
    "SNAPSHOT_DTYPE",
    "STATUSES",
    "decode_params",
    "encode_params",
    "escape_name",
    "flatten_params",
    "params_hash",
    "unescape_name",
]

FORMAT_NAME = "recordkit"
FORMAT_VERSION = 1

#: Values of the root attribute ``status``. A reader treats ``running`` in a file that no
#: process holds open as an interrupted run.
STATUSES = ("running", "completed", "failed", "interrupted")

PARAMS = "params"
SYSTEM = "system"
INFO = "info"
HISTORY = "history"
SNAPSHOTS = "snapshots"
WEIGHTS = "weights"
EXTRAS = "extras"

#: One row of a metric's history as readers see it. ``step`` is -1 when the row was logged
#: without a step.
HISTORY_DTYPE = np.dtype(
    [("epoch", "<i8"), ("step", "<i8"), ("value", "<f8"), ("time", "<f8")]
)
#: One row of ``/history/rows`` in the file: the same, with the metric's index into
#: ``/history/metrics``. All metrics share one table, so a commit appends once.
HISTORY_ROW_DTYPE = np.dtype(
    [("metric", "<i4"), ("epoch", "<i8"), ("step", "<i8"), ("value", "<f8"), ("time", "<f8")]
)
HISTORY_ROWS = "rows"
HISTORY_METRICS = "metrics"
#: One row of the snapshot table: the epoch (and step) each snapshot index stands for.
SNAPSHOT_DTYPE = np.dtype([("epoch", "<i8"), ("step", "<i8"), ("time", "<f8")])

#: dtype attribute value for bfloat16 tensors, stored as their raw uint16 bit patterns.
BFLOAT16 = "bfloat16"

#: Rows per chunk of the history table: 113 rows of 36 bytes + the 4-byte checksum fit one
#: 4 KiB page. With WRITE_OPTIONS the chunk is page-aligned, so the in-place rewrite of
#: the last chunk on each commit is one page, which a SIGKILL cannot tear (Linux stops a
#: killed write between pages): committed rows never fail their checksum after a crash.
HISTORY_CHUNK_ROWS = 113
#: Rows per chunk of the snapshot table: 170 rows of 24 bytes + checksum, one page.
SNAPSHOT_CHUNK_ROWS = 170
#: File access options of every writer: objects of 4000 bytes or more (history and table
#: chunks, weight chunks) start on a 4 KiB page boundary. Not stored in the file.
WRITE_OPTIONS: dict[str, int] = {"alignment_threshold": 4000, "alignment_interval": 4096}
#: Target size of one chunk of a weight dataset: big enough for fast appends, small enough
#: to stay far below HDF5's 4 GiB chunk limit. Tensors above it are split along their axes.
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: Attribute strings are bounded: error messages and names stay far below 64 KiB.
MAX_ATTR_CHARS = 8192


# --- names --------------------------------------------------------------------------------


def escape_name(name: str) -> str:
    """Turn any string into a legal HDF5 link name, reversibly.

    ``%``, ``/`` and NUL are percent-encoded; the names ``.`` and the empty string (which
    HDF5 refuses) become ``%2E`` and ``%``.

    Example:
        >>> escape_name("train/loss")
        'train%2Floss'
        >>> unescape_name(escape_name("100% ./x\\x00")) == "100% ./x\\x00"
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"names must be str, received {type(name).__name__}: {name!r}")
    escaped = name.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    if escaped == ".":
        return "%2E"
    if escaped == "":
        return "%"
    return escaped


_UNESCAPE = re.compile(r"%(25|2F|00|2E)")
_UNESCAPE_MAP = {"25": "%", "2F": "/", "00": "\x00", "2E": "."}


def unescape_name(escaped: str) -> str:
    """Invert :func:`escape_name`."""
    if escaped == "%":
        return ""
    return _UNESCAPE.sub(lambda m: _UNESCAPE_MAP[m.group(1)], escaped)


def object_name(obj: h5py.HLObject) -> str:
    """The original name of a metric, tensor or extra: its ``name`` attribute, else the
    unescaped link name."""
    stored = obj.attrs.get("name")
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8", "replace")
    if isinstance(stored, str):
        return unescape_name(stored) if stored != "%" else stored
    return unescape_name(obj.name.rsplit("/", 1)[-1])


def bounded(text: str, limit: int = MAX_ATTR_CHARS) -> str:
    """Cut a string for an attribute, saying so at the end."""
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... [{len(text) - limit + 20} chars cut]"


# --- params: tagged JSON --------------------------------------------------------------------

_TAG = "$type"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_ARRAY_PARAM = 100_000


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _float(value: float) -> Any:
    # float(): np.float64 is a float subclass whose repr under numpy 2 is 'np.float64(inf)'.
    value = float(value)
    if math.isfinite(value):
        return value
    return {_TAG: "float", "value": repr(value)}  # 'nan', 'inf', '-inf'


#: What recordkit before the fix wrote for a non-finite np.float64: 'np.float64(inf)'.
_NUMPY_FLOAT_REPR = re.compile(r"(?:np\.|numpy\.)?float\d*\((.*)\)")


def _parse_float(text: Any) -> float:
    """Invert :func:`_float`'s text; also reads 'np.float64(nan)' left by older writers."""
    if isinstance(text, str):
        found = _NUMPY_FLOAT_REPR.fullmatch(text.strip())
        if found:
            text = found.group(1)
    return float(text)


def _array_to_list(arr: np.ndarray) -> Any:
    if arr.dtype.kind == "f":
        return [_array_to_list(a) for a in arr] if arr.ndim else _float(float(arr))
    return arr.tolist()


def encode_value(value: Any, key: str, flagged: list[str],
                 active: set[int] | None = None) -> Any:
    """Encode one value as tagged JSON. What cannot be encoded faithfully is stored as
    ``{"$type": "repr", ...}`` and its key appended to *flagged*: objects JSON has no form
    for, and a container met again inside itself (*active* holds the ids of the containers
    being encoded, so a dict that contains itself ends instead of recursing forever)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset, Mapping)) or (
            hasattr(value, "_get_kwargs") and hasattr(value, "__dict__")) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)):
        active = set() if active is None else active
        if id(value) in active:
            return _repr(value, key, flagged)
        active.add(id(value))
        try:
            return _encode_container(value, key, flagged, active)
        finally:
            active.discard(id(value))
    if isinstance(value, enum.Enum):  # before int: IntEnum is an int
        return {
            _TAG: "enum",
            "class": _qualname(value),
            "name": value.name,
            "value": encode_value(value.value, key, flagged, active),
        }
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, np.generic):
        if isinstance(value, (np.bool_, np.number)) and value.dtype.kind in "biuf":
            item = value.item()
            return {
                _TAG: "numpy",
                "dtype": value.dtype.str,
                "value": _float(item) if isinstance(item, float) else item,
            }
        return _repr(value, key, flagged)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf" and value.size <= _MAX_ARRAY_PARAM:
            return {
                _TAG: "ndarray",
                "dtype": value.dtype.str,
                "shape": list(value.shape),
                "data": _array_to_list(value),
            }
        return _repr(value, key, flagged)
    if isinstance(value, PurePath):
        return {_TAG: "path", "value": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return {_TAG: type(value).__name__, "value": value.isoformat()}
    if isinstance(value, _dt.timedelta):
        return {_TAG: "timedelta", "seconds": value.total_seconds()}
    if isinstance(value, complex):
        return {_TAG: "complex", "real": _float(value.real), "imag": _float(value.imag)}
    return _repr(value, key, flagged)


def _encode_container(value: Any, key: str, flagged: list[str], active: set[int]) -> Any:
    if isinstance(value, tuple) and not isinstance(value, Mapping):
        return {_TAG: "tuple", "items": [encode_value(v, f"{key}[{i}]", flagged, active)
                                         for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_value(v, f"{key}[{i}]", flagged, active) for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [encode_value(v, f"{key}{{}}", flagged, active) for v in value]
        items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return {_TAG: "set", "items": items}
    if isinstance(value, Mapping):
        return encode_mapping(value, key, flagged, active)
    if hasattr(value, "_get_kwargs") and hasattr(value, "__dict__"):  # argparse.Namespace
        return encode_mapping(vars(value), key, flagged, active)
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return {_TAG: "dataclass", "class": _qualname(value),
            "fields": encode_mapping(fields, key, flagged, active)}


def _repr(value: Any, key: str, flagged: list[str]) -> dict[str, Any]:
    flagged.append(key)
    try:
        text = repr(value)
    except Exception as err:  # a broken __repr__ must not stop training either
        text = f"<unrepresentable {_qualname(value)}: {type(err).__name__}>"
    # Memory addresses differ between runs and would break the params hash.
    return {_TAG: "repr", "class": _qualname(value), "repr": _ADDRESS.sub("", bounded(text))}


def encode_mapping(mapping: Mapping[Any, Any], key: str, flagged: list[str],
                   active: set[int] | None = None) -> Any:
    prefix = f"{key}." if key else ""
    if all(isinstance(k, str) for k in mapping) and _TAG not in mapping:
        return {k: encode_value(v, prefix + k, flagged, active) for k, v in mapping.items()}
    items = [[encode_value(k, key, flagged, active),
              encode_value(v, f"{prefix}{k}", flagged, active)]
             for k, v in mapping.items()]
    items.sort(key=lambda kv: json.dumps(kv[0], sort_keys=True))
    return {_TAG: "dict", "items": items}


def encode_params(params: Mapping[str, Any], *, warn: bool = True) -> tuple[str, list[str]]:
    """Encode params as a JSON document; return it and the keys stored as their repr.

    Never raises for a value: a value nested deeper than Python can recurse is stored as
    its repr and flagged like any other value that cannot be stored faithfully.

    Example:
        >>> doc, flagged = encode_params({"lr": 0.1, "sizes": (3, 4)})
        >>> decode_params(doc)
        {'lr': 0.1, 'sizes': (3, 4)}
    """
    flagged: list[str] = []
    try:
        encoded = encode_mapping(params, "", flagged)
        document = json.dumps(encoded, ensure_ascii=False, allow_nan=False)
    except RecursionError:  # one value nests too deep: find it, keep the others as they are
        flagged.clear()
        parts: list[list[Any]] = []
        for name, value in params.items():
            try:
                part = encode_value(value, str(name), flagged)
                json.dumps(part, ensure_ascii=False, allow_nan=False)
            except RecursionError:
                part = _repr(value, str(name), flagged)
            parts.append([name if isinstance(name, str) else encode_value(name, "", []),
                          part])
        if all(isinstance(k, str) for k in params) and _TAG not in params:
            encoded = dict(parts)
        else:
            encoded = {_TAG: "dict", "items": sorted(
                parts, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
        document = json.dumps(encoded, ensure_ascii=False, allow_nan=False)
    if warn:
        for key in flagged:
            warnings.warn(
                f"recordkit: hyperparameter {key!r} cannot be stored faithfully; "
                "it is stored as its repr and flagged in the record",
                RecordkitWarning,
                stacklevel=3,
            )
    return document, flagged


def _decode_float(value: Any) -> Any:
    if isinstance(value, dict) and value.get(_TAG) == "float":
        return _parse_float(value["value"])
    return value


def decode_value(value: Any) -> Any:
    """Invert :func:`encode_value` as far as it can be done without running code: enums
    come back as ``"Class.NAME"`` strings, dataclasses as dicts, reprs as strings."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: decode_value(v) for k, v in value.items()}
    if tag == "float":
        return _parse_float(value["value"])
    if tag == "tuple":
        return tuple(decode_value(v) for v in value["items"])
    if tag == "set":
        return {_hashable(decode_value(v)) for v in value["items"]}
    if tag == "dict":
        return {_hashable(decode_value(k)): decode_value(v) for k, v in value["items"]}
    if tag == "path":
        from pathlib import Path

        return Path(value["value"])
    if tag == "numpy":
        return np.dtype(value["dtype"]).type(_decode_float(value["value"]))
    if tag == "ndarray":
        data = _decode_nested_floats(value["data"])
        return np.asarray(data, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    if tag == "bytes":
        return base64.b64decode(value["base64"])
    if tag == "datetime":
        return _dt.datetime.fromisoformat(value["value"])
    if tag == "date":
        return _dt.date.fromisoformat(value["value"])
    if tag == "time":
        return _dt.time.fromisoformat(value["value"])
    if tag == "timedelta":
        return _dt.timedelta(seconds=value["seconds"])
    if tag == "complex":
        return complex(_decode_float(value["real"]), _decode_float(value["imag"]))
    if tag == "enum":
        return f"{value['class'].rsplit('.', 1)[-1]}.{value['name']}"
    if tag == "dataclass":
        decoded = decode_value(value["fields"])
        return decoded
    if tag == "repr":
        return str(value["repr"])
    return {k: decode_value(v) for k, v in value.items()}  # unknown tag: keep as data


def _decode_nested_floats(data: Any) -> Any:
    if isinstance(data, list):
        return [_decode_nested_floats(v) for v in data]
    return _decode_float(data)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    return value


def decode_params(document: str) -> dict[str, Any]:
    """Decode the JSON document written by :func:`encode_params`."""
    decoded = loads_json(document)
    if not isinstance(decoded, dict):
        raise ValueError("params document is not a JSON object")
    return decoded


def params_hash(document: str) -> str:
    """A short hash of a params document that does not depend on key order.

    Example:
        >>> a, _ = encode_params({"lr": 0.1, "width": 64})
        >>> b, _ = encode_params({"width": 64, "lr": 0.1})
        >>> params_hash(a) == params_hash(b)
        True
    """
    canonical = json.dumps(json.loads(document), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with dotted keys, e.g. ``{"opt": {"lr": 1}}`` → ``{"opt.lr": 1}``.

    Example:
        >>> flatten_params({"opt": {"lr": 0.1, "betas": (0.9, 0.99)}, "seed": 1})
        {'opt.lr': 0.1, 'opt.betas': (0.9, 0.99), 'seed': 1}
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def dumps_json(value: Any) -> str:
    """JSON for system info, info and plain extras: NaN/inf and odd types handled."""
    flagged: list[str] = []
    return json.dumps(encode_value(value, "", flagged), ensure_ascii=False, allow_nan=False)


def loads_json(document: str) -> Any:
    value = json.loads(document)
    if _TAG not in document and "\\u" not in document:
        return value  # no tagged value in it (not even spelled with escapes): as parsed
    return decode_value(value)


# --- writing --------------------------------------------------------------------------------


def new_file(path: str, **kwargs: Any) -> h5py.File:
    """Create a record file; fails if it exists. Locking is off so that a reader holding
    the file open can never block the writer (research/HDF5-NOTES.md)."""
    return h5py.File(path, "x", locking=False, **WRITE_OPTIONS, **kwargs)


def write_root_attrs(f: h5py.File, attrs: Mapping[str, Any]) -> None:
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
    if key not in group:
        return None
    value = group[key][()]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def create_history(f: h5py.File, *, checksum: bool) -> None:
    """The history table (``/history/rows``) and its metric names (``/history/metrics``)."""
    group = f.require_group(HISTORY)
    if HISTORY_ROWS not in group:
        group.create_dataset(
            HISTORY_ROWS, shape=(0,), maxshape=(None,), dtype=HISTORY_ROW_DTYPE,
            chunks=(HISTORY_CHUNK_ROWS,), fletcher32=checksum,
        )
    if HISTORY_METRICS not in group:
        group.create_dataset(
            HISTORY_METRICS, shape=(0,), maxshape=(None,),
            dtype=h5py.string_dtype("utf-8"), chunks=(64,),
        )


def history_tables(f: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset]:
    group = f[HISTORY]
    return group[HISTORY_ROWS], group[HISTORY_METRICS]


def metric_names(f: h5py.File) -> list[str]:
    """The metric names in index order (the order they were first logged)."""
    group = f.get(HISTORY)
    if group is None or HISTORY_METRICS not in group:
        return []
    return [unescape_name(n.decode("utf-8") if isinstance(n, bytes) else str(n))
            for n in group[HISTORY_METRICS][()]]


def escape_metric(name: str) -> str:
    """HDF5 strings cannot hold NUL: ``%`` and NUL are percent-encoded in metric names and
    ``name`` attributes (nothing else: ``train/loss`` stays readable).

    Example:
        >>> escape_metric("train/loss 100%")
        'train/loss 100%25'
    """
    return name.replace("%", "%25").replace("\x00", "%00")


def add_metric_names(f: h5py.File, names: list[str]) -> None:
    """Append new metric names; they must be in the file before rows that use them."""
    ds = f[HISTORY][HISTORY_METRICS]
    n = ds.shape[0]
    ds.resize((n + len(names),))
    ds[n:] = [escape_metric(name) for name in names]


def split_history(rows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """``{metric: rows of HISTORY_DTYPE}`` from table rows, each metric in logging order.
    Rows whose metric index has no name (a commit cut short) are left out."""
    out: dict[str, np.ndarray] = {}
    if not len(rows):
        return out
    ids = rows["metric"]
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    bounds = np.searchsorted(ids_sorted, np.arange(len(names) + 1))
    for index, name in enumerate(names):
        picked = rows[order[bounds[index]:bounds[index + 1]]]
        if not len(picked):
            continue
        view = np.empty(len(picked), dtype=HISTORY_DTYPE)
        for field in HISTORY_DTYPE.names or ():
            view[field] = picked[field]
        out[name] = view
    return out


def read_history(f: h5py.File) -> dict[str, np.ndarray]:
    """Every metric's rows, read with one read of the table."""
    group = f.get(HISTORY)
    if group is None or HISTORY_ROWS not in group:
        return {}
    return split_history(group[HISTORY_ROWS][()], metric_names(f))


def append_rows(ds: h5py.Dataset, rows: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize((n + len(rows), *ds.shape[1:]))
    ds[n:] = rows


def weight_chunks(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunk shape of a weight dataset: one snapshot per chunk, tensor axes split from the
    first on until the chunk is at most *chunk_bytes*.

    Example:
        >>> weight_chunks((1000, 1000), 4, 4 * 1024 * 1024)
        (1, 1000, 1000)
        >>> weight_chunks((4096, 4096), 4, 4 * 1024 * 1024)
        (1, 256, 4096)
    """
    chunk = [max(1, d) for d in shape]
    for axis in range(len(chunk)):
        rest = itemsize * math.prod(chunk[axis + 1 :])
        if rest * chunk[axis] <= chunk_bytes:
            break
        chunk[axis] = max(1, chunk_bytes // rest)
    return (1, *chunk)


def weight_dataset(
    f: h5py.File,
    name: str,
    array: np.ndarray,
    *,
    stored_dtype: str,
    first_snapshot: int,
    checksum: bool,
    compression: Any = None,
    compression_opts: Any = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> h5py.Dataset:
    """The dataset of one tensor, created on its first snapshot."""
    group = f.require_group(WEIGHTS)
    key = escape_name(name)
    if key in group:
        return group[key]
    shape = tuple(int(d) for d in array.shape)
    ds = group.create_dataset(
        key,
        shape=(0, *shape),
        # A chunk holds at least one element per axis, and HDF5 refuses a chunk larger
        # than a fixed axis: a zero-length axis is left unlimited (it never grows).
        maxshape=(None, *(d if d else None for d in shape)),
        dtype=array.dtype,
        chunks=weight_chunks(shape, array.dtype.itemsize, chunk_bytes),
        fletcher32=checksum,
        compression=compression,
        compression_opts=compression_opts,
    )
    ds.attrs["name"] = escape_metric(name)
    ds.attrs["dtype"] = stored_dtype
    ds.attrs["first_snapshot"] = first_snapshot
    return ds


class BFloat16Bits(np.ndarray):
    """uint16 bit patterns of bfloat16 values, for when ml_dtypes is not installed.

    Example:
        >>> bits = BFloat16Bits.of(np.array([0x3F80], dtype=np.uint16))  # 1.0
        >>> float(decode_tensor(*encode_tensor(bits)).astype(np.float32)[0])
        1.0
    """

    @classmethod
    def of(cls, bits: np.ndarray) -> BFloat16Bits:
        return np.asarray(bits, dtype=np.uint16).view(cls)


def encode_tensor(array: np.ndarray) -> tuple[np.ndarray, str]:
    """The array to store and the dtype name to record. bfloat16 (ml_dtypes or a torch
    tensor's bits) is stored as its uint16 bit pattern; everything else as it is."""
    if isinstance(array, BFloat16Bits):
        return array.view(np.ndarray), BFLOAT16
    if array.dtype.name == BFLOAT16:
        return array.view(np.uint16), BFLOAT16
    if array.dtype.kind not in "biufc":
        raise TypeError(f"dtype {array.dtype} cannot be stored as a weight")
    return array, array.dtype.name


def decode_tensor(array: np.ndarray, stored_dtype: str) -> np.ndarray:
    """Invert :func:`encode_tensor`. bfloat16 comes back as ml_dtypes.bfloat16 when
    ml_dtypes is installed, else as float32 (exact: bfloat16 is the top half of a float32)."""
    if stored_dtype != BFLOAT16:
        return array
    bits = np.asarray(array, dtype=np.uint16)
    try:
        import ml_dtypes
    except ImportError:
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(ml_dtypes.bfloat16)


# --- reading -------------------------------------------------------------------------------


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
    fmt = read_attr(f, "format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    return fmt == FORMAT_NAME


def attr_str(f: h5py.HLObject, key: str, default: str = "") -> str:
    value = read_attr(f, key, default)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def members(group: h5py.Group | None) -> Iterable[tuple[str, Any]]:
    """(original name, h5py object) for every member of a group, in name order."""
    if group is None:
        return []
    return [(object_name(group[key]), group[key]) for key in group]


def read_last_snapshot(f: h5py.File) -> dict[str, np.ndarray]:
    """Every tensor of the last snapshot the table lists, decoded; ``{}`` before any."""
    table = f.get(SNAPSHOTS)
    n = int(table.shape[0]) if table is not None else 0
    out: dict[str, np.ndarray] = {}
    if not n:
        return out
    for name, ds in members(f.get(WEIGHTS)):
        row = n - 1 - int(ds.attrs.get("first_snapshot", 0))
        if 0 <= row < ds.shape[0]:
            out[name] = decode_tensor(ds[row], attr_str(ds, "dtype", ds.dtype.name))
    return out


# --- run summary -----------------------------------------------------------------------------

#: Root attribute written when a run is closed: everything a table of many runs needs
#: (run fields, params, final and best of each metric) in one read.
SUMMARY = "summary"
#: Attributes above this size are not written (HDF5's compact attribute storage ends at
#: 64 KiB); readers then read the whole header instead.
MAX_SUMMARY_BYTES = 60_000
RUN_FIELDS = ("run_id", "name", "experiment", "status", "created", "ended", "error",
              "params_hash", "recordkit_version", "restarts")


def _finite_extreme(values: np.ndarray, epochs: np.ndarray, pick: Any) -> tuple[Any, Any]:
    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    index = int(pick(np.where(finite, values, np.nan)))
    return float(values[index]), int(epochs[index])


def metric_summary(rows: np.ndarray) -> dict[str, Any]:
    """count, final value and epoch, and the finite min and max with their epochs."""
    values, epochs = rows["value"], rows["epoch"]
    low, low_epoch = _finite_extreme(values, epochs, np.nanargmin)
    high, high_epoch = _finite_extreme(values, epochs, np.nanargmax)
    return {
        "count": len(rows),
        "final": float(values[-1]) if len(rows) else None,
        "final_epoch": int(epochs[-1]) if len(rows) else None,
        "min": low, "min_epoch": low_epoch, "max": high, "max_epoch": high_epoch,
        "epoch_level": bool(len(np.unique(epochs)) == len(epochs)),
    }


def build_summary(f: h5py.File) -> dict[str, Any]:
    """What the ``summary`` attribute of the run in *f* holds, from its data."""
    history = read_history(f)
    epochs: set[int] = set()
    for rows in history.values():
        epochs.update(int(e) for e in rows["epoch"])
    summary = {
        # the root's format and version again: a reader of the summary needs no other
        # attribute (summaries written before 2026-11-30 have neither)
        "format": attr_str(f, "format"),
        "format_version": int(read_attr(f, "format_version", 0)),
        "fields": {key: attr_str(f, key) for key in RUN_FIELDS},
        "params": read_text(f, PARAMS) or "{}",
        "unserialisable": attr_str(f[PARAMS], "unserialisable", "[]") if PARAMS in f
        else "[]",
        "metrics": {name: metric_summary(rows) for name, rows in history.items()},
        "epochs": len(epochs),
        "snapshots": int(f[SNAPSHOTS].shape[0]) if SNAPSHOTS in f else 0,
    }
    return summary


def write_summary(f: h5py.File) -> None:
    """Write (or drop, when too large) the ``summary`` root attribute of a closed run.
    A writer that changes the root's ``format`` or ``format_version`` afterwards must
    write it again: readers of the summary trust its copy of them."""
    body = dumps_json(build_summary(f))
    digest = hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()
    text = f'{body[:-1]}, "sha256": "{digest}"}}'
    if SUMMARY in f.attrs:
        del f.attrs[SUMMARY]
    if len(text.encode("utf-8", "surrogateescape")) <= MAX_SUMMARY_BYTES:
        f.attrs[SUMMARY] = text


#: The summary's last member: the sha256 of its text without that member. A string in
#: the global heap has no HDF5 checksum, and a table shows what the summary says.
_SUMMARY_CHECKSUM = re.compile(r', "sha256": "([0-9a-f]{64})"\}\Z')


def summary_checksum_ok(text: str) -> bool | None:
    """Whether a summary's text matches its own sha256; None when it has none (those
    written before 2026-11-30, which also lack ``format``)."""
    found = _SUMMARY_CHECKSUM.search(text)
    if found is None:
        return None
    body = text[:found.start()] + "}"
    return hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest() == (
        found.group(1))


def read_summary(f: h5py.File | h5py.h5f.FileID) -> dict[str, Any] | None:
    """The ``summary`` attribute of a closed run, or None (running, too large, damaged,
    or not one recordkit writes)."""
    text = read_attr(f, SUMMARY)
    if not isinstance(text, str) or len(text) > MAX_SUMMARY_BYTES:
        return None  # not one written by recordkit (a string of at most that many bytes)
    checked = summary_checksum_ok(text)
    if checked is False:
        return None  # damaged: the full read gives the run's own values
    try:
        summary = loads_json(text)
    except (ValueError, RecursionError):
        return None
    if checked is None and isinstance(summary, dict) and "format" in summary:
        return None  # a summary that carries the format carries a checksum: lost to damage
    return summary if _summary_shape_ok(summary) else None


_NUMBER = (int, float)
#: Per metric of a summary: the types of its values (None too where marked).
_METRIC_SUMMARY_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "count": ((int,), False), "final": (_NUMBER, True), "final_epoch": ((int,), True),
    "min": (_NUMBER, True), "min_epoch": ((int,), True), "max": (_NUMBER, True),
    "max_epoch": ((int,), True), "epoch_level": ((bool,), False),
}


def _summary_shape_ok(summary: Any) -> bool:
    """Whether a summary has the shape :func:`build_summary` gives it, so that a forged
    or damaged one sends its run to the full read instead of into a table."""
    if not isinstance(summary, dict) or not isinstance(summary.get("fields"), dict):
        return False
    if not isinstance(summary.get("params"), str) or not isinstance(
            summary.get("unserialisable", "[]"), str):
        return False
    if not all(isinstance(summary.get(key, 0), int) and not isinstance(
            summary.get(key, 0), bool) for key in ("epochs", "snapshots")):
        return False
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        return False
    for stats in metrics.values():
        if not isinstance(stats, dict):
            return False
        for key, (types, nullable) in _METRIC_SUMMARY_TYPES.items():
            value = stats.get(key)
            if value is None and nullable:
                continue
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                return False
    return True


# --- extras ----------------------------------------------------------------------------------


def _numeric_array(value: Any) -> np.ndarray | None:
    """*value* as a numeric (or bool) array, or None when it is not one."""
    if isinstance(value, np.ndarray):
        arr = value
    elif hasattr(value, "__array__") or hasattr(value, "numpy"):
        from recordkit.tensors import to_arrays

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


#: Attribute of an extra dataset that HDF5 cannot checksum (a 0-d array, JSON text): the
#: SHA-256 of its stored bytes, compared on every read.
CHECKSUM_ATTR = "sha256"


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
        text = json.dumps(_repr(value, key, flagged), ensure_ascii=False)
    return PreparedExtra(key, "json", [], text, flagged)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_array(group: h5py.Group, key: str, stored: np.ndarray, stored_dtype: str,
                 name: str, kind: str) -> None:
    """One array dataset of an extra. Arrays with data are chunked with a fletcher32
    checksum per chunk; a 0-d array (HDF5 cannot chunk it) gets a SHA-256 attribute."""
    if stored.ndim and stored.size:
        ds = group.create_dataset(
            key, data=stored, fletcher32=True,
            chunks=weight_chunks(stored.shape, stored.dtype.itemsize, DEFAULT_CHUNK_BYTES)[1:])
    else:
        ds = group.create_dataset(key, data=stored)
        if stored.size:
            ds.attrs[CHECKSUM_ATTR] = _sha256(np.ascontiguousarray(stored).tobytes())
    ds.attrs["name"] = escape_metric(name)
    ds.attrs["kind"] = kind
    ds.attrs["dtype"] = stored_dtype


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
    group = f.require_group(EXTRAS)
    escaped = escape_name(extra.key)
    if escaped in group:
        del group[escaped]
    if extra.kind in ("array", "list"):
        _, _, stored, stored_dtype = extra.arrays[0]
        _write_array(group, escaped, stored, stored_dtype, extra.key, extra.kind)
        return []
    if extra.kind in ("arrays", "dict"):
        sub = group.create_group(escaped)
        sub.attrs["name"] = escape_metric(extra.key)
        sub.attrs["kind"] = extra.kind
        for link, name, stored, stored_dtype in extra.arrays:
            _write_array(sub, link, stored, stored_dtype, name, "array")
        return []
    assert extra.text is not None
    write_text(group, escaped, extra.text)
    ds = group[escaped]
    ds.attrs["name"] = escape_metric(extra.key)
    ds.attrs["kind"] = "json"
    ds.attrs[CHECKSUM_ATTR] = _sha256(extra.text.encode("utf-8"))
    if extra.flagged:
        ds.attrs["unserialisable"] = json.dumps(extra.flagged, ensure_ascii=False)
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
    data = ds[()]
    if CHECKSUM_ATTR in ds.attrs:
        _check_sha256(ds, np.ascontiguousarray(data).tobytes())
    return decode_tensor(data, attr_str(ds, "dtype"))


def extra_flags(obj: h5py.HLObject) -> list[str]:
    """Keys inside an extra stored as their repr, not faithfully (empty for most)."""
    text = attr_str(obj, "unserialisable", "[]")
    try:
        flagged = json.loads(text)
    except ValueError:
        return []
    return [str(k) for k in flagged] if isinstance(flagged, list) else []


def read_extra(obj: h5py.HLObject) -> Any:
    """Invert :func:`write_extra`."""
    kind = attr_str(obj, "kind", "array")
    if kind == "json":
        text = read_text(obj.parent, obj.name.rsplit("/", 1)[-1]) or "null"
        _check_sha256(obj, text.encode("utf-8"))
        return loads_json(text)
    if kind == "arrays":
        return [read_array(obj[k]) for k in sorted(obj, key=int)]
    if kind == "dict":
        return {object_name(obj[k]): read_array(obj[k]) for k in obj}
    arr = read_array(obj)
    if kind == "list":
        return arr.tolist()
    return arr
