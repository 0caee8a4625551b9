"""A small sweep on scikit-learn's digits: learning rate × width, with a PyTorch Lightning
model and a Keras model, each recorded by its RecordCallback; then one table ranking all
runs and one figure of their learning curves.

    python examples/sweep_digits.py --root records --out out/sweep_digits.png

The training functions hold no recording code and no params are handed to the callbacks:
each records what it sees (the module's hyperparameters, the optimizer and its learning
rate, the batch size, the model's layer widths, system info), per-epoch metrics and a
weight snapshot per epoch into ``<root>/digits-sweep/<run_id>.h5``; ``Record.config``
gives both frameworks' runs the same names (``framework``, ``lr``, ``batch_size``...).
Running it again adds runs to the same experiment (they share config hashes with the
earlier ones, so ``RecordSet.group_by()`` averages over the repeats).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LEARNING_RATES = (0.01, 0.001)
WIDTHS = (16, 64)
EXPERIMENT = "digits-sweep"


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised 8×8 digit images (64 features) and labels, split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)
    return x_train, x_val, y_train.astype(np.int64), y_val.astype(np.int64)


def train_lightning(data: tuple[np.ndarray, ...], lr: float, width: int, epochs: int,
                    callback: object) -> None:
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x_train, x_val, y_train, y_val = (torch.from_numpy(a) for a in data)

    class DigitsMLP(pl.LightningModule):
        def __init__(self, width: int, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()  # what Lightning users do; the callback reads it
            self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

        def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: list[torch.Tensor], _: int) -> None:
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(DigitsMLP(width, lr),
                DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True),
                DataLoader(TensorDataset(x_val, y_val), batch_size=256))


def train_keras(data: tuple[np.ndarray, ...], lr: float, width: int, epochs: int,
                callback: object) -> None:
    import keras

    keras.utils.set_random_seed(0)
    x_train, x_val, y_train, y_val = data
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs,
              batch_size=64, verbose=0, callbacks=[callback])


def sweep(root: Path, epochs: int) -> None:
    from recordkit.integrations import keras as rk_keras
    from recordkit.integrations import lightning as rk_lightning

    # Quiet frameworks (after their import, which sets their log levels): the sweep's own
    # lines and the table are what this prints.
    for logger in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning")

    data = digits()
    frameworks = (("lightning", train_lightning, rk_lightning.RecordCallback),
                  ("keras", train_keras, rk_keras.RecordCallback))
    for (framework, train, callback_class), lr, width in itertools.product(
            frameworks, LEARNING_RATES, WIDTHS):
        callback = callback_class(root, experiment=EXPERIMENT,
                                  name=f"{framework}-lr{lr}-w{width}", snapshot_every=1)
        print(f"training {framework} lr={lr} width={width}", flush=True)
        train(data, lr, width, epochs, callback)


def report(root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import recordkit as rk
    from recordkit import plot

    runs = rk.load_all(root, experiment=EXPERIMENT)
    table = runs.to_dataframe()
    # One width column from what each callback captured: the Lightning module's
    # hyperparameter `width`, the Keras model's first Dense layer.
    if "model.layers.dense.units" in table:
        keras_width = table["model.layers.dense.units"]
        table["width"] = (table["width"].fillna(keras_width) if "width" in table
                          else keras_width).astype("Int64")
    table = table.sort_values(["lr", "width", "framework"])
    columns = ["name", "status", "framework", "optimizer", "lr", "width", "batch_size",
               "parameters", "val_accuracy.final", "val_accuracy.best",
               "val_accuracy.best_epoch", "val_loss.final"]
    print(table[[c for c in columns if c in table.columns]].to_string(index=False))
    fig = plot.learning_curves(runs, ["val_loss", "val_accuracy"],
                               colours=plot.run_colours(r.run_id for r in runs))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"learning curves of {len(runs)} runs: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("records"),
                        help="folder of records (default: records)")
    parser.add_argument("--out", type=Path, default=Path("out/sweep_digits.png"),
                        help="the learning-curve figure (default: sweep_digits.png)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    args = parser.parse_args()
    sweep(args.root, args.epochs)
    report(args.root, args.out)


if __name__ == "__main__":
    main()
