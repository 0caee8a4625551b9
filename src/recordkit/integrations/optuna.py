"""Optuna: a study callback that completes the record of every trial.

``study.optimize(objective, callbacks=[RecordStudy("records")])``: when a trial ends,
optuna calls the study's callbacks in the process that ran it, and :class:`RecordStudy`
then

- takes the records this process opened for the trial (a callback or a ``Recorder``
  given ``trial=trial``), closes one still open (a Keras fit left by
  ``optuna.TrialPruned`` raised, so Keras closed nothing) with the trial's state, and
  adds the trial's state, objective value and final params to ``info["optuna"]``,
  reopening a closed record for it (``Recorder(resume=...)``, which copies the file
  once: cheap for the records of a sweep, a cost for records of gigabytes of weights);
- records a trial whose objective used no recordkit callback: a small record of its
  params, its intermediate values (history ``intermediate_value``, by step) and the
  same ``info["optuna"]``.

A record's status follows the trial: ``completed``, ``pruned`` (``TrialState.PRUNED``),
``failed`` (``TrialState.FAIL``; the record's error is the exception that left its
``with`` block or fit, else a note that optuna failed the trial). The trial's number,
study and storage URL (password masked) are in every such record, so a table of the
records joins the study's ``trials_dataframe()`` by (study, trial number).
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import optuna
except ImportError as err:  # pragma: no cover - exercised without optuna installed
    raise ModuleNotFoundError(
        "recordkit.integrations.optuna needs Optuna: pip install 'recordkit[sweeps]'"
    ) from err

from recordkit.integrations._common import reclose_record
from recordkit.recorder import Recorder, storage_url, take_trial_records

__all__ = ["RecordStudy", "trial_status"]

_STATUS = {
    optuna.trial.TrialState.COMPLETE: "completed",
    optuna.trial.TrialState.PRUNED: "pruned",
    optuna.trial.TrialState.FAIL: "failed",
}


def trial_status(state: optuna.trial.TrialState) -> str:
    """The record status of a trial that ended in *state*.

    Example:
        >>> trial_status(optuna.trial.TrialState.PRUNED)
        'pruned'
    """
    return _STATUS.get(state, "interrupted")


class RecordStudy:
    """A study callback: ``study.optimize(objective, callbacks=[RecordStudy("records")])``
    completes the record of each trial when it ends (see the module's notes).

    Args:
        root: folder of records: where the trials recorded without a recordkit callback
            go (those recorded with one stay where they are).
        experiment: their experiment; the study's name when None.
        **recorder_options: keyword options of :class:`~recordkit.Recorder`
            (``durable``, ``system``...) for the records it writes.

    Example:
        >>> import tempfile
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> root = tempfile.mkdtemp()
        >>> study = optuna.create_study(study_name="demo")
        >>> study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=2,
        ...                callbacks=[RecordStudy(root, system=False)])
        >>> import recordkit as rk
        >>> [r.info["optuna"]["trial"] for r in rk.load_all(root)]
        [0, 1]
    """

    def __init__(self, root: str | os.PathLike[str] = "records",
                 experiment: str | None = None, **recorder_options: Any) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"RecordStudy(root={root!r}): must be a folder path (str or "
                            f"os.PathLike). Received: {type(root).__name__}")
        if experiment is not None and not isinstance(experiment, str):
            raise TypeError(f"RecordStudy(experiment={experiment!r}): must be a str or "
                            f"None. Received: {type(experiment).__name__}")
        for name in ("resume", "evaluation", "trial", "params", "name"):
            if name in recorder_options:
                raise TypeError(f"RecordStudy({name}=...): not an option of RecordStudy")
        self.root = Path(root)
        self.experiment = experiment
        self.recorder_options = recorder_options

    def __repr__(self) -> str:
        return f"<RecordStudy root={str(self.root)!r} experiment={self.experiment!r}>"

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        status = trial_status(trial.state)
        facts = _ended_facts(study, trial)
        records = take_trial_records(study.study_name, trial.number)
        if not records:
            self._record_trial(study, trial, status, facts)
            return
        if any(rec is not None and not rec.closed for _, rec in records):
            # A Keras callback whose fit raised is garbage by now (optuna dropped the
            # objective's traceback) and closes its record when collected: collected
            # here, not inside a write of that record below (its writer thread would
            # wait for the lock that write holds).
            gc.collect()
        for path, rec in records:
            if rec is not None and not rec.closed:
                known = rec.params
                if any(known.get(k, rec) != v for k, v in trial.params.items()):
                    rec.extend(trial.params)  # suggested after the recorder started
                rec.set_info({"optuna": {**(rec.trial or {}), **facts}})
                rec.close(status, error=_reason(trial))
            else:
                # a completed record of a trial pruned or failed after its fit is closed
                # again with the trial's status; a pruned or failed one keeps its own
                reclose_record(path.parent.parent, path, status, info={"optuna": {
                    **_trial_facts_of(study, trial), **facts}}, params=trial.params,
                    only_from=("completed", "running", "interrupted"),
                    error=_reason(trial),
                    **_reopen_options(self.recorder_options))

    def _record_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                      status: str, facts: Mapping[str, Any]) -> None:
        """A small record of a trial that no recordkit callback recorded."""
        created = trial.datetime_start
        rec = Recorder(self.root, self.experiment or study.study_name,
                       f"trial-{trial.number}", trial.params,
                       created=created.astimezone() if created is not None else None,
                       **self.recorder_options)
        try:
            rec.set_info({"optuna": {**_trial_facts_of(study, trial), **facts}})
            for step, value in sorted(trial.intermediate_values.items()):
                rec.log({"intermediate_value": value}, epoch=int(step))
        finally:
            rec.close(status, error=_reason(trial))


def _trial_facts_of(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """``info["optuna"]``'s trial, study and storage, as ``Recorder(trial=...)`` has them."""
    return {"trial": trial.number, "study": study.study_name,
            "storage": storage_url(getattr(study, "_storage", None))}


def _ended_facts(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's state and objective value(s) (None for a trial without), and when it
    ended."""
    values = [None if v is None or not math.isfinite(v) else float(v)
              for v in (trial.values or [])]
    facts: dict[str, Any] = {"state": trial.state.name,
                             "value": values[0] if len(values) == 1 else None}
    if len(study.directions) > 1:
        facts["values"] = values or None
    ended = trial.datetime_complete
    if isinstance(ended, _dt.datetime):
        facts["ended"] = ended.astimezone().isoformat()
    return facts


def _reason(trial: optuna.trial.FrozenTrial) -> str | None:
    """The error of a record that the study callback closes pruned or failed (a record
    holding its own keeps it). Optuna < 4 kept a failed objective's exception as
    ``system_attrs["fail_reason"]``; later versions only log it."""
    if trial.state == optuna.trial.TrialState.PRUNED:
        return f"TrialPruned: trial {trial.number} was pruned at step {trial.last_step}"
    if trial.state != optuna.trial.TrialState.FAIL:
        return None
    reason = trial.system_attrs.get("fail_reason")
    return reason if isinstance(reason, str) and reason else (
        f"Optuna: trial {trial.number} failed (the objective raised or returned no "
        "value; Optuna's log names why)")


def _reopen_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a reopened record takes (those that shape a new file do not apply)."""
    return {k: v for k, v in options.items() if k not in ("system", "created", "checksum")}
