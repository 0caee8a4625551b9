"""Turn whatever `Recorder.snapshot` receives into ``{name: numpy array}``.

Accepted: a mapping of numpy arrays (or of anything ``np.asarray`` takes), a torch
``Module`` or ``state_dict``, torch tensors, a Keras model or a list of Keras variables.
Frameworks are recognised by the module of their types, never imported here: the core
must not pay for (or depend on) torch or tensorflow.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from recordkit.dtypes import BFloat16Bits
from recordkit.errors import SnapshotError

__all__ = ["to_arrays"]


def _module_of(obj: Any) -> str:
    return type(obj).__module__ or ""


def _is_torch(obj: Any) -> bool:
    return _module_of(obj).startswith("torch")


def _is_keras_model(obj: Any) -> bool:
    module = _module_of(obj)
    return (module.startswith(("keras", "tf_keras", "tensorflow"))
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


def to_arrays(weights: Any, *, copy: bool = True) -> dict[str, np.ndarray]:
    """Named numpy arrays from a weights object; copies unless *copy* is False.

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
    for key, value in weights.items():
        arrays[str(key)] = _any_to_numpy(value, str(key), copy)
    return arrays


def _keras_name(variable: Any) -> str:
    path = getattr(variable, "path", None)
    return str(path if path else variable.name)
