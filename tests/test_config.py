"""A run's configuration (recordkit.config): the user's params and the captured facts under
one set of names for Keras and Lightning, and the hash that tells configurations apart but
not repeats. Real fits, no params passed to the callbacks, read back from the files.

Budget: ~40 s (12 small fits).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

import recordkit
from recordkit.config import COMMON_KEYS, config_hash, run_config

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # a deprecation in Lightning

HAS_KERAS = importlib.util.find_spec("keras") is not None
HAS_LIGHTNING = importlib.util.find_spec("torch") is not None and (
    importlib.util.find_spec("lightning") is not None
    or importlib.util.find_spec("pytorch_lightning") is not None)


def _configs(root: Path) -> list[dict[str, Any]]:
    return [run_config(r.params, r.info) for r in recordkit.load_all(root)]


def test_a_user_param_wins_a_clash_and_the_clash_is_visible() -> None:
    info = {"optimizer": {"class": "Adam", "learning_rate": 0.001},
            "fit": {"batch_size": 32, "epochs": 3}}
    config = run_config({"lr": 0.01, "batch_size": 32, "model": {"depth": 3}}, info)
    assert config["lr"] == 0.01 and config["captured.lr"] == 0.001
    assert config["batch_size"] == 32 and "captured.batch_size" not in config  # same value
    assert config["model.depth"] == 3 and config["optimizer"] == "Adam"
    assert list(config)[:3] == ["lr", "batch_size", "model.depth"]  # user params first


def test_config_hash_ignores_seeds_paths_and_run_ids_only() -> None:
    base = {"lr": 0.1, "width": 64, "optimizer": "SGD"}
    same = [{**base, "seed": 1}, {**base, "seed": 2, "data_dir": "/a"},
            {**base, "random_seed": 3, "run_name": "x", "output_dir": "/tmp/y"}]
    assert len({config_hash(c) for c in same}) == 1
    other = [{**base, "lr": 0.2}, {**base, "width": 65}, {**base, "optimizer": "Adam"},
             {**base, "lr": 0.1, "dropout": 0.0}, {**base, "seedling": 1}]
    hashes = {config_hash(c) for c in other} | {config_hash(same[0])}
    assert len(hashes) == len(other) + 1
    assert config_hash({"lr": 0.001}) == config_hash({"lr": 1e-3})


def test_an_info_of_neither_framework_gives_nothing_wrong() -> None:
    assert run_config({"a": 1}, {}) == {"a": 1}
    assert run_config({}, {"trainer": "not a mapping", "optimizers": [3]}) == {}
    assert run_config({}, {"model": {"config": {"layers": [{"config": 1}, 5]}}}) == {}


@pytest.mark.skipif(not HAS_KERAS, reason="keras is not installed")
def test_a_keras_sweep_without_params_is_told_apart(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from recordkit.integrations.keras import RecordCallback

    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    sweep = [(0.01, 8, "adam", 16), (0.001, 8, "adam", 16), (0.01, 12, "adam", 16),
             (0.01, 8, "sgd", 16), (0.01, 8, "adam", 32), (0.01, 8, "adam", 16)]
    for i, (lr, units, name, batch) in enumerate(sweep):
        keras.utils.set_random_seed(i)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(units, activation="relu"),
                                  keras.layers.Dense(2)])
        optimizer = (keras.optimizers.Adam(lr) if name == "adam"
                     else keras.optimizers.SGD(lr, momentum=0.9))
        model.compile(optimizer=optimizer, metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=batch, epochs=2, verbose=0,
                  callbacks=[RecordCallback(tmp_path, system=False, snapshot_every=None)])
    configs = sorted(_configs(tmp_path), key=lambda c: c["optimizer"] + repr(
        (c["lr"], c["model.layers.dense.units"], c["batch_size"])))
    seen = sorted((c["optimizer"], c["lr"], c["model.layers.dense.units"], c["batch_size"])
                  for c in configs)
    assert seen == sorted((n.upper() if n == "sgd" else n.capitalize(), lr, u, b)
                          for lr, u, n, b in sweep)
    for c in configs:
        assert c["framework"] == "keras" and c["model"] == "Sequential"
        assert c["epochs"] == 2 and c["steps_per_epoch"] == -(-64 // c["batch_size"])
        assert c["parameters"] == 6 * c["model.layers.dense.units"] + c[
            "model.layers.dense.units"] + 2 * c["model.layers.dense.units"] + 2
        assert c["model.layers.dense.activation"] == "relu" and c["seed"] in range(6)
        assert c.get("optimizer.momentum") == (0.9 if c["optimizer"] == "SGD" else None)
    hashes = [config_hash(c) for c in configs]
    assert len(set(hashes)) == 5  # the last run repeats the first configuration
    assert set(COMMON_KEYS) - {"max_steps", "accumulate_grad_batches"} <= set(configs[0])
    _check_tables(tmp_path, "model.layers.dense.units", 12, sweep_size=6, configurations=5)


def _check_tables(root: Path, width_key: str, wide: int, *, sweep_size: int,
                  configurations: int) -> None:
    """What a user of the sweep sees: sortable columns with the true values, groups of
    repeats, lookups by captured keys, a clear error on a typo."""
    pytest.importorskip("pandas")
    runs = recordkit.load_all(root)
    assert len({r.config_hash for r in runs}) == configurations
    table = runs.to_dataframe().sort_values(["lr", width_key])
    assert table["lr"].tolist() == sorted(table["lr"].tolist())
    assert set(table[width_key]) == {8, wide} and (table["duration"] > 0).all()
    lr_metrics = [c for c in table.columns if c.startswith(("lr", "learning_rate"))
                  and c.endswith(".final")]
    assert lr_metrics, list(table.columns)  # the callbacks log the learning rate
    assert not [c for c in table.columns if c.startswith(("lr-", "learning_rate."))
                and c.endswith(".best")]
    assert len(runs.filter(**{width_key: wide})) == 1
    assert len(runs.filter(lr=0.01)) + len(runs.filter(lr=0.1)) >= sweep_size - 1
    groups = runs.group_by()
    assert len(groups) == configurations and sorted(groups["runs"])[-1] == 2
    with pytest.raises(recordkit.RecordkitError, match="'learning_rat'.*the runs have: .*lr"):
        runs.filter(learning_rat=0.01)
    with pytest.raises(recordkit.RecordkitError, match="'widht'"):
        runs.group_by("widht")


@pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed")
def test_a_lightning_sweep_without_params_is_told_apart(tmp_path: Path) -> None:
    import torch
    try:
        import lightning.pytorch as lp
    except ImportError:
        import pytorch_lightning as lp  # type: ignore[no-redef]

    from recordkit.integrations.lightning import RecordCallback

    class Net(lp.LightningModule):
        def __init__(self, width: int = 8, lr: float = 0.1, opt: str = "sgd") -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train/loss", loss, on_epoch=True, on_step=False)
            return loss

        def configure_optimizers(self) -> Any:
            if self.hparams.opt == "sgd":
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.5)
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    data = torch.utils.data.TensorDataset(torch.randn(48, 3), torch.randn(48, 1))
    sweep = [(8, 0.1, "sgd", 8, 0), (8, 0.01, "sgd", 8, 0), (16, 0.1, "sgd", 8, 0),
             (8, 0.1, "adam", 8, 0), (8, 0.1, "sgd", 16, 0), (8, 0.1, "sgd", 8, 1)]
    for width, lr, opt, batch, seed in sweep:
        lp.seed_everything(seed, verbose=False)
        trainer = lp.Trainer(max_epochs=2, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False,
                             callbacks=[RecordCallback(tmp_path, system=False,
                                                       snapshot_every=None)])
        trainer.fit(Net(width, lr, opt), torch.utils.data.DataLoader(data, batch_size=batch))
    configs = _configs(tmp_path)
    seen = sorted((c["width"], c["lr"], c["optimizer"], c["batch_size"], c["seed"])
                  for c in configs)
    names = {"sgd": "SGD", "adam": "Adam"}
    assert seen == sorted((w, lr, names[o], b, s) for w, lr, o, b, s in sweep)
    for c in configs:
        assert c["framework"] == "lightning" and c["model"] == "Net"
        assert c["epochs"] == 2 and c["precision"] == "32-true" and c["world_size"] == 1
        assert c["parameters"] == 3 * c["width"] + c["width"] + c["width"] + 1
        assert c.get("optimizer.momentum") == (0.5 if c["optimizer"] == "SGD" else None)
        assert "_instantiator" not in c
    by_hash: dict[str, list[int]] = {}
    for c in configs:
        by_hash.setdefault(config_hash(c), []).append(c["seed"])
    assert sorted(map(sorted, by_hash.values())) == [[0], [0], [0], [0], [0, 1]]
    _check_tables(tmp_path, "width", 16, sweep_size=6, configurations=5)
