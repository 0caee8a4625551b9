"""The Keras callback on the jax and torch backends (issue 16): each in a fresh process with
``KERAS_BACKEND`` set, its record read back here and compared with what the process saw
(``History.history``, ``model.weights``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import recordkit
from tests.support import require

require("keras", "keras")
REPO = Path(__file__).resolve().parents[1]

HEAD = """
import json, sys
import numpy as np
import keras
from recordkit.integrations.keras import RecordCallback

rng = np.random.default_rng(0)
x = rng.normal(size=(48, 6)).astype("float32")
y = (x[:, 0] > 0).astype("int64")

def build(metrics=("accuracy",)):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=list(metrics))
    return model

def dump(callback, hist, model, **more):
    weights = {v.path: keras.ops.convert_to_numpy(v).tolist() for v in model.weights}
    history = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in hist.history.items()}
    print(json.dumps({"path": callback.record_path, "history": history, "weights": weights,
                      "backend": keras.backend.backend(),
                      "tf": "tensorflow" in sys.modules, **more}))
"""


def backend_available(backend: str) -> None:
    module = {"jax": "jax", "torch": "torch"}[backend]
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{module} is not installed: the Keras {backend} backend cannot run")


def run(tmp_path: Path, backend: str, body: str) -> list[dict]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(HEAD) + textwrap.dedent(body))
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "records")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.strip().splitlines()
               if line.startswith("{")]
    assert all(r["backend"] == backend for r in results)
    return results


def assert_matches(record: recordkit.Record, result: dict, epochs: list[int]) -> None:
    for name, values in result["history"].items():
        stored = record.history[name]
        want = np.asarray(values, dtype=np.float64)
        np.testing.assert_array_equal(stored, want.astype(np.float32).astype(np.float64)
                                      if stored.dtype == np.float64 else want, err_msg=name)
        assert record.history.epochs(name).tolist() == epochs
    final = record.weights()
    assert set(final) == set(result["weights"])
    for name, value in result["weights"].items():
        np.testing.assert_array_equal(final[name], np.asarray(value, dtype=final[name].dtype))


BACKENDS = ["jax", "torch"]

#: One process per backend runs the three fits (importing Keras and the backend is most
#: of the time): a plain fit, vector metrics with EarlyStopping's restore, a caught failure.
SCRIPT = """
model = build()
callback = RecordCallback(sys.argv[1], experiment="plain")
hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback],
                 validation_split=0.25)
tf_after_fit = "tensorflow" in sys.modules
dump(callback, hist, model, tf_after_fit=tf_after_fit)

labels = keras.utils.to_categorical(y, 2)
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, activation="softmax")])
model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy",
              metrics=[keras.metrics.F1Score(average=None)])
stop = keras.callbacks.EarlyStopping(monitor="loss", patience=2, restore_best_weights=True,
                                     min_delta=1e9)
seen = []
class Seen(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        seen.append({v.path: keras.ops.convert_to_numpy(v).tolist()
                     for v in self.model.weights})
callback = RecordCallback(sys.argv[1], experiment="stopped")
hist = model.fit(x, labels, batch_size=16, epochs=10, verbose=0,
                 callbacks=[stop, callback, Seen()])
dump(callback, hist, model, seen=seen)

class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("boom at epoch 2")
callback = RecordCallback(sys.argv[1], experiment="crashed")
try:
    build().fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[callback, Crash()])
except RuntimeError:
    callback.close()
print(json.dumps({"path": callback.record_path, "backend": keras.backend.backend()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_callback_on_another_backend(tmp_path: Path, backend: str) -> None:
    backend_available(backend)
    plain, stopped, crashed = run(tmp_path, backend, SCRIPT)

    # a fit, recorded without importing tensorflow
    assert plain["tf_after_fit"] is False
    record = recordkit.load(plain["path"])
    assert record.status == "completed"
    assert f"({backend})" in record.info["framework"]
    assert record.info["fit"]["batch_size"] == 16
    assert record.info["fit"]["validation_split"] == 0.25
    assert record.info["fit"]["validation_data_given"] is False
    assert record.info["model"]["parameters"] == 6 * 8 + 8 + 4 * 8 + 8 * 2 + 2
    assert record.snapshot_epochs == [0, 1, 2]
    assert_matches(record, plain, [0, 1, 2])

    # F1Score(average=None) per class, read back as History has it; EarlyStopping's
    # restore leaves each snapshot as its epoch trained and names the restored epoch
    record = recordkit.load(stopped["path"])
    assert len(stopped["seen"]) == 3  # min_delta=1e9: only the first epoch improves (on inf)
    f1 = np.asarray(stopped["history"]["f1_score"], dtype=np.float64)
    assert f1.shape == (3, 2)
    np.testing.assert_array_equal(record.history["f1_score"],
                                  f1.astype(np.float32).astype(np.float64))
    assert record.info["vector_metrics"]["f1_score"]["shape"] == [2]
    for epoch, weights in enumerate(stopped["seen"]):
        stored = record.weights(epoch)
        for name, value in weights.items():
            np.testing.assert_array_equal(stored[name], np.asarray(value, np.float32))
    assert record.info["final_weights"] == {
        "epoch": 0, "by": "EarlyStopping(restore_best_weights=True)"}
    for name, value in stopped["weights"].items():  # the model ends with epoch 0's
        np.testing.assert_array_equal(record.weights(0)[name], np.asarray(value, np.float32))

    # a failure caught by the caller reads failed once the callback is closed
    record = recordkit.load(crashed["path"])
    assert record.stored_status == "failed"
    assert record.error == "RuntimeError: boom at epoch 2"
    assert record.history.epochs("loss").tolist() == [0, 1]
    assert record.snapshot_epochs == [0, 1]
