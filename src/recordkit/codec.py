"""Tagged JSON for params, system info and plain extras, and the params hash: values JSON
has no form for (tuples, sets, NaN, numpy scalars and arrays, paths, bytes, datetimes,
enums, dataclasses) keep their type as ``{"$type": ...}`` objects; anything else is stored
as its repr and flagged. No HDF5 here: docs/FORMAT.md documents the tags."""

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
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from recordkit.errors import RecordkitWarning

__all__ = ["MAX_TEXT_CHARS", "bounded", "decode_params", "decode_value", "dumps_json",
           "encode_params", "encode_repr", "encode_value", "flatten_params", "loads_json",
           "params_hash"]

#: Strings stored in attributes (error messages, names, reprs) are cut at this length.
MAX_TEXT_CHARS = 8192


def bounded(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Cut a string for an attribute, saying so at the end."""
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... [{len(text) - limit + 20} chars cut]"


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
            return encode_repr(value, key, flagged)
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
        return encode_repr(value, key, flagged)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf" and value.size <= _MAX_ARRAY_PARAM:
            return {
                _TAG: "ndarray",
                "dtype": value.dtype.str,
                "shape": list(value.shape),
                "data": _array_to_list(value),
            }
        return encode_repr(value, key, flagged)
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
    return encode_repr(value, key, flagged)


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


def encode_repr(value: Any, key: str, flagged: list[str]) -> dict[str, Any]:
    """*value* as its repr (memory addresses removed), its key appended to *flagged*."""
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
                part = encode_repr(value, str(name), flagged)
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
