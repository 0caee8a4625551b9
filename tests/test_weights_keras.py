"""weights.restore into Keras models: after a real model.fit, a model rewound to each
snapshot epoch gives exactly the predictions and accuracy the live model had then
(BatchNormalization's moving statistics included); variables matched by path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.support import require

keras = require("keras", "keras")

import recordkit as rk  # noqa: E402
from recordkit import weights  # noqa: E402
from recordkit.integrations.keras import RecordCallback  # noqa: E402
from recordkit.weights import WeightsError  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6)).astype("float32")
Y = ((X[:, 0] + X[:, 1] > 0).astype("int64") + (X[:, 2] > 1)).astype("int64")


def model(name: str = "net", hidden: int = 8) -> Any:
    """Named layers: a second model of the same code gets the same variable paths
    (Keras numbers unnamed layers per process: dense_1, dense_2...)."""
    keras.utils.set_random_seed(0)
    built = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(hidden, activation="relu", name="hidden"),
                              keras.layers.BatchNormalization(name="norm"),
                              keras.layers.Dense(3, name="out")], name=name)
    built.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return built


def evaluate(net: Any) -> tuple[np.ndarray, float]:
    logits = np.asarray(net(X, training=False))
    return logits, float(np.mean(logits.argmax(1) == Y))


class LiveAccuracy(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, tuple[np.ndarray, float]] = {}

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seen[epoch] = evaluate(self.model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    net = model()
    live = LiveAccuracy()
    callback = RecordCallback(tmp_path_factory.mktemp("k"), experiment="w", system=False,
                              snapshot_every=2)
    net.fit(X, Y, batch_size=16, epochs=5, verbose=0, shuffle=False,
            callbacks=[live, callback])
    return net, live, rk.load(callback.record_path)


def test_restored_snapshots_give_the_live_accuracy_of_their_epoch(trained):
    net, live, record = trained
    assert record.snapshot_epochs == [1, 3, 4]
    assert any("moving_variance" in n for n in record.tensor_names)
    accuracies = {e: live.seen[e][1] for e in record.snapshot_epochs}
    assert len(set(accuracies.values())) > 1
    for epoch in record.snapshot_epochs:
        fresh = model()
        assert weights.restore(fresh, record, epoch) is fresh
        logits, accuracy = evaluate(fresh)
        assert accuracy == accuracies[epoch]
        np.testing.assert_array_equal(logits, live.seen[epoch][0])
        stored = record.weights(epoch)
        for variable in fresh.weights:
            np.testing.assert_array_equal(np.asarray(variable), stored[variable.path])
    weights.restore(net, record, 1)  # the trained model itself, rewound
    np.testing.assert_array_equal(evaluate(net)[0], live.seen[1][0])
    weights.restore(net, record)
    np.testing.assert_array_equal(evaluate(net)[0], live.seen[4][0])


def test_variables_that_do_not_match_are_refused_naming_them(trained):
    _, _, record = trained
    with pytest.raises(WeightsError, match=r"'net/hidden/kernel'.*\[6, 8\].*\[6, 4\]"):
        weights.restore(model(hidden=4), record, 1)
    for strict in (True, False):  # nothing in common: refused either way
        with pytest.raises(WeightsError, match=r"none of the model's 8 tensors "
                           r"\(\['other/hidden/kernel'.*dense_1.*name them") as caught:
            weights.restore(model(name="other"), record, 1, strict=strict)
        assert str(record.path) in str(caught.value)
    with pytest.raises(WeightsError, match=r"no snapshot at epoch 2 to restore"):
        weights.restore(model(), record, 2)
    partial = model()
    kernel = np.asarray(partial.get_layer("out").kernel).copy()
    state = {k: v for k, v in record.weights(3).items() if not k.startswith("net/out/")}
    weights.restore(partial, state, strict=False)
    np.testing.assert_array_equal(np.asarray(partial.get_layer("out").kernel), kernel)
    np.testing.assert_array_equal(np.asarray(partial.get_layer("hidden").kernel),
                                  state["net/hidden/kernel"])


def test_a_bfloat16_model_restores_bit_for_bit(tmp_path):
    keras.utils.set_random_seed(1)

    def bf16_model() -> Any:
        built = keras.Sequential([keras.Input((6,)),
                                  keras.layers.Dense(8, name="hidden", dtype="bfloat16"),
                                  keras.layers.Dense(3, name="out", dtype="bfloat16")],
                                 name="half")
        built.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return built

    net = bf16_model()
    callback = RecordCallback(tmp_path, experiment="w", system=False)
    net.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    record = rk.load(callback.record_path)
    stored = record.weights(1)
    assert {a.dtype.name for a in stored.values()} == {"bfloat16"}
    fresh = weights.restore(bf16_model(), record, 1)
    for variable in fresh.weights:
        value = np.asarray(variable.numpy())
        assert value.dtype.name == "bfloat16"
        np.testing.assert_array_equal(value.view(np.uint16), stored[variable.path].view(np.uint16))
    np.testing.assert_array_equal(np.asarray(fresh(X)), np.asarray(net(X)))
