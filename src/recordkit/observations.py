"""The older ``researcher`` tool's observations: a metric's values as a list per epoch, a
single number, or a list of per-fold lists, logged into a run's history (folds averaged)
and kept as given in the ``observations`` extra."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

__all__ = ["log_observations", "per_epoch"]


class _Recorder(Protocol):  # what is used of recordkit.Recorder (no import: no cycle)
    def log(self, metrics: Mapping[str, Any], epoch: int | None = ...,
            step: int | None = ...) -> None: ...

    def add(self, key: str, value: Any) -> None: ...


def _number(value: Any) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)):
        return float(value)
    return None


def per_epoch(series: Any) -> list[float]:
    """The per-epoch numbers of one observation; the mean over folds for the fold form;
    nothing for what is not numeric (it is kept in the ``observations`` extra).

    Example:
        >>> per_epoch([1.0, 0.5]), per_epoch(3), per_epoch([[1.0, 2.0], [3.0, 4.0]])
        ([1.0, 0.5], [3.0], [2.0, 3.0])
        >>> per_epoch(["a", 1.0])
        []
    """
    number = None if isinstance(series, (list, tuple, np.ndarray)) else _number(series)
    if number is not None:
        return [number]
    if not isinstance(series, (list, tuple, np.ndarray)) or not len(series):
        return []
    items = list(series)
    if all(isinstance(fold, (list, tuple, np.ndarray)) for fold in items):
        folds = [[_number(v) for v in fold] for fold in items]
        if not all(folds) or any(v is None for fold in folds for v in fold):
            return []
        length = min(len(fold) for fold in folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch of NaN in every fold
            return [float(np.nanmean([fold[i] for fold in folds])) for i in range(length)]
    values = [_number(v) for v in items]
    return [] if any(v is None for v in values) else [float(v) for v in values if v is not None]


def log_observations(rec: _Recorder, observations: Mapping[str, Any]) -> None:
    """Log each observation's per-epoch values and keep them all as given."""
    for metric, series in observations.items():
        for epoch, value in enumerate(per_epoch(series)):
            rec.log({metric: value}, epoch=epoch)
    if observations:
        rec.add("observations", dict(observations))
