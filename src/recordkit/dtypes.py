"""Tensor dtypes as stored: bfloat16 as its uint16 bit pattern, and the casts of the
storage dtypes (``"keep"``, ``"float16"``, ``"bfloat16"``) a snapshot policy may ask for.
No HDF5 here."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BFLOAT16", "STORAGE_DTYPES", "BFloat16Bits", "cast_for_storage", "decode_tensor",
           "encode_tensor", "stored_nbytes", "stored_spec"]

#: dtype attribute value for bfloat16 tensors, stored as their raw uint16 bit patterns.
BFLOAT16 = "bfloat16"
#: Values of a policy's ``dtype``: keep each tensor's own dtype, or store floating tensors
#: as float16 / bfloat16 (half the bytes of float32).
STORAGE_DTYPES = ("keep", "float16", BFLOAT16)


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


def _bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (to nearest, ties to even) and return the bits."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():  # rounding could carry a NaN's payload into inf; keep a quiet NaN
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def cast_for_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """*array* in the storage dtype: floating tensors are cast, others kept as they are.
    The result is a new array unless the dtype is kept.

    Example:
        >>> cast_for_storage(np.array([1.0, 2.5]), "float16").dtype
        dtype('float16')
                >>> bits = cast_for_storage(np.array([1.0, -2.5], dtype=np.float32), "bfloat16")
        >>> decode_tensor(*encode_tensor(bits)).astype(np.float32).tolist()
        [1.0, -2.5]
    """
    if dtype == "keep":
        return array
    is_bf16 = isinstance(array, BFloat16Bits) or array.dtype.name == BFLOAT16
    if not is_bf16 and array.dtype.kind != "f":
        return array  # integer counters, masks and the like keep their dtype
    if dtype == BFLOAT16:
        if is_bf16:
            return array
        return BFloat16Bits.of(_bfloat16_bits(array))
    if is_bf16:
        bits = np.asarray(array).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float16)
    return array.astype(np.float16)


def stored_spec(array: np.ndarray, dtype: str) -> tuple[np.dtype[Any], str]:
    """The numpy dtype and the dtype name a tensor is stored with (see cast_for_storage)."""
    bf16 = isinstance(array, BFloat16Bits) or array.dtype.name == BFLOAT16
    if dtype == "keep" or not (bf16 or array.dtype.kind == "f"):
        if bf16:
            return np.dtype(np.uint16), BFLOAT16
        return array.dtype, array.dtype.name
    if dtype == BFLOAT16:
        return np.dtype(np.uint16), BFLOAT16
    return np.dtype(np.float16), "float16"


def stored_nbytes(array: np.ndarray, dtype: str) -> int:
    """Bytes a tensor takes once cast to the storage dtype."""
    if dtype != "keep" and (array.dtype.kind == "f" or isinstance(array, BFloat16Bits)):
        return int(array.size) * 2
    return int(array.nbytes)
