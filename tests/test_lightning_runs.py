"""The Lightning callback on what real training scripts do (issue 15): validations inside
epochs, metrics logged per step, gradient accumulation, repeated evaluations, a mistyped
monitor, two callbacks, fast_dev_run, warnings in sweeps, a broken Lightning import and
sharded strategies. Real Trainer fits, read back and compared with CSVLogger's rows."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import require

pl = require("pytorch_lightning", "lightning")
torch = require("torch", "lightning")

try:
    import lightning.pytorch as lp
except ImportError:
    lp = pl

from recordkit import load  # noqa: E402
from recordkit.errors import RecordkitError, RecordkitWarning  # noqa: E402
from recordkit.integrations._lightning_warnings import forget_shown  # noqa: E402
from recordkit.integrations.lightning import RecordCallback  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec"),
              pytest.mark.filterwarnings("ignore:.*does not have many workers")]


class Module(lp.LightningModule):
    """Logs as Lightning's docs do: train_loss per step only (training_step's default),
    val_loss per validation."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(batches: int, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(4 * batches, 3, generator=g),
                                          torch.randn(4 * batches, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def trainer(callbacks: list[Any], **options: Any) -> Any:
    settings = {"max_epochs": 2, "logger": False, "enable_progress_bar": False,
                "enable_checkpointing": False, "enable_model_summary": False,
                "num_sanity_val_steps": 0, **options}
    return lp.Trainer(callbacks=callbacks, **settings)


def callback(root: Path, **options: Any) -> RecordCallback:
    return RecordCallback(root, experiment="runs", system=False, **options)


def csv_rows(tr: Any, metric: str) -> list[tuple[int, float]]:
    """(step, value) of *metric* in the CSVLogger's metrics.csv."""
    with open(Path(tr.logger.log_dir) / "metrics.csv", newline="") as f:
        return [(int(row["step"]), float(row[metric])) for row in csv.DictReader(f)
                if row.get(metric)]


def fit_beside_csv(tmp_path: Path, batches: int, **options: Any) -> tuple[Any, Any]:
    """A fit recorded by RecordCallback and by a CSVLogger on the same Trainer."""
    cb = callback(tmp_path / "records", snapshot_every=options.pop("snapshot_every", 1))
    tr = trainer([cb], logger=lp.loggers.CSVLogger(tmp_path / "csv"), log_every_n_steps=1,
                 **options)
    tr.fit(Module(), loader(batches), loader(2, seed=1))
    return load(cb.record_path), tr


# --- item 1: every validation ------------------------------------------------------------


def test_validations_inside_epochs_are_each_recorded_as_csvlogger_shows(tmp_path: Path
                                                                        ) -> None:
    r, tr = fit_beside_csv(tmp_path, 8, val_check_interval=0.5)
    reference = csv_rows(tr, "val_loss")
    assert len(reference) == 4  # 2 epochs x 2 validations
    h = r.history
    # Lightning's step column counts the batches stepped before the one just done
    assert h.steps("val_loss_step").tolist() == [s + 1 for s, _ in reference] == [4, 8, 12, 16]
    assert h["val_loss_step"].tolist() == [v for _, v in reference]
    assert h.epochs("val_loss_step").tolist() == [0, 0, 1, 1]
    # the epoch level keeps each epoch's last validation
    assert h.epochs("val_loss").tolist() == [0, 1]
    assert h["val_loss"].tolist() == [reference[1][1], reference[3][1]]
    assert h.is_epoch_level("val_loss")
    pd = pytest.importorskip("pandas")
    steps = r.history_frame("step")["val_loss_step"].dropna()
    assert isinstance(steps, pd.Series) and steps.index.tolist() == [4, 8, 12, 16]


def test_step_based_training_records_each_validation(tmp_path: Path) -> None:
    r, tr = fit_beside_csv(tmp_path, 20, max_epochs=1, val_check_interval=4)
    reference = csv_rows(tr, "val_loss")
    assert len(reference) == 5
    h = r.history
    assert h.steps("val_loss_step").tolist() == [4, 8, 12, 16, 20]
    assert h["val_loss_step"].tolist() == [v for _, v in reference]
    assert h["val_loss"].tolist() == [reference[-1][1]]
    assert r.snapshot_epochs == [0]


def test_one_validation_per_epoch_needs_no_step_rows(tmp_path: Path) -> None:
    r, tr = fit_beside_csv(tmp_path, 4)
    assert "val_loss_step" not in r.history
    assert r.history["val_loss"].tolist() == [v for _, v in csv_rows(tr, "val_loss")]


def test_snapshot_every_validation(tmp_path: Path) -> None:
    cb = callback(tmp_path, snapshot_every="validation")
    module = Module()
    trainer([cb], max_epochs=5, check_val_every_n_epoch=2).fit(module, loader(4),
                                                                loader(2, seed=1))
    r = load(cb.record_path)
    assert r.snapshot_epochs == [1, 3, 4]  # the validations' epochs, and the last
    np.testing.assert_array_equal(r.weights()["net.weight"], module.net.weight.detach())


class WeightsAtValidation(lp.Callback):
    """Copies the module's weights (with the step) at each validation's end and at the
    fit's end: what a snapshot per validation must hold."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, np.ndarray]] = []

    def _take(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append((int(trainer.current_epoch), int(trainer.global_step),
                          pl_module.net.weight.detach().numpy().copy()))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._take(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._take(trainer, pl_module)


@pytest.mark.parametrize(("interval", "steps"), [(2, [2, 4, 6, 8]), (3, [3, 7, 8])])
def test_snapshot_every_validation_inside_an_epoch(tmp_path: Path, interval: int,
                                                   steps: list[int]) -> None:
    """Every validation inside an epoch has a snapshot of its own, at its step, holding
    the weights the validation saw; the last snapshot holds the final weights."""
    cb, probe = callback(tmp_path, snapshot_every="validation"), WeightsAtValidation()
    module = Module()
    trainer([cb, probe], val_check_interval=interval).fit(module, loader(4),
                                                          loader(2, seed=1))
    r = load(cb.record_path)
    assert r.snapshot_steps == steps
    assert r.snapshot_epochs == [(s - 1) // 4 for s in steps]  # 4 batches an epoch
    by_step = {step: w for _, step, w in probe.seen}  # the final weights: the last step
    stored = r.weight("net.weight")
    assert len(stored) == len(steps)
    for i, step in enumerate(steps):
        np.testing.assert_array_equal(stored[i], by_step[step])
    assert not np.array_equal(stored[0], stored[1])  # trained in between
    np.testing.assert_array_equal(r.weights()["net.weight"], module.net.weight.detach())
    # weights(epoch) gives the epoch's last snapshot
    np.testing.assert_array_equal(r.weights(0)["net.weight"],
                                  stored[max(i for i, s in enumerate(steps) if s <= 4)])


# --- items 2 and 3: step metrics and the step number --------------------------------------


def test_a_metric_logged_per_step_only_is_recorded_by_default(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordkitWarning)  # nothing left out: no warning
        r, tr = fit_beside_csv(tmp_path, 4)
    reference = csv_rows(tr, "train_loss")
    h = r.history
    assert h.steps("train_loss_step").tolist() == [s + 1 for s, _ in reference]
    assert h["train_loss_step"].tolist() == [v for _, v in reference]
    assert h.epochs("train_loss").tolist() == [0, 1]  # epoch level: the steps' mean
    np.testing.assert_allclose(h["train_loss"],
                               [np.mean([v for _, v in reference[:4]]),
                                np.mean([v for _, v in reference[4:]])], rtol=1e-12)


def test_steps_are_distinct_under_gradient_accumulation(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    tr = trainer([cb], accumulate_grad_batches=2)
    tr.fit(Module(), loader(4), loader(2, seed=1))
    h = load(cb.record_path).history
    assert h.steps("train_loss_step").tolist() == [1, 2, 3, 4, 5, 6, 7, 8]  # batches
    assert h["global_step"].tolist() == [0, 1, 1, 2, 2, 3, 3, 4]  # optimizer steps
    assert h.steps("global_step").tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert tr.global_step == 4
    pytest.importorskip("pandas")
    frame = load(cb.record_path).history_frame("step")
    assert frame["train_loss_step"].notna().sum() == 8


# --- item 4: evaluations after fit ------------------------------------------------------


def test_every_validate_and_test_call_is_kept_in_order(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    module = Module()
    tr = trainer([cb])
    tr.fit(module, loader(4), loader(2, seed=1))
    results = [tr.validate(module, loader(2, seed=1), verbose=False)[0]]
    with torch.no_grad():
        module.net.bias += 1.0  # the second validation measures something else
    results.append(tr.validate(module, loader(2, seed=1), verbose=False)[0])
    results.append(tr.test(module, loader(2, seed=2), verbose=False)[0])
    assert results[0]["val_loss"] != results[1]["val_loss"]
    r = load(cb.record_path)
    assert [e["stage"] for e in r.evaluations] == ["validate", "validate", "test"]
    assert [e["results"] for e in r.evaluations] == results
    assert [e["epoch"] for e in r.evaluations] == [1, 1, 1]
    assert r.restarts == []  # three reopenings, none of them a restart
    assert r.extras["validate"] == results[1]  # the latest of each stage
    assert r.status == "completed"


# --- item 5: the monitor ----------------------------------------------------------------


def test_an_unknown_monitor_raises_listing_the_metrics(tmp_path: Path) -> None:
    cb = callback(tmp_path, snapshot_every="best", monitor="val_los")
    tr = trainer([cb], max_epochs=3)
    with pytest.raises(RecordkitError, match=r"monitor='val_los'.*'val_loss'") as err:
        tr.fit(Module(), loader(4), loader(2, seed=1))
    assert "'train_loss'" in str(err.value) and "end of epoch 0" in str(err.value)
    r = load(cb.record_path)
    assert r.stored_status == "failed"
    assert r.history.epochs("val_loss").tolist() == [0]


@pytest.mark.parametrize("options", [{}, {"check_val_every_n_epoch": 2}])
def test_a_known_monitor_does_not_raise(tmp_path: Path, options: dict[str, Any]) -> None:
    cb = callback(tmp_path, snapshot_every="best", monitor="val_loss")
    trainer([cb], max_epochs=3, **options).fit(Module(), loader(4), loader(2, seed=1))
    r = load(cb.record_path)
    assert r.status == "completed" and r.snapshot_epochs[-1] == 2


# --- item 6: two callbacks ----------------------------------------------------------------


def test_two_callbacks_with_one_state_key_are_told_to_pass_name(tmp_path: Path) -> None:
    with pytest.raises(RecordkitError, match=r"2 RecordCallbacks without experiment= or "
                       r"name=.*pass a different name="):
        trainer([RecordCallback(tmp_path), RecordCallback(tmp_path, snapshot_every=None)])
    with pytest.raises(RecordkitError, match=r"2 RecordCallbacks with experiment='e' and "
                       r"name=None.*pass a different name="):
        trainer([RecordCallback(tmp_path, experiment="e"),
                 RecordCallback(tmp_path, experiment="e")])
    named = [RecordCallback(tmp_path, name="a"), RecordCallback(tmp_path)]
    trainer(named)  # one unnamed beside a named one is fine


# --- items 8 and 9: fast_dev_run, warnings in sweeps -------------------------------------


@pytest.fixture
def fresh_warnings() -> Any:
    forget_shown()
    yield
    forget_shown()


def test_fast_dev_run_records_nothing_and_says_so_once(tmp_path: Path,
                                                       fresh_warnings: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            trainer([callback(tmp_path)], fast_dev_run=True).fit(Module(), loader(4),
                                                                 loader(2, seed=1))
    assert not list(tmp_path.rglob("*.h5"))
    ours = [w for w in caught if issubclass(w.category, RecordkitWarning)]
    assert len(ours) == 1 and "fast_dev_run" in str(ours[0].message)


def test_each_warning_once_per_process_at_the_users_line(tmp_path: Path,
                                                         fresh_warnings: None) -> None:
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own once-per-location filter off
        for i in range(4):
            tr = trainer([callback(tmp_path / str(i), log_steps=False)],
                         fast_dev_run=i == 3)
            lines.append(sys._getframe().f_lineno + 1)
            tr.fit(Module(), loader(4), loader(2, seed=1))
    ours = [w for w in caught if issubclass(w.category, RecordkitWarning)]
    assert [("per step only" in str(w.message), "fast_dev_run" in str(w.message))
            for w in ours] == [(True, False), (False, True)]
    for w in ours:
        assert (w.filename, w.lineno) == (__file__, lines[0]), (w.filename, w.lineno)
    assert not any(str(tmp_path) in str(w.message) for w in ours)  # no run's path in them


# --- item 10: a broken Lightning import -----------------------------------------------------


def test_a_shadowed_dependency_keeps_the_import_error_as_cause(tmp_path: Path) -> None:
    (tmp_path / "fsspec.py").write_text("raise ImportError('a module of the user named fsspec')\n")
    code = ("try:\n    import recordkit.integrations.lightning\n"
            "except ImportError as err:\n"
            "    print(type(err).__name__, '|', err, '|', repr(err.__cause__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path),
                                                          "PATH": "/usr/bin:/bin"})
    out = done.stdout
    assert "is installed but importing it failed" in out, (out, done.stderr[-2000:])
    assert "pip install" not in out
    assert "a module of the user named fsspec" in out.rsplit("|", 1)[1]  # the cause


# --- item 11: sharded strategies ---------------------------------------------------------


class DeepSpeedStrategy(lp.strategies.SingleDeviceStrategy):
    """Named as Lightning's (DeepSpeed is not installed here): the callback tells it by
    its class name."""


def test_deepspeed_is_refused_at_setup(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    tr = trainer([cb], strategy=DeepSpeedStrategy(device=torch.device("cpu")))
    with pytest.raises(RecordkitError, match=r"strategy=DeepSpeedStrategy\) is not "
                       "supported: DeepSpeed partitions"):
        tr.fit(Module(), loader(4))
    assert not list(tmp_path.rglob("*.h5"))


FSDP_SCRIPT = """
import sys, torch, lightning.pytorch as lp
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import (FullStateDictConfig, FullyShardedDataParallel,
                                    StateDictType)
from recordkit.integrations.lightning import RecordCallback

class CPUFSDP(FSDPStrategy):
    # Lightning 2.6 and torch 2.13 ask FSDP for an accelerator; this wraps the module in
    # the same FullyShardedDataParallel with the CPU as its device (gloo between ranks).
    def _setup_model(self, model):
        return FullyShardedDataParallel(module=model, device_id=torch.device("cpu"),
                                        sharding_strategy=self.sharding_strategy,
                                        **self.kwargs)

class M(lp.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 4)
        self.out = torch.nn.Linear(4, 1)
    def forward(self, x):
        return self.out(self.layer(x))
    def training_step(self, batch, i):
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss
    def validation_step(self, batch, i):
        self.log("val/loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]),
                 sync_dist=True)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

if __name__ == "__main__":
    every = sys.argv[3]
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, generator=g),
                                          torch.randn(32, 1, generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    callback = RecordCallback(sys.argv[1], system=False,
                              snapshot_every=int(every) if every.isdigit() else every or None)
    trainer = lp.Trainer(strategy=CPUFSDP(process_group_backend="gloo"), accelerator="cpu",
                         devices=2, max_epochs=3, callbacks=[callback], logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(M(), loader, loader)
    config = FullStateDictConfig(rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(trainer.strategy.model,
                                                  StateDictType.FULL_STATE_DICT, config):
        state = trainer.strategy.model.state_dict()
    if trainer.is_global_zero:
        torch.save(state, sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.parametrize(("every", "epochs"), [("1", [0, 1, 2]), ("None", [2]),
                                               ("validation", [0, 1, 2])])
def test_fsdp_snapshots_are_gathered_by_every_rank(tmp_path: Path, every: str,
                                                   epochs: list[int]) -> None:
    script = tmp_path / "fsdp_fit.py"
    script.write_text(textwrap.dedent(FSDP_SCRIPT))
    root, final = tmp_path / "records", tmp_path / "final.pt"
    done = subprocess.run([sys.executable, str(script), str(root), str(final),
                           "" if every == "None" else every],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = root.rglob("*.h5")
    r = load(path)
    assert r.status == "completed"
    assert r.info["trainer"]["strategy"] == "CPUFSDP" and r.info["trainer"]["world_size"] == 2
    assert r.info["model"]["parameters"] == 3 * 4 + 4 + 4 + 1  # not one rank's shard
    assert r.snapshot_epochs == epochs
    state = torch.load(final)
    assert set(r.tensor_names) == set(state) == {"layer.weight", "layer.bias", "out.weight",
                                                 "out.bias"}
    for name, tensor in state.items():
        assert r.weights()[name].shape == tuple(tensor.shape)  # whole, not a shard
        np.testing.assert_array_equal(r.weights()[name], tensor.numpy())
