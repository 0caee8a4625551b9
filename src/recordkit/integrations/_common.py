"""What the Lightning and Keras callbacks share: argument checks, the record of a fit,
``on_error``, snapshots and the converters of framework values to plain ones.

No framework is imported here. Each framework's ``RecordCallback`` subclasses
:class:`RecordingCallback` beside its framework's ``Callback`` and keeps only what its
framework shapes (hook names and order, where metrics and weights come from).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from recordkit.errors import RecordkitError, RecordkitWarning
from recordkit.policy import SnapshotPolicy
from recordkit.recorder import Recorder, status_for_exception

__all__ = ["ON_ERROR", "RECORDER_OPTIONS", "FitState", "RecordingCallback",
           "check_callback_arguments", "jsonable", "metric_floats", "reclose_record",
           "status_for_exception"]

#: Keyword options of Recorder a callback passes through (``durable``, ``system``, ...);
#: ``resume`` and ``trial`` are the callback's own arguments.
RECORDER_OPTIONS = frozenset(
    name for name, p in inspect.signature(Recorder.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("resume", "trial",
                                                                 "evaluation")
)
ON_ERROR = ("raise", "warn")


def check_callback_arguments(
    *,
    root: Any,
    experiment: Any,
    name: Any,
    monitor: Any,
    params: Any,
    skip_frozen: Any,
    recorder: Any,
    resume: Any,
    on_error: Any,
    recorder_options: Mapping[str, Any],
    trial: Any = None,
) -> None:
    """Raise TypeError / ValueError naming the argument, what was received and what is
    allowed, before any fit starts (the snapshot arguments are checked by
    :class:`~recordkit.policy.SnapshotPolicy`).

    Example:
        >>> check_callback_arguments(  # doctest: +ELLIPSIS
        ...     root="records", experiment=None, name=None, monitor=None, params=None,
        ...     skip_frozen=False, recorder=None, resume=None, on_error="ignore",
        ...     recorder_options={})
        Traceback (most recent call last):
        ...
        ValueError: RecordCallback(on_error='ignore'): must be one of ('raise', 'warn')...
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"RecordCallback(root={root!r}): must be a folder path (str or "
                        f"os.PathLike). Received: {type(root).__name__}")
    for what, value in (("experiment", experiment), ("name", name), ("monitor", monitor)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"RecordCallback({what}={value!r}): must be a str or None. "
                            f"Received: {type(value).__name__}")
    if params is not None and not isinstance(params, (Mapping, argparse.Namespace)):
        raise TypeError(f"RecordCallback(params=...): must be a mapping, an "
                        f"argparse.Namespace or None. Received: {type(params).__name__}")
    if recorder is not None and not isinstance(recorder, Recorder):
        raise TypeError(f"RecordCallback(recorder={recorder!r}): must be a "
                        "recordkit.Recorder or None")
    if recorder is not None and resume is not None:
        raise ValueError("RecordCallback(recorder=..., resume=...): give one of them; "
                         "to continue a run, pass Recorder(root, resume=...) as recorder")
    if recorder is not None and trial is not None:
        raise ValueError("RecordCallback(recorder=..., trial=...): give the trial to the "
                         "Recorder: RecordCallback(recorder=Recorder(root, trial=trial))")
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"RecordCallback(resume={resume!r}): must be a record path or a "
                        f"run id. Received: {type(resume).__name__}")
    if on_error not in ON_ERROR:
        raise ValueError(f"RecordCallback(on_error={on_error!r}): must be one of "
                         f"{ON_ERROR}. Received: {on_error!r}")
    unknown = sorted(set(recorder_options) - RECORDER_OPTIONS)
    if unknown:
        raise TypeError(f"RecordCallback({unknown[0]}=...): not an option of "
                        f"RecordCallback or Recorder; Recorder takes "
                        f"{sorted(RECORDER_OPTIONS)}")
    if not isinstance(skip_frozen, bool):
        raise TypeError(f"RecordCallback(skip_frozen={skip_frozen!r}): must be True or "
                        f"False. Received: {type(skip_frozen).__name__}")


