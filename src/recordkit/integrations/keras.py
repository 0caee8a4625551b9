"""Keras 3: one callback records the whole run.

``model.fit(..., callbacks=[RecordCallback("records")])`` records the user's params, the
fit, optimizer, compile and model facts once; per epoch exactly what ``History.history``
holds (the ``logs`` of ``on_epoch_end``) plus ``learning_rate`` and ``epoch_time``; and a
snapshot of every variable in ``model.weights`` (trainable and not, e.g. BatchNorm moving
statistics), named by the variable's ``path``, every ``snapshot_every`` epochs and at the
final epoch always. It calls only Keras' public API, so it works on every backend
(tensorflow, torch, jax); the one thing it reads from Keras' code is the argument list of
the running ``fit()`` call (see below).

Choices worth knowing:

- **The fit() arguments.** Keras gives callbacks only ``self.params`` (``epochs``,
  ``steps`` per epoch, ``verbose``). ``fit()`` calls ``on_train_begin`` from its own frame
  on every backend, so the callback reads the other arguments there (``batch_size``,
  ``shuffle``, ``validation_split``, ``validation_freq``, ``initial_epoch``, whether
  ``class_weight`` / ``sample_weight`` / ``validation_data`` were given, ...) and stores
  them in ``Record.info["fit"]``, as passed (``batch_size`` None: Keras' default of 32 for
  arrays, or the dataset's own batches). ``fit_args={...}`` adds or overrides values, for
  a custom loop that calls the callback hooks itself; ``info["fit"]["not_visible"]``
  names the arguments that were neither found nor given.
- **learning_rate** is read from ``model.optimizer`` at the end of each epoch (after the
  epoch's last step; a schedule's value there). When the logs already hold
  ``learning_rate`` (``LearningRateScheduler``, ``ReduceLROnPlateau``), that value is kept.
- **A fit that raised.** Keras calls no callback when ``fit`` raises, and Python 3.11
  gives a callback no cheap way to see an exception pass (a trace function slowed tiny
  fits by 20-30 %). So the record of a fit that raised stays open with status
  ``running``: it holds the history rows of every finished epoch; the snapshots of the
  last finished epochs may still be on their way to the file (the writer thread). It is
  closed, every queued snapshot written, at the first of: the exception ends the
  process (``sys.excepthook``) or, in IPython and Jupyter, the cell that ran the fit;
  :meth:`RecordCallback.close` (or the end of ``with RecordCallback(...)``); the next
  fit with this callback; the process's exit; the callback's garbage collection. It is
  closed ``failed`` with the exception's type and message (``interrupted`` for
  KeyboardInterrupt) when the exception that left that fit is known then: the one
  ending the process or the cell, the one being handled when ``close()`` or the next fit
  is called (inside ``except`` or ``finally``), the one leaving the ``with`` block, or
  one the caller caught and dropped that left the fit through a training step or a
  callback hook: for that, while the fit runs, the model's ``train_function`` and the
  hooks of fit's ``CallbackList`` are wrapped in a function that notes the text of an
  exception passing out of them (one Python call per step; put back when the fit ends).
  An exception raised elsewhere in fit and dropped cannot be known: the record is then
  closed ``interrupted`` with a message that says so; ``running`` (read as
  ``interrupted``) when the process is killed. An exception is taken for the fit's only
  when its traceback reaches that fit's frame, or it left one of the fit's own steps or
  hooks: an unrelated one is never stored.
- **Vocabularies.** ``StringLookup``, ``IntegerLookup`` and ``TextVectorization`` keep
  an adapted vocabulary in no variable (so in no snapshot, and not in the model's
  config): the record's extra ``vocabularies`` holds each one, by layer name (nested
  layers as ``outer/inner``), with the layer's class, as ``get_vocabulary()`` gives it
  when the record starts; ``layer.set_vocabulary(...)`` takes it back.
- **Reuse and resume.** A callback used for a second fit starts a new record when the
  new fit starts at epoch 0. A fit that starts at a later epoch (``initial_epoch``,
  ``BackupAndRestore``) continues the record of the previous fit, whether that fit
  completed ("train more": ``fit(epochs=6, initial_epoch=3)`` after ``fit(epochs=3)``)
  or raised (listed in ``Record.restarts``), dropping what the record holds from that
  epoch on. A continued record that ends before the epoch the fit starts at gets a
  warning and ``info["epoch_gaps"]``: the ``[first, last]`` epochs it lacks.
  ``resume=<path or run id>`` continues a given record the same way. After a restart of
  the process (``BackupAndRestore``'s case) the new callback knows no path:
  ``resume="auto"`` continues the newest record of the same experiment, name and params
  that did not complete and reached the epoch before the one the fit starts at (a fit
  that starts at epoch 0, or finds no such record, starts a new one). With
  ``snapshot_every="best"`` a resumed fit judges improvement from its own first epoch.
- **Final weights.** The last snapshot holds what the last epoch trained, always.
  When the model ends ``fit`` with other weights, ``Record.info["final_weights"]`` says
  where they are: ``EarlyStopping(restore_best_weights=True)``, placed before or after
  this callback, restores the weights of its best epoch: ``{"epoch": E, "by": ...}``
  names that epoch's snapshot (no copy), or, when that epoch has no snapshot
  (``snapshot_every`` skipped it), ``{"extra": "final_weights", "epoch": E, ...}``: the
  weights are the record's extra ``final_weights``. Weights changed in ``on_train_end``
  by another callback placed before this one are stored the same way as an extra.
  Keras gives no way to learn what a callback placed after this one will do in its
  ``on_train_end`` (it runs after the record is closed), so only EarlyStopping's
  restore is known then.
- **evaluate.** ``model.evaluate(..., callbacks=[cb])`` after a fit adds its results to
  the record of that fit (see :meth:`RecordCallback.on_test_end`).
- **Vector metrics** (``F1Score(average=None)``: one value per class) are stored one
  history metric per element, ``f1_score[0]``, ``f1_score[1]``...;
  ``Record.info["vector_metrics"]`` maps each to its shape and element names.
- **Distributed.** Under ``tf.distribute`` only the chief writes (``MirroredStrategy``
  has one process and so one record); ``Record.info["distribution"]`` says how many
  replicas trained. In a Ray Train worker (``train_loop_per_worker`` of a
  ``TensorflowTrainer``, or any other trainer) only world rank zero writes.
- **Optuna.** ``RecordCallback(..., trial=trial)`` records the trial (see
  :class:`~recordkit.Recorder`'s ``trial``): its params, number, study and storage. A
  fit that ``optuna.TrialPruned`` leaves (optuna-integration's ``KerasPruningCallback``)
  raised, so its record stays open until one of the moments above closes it, then
  ``pruned``; ``recordkit.integrations.optuna.RecordStudy`` closes it as soon as the
  trial ends. A ``TrialPruned`` raised after the fit ended (a ``trial.report`` /
  ``should_prune`` loop around ``fit``) closes the record ``pruned`` again when it leaves
  the ``with RecordCallback(...)`` block, or when ``RecordStudy`` sees the trial end.
- **Ray Tune.** Inside a trial the record takes the trial's config, name and experiment
  (see :class:`~recordkit.Recorder`). When Tune stops the trial (a scheduler or a
  stopper), ``tune.report`` raises ``SystemExit(0)``, which Ray's thread runner
  swallows: the record is closed ``pruned`` on the spot, as that exception leaves one of
  fit's callback hooks (seen by the wrapper described above), with every epoch reported:
  when the stop leaves ``on_epoch_end`` before this callback's turn (the reporting
  callback placed first), that epoch is recorded first.
- A fit that runs no epoch (``initial_epoch >= epochs``) records nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

try:
    import keras
except ImportError as err:  # pragma: no cover - exercised without keras installed
    raise ModuleNotFoundError(
        "recordkit.integrations.keras needs Keras 3 (installed with TensorFlow >= 2.16): "
        "pip install 'recordkit[keras]'"
    ) from err

from recordkit.errors import RecordkitError, RecordkitWarning
from recordkit.integrations import _crash_watch
from recordkit.integrations import _keras_facts as facts
from recordkit.integrations._common import (
    FitState,
    RecordingCallback,
    check_callback_arguments,
    metric_floats,
    status_for_exception,
)
from recordkit.integrations._keras_internals import (
    ExceptionTrap,
    RunningFit,
    SeenError,
    exception_left_fit,
    fit_is_running_here,
    running_fit,
)
from recordkit.paths import resolve_path
from recordkit.recorder import Recorder, find_unfinished, params_hash_of, ray_train_rank

__all__ = ["RecordCallback", "is_chief"]

_LR = "learning_rate"
_EPOCH_TIME = "epoch_time"
_NO_TRAIN_END = "model.fit ended without on_train_end (an exception left fit)"


@dataclass
class _KerasFit(FitState):
    """What one ``model.fit`` holds, from ``on_train_begin`` on."""

    writes: bool = True
    started: bool = False  # the record of this fit exists
    last_logged: int | None = None
    saw_validation: bool = False
    first_epoch: int | None = None
    call_args: dict[str, Any] = field(default_factory=dict)  # read from the fit() call
    #: (epoch, {path: host copy}) of the snapshot of an epoch known to be the last one,
    #: which on_train_end compares the final weights with instead of reading it back
    final: tuple[int, dict[str, Any]] | None = None
    snapshot_epochs: set[int] = field(default_factory=set)  # of this fit
    counted: bool = False  # the parameter counts were read after a step
    vectors: dict[str, Any] = field(default_factory=dict)  # info["vector_metrics"]


class RecordCallback(RecordingCallback, keras.callbacks.Callback):
    """Records a Keras ``fit`` into ``<root>/<experiment>/<run_id>.h5``.

    Args:
        root: folder of records.
        experiment: sub-folder; ``"default"`` when None.
        name: a label for the run (the run id when None).
        params: hyperparameters (a mapping or an ``argparse.Namespace``).
        snapshot_every: a positive int N (every N-th epoch), None (the last epoch only) or
            ``"best"`` (each epoch where *monitor* improves). The final epoch is always
            snapshotted.
        monitor: the metric ``snapshot_every="best"`` watches, e.g. ``"val_loss"``.
        mode: ``"min"`` or ``"max"``: which direction of *monitor* is better.
        include: glob pattern(s) of variable paths to snapshot (all when None).
        exclude: glob pattern(s) of variable paths to leave out.
        dtype: storage dtype of floating tensors: ``"keep"``, ``"float16"``,
            ``"bfloat16"``.
        skip_frozen: leave out the weights of frozen layers (``layer.trainable = False``):
            a weight frozen for the whole run is never stored; one unfrozen later is stored
            from then on; one that trained and is frozen later keeps being stored.
            Non-trainable state of trainable layers (BatchNorm moving statistics) is
            always stored.
        recorder: an open :class:`~recordkit.Recorder` to record the first fit into; the
            callback closes it when the fit ends. Later fits create records in its root.
        resume: path or run id of a record the first fit continues: what it holds from
            the fit's first epoch on (``initial_epoch``) is dropped and recorded again.
            ``"auto"``: each fit that starts at a later epoch (``BackupAndRestore`` after a
            restart, ``initial_epoch``) continues the newest unfinished record of the same
            experiment, name and params that reached the epoch before.
        fit_args: ``fit()`` arguments to store in ``Record.info["fit"]`` beside (and over)
            those read from the running ``fit`` call: for a custom training loop that
            drives the callback hooks itself.
        on_error: ``"raise"`` stops training when recording fails; ``"warn"`` warns,
            closes the record as failed and lets training go on unrecorded.
        trial: an Optuna ``Trial`` whose fit this is (see the notes above).
        **recorder_options: keyword options of :class:`~recordkit.Recorder` (``durable``,
            ``system``, ``compression``, ...).

    Raises:
        ValueError, TypeError: an argument is out of range, named with what was received.

    Example:
        >>> import tempfile
        >>> RecordCallback(tempfile.mkdtemp(), experiment="demo", snapshot_every=2)
        <RecordCallback experiment='demo' snapshot_every=2 (no run yet)>
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "records",
        experiment: str | None = None,
        name: str | None = None,
        params: Mapping[str, Any] | argparse.Namespace | None = None,
        *,
        snapshot_every: int | str | None = 1,
        monitor: str | None = None,
        mode: str = "min",
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        dtype: str = "keep",
        skip_frozen: bool = False,
        recorder: Recorder | None = None,
        resume: str | os.PathLike[str] | None = None,
        fit_args: Mapping[str, Any] | None = None,
        on_error: str = "raise",
        trial: Any = None,
        **recorder_options: Any,
    ) -> None:
        super().__init__()
        check_callback_arguments(
            root=root, experiment=experiment, name=name, monitor=monitor, params=params,
            skip_frozen=skip_frozen, recorder=recorder, resume=resume, on_error=on_error,
            recorder_options=recorder_options, trial=trial)
        if fit_args is not None and not isinstance(fit_args, Mapping):
            raise TypeError(f"RecordCallback(fit_args=...): must be a mapping of fit() "
                            f"argument names to values. Received: {type(fit_args).__name__}")
        self._init_recording(
            root=root, experiment=experiment, name=name, snapshot_every=snapshot_every,
            monitor=monitor, mode=mode, include=include, exclude=exclude, dtype=dtype,
            skip_frozen=skip_frozen, recorder=recorder,
            resume=None if resume == "auto" else resume, on_error=on_error,
            recorder_options=recorder_options, trial=trial)
        self.run_params = params  # Keras owns ``self.params`` (what fit() passes)
        self.fit_args = dict(fit_args or {})
        self._auto_resume = resume == "auto"
        self._fit_thread: int | None = None  # set while a fit runs (or after one raised)
        self._continue_path: str | None = None  # the record of the previous fit
        self._raised_path: str | None = None  # that record, closed when its cell ended
        self._fit: _KerasFit = _KerasFit()
        self._running: RunningFit | None = None  # the fit() call of the latest fit
        # the exception that left the latest fit, if seen; Tune's stop closes the record
        self._trap = ExceptionTrap(on_trial_stop=self._close_stopped,
                                   on_error=self._wait_for_snapshots)

    # --- Keras hooks --------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        continue_path, self._raised_path = self._raised_path, None
        if self._recorder is not None:  # the previous fit raised: Keras said nothing
            continue_path = self._record_path
            self._close_raised("the callback was used for another fit")
        elif continue_path is None:  # "train more": a fit from a later epoch continues it
            continue_path = self._record_path
        running = running_fit(self.model)
        self._running = running
        self._trap.set(self.model, running)
        self._fit = _KerasFit(call_args=running.call_args if running else {},
                              writes=is_chief(facts.cluster_resolver(self.model))
                              and ray_train_rank() in (None, 0))
        self._continue_path = continue_path
        self._fit_thread = threading.get_ident()
        if self._fit.writes:
            _crash_watch.watch(self, on_uncaught=RecordCallback._close_after_uncaught,
                               on_cell_end=RecordCallback._close_after_cell,
                               on_exit=RecordCallback._close_at_exit)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._fit.writes and not self._fit.started:
            self._start(int(epoch))
        self._fit.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        rec, fit = self._recorder, self._fit
        if rec is None:
            return
        elapsed = time.perf_counter() - fit.epoch_started
        metrics = metric_floats(logs or {}, facts.keras_scalar)
        vectors = facts.vector_metrics({k: v for k, v in (logs or {}).items()
                                        if k not in metrics})
        new_vectors = {}
        for key, array in vectors.items():
            names = {facts.element_name(key, index): float(value)
                     for index, value in np.ndenumerate(array)}
            metrics.update(names)
            if fit.vectors.get(key, {}).get("shape") != list(array.shape):
                new_vectors[key] = {"shape": list(array.shape), "elements": list(names)}
        first_validation = not fit.saw_validation and any(k.startswith("val_")
                                                          for k in metrics)
        if _LR not in metrics:
            lr = facts.learning_rate(self.model)
            if lr is not None:
                metrics[_LR] = lr
        metrics.setdefault(_EPOCH_TIME, elapsed)
        epochs = (self.params or {}).get("epochs")
        last = bool(self.model.stop_training) or (isinstance(epochs, int)
                                                  and epoch + 1 >= epochs)
        with self._guard(f"record epoch {epoch}"):
            rec.log(metrics, epoch=epoch)
            fit.last_logged = epoch
            if first_validation:  # known from the first epoch that validates
                fit.saw_validation = True
                rec.set_info({"fit": self._fit_facts()})
            if new_vectors:
                fit.vectors.update(new_vectors)
                rec.set_info({"vector_metrics": dict(fit.vectors)})
            if not fit.counted:  # a subclassed model is built by its first step
                fit.counted = True
                counts = facts.model_counts(self.model)
                model_info = rec.info.get("model")
                if isinstance(model_info, dict) and any(
                        model_info.get(k) != v for k, v in counts.items()):
                    rec.set_info({"model": {**model_info, **counts}})
            # The rows are committed before the snapshot is queued: the writer holds the
            # run's lock while it writes a slice, and a commit made after queueing waited
            # for it. The writer commits the snapshot; training goes on meanwhile.
            rec.commit(wait=False)
            if self._policy.due(epoch, metrics, last=last):
                self._snapshot_model(rec, epoch, keep=last)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        rec = self._recorder
        self._fit_thread = None
        _crash_watch.unwatch(self)
        running, self._running = self._running, None
        self._trap.remove()
        if rec is None:
            return
        with self._guard("close the record"):
            epoch = self._fit.last_logged
            if epoch is not None and self._fit.snapshotted != epoch:
                self._snapshot_model(rec, epoch)  # early stopping ended the fit after us
            if epoch is not None:
                final = self._final_weights(rec, running)
                if final is not None:
                    rec.set_info({"final_weights": final})
            rec.set_info({"fit": self._fit_facts()})
            rec.commit()  # waits for the last snapshot; a writer error is raised here
            rec.close("completed")
        self._recorder = None

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """``model.evaluate(..., callbacks=[this])`` after a fit: its results go into the
        record of the latest fit, reopened and closed again with the status it had, as
        ``test_<metric>`` history rows at that record's last epoch and one entry of
        ``info["evaluations"]`` (``{"epoch", "metrics"}``) per evaluate. Validation inside
        a fit (Keras calls this hook then too), an evaluate before any fit, or with the
        record of a fit that raised still open, records nothing."""
        if (self._recorder is not None or self._record_path is None or not logs
                or fit_is_running_here(self._running)):
            return
        metrics = metric_floats(logs, facts.keras_scalar)
        for key, array in facts.vector_metrics({k: v for k, v in logs.items()
                                                if k not in metrics}).items():
            metrics.update({facts.element_name(key, index): float(value)
                            for index, value in np.ndenumerate(array)})
        if not metrics:
            return
        with self._guard("record the evaluation"):
            rec = Recorder(self.root, self.experiment, self.name, resume=self._record_path,
                           **self.recorder_options)
            try:
                epoch = max(rec.last_epoch, 0)
                rec.log({f"test_{key}": value for key, value in metrics.items()}, epoch=epoch)
                done = rec.info.get("evaluations")
                rec.set_info({"evaluations": [*(done if isinstance(done, list) else []),
                                              {"epoch": epoch, "metrics": metrics}]})
            finally:
                previous = rec.previous_status
                rec.close(previous if previous in ("completed", "failed", "interrupted",
                                                   "pruned")
                          else "completed", error=rec.previous_error or None)

    def close(self) -> None:
        """Close the record of the latest fit when that fit raised (Keras calls no hook
        then; see the module's notes): ``failed`` with the exception when it is being
        handled now (called in an ``except`` or ``finally`` block around ``fit``), else
        ``interrupted``. Nothing happens after a fit that ended normally, before any fit,
        while a fit runs, or a second time.

        Example:
            >>> import tempfile
            >>> RecordCallback(tempfile.mkdtemp()).close()
        """
        self._close_raised("RecordCallback.close() was called")

    def __enter__(self) -> RecordCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._recorder is None:  # the fit ended normally: a trial pruned after it
            self._close_pruned_after_fit(exc)
        else:
            self._close_raised("the with block of RecordCallback ended", error=exc)

    # --- internals ----------------------------------------------------------------------

    def _start(self, first_epoch: int) -> None:
        self._fit.started = True
        with self._guard("start the record"):
            resume, self._resume_next = self._resume_next, None
            given, self._given_recorder = self._given_recorder, None
            if resume is None and self._continue_path is not None and first_epoch > 0:
                resume = self._continue_path
            if resume is None and given is None and self._auto_resume and first_epoch > 0:
                resume = self._find_unfinished(first_epoch)
            if resume is not None:
                _release_abandoned(resolve_path(resume, Path(self.root), self.experiment))
            rec = self._open_record(self.run_params, resume=resume, given=given)
            self._fit.first_epoch = first_epoch
            if resume is not None and first_epoch > rec.last_epoch + 1:
                self._record_gap(rec, first_epoch)
            if resume is not None or rec.last_epoch >= first_epoch:
                rec.rewind(first_epoch)  # the epochs from here on are trained again
            self._plan_snapshots(rec, (self.params or {}).get("epochs"), first_epoch)
            rec.set_info(facts.run_info(self.model))
            rec.set_info({"fit": self._fit_facts()})
            vocabularies = facts.vocabularies(self.model)
            if vocabularies:  # in no variable, so in no snapshot
                rec.add("vocabularies", vocabularies)

    def _record_gap(self, rec: Recorder, first_epoch: int) -> None:
        """A resumed record ends before the epoch this fit starts at: warn, and list the
        epochs it lacks in ``info["epoch_gaps"]`` (``[first, last]`` pairs)."""
        missing = [rec.last_epoch + 1, first_epoch - 1]
        gaps = rec.info.get("epoch_gaps")
        rec.set_info({"epoch_gaps": [*(gaps if isinstance(gaps, list) else []), missing]})
        reached = (f"reached epoch {rec.last_epoch}" if rec.last_epoch >= 0
                   else "holds no epoch")
        warnings.warn(
            f"recordkit: RecordCallback: the record {str(rec.path)!r} {reached} and this "
            f"fit starts at epoch {first_epoch}: epochs {missing[0]} to {missing[1]} are "
            "not in it (listed in info['epoch_gaps'])", RecordkitWarning, stacklevel=4)

    def _fit_facts(self) -> dict[str, Any]:
        return facts.fit_facts(self._fit.call_args, self.params,
                         initial_epoch=self._fit.first_epoch,
                         validation=self._fit.saw_validation, fit_args=self.fit_args)

    def _snapshot_model(self, rec: Recorder, epoch: int, *, keep: bool = False) -> None:
        """Snapshot the model's weights; with *keep* (an epoch known to be the last),
        keep the host copies given to the recorder for on_train_end to compare with."""
        self._fit.final = None
        self._fit.snapshot_epochs.add(epoch)
        weights: dict[str, Any] = {facts.variable_name(v): v for v in self.model.weights}
        if keep:
            weights = facts.host_copies(weights)
        frozen = self._snapshot(rec, weights, epoch,
                                frozen_now=lambda: facts.frozen_paths(self.model))
        if keep:  # only the tensors the snapshot holds (not frozen or excluded ones)
            self._fit.final = (epoch, {name: weights[name]
                                       for name in self._policy.select(weights, frozen)})

    def _final_weights(self, rec: Recorder, running: RunningFit | None
                       ) -> dict[str, Any] | None:
        """``info["final_weights"]`` when the weights the model ends fit with are not
        those of the last snapshot: a reference to the snapshot of the epoch that
        EarlyStopping restores, else an extra holding them. None when they are."""
        callbacks = running.callback_list() if running and running.callback_list else None
        restore = facts.early_stopping_restore(getattr(callbacks, "callbacks", None) or [])
        if restore is not None:
            best_epoch, best_weights = restore
            by = "EarlyStopping(restore_best_weights=True)"
            if best_epoch == self._fit.snapshotted:
                return None  # it restores what the last snapshot holds
            if best_epoch in self._fit.snapshot_epochs:
                return {"epoch": best_epoch, "by": by}
            names = [facts.variable_name(v) for v in self.model.weights]
            self._add_final_weights(rec, dict(zip(names, best_weights)))
            return {"extra": "final_weights", "epoch": best_epoch, "by": by}
        if not self._weights_changed_since_snapshot(rec):
            return None
        self._add_final_weights(rec, facts.host_copies(
            {facts.variable_name(v): v for v in self.model.weights}))
        return {"extra": "final_weights", "epoch": None,
                "by": "a callback placed before RecordCallback changed the weights in "
                      "on_train_end"}

    def _add_final_weights(self, rec: Recorder, weights: Mapping[str, Any]) -> None:
        held = set(rec.tensor_names)  # the tensors the snapshots hold
        rec.add("final_weights", {name: np.asarray(value) for name, value in weights.items()
                                  if name in held})

    def _weights_changed_since_snapshot(self, rec: Recorder) -> bool:
        """Whether the model's weights differ from those of the last snapshot, in the
        tensors it holds. Compared with the copies kept when the epoch was known to be the
        last, while the writer is still writing them (no wait, no read); else read back
        once from the file (one read of the last snapshot at the end of fit, nothing per
        epoch)."""
        final, self._fit.final = self._fit.final, None
        if final is not None and final[0] == self._fit.snapshotted:
            return facts.weights_differ(self.model, final[1])
        rec.commit()  # the last snapshot is in the file; a writer error is raised here
        try:
            stored = rec.last_snapshot()
        except RecordkitError:
            return False
        return facts.weights_differ(self.model, stored)

    def _find_unfinished(self, first_epoch: int) -> str | None:
        """``resume="auto"``: the newest record of this experiment, name and params that
        did not complete and reached the epoch before *first_epoch*."""
        experiment = self.experiment or "default"
        folder = Path(self.root) / experiment
        if not folder.is_dir():
            return None
        wanted = params_hash_of(self.run_params, mask_secrets=self.recorder_options.get(
            "mask_secrets", True))
        found = find_unfinished(self.root, experiment, name=self.name, params_hash=wanted,
                                reached_epoch=first_epoch - 1)
        if found is not None:
            return str(found)
        warnings.warn(
            f"recordkit: RecordCallback(resume='auto'): fit starts at epoch {first_epoch} "
            f"but no unfinished record of experiment {experiment!r}"
            + (f", name {self.name!r}" if self.name is not None else "")
            + f" and these params reaching epoch {first_epoch - 1} is in "
            f"{str(folder)!r}; a new record is started", RecordkitWarning, stacklevel=4)
        return None

    # --- a fit that raised: Keras calls no hook then ------------------------------------

    def _abandon(self, status: str, error: BaseException | str, *,
                 finalizing: bool = False) -> None:
        """Close the record of a fit that raised (*finalizing*: from ``__del__``, which
        may run inside any call of any thread: see ``Recorder.close_from_finalizer``)."""
        rec, self._recorder = self._recorder, None
        self._fit_thread = None
        _crash_watch.unwatch(self)
        if rec is not None and finalizing:
            rec.close_from_finalizer(status, error=error)
        elif rec is not None and not rec.closed:
            with contextlib.suppress(Exception):
                rec.close(status, error=error)

    def _close_raised(self, why: str, error: BaseException | None = None) -> None:
        """Close the record of a fit that raised: ``failed`` with the exception that
        left that fit when it is known (*error*, else the exception being handled now),
        ``interrupted`` for KeyboardInterrupt, ``pruned`` for ``optuna.TrialPruned``;
        else ``interrupted`` saying *why*. Nothing
        while the fit still runs on this thread's stack (its own hooks close it)."""
        if self._recorder is None or fit_is_running_here(self._running):
            return
        self._raised_path = self._record_path  # a later fit may continue it
        exc = exception_left_fit(self._running, error if error is not None
                                 else sys.exc_info()[1])
        seen, self._trap.seen = self._trap.seen, None
        self._trap.remove()
        if exc is not None:
            self._abandon(status_for_exception(exc), exc)
        elif seen is not None:  # dropped by the caller, but seen leaving a step or hook
            self._abandon(seen.status, seen.text)
        else:
            self._abandon("interrupted", f"{_NO_TRAIN_END}; {why}, and the exception "
                          "that left fit was not known then")

    def _wait_for_snapshots(self) -> None:
        """An exception is leaving a step or hook of the fit: its queued snapshots are
        written before it goes on, so a reader then sees every epoch's snapshot."""
        if self._recorder is not None:
            self._recorder.wait_for_snapshots()

    def _close_stopped(self, seen: SeenError, hook: str | None, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> None:
        """Ray Tune stopped the trial (``SystemExit(0)`` from ``tune.report`` in a hook):
        Ray's thread runner swallows it, so the record is closed ``pruned`` now. When it
        left ``on_epoch_end`` before this callback's turn (the reporting callback placed
        first), that epoch, which Tune has, is recorded first."""
        if self._recorder is None:
            return
        try:
            epoch = args[0] if args else kwargs.get("epoch")
            if (hook == "on_epoch_end" and isinstance(epoch, int)
                    and self._fit.last_logged != epoch):
                logs = args[1] if len(args) > 1 else kwargs.get("logs")
                self.on_epoch_end(epoch, logs)
        finally:
            self._raised_path = self._record_path
            self._trap.seen = None
            self._trap.remove()
            self._abandon(seen.status, seen.text)

    def _close_after_uncaught(self, exc: BaseException) -> None:
        """The exception ends the process: failed when it left the fit (interrupted for
        Ctrl-C)."""
        self._close_raised("the process ended on another exception", error=exc)

    def _close_at_exit(self) -> None:
        """The process exits with the record of a fit of this thread that raised still
        open (a fit that may still run on another thread is left to the recorder)."""
        if self._fit_thread == threading.get_ident():
            self._close_raised("the process exited")

    def _close_after_cell(self, error: BaseException | None) -> None:
        """An IPython cell has ended: a fit it ran on this thread is over, so a record it
        left open ended without ``on_train_end``: failed with the cell's exception, else
        interrupted (the exception was caught inside the cell)."""
        if self._recorder is None or self._fit_thread != threading.get_ident():
            return
        self._close_raised("the notebook cell that ran it ended", error=error)

    def __del__(self) -> None:
        # Collected while its record is open: the fit that wrote it raised long ago.
        with contextlib.suppress(Exception):
            if getattr(self, "_recorder", None) is not None:
                seen = self._trap.seen
                if seen is not None:
                    self._abandon(seen.status, seen.text, finalizing=True)
                else:
                    self._abandon("interrupted", f"{_NO_TRAIN_END}; the callback was "
                                  "garbage-collected", finalizing=True)


def _release_abandoned(path: Path) -> None:
    """Close the record at *path* when a callback of this process still holds it open
    from a fit of this thread that raised: this thread is starting a new fit, so that
    one is over."""
    me = threading.get_ident()
    for callback in _crash_watch.watched():
        if not isinstance(callback, RecordCallback):
            continue
        held = callback._record_path
        if (callback._recorder is not None and callback._fit_thread == me and held
                and Path(held) == path.resolve()):
            callback._close_raised("another fit resumed the record")


# --- distribution ------------------------------------------------------------------------


def is_chief(cluster_resolver: Any) -> bool:
    """Whether this process writes: no cluster, the ``chief`` task, or worker 0 of a
    cluster without a chief (the rule ``tf.distribute`` uses for checkpoints).

    Args:
        cluster_resolver: a ``tf.distribute.cluster_resolver.ClusterResolver`` (e.g.
            ``strategy.cluster_resolver``) or None.

    Example:
        >>> is_chief(None)
        True
    """
    if cluster_resolver is None:
        return True
    task_type = getattr(cluster_resolver, "task_type", None)
    task_id = getattr(cluster_resolver, "task_id", None)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker":
        return False  # evaluator, parameter servers
    try:
        cluster = cluster_resolver.cluster_spec().as_dict()
    except Exception:  # no cluster spec: a single worker
        cluster = {}
    return "chief" not in cluster and int(task_id or 0) == 0
