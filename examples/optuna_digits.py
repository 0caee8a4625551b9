"""An Optuna study on scikit-learn's digits with a Keras model: each trial recorded by
the Keras RecordCallback given the trial, weak trials pruned by a median pruner through
optuna-integration's KerasPruningCallback, then the trials ranked from their records.

    python examples/optuna_digits.py --root records --trials 6

The study lives in a journal file (``<root>/optuna-digits.journal``), the storage Optuna
workers on several machines share over NFS (docs/SCALE.md): run the same command in more
terminals, or on more nodes with the root on shared storage, and the workers share the
study (``load_if_exists=True``) and write their records side by side. ``RecordStudy``
adds each trial's state and objective value to its record when the trial ends; a pruned
trial's record reads ``pruned`` and holds the epochs it trained.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

EXPERIMENT = "optuna-digits"
EPOCHS = 6


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised 8×8 digit images (64 features) and labels, split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)
    return x_train, x_val, y_train.astype(np.int64), y_val.astype(np.int64)


def make_objective(root: Path, data: tuple[np.ndarray, ...]) -> Callable[[Any], float]:
    import keras
    from optuna_integration import KerasPruningCallback

    from recordkit.integrations.keras import RecordCallback

    x_train, x_val, y_train, y_val = data

    def objective(trial: Any) -> float:
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        width = trial.suggest_categorical("width", [8, 32, 64])
        keras.utils.set_random_seed(trial.number)
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(width, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS,
            batch_size=64, verbose=0, callbacks=[
                RecordCallback(root, EXPERIMENT, trial=trial),  # before the pruner: the
                KerasPruningCallback(trial, "val_accuracy"),  # pruned epoch is recorded
            ])
        return float(history.history["val_accuracy"][-1])

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("records"))
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")

    import optuna

    import recordkit as rk
    from recordkit.integrations.optuna import RecordStudy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.root.mkdir(parents=True, exist_ok=True)
    journal = optuna.storages.journal.JournalFileBackend(
        str(args.root / "optuna-digits.journal"))
    study = optuna.create_study(
        study_name=EXPERIMENT, storage=optuna.storages.JournalStorage(journal),
        direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    study.optimize(make_objective(args.root, digits()), n_trials=args.trials,
                   callbacks=[RecordStudy(args.root, EXPERIMENT)])

    # Rank the trials from their records alone: the study is not needed to read them.
    runs = rk.load_all(args.root, experiment=EXPERIMENT)
    table = runs.to_dataframe()
    table["trial"] = [r.info["optuna"]["trial"] for r in runs]
    table["value"] = [r.info["optuna"].get("value") for r in runs]
    table = table.sort_values("val_accuracy.best", ascending=False)
    columns = ["trial", "status", "lr", "width", "epochs", "val_accuracy.best",
               "val_accuracy.best_epoch", "value"]
    print(table[[c for c in columns if c in table]].to_string(index=False))
    pruned = (table["status"] == "pruned").sum()
    print(f"\n{len(table)} trials recorded under {args.root / EXPERIMENT}, {pruned} pruned; "
          f"best by the study: trial {study.best_trial.number} "
          f"(val_accuracy {study.best_value:.3f})")


if __name__ == "__main__":
    main()
