"""Keras RecordCallback: real model.fit on tiny models, records read back and compared."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import SUBPROCESS_TIMEOUT_S, require

keras = require("keras", "keras")

import recordkit  # noqa: E402
from recordkit.integrations.keras import RecordCallback, is_chief  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 6)).astype("float32")
Y = (X[:, 0] > 0).astype("int64")
REPO = Path(__file__).resolve().parents[1]


def tiny_model(batchnorm: bool = True) -> Any:
    keras.utils.set_random_seed(0)
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(2))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class Crash(keras.callbacks.Callback):
    """Raises at the start of one epoch, like a failing data pipeline."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if epoch == self.at:
            raise RuntimeError(f"boom at epoch {epoch}")


def fit(model: Any, callbacks: list[Any], epochs: int = 3, **kwargs: Any) -> Any:
    return model.fit(X, Y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks,
                     **kwargs)


def assert_history_equal(record: recordkit.Record, history: dict[str, list[Any]],
                         epochs: list[int]) -> None:
    for key, values in history.items():
        assert record.history.epochs(key).tolist() == epochs, key
        assert record.history[key].tolist() == [float(v) for v in values], key


def test_history_info_and_final_snapshot(tmp_path: Path) -> None:
    model = tiny_model()
    callback = RecordCallback(tmp_path, experiment="k", name="tiny", params={"depth": 2},
                              snapshot_every=2)
    hist = fit(model, [callback], epochs=3, validation_data=(X[:8], Y[:8]))
    record = recordkit.load(callback.record_path)
    assert record.status == "completed" and record.name == "tiny"
    assert record.params == {"depth": 2}
    # exactly History.history, plus the learning rate and the epoch wall time
    assert set(record.history) == set(hist.history) | {"learning_rate", "epoch_time"}
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(hist.history)
    assert_history_equal(record, hist.history, [0, 1, 2])
    assert record.history["learning_rate"].tolist() == pytest.approx([0.01] * 3)
    assert (record.history["epoch_time"] > 0).all()
    # every 2nd epoch, and the final epoch always; all weights with exact values
    assert record.snapshot_epochs == [1, 2]
    final = record.weights(epoch=2)
    expected = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    assert any("moving_variance" in name for name in expected)  # non-trainable too
    assert set(final) == set(expected)
    for name, value in expected.items():
        assert final[name].dtype == value.dtype
        np.testing.assert_array_equal(final[name], value)
    info = record.info
    counts = info["model"]
    assert counts["parameters"] == model.count_params()
    assert counts["trainable_parameters"] == sum(int(np.prod(v.shape))
                                                 for v in model.trainable_weights)
    assert counts["non_trainable_parameters"] == 16  # BatchNorm moving mean + variance
    assert counts["class"].endswith("Sequential")
    assert counts["config"]["name"] == model.name
    assert info["optimizer"]["class"] == "Adam"
    assert info["optimizer"]["learning_rate"] == pytest.approx(0.01)
    assert info["compile"]["loss"] == "sparse_categorical_crossentropy"
    assert info["compile"]["metrics"] == ["accuracy"]
    assert info["fit"]["epochs"] == 3 and info["fit"]["steps_per_epoch"] == 3
    assert info["fit"]["initial_epoch"] == 0 and info["fit"]["validation"] is True
    # read from the running fit() call: Keras does not pass these to callbacks
    assert info["fit"]["batch_size"] == 16 and info["fit"]["shuffle"] is True
    assert info["fit"]["validation_split"] == 0.0 and info["fit"]["validation_data_given"]
    assert info["fit"]["class_weight_given"] is False
    assert info["fit"]["not_visible"] == []
    assert info["distribution"]["replicas"] == 1


def test_fit_arguments_callbacks_cannot_see_are_recorded(tmp_path: Path) -> None:
    callback = RecordCallback(tmp_path, system=False, fit_args={"augment": "flip"})
    model = tiny_model()
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False, validation_split=0.25,
              class_weight={0: 1.0, 1: 2.0}, validation_freq=2, callbacks=[callback])
    fit = recordkit.load(callback.record_path).info["fit"]
    assert fit["batch_size"] == 8 and fit["shuffle"] is False and fit["epochs"] == 2
    assert fit["validation_split"] == 0.25 and fit["validation_freq"] == 2
    assert fit["class_weight_given"] is True and fit["sample_weight_given"] is False
    assert fit["augment"] == "flip" and fit["not_visible"] == []
    assert fit["steps_per_epoch"] == 5  # 36 training samples of 48 in batches of 8


def test_vector_metrics_are_stored_per_element(tmp_path: Path) -> None:
    """F1Score(average=None) puts one value per class in History.history: each is
    stored, and the elements read back as History has them."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy",
                  metrics=[keras.metrics.F1Score(average=None), "accuracy"])
    labels = keras.utils.to_categorical((X[:, 0] > 0).astype("int64") + (X[:, 1] > 1), 3)
    callback = RecordCallback(tmp_path)
    hist = model.fit(X, labels, batch_size=16, epochs=3, verbose=0, callbacks=[callback],
                     validation_data=(X[:8], labels[:8]))
    record = recordkit.load(callback.record_path)
    for key in ("f1_score", "val_f1_score"):
        expected = np.stack([np.asarray(v, dtype=np.float64) for v in hist.history[key]])
        assert expected.shape == (3, 3)
        meta = record.info["vector_metrics"][key]
        assert meta == {"shape": [3], "elements": [f"{key}[{i}]" for i in range(3)]}
        stored = np.stack([record.history[name] for name in meta["elements"]], axis=1)
        np.testing.assert_array_equal(stored, expected.astype(np.float32).astype(np.float64))
        for name in meta["elements"]:
            assert record.history.epochs(name).tolist() == [0, 1, 2]
        # the vector itself, as History.history has it: (epochs, classes)
        np.testing.assert_array_equal(record.history[key],
                                      expected.astype(np.float32).astype(np.float64))
        assert record.history.epochs(key).tolist() == [0, 1, 2] and key in record.history
    assert_history_equal(record, {k: hist.history[k] for k in ("loss", "accuracy")},
                         [0, 1, 2])


def test_facts_of_a_subclassed_model_split_data_and_logits(tmp_path: Path) -> None:
    """Parameters counted once the first step built the model; validation_data_given
    is what the user passed (fit makes validation_data of a validation_split); the
    loss's from_logits is kept."""

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return self.out(self.hidden(x))

    keras.utils.set_random_seed(0)
    model = Net()
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = RecordCallback(tmp_path)
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, validation_split=0.25,
              callbacks=[callback])
    info = recordkit.load(callback.record_path).info
    assert info["model"]["parameters"] == model.count_params() == 6 * 8 + 8 + 8 * 2 + 2
    assert info["model"]["trainable_parameters"] == 74
    assert info["model"]["non_trainable_parameters"] == 0
    assert info["fit"]["validation_split"] == 0.25
    assert info["fit"]["validation_data_given"] is False
    assert info["fit"]["validation"] is True
    assert info["compile"]["from_logits"] is True
    assert info["compile"]["loss_config"]["from_logits"] is True
    assert info["compile"]["loss"] == "sparse_categorical_crossentropy"


