"""The Lightning behaviour recordkit relies on beyond Lightning's API (see
``recordkit.integrations._lightning_metrics``): each read of ``trainer.callback_metrics``
puts new objects under the names the running loop logged, and only under those. A real
``Trainer.fit`` on both installed Lightning packages; a failure here means a Lightning
release changed that, and the epoch history of the Lightning callback would be wrong."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import require

pl = require("pytorch_lightning", "lightning")
torch = require("torch", "lightning")

try:  # the `lightning` package is optional beside pytorch_lightning ([lightning] extra)
    import lightning.pytorch as lp
except ImportError:
    lp = pl

from recordkit.integrations._lightning_metrics import (  # noqa: E402
    running_loop_metrics,
    written_since,
)

PACKAGES = {"pytorch_lightning": pl, **({"lightning.pytorch": lp} if lp is not pl else {})}

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # a deprecation inside Lightning


def fit_and_watch(package: Any) -> dict[str, list[Any]]:
    """Fit two epochs; what the probe callback read at each hook."""

    class Module(package.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.net(batch[0]).pow(2).mean()
            if self.current_epoch == 0:
                self.log("first_epoch_only", 1.0, on_epoch=True, on_step=False)
            # the same value every epoch: only identity, not the value, tells it was logged
            self.log("constant", 2.0, on_epoch=True, on_step=False)
            self.log("per_step", loss, on_step=True, on_epoch=False)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val", self.net(batch[0]).pow(2).mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    seen: dict[str, list[Any]] = {"epoch_end": [], "validation": [], "batch_end": []}

    class Probe(package.Callback):
        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            self.before = dict(trainer.callback_metrics)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                seen["validation"].append(
                    sorted(written_since(self.before, trainer.callback_metrics)))

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            seen["batch_end"].append(sorted(running_loop_metrics(trainer)))

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            metrics = running_loop_metrics(trainer)
            seen["epoch_end"].append({k: float(v) for k, v in metrics.items()})
            seen.setdefault("all", []).append(sorted(trainer.callback_metrics))

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 3, generator=torch.Generator()
                                                   .manual_seed(0))), batch_size=4)
    trainer = package.Trainer(max_epochs=2, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, enable_model_summary=False,
                              num_sanity_val_steps=1, callbacks=[Probe()])
    trainer.fit(Module(), train_dataloaders=data, val_dataloaders=data)
    return seen


@pytest.mark.parametrize("package_name", sorted(PACKAGES))
def test_callback_metrics_tell_the_running_loop_by_identity(package_name: str) -> None:
    seen = fit_and_watch(PACKAGES[package_name])
    # every name is still in callback_metrics at the second epoch's end ...
    assert seen["all"][1] == ["constant", "first_epoch_only", "per_step", "val"]
    # ... but only those this training epoch logged are new objects: not the first epoch's
    # metric, not validation's, and the constant one although its value did not change
    assert seen["epoch_end"] == [{"constant": 2.0, "first_epoch_only": 1.0},
                                 {"constant": 2.0}]
    # a validation run writes its own metrics and nothing else
    assert seen["validation"] == [["val"], ["val"]]
    # after each training step, that step's per-step values
    assert seen["batch_end"] == [["per_step"]] * 4


def test_written_since_compares_objects_not_values() -> None:
    same = torch.tensor(1.0)
    before = {"kept": same, "rewritten": torch.tensor(1.0)}
    after = {"kept": same, "rewritten": torch.tensor(1.0), "new": torch.tensor(0.0)}
    assert sorted(written_since(before, after)) == ["new", "rewritten"]
