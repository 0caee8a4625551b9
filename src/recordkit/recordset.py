"""Many runs: scan a folder of records, filter them, summarise them as a table."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from recordkit import format as fmt
from recordkit.errors import RecordkitError, RecordkitWarning, RecordNotFoundError
from recordkit.record import Record, _pandas

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RecordSet", "load_all", "metric_mode"]

_MAXIMISED = re.compile(
    r"(acc|accuracy|auc|f1|precision|recall|score|iou|dice|r2|map|bleu|rouge|reward|return)",
    re.IGNORECASE,
)


def metric_mode(name: str) -> str:
    """``"max"`` for metrics that grow when better (accuracy, auc, f1, ...), else ``"min"``.

    Example:
        >>> metric_mode("val/accuracy"), metric_mode("val_loss")
        ('max', 'min')
    """
    return "max" if _MAXIMISED.search(name) and "loss" not in name.lower() else "min"


class RecordSet(Sequence[Record]):
    """An ordered collection of records, oldest first.

    Example:
        >>> import tempfile, recordkit as rk
        >>> root = tempfile.mkdtemp()
        >>> for lr in (0.1, 0.01):
        ...     _ = rk.record_experiment({"lr": lr}, root, observations={"loss": [1.0, lr]})
        >>> rs = rk.load_all(root)
        >>> [r.params["lr"] for r in rs.filter(lr=0.01)]
        [0.01]
    """

    def __init__(self, records: Iterable[Record] = (), *,
                 skipped: Iterable[tuple[Path, str]] = ()) -> None:
        self._records = sorted(records, key=lambda r: (r._attrs["created"], r.run_id))
        self.skipped: list[tuple[Path, str]] = list(skipped)
        """Files under the root that could not be read, with the reason."""

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> RecordSet: ...

    def __getitem__(self, index: int | slice) -> Record | RecordSet:
        if isinstance(index, slice):
            return RecordSet(self._records[index])
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"<recordkit.RecordSet of {len(self)} runs>"

    def get(self, run_id: str) -> Record:
        """The run with this id (or unique id prefix)."""
        hits = [r for r in self._records if r.run_id.startswith(run_id)]
        if len(hits) != 1:
            raise RecordNotFoundError(
                f"{'no' if not hits else 'more than one'} run matches {run_id!r} in this set"
            )
        return hits[0]

    def filter(self, predicate: Callable[[Record], bool] | None = None, /, *,
               status: str | Sequence[str] | None = None, **params: Any) -> RecordSet:
        """The runs whose params equal every given value (nested keys in dotted form,
        ``**{"optimizer.lr": 0.1}``), with one of the given statuses, and for which
        *predicate* is true."""
        statuses = {status} if isinstance(status, str) else set(status or ())
        kept = []
        for record in self._records:
            if statuses and record.status not in statuses:
                continue
            if params:
                flat = fmt.flatten_params(record._params)
                if any(key not in flat or not _equal(flat[key], value)
                       for key, value in params.items()):
                    continue
            if predicate is not None and not predicate(record):
                continue
            kept.append(record)
        return RecordSet(kept)

    def to_dataframe(self) -> pd.DataFrame:
        """A row per run: run fields, flattened params, and for each metric its final
        value, best value and epoch of the best (``<metric>.final``, ``.best``,
        ``.best_epoch``; best is the minimum, or the maximum for accuracy-like names)."""
        pd = _pandas()
        rows = [summary_row(r) for r in self._records]
        return pd.DataFrame(rows)

    def close(self) -> None:
        for record in self._records:
            record.close()


def summary_row(record: Record) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": record.run_id,
        "name": record.name,
        "experiment": record.experiment,
        "status": record.status,
        "created": record.created,
        "params_hash": record.params_hash,
        "epochs": len(record.epochs),
    }
    for key, value in fmt.flatten_params(record._params).items():
        column = key if key not in row else f"params.{key}"
        row[column] = value if not isinstance(value, (list, dict, set, np.ndarray)) else str(
            value)
    for metric in record.history:
        values = record.history[metric]
        epochs = record.history.epochs(metric)
        row[f"{metric}.final"] = float(values[-1]) if len(values) else math.nan
        finite = np.isfinite(values)
        if finite.any():
            pick = np.nanargmax if metric_mode(metric) == "max" else np.nanargmin
            masked = np.where(finite, values, np.nan)
            best = int(pick(masked))
            row[f"{metric}.best"] = float(values[best])
            row[f"{metric}.best_epoch"] = int(epochs[best])
        else:
            row[f"{metric}.best"] = math.nan
            row[f"{metric}.best_epoch"] = -1
    return row


def _equal(stored: Any, wanted: Any) -> bool:
    try:
        return bool(stored == wanted)
    except Exception:
        return False


def record_files(root: Path, experiment: str | None = None) -> list[Path]:
    """Record files under *root* (``<root>/<experiment>/*.h5``), and *root* itself when it
    is a folder of records."""
    if experiment is not None:
        folders = [root / experiment]
    else:
        folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    files: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            files.extend(sorted(p for p in folder.glob("*.h5") if p.is_file()))
    return files


def load_all(root: str | os.PathLike[str] = "records", experiment: str | None = None,
             ) -> RecordSet:
    """Every record under *root* (or under one experiment), oldest first.

    Files that cannot be read are left out with a warning naming each, and listed in
    ``RecordSet.skipped``.

    Raises:
        RecordNotFoundError: *root* (or the experiment folder) does not exist.
    """
    base = Path(root)
    if not base.is_dir():
        raise RecordNotFoundError(f"no folder of records at {str(base)!r}")
    if experiment is not None and not (base / experiment).is_dir():
        known = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise RecordNotFoundError(
            f"no experiment {experiment!r} under {str(base)!r}; experiments: {known}"
        )
    records, skipped = [], []
    for path in record_files(base, experiment):
        try:
            records.append(Record(path))
        except RecordkitError as err:
            skipped.append((path, str(err)))
            warnings.warn(f"recordkit: skipped {str(path)!r}: {err}", RecordkitWarning,
                          stacklevel=2)
    return RecordSet(records, skipped=skipped)