def batches() -> Any:
    while True:
        for start in range(0, 48, 16):
            yield X[start:start + 16], Y[start:start + 16]


@pytest.mark.parametrize("data", ["generator", "tf_data", "endless_py_dataset", "py_dataset",
                                  "arrays"])
def test_shuffle_is_none_where_keras_ignores_it(tmp_path: Path, data: str) -> None:
    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> Any:
            return X[index * 16:(index + 1) * 16], Y[index * 16:(index + 1) * 16]

    class EndlessBatches(keras.utils.PyDataset):
        @property
        def num_batches(self) -> None:
            return None

        def __getitem__(self, index: int) -> Any:
            return Batches()[index % 3]

    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    if data == "generator":
        with pytest.warns(UserWarning, match="shuffle"):  # Keras says it ignores it
            model.fit(batches(), steps_per_epoch=3, epochs=1, verbose=0,
                      callbacks=[callback])
    elif data == "tf_data":
        tf = pytest.importorskip("tensorflow")
        model.fit(tf.data.Dataset.from_tensor_slices((X, Y)).batch(16), epochs=1,
                  verbose=0, callbacks=[callback])
    elif data == "py_dataset":
        model.fit(Batches(), epochs=1, verbose=0, callbacks=[callback])
    elif data == "endless_py_dataset":
        with pytest.warns(UserWarning, match="shuffle"):  # Keras says it ignores it
            model.fit(EndlessBatches(), steps_per_epoch=3, epochs=1, verbose=0,
                      callbacks=[callback])
    else:
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    fit_info = recordkit.load(callback.record_path).info["fit"]
    # Keras ignores shuffle for generators, tf.data and endless PyDatasets; a PyDataset's
    # batches are shuffled, arrays' samples too
    ignored = data in ("generator", "tf_data", "endless_py_dataset")
    assert fit_info["shuffle"] is (None if ignored else True)


def test_fit_arguments_of_a_custom_loop_come_from_fit_args(tmp_path: Path) -> None:
    model = tiny_model()
    callback = RecordCallback(tmp_path, system=False, fit_args={"batch_size": 4})
    callback.set_model(model)
    callback.set_params({"epochs": 1, "steps": 2, "verbose": 0})
    callback.on_train_begin()  # no model.fit on the stack: nothing read from a frame
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0, {"loss": 0.5})
    callback.on_train_end()
    fit = recordkit.load(callback.record_path).info["fit"]
    assert fit["batch_size"] == 4 and fit["steps_per_epoch"] == 2
    assert "shuffle" not in fit and "shuffle" in fit["not_visible"]


@pytest.mark.parametrize(("kwargs", "snapshots"), [
    ({"snapshot_every": 1}, [0, 1, 2, 3]),
    ({"snapshot_every": 3}, [2, 3]),
    ({"snapshot_every": None}, [3]),
    ({"snapshot_every": "best", "monitor": "accuracy", "mode": "max"}, None),
])
def test_snapshot_policy(tmp_path: Path, kwargs: dict[str, Any],
                         snapshots: list[int] | None) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path, **kwargs)
    hist = fit(model, [callback], epochs=4)
    record = recordkit.load(callback.record_path)
    if snapshots is None:  # each epoch where accuracy improved, and the last
        best, snapshots = -1.0, []
        for epoch, value in enumerate(hist.history["accuracy"]):
            if value > best or epoch == 3:
                snapshots.append(epoch)
            best = max(best, value)
    assert record.snapshot_epochs == snapshots
    for name, value in record.weights(epoch=3).items():
        np.testing.assert_array_equal(
            value, keras.ops.convert_to_numpy(next(v for v in model.weights if v.path == name)))


def test_early_stopping_completes_and_snapshots_last_epoch(tmp_path: Path) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path, snapshot_every=None)
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=1)
    hist = fit(model, [callback, stop], epochs=10)
    ran = len(hist.history["loss"])
    assert ran == 2
    record = recordkit.load(callback.record_path)
    assert record.status == "completed"
    assert_history_equal(record, hist.history, list(range(ran)))
    assert record.snapshot_epochs == [ran - 1]
    for name, value in record.weights().items():
        np.testing.assert_array_equal(
            value, keras.ops.convert_to_numpy(next(v for v in model.weights if v.path == name)))


class WeightsAtEpochEnd(keras.callbacks.Callback):
    """The model's weights at the end of each epoch: what the epoch trained."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.epochs.append({v.path: keras.ops.convert_to_numpy(v).copy()
                            for v in self.model.weights})


def model_weights(model: Any) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def assert_weights_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def restoring_early_stopping() -> Any:
    # loss improves at epoch 0 only by this min_delta's measure: weights of epoch 0 return
    return keras.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=2,
                                         restore_best_weights=True)


@pytest.mark.parametrize("order", ["stop_first", "record_first"])
def test_early_stopping_restore_keeps_the_last_epoch_and_names_the_restored_one(
        tmp_path: Path, order: str) -> None:
    """Whichever order the callbacks are in, the last snapshot is what the last epoch
    trained, and info['final_weights'] names the snapshot of the restored epoch (no
    copy), which is what the model ends fit with."""
    model = tiny_model(batchnorm=False)
    callback, stop = RecordCallback(tmp_path), restoring_early_stopping()
    seen = WeightsAtEpochEnd()
    hist = fit(model, [stop, callback, seen] if order == "stop_first"
               else [callback, stop, seen], epochs=10)
    assert len(hist.history["loss"]) == 3
    record = recordkit.load(callback.record_path)
    assert record.status == "completed"
    assert record.snapshot_epochs == [0, 1, 2]
    for epoch in (0, 1, 2):
        assert_weights_equal(record.weights(epoch=epoch), seen.epochs[epoch])
    assert record.info["final_weights"] == {
        "epoch": 0, "by": "EarlyStopping(restore_best_weights=True)"}
    assert_weights_equal(record.weights(epoch=0), model_weights(model))
    assert "final_weights" not in record.extras  # a reference, not a copy
    kernel = model.weights[0].path
    assert not np.array_equal(record.weights(epoch=2)[kernel], record.weights(epoch=0)[kernel])


@pytest.mark.parametrize("order", ["stop_first", "record_first"])
def test_early_stopping_restore_of_an_epoch_without_snapshot_is_an_extra(
        tmp_path: Path, order: str) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path, snapshot_every=None)
    stop, seen = restoring_early_stopping(), WeightsAtEpochEnd()
    fit(model, [stop, callback, seen] if order == "stop_first" else [callback, stop, seen],
        epochs=10)
    record = recordkit.load(callback.record_path)
    assert record.snapshot_epochs == [2]
    assert_weights_equal(record.weights(epoch=2), seen.epochs[2])
    assert record.info["final_weights"] == {
        "extra": "final_weights", "epoch": 0, "by": "EarlyStopping(restore_best_weights=True)"}
    assert_weights_equal(record.extras["final_weights"], model_weights(model))
    assert_weights_equal(record.extras["final_weights"], seen.epochs[0])


def test_final_snapshot_is_not_rewritten_when_nothing_changed_the_weights(
        tmp_path: Path) -> None:
    callback = RecordCallback(tmp_path)
    fit(tiny_model(batchnorm=False), [callback], epochs=2)
    assert "final_weights" not in recordkit.load(callback.record_path).info


class ChangeAtTrainEnd(keras.callbacks.Callback):
    """Adds 1 to the weights whose path contains *part* in on_train_end (placed before
    RecordCallback, as EarlyStopping's restore would be)."""

    def __init__(self, part: str) -> None:
        super().__init__()
        self.part = part

    def on_train_end(self, logs: Any = None) -> None:
        for variable in self.model.weights:
            if self.part in variable.path:
                variable.assign(variable + 1.0)


@pytest.mark.parametrize("snapshot_every", [1, None])
def test_final_weights_compare_only_the_tensors_a_snapshot_holds(
        tmp_path: Path, snapshot_every: int | None) -> None:
    """A change at the end of fit to a tensor the snapshots leave out (exclude=) is not a
    change of the snapshot; a change to one they hold is, and the final weights are
    stored beside the last snapshot, which keeps what the epoch trained."""
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path / "excluded", exclude="*/bias",
                              snapshot_every=snapshot_every)
    fit(model, [ChangeAtTrainEnd("bias"), callback], epochs=2)
    record = recordkit.load(callback.record_path)
    assert "final_weights" not in record.info
    assert record.tensor_names and not any("bias" in n for n in record.tensor_names)

    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path / "held", exclude="*/bias",
                              snapshot_every=snapshot_every)
    seen = WeightsAtEpochEnd()
    fit(model, [ChangeAtTrainEnd("kernel"), callback, seen], epochs=2)
    record = recordkit.load(callback.record_path)
    assert record.info["final_weights"]["extra"] == "final_weights"
    assert record.snapshot_epochs[-1] == 1
    kernels = {v.path for v in model.weights if "kernel" in v.path}
    assert kernels and set(record.tensor_names) == kernels
    final = model_weights(model)
    assert_weights_equal(record.weights(), {k: seen.epochs[1][k] for k in kernels})
    assert_weights_equal(record.extras["final_weights"], {k: final[k] for k in kernels})


