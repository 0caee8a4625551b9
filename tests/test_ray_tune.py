"""Ray Tune: the recorder and both callbacks detect the trial they run in (config, trial
id and name, experiment) with no argument, and a trial that Tune stops early reads
``pruned``. A real ``tune.Tuner`` on a local Ray (``ray.init(num_cpus=2)``): four
Lightning and four Keras trials with ``reuse_actors=True``, one of each stopped early by a
stopper, and a stopped ``Recorder`` trial and a stopped Keras trial without reuse; the records
read back with ``load_all`` and compared with the ``ResultGrid`` value by value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import SUBPROCESS_TIMEOUT_S, require

ray = require("ray", "sweeps")
torch = require("torch", "lightning")
lp = require("lightning.pytorch", "lightning")
require("keras", "keras")

from ray import tune  # noqa: E402
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback  # noqa: E402

import recordkit  # noqa: E402
from recordkit.recorder import Recorder  # noqa: E402
from recordkit.trials import (  # noqa: E402
    is_ray_stop,
    ray_train_worker,
    ray_trial,
    status_for_exception,
)
from recordkit.verify import verify  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

EPOCHS = 4
#: A trial whose loss exceeds this is stopped at its first report (the ``bad`` ones).
STOP_ABOVE = 1e4


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One local Ray for the module; the trainables of this file go to the workers by
    value (a worker does not import this file and its frameworks), which run Keras on
    the torch backend (no TensorFlow import in each worker)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": root, "KERAS_BACKEND": "torch",
                                       "OMP_NUM_THREADS": "1", "RAY_AIR_NEW_OUTPUT": "0"}})
    yield ray
    ray.shutdown()


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, (x @ np.arange(1.0, 5.0, dtype="float32"))[:, None]


def _tiny_module(lr: float, offset: float) -> Any:
    """A one-layer LightningModule fitting y + *offset*; its epoch loss is synchronised
    across ranks (a no-op in one process)."""

    class Tiny(lp.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y + offset)
            self.log("loss", loss, on_step=False, on_epoch=True, sync_dist=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Tiny()


def _lightning_trial(config: dict[str, Any], root: str) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from recordkit.integrations.lightning import RecordCallback

    torch.set_num_threads(1)
    torch.manual_seed(config["seed"])

    x, y = _data(config["seed"])
    data = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    trainer = lp.Trainer(
        max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        callbacks=[RecordCallback(root),  # before Tune's report: the stopped epoch is in
                   TuneReportCheckpointCallback(metrics=["loss"], save_checkpoints=False,
                                                on="train_epoch_end")])
    trainer.fit(_tiny_module(config["lr"], config["offset"]), data)


def _keras_trial(config: dict[str, Any], root: str) -> None:
    import keras

    from recordkit.integrations.keras import RecordCallback

    torch.set_num_threads(1)
    keras.utils.set_random_seed(config["seed"])

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            tune.report({"loss": float(logs["loss"])})

    x, y = _data(config["seed"])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(config["lr"]), loss="mse")
    callbacks = [RecordCallback(root), Report()]
    # reporting first: Tune's stop leaves on_epoch_end before RecordCallback's turn
    model.fit(x, y + config["offset"], batch_size=32, epochs=EPOCHS, verbose=0,
              callbacks=callbacks[::-1] if config.get("report_first") else callbacks)


def _trial(config: dict[str, Any], root: str) -> None:
    {"lightning": _lightning_trial, "keras": _keras_trial,
     "recorder": _recorder_trial}[config["framework"]](config, root)


def _recorder_trial(config: dict[str, Any], root: str) -> None:
    """A hand-written loop: ``Recorder`` with no argument but the root."""
    with Recorder(root) as rec:
        for epoch in range(EPOCHS):
            loss = config["offset"] + 1.0 / (epoch + 1)
            rec.log({"loss": loss}, epoch=epoch)
            rec.commit()
            tune.report({"loss": loss})


def _stop_bad(trial_id: str, result: dict[str, Any]) -> bool:
    return result["loss"] > STOP_ABOVE


def _fit(trainable: Any, root: Path, space: dict[str, Any], name: str,
         storage: Path, *, reuse_actors: bool = False) -> Any:
    tuner = tune.Tuner(
        tune.with_parameters(trainable, root=str(root)),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), stop=_stop_bad,
                                  verbose=0))
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return grid


def _check_against(grid: Any, runs: Any, experiment: str) -> dict[str, Any]:
    """Every trial of *grid* has one intact record that gives its id, name, config and
    last reported loss; a trial stopped before its last epoch reads pruned, the others
    completed. Returns the records by trial id."""
    results = list(grid)
    by_trial = {r.info["ray_tune"]["trial_id"]: r for r in runs}
    assert len(runs) == len(results) == len(by_trial)
    assert len({r.run_id for r in runs}) == len(runs)
    for result in results:
        trial_id = result.metrics["trial_id"]
        record = by_trial[trial_id]
        facts = record.info["ray_tune"]
        assert verify(record.path).ok, verify(record.path)
        assert record.experiment == experiment == facts["experiment"]
        assert record.name == facts["trial_name"]
        assert Path(result.path).name == Path(facts["trial_dir"]).name
        assert Path(result.path).name.startswith(record.name)
        assert record.params == result.config
        frame = result.metrics_dataframe
        reported = frame["loss"].tolist()
        assert record.history["loss"].tolist() == reported
        assert record.history["loss"][-1] == result.metrics["loss"]
        stopped = len(reported) < EPOCHS
        assert record.status == ("pruned" if stopped else "completed"), (
            record.status, record.error, reported, record.params)
    return by_trial


SPACE = {"framework": tune.grid_search(["lightning", "keras"]),
         "variant": tune.grid_search([0, 1, 2, 3]),
         "lr": 0.01, "offset": 0.0, "seed": 0}


@pytest.mark.slow
def test_tuner_lightning_and_keras_trials_recorded_as_the_result_grid(
        local_ray: Any, tmp_path: Path) -> None:
    root, storage = tmp_path / "records", tmp_path / "ray"
    space = {**SPACE, "seed": tune.sample_from(lambda config: config["variant"]),
             "offset": tune.sample_from(lambda config: 1e6 if config["variant"] == 3
                                        else 0.0)}
    # two worker processes for the eight trials (each new one imports torch and lightning):
    # a stopped trial's thread is ended by reset_config when the next trial reuses its
    # actor, else (the last one) by stop; without reuse (the default) always by stop, as
    # in test_recorder_and_keras_trials_without_reuse
    grid = _fit(_trial, root, space, "sweep", storage, reuse_actors=True)
    runs = recordkit.load_all(root, experiment="sweep")  # read as soon as fit returns
    by_trial = _check_against(grid, runs, "sweep")
    statuses = sorted((r.params["framework"], r.params["variant"], r.status)
                      for r in by_trial.values())
    assert [s for s in statuses if s[2] != "completed"] == [("keras", 3, "pruned"),
                                                            ("lightning", 3, "pruned")]
    assert sum(s[0] == "lightning" for s in statuses) == 4 == sum(
        s[0] == "keras" for s in statuses)


def test_recorder_and_keras_trials_without_reuse(local_ray: Any, tmp_path: Path) -> None:
    """Each trial in a new actor, whose process Tune ends as soon as the stop of a trial
    returns: the stopped trials' records are closed before that (``pruned``). The Keras
    trial reports before RecordCallback's on_epoch_end: its record still holds the epoch
    it reported. (Two trials, one new actor each at once: a new worker imports torch,
    lightning and keras; completed trials are those of the other tests.)"""
    root = tmp_path / "records"
    space = {"framework": tune.grid_search(["recorder", "keras"]), "offset": 1e6,
             "lr": 0.01, "seed": 0, "report_first": True}
    grid = _fit(_trial, root, space, "by-hand", tmp_path / "ray")
    runs = recordkit.load_all(root, experiment="by-hand")  # read as soon as fit returns
    by_trial = _check_against(grid, runs, "by-hand")
    assert sorted((r.params["framework"], r.status, len(r.history["loss"]))
                  for r in by_trial.values()) == [("keras", "pruned", 1),
                                                  ("recorder", "pruned", 1)]


def test_outside_a_trial_nothing_is_detected(tmp_path: Path) -> None:
    assert "ray.train" in sys.modules  # imported with ray.tune: asked, and not a worker
    assert ray_trial() is None and ray_train_worker() is None
    with Recorder(tmp_path, params={"lr": 0.1}, system=False) as rec:
        pass
    record = recordkit.load(rec.path)
    assert record.experiment == "default"
    assert "ray_tune" not in record.info and "ray_train" not in record.info
    assert record.params == {"lr": 0.1}


def test_train_v1_context_outside_a_worker_is_not_a_worker(tmp_path: Path) -> None:
    """Train v1's context is there in every process, its world rank 0 outside a worker:
    a driver's Recorder must not take it for rank zero of a Train run."""
    code = ("import sys, ray.tune, ray.train, recordkit\n"
            "from recordkit.trials import ray_train_worker\n"
            "from ray.train.v2._internal.constants import is_v2_enabled\n"
            "assert not is_v2_enabled()\n"
            "assert ray.train.get_context().get_world_rank() == 0  # v1's default\n"
            "assert ray_train_worker() is None\n"
            "with recordkit.Recorder(sys.argv[1], system=False) as rec:\n"
            "    pass\n"
            "record = recordkit.load(rec.path)\n"
            "assert 'ray_train' not in record.info and record.experiment == 'default'\n"
            "print('ok')\n")
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_users_own_exit_is_not_a_tune_stop() -> None:
    with pytest.raises(SystemExit) as caught:
        raise SystemExit(0)
    assert not is_ray_stop(caught.value)
    assert status_for_exception(caught.value) == "failed"


