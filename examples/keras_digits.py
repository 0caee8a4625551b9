"""Record a small Keras classifier on scikit-learn's digits, then plot what it recorded.

    python examples/keras_digits.py --root records --out out/keras_digits.png

The Keras twin of ``lightning_digits.py``: the same data (the 8x8 digits bundled with
scikit-learn, no download, the same split), the same MLP and the same plots (learning
curves and, per layer, how far the weights moved each epoch), recorded with
``recordkit.integrations.keras.RecordCallback`` into the same experiment, so that
``recordkit.load_all(root, experiment="digits")`` holds the runs of both frameworks.
Runs in well under a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import recordkit
from recordkit import plot as rkplot
from recordkit.integrations.keras import RecordCallback

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, digits.target, test_size=0.25,
                                                      random_state=0)
    return x_train, x_val, y_train, y_val


def build(hidden: int, lr: float, steps_per_epoch: int) -> keras.Model:
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hidden, activation="relu", name="hidden1"),
        keras.layers.Dense(hidden, activation="relu", name="hidden2"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_mlp")
    # Cosine decay over 10 epochs, as CosineAnnealingLR(T_max=10) in the Lightning example.
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=10 * steps_per_epoch)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def plot(record: recordkit.Record, out: Path) -> None:
    """Learning curves and, per layer, how far the weights moved each epoch (the norm of
    the difference to the previous snapshot), drawn by recordkit.plot."""
    fig, (loss_ax, acc_ax, move_ax) = plt.subplots(1, 3, figsize=(18, 4.5))
    rkplot.learning_curves(record, ("loss", "val_loss"), ax=loss_ax)
    rkplot.learning_curves(record, ("accuracy", "val_accuracy"), ax=acc_ax)
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
    parser.add_argument("--out", default="out/keras_digits.png", help="figure to write")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x_train, x_val, y_train, y_val = data()
    steps = -(-len(x_train) // args.batch_size)
    callback = RecordCallback(args.root, experiment="digits", name=f"keras-mlp-{args.hidden}",
                              params={"hidden": args.hidden, "lr": args.lr,
                                      "batch_size": args.batch_size})
    model = build(args.hidden, args.lr, steps)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              validation_data=(x_val, y_val), callbacks=[callback])

    record = recordkit.load(callback.record_path)
    h = record.history
    print(f"recorded {record.path} ({record.status})")
    print(f"  params: {record.params}")
    print(f"  model: { {k: v for k, v in record.info['model'].items() if k != 'config'} }")
    fit = record.info["fit"]
    print(f"  fit: batch_size={fit['batch_size']} shuffle={fit['shuffle']} "
          f"epochs={fit['epochs']} steps_per_epoch={fit['steps_per_epoch']}")
    print(f"  metrics: {sorted(h)}")
    print(f"  snapshots at epochs {record.snapshot_epochs} of {len(record.tensor_names)} "
          "tensors")
    print(f"  final val_accuracy {h['val_accuracy'][-1]:.3f}, val_loss "
          f"{h['val_loss'][-1]:.3f}")
    plot(record, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