@dataclass
class FitState:
    """What one ``fit()`` holds: a new one (of the framework's subclass) for every fit."""

    writes: bool = False  #: this process writes, and recording was not stopped
    epoch_started: float = 0.0  #: ``time.perf_counter()`` at the running epoch's start
    snapshotted: int | None = None  #: the epoch of the latest snapshot


class RecordingCallback:
    """The framework-free part of a ``RecordCallback``: its arguments, the recorder of the
    fit in progress, ``on_error`` and snapshots. Subclasses call
    :meth:`_init_recording` from ``__init__`` and set ``self._fit``."""

    _fit: FitState

    def _init_recording(
        self,
        *,
        root: str | os.PathLike[str],
        experiment: str | None,
        name: str | None,
        snapshot_every: int | str | None,
        monitor: str | None,
        mode: str,
        include: str | list[str] | None,
        exclude: str | list[str] | None,
        dtype: str,
        skip_frozen: bool,
        recorder: Recorder | None,
        resume: str | os.PathLike[str] | None,
        on_error: str,
        recorder_options: dict[str, Any],
        trial: Any = None,
    ) -> None:
        self._policy_args: dict[str, Any] = {
            "every": snapshot_every, "monitor": monitor, "mode": mode, "include": include,
            "exclude": exclude, "dtype": dtype, "where": "RecordCallback",
        }
        self._policy = SnapshotPolicy(**self._policy_args)  # checks the arguments now
        self.root = recorder.root if recorder is not None else root
        self.experiment = (recorder.experiment if recorder is not None and experiment is None
                           else experiment)
        self.name = name
        self.snapshot_every = snapshot_every
        self.skip_frozen = skip_frozen
        self.on_error = on_error
        self.recorder_options = recorder_options
        self.trial = trial  # an Optuna trial: every record of this callback is that trial's
        self._given_recorder = recorder
        self._resume_next: str | os.PathLike[str] | None = resume
        self._recorder: Recorder | None = None
        self._record_path: str | None = None  # the record of the latest fit

    def __repr__(self) -> str:
        where = f"run at {self._record_path!r}" if self._record_path else "no run yet"
        return (f"<RecordCallback experiment={self.experiment!r} "
                f"snapshot_every={self.snapshot_every!r} ({where})>")

    @property
    def recorder(self) -> Recorder | None:
        """The recorder of the fit in progress (None between fits and in processes that do
        not write: Lightning's other ranks, non-chief ``tf.distribute`` workers)."""
        return self._recorder

    @property
    def record_path(self) -> str | None:
        """Path of the record of the latest fit."""
        return self._record_path

    def _open_record(self, params: Any, *, resume: str | os.PathLike[str] | None,
                     given: Recorder | None) -> Recorder:
        """The recorder of a fit that starts: the *given* one, the record *resume* names
        continued, or a new record; with a fresh snapshot policy."""
        if given is not None:
            rec = given
        elif resume is not None:
            rec = Recorder(self.root, self.experiment, self.name, params, resume=resume,
                           trial=self.trial, **self.recorder_options)
        else:
            rec = Recorder(self.root, self.experiment, self.name, params, trial=self.trial,
                           **self.recorder_options)
        self._recorder = rec
        self._record_path = str(rec.path.resolve())
        self._policy = SnapshotPolicy(**self._policy_args)
        return rec

    def _plan_snapshots(self, rec: Recorder, epochs: Any, start: int) -> None:
        """Tell the recorder how many snapshots the epochs *start* .. *epochs* will take
        (nothing when the number of epochs is not known)."""
        if isinstance(epochs, int) and epochs > start:
            rec.plan(snapshot_epochs=self._policy.planned_snapshots(epochs - start))

    def _snapshot(self, rec: Recorder, tensors: Any, epoch: int, *,
                  frozen_now: Callable[[], Iterable[str]], step: int | None = None
                  ) -> set[str]:
        """Snapshot *tensors*; with ``skip_frozen``, leave out those frozen now that no
        earlier snapshot of the record holds (*frozen_now* names the frozen ones).
        Returns the names left out as frozen."""
        frozen = set(frozen_now()) - set(rec.tensor_names) if self.skip_frozen else set()
        # Recorder.snapshot copies every tensor to host memory before it returns.
        rec.snapshot(tensors, epoch=epoch, step=step, policy=self._policy, frozen=frozen)
        self._fit.snapshotted = epoch
        return frozen

    def _close_pruned_after_fit(self, exc: BaseException | None) -> None:
        """``optuna.TrialPruned`` raised after the fit of the trial ended normally (a
        ``trial.report`` / ``should_prune`` loop around ``fit``): the record of that
        fit, closed ``completed``, is closed again ``pruned``."""
        if (self.trial is None or self._recorder is not None or self._record_path is None
                or status_for_exception(exc) != "pruned"):
            return
        with self._guard("close the record as pruned"):
            reclose_record(self.root, self._record_path, "pruned", error=exc,
                           only_from=("completed",), **self.recorder_options)

    def _warn(self, kind: str, message: str) -> None:
        """Warn *message*; a framework's callback may show each *kind* once per process
        (Lightning's does: a sweep of 100 fits in one process warns once)."""
        warnings.warn(message, RecordkitWarning, stacklevel=4)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Apply ``on_error`` to a failure of the recorder."""
        try:
            yield
        except RecordkitError as err:
            if self.on_error == "raise":
                raise
            self._warn("recording stopped",
                       f"recordkit: could not {what} ({err}); recording stops for the rest "
                       "of this run and training goes on (on_error='warn')")
            rec, self._recorder = self._recorder, None
            self._fit.writes = False
            if rec is not None:
                with contextlib.suppress(RecordkitError):
                    rec.close("failed", error=f"recording stopped: {err}")


def reclose_record(root: str | os.PathLike[str], path: str | os.PathLike[str], status: str,
                   *, error: BaseException | str | None = None,
                   info: Mapping[str, Any] | None = None,
                   params: Mapping[str, Any] | None = None,
                   only_from: Iterable[str] | None = None, **recorder_options: Any) -> bool:
    """Reopen the closed record at *path* (``Recorder(resume=...)``, marked as an
    ``"optuna"`` evaluation, so ``Record.restarts`` leaves it out), merge *info* and
    *params* into it and close it *status* (*error* with it; a status other than
    ``completed`` keeps the error it had when none is given). With *only_from*, a record
    whose status is not one of those is closed again with its own status. Returns
    whether the status changed."""
    rec = Recorder(root, resume=path, evaluation="optuna", **recorder_options)
    previous = rec.previous_status or "completed"
    if only_from is not None and previous not in set(only_from):
        status, error = previous, None  # its own status, with its own error
    try:
        if params:
            rec.extend(params)
        if info:
            rec.set_info(info)
    finally:
        if error is None and status != "completed":
            error = rec.previous_error or None
        rec.close(status, error=error)
    return status != previous


# --- framework values → plain values --------------------------------------------------------


def metric_floats(metrics: Mapping[str, Any],
                  scalar: Callable[[Any], float | None]) -> dict[str, float]:
    """The scalar metrics of *metrics* as floats (the recorder takes numbers only): a float
    as it is, anything else through the framework's *scalar* conversion, which returns
    None for what is not one number (a tensor of several elements is not a metric).

    Example:
        >>> metric_floats({"loss": 0.5, "name": "x"}, lambda v: None)
        {'loss': 0.5}
    """
    out = {}
    for key, value in metrics.items():
        number = float(value) if isinstance(value, float) else scalar(value)
        if number is not None:
            out[str(key)] = float(number)
    return out


#: How deep jsonable() follows nested mappings and sequences before it stores a repr.
_JSONABLE_DEPTH = 8


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of *value* for ``Recorder.set_info``: numbers, strings, lists and
    dicts; a one-element array or tensor as its number; non-finite floats and anything
    else as their repr.

    Example:
        >>> jsonable({"betas": (0.9, 0.999), "eps": float("nan"), 3: object})
        {'betas': [0.9, 0.999], 'eps': 'nan', '3': "<class 'object'>"}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > _JSONABLE_DEPTH:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "item") and _one_element(value):
        return jsonable(value.item(), depth + 1)
    return repr(value)


def _one_element(value: Any) -> bool:
    numel = getattr(value, "numel", None)  # torch: size is a method there
    if callable(numel):
        try:
            return bool(numel() == 1)
        except Exception:
            return False
    return getattr(value, "size", None) == 1  # numpy, jax, tensorflow's numpy values
