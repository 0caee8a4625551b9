"""PyTorch Lightning: one callback records the whole run.

``Trainer(callbacks=[RecordCallback("records")])`` records the hyperparameters (the
module's and the datamodule's ``hparams``), trainer facts, optimizers and schedulers once;
every epoch-level metric, the learning rates and the epoch wall time per epoch; and a
snapshot of the full ``state_dict`` every ``snapshot_every`` epochs (the final epoch always).

The same class works with ``lightning.pytorch`` and with ``pytorch_lightning``: it
subclasses the ``Callback`` of each package that imports, so each Trainer accepts it.

Choices worth knowing:

- Epoch history holds the metrics logged with ``on_epoch=True`` (Lightning's default in
  validation and epoch-end hooks), under the name given to ``self.log``: ``History["x"]``
  has one row per epoch. Values measured more often are step rows of ``x_step``, each
  with its step: a metric's step values (``on_step=True``) with ``log_steps`` (on by
  default), and each validation's values when validations run inside epochs
  (``val_check_interval``; from the first such validation on, every validation of the
  fit, the earlier ones too; the epoch row keeps the epoch's last validation).
- A metric logged per step only (``self.log("train_loss", loss)`` in ``training_step``:
  Lightning's default there is ``on_step=True, on_epoch=False``) gets ``train_loss_step``
  rows and an epoch-level ``train_loss``: the plain mean of its values over the epoch's
  batches (Lightning's own ``on_epoch=True`` mean weights batches by their size: the two
  differ when the last batch is short). With ``log_steps=False`` it is left out, with one
  warning naming it.
- The ``step`` of rows and snapshots is the number of training batches done in the fit
  (the running one included); it is ``trainer.global_step`` for one optimizer without
  gradient accumulation. Under ``accumulate_grad_batches`` > 1 or manual optimization,
  where optimizer steps and batches differ, each step row also has a ``global_step`` row
  holding ``trainer.global_step``. Lightning's loggers write the batches stepped *before*
  the one just done: CSVLogger's ``step`` column is one less than recordkit's.
- ``validate()`` / ``test()`` on the trainer after ``fit`` reopen the fit's record (it was
  closed as completed at the end of fit) as evaluations (``Recorder(evaluation=stage)``:
  ``Record.restarts`` leaves them out), add their metrics at the record's last epoch and
  close it again with its earlier status. ``Record.evaluations`` (``info["evaluations"]``)
  lists every call in order, each with its stage, epoch, time and ``results``; a metric
  that already has a row at that epoch (``validate()`` re-measuring a fit metric) is not
  logged twice; ``Record.extras["validate"]`` / ``["test"]`` hold the latest results of
  each stage.
- Per epoch the record also holds ``lr-<Optimizer>`` (the learning rate at the epoch's
  start, named as Lightning's LearningRateMonitor names it) and ``epoch_time`` (wall
  seconds from the epoch's start to its end, validation included).
- ``fit()`` called again on the same Trainer (after raising ``fit_loop.max_epochs``)
  continues the record of its previous fit; one that has no epoch left to train records
  nothing. ``Trainer(fast_dev_run=...)`` records nothing (as Lightning's loggers), saying
  so once.
- Resuming with ``fit(ckpt_path=...)`` reopens the record named in the checkpoint (the
  callback's ``state_dict``), drops what it holds from the restored epoch on and goes on.
- Only global rank zero writes (in a Ray Train worker, world rank zero). Metrics are
  read on every rank, so that the collective calls a metric with ``sync_dist=True`` makes
  happen in the same order everywhere. Under ``FSDPStrategy`` every rank takes part in
  gathering each snapshot (rank zero writes); DeepSpeed and ``ModelParallelStrategy`` are
  refused at ``setup`` (``recordkit.integrations._lightning_sharded``).
- Each kind of warning is shown once per process, at the user's line that called
  ``fit``, and names no run (a sweep of 100 fits prints it once).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.errors import RecordkitError
from recordkit.integrations import _lightning_facts as facts
from recordkit.integrations import _lightning_sharded as sharded
from recordkit.integrations._common import (
    FitState,
    RecordingCallback,
    check_callback_arguments,
    metric_floats,
    status_for_exception,
)
from recordkit.integrations._lightning_metrics import (
    epoch_values,
    late_epoch_values,
    running_loop_metrics,
    step_values,
    written_since,
)
from recordkit.integrations._lightning_warnings import warn_once
from recordkit.recorder import Recorder, ray_train_rank

__all__ = ["RecordCallback"]


_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _not_installed(err: ImportError, package: str) -> bool:
    """Whether *err* says *package* itself is absent (not that importing it failed)."""
    missing = getattr(err, "name", None)
    top = package.split(".")[0]
    return isinstance(err, ModuleNotFoundError) and missing in (top, package)


def _callback_bases() -> tuple[type, ...]:
    bases: list[type] = []
    errors: list[ImportError] = []
    for package in _PACKAGES:
        try:
            bases.append(importlib.import_module(package).Callback)
        except ImportError as err:
            errors.append(err)
            if not _not_installed(err, package):
                # Installed, but its import raised: a module of the user's shadowing one
                # of its dependencies, a broken install... "pip install" would not help.
                raise ImportError(
                    f"recordkit.integrations.lightning: {package} is installed but "
                    f"importing it failed ({type(err).__name__}: {err}); the cause below "
                    "says why (a module of yours named like one of its dependencies, on "
                    f"sys.path before site-packages, does this: {sys.path[:3]})"
                ) from err
    if not bases:
        raise ModuleNotFoundError(
            "recordkit.integrations.lightning needs PyTorch Lightning (lightning or "
            "pytorch_lightning): pip install 'recordkit[lightning]'"
        ) from errors[-1]
    return tuple(bases)


_BASES = _callback_bases()
# One base class that is a Callback of every installed package (each Trainer checks
# isinstance against its own package's Callback).
_LightningCallback: Any = (_BASES[0] if len(_BASES) == 1
                           else type("_LightningCallback", _BASES, {}))


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return metric_floats(metrics, facts.torch_scalar)


#: (epoch, step, {name: value}) of one step row or one validation.
_Row = tuple[int, int, dict[str, float]]


@dataclass
class _LightningFit(FitState):
    """What one ``fit`` / ``validate`` / ``test`` holds, from ``setup`` on."""

    stage: str = ""
    resumed: bool = False  # the record was continued (a checkpoint, or fit() again)
    epoch_start_metrics: dict[str, Any] = field(default_factory=dict)
    eval_start_metrics: dict[str, Any] = field(default_factory=dict)
    eval_ended: bool = False  # a validation's batches are done; on_validation_end not run
    val_metrics: dict[str, float] = field(default_factory=dict)
    val_epoch: int | None = None  # the epoch of the validation val_metrics hold
    epoch_end_metrics: dict[str, Any] = field(default_factory=dict)
    open_epoch: int | None = None  # ended but may still get late metrics
    logged: set[str] = field(default_factory=set)  # metric names logged for open_epoch
    steps: list[_Row] = field(default_factory=list)  # step rows not written yet
    last_read: dict[str, Any] = field(default_factory=dict)  # callback_metrics, latest copy
    step_sums: dict[str, tuple[float, int]] = field(default_factory=dict)  # per step only
    optimizer_steps: bool = False  # global_step may differ from the batches: kept too
    epoch_batches: int = 0  # batches of the running epoch so far
    validations: list[_Row] = field(default_factory=list)  # every validation of the fit
    validations_written: int = 0
    inside: bool = False  # a validation ran inside an epoch: each gets x_step rows
    validated: bool = False  # the open epoch had a validation
    monitor_checked: bool = False
    snapshot_step: int | None = None  # the step of the latest snapshot
    warned: set[str] = field(default_factory=set)
    sharding: str | None = None  # "fsdp": snapshots are gathered by every rank
    ended_epoch: int | None = None  # the latest epoch whose end hook ran (every rank)
    finished: bool = False  # on_train_end ran: teardown has nothing left to gather


class RecordCallback(RecordingCallback, _LightningCallback):
    """Records a Lightning run into ``<root>/<experiment>/<run_id>.h5``.

    Args:
        root: folder of records.
        experiment: sub-folder; ``"default"`` when None.
        name: a label for the run (the run id when None).
        params: extra hyperparameters, merged before the module's and datamodule's
            ``hparams``.
        snapshot_every: a positive int N (every N-th epoch), None (the last epoch only),
            ``"best"`` (each epoch where *monitor* improves) or ``"validation"`` (at each
            validation, with its step: validations inside an epoch give that epoch
            several snapshots, :attr:`~recordkit.Record.snapshot_steps` tells them
            apart). The final epoch is always snapshotted.
        monitor: the metric ``snapshot_every="best"`` watches; a name that no epoch logs
            raises :class:`~recordkit.errors.RecordkitError` (listing the names logged) at
            the end of the first epoch with a validation, as ModelCheckpoint does.
        mode: ``"min"`` or ``"max"``: which direction of *monitor* is better.
        include: glob pattern(s) of state_dict keys to snapshot (all when None).
        exclude: glob pattern(s) of state_dict keys to leave out.
        dtype: storage dtype of floating tensors: ``"keep"``, ``"float16"``,
            ``"bfloat16"``.
        skip_frozen: leave out parameters that do not train (``requires_grad=False``,
            e.g. a frozen backbone): a parameter frozen for the whole run is never stored;
            one unfrozen later is stored from then on; one that trained and is frozen
            later keeps being stored. Buffers are always stored.
        recorder: an open :class:`~recordkit.Recorder` to record the first fit into; the
            callback closes it when the fit ends. Later fits create records in its root.
        resume: path or run id of a record the first fit continues (a ``ckpt_path``
            given to ``fit`` continues its own record without this). The record is
            rewound to the epoch the trainer starts at: without a checkpoint that is
            epoch 0, and what the record held is replaced.
        log_steps: record step-level metrics too, as ``<name>_step`` rows: True every
            step, an int N every N-th step, False none (metrics logged per step only are
            then left out, with one warning). They are buffered in memory and written at
            the epoch's commit. A metric logged per step only also gets an epoch-level
            ``<name>``: the mean of its values over the epoch's steps.
        on_error: ``"raise"`` stops training when recording fails; ``"warn"`` warns,
            closes the record as failed and lets training go on unrecorded.
        trial: an Optuna ``Trial`` whose fit this is (``Recorder``'s ``trial``): its
            params, number, study and storage are recorded; a ``TrialPruned`` raised in
            the fit (Optuna's pruning callback) closes the record ``pruned``.
        **recorder_options: keyword options of :class:`~recordkit.Recorder` (``durable``,
            ``system``, ``compression``, ...).

    Raises:
        ValueError, TypeError: an argument is out of range, named with what was received.

    Example:
        >>> import tempfile
        >>> callback = RecordCallback(tempfile.mkdtemp(), experiment="demo", snapshot_every=2)
        >>> callback
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
        log_steps: bool | int = True,
        on_error: str = "raise",
        trial: Any = None,
        **recorder_options: Any,
    ) -> None:
        super().__init__()
        check_callback_arguments(
            root=root, experiment=experiment, name=name, monitor=monitor, params=params,
            skip_frozen=skip_frozen, recorder=recorder, resume=resume, on_error=on_error,
            recorder_options=recorder_options, trial=trial)
        if log_steps is not False and (not isinstance(log_steps, int) or log_steps < 1):
            raise ValueError(f"RecordCallback(log_steps={log_steps!r}): must be True, False "
                             f"or a positive int (every N-th step). Received: {log_steps!r}")
        self._init_recording(
            root=root, experiment=experiment, name=name, snapshot_every=snapshot_every,
            monitor=monitor, mode=mode, include=include, exclude=exclude, dtype=dtype,
            skip_frozen=skip_frozen, recorder=recorder, resume=resume, on_error=on_error,
            recorder_options=recorder_options, trial=trial)
        self.params = params
        self.log_steps = int(log_steps)
        self._trainer: int | None = None  # id() of the Trainer of the latest fit
        self._policy_state: dict[str, Any] | None = None  # from a checkpoint
        self._fit: _LightningFit = _LightningFit()

    def _warn(self, kind: str, message: str) -> None:
        """Each kind of warning once per process, at the user's line (a sweep of many
        fits in one process warns once)."""
        warn_once(kind, message)

    @property
    def state_key(self) -> str:
        """Tells this callback's checkpoint state from that of another RecordCallback on the
        same Trainer (Lightning refuses two stateful callbacks with one key): the
        experiment and name, which stay the same when a run resumes on another machine
        (the root may not). Without either, the plain class name of earlier versions.

        Raises:
            RecordkitError: asked by Lightning's check of the Trainer's callbacks when
                another RecordCallback there has the same experiment and name (both None
                included): the error says to pass ``name=``.
        """
        _refuse_twins(self)
        if self.experiment is None and self.name is None:
            return type(self).__qualname__
        return (f"{type(self).__qualname__}{{'experiment': {self.experiment!r}, "
                f"'name': {self.name!r}}}")

    # --- Lightning hooks: setup and teardown ------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close_quietly()  # a callback reused for a second fit starts a new record
        # in a Ray Train worker, world rank zero only, whatever strategy each worker runs
        self._fit = _LightningFit(stage=stage, writes=bool(trainer.is_global_zero)
                                  and ray_train_rank() in (None, 0))
        if trainer.fast_dev_run:
            self._fit.writes = False
            warn_once("fast_dev_run", (
                "recordkit: Trainer(fast_dev_run=...) is a trial of the code, not a run: "
                "RecordCallback records nothing (as Lightning's loggers log nothing)"))
            return
        self._fit.sharding = sharded.check_strategy(trainer, self.root)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._fit.writes:
            return
        with self._guard("start the record"):
            resume, self._resume_next = self._resume_next, None
            given, self._given_recorder = self._given_recorder, None
            # A Trainer starts at epoch 0 (a checkpoint's epoch is restored after this
            # hook), so a later epoch here means this Trainer was fit before.
            again = (self._trainer == id(trainer) and int(trainer.current_epoch) > 0
                     and self._record_path is not None)
            self._trainer = id(trainer)
            if resume is None and given is None and again:
                # fit() again on the same Trainer goes on from its epoch: the same run
                if facts.no_epoch_left(trainer):
                    return  # nothing will be trained: the record stays as it is
                resume = self._record_path
            rec = self._open_record(self.params, resume=resume, given=given)
            self._fit.resumed = resume is not None
            if self._fit.resumed and self._policy_state:
                self._policy.load_state_dict(self._policy_state)
            self._policy_state = None
            rec.extend(facts.hparams(pl_module, trainer))
            rec.set_info(facts.run_info(trainer, pl_module))
            cli = facts.cli_config(trainer)
            if cli is not None:  # LightningCLI: what the run was started with
                rec.set_info({"cli_config": cli[0]})
                rec.add("cli_config.yaml", cli[1])

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._fit.optimizer_steps = facts.optimizer_steps_differ(trainer, pl_module)
        rec = self._recorder
        if rec is None:
            return
        start = int(trainer.current_epoch)
        with self._guard("prepare the record"):
            if self._fit.resumed:
                rec.rewind(start)  # the epochs from here on are trained again
            self._plan_snapshots(rec, trainer.max_epochs, start)
            data = facts.data_facts(trainer)  # the loaders exist from this hook on
            if data:
                rec.set_info({"data": data})

    def state_dict(self) -> dict[str, Any]:
        if not self._record_path:
            return {}
        return {"record_path": self._record_path, "run_id": Path(self._record_path).stem,
                "snapshot_policy": self._policy.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        path = state_dict.get("record_path")
        if path:
            # The run id finds the record under root when the path no longer exists (a
            # checkpoint resumed on another machine, or a moved folder).
            self._resume_next = path if Path(path).exists() else state_dict.get("run_id", path)
            self._policy_state = state_dict.get("snapshot_policy")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        rec = self._recorder
        if rec is None:
            return
        with self._guard("close the record"):
            self._finish_epoch(trainer, pl_module)
            # Waits for the last snapshot (close would wait as long) and raises the
            # writer's error before the run is closed: a failed last snapshot stops the
            # run as on_error says instead of closing it as completed.
            rec.commit()
            rec.close("completed")
        self._recorder = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        rec = self._recorder
        if rec is None:
            return
        status = status_for_exception(exception)  # failed, interrupted or pruned
        try:
            if self._fit.open_epoch is not None:
                self._log_late_metrics(trainer)
            self._finish_cut_validation(trainer, pl_module, rec)
            self._write_steps(rec)  # the steps and validations of the epoch that crashed
            rec.close(status, error=exception)
        except RecordkitError as err:  # never hide the exception that ended training
            warn_once("close after an exception",
                      f"recordkit: could not close {self._record_path!r} as {status}: {err}")
        self._recorder = None

    def _finish_cut_validation(self, trainer: Any, pl_module: Any, rec: Recorder) -> None:
        """Record the validation of an epoch that an exception cut after it: Optuna's
        pruning callback raises ``TrialPruned`` in ``on_validation_end``, with the value
        that pruned the trial. When the callback raising came before this one, this
        one's ``on_validation_end`` runs now (the validation's batches were done, its
        ``on_validation_epoch_end`` ran, and its values are in ``callback_metrics``). A
        validation at the end of the epoch's batches is the epoch's row, as
        ``on_train_epoch_end`` would have logged it."""
        fit = self._fit
        if fit.stage != "fit":
            return
        if fit.eval_ended:
            self.on_validation_end(trainer, pl_module)
        epoch = int(trainer.current_epoch)
        if (fit.val_metrics and fit.val_epoch == epoch and fit.ended_epoch != epoch
                and fit.epoch_batches >= trainer.num_training_batches):
            with self._guard(f"record the validation of epoch {epoch}"):
                rec.log(fit.val_metrics, epoch=epoch)

    # --- Lightning hooks: one epoch ---------------------------------------------------

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        fit = self._fit
        metrics = dict(trainer.callback_metrics)
        if fit.open_epoch is not None:
            self._log_late_metrics(trainer, metrics)
        if fit.ended_epoch is not None:
            self._check_monitor(trainer, metrics, fit.ended_epoch)
        fit.epoch_start_metrics, fit.val_metrics, fit.last_read = metrics, {}, metrics
        fit.epoch_batches, fit.step_sums, fit.validated = 0, {}, False
        fit.epoch_started = time.perf_counter()
        rec = self._recorder
        if rec is None:
            return
        with self._guard("log the learning rates"):
            rec.log(facts.learning_rates(trainer), epoch=int(trainer.current_epoch))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        fit = self._fit
        fit.epoch_batches += 1
        if not self.log_steps or self._recorder is None:
            return
        step = facts.batches_done(trainer)
        # One read: each read puts new objects under the running loop's names only, so
        # what differs from the previous read (this hook's, or the epoch start's, or the
        # latest validation's end) is what running_loop_metrics' two reads would name.
        now = dict(trainer.callback_metrics)
        fresh, fit.last_read = written_since(fit.last_read, now), now
        rows: dict[str, float] = {}
        for name, value in _floats(step_values(fresh)).items():
            if name.endswith("_step"):  # logged with on_epoch=True too: x is the epoch's
                rows[name] = value
                continue
            rows[f"{name}_step"] = value  # per step only: x_step rows, x the epoch mean
            total, count = fit.step_sums.get(name, (0.0, 0))
            fit.step_sums[name] = (total + value, count + 1)
        if not rows or step % self.log_steps:
            return
        if fit.optimizer_steps:
            rows.setdefault("global_step", float(trainer.global_step))
        fit.steps.append((int(trainer.current_epoch), step, rows))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._fit.eval_start_metrics = dict(trainer.callback_metrics)
            self._fit.eval_ended = False

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # every batch done and its epoch-level values in callback_metrics
        self._fit.eval_ended = not trainer.sanity_checking

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._fit.eval_ended = False
        now = dict(trainer.callback_metrics)
        fresh, self._fit.last_read = written_since(self._fit.eval_start_metrics, now), now
        if self._fit.stage != "fit":
            self._record_evaluation(trainer, pl_module, "validate", fresh)
            return
        fit = self._fit
        values = _floats(fresh)
        fit.val_metrics.update(values)  # the epoch's row keeps its last validation
        fit.val_epoch = int(trainer.current_epoch)
        fit.validated = True
        rec = self._recorder
        if self._fit.sharding and self._policy.at_validation:
            due = sharded.agree(trainer, rec is not None)
        else:
            due = rec is not None and self._policy.at_validation
        if rec is None and not due:
            return
        epoch, step = int(trainer.current_epoch), facts.batches_done(trainer)
        if rec is not None:
            fit.validations.append((epoch, step, values))
            if fit.epoch_batches < trainer.num_training_batches:
                fit.inside = True  # from here on each validation gets x_step rows
        if due:
            with self._guard(f"snapshot the validation at step {step}"):
                self._snapshot_module(rec, trainer, pl_module, epoch, step)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._fit.eval_start_metrics = dict(trainer.callback_metrics)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        fresh = written_since(self._fit.eval_start_metrics, trainer.callback_metrics)
        self._record_evaluation(trainer, pl_module, "test", fresh)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        fit = self._fit
        fresh = running_loop_metrics(trainer)
        now = dict(trainer.callback_metrics)
        epoch = int(trainer.current_epoch)
        metrics = {**_floats(epoch_values(fresh)), **fit.val_metrics}
        for name, (total, count) in fit.step_sums.items():
            metrics.setdefault(name, total / count)  # a metric logged per step only
        fit.epoch_end_metrics, fit.ended_epoch = now, epoch
        self._warn_step_only(now, set(fresh) | set(metrics))
        rec = self._recorder
        step = facts.batches_done(trainer)
        if rec is not None:
            metrics.setdefault("epoch_time", time.perf_counter() - fit.epoch_started)
            with self._guard(f"record epoch {epoch}"):
                self._write_steps(rec)
                rec.log(metrics, epoch=epoch)
                fit.logged, fit.open_epoch = set(metrics), epoch
                # The rows are committed before the snapshot is queued: the writer holds
                # the run's lock while it writes a slice, and a commit made after queueing
                # waited for it (a whole tensor's slice at the last epoch). The writer
                # commits the snapshot itself; training goes on while it is written.
                rec.commit(wait=False)
        due = (self._recorder is not None
               and self._policy.due(epoch, metrics, last=facts.is_last_epoch(trainer))
               and (fit.snapshotted, fit.snapshot_step) != (epoch, step))
        if fit.sharding:
            due = sharded.agree(trainer, due)  # every rank gathers, or none
        if due:
            with self._guard(f"snapshot epoch {epoch}"):
                self._snapshot_module(self._recorder, trainer, pl_module, epoch, step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._fit.ended_epoch is not None:
            self._check_monitor(trainer, trainer.callback_metrics, self._fit.ended_epoch)
        self._finish_epoch(trainer, pl_module)
        self._fit.finished = True  # every rank took part in the last snapshot's gather

    # --- evaluation after fit ----------------------------------------------------------

    def _record_evaluation(self, trainer: Any, pl_module: Any, stage: str,
                           fresh: Mapping[str, Any]) -> None:
        if not self._fit.writes or not fresh:
            return
        results = _floats(fresh)
        with self._guard(f"record the {stage} results"):
            path = self._record_path
            # A checkpoint's record (validate/test with ckpt_path) serves this evaluation
            # only: a later fit without ckpt_path must start a record of its own.
            resume = path if path is not None else self._resume_next
            self._resume_next, self._policy_state = None, None
            if resume is not None:
                rec = Recorder(self.root, resume=resume, evaluation=stage,
                               **self.recorder_options)
                status, error = rec.previous_status, rec.previous_error
                evaluations = list(rec.info.get("evaluations", []))
            else:  # an evaluation on its own: a record of its own
                status, error, evaluations = "completed", "", []
                rec = Recorder(self.root, self.experiment, self.name, self.params,
                               trial=self.trial, **self.recorder_options)
                rec.extend(facts.hparams(pl_module, trainer))
                rec.set_info(facts.run_info(trainer, pl_module))
            self._record_path = str(rec.path.resolve())
            epoch = max(rec.last_epoch, 0)
            logged = rec.metrics_at(epoch)
            new = {k: v for k, v in results.items() if k not in logged}
            evaluations.append({"stage": stage, "epoch": epoch, "time": time.time(),
                                "metrics": sorted(results), "results": results})
            try:
                rec.log(new, epoch=epoch)
                rec.add(stage, results)  # the latest results of this stage
                rec.set_info({"evaluations": evaluations})
            finally:  # back to the status the run had before (completed, or failed...)
                rec.close(status or "completed", error=error or None)

    # --- internals ---------------------------------------------------------------------

    def _snapshot_module(self, rec: Recorder | None, trainer: Any, pl_module: Any,
                         epoch: int, step: int) -> None:
        """Snapshot the module at (*epoch*, *step*); under a sharded strategy every rank
        calls this (the gather is collective) and only the writing rank has *rec*."""
        if self._fit.sharding:
            state = sharded.full_state_dict(trainer, pl_module)
        else:
            state = pl_module.state_dict()
        if rec is None:
            return
        if self._fit.sharding and self._fit.snapshotted is None:
            # run_info counted this rank's shards: count the gathered parameters
            rec.set_info({"model": sharded.model_facts(pl_module, state)})
        self._snapshot(rec, state, epoch, step=step,
                       frozen_now=lambda: {name for name, p in pl_module.named_parameters()
                                           if not p.requires_grad})
        self._fit.snapshot_step = step

    def _finish_epoch(self, trainer: Any, pl_module: Any) -> None:
        """Log what the last epoch logged after this callback's epoch-end hook and make sure
        it has a snapshot (early stopping decides after this callback that it was last)."""
        fit = self._fit
        if fit.finished:
            return
        rec = self._recorder
        epoch = fit.open_epoch
        missing = rec is not None and epoch is not None and fit.snapshotted != epoch
        if fit.sharding:
            missing = sharded.agree(trainer, missing)
        if rec is None and not missing:
            return
        if epoch is not None:
            self._log_late_metrics(trainer)  # commits what it logs
        if missing:
            with self._guard(f"snapshot the last epoch {epoch}"):
                # committed by the writer; its error is raised by teardown's commit
                self._snapshot_module(rec, trainer, pl_module,
                                      -1 if epoch is None else epoch,
                                      facts.batches_done(trainer))

    def _log_late_metrics(self, trainer: Any, now: Mapping[str, Any] | None = None) -> None:
        """Metrics logged in ``LightningModule.on_train_epoch_end`` come after this
        callback's hook (Lightning calls callbacks first); they are added to the epoch
        when the next hook runs."""
        fit = self._fit
        epoch, fit.open_epoch = fit.open_epoch, None
        rec = self._recorder
        if rec is None or epoch is None:
            return
        if now is None:
            now = dict(trainer.callback_metrics)
        late = late_epoch_values(fit.epoch_end_metrics, now, fit.logged)
        if late:
            with self._guard(f"record epoch {epoch}"):
                rec.log(_floats(late), epoch=epoch)
                rec.commit(wait=False)

    def _check_monitor(self, trainer: Any, now: Mapping[str, Any], epoch: int) -> None:
        """Raise when ``snapshot_every="best"`` watches a name no epoch logs: once the
        first epoch that had a validation (or the first epoch, when the module has no
        validation) is complete, as ModelCheckpoint and EarlyStopping do; a configuration
        error raises whatever ``on_error`` says. Every rank checks the same names (those
        of ``callback_metrics``, the learning rates and ``epoch_time``), so every rank
        raises."""
        fit = self._fit
        monitor = self._policy.monitor
        if fit.monitor_checked or self._policy.every != "best" or monitor is None:
            return
        if not fit.validated and self._runs_validation(trainer):
            return  # its validation metrics are not there yet
        fit.monitor_checked = True
        names = set(now) | set(facts.learning_rates(trainer)) | {"epoch_time"}
        if monitor not in names:
            raise RecordkitError(
                f"RecordCallback(snapshot_every='best', monitor={monitor!r}): no metric "
                f"{monitor!r} was logged by the end of epoch {epoch}; the metrics logged "
                f"are {sorted(names)} (record {self._record_path!r}); pass one of them")

    def _runs_validation(self, trainer: Any) -> bool:
        module = trainer.lightning_module
        return (module is not None and facts.overrides(module, "validation_step")
                and trainer.limit_val_batches != 0)

    def _write_steps(self, rec: Recorder) -> None:
        fit = self._fit
        for epoch, step, values in fit.steps:
            rec.log(values, epoch=epoch, step=step)
        fit.steps = []
        if fit.inside:  # each validation as x_step rows, the earlier ones of the fit too
            for epoch, step, values in fit.validations[fit.validations_written:]:
                rec.log({f"{k}_step": v for k, v in values.items()}, epoch=epoch, step=step)
            fit.validations_written = len(fit.validations)

    def _warn_step_only(self, now: Mapping[str, Any], epoch_level: set[str]) -> None:
        if self.log_steps:
            return
        warned = self._fit.warned
        changed = written_since(self._fit.epoch_start_metrics, now)
        step_only = sorted(k for k in changed if k not in epoch_level
                           and k not in warned and not k.endswith(("_step", "_epoch")))
        if step_only and self._recorder is not None:
            warned.update(step_only)
            warn_once(f"step_only {step_only}", (
                f"recordkit: metric(s) {step_only} are logged per step only "
                "(self.log(..., on_epoch=False), the default in training_step) and "
                "RecordCallback(log_steps=False) leaves them out of the record; "
                "log_steps=True (the default) records them"))

    def _close_quietly(self) -> None:
        rec, self._recorder = self._recorder, None
        if rec is not None and not rec.closed:
            rec.close("interrupted", error="the callback was set up again before the "
                      "run ended")


def _refuse_twins(callback: RecordCallback) -> None:
    """Lightning asks each stateful callback's ``state_key`` in its check of the Trainer's
    callbacks (``_validate_callbacks_list(callbacks)``) and raises a generic "must be
    unique" error on a repeat. When that check is the caller and another RecordCallback
    with the same experiment and name is among its callbacks, say what to do instead.
    Only the caller's arguments are read; another caller gets the key."""
    caller = sys._getframe(2)  # 0: here, 1: state_key, 2: who asked
    if caller.f_code.co_name != "_validate_callbacks_list":
        return
    callbacks = caller.f_locals.get("callbacks")
    if not isinstance(callbacks, list):
        return
    same = (callback.experiment, callback.name)
    twins = [cb for cb in callbacks
             if isinstance(cb, RecordCallback) and (cb.experiment, cb.name) == same]
    if len(twins) < 2:
        return
    given = ("without experiment= or name=" if same == (None, None)
             else f"with experiment={same[0]!r} and name={same[1]!r}")
    raise RecordkitError(
        f"Trainer(callbacks=[...]) holds {len(twins)} RecordCallbacks {given}: their "
        "checkpoint states would share one key; pass a different name= (or experiment=) "
        "to each, e.g. RecordCallback(root, name='full') and RecordCallback(root, "
        "name='light')")
