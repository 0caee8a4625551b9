"""Read-only views of what a record holds: the metric history (:class:`History`), the
snapshots of one tensor read lazily (:class:`TensorHistory`), and the extras mapping."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recordkit.format.extras import extra_flags_at, read_extra_at
from recordkit.format.files import RecordFile
from recordkit.format.layout import HISTORY_DTYPE
from recordkit.format.weights import (
    StoredTensor,
    fold_rows,
    no_rows,
    read_row,
    read_row_unopened,
    read_rows,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Extras", "History", "TensorHistory", "require_pandas"]

T = TypeVar("T")

#: Opens the record for one lazy read (``Record._file``), given what is read (for the
#: message of a read that runs out of memory).
Reading = Callable[[str], AbstractContextManager[RecordFile]]


class History(Mapping[str, np.ndarray]):
    """Per-metric history: ``history[name]`` is the values, in logging order.

    Each metric keeps its own epochs (and steps): ``history.epochs(name)``.
    """

    def __init__(self, tables: Mapping[str, np.ndarray]) -> None:
        self._tables: dict[str, np.ndarray] = {}
        for name, rows in tables.items():
            rows = np.asarray(rows)
            rows.flags.writeable = False  # shared by rows_by_metric(): nobody changes it
            self._tables[name] = rows

    def __getitem__(self, name: str) -> np.ndarray:
        rows = self._tables.get(name)
        if rows is not None:
            return rows["value"].copy()
        vector = self._vector(name)
        if vector is not None:
            return vector
        known = ", ".join(repr(k) for k in list(self._tables)[:20]) or "none"
        raise KeyError(f"no metric {name!r}; metrics: {known}")

    def _vector(self, name: str) -> np.ndarray | None:
        """A vector metric (Keras' ``F1Score(average=None)``...) stored one element per
        metric, ``name[i]`` or ``name[i,j]``: the values stacked as ``History.history``
        has them, ``(rows, *shape)``; None when *name* has no complete set of elements
        logged together."""
        elements = self._elements(name)
        if not elements:
            return None
        shape = tuple(max(index[d] for index in elements) + 1
                      for d in range(len(next(iter(elements)))))
        if len(elements) != int(np.prod(shape)):
            return None  # not a complete grid of elements
        columns = [self._tables[elements[index]]["value"] for index in np.ndindex(*shape)]
        if len({len(c) for c in columns}) != 1:
            return None  # elements logged at different times: read them one by one
        return np.stack(columns, axis=1).reshape(len(columns[0]), *shape)

    def _elements(self, name: str) -> dict[tuple[int, ...], str]:
        """``{index: stored name}`` of the elements of a vector metric *name*."""
        found: dict[tuple[int, ...], str] = {}
        prefix = name + "["
        for stored in self._tables:
            if stored.startswith(prefix) and stored.endswith("]"):
                parts = stored[len(prefix):-1].split(",")
                if all(p.isdigit() for p in parts):
                    found[tuple(int(p) for p in parts)] = stored
        if len({len(index) for index in found}) > 1:
            return {}
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __repr__(self) -> str:
        return f"History({', '.join(f'{k!r}: {len(v)} rows' for k, v in self._tables.items())})"

    def rows_by_metric(self) -> Mapping[str, np.ndarray]:
        """``{metric: its structured rows (epoch, step, value, time)}``, read-only and
        without a copy (for tables of many runs; :meth:`rows` gives a copy of one)."""
        return types.MappingProxyType(self._tables)

    def frame(self, level: str = "epoch") -> pd.DataFrame:
        """The history as a pandas DataFrame (see :meth:`recordkit.Record.history_frame`)."""
        pd = require_pandas()
        if level == "long":
            fields = HISTORY_DTYPE.names or ()
            frames = [pd.DataFrame({"metric": name, **{k: rows[k] for k in fields}})
                      for name, rows in self._tables.items()]
            if not frames:
                return pd.DataFrame(columns=["metric", "epoch", "step", "value", "time"])
            return pd.concat(frames, ignore_index=True)
        if level not in ("epoch", "step"):
            raise ValueError(f"history_frame(level={level!r}): must be 'epoch', 'step' "
                             "or 'long'")
        columns: dict[str, Any] = {}
        for name, rows in self._tables.items():
            if level == "epoch" and self.is_epoch_level(name):
                columns[name] = pd.Series(rows["value"], index=rows["epoch"])
            elif level == "step" and (rows["step"] >= 0).any():
                chosen = rows[rows["step"] >= 0]
                series = pd.Series(chosen["value"], index=chosen["step"])
                columns[name] = series[~series.index.duplicated(keep="last")]
        frame = pd.DataFrame(columns)
        frame.index.name = level
        return frame.sort_index()

    def rows(self, name: str) -> np.ndarray:
        """The structured rows (epoch, step, value, time) of one metric (of a vector
        metric, its first element's: their epochs and steps are the same)."""
        self[name]  # raises the helpful KeyError
        if name not in self._tables:
            elements = self._elements(name)
            return self._tables[elements[min(elements)]].copy()
        return self._tables[name].copy()

    def epochs(self, name: str) -> np.ndarray:
        return self.rows(name)["epoch"]

    def steps(self, name: str) -> np.ndarray:
        return self.rows(name)["step"]

    def times(self, name: str) -> np.ndarray:
        return self.rows(name)["time"]

    def final(self, name: str) -> float:
        values = self[name]
        return float(values[-1]) if len(values) else float("nan")

    def is_epoch_level(self, name: str) -> bool:
        """One row per epoch (as opposed to step-level metrics, many rows per epoch)."""
        epochs = self.epochs(name)
        return len(np.unique(epochs)) == len(epochs)


class TensorHistory:
    """The snapshots of one tensor, read lazily: ``r.weight("fc.weight")[3]`` reads the
    bytes of that one snapshot only."""

    def __init__(self, name: str, tensor: StoredTensor, epochs: np.ndarray, path: Path,
                 reading: Reading, *, held: Callable[[], bool] = lambda: False) -> None:
        self.name = name
        self.epochs = epochs
        self.shape = tensor.shape
        self.dtype_name = tensor.stored_dtype
        self._tensor = tensor
        self._path = path
        self._reading = reading
        self._held = held  # a ``with record:`` block holds the file: read that one

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        return (f"<TensorHistory {self.name!r} {self.dtype_name}{list(self.shape)} "
                f"× {len(self)} snapshots>")

    def __getitem__(self, index: int | slice) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            positions = range(*index.indices(n))
            if not positions:  # nothing to read: the file is not opened
                return no_rows(self._tensor)
            with self._reading(f"{len(positions)} snapshots of tensor {self.name!r}") as f:
                return read_rows(f, self._tensor, positions, self._path)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"snapshot index {i} out of range: tensor {self.name!r} has "
                             f"{n} snapshots (epochs {self.epochs.tolist()[:10]})")
        # laid out before in this process, the file at the path unchanged since (not in
        # a ``with record:`` block, whose file another may have replaced at the path)
        data = None if self._held() else read_row_unopened(self._path, self._tensor, i % n)
        if data is not None:
            return data
        with self._reading(f"snapshot {i % n} of tensor {self.name!r}") as f:
            return read_row(f, self._tensor, i % n, self._path)

    def fold_rows(self, indices: Sequence[int], fold: Callable[[int, np.ndarray, int], T]
                  ) -> list[list[tuple[int, T]]] | None:
        """Snapshots *indices* folded as they are read, none held whole, piece by piece
        across them (a span of each snapshot, then the next span): ``fold(j, piece,
        at)`` gets each piece of the j-th snapshot's stored row as it lands (a ``uint8``
        view of its bytes in the stored dtype, *at* its first byte; valid during the
        call, which may write over it; maybe on another thread). Per snapshot, the
        ``(at, result)`` of every piece, in order, once every chunk passed its check
        (else RecordDamagedError); None when the tensor is not stored so that this
        applies (packed, bfloat16, a version 1 record, ...:
        :func:`~recordkit.format.weights.fold_rows`): read ``self[i]`` then. *fold*
        must not read snapshots itself. What :mod:`recordkit.weights` streams its sums
        with: what a piece is compared with stays in the cache across the snapshots."""
        n = len(self)
        rows = []
        for index in indices:
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"snapshot index {i} out of range: tensor {self.name!r} "
                                 f"has {n} snapshots")
            rows.append(i % n)
        with self._reading(f"{len(rows)} snapshots of tensor {self.name!r}") as f:
            return fold_rows(f, self._tensor, rows, self._path, fold)

    def fold(self, index: int, fold: Callable[[np.ndarray, int], T]
             ) -> list[tuple[int, T]] | None:
        """:meth:`fold_rows` of one snapshot: ``fold(piece, at)``."""
        folded = self.fold_rows([index], lambda _, piece, at: fold(piece, at))
        return None if folded is None else folded[0]

    def at(self, epoch: int) -> np.ndarray:
        """The snapshot taken at *epoch*."""
        hits = np.nonzero(self.epochs == epoch)[0]
        if not len(hits):
            raise KeyError(f"tensor {self.name!r} has no snapshot at epoch {epoch}; "
                           f"snapshot epochs: {self.epochs.tolist()}")
        return self[int(hits[-1])]


class Extras(Mapping[str, Any]):
    """What ``Recorder.add`` stored, by name, each read when accessed."""

    def __init__(self, keys: Mapping[str, str], reading: Reading) -> None:
        self._keys = keys  # {original name: link name}
        self._reading = reading

    def __getitem__(self, key: str) -> Any:
        try:
            link = self._keys[key]
        except KeyError:
            known = ", ".join(repr(k) for k in self._keys) or "none"
            raise KeyError(f"no extra {key!r}; extras: {known}") from None
        with self._reading(f"the extra {key!r}") as f:
            return read_extra_at(f, link)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def flagged(self) -> dict[str, list[str]]:
        """Per extra: the keys inside it stored as their repr (extras stored faithfully
        are left out)."""
        if not self._keys:
            return {}
        out: dict[str, list[str]] = {}
        with self._reading("the flags of the extras") as f:
            for name, link in self._keys.items():
                keys = extra_flags_at(f, link)
                if keys:
                    out[name] = keys
        return out


def require_pandas() -> Any:
    """The pandas module, or an error that says how to install it."""
    try:
        import pandas as pd
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "recordkit needs pandas for data frames: pip install 'recordkit[analysis]'"
        ) from err
    return pd
