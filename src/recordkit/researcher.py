"""The older ``researcher`` tool's API: :func:`record_experiment` records a finished
experiment in one call, and its observations (a metric's values as a list per epoch, a
single number, or a list of per-fold lists) go into the run's history (folds averaged)
and are kept as given in the ``observations`` extra."""

from __future__ import annotations

import argparse
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from recordkit.params import params_of
from recordkit.recorder import Recorder
from recordkit.runhistory import as_float

__all__ = ["log_observations", "per_epoch", "record_experiment"]


def _number(value: Any, strict: bool) -> float | None:
    """A fold's value as a float (None is NaN); None for what is not a number: strictly
    ints and floats, or, not strictly, whatever ``Recorder.log`` takes (bools, numpy
    scalars, one-element arrays...)."""
    if value is None:
        return math.nan
    if not strict:
        return as_float(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)):
        return float(value)
    return None


def per_epoch(series: Any, *, strict: bool = False) -> list[Any]:
    """The per-epoch values of one observation, with the mean over folds for the fold form
    (a list of per-fold lists).

    Not *strict* (``record_experiment``): the values as given, and ``Recorder.log`` skips
    what is not a number with a warning naming it. *strict* (the importers of the older
    tools' files): numbers only (None is NaN), and nothing at all when a value is not a
    number. Either way every form is kept as given in the ``observations`` extra.

    Example:
        >>> per_epoch([1.0, 0.5]), per_epoch(3), per_epoch([[1.0, 2.0], [3.0, 4.0]])
        ([1.0, 0.5], [3], [2.0, 3.0])
        >>> per_epoch(["a", 1.0]), per_epoch(["a", 1.0], strict=True)
        (['a', 1.0], [])
    """
    if not isinstance(series, (list, tuple, np.ndarray)):
        if not strict:
            return [series]
        number = None if series is None else _number(series, strict)
        return [] if number is None else [number]
    items = list(series)
    if items and all(isinstance(fold, (list, tuple, np.ndarray)) for fold in items):
        folds = [[_number(v, strict) for v in fold] for fold in items]
        if not all(folds) or any(v is None for fold in folds for v in fold):
            return []
        length = min(len(fold) for fold in folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch of NaN in every fold
            return [float(np.nanmean([fold[i] for fold in folds])) for i in range(length)]
    if not strict:
        return items
    values = [_number(v, strict) for v in items]
    return [] if any(v is None for v in values) else [float(v) for v in values if v is not None]


def log_observations(rec: Recorder, observations: Mapping[str, Any], *,
                     strict: bool = False) -> None:
    """Log each observation's per-epoch values (see :func:`per_epoch` for *strict*) and
    keep them all as given."""
    for metric, series in observations.items():
        for epoch, value in enumerate(per_epoch(series, strict=strict)):
            rec.log({metric: value}, epoch=epoch)
    if observations:
        rec.add("observations", dict(observations))


def record_experiment(
    params: Mapping[str, Any] | argparse.Namespace,
    root: str | os.PathLike[str] = "records",
    observations: Mapping[str, Any] | None = None,
    title: str | None = None,
    *,
    experiment: str | None = None,
) -> str:
    """Record a finished experiment in one call (the older ``researcher`` API).

    Args:
        params: the hyperparameters; a ``title`` key becomes the run name when *title*
            is not given.
        root: folder of records.
        observations: ``{metric: values}`` where values is a list per epoch, a single
            number, or a list of per-fold lists. Per-epoch lists go to the history; every
            form is also kept as given, so ``Record.data["observations"]`` returns it.
        title: the run name.
        experiment: sub-folder; ``"default"`` when None.

    Returns:
        The run id. Running it twice with the same params gives two runs that share a
        params hash.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> run_id = record_experiment({"lr": 0.1}, root, observations={"loss": [1.0, 0.5]})
        >>> from recordkit import load
        >>> load(run_id, root=root).data["observations"]["loss"]
        [1.0, 0.5]
    """
    values = params_of(params, "record_experiment(params=...)")
    if title is None and isinstance(values.get("title"), str):
        title = values["title"]
    # The params as given: the Recorder flags names that are not str.
    with Recorder(root, experiment=experiment, name=title, params=params) as rec:
        if observations:
            log_observations(rec, observations)
    return rec.run_id
