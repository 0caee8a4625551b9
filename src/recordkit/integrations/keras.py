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
- **A crashed fit.** Keras calls no callback when ``fit`` raises, so the record of a fit
  that raised stays open with status ``running`` and every finished epoch committed. It
  is closed: ``failed`` (with the exception) when the exception ends the process
  (``sys.excepthook``; ``interrupted`` for KeyboardInterrupt) or, in IPython and Jupyter,
  the cell that ran the fit (its ``post_run_cell`` event); ``interrupted`` when the
  callback is used for another fit or is garbage-collected; ``running`` (read as
  ``interrupted``) when the process is killed.
- **Reuse and resume.** A callback used for a second fit starts a new record, except when
  its previous fit raised and the new fit starts at a later epoch (``BackupAndRestore``
  or ``initial_epoch``): then it continues the same record (listed in
  ``Record.restarts``), dropping what the record holds from that epoch on.
  ``resume=<path or run id>`` continues a given record the same way. After a restart of
  the process (``BackupAndRestore``'s case) the new callback knows no path:
  ``resume="auto"`` continues the newest record of the same experiment, name and params
  that did not complete and reached the epoch before the one the fit starts at (a fit
  that starts at epoch 0, or finds no such record, starts a new one). With
  ``snapshot_every="best"`` a resumed fit judges improvement from its own first epoch.
- **The final snapshot** holds the weights as they are when ``fit`` ends. When they differ
  from the weights snapshotted at the end of the last epoch
  (``EarlyStopping(restore_best_weights=True)`` placed before this callback restores
  earlier weights in its ``on_train_end``), that epoch's snapshot is replaced by them and
  ``Record.info["final_weights"]`` says so. An ``EarlyStopping`` placed after this
  callback restores after the record is closed: put it first.
- **Distributed.** Under ``tf.distribute`` only the chief writes (``MirroredStrategy``
  has one process and so one record); ``Record.info["distribution"]`` says how many
  replicas trained.
- A fit that runs no epoch (``initial_epoch >= epochs``) records nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

try:
    import keras
except ImportError as err:  # pragma: no cover - exercised without keras installed
    raise ModuleNotFoundError(
        "recordkit.integrations.keras needs Keras 3 (installed with TensorFlow >= 2.16): "
        "pip install 'recordkit[keras]'"
    ) from err

import numpy as np

from recordkit.errors import RecordkitError, RecordkitWarning
from recordkit.integrations.options import check_callback_arguments
from recordkit.paths import resolve_path
from recordkit.policy import SnapshotPolicy
from recordkit.recorder import Recorder, find_unfinished, params_hash_of

__all__ = ["RecordCallback", "is_chief"]

#: fit() arguments Keras does not pass to callbacks (read from fit's frame, or fit_args).
_HIDDEN_FIT_ARGS = ("batch_size", "shuffle", "validation_split", "class_weight",
                    "sample_weight", "validation_batch_size", "validation_freq")
#: fit() arguments stored as given; the rest of _FIT_FRAME_ARGS only as "given or not".
_FIT_VALUE_ARGS = ("batch_size", "epochs", "initial_epoch", "steps_per_epoch", "shuffle",
                   "validation_split", "validation_steps", "validation_batch_size",
                   "validation_freq")
_FIT_GIVEN_ARGS = ("class_weight", "sample_weight", "validation_data")
_LR = "learning_rate"
_EPOCH_TIME = "epoch_time"


class RecordCallback(keras.callbacks.Callback):
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
        **recorder_options: Any,
    ) -> None:
        super().__init__()
        check_callback_arguments(
            root=root, experiment=experiment, name=name, monitor=monitor, params=params,
            recorder=recorder, resume=resume, on_error=on_error,
            recorder_options=recorder_options)
        if not isinstance(skip_frozen, bool):
            raise TypeError(f"RecordCallback(skip_frozen={skip_frozen!r}): must be True or "
                            f"False. Received: {type(skip_frozen).__name__}")
        if fit_args is not None and not isinstance(fit_args, Mapping):
            raise TypeError(f"RecordCallback(fit_args=...): must be a mapping of fit() "
                            f"argument names to values. Received: {type(fit_args).__name__}")
        self._policy_args: dict[str, Any] = {
            "every": snapshot_every, "monitor": monitor, "mode": mode, "include": include,
            "exclude": exclude, "dtype": dtype, "where": "RecordCallback",
        }
        self._policy = SnapshotPolicy(**self._policy_args)  # checks the arguments now
        self.root = recorder.root if recorder is not None else root
        self.experiment = (recorder.experiment if recorder is not None and experiment is None
                           else experiment)
        self.name = name
        self.run_params = params  # Keras owns ``self.params`` (what fit() passes)
        self.snapshot_every = snapshot_every
        self.fit_args = dict(fit_args or {})
        self.skip_frozen = skip_frozen
        self._auto_resume = resume == "auto"
        self.on_error = on_error
        self.recorder_options = recorder_options
        self._given_recorder = recorder
        self._resume_next: str | os.PathLike[str] | None = None if resume == "auto" else resume
        self._recorder: Recorder | None = None
        self._record_path: str | None = None
        self._fit_thread: int | None = None  # set while a fit runs (or after one raised)
        self._continue_path: str | None = None  # the record of a fit that raised
        self._raised_path: str | None = None  # that record, closed when its cell ended
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        self._writes = True
        self._started = False  # the record of this fit exists
        self._epoch_started = 0.0
        self._last_logged: int | None = None
        self._snapshotted: int | None = None
        self._saw_validation = False
        self._first_epoch: int | None = None
        self._fit_call: dict[str, Any] = {}

    def __repr__(self) -> str:
        where = f"run at {self._record_path!r}" if self._record_path else "no run yet"
        return (f"<RecordCallback experiment={self.experiment!r} "
                f"snapshot_every={self.snapshot_every!r} ({where})>")

    @property
    def recorder(self) -> Recorder | None:
        """The recorder of the fit in progress (None on non-chief workers and between fits)."""
        return self._recorder

    @property
    def record_path(self) -> str | None:
        """Path of the record of the latest fit."""
        return self._record_path

    # --- Keras hooks --------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        continue_path, self._raised_path = self._raised_path, None
        if self._recorder is not None:  # the previous fit raised: Keras said nothing
            continue_path = self._record_path
            self._abandon("interrupted", "model.fit ended without on_train_end (an "
                          "exception left fit); the callback was used for another fit")
        self._reset_fit_state()
        self._fit_call = _fit_call_arguments(self.model)
        self._continue_path = continue_path
        self._fit_thread = threading.get_ident()
        self._writes = is_chief(_cluster_resolver(self.model))
        if self._writes:
            _watch(self)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._writes and not self._started:
            self._start(int(epoch))
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        rec = self._recorder
        if rec is None:
            return
        elapsed = time.perf_counter() - self._epoch_started
        metrics = _floats(logs or {})
        first_validation = not self._saw_validation and any(k.startswith("val_")
                                                            for k in metrics)
        if _LR not in metrics:
            lr = _learning_rate(self.model)
            if lr is not None:
                metrics[_LR] = lr
        metrics.setdefault(_EPOCH_TIME, elapsed)
        epochs = (self.params or {}).get("epochs")
        last = bool(self.model.stop_training) or (isinstance(epochs, int)
                                                  and epoch + 1 >= epochs)
        with self._guard(f"record epoch {epoch}"):
            rec.log(metrics, epoch=epoch)
            self._last_logged = epoch
            if first_validation:  # known from the first epoch that validates
                self._saw_validation = True
                rec.set_info({"fit": self._fit_facts()})
            if self._policy.due(epoch, metrics, last=last):
                self._snapshot(rec, epoch)
            rec.commit(wait=False)  # training goes on while the snapshot is written

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        rec = self._recorder
        self._fit_thread = None
        _unwatch(self)
        if rec is None:
            return
        with self._guard("close the record"):
            epoch = self._last_logged
            if epoch is not None and self._snapshotted != epoch:
                self._snapshot(rec, epoch)  # early stopping ended the fit after our hook
            elif epoch is not None and self._weights_changed_since_snapshot(rec):
                # e.g. EarlyStopping(restore_best_weights=True) ran its on_train_end first
                self._snapshot(rec, epoch)
                rec.set_info({"final_weights": (
                    f"the weights when fit() ended, which differ from those at the end of "
                    f"epoch {epoch} (a callback before RecordCallback changed them in "
                    "on_train_end, e.g. EarlyStopping(restore_best_weights=True)); the "
                    f"snapshot of epoch {epoch} holds them")})
            rec.set_info({"fit": self._fit_facts()})
            rec.close("completed")
        self._recorder = None

    # --- internals ----------------------------------------------------------------------

    def _start(self, first_epoch: int) -> None:
        self._started = True
        with self._guard("start the record"):
            resume, self._resume_next = self._resume_next, None
            given, self._given_recorder = self._given_recorder, None
            if resume is None and self._continue_path is not None and first_epoch > 0:
                resume = self._continue_path
            if resume is None and given is None and self._auto_resume and first_epoch > 0:
                resume = self._find_unfinished(first_epoch)
            if resume is not None:
                _release_abandoned(resolve_path(resume, Path(self.root), self.experiment))
            if given is not None:
                rec = given
            elif resume is not None:
                rec = Recorder(self.root, self.experiment, self.name, self.run_params,
                               resume=resume, **self.recorder_options)
            else:
                rec = Recorder(self.root, self.experiment, self.name, self.run_params,
                               **self.recorder_options)
            self._recorder = rec
            self._record_path = str(rec.path.resolve())
            self._first_epoch = first_epoch
            self._policy = SnapshotPolicy(**self._policy_args)
            if resume is not None or rec.last_epoch >= first_epoch:
                rec.rewind(first_epoch)  # the epochs from here on are trained again
            epochs = (self.params or {}).get("epochs")
            if isinstance(epochs, int) and epochs > first_epoch:
                rec.plan(snapshot_epochs=self._policy.planned_snapshots(epochs - first_epoch))
            rec.set_info(_run_info(self.model))
            rec.set_info({"fit": self._fit_facts()})

    def _fit_facts(self) -> dict[str, Any]:
        params = dict(self.params or {})
        facts: dict[str, Any] = dict(self._fit_call)
        facts.update({
            "epochs": params.get("epochs"),
            "steps_per_epoch": params.get("steps"),
            "verbose": params.get("verbose"),
            "initial_epoch": self._first_epoch,
            "validation": self._saw_validation,
        })
        facts.update(_plain(self.fit_args))
        facts["not_visible"] = [k for k in _HIDDEN_FIT_ARGS if k not in facts
                                and f"{k}_given" not in facts]
        return facts

    def _snapshot(self, rec: Recorder, epoch: int) -> None:
        weights = {_variable_name(v): v for v in self.model.weights}
        frozen: set[str] = set()
        if self.skip_frozen:  # frozen now, and not held by earlier snapshots of the record
            frozen = _frozen_paths(self.model) - set(rec.tensor_names)
        # Recorder.snapshot copies every tensor to host memory before it returns.
        rec.snapshot(weights, epoch=epoch, policy=self._policy, frozen=frozen)
        self._snapshotted = epoch

    def _weights_changed_since_snapshot(self, rec: Recorder) -> bool:
        """Whether the model's weights differ from the last snapshot (read back once at
        the end of fit: one read of the last snapshot, nothing per epoch)."""
        try:
            stored = rec.last_snapshot()  # queued snapshots are written first
        except RecordkitError:
            return False
        for variable in self.model.weights:
            name = _variable_name(variable)
            if name not in stored:
                continue
            value = np.asarray(keras.ops.convert_to_numpy(variable))
            if stored[name].shape != value.shape or stored[name].dtype != value.dtype:
                continue  # stored in another dtype (float16...): compare what can be
            if not np.array_equal(stored[name], value, equal_nan=True):
                return True
        return False

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

    def _abandon(self, status: str, error: BaseException | str) -> None:
        """Close the record of a fit that raised (Keras calls no hook then)."""
        rec, self._recorder = self._recorder, None
        self._fit_thread = None
        _unwatch(self)
        if rec is not None and not rec.closed:
            with contextlib.suppress(Exception):
                rec.close(status, error=error)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Apply ``on_error`` to a failure of the recorder."""
        try:
            yield
        except RecordkitError as err:
            if self.on_error == "raise":
                raise
            warnings.warn(f"recordkit: could not {what} ({err}); recording stops for the rest "
                          "of this run and training goes on (on_error='warn')",
                          RecordkitWarning, stacklevel=3)
            rec, self._recorder = self._recorder, None
            self._writes = False
            if rec is not None:
                with contextlib.suppress(RecordkitError):
                    rec.close("failed", error=f"recording stopped: {err}")

    def __del__(self) -> None:
        # Collected while its record is open: the fit that wrote it raised long ago.
        with contextlib.suppress(Exception):
            if getattr(self, "_recorder", None) is not None:
                self._abandon("interrupted", "model.fit ended without on_train_end (an "
                              "exception left fit); the callback was garbage-collected")


# --- a crashed fit: the process dies of an uncaught exception ------------------------------

_LIVE: weakref.WeakSet[RecordCallback] = weakref.WeakSet()
_previous_excepthook: Any = None


_ipython_shells: weakref.WeakSet[Any] = weakref.WeakSet()


def _watch(callback: RecordCallback) -> None:
    global _previous_excepthook
    if _previous_excepthook is None:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    _watch_ipython_cells()
    _LIVE.add(callback)


def _watch_ipython_cells() -> None:
    """IPython and Jupyter never call ``sys.excepthook``: the shell shows a cell's
    exception itself. Its public ``post_run_cell`` event closes what a fit of that cell
    left open. IPython is only looked up, never imported."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return
    try:
        shell = ipython.get_ipython()
        if shell is None or shell in _ipython_shells:
            return
        shell.events.register("post_run_cell", _after_ipython_cell)
        _ipython_shells.add(shell)
    except Exception:  # an IPython without events: the excepthook path stays
        return


