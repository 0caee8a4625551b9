"""RecordCallback with real Trainer.fit on tiny models, read back from the HDF5 files.

Budget: about 30 s of fits on this 2-core box, plus the DDP subprocess test (slow, ~30 s).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import SUBPROCESS_TIMEOUT_S, require

pl = require("pytorch_lightning", "lightning")
torch = require("torch", "lightning")

try:  # the `lightning` package is optional beside pytorch_lightning ([lightning] extra)
    import lightning.pytorch as lp
except ImportError:
    lp = pl

from recordkit import load, load_all  # noqa: E402
from recordkit.errors import RecordkitWarning, RecordWriteError  # noqa: E402
from recordkit.integrations._lightning_warnings import forget_shown  # noqa: E402
from recordkit.integrations.lightning import RecordCallback  # noqa: E402
from recordkit.recorder import Recorder  # noqa: E402

PACKAGES = {"pytorch_lightning": pl, **({"lightning.pytorch": lp} if lp is not pl else {})}

pytestmark = [
    # TinyModule logs a per-step metric on purpose; one test checks the warning about it.
    pytest.mark.filterwarnings("ignore:.*logged per step only:recordkit.errors.RecordkitWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # a deprecation inside Lightning
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]


def make_classes(package: Any) -> tuple[type, type]:
    """A BoringModel-sized module and a datamodule of *package*."""

    class TinyModule(package.LightningModule):
        def __init__(self, lr: float = 0.1, hidden: int = 4, fail_at: int = -1,
                     fail_with: str = "", step_gamma: float = 0.5) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))
            self.norm = torch.nn.BatchNorm1d(3)  # a buffer-holding layer: buffers too

        def forward(self, x: Any) -> Any:
            return self.net(self.norm(x))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == self.hparams.fail_at:
                if self.hparams.fail_with == "interrupt":
                    raise KeyboardInterrupt
                raise RuntimeError(f"boom at epoch {self.current_epoch}")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train/loss", loss, on_step=True, on_epoch=True)
            self.log("countdown", -float(self.current_epoch), on_epoch=True)
            self.log("step_only", loss)  # per step only: not in the epoch history
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test/loss", torch.nn.functional.mse_loss(self(x), y))

        def on_train_epoch_end(self) -> None:  # logged after the callback's hook
            self.log("late", float(self.current_epoch) * 10)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, self.hparams.step_gamma)
            return [optimizer], [scheduler]

    class TinyData(package.LightningDataModule):
        def __init__(self, batch_size: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            generator = torch.Generator().manual_seed(0)
            self.data = torch.utils.data.TensorDataset(torch.randn(32, 3, generator=generator),
                                                       torch.randn(32, 1, generator=generator))

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(self.data, batch_size=self.hparams.batch_size)

        def val_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(self.data, batch_size=self.hparams.batch_size)

        def test_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(self.data, batch_size=self.hparams.batch_size)

    return TinyModule, TinyData


LP_MODULE, LP_DATA = make_classes(lp)


def trainer(callbacks: list[Any], package: Any = lp, **options: Any) -> Any:
    settings = {"max_epochs": 3, "logger": False, "enable_progress_bar": False,
                "enable_checkpointing": False, "enable_model_summary": False,
                "num_sanity_val_steps": 1, **options}
    return package.Trainer(callbacks=callbacks, **settings)


def callback(root: Path, **options: Any) -> RecordCallback:
    return RecordCallback(root, experiment="lit", system=False, **options)


def fit(root: Path, *, package: Any = lp, module_options: dict[str, Any] | None = None,
        trainer_options: dict[str, Any] | None = None, **options: Any
        ) -> tuple[RecordCallback, Any, Any]:
    module_cls, data_cls = (LP_MODULE, LP_DATA) if package is lp else make_classes(package)
    cb = callback(root, **options)
    tr = trainer([cb], package, **(trainer_options or {}))
    module = module_cls(**(module_options or {}))
    tr.fit(module, datamodule=data_cls(batch_size=8))
    return cb, tr, module


@pytest.mark.parametrize("package_name", sorted(PACKAGES))
def test_fit_records_params_info_history_and_exact_weights(tmp_path: Path,
                                                           package_name: str) -> None:
    package = PACKAGES[package_name]
    package.seed_everything(7)
    cb, tr, module = fit(tmp_path, package=package, params={"note": "x"},
                         trainer_options={"check_val_every_n_epoch": 2})
    r = load(cb.record_path)
    assert r.status == "completed" and r.stored_status == "completed"
    assert r.params == {"note": "x", "lr": 0.1, "hidden": 4, "fail_at": -1, "fail_with": "",
                        "step_gamma": 0.5, "batch_size": 8}
    info = r.info
    assert info["trainer"]["framework"].startswith(package_name)
    assert info["trainer"]["max_epochs"] == 3
    assert info["trainer"]["world_size"] == 1
    assert info["trainer"]["precision"] == "32-true"
    assert info["trainer"]["seed"] == 7
    assert info["trainer"]["check_val_every_n_epoch"] == 2
    assert info["optimizers"][0]["class"] == "SGD"
    assert info["optimizers"][0]["param_groups"][0]["lr"] == 0.1
    assert info["lr_schedulers"][0]["class"] == "StepLR"
    assert info["lr_schedulers"][0]["settings"]["gamma"] == 0.5
    n_params = sum(p.numel() for p in module.parameters())
    assert info["model"]["parameters"] == info["model"]["trainable_parameters"] == n_params
    assert info["model"]["class"].endswith("TinyModule")

    h = r.history
    assert set(h) == {"train/loss", "countdown", "val/loss", "late", "lr-SGD", "epoch_time",
                      "step_only", "train/loss_step", "countdown_step", "step_only_step"}
    for name in ("train/loss", "countdown", "late", "lr-SGD", "epoch_time", "step_only"):
        assert h.epochs(name).tolist() == [0, 1, 2], name
    # per step only: x_step rows every step, x the mean of each epoch's steps
    assert h.steps("step_only_step").tolist() == list(range(1, 13))
    np.testing.assert_allclose(h["step_only"], h["step_only_step"].reshape(3, 4).mean(axis=1))
    # validation ran at epoch 1 only (every 2nd epoch); the sanity check is not recorded
    assert h.epochs("val/loss").tolist() == [1]
    np.testing.assert_allclose(h["lr-SGD"], [0.1, 0.05, 0.025])
    assert h["late"].tolist() == [0.0, 10.0, 20.0]
    assert h["countdown"].tolist() == [0.0, -1.0, -2.0]
    assert (h["epoch_time"] > 0).all()
    final = {k: float(v) for k, v in tr.callback_metrics.items()}
    for name in ("train/loss", "countdown", "late"):
        assert h[name][-1] == np.float32(final[name]) or h[name][-1] == final[name]
    assert h["val/loss"][-1] == final["val/loss"]  # logged at epoch 1, still the latest
    assert h["train/loss"][-1] == final["train/loss_epoch"]

    assert r.snapshot_epochs == [0, 1, 2]
    state = module.state_dict()
    assert set(r.tensor_names) == set(state)  # parameters and buffers
    last = r.weights(epoch=-1)
    for name, tensor in state.items():
        np.testing.assert_array_equal(last[name], tensor.numpy())
    assert r.weight("norm.num_batches_tracked")[:].tolist() == [4, 8, 12]


@pytest.mark.parametrize(("options", "epochs"), [
    ({"snapshot_every": 1}, [0, 1, 2, 3]),
    ({"snapshot_every": 3}, [2, 3]),
    ({"snapshot_every": None}, [3]),
    ({"snapshot_every": "best", "monitor": "countdown", "mode": "max"}, [0, 3]),
    ({"snapshot_every": "best", "monitor": "countdown", "mode": "min"}, [0, 1, 2, 3]),
])
def test_snapshot_every(tmp_path: Path, options: dict[str, Any], epochs: list[int]) -> None:
    cb, _, module = fit(tmp_path, trainer_options={"max_epochs": 4}, **options)
    r = load(cb.record_path)
    assert r.snapshot_epochs == epochs
    last = r.weights()
    for name, tensor in module.state_dict().items():
        np.testing.assert_array_equal(last[name], tensor.numpy())


def test_early_stop_snapshots_the_last_epoch(tmp_path: Path) -> None:
    stop = lp.callbacks.EarlyStopping("countdown", mode="max", patience=1)
    cb = callback(tmp_path, snapshot_every=None)
    tr = trainer([cb, stop], max_epochs=10)
    module = LP_MODULE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        tr.fit(module, datamodule=LP_DATA())
    r = load(cb.record_path)
    assert tr.current_epoch == 2  # stopped after epochs 0 and 1
    assert r.history.epochs("train/loss").tolist() == [0, 1]
    assert r.snapshot_epochs == [1]
    np.testing.assert_array_equal(r.weights()["net.0.weight"],
                                  module.state_dict()["net.0.weight"].numpy())


def test_failed_run_is_closed_with_the_error(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, experiment="lit", system=False)
    cb = RecordCallback(recorder=rec)
    tr = trainer([cb])
    with pytest.raises(RuntimeError, match="boom at epoch 1"):
        tr.fit(LP_MODULE(fail_at=1), datamodule=LP_DATA())
    assert rec.closed
    r = load(rec.path)
    assert r.stored_status == "failed"
    assert r.error == "RuntimeError: boom at epoch 1"
    assert r.history.epochs("train/loss").tolist() == [0]
    assert r.history.epochs("late").tolist() == [0]
    assert r.snapshot_epochs == [0]


def test_keyboard_interrupt_is_recorded_as_interrupted(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    tr = trainer([cb])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl+C into sys.exit(1)
            tr.fit(LP_MODULE(fail_at=2, fail_with="interrupt"), datamodule=LP_DATA())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after one
    r = load(cb.record_path)
    assert r.stored_status == "interrupted"
    assert r.error.startswith("KeyboardInterrupt")
    assert r.history.epochs("train/loss").tolist() == [0, 1]


def test_callback_reused_for_a_second_fit_starts_a_new_record(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    paths = []
    for epochs in (2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordkitWarning)
            trainer([cb], max_epochs=epochs).fit(LP_MODULE(), datamodule=LP_DATA())
        paths.append(cb.record_path)
    assert paths[0] != paths[1]
    runs = load_all(tmp_path, experiment="lit")
    assert len(runs) == 2
    assert [load(p).history.epochs("train/loss").tolist() for p in paths] == [[0, 1],
                                                                              [0, 1, 2]]
    assert all(load(p).status == "completed" for p in paths)


def test_validate_and_test_after_fit_add_to_the_same_record(tmp_path: Path) -> None:
    cb, tr, module = fit(tmp_path)
    data = LP_DATA()
    (validated,) = tr.validate(module, datamodule=data, verbose=False)
    (tested,) = tr.test(module, datamodule=data, verbose=False)
    assert len(load_all(tmp_path, experiment="lit")) == 1
    r = load(cb.record_path)
    assert r.status == "completed"
    assert r.history.epochs("test/loss").tolist() == [2]
    assert r.history["test/loss"][0] == tested["test/loss"]
    assert r.history.epochs("val/loss").tolist() == [0, 1, 2]  # not logged twice
    assert r.extras["validate"]["val/loss"] == validated["val/loss"]
    assert r.extras["test"]["test/loss"] == tested["test/loss"]
    assert [e["stage"] for e in r.evaluations] == ["validate", "test"]
    assert r.restarts == []  # evaluations are not restarts


@pytest.mark.parametrize("crash", [False, True])
def test_resume_from_checkpoint_continues_the_record(tmp_path: Path, crash: bool) -> None:
    ckpt_dir = tmp_path / "ckpt"
    checkpoint = lp.callbacks.ModelCheckpoint(ckpt_dir, save_top_k=-1, every_n_epochs=1)
    cb = callback(tmp_path / "rec")
    first = trainer([cb, checkpoint], max_epochs=3 if crash else 2,
                    enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        if crash:  # epoch 2 crashes; the checkpoint of epoch 1 is the latest
            with pytest.raises(RuntimeError):
                first.fit(LP_MODULE(fail_at=2), datamodule=LP_DATA())
            assert load(cb.record_path).stored_status == "failed"
        else:
            first.fit(LP_MODULE(), datamodule=LP_DATA())
    ckpt = sorted(ckpt_dir.glob("epoch=1-*.ckpt"))[0]

    resumed_cb = callback(tmp_path / "rec")  # a new process would have a new callback
    second = trainer([resumed_cb], max_epochs=4)
    module = LP_MODULE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        second.fit(module, datamodule=LP_DATA(), ckpt_path=ckpt)
    assert resumed_cb.record_path == cb.record_path
    assert len(load_all(tmp_path / "rec", experiment="lit")) == 1
    r = load(cb.record_path)
    assert r.status == "completed"
    for name in ("train/loss", "late", "lr-SGD", "epoch_time"):
        assert r.history.epochs(name).tolist() == [0, 1, 2, 3], name
    assert r.snapshot_epochs == [0, 1, 2, 3]
    np.testing.assert_allclose(r.history["lr-SGD"], [0.1, 0.05, 0.025, 0.0125])
    assert [x["previous_status"] for x in r.restarts] == ["failed" if crash else "completed"]
    for name, tensor in module.state_dict().items():
        np.testing.assert_array_equal(r.weights()[name], tensor.numpy())


def test_log_steps_records_step_rows(tmp_path: Path) -> None:
    cb, tr, _ = fit(tmp_path, log_steps=True, trainer_options={"max_epochs": 2})
    h = load(cb.record_path).history
    assert h.steps("step_only_step").tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert h.epochs("step_only_step").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert h.epochs("step_only").tolist() == [0, 1]  # the epoch means
    assert h.steps("train/loss_step").tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert h["train/loss_step"][-1] == float(tr.callback_metrics["train/loss_step"])
    assert h.epochs("train/loss").tolist() == [0, 1]  # epoch rows keep the plain name
    assert (h.steps("train/loss") == -1).all()


def test_step_only_metric_is_named_in_a_warning_without_log_steps(tmp_path: Path) -> None:
    forget_shown()  # each kind of warning is shown once per process
    cb = callback(tmp_path, log_steps=False)
    with pytest.warns(RecordkitWarning, match=r"\['step_only'\] are logged per step only"):
        trainer([cb], max_epochs=1).fit(LP_MODULE(), datamodule=LP_DATA())
    assert "step_only" not in load(cb.record_path).history


class RemoveRecordFolder(lp.Callback):
    """Removes the record's folder at the start of epoch 1: the next commit fails."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            shutil.rmtree(self.folder)