def test_final_weights_changed_are_found_in_a_float16_record(tmp_path: Path) -> None:
    """The last epoch's copies are compared in the model's own dtype, so weights changed
    in on_train_end are found even when the record stores them as float16."""
    model = tiny_model(batchnorm=False)
    callback, seen = RecordCallback(tmp_path, dtype="float16"), WeightsAtEpochEnd()
    fit(model, [ChangeAtTrainEnd("kernel"), callback, seen], epochs=2)
    record = recordkit.load(callback.record_path)
    assert record.info["final_weights"]["extra"] == "final_weights"
    last = record.weights()
    for name, value in seen.epochs[1].items():
        assert last[name].dtype == np.float16
        np.testing.assert_array_equal(last[name], value.astype(np.float16))
    assert_weights_equal(record.extras["final_weights"], model_weights(model))


def test_host_copies_do_not_follow_the_variables() -> None:
    from recordkit.integrations import _keras_facts

    model = tiny_model(batchnorm=False)
    variables = {v.path: v for v in model.weights}
    copies = _keras_facts.host_copies(variables)
    values = {name: keras.ops.convert_to_numpy(v).copy() for name, v in variables.items()}
    for variable in model.weights:
        variable.assign(variable + 1.0)
    for name, copy in copies.items():
        assert copy.flags.owndata
        np.testing.assert_array_equal(copy, values[name])


def test_skip_frozen_leaves_out_frozen_layers(tmp_path: Path) -> None:
    model = tiny_model()  # Dense, BatchNorm, Dense
    model.layers[0].trainable = False
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    frozen_before = [keras.ops.convert_to_numpy(v) for v in model.layers[0].weights]
    callback = RecordCallback(tmp_path, skip_frozen=True)
    fit(model, [callback], epochs=2)
    record = recordkit.load(callback.record_path)
    frozen = {v.path for v in model.layers[0].weights}
    assert frozen and not frozen & set(record.tensor_names)
    for before, variable in zip(frozen_before, model.layers[0].weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(variable))
    # trainable layers, and BatchNorm's moving statistics, are all stored
    expected = {v.path for v in model.weights} - frozen
    assert any("moving_mean" in name for name in expected)
    assert set(record.tensor_names) == expected
    assert record.snapshot_epochs == [0, 1]


def test_crashed_fit_leaves_readable_record_then_reuse_starts_new(tmp_path: Path) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, [callback, Crash(at=2)], epochs=4)
    crashed = callback.record_path
    record = recordkit.load(crashed)
    # open until the next fit: the rows and snapshots of every finished epoch are in the
    # file (the callback waited for its writer as the exception left the hook)
    assert record.status == "running"  # this process still holds it: not "completed"
    assert record.history.epochs("loss").tolist() == [0, 1]
    assert record.snapshot_epochs == [0, 1]
    # the callback used again from epoch 0: the crashed record is closed, every queued
    # snapshot written; the exception, dropped by the caller, was seen leaving the hook
    hist = fit(model, [callback], epochs=2)
    assert callback.record_path != crashed
    old = recordkit.load(crashed)
    assert old.stored_status == "failed"
    assert old.error == "RuntimeError: boom at epoch 2"
    assert old.history.epochs("loss").tolist() == [0, 1]
    assert old.snapshot_epochs == [0, 1]
    new = recordkit.load(callback.record_path)
    assert new.status == "completed"
    assert_history_equal(new, hist.history, [0, 1])