def _after_ipython_cell(result: Any) -> None:
    """A cell has ended: a fit it ran on this thread is over, so a record it left open
    ended without ``on_train_end``: failed with the cell's exception, else interrupted
    (the exception was caught inside the cell)."""
    error = getattr(result, "error_in_exec", None)
    me = threading.get_ident()
    for callback in list(_LIVE):
        if callback._recorder is None or callback._fit_thread != me:
            continue
        callback._raised_path = callback._record_path  # a later fit may continue it
        if error is None:
            callback._abandon("interrupted", "model.fit ended without on_train_end (an "
                              "exception left fit and was caught in the notebook cell)")
        else:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            callback._abandon(status, error)


def _unwatch(callback: RecordCallback) -> None:
    _LIVE.discard(callback)


def _release_abandoned(path: Path) -> None:
    """Close the record at *path* when a callback of this process still holds it open
    from a fit of this thread that raised: this thread is starting a new fit, so that
    one is over."""
    me = threading.get_ident()
    for callback in list(_LIVE):
        held = callback._record_path
        if (callback._recorder is not None and callback._fit_thread == me and held
                and Path(held) == path.resolve()):
            callback._abandon("interrupted", "model.fit ended without on_train_end (an "
                              "exception left fit); another fit resumed the record")


def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    """An uncaught exception while a fit's record is open ended that fit: close the record
    as failed (interrupted for Ctrl-C) with the exception, then report it as usual."""
    status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
    for callback in list(_LIVE):
        if callback._recorder is not None:
            callback._abandon(status, exc)
    (_previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)


