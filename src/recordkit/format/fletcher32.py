"""Fletcher-32 as HDF5's fletcher32 filter computes it: a pure-Python reference, and
HDF5's own C function, which is not part of its public API.

``H5_checksum_fletcher32`` is an internal symbol of libhdf5 (exported, undocumented). It is
found with ``dlsym`` on the library h5py is linked with and used only after it agrees with
the reference on a probe; when it is missing or disagrees, :func:`native` returns None and
readers let HDF5 check the chunks itself (slower, never wrong). tests/test_chunkread.py
fails loudly when this h5py's HDF5 no longer exports it, so a silent slowdown is seen.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import h5py
import h5py.h5d
import numpy as np

__all__ = ["Checksum", "combine", "fletcher32", "native", "piece_sums", "same"]

_MOD = 0xFFFF  # fletcher32 sums are taken modulo 65535

#: A native checksum: (address, size in bytes) -> fletcher32.
Checksum = Callable[[int, int], int]
_native: Checksum | None = None
_native_loaded = False


def fletcher32(data: bytes | bytearray | np.ndarray) -> int:
    """Fletcher-32 of *data* as HDF5 computes it (16-bit big-endian words, sums modulo
    65535, an odd last byte taken as the high byte of a word). Pure Python: the reference
    the native function is checked against.

    Example:
        >>> hex(fletcher32(b"abcde"))
        '0x4ff029c7'
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    words = [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw) - 1, 2)]
    if len(raw) % 2:
        words.append(raw[-1] << 8)
    sum1 = sum2 = 0
    for word in words:
        sum1 = (sum1 + word) % _MOD
        sum2 = (sum2 + sum1) % _MOD
    return (sum2 << 16) | sum1


def _load_native() -> Checksum | None:
    """HDF5's ``H5_checksum_fletcher32`` from the library h5py is linked to, checked
    against :func:`fletcher32`; None when it is not exported or disagrees."""
    try:
        # dlsym on h5py's extension module searches the libhdf5 it was linked with.
        function = ctypes.CDLL(h5py.h5d.__file__).H5_checksum_fletcher32
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_uint32
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    probe = np.random.default_rng(32).integers(0, 256, 4099, dtype=np.uint8)
    for size in (4099, 4098, 720, 2):
        expected = fletcher32(probe[:size])
        got = int(function(probe.ctypes.data, size))
        if not same(got, expected):
            return None
    return lambda address, size: int(function(address, size))


def native() -> Checksum | None:
    """HDF5's fletcher32, checked against :func:`fletcher32` once; None when absent."""
    global _native, _native_loaded
    if not _native_loaded:
        _native = _load_native()
        _native_loaded = True
    return _native


def same(a: int, b: int) -> bool:
    """Equal as fletcher32 values: each 16-bit sum modulo 65535 (0 and 0xFFFF are the same
    sum, and either may come out of a C implementation's final fold)."""
    return (a & 0xFFFF) % _MOD == (b & 0xFFFF) % _MOD and (a >> 16) % _MOD == (b >> 16) % _MOD


def piece_sums(checksum: Checksum, address: int, size: int) -> tuple[int, int, int]:
    value = checksum(address, size)
    return value & 0xFFFF, value >> 16, size // 2


def combine(pieces: list[tuple[int, int, int]]) -> int:
    """The fletcher32 of consecutive pieces from each piece's (sum1, sum2, words): the
    words of a piece count once more in sum2 for every word after them."""
    sum1 = sum2 = 0
    for piece1, piece2, words in pieces:
        sum2 = (sum2 + piece2 + words * sum1) % _MOD
        sum1 = (sum1 + piece1) % _MOD
    return (sum2 << 16) | sum1
