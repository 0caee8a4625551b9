"""What a full weight history shows: layer rotation, the trajectory and spectra of a digits
classifier, then a rewind to an early epoch.

    python examples/weight_dynamics.py --root records --out out/weight_dynamics

Trains the MLP of ``lightning_digits.py`` on scikit-learn's 8x8 digits with a snapshot
every epoch, then, from the record alone (``recordkit.weights`` and ``recordkit.plot``):

- ``rotation.png``: per layer, the cosine distance of its weights to their initial values
  (layer rotation, Carbonnelle & De Vleeschouwer 2019);
- ``trajectory.png``: the weights' path in the plane of their first two principal axes,
  epochs labelled (Li et al. 2018);
- ``spectral_norms.png``: the spectral norm of each weight matrix over epochs;

and finally restores the snapshot of an early epoch into a new model (``weights.restore``,
as in rewinding, Frankle et al. 2020) and prints the validation accuracy it gives, beside
the one recorded during training at that epoch. Runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch
from lightning_digits import DigitsClassifier, loaders

import recordkit
from recordkit import plot, weights
from recordkit.integrations.lightning import RecordCallback

try:  # either package works; recordkit[lightning] installs pytorch_lightning
    import lightning.pytorch as lp
except ImportError:
    import pytorch_lightning as lp  # type: ignore[no-redef]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


def accuracy(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> float:
    """The share of *loader*'s samples the model classifies right, in eval mode."""
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    return right / total


def save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="records", help="folder of records")
    parser.add_argument("--out", default="out/weight_dynamics", help="folder of figures")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rewind", type=int, default=1, help="the epoch to rewind to")
    args = parser.parse_args()

    lp.seed_everything(0)
    train, val = loaders(batch_size=64)
    callback = RecordCallback(args.root, experiment="digits", name="weight-dynamics",
                              snapshot_every=1)
    trainer = lp.Trainer(max_epochs=args.epochs, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(DigitsClassifier(), train, val)

    record = recordkit.load(callback.record_path)
    print(f"recorded {record.path}: snapshots at epochs {record.snapshot_epochs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rotation = weights.distance(record, "init", per="layer", metric="cosine")
    print("layer rotation (1 - cos to the initial weights) at the last epoch:")
    for layer, value in rotation.iloc[-1].items():
        print(f"  {layer}: {value:.4f}")
    save(plot.weight_distance(record, metric="cosine"), out / "rotation.png")
    path = weights.trajectory(record, k=2)
    print(f"trajectory: the first two principal axes hold "
          f"{path.explained_variance_ratio.sum():.1%} of the weights' variance over epochs")
    save(plot.weight_trajectory(record), out / "trajectory.png")
    save(plot.spectral_norms(record), out / "spectral_norms.png")

    # Rewind: a new model given the weights of an early epoch gives that epoch's accuracy.
    early = weights.restore(DigitsClassifier(), record, epoch=args.rewind)
    history = record.history
    recorded = dict(zip(history.epochs("val/acc").tolist(), history["val/acc"].tolist()))
    print(f"rewound to epoch {args.rewind}: val accuracy {accuracy(early, val):.4f} "
          f"(recorded during training: {recorded[args.rewind]:.4f}; after the last epoch "
          f"{history['val/acc'][-1]:.4f})")


if __name__ == "__main__":
    main()