# --- distribution ------------------------------------------------------------------------


def _strategy_name(strategy: Any) -> str:
    """The name users write (``MultiWorkerMirroredStrategy``), not the class behind it
    (``CollectiveAllReduceStrategy``): TensorFlow's exported API name when the class has
    one of its own, else the class name."""
    exported = type(strategy).__dict__.get("_tf_api_names")
    if isinstance(exported, (tuple, list)) and exported and isinstance(exported[0], str):
        return exported[0].rsplit(".", 1)[-1]
    return type(strategy).__name__


def _cluster_resolver(model: Any) -> Any:
    strategy = getattr(model, "distribute_strategy", None)  # tensorflow backend only
    return getattr(strategy, "cluster_resolver", None) if strategy is not None else None


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


# --- framework objects → plain values ---------------------------------------------------


def _frozen_paths(model: Any) -> set[str]:
    """Paths of the weights of frozen layers (``trainable = False``), found through the
    public ``layers`` of models and of the layers that nest others."""
    frozen: set[str] = set()
    pending = list(getattr(model, "layers", []) or [])
    while pending:
        layer = pending.pop()
        if not getattr(layer, "trainable", True):
            frozen.update(_variable_name(v) for v in layer.weights)
        else:
            pending.extend(getattr(layer, "layers", []) or [])
    return frozen


