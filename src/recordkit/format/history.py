"""The history: one table of every metric's rows (``/history/rows``) and the metric
names it points at (``/history/metrics``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from recordkit.errors import RecordDamagedError
from recordkit.format.attrs import attr_str, read_attr
from recordkit.format.checksums import CHECKSUM_DTYPE, identity_crc
from recordkit.format.layout import (
    EMPTY_METRIC,
    HISTORY,
    HISTORY_CHUNK_ROWS,
    HISTORY_DTYPE,
    HISTORY_METRIC_CRCS,
    HISTORY_METRICS,
    HISTORY_ROW_DTYPE,
    HISTORY_TABLE,
    METRIC_NAME_CHUNK,
    VERSION_ATTR,
    escape_metric,
    unescape_name,
)

__all__ = ["HistoryTable", "Row", "check_rows", "metric_names", "read_history", "split_history",
           "stored_metric_name"]

#: One buffered row of a metric: (epoch, step, value, time).
Row = tuple[int, int, float, float]

#: The in-memory HDF5 type of table rows, built once: deriving it on every write costs
#: three times the write of one row.
_ROW_MTYPE = h5py.h5t.py_create(HISTORY_ROW_DTYPE)
#: HDF5 memory dataspaces of an append, by row count (immutable once made).
_MEMORY_SPACES: dict[int, Any] = {}


def stored_metric_name(name: str, version: int) -> str:
    """How a metric name is stored in /history/metrics of a file of *version*: ``%`` and
    NUL escaped; in v2 the empty name as ``%`` (a stored empty string is a zeroed chunk).

    Example:
        >>> stored_metric_name("", 2), stored_metric_name("100%", 2)
        ('%', '100%25')
    """
    escaped = escape_metric(name)
    return EMPTY_METRIC if version >= 2 and not escaped else escaped


def metric_names(f: h5py.File) -> list[str]:
    """The metric names in index order (the order they were first logged); in version 2
    each checked against its CRC in /history/metrics_crc32c. Names past the CRCs are a
    commit a kill cut short while the run is ``running`` (left out, as the rows that use
    them are), damage in a closed run.

    Raises:
        RecordDamagedError: (v2) a stored name is empty (what a zeroed chunk reads as),
            does not match its CRC, or has none in a closed run.
    """
    group = f.get(HISTORY)
    if group is None or HISTORY_METRICS not in group:
        return []
    checked = int(read_attr(f, VERSION_ATTR, 1)) >= 2
    # (v2: a damaged byte is reported by its CRC, with the name as read)
    errors = "surrogateescape" if checked else "strict"
    stored = [n.decode("utf-8", errors) if isinstance(n, bytes) else str(n)
              for n in group[HISTORY_METRICS][()]]
    if checked:
        if "" in stored:
            raise _damaged_names(f, f"holds an empty name at index {stored.index('')}, "
                                    "which format version 2 never writes (a zeroed chunk "
                                    "reads so)")
        stored = _checked_names(f, group, stored)
    return [unescape_name(n) for n in stored]


def _damaged_names(f: h5py.File, what: str) -> RecordDamagedError:
    return RecordDamagedError(f"{f.filename!r}: /{HISTORY}/{HISTORY_METRICS} {what}: the "
                              "file is damaged (run `recordkit verify` on it)")


def _checked_names(f: h5py.File, group: h5py.Group, stored: list[str]) -> list[str]:
    """(v2) *stored* (the names as stored), each checked against its identity CRC, the
    names a cut commit left without one dropped (see :func:`metric_names`)."""
    sums = group.get(HISTORY_METRIC_CRCS)
    if not (isinstance(sums, h5py.Dataset) and sums.ndim == 1 and sums.dtype.kind == "u"):
        raise _damaged_names(f, f"has no list of CRCs /{HISTORY}/{HISTORY_METRIC_CRCS} "
                                "(format version 2 writes one)")
    crcs = sums[()]
    for i, name in enumerate(stored[:len(crcs)]):
        if identity_crc(name) != int(crcs[i]):
            raise _damaged_names(f, f"name {i} ({name[:80]!r} as read) does not match its "
                                    f"CRC32C in /{HISTORY}/{HISTORY_METRIC_CRCS} (the "
                                    "stored bytes changed)")
    if len(stored) > len(crcs):
        if attr_str(f, "status") != "running":
            raise _damaged_names(f, f"holds {len(stored)} names but "
                                    f"/{HISTORY}/{HISTORY_METRIC_CRCS} {len(crcs)} CRCs "
                                    "in a run that was closed")
        stored = stored[:len(crcs)]  # written by a commit a kill cut: not committed
    return stored


def check_rows(f: h5py.File, rows: np.ndarray, what: str) -> np.ndarray:
    """*rows* (of a table with a ``time`` field), refused when one has time 0.0: format
    version 2 writes ``time.time()`` into every row, so a zero is a zeroed page, whose
    zero fletcher32 checksum HDF5 accepts.

    Raises:
        RecordDamagedError: (v2) a row has time 0.
    """
    if len(rows) and int(read_attr(f, VERSION_ATTR, 1)) >= 2:
        zero = np.flatnonzero(rows["time"] == 0)
        if len(zero):
            raise RecordDamagedError(
                f"{f.filename!r}: {what} rows {zero[:5].tolist()} are all zeros, which "
                "format version 2 never writes (a zeroed page of the file reads so): "
                "the file is damaged there (run `recordkit verify` on it)")
    return rows


def split_history(rows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
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
    if group is None or HISTORY_TABLE not in group:
        return {}
    rows = check_rows(f, group[HISTORY_TABLE][()], f"/{HISTORY}/{HISTORY_TABLE}")
    return split_history(rows, metric_names(f))


class HistoryTable:
    """Appends to and rewinds the history of one open record.

    It keeps what it learnt of the file (the metric indices, the table's row count)
    between commits: asking HDF5 for the shape cost a tenth of a commit. The file is
    passed to each call; a different (reopened) file is learnt again.
    """

    def __init__(self) -> None:
        self._file: h5py.File | None = None
        self._ids: dict[str, int] = {}
        self._version = 1
        self._table: h5py.Dataset | None = None
        self._count: int | None = None  # rows in the table, when known

    @staticmethod
    def create(f: h5py.File, *, checksum: bool) -> None:
        """The empty table and name list of a new record."""
        group = f.require_group(HISTORY)
        group.create_dataset(
            HISTORY_TABLE, shape=(0,), maxshape=(None,), dtype=HISTORY_ROW_DTYPE,
            chunks=(HISTORY_CHUNK_ROWS,), fletcher32=checksum,
        )
        group.create_dataset(
            HISTORY_METRICS, shape=(0,), maxshape=(None,),
            dtype=h5py.string_dtype("utf-8"), chunks=(METRIC_NAME_CHUNK,),
        )
        if int(read_attr(f, VERSION_ATTR, 1)) >= 2:
            group.create_dataset(HISTORY_METRIC_CRCS, shape=(0,), maxshape=(None,),
                                 dtype=CHECKSUM_DTYPE, chunks=(METRIC_NAME_CHUNK,))

    def _bind(self, f: h5py.File) -> h5py.Dataset:
        table = self._table
        if self._file is not f or table is None or not table.id.valid:
            self._file = f
            self._version = int(read_attr(f, VERSION_ATTR, 1))
            self._ids = {name: i for i, name in enumerate(metric_names(f))}
            table = self._table = f[HISTORY][HISTORY_TABLE]
            self._count = None
            if self._version >= 2:
                self._drop_cut_names(f, table)
        return table

    def _drop_cut_names(self, f: h5py.File, table: h5py.Dataset) -> None:
        """(v2) Names a kill left without their CRC (read as not committed) are dropped
        from the file with the rows that use them, before anything is appended: a new
        name takes their index."""
        names = f[HISTORY][HISTORY_METRICS]
        kept = len(self._ids)
        if names.shape[0] <= kept:
            return
        names.resize((kept,))
        rows = table[()]
        if len(rows) and (rows["metric"] >= kept).any():
            rows = rows[rows["metric"] < kept]
            table.resize((len(rows),))
            if len(rows):
                table[:] = rows

    def names(self, f: h5py.File) -> list[str]:
        """The metric names in index order."""
        self._bind(f)
        return sorted(self._ids, key=self._ids.__getitem__)

    def append(self, f: h5py.File, pending: Sequence[tuple[str, Sequence[Row]]]) -> None:
        """Append the rows of each metric to the table.

        One append per commit, whatever the number of metrics, and it costs the same at
        epoch 5,000 as at epoch 1: nothing is rewritten. New metric names go into
        ``/history/metrics`` first, so a row never points at a name not yet written. The
        low-level calls skip h5py's per-call checks, which cost more than the write itself
        for a few rows (docs/BENCHMARKS.md)."""
        table = self._bind(f)
        pending = [(name, rows) for name, rows in pending if rows]
        if not pending:
            return
        new = [name for name, _ in pending if name not in self._ids]
        if new:
            names = f[HISTORY][HISTORY_METRICS]
            n = names.shape[0]
            stored = [stored_metric_name(name, self._version) for name in new]
            names.resize((n + len(new),))
            names[n:] = stored
            if self._version >= 2:  # written in the commit's one flush, as the names
                sums = f[HISTORY][HISTORY_METRIC_CRCS]
                sums.resize((n + len(new),))
                sums[n:] = [identity_crc(text) for text in stored]
            for name in new:
                self._ids[name] = len(self._ids)
        data = np.array([(self._ids[name], *row) for name, rows in pending for row in rows],
                        dtype=HISTORY_ROW_DTYPE)
        dsid = table.id
        count = self._count if self._count is not None else dsid.shape[0]
        self._count = None  # until the append succeeds (a failed one asks again)
        dsid.set_extent((count + len(data),))
        space = dsid.get_space()
        space.select_hyperslab((count,), (len(data),))
        memory = _MEMORY_SPACES.get(len(data))
        if memory is None:
            memory = _MEMORY_SPACES.setdefault(len(data), h5py.h5s.create_simple((len(data),)))
        dsid.write(memory, space, data, mtype=_ROW_MTYPE)
        self._count = count + len(data)

    def drop_from(self, f: h5py.File, epoch: int) -> dict[str, np.ndarray]:
        """Drop the rows of *epoch* and later; return what is kept, per metric."""
        table = self._bind(f)
        self._count = None  # resized here: the next append asks HDF5
        rows = table[()]
        kept = rows[rows["epoch"] < epoch]
        if len(kept) < len(rows):
            table.resize((len(kept),))
            if len(kept):
                table[:] = kept
        return split_history(kept, self.names(f))