class LogsSeen(keras.callbacks.Callback):
    """The logs of each epoch, as History has them (placed after RecordCallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.logs.append(dict(logs or {}))


def assert_failed_with_boom(path: str | None, epochs: list[int], at: int = 2) -> None:
    record = recordkit.load(path)
    assert record.stored_status == "failed"
    assert record.error == f"RuntimeError: boom at epoch {at}"
    assert record.history.epochs("loss").tolist() == epochs
    assert record.snapshot_epochs == epochs


@pytest.mark.parametrize("how", ["close_in_except", "close_in_finally", "with_block"])
def test_a_caught_failure_reads_failed_once_the_callback_is_closed(tmp_path: Path,
                                                                   how: str) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    seen = LogsSeen()
    if how == "close_in_except":
        try:
            fit(model, [callback, seen, Crash(at=2)], epochs=4)
        except RuntimeError:
            callback.close()
    elif how == "close_in_finally":
        with contextlib.suppress(RuntimeError):
            try:
                fit(model, [callback, seen, Crash(at=2)], epochs=4)
            finally:
                callback.close()
    else:
        with contextlib.suppress(RuntimeError), callback:
            fit(model, [callback, seen, Crash(at=2)], epochs=4)
    assert_failed_with_boom(callback.record_path, [0, 1])
    record = recordkit.load(callback.record_path)
    assert_history_equal(record, {k: [logs[k] for logs in seen.logs]
                                  for k in ("loss", "accuracy")}, [0, 1])
    callback.close()  # a second time: nothing more
    assert recordkit.load(callback.record_path).stored_status == "failed"


def test_a_caught_failure_reads_failed_when_the_next_fit_starts_in_the_handler(
        tmp_path: Path) -> None:
    """A sweep that retries inside its except block: the next fit starts while the
    exception is handled, and it is the one that left the previous fit."""
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    try:
        fit(model, [callback, Crash(at=2)], epochs=4)
    except RuntimeError:
        crashed = callback.record_path
        fit(model, [callback], epochs=2)
    assert_failed_with_boom(crashed, [0, 1])
    assert callback.record_path != crashed
    assert recordkit.load(callback.record_path).status == "completed"


def test_an_unrelated_exception_is_never_stored_as_the_fits(tmp_path: Path) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    with contextlib.suppress(RuntimeError):
        fit(model, [callback, Crash(at=1)], epochs=3)
    try:
        raise KeyError("unrelated")
    except KeyError:
        callback.close()  # handling an exception, but not the fit's
    record = recordkit.load(callback.record_path)
    assert record.stored_status == "failed"
    assert record.error == "RuntimeError: boom at epoch 1"  # the fit's, seen leaving it
    assert record.snapshot_epochs == [0]


def test_close_during_a_fit_and_after_a_normal_fit_changes_nothing(tmp_path: Path) -> None:
    class CloseEveryEpoch(keras.callbacks.Callback):
        def __init__(self, record_callback: RecordCallback) -> None:
            super().__init__()
            self.record_callback = record_callback

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.record_callback.close()

    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    hist = fit(model, [callback, CloseEveryEpoch(callback)], epochs=3)
    callback.close()
    record = recordkit.load(callback.record_path)
    assert record.status == "completed"
    assert_history_equal(record, hist.history, [0, 1, 2])
    assert record.snapshot_epochs == [0, 1, 2]


def test_garbage_collected_callback_closes_crashed_record(tmp_path: Path) -> None:
    import gc

    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    try:
        fit(model, [callback, Crash(at=1)], epochs=3)
    except RuntimeError:
        pass
    path = callback.record_path
    assert recordkit.load(path).status == "running"
    del callback
    gc.collect()
    record = recordkit.load(path)
    assert record.stored_status == "failed"
    assert record.error == "RuntimeError: boom at epoch 1"
    assert record.history.epochs("loss").tolist() == [0]


class FailingStep(keras.Model):
    """A model whose train step raises at one step (run eagerly: the Python of the step
    runs at every step), as a step that meets bad data or runs out of memory."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(2)
        self.at, self.steps = at, 0

    def call(self, x: Any) -> Any:
        return self.dense(x)

    def train_step(self, data: Any) -> Any:
        self.steps += 1
        if self.steps == self.at:
            raise ValueError(f"bad batch at step {self.steps}")
        return super().train_step(data)


def test_a_dropped_exception_of_the_train_step_is_the_records_error(tmp_path: Path) -> None:
    """A sweep's try/except drops the error of a step; the record reads failed with it
    when the next fit of the callback starts, and the next fit's step is not wrapped
    twice (a fit that ends puts the model's train_function back)."""
    model = FailingStep(at=5)  # 3 steps an epoch (48 rows, batches of 16): in epoch 1
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), run_eagerly=True)
    callback = RecordCallback(tmp_path)
    with contextlib.suppress(ValueError):
        fit(model, [callback], epochs=3)
    crashed = callback.record_path
    assert getattr(model.train_function, "__recordkit_trapped__", None) is not None
    fit(model, [callback], epochs=2)  # the next fit: the crashed record is closed
    record = recordkit.load(crashed)
    assert record.stored_status == "failed"
    assert record.error == "ValueError: bad batch at step 5"
    assert record.history.epochs("loss").tolist() == [0]
    assert recordkit.load(callback.record_path).status == "completed"
    assert getattr(model.train_function, "__recordkit_trapped__", None) is None


def test_reused_callback_starts_a_new_record(tmp_path: Path) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    first = fit(model, [callback], epochs=2).history
    first_path = callback.record_path
    second = fit(model, [callback], epochs=1).history
    assert callback.record_path != first_path
    assert_history_equal(recordkit.load(first_path), first, [0, 1])
    assert_history_equal(recordkit.load(callback.record_path), second, [0])
    assert len(recordkit.load_all(tmp_path)) == 2


def test_resume_with_initial_epoch_appends(tmp_path: Path) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path, experiment="r")
    first = fit(model, [callback], epochs=2).history
    run_id = recordkit.load(callback.record_path).run_id
    resumed = RecordCallback(tmp_path, experiment="r", resume=run_id)
    second = fit(model, [resumed], epochs=4, initial_epoch=2).history
    assert resumed.record_path == callback.record_path
    record = recordkit.load(resumed.record_path)
    assert record.status == "completed" and len(record.restarts) == 1
    assert record.history.epochs("loss").tolist() == [0, 1, 2, 3]
    assert record.history["loss"].tolist() == [float(v) for v in first["loss"] + second["loss"]]
    assert record.info["fit"]["initial_epoch"] == 2
    assert record.snapshot_epochs == [0, 1, 2, 3]


def test_training_more_with_the_same_callback_continues_its_record(tmp_path: Path) -> None:
    """fit(epochs=6, initial_epoch=3) after fit(epochs=3), as Lightning's callback does
    on a second fit: one record holding epochs 0-5, each once."""
    import warnings

    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    first = fit(model, [callback], epochs=3).history
    path = callback.record_path
    with warnings.catch_warnings():
        warnings.simplefilter("error", recordkit.errors.RecordkitWarning)  # no gap
        more = fit(model, [callback], epochs=6, initial_epoch=3).history
    assert callback.record_path == path
    assert len(recordkit.load_all(tmp_path)) == 1
    record = recordkit.load(path)
    assert record.status == "completed"
    assert_history_equal(record, {k: first[k] + more[k] for k in first}, list(range(6)))
    assert record.snapshot_epochs == list(range(6))
    assert [r["previous_status"] for r in record.restarts] == ["completed"]
    assert_weights_equal(record.weights(), model_weights(model))
    assert "epoch_gaps" not in record.info


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_evaluate_after_fit_goes_into_the_fits_record(tmp_path: Path, status: str) -> None:
    """model.evaluate(..., callbacks=[cb]) after fit: test_* rows at the last epoch and
    info['evaluations'], the record closed again with the status it had; validation
    inside the fit records no evaluation."""
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    if status == "completed":
        hist = fit(model, [callback], epochs=2, validation_data=(X[:8], Y[:8])).history
    else:
        try:
            fit(model, [callback, Crash(at=2)], epochs=3, validation_data=(X[:8], Y[:8]))
        except RuntimeError:
            callback.close()
    assert "evaluations" not in recordkit.load(callback.record_path).info
    first = model.evaluate(X[:16], Y[:16], verbose=0, callbacks=[callback], return_dict=True)
    second = model.evaluate(X[16:], Y[16:], verbose=0, callbacks=[callback],
                            return_dict=True)
    record = recordkit.load(callback.record_path)
    assert record.stored_status == status
    if status == "failed":
        assert record.error == "RuntimeError: boom at epoch 2"
    else:
        assert_history_equal(record, hist, [0, 1])
    assert record.info["evaluations"] == [{"epoch": 1, "metrics": first},
                                          {"epoch": 1, "metrics": second}]
    for key in ("loss", "accuracy"):
        assert record.history.epochs(f"test_{key}").tolist() == [1, 1]
        assert record.history[f"test_{key}"].tolist() == [first[key], second[key]]
    assert [r["previous_status"] for r in record.restarts] == [status, status]