#: Types a fit() argument read from fit's frame must have to be stored as a value.
_FIT_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "batch_size": (int, type(None)), "epochs": (int,), "initial_epoch": (int,),
    "steps_per_epoch": (int, type(None)), "shuffle": (bool, str),
    "validation_split": (float, int), "validation_steps": (int, type(None)),
    "validation_batch_size": (int, type(None)), "validation_freq": (int,),
}


def _fit_call_arguments(model: Any) -> dict[str, Any]:
    """The arguments of the ``model.fit`` call that is running, read from its frame.

    Keras passes callbacks ``epochs``, ``steps`` and ``verbose`` only. Its ``fit`` (the
    tensorflow, torch and jax trainers alike) calls ``on_train_begin`` from its own frame,
    whose local variables are then still fit's documented arguments as the user passed
    them. Nothing is read when no such frame is on the stack (a custom loop).
    """
    frame: FrameType | None = sys._getframe(1)
    try:
        for _ in range(64):
            if frame is None:
                return {}
            code = frame.f_code
            if (code.co_name == "fit" and "batch_size" in code.co_varnames
                    and frame.f_locals.get("self") is model):
                found = frame.f_locals
                # a value of an unexpected type means fit() changed: store nothing wrong
                facts = {k: _plain(found[k]) for k in _FIT_VALUE_ARGS
                         if k in found and isinstance(found[k], _FIT_ARG_TYPES[k])}
                facts.update({f"{k}_given": found[k] is not None
                              for k in _FIT_GIVEN_ARGS if k in found})
                return facts
            frame = frame.f_back
        return {}
    except Exception:  # reading the caller's frame must never stop a fit
        return {}
    finally:
        del frame


