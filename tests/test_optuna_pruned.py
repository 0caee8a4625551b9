"""Pruned Optuna trials read ``pruned``: ``Recorder(trial=)`` in a manual
``trial.report`` / ``should_prune`` loop, the Keras callback with optuna-integration's
``KerasPruningCallback`` and around a loop of fits; and a real distributed study: four
worker processes on one ``JournalFileBackend`` storage and one records root."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import require

optuna = require("optuna", "sweeps")
keras = require("keras", "keras")
optuna_integration = require("optuna_integration", "sweeps")

import recordkit  # noqa: E402
from recordkit import Recorder  # noqa: E402
from recordkit.integrations.keras import RecordCallback  # noqa: E402
from recordkit.integrations.optuna import RecordStudy  # noqa: E402
from recordkit.verify import verify  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

X = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
Y = (X[:, 0] > 0).astype("int64")


class OddTrialsPruned(optuna.pruners.BasePruner):
    """Prunes odd-numbered trials once they reported step 1: known in advance."""

    def prune(self, study: Any, trial: Any) -> bool:
        return trial.number % 2 == 1 and (trial.last_step or 0) >= 1


def by_trial(root: Path) -> dict[int, recordkit.Record]:
    records = list(recordkit.load_all(root, cache=False))
    numbers = [r.info["optuna"]["trial"] for r in records]
    assert len(numbers) == len(set(numbers)), numbers
    return dict(zip(numbers, records))


def tiny_model(units: int) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units),
                              keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    return model


def check_pruned(study: Any, records: dict[int, recordkit.Record], steps: int) -> None:
    """Odd trials pruned after step 1, even ones complete; each record as its trial."""
    for trial in study.trials:
        record = records[trial.number]
        pruned = trial.number % 2 == 1
        assert trial.state.name == ("PRUNED" if pruned else "COMPLETE")
        assert record.status == ("pruned" if pruned else "completed")
        assert record.info["optuna"]["state"] == trial.state.name
        assert record.info["optuna"]["value"] == trial.value
        assert sorted(trial.intermediate_values) == list(range(2 if pruned else steps))
        assert record.history["loss"].tolist() == pytest.approx(
            [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)])
        if pruned:
            assert record.error.startswith("TrialPruned: ")


def test_recorder_in_a_manual_loop(tmp_path: Path) -> None:
    root = tmp_path / "records"

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", 0, 1)
        with Recorder(root, trial=trial, system=False) as rec:
            for epoch in range(3):
                loss = x + 1 / (epoch + 1)
                rec.log({"loss": loss}, epoch=epoch)
                rec.commit()
                trial.report(loss, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return loss

    study = optuna.create_study(pruner=OddTrialsPruned())
    study.optimize(objective, n_trials=4, callbacks=[RecordStudy(root, system=False)])
    records = by_trial(root)
    check_pruned(study, records, steps=3)
    assert records[1].error == "TrialPruned: pruned at epoch 1"


def test_recorder_without_the_study_callback_reads_pruned(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=OddTrialsPruned())
    study.ask()
    trial = study.ask()  # trial 1
    with pytest.raises(optuna.TrialPruned), Recorder(tmp_path, trial=trial,
                                                      system=False) as rec:
        for epoch in range(3):
            rec.log({"loss": 1.0}, epoch=epoch)
            trial.report(1.0, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
    record = recordkit.load(rec.path)
    assert (record.status, record.epoch_count) == ("pruned", 2)
    assert "state" not in record.info["optuna"]  # the study callback adds it


@pytest.mark.parametrize("order", ["record first", "pruning first"])
@pytest.mark.parametrize("closed_by", ["RecordStudy", "with block"])
def test_keras_pruning_callback(tmp_path: Path, order: str, closed_by: str) -> None:
    root = tmp_path / "records"

    def objective(trial: Any) -> float:
        model = tiny_model(trial.suggest_int("units", 2, 4))
        record = RecordCallback(root, trial=trial, system=False)
        prune = optuna_integration.KerasPruningCallback(trial, "loss")
        callbacks = [record, prune] if order == "record first" else [prune, record]
        with record if closed_by == "with block" else contextlib.nullcontext():
            history = model.fit(X, Y, epochs=3, batch_size=16, verbose=0,
                                callbacks=callbacks)
        return float(history.history["loss"][-1])

    study = optuna.create_study(pruner=OddTrialsPruned())
    study.optimize(objective, n_trials=2, callbacks=(
        [RecordStudy(root, system=False)] if closed_by == "RecordStudy" else []))
    records = by_trial(root)
    pruned = records[1]
    assert pruned.status == "pruned"
    # the exception KerasPruningCallback raised, seen leaving the fit
    assert pruned.error == "TrialPruned: Trial was pruned at epoch 1."
    assert records[0].status == "completed"
    intermediate = study.trials[1].intermediate_values
    # the pruning epoch's row is recorded when RecordCallback runs before the pruner
    epochs = [0, 1] if order == "record first" else [0]
    assert pruned.history.epochs("loss").tolist() == epochs
    assert pruned.history["loss"].tolist() == pytest.approx([intermediate[e] for e in epochs])
    if closed_by == "RecordStudy" and order == "record first":
        check_pruned(study, records, steps=3)


@pytest.mark.parametrize("closed_by", ["RecordStudy", "with block"])
def test_keras_fits_in_a_manual_loop(tmp_path: Path, closed_by: str) -> None:
    """One fit per epoch, reported after each: the record of the last fit completed,
    then TrialPruned ends the trial."""
    root = tmp_path / "records"

    def objective(trial: Any) -> float:
        model = tiny_model(trial.suggest_int("units", 2, 4))
        record = RecordCallback(root, trial=trial, system=False)
        with record if closed_by == "with block" else contextlib.nullcontext():
            for epoch in range(3):
                history = model.fit(X, Y, epochs=epoch + 1, initial_epoch=epoch,
                                    batch_size=16, verbose=0, callbacks=[record])
                loss = float(history.history["loss"][-1])
                trial.report(loss, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return loss

    study = optuna.create_study(pruner=OddTrialsPruned())
    study.optimize(objective, n_trials=2, callbacks=(
        [RecordStudy(root, system=False)] if closed_by == "RecordStudy" else []))
    records = by_trial(root)
    assert records[0].status == "completed"
    assert records[1].status == "pruned"
    assert records[1].history.epochs("loss").tolist() == [0, 1]
    if closed_by == "with block":
        assert records[1].error == "TrialPruned: pruned at epoch 1"
    else:
        check_pruned(study, records, steps=3)
        assert records[1].error == "TrialPruned: trial 1 was pruned at step 1"
        assert len(records[1].evaluations) == 1  # reopened once to be closed pruned


WORKER = textwrap.dedent('''
    import os, sys
    import numpy as np
    import optuna, keras
    from optuna_integration import KerasPruningCallback
    from recordkit.integrations.keras import RecordCallback
    from recordkit.integrations.optuna import RecordStudy

    root, journal, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X = np.random.default_rng(worker).normal(size=(32, 4)).astype("float32")
    Y = (X[:, 0] > 0).astype("int64")

    class OddTrialsPruned(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number % 2 == 1 and (trial.last_step or 0) >= 1

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        units = trial.suggest_int("units", 2, 6)
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        if trial.number % 4 == 2:  # recorded by RecordStudy alone
            for step in range(3):
                trial.report(lr * step, step)
            return lr * units
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(X, Y, epochs=3, batch_size=16, verbose=0, callbacks=[
            RecordCallback(root, "sweep", trial=trial, system=False),
            KerasPruningCallback(trial, "loss")])
        return float(history.history["loss"][-1])

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.create_study(study_name="sweep", storage=storage, load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=worker),
                                pruner=OddTrialsPruned())
    study.optimize(objective, n_trials=2, callbacks=[RecordStudy(root, "sweep",
                                                                 system=False)])
''')


@pytest.mark.slow
def test_distributed_study_of_four_worker_processes(tmp_path: Path) -> None:
    root, journal = tmp_path / "records", tmp_path / "journal.log"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [subprocess.Popen([sys.executable, str(script), str(root), str(journal),
                                 str(worker)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for worker in range(4)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="sweep", storage=storage)
    frame = study.trials_dataframe()
    assert len(frame) == 8 and frame["user_attrs_pid"].nunique() == 4  # 4 processes ran
    records = list(recordkit.load_all(root, cache=False))
    assert recordkit.load_all(root, cache=False).skipped == []
    assert len({r.run_id for r in records}) == len(records) == 8
    for record in records:
        assert verify(record.path).ok, record.path
    table = recordkit.load_all(root, cache=False).to_dataframe()
    table["number"] = [r.info["optuna"]["trial"] for r in records]
    table["value"] = [r.info["optuna"]["value"] for r in records]
    table["state"] = [r.info["optuna"]["state"] for r in records]
    joined = frame.merge(table, on="number", suffixes=("_study", "_record"))
    assert len(joined) == 8
    assert joined["value_study"].tolist() == joined["value_record"].tolist()
    assert joined["state_study"].tolist() == joined["state_record"].tolist()
    assert joined["params_units"].tolist() == joined["units"].tolist()
    assert joined["params_lr"].tolist() == joined["lr"].tolist()
    assert sorted(joined.loc[joined["state_study"] == "PRUNED", "status"]) == ["pruned"] * 4
    for record, number in zip(records, table["number"]):
        assert record.info["optuna"]["storage"] == str(journal.resolve())
        assert record.status == ("pruned" if number % 2 else "completed")
        trial = study.trials[number]
        steps = sorted(trial.intermediate_values)
        metric = "intermediate_value" if number % 4 == 2 else "loss"
        assert record.history.epochs(metric).tolist() == steps
        assert record.history[metric].tolist() == pytest.approx(
            [trial.intermediate_values[s] for s in steps])