@pytest.mark.parametrize("on_error", ["raise", "warn"])
def test_on_error(tmp_path: Path, on_error: str) -> None:
    forget_shown()  # each kind of warning is shown once per process
    cb = callback(tmp_path, on_error=on_error)
    tr = trainer([RemoveRecordFolder(tmp_path / "lit"), cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        if on_error == "raise":
            with pytest.raises(RecordWriteError, match="removed"):
                tr.fit(LP_MODULE(), datamodule=LP_DATA())
            return
    with pytest.warns(RecordkitWarning, match="recording stops"):
        tr.fit(LP_MODULE(), datamodule=LP_DATA())
    assert tr.current_epoch == 3  # training went on
    assert cb.recorder is None


@pytest.mark.parametrize(("options", "message"), [
    ({"snapshot_every": 0}, r"RecordCallback\(snapshot_every=0\): must be a positive int"),
    ({"snapshot_every": "best"}, r"needs monitor="),
    ({"mode": "up"}, r"RecordCallback\(mode='up'\)"),
    ({"on_error": "ignore"}, r"RecordCallback\(on_error='ignore'\): must be one of"),
    ({"log_steps": 0}, r"RecordCallback\(log_steps=0\)"),
    ({"root": 3}, r"RecordCallback\(root=3\)"),
    ({"durable_please": True}, r"RecordCallback\(durable_please=...\): not an option"),
    ({"params": [1]}, r"RecordCallback\(params=...\)"),
])
def test_arguments_are_checked_up_front(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        RecordCallback(**options)


DDP_SCRIPT = """
import sys, torch, lightning.pytorch as lp
from recordkit.integrations.lightning import RecordCallback

class M(lp.LightningModule):
    def __init__(self, lr=0.1):
        super().__init__(); self.save_hyperparameters()
        self.layer = torch.nn.Linear(3, 1)
    def training_step(self, batch, i):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss
    def validation_step(self, batch, i):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("val/loss", loss, sync_dist=True)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, generator=g),
                                          torch.randn(16, 1, generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = lp.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=3,
                         callbacks=[RecordCallback(sys.argv[1], system=False)],
                         logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=1)
    model = M()
    trainer.fit(model, loader, loader)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), sys.argv[2])
"""


@pytest.mark.slow
def test_ddp_only_rank_zero_writes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    root = tmp_path / "records"
    final = tmp_path / "final.pt"
    result = subprocess.run([sys.executable, str(script), str(root), str(final)],
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(root.rglob("*.h5"))
    assert len(files) == 1, files
    r = load(files[0])
    assert r.status == "completed"
    assert r.info["trainer"]["world_size"] == 2
    assert r.info["trainer"]["strategy"] == "DDPStrategy"
    assert r.history.epochs("train/loss").tolist() == [0, 1, 2]
    assert r.history.epochs("val/loss").tolist() == [0, 1, 2]
    assert r.snapshot_epochs == [0, 1, 2]
    state = torch.load(final)
    for name, tensor in state.items():
        np.testing.assert_array_equal(r.weights()[name], tensor.numpy())


def test_missing_framework_names_the_extra() -> None:
    code = ("import sys; sys.modules['lightning'] = sys.modules['lightning.pytorch'] = None; "
            "sys.modules['pytorch_lightning'] = None\n"
            "try:\n    import recordkit.integrations.lightning\n"
            "except ModuleNotFoundError as err:\n    print(err, '|', type(err.__cause__).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert "pip install 'recordkit[lightning]'" in result.stdout, result.stderr
    assert result.stdout.strip().endswith("| ModuleNotFoundError")  # the cause is kept


def test_test_after_a_failed_fit_keeps_the_failed_status(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    tr = trainer([cb])
    module = LP_MODULE(fail_at=1)
    with pytest.raises(RuntimeError):
        tr.fit(module, datamodule=LP_DATA())
    (tested,) = tr.test(module, datamodule=LP_DATA(), verbose=False)
    r = load(cb.record_path)
    assert r.stored_status == "failed"
    assert r.error == "RuntimeError: boom at epoch 1"
    assert r.history["test/loss"].tolist() == [tested["test/loss"]]
    assert r.history.epochs("test/loss").tolist() == [1]  # the record's last epoch
    assert r.evaluations[0]["stage"] == "test" and r.restarts == []


def test_test_without_fit_makes_a_record_of_its_own(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    (tested,) = trainer([cb]).test(LP_MODULE(hidden=5), datamodule=LP_DATA(), verbose=False)
    r = load(cb.record_path)
    assert r.status == "completed"
    assert r.params["hidden"] == 5
    assert r.history["test/loss"].tolist() == [tested["test/loss"]]
    assert r.restarts == []


def test_resume_finds_a_moved_record_by_run_id(tmp_path: Path) -> None:
    checkpoint = lp.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    cb = callback(tmp_path / "old")
    trainer([cb, checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        LP_MODULE(), datamodule=LP_DATA())
    shutil.move(tmp_path / "old", tmp_path / "new")  # e.g. resumed on another machine
    resumed = callback(tmp_path / "new")
    trainer([resumed], max_epochs=3).fit(LP_MODULE(), datamodule=LP_DATA(),
                                         ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    r = load(resumed.record_path)
    assert Path(resumed.record_path).parent.parent == (tmp_path / "new").resolve()
    assert r.history.epochs("train/loss").tolist() == [0, 1, 2]
    assert len(r.restarts) == 1


def test_test_from_a_checkpoint_then_a_new_fit_leaves_the_first_record_alone(
        tmp_path: Path) -> None:
    checkpoint = lp.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    first = callback(tmp_path)
    trainer([first, checkpoint], max_epochs=3, enable_checkpointing=True).fit(
        LP_MODULE(), datamodule=LP_DATA())
    cb = callback(tmp_path)
    trainer([cb]).test(LP_MODULE(), datamodule=LP_DATA(), verbose=False,
                       ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert cb.record_path == first.record_path  # the test went into the fit's record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        trainer([cb], max_epochs=2).fit(LP_MODULE(), datamodule=LP_DATA())  # no ckpt_path
    assert cb.record_path != first.record_path  # a record of its own
    old = load(first.record_path)
    assert old.history.epochs("train/loss").tolist() == [0, 1, 2]  # nothing rewound
    assert old.snapshot_epochs == [0, 1, 2] and "test/loss" in old.history
    assert load(cb.record_path).history.epochs("train/loss").tolist() == [0, 1]


def test_two_record_callbacks_on_one_trainer(tmp_path: Path) -> None:
    checkpoint = lp.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    full = RecordCallback(tmp_path, experiment="full", system=False)
    light = RecordCallback(tmp_path, experiment="light", system=False, snapshot_every=None,
                           dtype="float16")
    trainer([full, light, checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        LP_MODULE(), datamodule=LP_DATA())
    assert load(full.record_path).snapshot_epochs == [0, 1]
    assert load(light.record_path).snapshot_epochs == [1]
    resumed = [RecordCallback(tmp_path, experiment="full", system=False),
               RecordCallback(tmp_path, experiment="light", system=False, snapshot_every=None,
                              dtype="float16")]
    trainer(resumed, max_epochs=3).fit(LP_MODULE(), datamodule=LP_DATA(),
                                       ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [cb.record_path for cb in resumed] == [full.record_path, light.record_path]


class Unfreeze(lp.Callback):
    """Unfreezes the first layer at the start of epoch 2 (fine-tuning)."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 2:
            pl_module.net[0].requires_grad_(True)


def test_skip_frozen_leaves_out_parameters_while_they_do_not_train(tmp_path: Path) -> None:
    module = LP_MODULE()
    module.net[0].requires_grad_(False)
    module.net[2].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cb = callback(tmp_path, skip_frozen=True)
    trainer([cb, Unfreeze()], max_epochs=4).fit(module, datamodule=LP_DATA())
    r = load(cb.record_path)
    assert "net.2.bias" not in r.tensor_names  # frozen for the whole run
    np.testing.assert_array_equal(module.net[2].bias.detach().numpy(),
                                  before["net.2.bias"].numpy())
    assert r.weight("net.0.weight").epochs.tolist() == [2, 3]  # stored once it trains
    assert r.weight("net.2.weight").epochs.tolist() == [0, 1, 2, 3]
    assert r.weight("norm.running_mean").epochs.tolist() == [0, 1, 2, 3]  # buffers: always
    np.testing.assert_array_equal(r.weights()["net.0.weight"],
                                  module.net[0].weight.detach().numpy())


def test_step_rows_of_the_epoch_that_crashed_are_kept(tmp_path: Path) -> None:
    cb = callback(tmp_path, log_steps=True)
    with pytest.raises(RuntimeError, match="boom"):
        trainer([cb], max_epochs=3).fit(LP_MODULE(fail_at=1), datamodule=LP_DATA())
    h = load(cb.record_path).history
    assert h.epochs("train/loss").tolist() == [0]
    # epoch 0's four steps; epoch 1 raised in its first training_step, before logging
    assert h.steps("step_only_step").tolist() == [1, 2, 3, 4]


def test_fit_again_on_the_same_trainer_continues_its_record(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    tr = trainer([cb], max_epochs=2)
    module, data = LP_MODULE(), LP_DATA()
    tr.fit(module, datamodule=data)
    path = cb.record_path
    tr.fit(module, datamodule=data)  # no epoch left: nothing new is recorded
    assert cb.record_path == path and len(load_all(tmp_path, experiment="lit")) == 1
    tr.fit_loop.max_epochs = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        tr.fit(module, datamodule=data)
    assert cb.record_path == path and len(load_all(tmp_path, experiment="lit")) == 1
    r = load(path)
    assert r.status == "completed"
    assert r.history.epochs("train/loss").tolist() == [0, 1, 2, 3]
    assert r.snapshot_epochs == [0, 1, 2, 3]
    assert [x["previous_status"] for x in r.restarts] == ["completed"]
    for name, tensor in module.state_dict().items():
        np.testing.assert_array_equal(r.weights()[name], tensor.numpy())


def test_system_info_is_recorded_once(tmp_path: Path) -> None:
    cb = RecordCallback(tmp_path, experiment="lit")  # system info on, as users get it
    trainer([cb], max_epochs=1).fit(LP_MODULE(), datamodule=LP_DATA())
    system = load(cb.record_path).system
    assert system["packages"]["torch"] == torch.__version__
    assert system["packages"]["pytorch-lightning"] == pl.__version__
    assert isinstance(system["memory"], int) and system["memory"] > 0
    assert system["cpu_count_logical"] >= 1
    assert all(note.startswith("gpus:") for note in system["notes"])  # no driver here
    assert system["gpus"] == [] or all("name" in g for g in system["gpus"])


LAST_SNAPSHOT_FAILS = """
import json, os, resource, signal, sys, warnings
import torch, lightning.pytorch as lp
from recordkit.integrations.lightning import RecordCallback
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

class Wide(lp.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 100_000)  # 1.6 MB of weights
    def training_step(self, batch, i):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

class LimitFileSize(lp.Callback):
    # placed before RecordCallback: from the last epoch on, the file may grow by 600 kB,
    # room for history rows and the status but not for the 1.6 MB snapshot
    def __init__(self, record_callback):
        self.record_callback = record_callback
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 1:
            rec = self.record_callback.recorder
            rec.commit()
            limit = os.path.getsize(rec.path) + 600_000
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

g = torch.Generator().manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=g))
callback = RecordCallback(sys.argv[1], snapshot_every=1, system=False, on_error=sys.argv[2])
trainer = lp.Trainer(max_epochs=2, callbacks=[LimitFileSize(callback), callback],
                     logger=False, enable_progress_bar=False, enable_checkpointing=False,
                     enable_model_summary=False, accelerator="cpu")
raised = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        trainer.fit(Wide(), torch.utils.data.DataLoader(data, batch_size=4))
    except Exception as err:
        raised = type(err).__name__
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
import recordkit
record = recordkit.load(callback.record_path)
print(json.dumps({"raised": raised, "status": record.stored_status, "error": record.error,
                  "snapshots": record.snapshot_epochs,
                  "epochs": record.history.epochs("train/loss").tolist(),
                  "warnings": [str(w.message) for w in caught if "recordkit" in str(w.message)]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("on_error", ["raise", "warn"])
def test_a_last_snapshot_that_fails_is_not_closed_as_completed(tmp_path: Path,
                                                               on_error: str) -> None:
    """The last epoch's snapshot fails on the writer thread (the file may not grow by its
    size): teardown waits for it before closing, so the run ends as on_error says, with
    every epoch's rows, never as completed."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(LAST_SNAPSHOT_FAILS))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "records"), on_error],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["snapshots"] == [0]
    assert result["epochs"] == [0, 1]  # the last epoch's rows are committed all the same
    assert "RLIMIT_FSIZE" in result["error"]
    if on_error == "raise":
        assert result["raised"] == "RecordWriteError"
        assert result["status"] == "failed"  # closed by on_exception, with the error
    else:
        assert result["raised"] is None
        assert result["status"] == "failed"
        assert "recording stopped" in result["error"]
        assert any("could not close the record" in w for w in result["warnings"]), result


KILLED_AFTER_EPOCH_END = """
import os, signal, sys
import torch, lightning.pytorch as lp
from recordkit.integrations.lightning import RecordCallback

class M(lp.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 20_000)
    def training_step(self, batch, i):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

class Kill(lp.Callback):
    # after RecordCallback: its epoch-end hook has run, the snapshot may still be queued
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

g = torch.Generator().manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=g))
callback = RecordCallback(sys.argv[1], snapshot_every=1, system=False)
trainer = lp.Trainer(max_epochs=5, callbacks=[callback, Kill()], logger=False,
                     enable_progress_bar=False, enable_checkpointing=False,
                     enable_model_summary=False, accelerator="cpu")
trainer.fit(M(), torch.utils.data.DataLoader(data, batch_size=4))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0, 2])
def test_sigkill_after_the_epoch_end_hook_keeps_that_epochs_rows(tmp_path: Path,
                                                                 kill_at: int) -> None:
    """The epoch's rows are committed in RecordCallback's own hook, before its snapshot
    is queued: a process killed right after that hook keeps them, and every snapshot the
    record lists reads back."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(KILLED_AFTER_EPOCH_END))
    root = tmp_path / "records"
    done = subprocess.run([sys.executable, str(script), str(root), str(kill_at)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                          cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    [path] = root.rglob("*.h5")
    record = load(path)
    assert record.status == "interrupted"
    assert record.history.epochs("train/loss").tolist() == list(range(kill_at + 1))
    assert set(record.snapshot_epochs) <= set(range(kill_at + 1))
    assert record.snapshot_epochs == sorted(record.snapshot_epochs)
    for epoch in record.snapshot_epochs:
        weights = record.weights(epoch=epoch)
        assert weights["layer.weight"].shape == (20_000, 3)