def _variable_name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or variable.name)


def _number(value: Any) -> float | None:
    try:
        array = keras.ops.convert_to_numpy(value)
        return float(array) if array.size == 1 else None
    except Exception:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None


def _floats(logs: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        number = value if isinstance(value, float) else _number(value)
        if number is not None:
            out[str(key)] = float(number)
    return out


def _learning_rate(model: Any) -> float | None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        return _number(optimizer.learning_rate)
    except Exception:  # an optimizer without a readable learning rate
        return None


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON-able values for info: numbers, strings, lists and dicts; anything else as repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 8:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if hasattr(value, "item") and getattr(value, "size", None) == 1:
        return _plain(value.item(), depth + 1)
    return repr(value)


def _json_or_none(value: Any) -> tuple[Any, str | None]:
    """*value* when it serialises to JSON as it is, else None and why."""
    try:
        json.dumps(value, allow_nan=False)
        return value, None
    except (TypeError, ValueError) as err:
        return None, f"{type(err).__name__}: {err}"


def _count(variables: Any) -> int:
    total = 0
    for v in variables:
        size = 1
        for dim in v.shape:
            size *= int(dim)
        total += size
    return total


def _optimizer_facts(optimizer: Any) -> dict[str, Any]:
    if optimizer is None:
        return {}
    facts: dict[str, Any] = {"class": type(optimizer).__name__}
    try:
        config = optimizer.get_config()
    except Exception as err:
        return {**facts, "config_error": f"{type(err).__name__}: {err}"}
    facts["config"] = _plain(config)
    lr = config.get("learning_rate")
    if isinstance(lr, Mapping):  # a schedule: its serialised config
        facts["learning_rate"] = _plain(lr)
    else:
        facts["learning_rate"] = _number(lr) if lr is not None else None
    return facts


def _names(value: Any) -> Any:
    """Loss / metric names from compile: strings kept, objects by their name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "class_name" in value:  # a serialised object
        config = value.get("config")
        name = config.get("name") if isinstance(config, Mapping) else None
        return str(name or value["class_name"])
    if isinstance(value, Mapping):
        return {str(k): _names(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_names(v) for v in value]
    name = getattr(value, "name", None) or getattr(value, "__name__", None)
    return str(name) if name else type(value).__name__


def _compile_facts(model: Any) -> dict[str, Any]:
    try:
        config = model.get_compile_config() or {}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    facts = {key: _names(value) for key, value in config.items()
             if key in ("loss", "metrics", "weighted_metrics")}
    for key in ("loss_weights", "run_eagerly", "steps_per_execution", "jit_compile"):
        if key in config:
            facts[key] = _plain(config[key])
    return facts


def _run_info(model: Any) -> dict[str, Any]:
    try:
        config, problem = _json_or_none(model.get_config())
    except Exception as err:  # subclassed models without get_config, and the like
        config, problem = None, f"{type(err).__name__}: {err}"
    trainable = _count(model.trainable_weights)
    total = _count(model.weights)
    model_facts: dict[str, Any] = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name": getattr(model, "name", None),
        "parameters": total,
        "trainable_parameters": trainable,
        "non_trainable_parameters": total - trainable,
        "config": config,
    }
    if problem is not None:
        model_facts["config_error"] = problem
    strategy = getattr(model, "distribute_strategy", None)
    resolver = _cluster_resolver(model)
    distribution = {
        "strategy": _strategy_name(strategy) if strategy is not None else None,
        "replicas": int(getattr(strategy, "num_replicas_in_sync", 1) or 1),
        "task_type": getattr(resolver, "task_type", None),
        "task_id": getattr(resolver, "task_id", None),
    }
    try:
        compile_facts = _compile_facts(model)
    except Exception as err:  # compile facts must never stop a run
        compile_facts = {"error": f"{type(err).__name__}: {err}"}
    return {
        "framework": f"keras {keras.__version__} ({keras.backend.backend()})",
        "model": model_facts,
        "optimizer": _optimizer_facts(getattr(model, "optimizer", None)),
        "compile": compile_facts,
        "distribution": _plain(distribution),
    }