def test_explicit_arguments_win_over_the_trial(local_ray: Any, tmp_path: Path) -> None:
    root = tmp_path / "records"

    def trainable(config: dict[str, Any]) -> None:
        with Recorder(str(root), "mine", "named", params={"lr": 7.0, "extra": 1},
                      system=False) as rec:
            rec.log({"loss": 1.0}, epoch=0)
        tune.report({"loss": 1.0, "pid": os.getpid()})

    grid = tune.Tuner(trainable, param_space={"lr": 0.5, "width": 3},
                      run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "r"),
                                                verbose=0)).fit()
    assert not grid.errors
    (record,) = recordkit.load_all(root, experiment="mine")
    assert record.name == "named"
    assert record.params == {"lr": 7.0, "width": 3, "extra": 1}
    assert record.info["ray_tune"]["experiment"] == "exp"
    assert record.info["ray_tune"]["trial_id"] == grid[0].metrics["trial_id"]


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: a hand-used ``Recorder`` on every rank (warnings kept in a
    file per rank), then a Lightning fit under Ray's DDP with the record callback."""
    import json
    import warnings

    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
    from torch.utils.data import DataLoader, TensorDataset

    from recordkit.integrations.lightning import RecordCallback

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(config["by_hand"], params={"rank": rank}, system=False) as rec:
            rec.log({"loss": float(rank)}, epoch=0)
    Path(config["warnings"], f"rank-{rank}.json").write_text(
        json.dumps([[w.category.__name__, str(w.message)] for w in caught]))

    x, y = _data(rank)
    data = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    trainer = lp.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices="auto",
        strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()],
        callbacks=[RecordCallback(config["root"], params={"lr": 0.01})])
    prepare_trainer(trainer).fit(_tiny_module(0.01, 0.0), data)

    import keras  # the torch backend (the workers' environment): each rank fits its own

    from recordkit.integrations.keras import RecordCallback as KerasRecordCallback

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0,
              callbacks=[KerasRecordCallback(config["keras"])])