def test_evaluate_before_any_fit_records_nothing(tmp_path: Path) -> None:
    callback = RecordCallback(tmp_path)
    tiny_model(batchnorm=False).evaluate(X, Y, verbose=0, callbacks=[callback])
    assert callback.record_path is None and not list(tmp_path.rglob("*.h5"))


def test_a_resumed_record_that_ends_before_the_fit_starts_warns_and_lists_the_gap(
        tmp_path: Path) -> None:
    model = tiny_model(batchnorm=False)
    callback = RecordCallback(tmp_path)
    first = fit(model, [callback], epochs=3).history
    with pytest.warns(recordkit.errors.RecordkitWarning,
                      match=r"reached epoch 2 and this fit starts at epoch 5: epochs 3 to 4"):
        later = fit(model, [callback], epochs=7, initial_epoch=5).history
    record = recordkit.load(callback.record_path)
    assert len(recordkit.load_all(tmp_path)) == 1
    assert record.info["epoch_gaps"] == [[3, 4]]
    assert_history_equal(record, {k: first[k] + later[k] for k in first}, [0, 1, 2, 5, 6])
    assert record.snapshot_epochs == [0, 1, 2, 5, 6]


@pytest.mark.parametrize("how", ["resume", "same_callback", "auto"])
def test_backup_and_restore_after_crash(tmp_path: Path, how: str) -> None:
    model = tiny_model()
    backup = str(tmp_path / "backup")
    options: dict[str, Any] = {"resume": "auto"} if how == "auto" else {}
    callback = RecordCallback(tmp_path / "records", params={"lr": 0.01}, **options)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, [keras.callbacks.BackupAndRestore(backup), callback, Crash(at=2)],
            epochs=5)
    path = callback.record_path
    if how == "auto":  # another run of other params must not be taken for it
        other = RecordCallback(tmp_path / "records", params={"lr": 0.5})
        with pytest.raises(RuntimeError, match="boom"):
            fit(tiny_model(), [other, Crash(at=2)], epochs=5)
        del other  # its record, open since its fit raised, is closed as it is collected
        gc.collect()
    again = {"same_callback": callback,
             "resume": RecordCallback(tmp_path / "records", resume=path),
             "auto": RecordCallback(tmp_path / "records", params={"lr": 0.01},
                                    resume="auto")}[how]
    hist = fit(model, [keras.callbacks.BackupAndRestore(backup), again], epochs=5)
    assert len(hist.history["loss"]) == 3  # epochs 2, 3, 4 were trained again
    assert again.record_path == path
    record = recordkit.load(path)
    assert record.status == "completed"
    assert record.history.epochs("loss").tolist() == [0, 1, 2, 3, 4]  # each exactly once
    assert record.history["loss"][2:].tolist() == [float(v) for v in hist.history["loss"]]
    assert record.snapshot_epochs == [0, 1, 2, 3, 4]
    # the crashed fit's record was closed failed (its exception seen leaving the hook)
    assert [r["previous_status"] for r in record.restarts] == ["failed"]
    for name, value in record.weights().items():
        np.testing.assert_array_equal(
            value, keras.ops.convert_to_numpy(next(v for v in model.weights if v.path == name)))


def test_unserialisable_model_config_does_not_crash(tmp_path: Path) -> None:
    class Odd(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.marker = object()

        def call(self, x: Any) -> Any:
            return self.dense(x)

        def get_config(self) -> dict[str, Any]:
            return {"marker": self.marker}

    model = Odd()
    model.compile(optimizer=keras.optimizers.SGD(
        keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)),
        loss="mse")
    callback = RecordCallback(tmp_path)
    hist = model.fit(X, np.zeros((48, 2), "float32"), batch_size=16, epochs=2, verbose=0,
                     callbacks=[callback])
    record = recordkit.load(callback.record_path)
    assert record.info["model"]["config"] is None
    assert "TypeError" in record.info["model"]["config_error"]
    assert record.info["optimizer"]["learning_rate"]["class_name"] == "ExponentialDecay"
    assert record.info["compile"]["loss"] == "mse"
    # the schedule's value after each epoch's 3 steps: 0.1 * 0.5 ** steps
    assert record.history["learning_rate"].tolist() == pytest.approx([0.1 * 0.5**3,
                                                                      0.1 * 0.5**6])
    assert_history_equal(record, hist.history, [0, 1])


def test_given_recorder_records_the_first_fit(tmp_path: Path) -> None:
    rec = recordkit.Recorder(tmp_path, experiment="given", params={"a": 1}, system=False)
    callback = RecordCallback(recorder=rec, snapshot_every=None)
    assert callback.experiment == "given"
    hist = fit(tiny_model(batchnorm=False), [callback], epochs=2)
    assert rec.closed and rec.status == "completed"
    record = recordkit.load(rec.path)
    assert record.params == {"a": 1} and record.snapshot_epochs == [1]
    assert_history_equal(record, hist.history, [0, 1])


