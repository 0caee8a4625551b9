"""LightningCLI (issue 14 item 4): the configuration a run was started with is in its
record: the parsed config as ``info["cli_config"]`` (internal keys dropped), the YAML text
as the extra ``cli_config.yaml``, the module's init arguments as params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import require

require("pytorch_lightning", "lightning")
torch = require("torch", "lightning")
pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse")
try:
    import lightning.pytorch as lp
    from lightning.pytorch.cli import LightningCLI
except ImportError:  # pragma: no cover - the standalone package only
    import pytorch_lightning as lp
    from pytorch_lightning.cli import LightningCLI

import recordkit  # noqa: E402
from recordkit.integrations.lightning import RecordCallback  # noqa: E402


class Regressor(lp.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 1))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Data(lp.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> Any:
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(32, 3, generator=g),
                                              torch.randn(32, 1, generator=g))
        return torch.utils.data.DataLoader(data, batch_size=self.hparams.batch_size)


def test_a_lightning_cli_run_stores_its_config(tmp_path: Path) -> None:
    callback = RecordCallback(tmp_path / "records", experiment="cli")
    cli = LightningCLI(
        Regressor, Data,
        args=["fit", "--model.width=6", "--model.lr=0.05", "--data.batch_size=16",
              "--trainer.max_epochs=2"],
        trainer_defaults={"callbacks": [callback], "logger": False,
                          "enable_progress_bar": False, "enable_checkpointing": False,
                          "enable_model_summary": False, "accelerator": "cpu",
                          "default_root_dir": str(tmp_path / "run")},
        save_config_kwargs={"overwrite": True})
    record = recordkit.load(callback.record_path)
    assert record.status == "completed"
    stored = record.info["cli_config"]
    assert stored["model"] == {"width": 6, "lr": 0.05}
    assert stored["data"] == {"batch_size": 16}
    assert stored["trainer"]["max_epochs"] == 2
    assert "config" not in stored and not any(k.startswith("_") for k in stored)
    written = (Path(cli.trainer.log_dir) / "config.yaml").read_text()
    assert record.extras["cli_config.yaml"] == written  # what SaveConfigCallback wrote
    assert record.params["width"] == 6 and record.params["lr"] == 0.05
    assert "_instantiator" not in record.params and "_class_path" not in record.params
    assert record.config["batch_size"] == 16


def test_a_run_without_the_cli_stores_no_cli_config(tmp_path: Path) -> None:
    callback = RecordCallback(tmp_path / "records")
    trainer = lp.Trainer(max_epochs=1, callbacks=[callback], logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Regressor(), datamodule=Data())
    record = recordkit.load(callback.record_path)
    assert "cli_config" not in record.info and "cli_config.yaml" not in record.extras
