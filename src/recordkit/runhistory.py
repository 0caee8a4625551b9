"""A run's history on the write side: rows logged but not yet committed, the last epoch
of each metric, and the history table they are committed to."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recordkit.errors import RecordkitWarning
from recordkit.format.files import RecordFile
from recordkit.format.history import HistoryTable, Row, read_history
from recordkit.format.layout import HISTORY_DTYPE

__all__ = ["HistoryBuffer", "RunHistory", "as_float"]


def as_float(value: Any) -> float | None:
    """A metric value as a float (bools, numpy scalars, one-element arrays and tensors
    included); None for what is not a number."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:  # a 1-element array or tensor
        arr = np.asarray(value)
        if arr.size == 1 and arr.dtype.kind in "biuf":
            return float(arr.reshape(()))
    except Exception:
        return None
    return None


class HistoryBuffer:
    """The rows of each metric since the last commit, in logging order."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Row]] = {}
        self.last_epoch: dict[str, int] = {}  # per metric, committed rows included
        #: The highest epoch logged so far (-1 before any).
        self.epoch = -1

    def continue_from(self, committed: Mapping[str, np.ndarray]) -> None:
        """Start from the committed rows of a resumed (or rewound) run."""
        self.last_epoch = {name: int(rows["epoch"][-1]) for name, rows in committed.items()
                           if len(rows)}
        for name, rows in self.pending.items():
            if rows:
                self.last_epoch[name] = max(self.last_epoch.get(name, -1), rows[-1][0])
        self.epoch = max(self.last_epoch.values(), default=-1)

    def add(self, metrics: Mapping[Any, Any], epoch: int | None, step: int | None,
            path: Path) -> None:
        """Buffer one row per metric (see ``Recorder.log`` for the epoch rule); a value
        that is not a number is skipped with a warning naming the metric and the file."""
        now = time.time()
        for key, value in metrics.items():
            name = str(key)
            number = as_float(value)
            if number is None:
                warnings.warn(
                    f"recordkit: metric {name!r} = {value!r} is not a number; skipped "
                    f"in {str(path)!r} (use Recorder.add for arrays and text)",
                    RecordkitWarning, stacklevel=4,  # add, RunHistory.log, Recorder.log, the caller
                )
                continue
            if epoch is not None:
                row_epoch = int(epoch)
            elif step is not None:
                row_epoch = max(self.epoch, 0)
            else:
                row_epoch = self.last_epoch.get(name, -1) + 1
            self.pending.setdefault(name, []).append(
                (row_epoch, -1 if step is None else int(step), number, now))
            self.last_epoch[name] = row_epoch
            self.epoch = max(self.epoch, row_epoch)

    def rows(self) -> list[tuple[str, list[Row]]]:
        """The buffered rows, per metric."""
        return [(name, rows) for name, rows in self.pending.items() if rows]

    @property
    def nbytes(self) -> int:
        """Bytes the buffered rows take in the table (about)."""
        return sum(len(rows) for rows in self.pending.values()) * HISTORY_DTYPE.itemsize

    def at(self, epoch: int) -> set[str]:
        """Metrics with a buffered row at *epoch*."""
        return {name for name, rows in self.pending.items()
                if any(row[0] == epoch for row in rows)}

    def drop_from(self, epoch: int) -> None:
        """Forget buffered rows of *epoch* and later."""
        for name in list(self.pending):
            self.pending[name] = [r for r in self.pending[name] if r[0] < epoch]

    def clear(self) -> None:
        self.pending.clear()


class RunHistory:
    """The history of one open run: :meth:`log` buffers rows, :meth:`commit` appends them
    to the history table, :meth:`rewind` drops epochs from both."""

    def __init__(self, committed: Mapping[str, np.ndarray]) -> None:
        self._table = HistoryTable()
        self._buffer = HistoryBuffer()
        self._buffer.continue_from(committed)

    @property
    def epoch(self) -> int:
        """The highest epoch logged so far (-1 before any)."""
        return self._buffer.epoch

    @property
    def nbytes(self) -> int:
        """Bytes the buffered rows take in the table (about)."""
        return self._buffer.nbytes

    def log(self, metrics: Mapping[Any, Any], epoch: int | None, step: int | None,
            path: Path) -> None:
        self._buffer.add(metrics, epoch, step, path)

    def commit(self, f: RecordFile) -> None:
        """Append the buffered rows to the table (one append, whatever the metrics)."""
        self._table.append(f, self._buffer.rows())
        self._buffer.clear()

    def rewind(self, f: RecordFile, epoch: int) -> None:
        """Drop the rows of *epoch* and later, buffered and committed."""
        self._buffer.drop_from(epoch)
        self._buffer.continue_from(self._table.drop_from(f, epoch))

    def metrics_at(self, f: RecordFile, epoch: int) -> set[str]:
        """Metrics with a row at *epoch*, committed or buffered."""
        names = {name for name, rows in read_history(f).items()
                 if (rows["epoch"] == epoch).any()}
        return names | self._buffer.at(epoch)