@pytest.mark.parametrize("on_error", ["raise", "warn"])
def test_recording_failure_follows_on_error(tmp_path: Path, on_error: str) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    callback = RecordCallback(not_a_folder, on_error=on_error)
    model = tiny_model(batchnorm=False)
    if on_error == "raise":
        with pytest.raises(recordkit.RecordkitError, match="experiment folder"):
            fit(model, [callback], epochs=2)
    else:
        with pytest.warns(recordkit.errors.RecordkitWarning, match="training goes on"):
            hist = fit(model, [callback], epochs=2)
        assert len(hist.history["loss"]) == 2 and callback.record_path is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"snapshot_every": 0}, "snapshot_every=0"),
    ({"snapshot_every": "best"}, "needs monitor"),
    ({"mode": "up"}, "mode='up'"),
    ({"on_error": "ignore"}, "on_error='ignore'"),
    ({"fit_args": [1]}, "fit_args"),
    ({"root": 3}, "root=3"),
    ({"compresion": "gzip"}, "compresion"),
    ({"resume": "x", "recorder": None, "name": 5}, "name=5"),
])
def test_arguments_are_checked_up_front(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        RecordCallback(**kwargs)


CHIEF_CASES = [
    (None, True),
    ({"cluster": {"worker": ["localhost:1", "localhost:2"]},
      "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["localhost:1", "localhost:2"]},
      "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["localhost:1"], "worker": ["localhost:2"]},
      "task": {"type": "chief", "index": 0}}, True),
    ({"cluster": {"chief": ["localhost:1"], "worker": ["localhost:2"]},
      "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["localhost:1"], "evaluator": ["localhost:3"]},
      "task": {"type": "evaluator", "index": 0}}, False),
]


@pytest.mark.parametrize(("tf_config", "chief"), CHIEF_CASES)
def test_chief_detection_from_tf_config(monkeypatch: pytest.MonkeyPatch,
                                        tf_config: dict[str, Any] | None, chief: bool) -> None:
    tf = pytest.importorskip("tensorflow")
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
        assert is_chief(None) is True
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert is_chief(resolver) is chief


# --- subprocesses: another backend, tf.distribute, a process dying of an exception ------

SCRIPT_HEAD = """
import json, sys
import numpy as np
{setup}
import keras
from recordkit.integrations.keras import RecordCallback

rng = np.random.default_rng(0)
x = rng.normal(size=(48, 6)).astype("float32")
y = (x[:, 0] > 0).astype("int64")

def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    return model
"""

FIT_AND_DUMP = """
callback = RecordCallback(sys.argv[1])
hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback])
weights = {v.path: keras.ops.convert_to_numpy(v).tolist() for v in model.weights}
print(json.dumps({"path": callback.record_path, "history": hist.history,
                  "weights": weights, "backend": keras.backend.backend()}))
"""


def run_script(tmp_path: Path, body: str, env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(body)
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
                **(env or {})}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "records")],
                          capture_output=True, text=True, env=full_env,
                          timeout=SUBPROCESS_TIMEOUT_S)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def check_dump(out: str) -> recordkit.Record:
    dump = json.loads(out.strip().splitlines()[-1])
    record = recordkit.load(dump["path"])
    assert record.status == "completed"
    assert_history_equal(record, dump["history"], [0, 1, 2])
    final = record.weights()
    assert set(final) == set(dump["weights"])
    for name, value in dump["weights"].items():
        np.testing.assert_array_equal(final[name], np.asarray(value, dtype=final[name].dtype))
    return record