@pytest.mark.slow
def test_ray_train_workers_rank_zero_writes(local_ray: Any, tmp_path: Path) -> None:
    """A real ``TorchTrainer`` of two workers (Lightning under Ray's DDP strategy, then
    a Keras fit on each): each callback writes one record, on rank zero, whose
    ``info["ray_train"]`` gives the Train run's name, the rank and the world size; a
    hand-used ``Recorder`` writes on every rank that opens one, and warns on every rank
    but zero."""
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folders = {key: tmp_path / key for key in ("root", "keras", "by_hand", "warnings")}
    folders["warnings"].mkdir()
    trainer = TorchTrainer(
        _train_worker, train_loop_config={k: str(v) for k, v in folders.items()},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="train-run", storage_path=str(tmp_path / "ray")))
    trainer.fit()

    (record,) = recordkit.load_all(folders["root"])  # rank zero's alone
    assert verify(record.path).ok
    assert record.status == "completed" and record.experiment == "train-run"
    assert record.params == {"lr": 0.01}
    facts = record.info["ray_train"]
    assert (facts["experiment"], facts["world_rank"], facts["world_size"]) == (
        "train-run", 0, 2)
    assert len(record.history["loss"]) == 2 and record.snapshot_epochs == [0, 1]
    (fitted,) = recordkit.load_all(folders["keras"])  # rank zero's alone
    assert fitted.status == "completed" and fitted.experiment == "train-run"
    assert fitted.info["ray_train"]["world_rank"] == 0 and fitted.snapshot_epochs == [0, 1]

    by_hand = sorted(recordkit.load_all(folders["by_hand"]), key=lambda r: r.params["rank"])
    assert [(r.params["rank"], r.info["ray_train"]["world_rank"], r.experiment)
            for r in by_hand] == [(0, 0, "train-run"), (1, 1, "train-run")]
    said = {rank: json.loads((folders["warnings"] / f"rank-{rank}.json").read_text())
            for rank in (0, 1)}
    assert not [text for kind, text in said[0] if kind == "RecordkitWarning"]
    (warning,) = [text for kind, text in said[1] if kind == "RecordkitWarning"]
    assert "Ray Train worker rank 1 of 2" in warning and str(folders["by_hand"]) in warning
