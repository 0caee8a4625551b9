"""Record a small Lightning classifier on scikit-learn's digits, then plot what it recorded.

    python examples/lightning_digits.py --root records --out out/lightning_digits.png

Trains an MLP on the 8x8 digits bundled with scikit-learn (no download) with
``RecordCallback``, reads the record back with ``recordkit.load`` and draws the learning
curves and, per layer, how far the weights moved each epoch (the norm of the difference to
the previous snapshot). Runs in well under a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

import recordkit
from recordkit import plot as rkplot
from recordkit.integrations.lightning import RecordCallback

try:  # either package works; recordkit[lightning] installs pytorch_lightning
    import lightning.pytorch as lp
except ImportError:
    import pytorch_lightning as lp  # type: ignore[no-redef]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


class DigitsClassifier(lp.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, digits.target, test_size=0.25,
                                                      random_state=0)

    def loader(xs: np.ndarray, ys: np.ndarray, shuffle: bool) -> DataLoader:
        data = TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys.astype(np.int64)))
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)

    return loader(x_train, y_train, True), loader(x_val, y_val, False)


def plot(record: recordkit.Record, out: Path) -> None:
    """Learning curves and, per layer, how far the weights moved each epoch (the norm of
    the difference to the previous snapshot), drawn by recordkit.plot."""
    fig, (loss_ax, acc_ax, move_ax) = plt.subplots(1, 3, figsize=(18, 4.5))
    rkplot.learning_curves(record, ("train/loss", "val/loss"), ax=loss_ax)
    rkplot.learning_curves(record, ("train/acc", "val/acc"), ax=acc_ax)
    rkplot.weight_movement(record, ax=move_ax)
    loss_ax.set(title="loss")
    acc_ax.set(title="accuracy")
    move_ax.set(title="weight movement per layer", yscale="log")
    fig.suptitle(f"{record.name} ({record.run_id})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="records", help="folder of records")
    parser.add_argument("--out", default="out/lightning_digits.png", help="figure to write")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    lp.seed_everything(0)
    train, val = loaders(args.batch_size)
    callback = RecordCallback(args.root, experiment="digits", name=f"mlp-{args.hidden}",
                              params={"batch_size": args.batch_size})
    trainer = lp.Trainer(max_epochs=args.epochs, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(DigitsClassifier(hidden=args.hidden, lr=args.lr), train, val)

    record = recordkit.load(callback.record_path)
    h = record.history
    print(f"recorded {record.path} ({record.status})")
    print(f"  params: {record.params}")
    print(f"  model: {record.info['model']}")
    print(f"  metrics: {sorted(h)}")
    print(f"  snapshots at epochs {record.snapshot_epochs} of {len(record.tensor_names)} "
          "tensors")
    print(f"  final val/acc {h['val/acc'][-1]:.3f}, val/loss {h['val/loss'][-1]:.3f}")
    plot(record, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
