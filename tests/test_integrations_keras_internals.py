"""What the Keras callback reads from Keras' and TensorFlow's internals (see
``recordkit.integrations._keras_internals``): a real ``model.fit`` on every installed
backend and real ``tf.distribute`` strategies. A failure here means a release changed an
internal, and ``Record.info["fit"]`` or ``info["distribution"]`` would be wrong."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import require

keras = require("keras", "keras")

from recordkit.integrations._keras_internals import (  # noqa: E402
    exception_left_fit,
    fit_call_arguments,
    fit_is_running_here,
    running_fit,
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


class FitProbe(keras.callbacks.Callback):
    """Keeps what _keras_internals finds of the running fit; raises at epoch *crash*."""

    def __init__(self, crash: int | None = None) -> None:
        super().__init__()
        self.crash = crash
        self.fit: Any = None
        self.running_here: list[bool] = []

    def on_train_begin(self, logs: Any = None) -> None:
        self.fit = running_fit(self.model)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.running_here.append(fit_is_running_here(self.fit))
        if epoch == self.crash:
            raise RuntimeError(f"boom at epoch {epoch}")


def small_model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


X3 = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")


@pytest.mark.parametrize("filtering", [True, False])
def test_the_exception_that_left_a_fit_is_told_from_others(filtering: bool) -> None:
    """Found through the traceback with Keras' traceback filtering (which drops fit's
    frame) and without; another exception, or one after fit's frame is gone, is not."""
    was = keras.config.is_traceback_filtering_enabled()
    (keras.config.enable_traceback_filtering if filtering
     else keras.config.disable_traceback_filtering)()
    try:
        probe = FitProbe(crash=1)
        found: dict[str, Any] = {}
        try:
            small_model().fit(X3, X3[:, :1], epochs=3, verbose=0, callbacks=[probe])
        except RuntimeError as err:
            found["raised"] = err
            found["given"] = exception_left_fit(probe.fit, err)
            found["handled"] = exception_left_fit(probe.fit, sys.exc_info()[1])
            try:
                raise KeyError("while handling it")
            except KeyError as other:  # its __context__ is the fit's exception
                found["context"] = exception_left_fit(probe.fit, other)
        try:
            raise ValueError("unrelated")
        except ValueError as unrelated:
            found["unrelated"] = exception_left_fit(probe.fit, unrelated)
        raised = found.pop("raised")
        assert found == {"given": raised, "handled": raised, "context": raised,
                         "unrelated": None}
        assert probe.running_here == [True, True]
        assert not fit_is_running_here(probe.fit)
        del raised, found
        gc.collect()
        assert probe.fit.callback_list() is None  # fit's frame went with the exception
        assert exception_left_fit(probe.fit, None) is None
    finally:
        (keras.config.enable_traceback_filtering if was
         else keras.config.disable_traceback_filtering)()


@pytest.mark.parametrize(("kwargs", "given"), [
    ({"validation_split": 0.25}, False),
    ({"validation_data": (X3[:5], X3[:5, :1])}, True),
    ({"validation_data": (X3[:5], X3[:5, :1]), "validation_split": 0.25}, True),
    ({}, False),
])
def test_validation_data_given_is_what_the_user_passed(kwargs: dict[str, Any],
                                                       given: bool) -> None:
    probe = FitProbe()
    small_model().fit(X3, X3[:, :1], epochs=1, verbose=0, callbacks=[probe], **kwargs)
    assert probe.fit.call_args["validation_data_given"] is given


SERIALISE_ON_TORCH = """
import json, sys
import keras
from keras.src.utils import module_utils
from recordkit.integrations._keras_internals import serialising_without_tensorflow

model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
with serialising_without_tensorflow():
    inside = module_utils.tensorflow._available
    config = model.get_config()
print(json.dumps({"inside": inside, "after": module_utils.tensorflow._available,
                  "tf": "tensorflow" in sys.modules, "layers": len(config["layers"])}))
"""


@pytest.mark.slow
def test_serialising_on_torch_imports_no_tensorflow() -> None:
    """Keras' lazy tensorflow module answers "not available" inside the block only, so
    get_config imports nothing; it asks again (and may import) after."""
    require("tensorflow", "keras")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the torch backend is not installed")
    seen = run(SERIALISE_ON_TORCH, {"KERAS_BACKEND": "torch"})
    assert seen == {"inside": False, "after": None, "tf": False, "layers": 2}
    seen = run(SERIALISE_ON_TORCH, {"KERAS_BACKEND": "tensorflow"})
    assert seen["tf"] is True and seen["inside"] is not False  # nothing changed there
