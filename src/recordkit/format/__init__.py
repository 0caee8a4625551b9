"""The HDF5 layout of a record: every path, attribute and h5py call of the write and read
paths lives in this package, one module per stored object.

- :mod:`.layout`: the names of every object and attribute, table dtypes, storage options;
- :mod:`.files`: creating, reopening and opening record files;
- :mod:`.attrs`: attribute and text reads and writes;
- :mod:`.header`: root attributes, params, system info, run facts;
- :mod:`.history`: the history table (:class:`~.history.HistoryTable`);
- :mod:`.weights`: weight datasets and the snapshot table (:class:`~.weights.SnapshotStore`);
- :mod:`.chunkread` and :mod:`.fletcher32`: reading a snapshot chunk by chunk;
- :mod:`.extras`: what ``Recorder.add`` stores;
- :mod:`.summary`: the one-attribute summary of a closed run;
- :mod:`.filters`: compression filters (hdf5plugin);
- :mod:`.safety`: what a file from a stranger is refused for, checked before any read.

docs/FORMAT.md describes the layout for readers with plain h5py.
"""

from recordkit.codec import decode_params, encode_params, flatten_params, params_hash
from recordkit.format.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HISTORY_DTYPE,
    SNAPSHOT_DTYPE,
    STATUSES,
    escape_name,
    unescape_name,
)

# The names ``recordkit.format`` exported when it was one module (the params codec is
# recordkit.codec now).
__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "HISTORY_DTYPE", "SNAPSHOT_DTYPE", "STATUSES",
           "decode_params", "encode_params", "escape_name", "flatten_params", "params_hash",
           "unescape_name"]
