"""Per-chunk CRC32C checksums of format version 2.

Why not HDF5's fletcher32: it runs at about 0.75 GB/s and copies every chunk, so it made
the write path CPU-bound at half the disk's speed, and it passes a chunk whose data and
checksum are all zeros (HDF5 starts its sums at 0), which is what a crash or a sparse-file
hole leaves. CRC32C (the ``crc32c`` package: SSE4.2 / ARMv8 instructions, 10+ GB/s, the
GIL released, wheels for Linux, macOS and Windows; zarr v3 uses the same) of *n* zero
bytes is never 0 for a chunk size recordkit writes (:func:`check_zero_crc`), so a zeroed
chunk or a zeroed checksum never verifies.

What is checked is the stored chunk, byte for byte, as ``H5Dread_chunk``
(``DatasetID.read_direct_chunk``) returns it: after any filter, with the padding of an
edge chunk. A reader with plain h5py verifies one chunk in a few lines (docs/FORMAT.md).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

_crc32c: Any
try:
    _crc32c = importlib.import_module("crc32c")
except ImportError:  # pragma: no cover - a core dependency; said clearly if missing
    _crc32c = None

__all__ = ["CHECKSUM_DTYPE", "ChecksumMissingError", "checksum_chunk_rows", "chunk_grid",
           "crc32c", "crc32c_combine", "grid_size", "identity_crc"]

#: The stored type of one checksum.
CHECKSUM_DTYPE = np.dtype("<u4")


class ChecksumMissingError(ImportError):
    """The ``crc32c`` package is not installed (a dependency of recordkit)."""


def crc32c(data: Any, value: int = 0) -> int:
    """The CRC32C (Castagnoli) of a bytes-like object, continued from *value*; the GIL is
    released for large buffers, so other threads run meanwhile.

    Example:
        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
        >>> crc32c(b"6789", crc32c(b"12345")) == crc32c(b"123456789")
        True
    """
    if _crc32c is None:  # pragma: no cover
        raise ChecksumMissingError(
            "recordkit: format version 2 records checksum weights with CRC32C, which needs "
            "the 'crc32c' package: pip install crc32c (it is a dependency of recordkit)")
    return int(_crc32c.crc32c(data, value))


def identity_crc(*texts: str) -> int:
    """(v2) The CRC32C that covers strings naming data (run fields, metric and tensor
    names, the /system and /info text): for each text its UTF-8 bytes followed by their
    length as an 8-byte little-endian integer, all in one CRC32C. The length makes the
    CRC of an empty text 0x8C28B28A, not 0, so a zeroed text with a zeroed CRC never
    verifies (HDF5 strings live in the global heap, which has no checksum of its own).

    Example:
        >>> hex(identity_crc(""))
        '0x8c28b28a'
        >>> identity_crc("val/loss") == crc32c(b"val/loss" + (8).to_bytes(8, "little"))
        True
    """
    value = 0
    for text in texts:
        data = text.encode("utf-8", "surrogateescape")
        value = crc32c(data + len(data).to_bytes(8, "little"), value)
    return value


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """The offsets (tensor axes only) of the chunks of one snapshot row, in C order: the
    order of a row of ``/checksums/<tensor>``.

    Example:
        >>> list(chunk_grid((5, 4), (2, 4)))
        [(0, 0), (2, 0), (4, 0)]
        >>> list(chunk_grid((), ()))
        [()]
    """
    return itertools.product(*(range(0, d, c) for d, c in zip(shape, chunks)))


def grid_size(shape: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    """How many chunks one snapshot row of a tensor has (0 for an empty tensor)."""
    return math.prod(-(-d // c) for d, c in zip(shape, chunks))


def checksum_chunk_rows(per_row: int) -> int:
    """Rows per chunk of a ``/checksums`` dataset: about one 4 KiB page. The last chunk is
    rewritten in place by each snapshot; without a filter a torn rewrite leaves every
    committed checksum as it was (old and new bytes agree there), so no alignment is
    needed for crash safety."""
    return max(1, 1024 // max(1, per_row))


def check_zero_crc(nbytes: int) -> bool:
    """Whether the CRC32C of *nbytes* zero bytes differs from 0 (a zeroed chunk with a
    zeroed checksum must not verify): true for every size up to 64 MiB (tested)."""
    return crc32c(bytes(nbytes)) != 0


# --- combining the CRC32Cs of two pieces (zlib's crc32_combine, for the Castagnoli
# polynomial): a chunk is checked in two halves on two threads ------------------------------

_POLY = 0x82F63B78  # CRC32C, reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (reflected bit order, as in zlib)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()


@functools.lru_cache(maxsize=64)
def _shift(nbytes: int) -> tuple[int, ...]:
    """Multiplying by x^(8 * nbytes) (what appending *nbytes* bytes does to a CRC) is
    linear: the image of each of the 32 bits, so a combine is a few XORs."""
    p = 1 << 31  # x^0
    k = 3
    n = nbytes
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return tuple(_multmodp(p, 1 << bit) for bit in range(32))


def crc32c_combine(first: int, second: int, second_bytes: int) -> int:
    """The CRC32C of A + B from the CRC32C of A, of B and B's length.

    Example:
        >>> crc32c_combine(crc32c(b"12345"), crc32c(b"6789"), 4) == crc32c(b"123456789")
        True
    """
    images = _shift(second_bytes)
    out = second
    bit = 0
    while first:
        if first & 1:
            out ^= images[bit]
        first >>= 1
        bit += 1
    return out
