"""Whole-chunk I/O (``H5Dwrite_chunk`` / ``H5Dread_chunk``) under h5py's global lock.

h5py before 3.16 calls these two without its lock (h5py commit ecc6774, "Use phil lock on
read_direct_chunk & write_direct_chunk methods"), while every other h5py call holds it.
HDF5 built without thread safety then runs one of them beside another thread's HDF5 call:
two recorders writing snapshots from their writer threads failed with "Unspecified error
in H5Dwrite_chunk" or crashed the process. Every direct chunk call of recordkit goes
through this module, which takes the lock itself (it is reentrant, so h5py 3.16 taking it
again is harmless).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import h5py
import numpy as np

__all__ = ["read_chunk", "write_chunk"]

try:  # h5py's own lock ("phil"), which its other calls hold
    _lock: Any = importlib.import_module("h5py._objects").phil
except (ImportError, AttributeError):  # pragma: no cover - a future h5py that moved it
    _lock = threading.RLock()  # locks these calls itself


def write_chunk(dsid: h5py.h5d.DatasetID, offset: tuple[int, ...], raw: np.ndarray) -> None:
    """Store *raw* (the chunk's bytes, unfiltered) as the whole chunk at *offset*."""
    with _lock:
        dsid.write_direct_chunk(offset, raw, filter_mask=0)


def read_chunk(dsid: h5py.h5d.DatasetID, offset: tuple[int, ...],
               out: np.ndarray | None = None) -> tuple[int, Any]:
    """The filter mask and the stored bytes (after any filter) of the chunk at *offset*:
    ``bytes``, or a view of *out* (uint8) when given, which must hold the chunk."""
    with _lock:
        if out is None:
            mask, stored = dsid.read_direct_chunk(offset)
        else:
            mask, stored = dsid.read_direct_chunk(offset, out=out)
    return int(mask), stored
