"""What the Keras callback reads from Keras' and TensorFlow's internals (see
``recordkit.integrations._keras_internals``): a real ``model.fit`` on every installed
backend and real ``tf.distribute`` strategies. A failure here means a release changed an
internal, and ``Record.info["fit"]`` or ``info["distribution"]`` would be wrong."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

keras = require("keras", "keras")

from recordkit.integrations._keras_internals import (  # noqa: E402
    fit_call_arguments,
    strategy_name,
)

REPO = Path(__file__).resolve().parents[1]

FIT_ARGUMENTS = """
import json
import numpy as np
import keras
from recordkit.integrations._keras_internals import fit_call_arguments

class Probe(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.read = fit_call_arguments(self.model)

rng = np.random.default_rng(0)
x = rng.normal(size=(40, 3)).astype("float32")
y = rng.normal(size=(40, 1)).astype("float32")
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
probe = Probe()
model.fit(x, y, batch_size=7, epochs=3, initial_epoch=1, shuffle=False,
          validation_data=(x[:10], y[:10]), validation_batch_size=5, validation_freq=2,
          sample_weight=np.ones(40, dtype="float32"), verbose=0, callbacks=[probe])
print(json.dumps({"backend": keras.backend.backend(), "read": probe.read}))
"""

#: What FIT_ARGUMENTS passes to fit(), as fit_call_arguments must give it back.
EXPECTED_FIT_ARGUMENTS = {
    "batch_size": 7, "epochs": 3, "initial_epoch": 1, "steps_per_epoch": None,
    "shuffle": False, "validation_split": 0.0, "validation_steps": None,
    "validation_batch_size": 5, "validation_freq": 2,
    "class_weight_given": False, "sample_weight_given": True, "validation_data_given": True,
}

BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}  # backend: module


def run(body: str, env: dict[str, str]) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", body], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_fit_call_arguments_are_read_from_a_real_fit(backend: str) -> None:
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"the {backend} backend is not installed")
    seen = run(FIT_ARGUMENTS, {"KERAS_BACKEND": backend})
    assert seen["backend"] == backend
    assert seen["read"] == EXPECTED_FIT_ARGUMENTS


def test_without_a_fit_on_the_stack_nothing_is_read() -> None:
    assert fit_call_arguments(object()) == {}  # a custom loop calling the hooks itself


def test_a_fit_argument_of_an_unexpected_type_is_left_out() -> None:
    model = object()

    def fit(self: Any, batch_size: Any, epochs: Any, class_weight: Any = None) -> Any:
        return fit_call_arguments(model)

    # a fit() whose batch_size became something else: stored as nothing, not wrongly
    assert fit(model, batch_size="seven", epochs=2) == {"epochs": 2,
                                                         "class_weight_given": False}


STRATEGIES = """
import json
import tensorflow as tf
from recordkit.integrations._keras_internals import strategy_name

strategies = [tf.distribute.MirroredStrategy(["/cpu:0"]),
              tf.distribute.OneDeviceStrategy("/cpu:0"),
              tf.distribute.MultiWorkerMirroredStrategy()]  # no TF_CONFIG: one worker
print(json.dumps({type(s).__name__: strategy_name(s) for s in strategies}))
"""


@pytest.mark.slow
def test_strategy_names_are_the_names_users_write() -> None:
    require("tensorflow", "keras")
    names = run(STRATEGIES, {"KERAS_BACKEND": "tensorflow"})
    assert names == {"MirroredStrategy": "MirroredStrategy",
                     "OneDeviceStrategy": "OneDeviceStrategy",
                     # the class behind it: only TensorFlow's exported name says it
                     "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}


def test_strategy_name_falls_back_to_the_class_name() -> None:
    class Exported:
        _tf_api_names = ("distribute.ExportedStrategy",)

    class Subclass(Exported):  # a user's subclass is named by its own class
        pass

    class Garbled:
        _tf_api_names = 3

    assert strategy_name(Exported()) == "ExportedStrategy"
    assert strategy_name(Subclass()) == "Subclass"
    assert strategy_name(Garbled()) == "Garbled"


def test_the_seed_of_set_random_seed_is_read() -> None:
    import keras

    from recordkit.integrations._keras_internals import random_seed

    keras.utils.set_random_seed(1234)
    assert random_seed() == 1234
    keras.utils.set_random_seed(7)
    assert random_seed() == 7
