"""Turn whatever `Recorder.snapshot` receives into ``{name: numpy array}``.

Accepted: a mapping of numpy arrays (or of anything ``np.asarray`` takes), a torch
``Module`` or ``state_dict``, torch tensors, a Keras model or a list of Keras variables.
Frameworks are recognised by the module of their types, never imported here: the core
must not pay for (or depend on) torch or tensorflow.

A torch tensor that a ``state_dict`` gives under several names (tied weights) becomes one
array under each of them (the same memory: :meth:`Snapshots.tie` stores it once), and the
``_orig_mod.`` that ``torch.compile`` puts in the names of a compiled (sub)module is left
out, so a compiled and an uncompiled run of one model have the same tensor names.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from recordkit.dtypes import BFloat16Bits
from recordkit.errors import SnapshotError

__all__ = ["COMPILED_PREFIX", "to_arrays", "uncompiled_name"]


def _is_torch(obj: Any) -> bool:
    """A torch object, or one of a class derived from torch's (a user's ``nn.Module``
    subclass lives in the user's module)."""
    return any((getattr(c, "__module__", None) or "").startswith("torch")
               for c in type(obj).__mro__)


def _is_keras_model(obj: Any) -> bool:
    """A Keras model, a user's subclass of one included."""
    return (any((getattr(c, "__module__", None) or "").startswith(
                ("keras", "tf_keras", "tensorflow")) for c in type(obj).__mro__)
            and hasattr(obj, "weights") and not hasattr(obj, "state_dict"))


def _torch_to_numpy(tensor: Any, copy: bool) -> np.ndarray:
    t = tensor.detach()
    if getattr(t, "is_sparse", False):
        t = t.to_dense()
    if t.device.type != "cpu":
        t = t.to("cpu")  # already a fresh host copy
        copy = False
    if str(t.dtype) == "torch.bfloat16":
        # numpy has no bfloat16: keep the exact bits, tagged so the format records them.
        int16 = sys.modules["torch"].int16
        bits = t.view(int16).numpy().view(np.uint16)
        return BFloat16Bits.of(np.array(bits, copy=True) if copy else bits)
    arr = t.numpy()
    return np.array(arr, copy=True) if copy else arr


def _any_to_numpy(value: Any, name: str, copy: bool) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.copy() if copy else value  # .copy() keeps BFloat16Bits
    if _is_torch(value):
        return _torch_to_numpy(value, copy)
    if hasattr(value, "numpy") and callable(value.numpy):  # tf / keras tensors and variables
        arr = np.asarray(value.numpy())
    else:
        try:
            arr = np.asarray(value)
        except Exception as err:
            raise SnapshotError(
                f"snapshot: tensor {name!r} of type {type(value).__name__} cannot be turned "
                "into a numpy array; pass numpy arrays, torch tensors or Keras variables"
            ) from err
    if arr.dtype == object:
        raise SnapshotError(
            f"snapshot: tensor {name!r} holds Python objects ({type(value).__name__}); "
            "only numeric tensors can be snapshotted"
        )
    return np.array(arr, copy=True) if copy else arr


#: What ``torch.compile`` adds to the state_dict names of the module it wraps.
COMPILED_PREFIX = "_orig_mod."


def uncompiled_name(name: str) -> str:
    """*name* without the ``_orig_mod.`` parts a compiled module adds.

    Example:
        >>> uncompiled_name("encoder._orig_mod.0.weight")
        'encoder.0.weight'
    """
    if COMPILED_PREFIX not in name:
        return name
    parts = name.split(".")
    return ".".join(p for p in parts if p != COMPILED_PREFIX[:-1]) or name


def to_arrays(weights: Any, *, copy: bool = True) -> dict[str, np.ndarray]:
    """Named numpy arrays from a weights object; copies unless *copy* is False. Names of
    a torch module or state_dict lose the ``_orig_mod.`` parts of compiled modules
    (unless that would make two names one).

    Example:
        >>> arrays = to_arrays({"w": [[1.0, 2.0]]})
        >>> arrays["w"].shape
        (1, 2)
    """
    if _is_torch(weights) and hasattr(weights, "state_dict"):
        weights = weights.state_dict()
    elif _is_keras_model(weights):
        weights = {_keras_name(v): v for v in weights.weights}
    elif isinstance(weights, (list, tuple)) and weights and all(
        hasattr(v, "path") or hasattr(v, "name") for v in weights
    ):
        weights = {_keras_name(v): v for v in weights}
    if not isinstance(weights, Mapping):
        raise SnapshotError(
            f"snapshot: cannot take weights from a {type(weights).__name__}; pass a mapping "
            "of arrays, a torch Module or state_dict, or a Keras model"
        )
    arrays: dict[str, np.ndarray] = {}
    seen: dict[tuple[Any, ...], np.ndarray] = {}  # torch tensors by memory: tied weights
    for key, value in weights.items():
        if _is_torch(value) and hasattr(value, "data_ptr") and value.numel():
            memory = (value.data_ptr(), tuple(value.shape), tuple(value.stride()),
                      str(value.dtype), str(value.device))
            if memory not in seen:
                seen[memory] = _any_to_numpy(value, str(key), copy)
            arrays[str(key)] = seen[memory]
        else:
            arrays[str(key)] = _any_to_numpy(value, str(key), copy)
    if seen and any(COMPILED_PREFIX in name for name in arrays):
        renamed = {uncompiled_name(name): a for name, a in arrays.items()}
        if len(renamed) == len(arrays):
            arrays = renamed
    return arrays


def _keras_name(variable: Any) -> str:
    path = getattr(variable, "path", None)
    return str(path if path else variable.name)