@pytest.mark.slow
def test_torch_backend(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    done = run_script(tmp_path, textwrap.dedent(SCRIPT_HEAD).format(setup="")
                      + "model = build()\n" + FIT_AND_DUMP, env={"KERAS_BACKEND": "torch"})
    assert json.loads(done.stdout.strip().splitlines()[-1])["backend"] == "torch"
    record = check_dump(done.stdout)
    assert "(torch)" in record.info["framework"]
    assert record.info["fit"]["batch_size"] == 16  # read from the torch trainer's fit()


@pytest.mark.slow
def test_torch_backend_fit_does_not_import_tensorflow(tmp_path: Path) -> None:
    """TensorFlow is installed beside torch here; a torch-backend fit with the callback
    must not import it (Keras' serialisation asks whether it is available). The model is
    built without keras.utils.set_random_seed, which imports TensorFlow itself."""
    pytest.importorskip("torch")
    head = textwrap.dedent(SCRIPT_HEAD).format(setup="").replace(
        "    keras.utils.set_random_seed(0)\n", "")
    body = (head + "model = build()\nbefore = 'tensorflow' in sys.modules\n"
            + FIT_AND_DUMP.replace("print(json.dumps({", 'print(json.dumps({"tf": '
                                   '[before, "tensorflow" in sys.modules], '))
    done = run_script(tmp_path, body, env={"KERAS_BACKEND": "torch"})
    dump = json.loads(done.stdout.strip().splitlines()[-1])
    assert dump["backend"] == "torch" and dump["tf"] == [False, False]
    record = check_dump(done.stdout)
    assert record.info["model"]["config"]["name"] == "sequential"  # serialised all the same
    assert record.info["compile"]["from_logits"] is True


@pytest.mark.slow
def test_mirrored_strategy_writes_one_record(tmp_path: Path) -> None:
    setup = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    """)
    body = (textwrap.dedent(SCRIPT_HEAD).format(setup=setup)
            + "strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])\n"
            + "with strategy.scope():\n    model = build()\n" + FIT_AND_DUMP)
    done = run_script(tmp_path, body, env={"KERAS_BACKEND": "tensorflow"})
    record = check_dump(done.stdout)
    assert record.info["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2,
                                           "task_type": None, "task_id": None}
    assert len(list((tmp_path / "records").rglob("*.h5"))) == 1


@pytest.mark.slow
def test_backup_and_restore_across_a_process_restart_continues_one_record(
        tmp_path: Path) -> None:
    body = (textwrap.dedent(SCRIPT_HEAD).format(setup="") + textwrap.dedent("""
        class Crash(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2 and sys.argv[2] == "crash":
                    raise RuntimeError("the machine went away")

        callback = RecordCallback(sys.argv[1], name="job", params={"lr": 0.01},
                                  resume="auto")
        backup = keras.callbacks.BackupAndRestore(sys.argv[1] + "-backup")
        hist = build().fit(x, y, batch_size=16, epochs=4, verbose=0,
                           callbacks=[backup, callback, Crash()])
        print(json.dumps({"path": callback.record_path, "history": hist.history}))
    """))
    script = tmp_path / "job.py"
    script.write_text(body)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    runs = [subprocess.run([sys.executable, str(script), str(tmp_path / "records"), how],
                           capture_output=True, text=True, env=env,
                           timeout=SUBPROCESS_TIMEOUT_S)
            for how in ("crash", "again")]
    assert runs[0].returncode == 1 and "the machine went away" in runs[0].stderr
    assert runs[1].returncode == 0, runs[1].stderr[-3000:]
    done = json.loads(runs[1].stdout.strip().splitlines()[-1])
    assert len(recordkit.load_all(tmp_path / "records")) == 1
    record = recordkit.load(done["path"])
    assert record.status == "completed" and record.name == "job"
    assert record.history.epochs("loss").tolist() == [0, 1, 2, 3]
    assert record.history["loss"][2:].tolist() == [float(v) for v in done["history"]["loss"]]
    assert [r["previous_status"] for r in record.restarts] == ["failed"]


@pytest.mark.slow
def test_uncaught_exception_closes_record_as_failed(tmp_path: Path) -> None:
    body = (textwrap.dedent(SCRIPT_HEAD).format(setup="")
            + textwrap.dedent("""
        class Crash(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2:
                    raise RuntimeError("data pipeline broke")

        callback = RecordCallback(sys.argv[1])
        print(json.dumps({"path": None}), flush=True)
        build().fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[callback, Crash()])
    """))
    done = run_script(tmp_path, body, check=False)
    assert done.returncode == 1 and "data pipeline broke" in done.stderr
    [path] = (tmp_path / "records").rglob("*.h5")
    record = recordkit.load(path)
    assert record.status == "failed"
    assert record.error == "RuntimeError: data pipeline broke"
    assert record.history.epochs("loss").tolist() == [0, 1]
    assert record.snapshot_epochs == [0, 1]


CAUGHT_THEN_EXIT = """
class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("boom at epoch 2")

callback = RecordCallback(sys.argv[1])
errors = []
try:
    build().fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[callback, Crash()])
except RuntimeError as err:
    if KEEP:
        errors.append(err)
print(json.dumps({"path": callback.record_path}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_a_caught_failure_is_closed_at_exit(tmp_path: Path, keep: bool) -> None:
    """At exit the record of a fit that raised is closed: failed, with the exception the
    caller caught (dropped, or kept in a list), seen as it left the callback's hook."""
    body = (textwrap.dedent(SCRIPT_HEAD).format(setup="")
            + CAUGHT_THEN_EXIT.replace("KEEP", str(keep)))
    done = run_script(tmp_path, body)
    path = json.loads(done.stdout.strip().splitlines()[-1])["path"]
    record = recordkit.load(path)
    assert record.stored_status == "failed"
    assert record.error == "RuntimeError: boom at epoch 2"
    assert record.history.epochs("loss").tolist() == [0, 1]
    assert record.snapshot_epochs == [0, 1]


@pytest.mark.slow
def test_a_keras_error_is_stored_without_its_terminal_codes(tmp_path: Path) -> None:
    """Keras writes the heart of an error in bold (ESC[1m ... ESC[0m): the record's error is
    plain text, for `recordkit show` and for tables."""
    body = (textwrap.dedent(SCRIPT_HEAD).format(setup="")
            + textwrap.dedent("""
        callback = RecordCallback(sys.argv[1])
        print(json.dumps({"path": None}), flush=True)
        build().fit(x[:, :5], y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    """))
    done = run_script(tmp_path, body, check=False)
    assert done.returncode == 1 and "\x1b[1m" in done.stderr  # Keras' own bold text
    [path] = (tmp_path / "records").rglob("*.h5")
    record = recordkit.load(path)
    assert record.status == "failed"
    assert "is incompatible with the layer" in record.error
    assert "\x1b" not in record.error and record.error.startswith("ValueError: ")


IPYTHON_SESSION = '''
import json, sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
setup = {setup!r}
assert shell.run_cell(setup).success
crash = """
class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("data pipeline broke")

callback = RecordCallback(sys.argv[1])
model = build()
model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[callback, Crash()])
"""
assert not shell.run_cell(crash).success  # the cell shows the error; the shell goes on
import recordkit
ns = shell.user_ns
after_crash = recordkit.load(ns["callback"].record_path)
seen = {{"path": ns["callback"].record_path, "status": after_crash.status,
         "error": after_crash.error, "epochs": after_crash.history.epochs("loss").tolist()}}
resume = ("model.fit(x, y, batch_size=16, epochs=4, initial_epoch=2, verbose=0, "
          "callbacks=[callback])")
assert shell.run_cell(resume).success
resumed = recordkit.load(ns["callback"].record_path)
seen.update(resumed_path=ns["callback"].record_path, resumed_status=resumed.status,
            resumed_epochs=resumed.history.epochs("loss").tolist(),
            restarts=len(resumed.restarts))
print(json.dumps(seen))
'''


@pytest.mark.slow
def test_crashed_fit_in_an_ipython_cell_is_closed_when_the_cell_ends(tmp_path: Path) -> None:
    """IPython shows a cell's exception itself and never calls sys.excepthook; the
    callback is still referenced by the notebook, so only the cell's end can tell."""
    require("IPython", "dev")
    setup = textwrap.dedent(SCRIPT_HEAD).format(setup="")
    done = run_script(tmp_path, IPYTHON_SESSION.format(setup=setup))
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["status"] == "failed"
    assert seen["error"] == "RuntimeError: data pipeline broke"
    assert seen["epochs"] == [0, 1]
    # the next cell continues the same record from the epoch the crash left off
    assert seen["resumed_path"] == seen["path"]
    assert seen["resumed_status"] == "completed"
    assert seen["resumed_epochs"] == [0, 1, 2, 3]
    assert seen["restarts"] == 1


@pytest.mark.slow
def test_keyboard_interrupt_closes_record_as_interrupted(tmp_path: Path) -> None:
    body = (textwrap.dedent(SCRIPT_HEAD).format(setup="")
            + textwrap.dedent("""
        class CtrlC(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                print(json.dumps({"epoch": epoch, "logs": logs}), flush=True)

            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2:
                    raise KeyboardInterrupt

        callback = RecordCallback(sys.argv[1])
        build().fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[callback, CtrlC()])
    """))
    done = run_script(tmp_path, body, check=False)
    # CPython ends a process on an uncaught KeyboardInterrupt by re-raising SIGINT
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    logged = [json.loads(line)["logs"] for line in done.stdout.strip().splitlines()]
    [path] = (tmp_path / "records").rglob("*.h5")
    record = recordkit.load(path)
    assert record.stored_status == "interrupted"
    assert record.error == "KeyboardInterrupt"  # no message: no trailing colon
    assert_history_equal(record, {key: [logs[key] for logs in logged]
                                  for key in ("loss", "accuracy")}, [0, 1])
    assert record.snapshot_epochs == [0, 1]


MULTI_WORKER = """
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = build()
callback = RecordCallback(sys.argv[1])
logs = [{"loss": 0.75, "accuracy": 0.5}, {"loss": 0.5, "accuracy": 0.75}]
try:
    history, how = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                             callbacks=[callback]).history, "fit"
except ValueError as err:
    # TF 2.21 + Keras 3 cannot feed this strategy's PerReplica batches to the train step;
    # it fails before any callback hook runs, so drive the hooks the way fit() would.
    if "PerReplica" not in str(err) or callback.record_path is not None:
        raise
    callback.set_model(model)
    callback.set_params({"epochs": 2, "steps": 3, "verbose": 0})
    callback.on_train_begin()
    for epoch, epoch_logs in enumerate(logs):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, dict(epoch_logs))
    callback.on_train_end()
    history = {key: [epoch_logs[key] for epoch_logs in logs] for key in logs[0]}
    how = "hooks"
print(json.dumps({"path": callback.record_path, "history": history, "how": how,
                  "task": json.loads(os.environ["TF_CONFIG"])["task"]["index"]}))
"""


def free_ports(count: int) -> list[int]:
    """Ports free on the loopback interface now (all held open together: distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_only_the_chief_writes(tmp_path: Path) -> None:
    require("tensorflow", "keras")
    setup = "import os\nimport tensorflow as tf"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SCRIPT_HEAD).format(setup=setup) + MULTI_WORKER)
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers, outputs = [], []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": hosts},
                         "task": {"type": "worker", "index": index}}
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
                   "KERAS_BACKEND": "tensorflow", "TF_CONFIG": json.dumps(tf_config),
                   "no_grpc_proxy": "127.0.0.1"}  # workers talk over loopback only
            out = (tmp_path / f"worker{index}.out", tmp_path / f"worker{index}.err")
            outputs.append(out)
            with out[0].open("w") as stdout, out[1].open("w") as stderr:
                workers.append(subprocess.Popen(
                    [sys.executable, str(script), str(tmp_path / "records")],
                    stdout=stdout, stderr=stderr, env=env))
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        for worker in workers:
            worker.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr.read_text()[-3000:]
    chief, other = (json.loads(stdout.read_text().strip().splitlines()[-1])
                    for stdout, _ in outputs)
    assert (chief["task"], other["task"]) == (0, 1)
    assert other["path"] is None  # worker 1 wrote nothing
    [path] = (tmp_path / "records").rglob("*.h5")
    assert path.resolve() == Path(chief["path"])
    record = recordkit.load(path)
    assert record.status == "completed"
    assert_history_equal(record, chief["history"], [0, 1])
    assert record.snapshot_epochs == [0, 1]
    # stored by the name users write, not by its class (CollectiveAllReduceStrategy)
    assert record.info["distribution"] == {"strategy": "MultiWorkerMirroredStrategy",
                                           "replicas": 2, "task_type": "worker",
                                           "task_id": 0}


LAST_SNAPSHOT_FAILS = """
import os, resource, signal, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

class LimitFileSize(keras.callbacks.Callback):
    # placed before RecordCallback: from the last epoch on, the file may grow by 600 kB,
    # room for history rows and the status but not for the 1.3 MB snapshot
    def __init__(self, record_callback):
        super().__init__()
        self.record_callback = record_callback

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            rec = self.record_callback.recorder
            rec.commit()
            limit = os.path.getsize(rec.path) + 600_000
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(50_000), keras.layers.Dense(2)])
model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
callback = RecordCallback(sys.argv[1], on_error=sys.argv[2])
raised = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        model.fit(x, y, batch_size=48, epochs=2, verbose=0,
                  callbacks=[LimitFileSize(callback), callback])
    except Exception as err:
        raised = type(err).__name__
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
import recordkit
record = recordkit.load(callback.record_path)
print(json.dumps({"raised": raised, "status": record.stored_status, "error": record.error,
                  "snapshots": record.snapshot_epochs,
                  "warnings": [str(w.message) for w in caught if "recordkit" in str(w.message)]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("on_error", ["raise", "warn"])
def test_a_last_snapshot_that_fails_is_not_lost_at_the_end_of_fit(tmp_path: Path,
                                                                   on_error: str) -> None:
    """The last epoch's snapshot fails on the writer thread (the file may not grow by
    its size): fit's end must say so as on_error asks, never close the run as completed."""
    script = textwrap.dedent(SCRIPT_HEAD).format(setup="") + LAST_SNAPSHOT_FAILS
    script = script.replace("sys.argv[2]", repr(on_error))
    done = run_script(tmp_path, script)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["snapshots"] == [0]
    if on_error == "raise":
        assert result["raised"] == "RecordWriteError"
        assert result["status"] == "running"  # reads as interrupted; resume continues it
    else:
        assert result["raised"] is None
        assert result["status"] == "failed"
        assert "recording stopped" in result["error"] and "RLIMIT_FSIZE" in result["error"]
        assert any("could not close the record" in w for w in result["warnings"]), result


KILLED_AFTER_EPOCH_END = """
import os, signal

class Kill(keras.callbacks.Callback):
    # after RecordCallback: its epoch-end hook has run, the snapshot may still be queued
    def on_epoch_end(self, epoch, logs=None):
        if epoch == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

model = build()
callback = RecordCallback(sys.argv[1], snapshot_every=1)
model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[callback, Kill()])
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0, 2])
def test_sigkill_after_the_epoch_end_hook_keeps_that_epochs_rows(tmp_path: Path,
                                                                 kill_at: int) -> None:
    """The epoch's rows are committed in RecordCallback's own hook, before its snapshot
    is queued: a process killed right after that hook keeps them, and every snapshot the
    record lists reads back."""
    script = (textwrap.dedent(SCRIPT_HEAD).format(setup="")
              + KILLED_AFTER_EPOCH_END.replace("KILL_AT", str(kill_at)))
    done = run_script(tmp_path, script, check=False)
    assert done.returncode == -9, done.stderr[-3000:]
    [path] = (tmp_path / "records").rglob("*.h5")
    record = recordkit.load(path)
    assert record.status == "interrupted"
    assert record.history.epochs("loss").tolist() == list(range(kill_at + 1))
    assert set(record.snapshot_epochs) <= set(range(kill_at + 1))
    assert record.snapshot_epochs == sorted(record.snapshot_epochs)
    for epoch in record.snapshot_epochs:
        assert set(record.weights(epoch=epoch)) == set(record.tensor_names)


def test_adapted_vocabularies_are_stored_so_the_model_can_be_rebuilt(tmp_path: Path) -> None:
    """Keras 3 lookup layers keep their vocabulary in no variable: the record's extra
    holds each, and a new layer given it maps tokens as the trained one did."""
    words = np.array([["cat"], ["dog"], ["cat"], ["bird"], ["fish"], ["dog"]] * 8)
    lookup = keras.layers.StringLookup(name="words")
    lookup.adapt(words)
    inner = keras.Sequential([keras.Input((1,), dtype="string"), lookup,
                              keras.layers.Embedding(8, 2), keras.layers.Flatten()],
                             name="encoder")
    inputs = keras.Input((1,), dtype="string")
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    tf = pytest.importorskip("tensorflow")  # string inputs: a tf.data pipeline
    callback = RecordCallback(tmp_path)
    labels = (words[:, 0] == "cat").astype("int64")
    model.fit(tf.data.Dataset.from_tensor_slices((words, labels)).batch(16), epochs=2,
              verbose=0, callbacks=[callback])
    stored = recordkit.load(callback.record_path).extras["vocabularies"]
    assert stored == {"encoder/words": {"class": "StringLookup",
                                        "vocabulary": lookup.get_vocabulary()}}
    # get_vocabulary() leads with the OOV token, which the layer adds itself
    rebuilt = keras.layers.StringLookup(vocabulary=stored["encoder/words"]["vocabulary"][1:])
    probe = np.array([["dog"], ["fish"], ["unknown"]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(rebuilt(probe)),
                                  keras.ops.convert_to_numpy(lookup(probe)))

    text = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=3,
                                          name="sentences")
    text.adapt(["a cat and a dog", "the dog sat", "a bird"])
    inputs = keras.Input((1,), dtype="string")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.ops.cast(text(inputs), "float32")))
    model.compile(optimizer="sgd", loss="mse")
    callback = RecordCallback(tmp_path, experiment="text")
    model.fit(tf.data.Dataset.from_tensor_slices(
        (np.array([["a cat"], ["the dog"]]), np.zeros((2, 1)))).batch(2), epochs=1,
        verbose=0, callbacks=[callback])
    stored = recordkit.load(callback.record_path).extras["vocabularies"]
    assert stored == {"sentences": {"class": "TextVectorization",
                                    "vocabulary": text.get_vocabulary()}}
    assert "dog" in stored["sentences"]["vocabulary"]
