"""Compression filters of weight datasets: names to HDF5 filters, and making the plugin
filters (Zstd, Blosc, ...) available to readers.

``gzip`` and ``lzf`` ship with h5py. The others come from the ``hdf5plugin`` package, which
registers them with HDF5 when it is imported; a reader of such a record needs it too.
:func:`ensure_readable` imports it lazily, only when a dataset uses a filter HDF5 does not
have yet, so reading an uncompressed record never pays for the import.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

import h5py

from recordkit.errors import FilterUnavailableError

__all__ = ["COMPRESSIONS", "dataset_options", "ensure_readable"]

#: hdf5plugin class of each plugin compression name.
_PLUGINS = {
    "zstd": "Zstd",
    "blosc": "Blosc",
    "blosc2": "Blosc2",
    "lz4": "LZ4",
    "bitshuffle": "Bitshuffle",
}
#: Values of ``Recorder(compression=...)``; None (no compression) is the default.
COMPRESSIONS = (None, "gzip", "lzf", *_PLUGINS)

_PIP_HINT = "pip install hdf5plugin"


def _hdf5plugin(why: str) -> Any:
    try:
        return importlib.import_module("hdf5plugin")
    except ImportError as err:
        raise FilterUnavailableError(f"{why} needs the hdf5plugin package: {_PIP_HINT}"
                                     ) from err


def dataset_options(compression: str | None, compression_opts: Any = None, *,
                    where: str = "Recorder") -> dict[str, Any]:
    """``create_dataset`` keywords for a compression name.

    Args:
        compression: one of :data:`COMPRESSIONS`.
        compression_opts: for gzip the level (0-9); for a plugin an int level or a mapping
            of the ``hdf5plugin`` class's keywords, e.g. ``{"cname": "zstd", "clevel": 3}``.
        where: the caller's name, for error messages.

    Raises:
        ValueError: unknown compression name.
        FilterUnavailableError: a plugin compression without hdf5plugin installed.

    Example:
        >>> dataset_options("gzip", 4)
        {'compression': 'gzip', 'compression_opts': 4}
        >>> dataset_options("zstd", 5)["compression"]
        32015
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"{where}(compression={compression!r}): must be one of "
                         f"{COMPRESSIONS}")
    if compression is None:
        return {}
    if compression in ("gzip", "lzf"):
        options: dict[str, Any] = {"compression": compression}
        if compression_opts is not None:
            options["compression_opts"] = compression_opts
        return options
    plugin = _hdf5plugin(f"{where}(compression={compression!r})")
    cls = getattr(plugin, _PLUGINS[compression])
    if compression_opts is None:
        spec = cls()
    elif isinstance(compression_opts, Mapping):
        spec = cls(**compression_opts)
    elif isinstance(compression_opts, int) and compression != "lz4":
        spec = cls(clevel=compression_opts)
    else:
        raise ValueError(f"{where}(compression={compression!r}, compression_opts="
                         f"{compression_opts!r}): pass a level (int) or a mapping of "
                         f"hdf5plugin.{cls.__name__} keywords")
    return dict(spec)


def ensure_readable(ds: h5py.Dataset, path: str | os.PathLike[str]) -> None:
    """Make sure HDF5 can decode every filter of *ds*, importing hdf5plugin if needed.

    Raises:
        FilterUnavailableError: a filter is missing and hdf5plugin does not provide it.
    """
    plist = ds.id.get_create_plist()
    missing = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            missing.append((code, name.decode("ascii", "replace") if isinstance(
                name, bytes) else str(name)))
    if not missing:
        return
    key = ds.attrs.get("name", ds.name)
    what = (f"reading {key!r} from {str(path)!r} (compressed with "
            + ", ".join(f"{n or 'filter'} #{c}" for c, n in missing) + ")")
    _hdf5plugin(what)
    still = [c for c, _ in missing if not h5py.h5z.filter_avail(c)]
    if still:
        raise FilterUnavailableError(
            f"{what}: HDF5 filter(s) {still} are not provided by the installed hdf5plugin; "
            f"upgrade it: {_PIP_HINT} --upgrade"
        )
