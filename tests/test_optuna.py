"""Optuna trials recorded: ``Recorder(trial=)``, ``RecordCallback(trial=)`` (Keras here;
Lightning in test_optuna_lightning.py) and the study callback ``RecordStudy``. Real
studies, real trials, records read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

optuna = require("optuna", "sweeps")

import recordkit  # noqa: E402
from recordkit import Recorder  # noqa: E402
from recordkit.errors import RecordkitWarning  # noqa: E402
from recordkit.integrations.optuna import RecordStudy, trial_status  # noqa: E402
from recordkit.recorder import is_trial_pruned, status_for_exception, storage_url  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def by_trial(root: Path) -> dict[int, recordkit.Record]:
    """The records under *root* by trial number; each trial once."""
    records = list(recordkit.load_all(root, cache=False))
    numbers = [r.info["optuna"]["trial"] for r in records]
    assert len(numbers) == len(set(numbers)), numbers
    return dict(zip(numbers, records))


def test_recorder_takes_the_trial_params_number_study_and_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="lr-sweep", storage=storage)
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    width = trial.suggest_int("width", 4, 16)
    with pytest.warns(RecordkitWarning, match=r"params\['width'\] is 3 but trial 0 sampled"):
        rec = Recorder(tmp_path / "records", "sweep", params={"epochs": 2, "width": 3},
                       trial=trial, system=False)
    rec.log({"loss": 0.5}, epoch=0)
    run_id = rec.save()
    record = recordkit.load(run_id, root=tmp_path / "records")
    assert record.params == {"epochs": 2, "lr": lr, "width": width}  # the trial's width
    assert record.name == "trial-0"
    assert record.info["optuna"] == {"trial": 0, "study": "lr-sweep", "storage": storage}
    assert rec.trial == {"trial": 0, "study": "lr-sweep", "storage": storage}
    assert record.status == "completed"


def test_a_name_given_is_kept_and_a_non_trial_is_refused(tmp_path: Path) -> None:
    trial = optuna.create_study().ask()
    with Recorder(tmp_path, name="mine", trial=trial, system=False) as rec:
        pass
    assert recordkit.load(rec.path).name == "mine"
    with pytest.raises(TypeError, match=r"Recorder\(trial=.*must be an Optuna trial"):
        Recorder(tmp_path, trial={"number": 1}, system=False)


def test_storage_urls_of_the_storages_optuna_has(tmp_path: Path) -> None:
    # read through Optuna internals (the cache's _backend, the journal's _file_path):
    # this fails when they change
    sqlite = f"sqlite:///{tmp_path / 'a.db'}"
    study = optuna.create_study(storage=sqlite)
    assert storage_url(study.ask().storage) == sqlite
    journal = tmp_path / "journal.log"
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    study = optuna.create_study(storage=optuna.storages.JournalStorage(backend))
    assert storage_url(study.ask().storage) == str(journal.resolve())
    assert storage_url(optuna.create_study().ask().storage) is None  # in memory
    rdb = optuna.storages.RDBStorage(sqlite)
    rdb.url = "postgresql://alice:s3cret-Pw@db.example.org:5432/optuna"  # not connected
    assert storage_url(rdb) == "postgresql://alice:***@db.example.org:5432/optuna"


def test_optunas_trial_pruned_is_told_without_importing_it_in_the_core() -> None:
    assert is_trial_pruned(optuna.TrialPruned("at epoch 2"))
    assert is_trial_pruned(type("Sub", (optuna.exceptions.TrialPruned,), {})())
    assert not is_trial_pruned(type("TrialPruned", (Exception,), {})())  # not optuna's
    assert [status_for_exception(e) for e in (None, KeyboardInterrupt(), ValueError())] == [
        "completed", "interrupted", "failed"]
    assert trial_status(optuna.trial.TrialState.FAIL) == "failed"


def test_record_study_adds_state_and_value_and_records_plain_trials(tmp_path: Path) -> None:
    root = tmp_path / "records"

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", -2, 2)
        if trial.number % 2:  # recorded by the study callback alone
            return x * x
        with Recorder(root, "study", trial=trial, system=False) as rec:
            for epoch in range(3):
                rec.log({"loss": x * x + 1 / (epoch + 1)}, epoch=epoch)
                rec.commit()
            trial.suggest_int("late", 0, 3)  # suggested after the recorder started
        return x * x

    study = optuna.create_study(study_name="study", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=4, callbacks=[RecordStudy(root, system=False)])
    records = by_trial(root)
    frame = study.trials_dataframe()
    assert sorted(records) == frame["number"].tolist()
    for number, value, x in zip(frame["number"], frame["value"], frame["params_x"]):
        record = records[number]
        assert record.info["optuna"]["value"] == value
        assert record.info["optuna"]["state"] == "COMPLETE"
        assert record.info["optuna"]["study"] == "study"
        assert record.params["x"] == x
        assert record.status == "completed"
        assert record.experiment == "study"
        assert record.restarts == []  # filling the value in is not a restart
    assert records[0].history["loss"].tolist() == pytest.approx(
        [records[0].params["x"] ** 2 + 1 / (e + 1) for e in range(3)])
    assert "late" in records[0].params and "late" not in records[1].params


def test_a_failed_trial_reads_failed_with_its_error(tmp_path: Path) -> None:
    root = tmp_path / "records"

    def objective(trial: Any) -> float:
        trial.suggest_float("x", 0, 1)
        with Recorder(root, trial=trial, system=False) as rec:
            rec.log({"loss": 1.0}, epoch=0)
            raise ValueError("diverged at epoch 0")

    def unrecorded(trial: Any) -> float:
        trial.suggest_float("x", 0, 1)
        raise ValueError("out of memory")

    study = optuna.create_study()
    for fn in (objective, unrecorded):
        study.optimize(fn, n_trials=1, catch=(ValueError,),
                       callbacks=[RecordStudy(root, system=False)])
    records = by_trial(root)
    assert records[0].status == "failed"
    assert records[0].error == "ValueError: diverged at epoch 0"
    assert records[1].status == "failed"
    assert records[1].error == ("Optuna: trial 1 failed (the objective raised or returned "
                                "no value; Optuna's log names why)")
    assert [records[n].info["optuna"]["state"] for n in (0, 1)] == ["FAIL", "FAIL"]
    assert [records[n].info["optuna"]["value"] for n in (0, 1)] == [None, None]


def test_a_record_closed_before_the_trial_ends_is_completed_when_it_does(
        tmp_path: Path) -> None:
    """The recorder is left open (no with block): RecordStudy closes it, no reopening."""
    root = tmp_path / "records"
    kept: list[Recorder] = []

    def objective(trial: Any) -> float:
        rec = Recorder(root, trial=trial, params={"x": trial.suggest_float("x", 0, 1)},
                       system=False)
        rec.log({"loss": 0.25}, epoch=0)
        kept.append(rec)
        return 0.25

    study = optuna.create_study()
    study.optimize(objective, n_trials=1, callbacks=[RecordStudy(root, system=False)])
    assert kept[0].closed and kept[0].status == "completed"
    record = by_trial(root)[0]
    assert record.info["optuna"]["value"] == 0.25
    assert record.evaluations == []  # closed by the callback itself: not reopened


def test_keras_callback_with_a_trial(tmp_path: Path) -> None:
    keras = require("keras", "keras")
    import numpy as np

    from recordkit.integrations.keras import RecordCallback

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    root = tmp_path / "records"

    def objective(trial: Any) -> float:
        units = trial.suggest_int("units", 2, 6)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units),
                                  keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[
            RecordCallback(root, "keras", params={"epochs": 2}, trial=trial,
                           system=False)])
        return float(history.history["loss"][-1])

    study = optuna.create_study(study_name="keras")
    study.optimize(objective, n_trials=2, callbacks=[RecordStudy(root, system=False)])
    records = by_trial(root)
    for row in study.trials_dataframe().itertuples():
        record = records[row.number]
        assert record.params == {"epochs": 2, "units": row.params_units}
        assert record.info["optuna"]["value"] == row.value
        assert record.history["loss"][-1] == pytest.approx(row.value)
        assert record.status == "completed"
        assert record.snapshot_epochs == [0, 1]
    with pytest.raises(ValueError, match="give the trial to the Recorder"):
        RecordCallback(root, recorder=Recorder(root, system=False),
                       trial=optuna.create_study().ask())


def test_core_does_not_import_optuna() -> None:
    code = ("import sys, recordkit\n"
            "from recordkit import Recorder\n"
            "assert 'optuna' not in sys.modules, 'optuna imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
