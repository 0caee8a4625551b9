"""Keras model, optimizer and fit objects turned into plain facts: the run info (model,
optimizer, compile, distribution), ``info["fit"]``, the learning rate, variable names,
frozen weights and whether the weights changed since a snapshot.

Only Keras' public API is read here; what only its internals give is in
``_keras_internals``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from recordkit.integrations._common import jsonable
from recordkit.integrations._keras_internals import (
    HIDDEN_FIT_ARGS,
    random_seed,
    serialising_without_tensorflow,
    strategy_name,
)

__all__ = ["cluster_resolver", "early_stopping_restore", "element_name", "fit_facts",
           "frozen_paths", "host_copies", "keras_scalar", "learning_rate", "model_counts",
           "run_info", "variable_name", "vector_metrics", "vocabularies", "weights_differ"]


def keras_scalar(value: Any) -> float | None:
    """A one-element tensor or array (any backend) or a number as a float; else None."""
    try:
        array = keras.ops.convert_to_numpy(value)
        return float(array) if array.size == 1 else None
    except Exception:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None


def vector_metrics(logs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The metrics of *logs* that hold several numbers (``F1Score(average=None)`` gives
    one per class), as float arrays; one-number metrics and what is not numeric are
    left out."""
    out: dict[str, np.ndarray] = {}
    for key, value in logs.items():
        if isinstance(value, (float, int, str)) or value is None:
            continue
        try:
            array = np.asarray(keras.ops.convert_to_numpy(value))
        except Exception:
            continue
        if array.size > 1 and array.dtype.kind in "biuf":
            out[str(key)] = array.astype(np.float64)
    return out


def element_name(metric: str, index: tuple[int, ...]) -> str:
    """The name one element of a vector metric is stored under: ``f1_score[0]``,
    ``confusion[1,0]``."""
    return f"{metric}[{','.join(str(i) for i in index)}]"


def variable_name(variable: Any) -> str:
    """A variable's ``path`` (``dense/kernel``), the name its snapshots are stored under."""
    return str(getattr(variable, "path", None) or variable.name)


def frozen_paths(model: Any) -> set[str]:
    """Paths of the weights of frozen layers (``trainable = False``), found through the
    public ``layers`` of models and of the layers that nest others."""
    frozen: set[str] = set()
    pending = list(getattr(model, "layers", []) or [])
    while pending:
        layer = pending.pop()
        if not getattr(layer, "trainable", True):
            frozen.update(variable_name(v) for v in layer.weights)
        else:
            pending.extend(getattr(layer, "layers", []) or [])
    return frozen


def _to_numpy(variable: Any) -> np.ndarray:
    """A variable's value as ``Recorder.snapshot`` converts it (``numpy()``, one copy;
    ``keras.ops.convert_to_numpy`` took twice as long on TensorFlow variables)."""
    numpy = getattr(variable, "numpy", None)
    return np.asarray(numpy() if callable(numpy) else keras.ops.convert_to_numpy(variable))


def host_copies(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{name: array}`` of Keras variables, converted as ``Recorder.snapshot`` converts
    them, each an array that owns its memory: what a later assignment to the variable
    cannot change (``numpy()`` copies on every backend today; a view is copied)."""
    copies: dict[str, np.ndarray] = {}
    for name, variable in variables.items():
        array = _to_numpy(variable)
        copies[name] = array if array.flags.owndata else array.copy()
    return copies


def weights_differ(model: Any, stored: Mapping[str, np.ndarray]) -> bool:
    """Whether a weight of *model* differs from its array in *stored* (a snapshot read
    back, or the copies it was made of); weights stored in another dtype or shape
    (float16...) are not compared."""
    for variable in model.weights:
        name = variable_name(variable)
        if name not in stored:
            continue
        value = _to_numpy(variable)
        if stored[name].shape != value.shape or stored[name].dtype != value.dtype:
            continue  # stored in another dtype (float16...): compare what can be
        # equal element by element first: 10x faster than equal_nan's isnan passes over
        # both arrays, and equal then means equal with NaNs too
        if not (np.array_equal(stored[name], value)
                or np.array_equal(stored[name], value, equal_nan=True)):
            return True
    return False


def early_stopping_restore(callbacks: Any) -> tuple[int, list[Any]] | None:
    """``(best epoch, its weights)`` that an ``EarlyStopping(restore_best_weights=True)``
    among *callbacks* (the fit's, in order) restores in its ``on_train_end`` (the last
    one when several do), from its public attributes; None when none restores."""
    found = None
    for callback in callbacks:
        if (isinstance(callback, keras.callbacks.EarlyStopping)
                and getattr(callback, "restore_best_weights", False)
                and getattr(callback, "best_weights", None) is not None
                and isinstance(getattr(callback, "best_epoch", None), int)):
            found = (int(callback.best_epoch), list(callback.best_weights))
    return found


#: How deep :func:`vocabularies` looks into nested layers.
_MAX_LAYER_DEPTH = 32


def vocabularies(model: Any) -> dict[str, dict[str, Any]]:
    """The vocabulary of every lookup layer of *model* (``StringLookup``,
    ``IntegerLookup``, ``TextVectorization``: Keras 3 keeps an adapted vocabulary in no
    variable, so no snapshot holds it), by the layer's path of names (``"encoder/vocab"``
    for a layer of a nested model): its class and ``get_vocabulary()``, special tokens
    included, as the layer's ``set_vocabulary`` takes it back. ``{}`` when there is none.
    """
    found: dict[str, dict[str, Any]] = {}

    def walk(layer: Any, prefix: str, depth: int) -> None:
        for child in list(getattr(layer, "layers", None) or ()):
            name = f"{prefix}{getattr(child, 'name', type(child).__name__)}"
            get = getattr(child, "get_vocabulary", None)
            if callable(get):
                try:
                    words = [w.decode("utf-8", "replace") if isinstance(w, bytes) else w
                             for w in get()]
                    found[name] = {"class": type(child).__name__, "vocabulary": jsonable(words)}
                except Exception:  # a layer not adapted yet (or not one of Keras')
                    pass
            elif depth < _MAX_LAYER_DEPTH:
                walk(child, f"{name}/", depth + 1)

    walk(model, "", 0)
    return found


def learning_rate(model: Any) -> float | None:
    """The optimizer's learning rate now (a schedule's current value); None without one."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        return keras_scalar(optimizer.learning_rate)
    except Exception:  # an optimizer without a readable learning rate
        return None


def fit_facts(call_args: Mapping[str, Any], params: Mapping[str, Any] | None, *,
              initial_epoch: int | None, validation: bool,
              fit_args: Mapping[str, Any]) -> dict[str, Any]:
    """``Record.info["fit"]``: the arguments read from the fit() call, what Keras passes
    callbacks (*params*), then the user's *fit_args* over them; ``not_visible`` names
    the arguments callbacks cannot see that none of them gave."""
    params = dict(params or {})
    facts: dict[str, Any] = dict(call_args)
    facts.update({
        "epochs": params.get("epochs"),
        "steps_per_epoch": params.get("steps"),
        "verbose": params.get("verbose"),
        "initial_epoch": initial_epoch,
        "validation": validation,
    })
    facts.update(jsonable(dict(fit_args)))
    facts["not_visible"] = [k for k in HIDDEN_FIT_ARGS if k not in facts
                            and f"{k}_given" not in facts]
    return facts


def cluster_resolver(model: Any) -> Any:
    """The cluster resolver of the model's ``tf.distribute`` strategy (None without)."""
    strategy = getattr(model, "distribute_strategy", None)  # tensorflow backend only
    return getattr(strategy, "cluster_resolver", None) if strategy is not None else None


def _json_or_none(value: Any) -> tuple[Any, str | None]:
    """*value* when it serialises to JSON as it is, else None and why."""
    try:
        json.dumps(value, allow_nan=False)
        return value, None
    except (TypeError, ValueError) as err:
        return None, f"{type(err).__name__}: {err}"


def _count(variables: Any) -> int:
    total = 0
    for v in variables:
        size = 1
        for dim in v.shape:
            size *= int(dim)
        total += size
    return total


def _optimizer_facts(optimizer: Any) -> dict[str, Any]:
    if optimizer is None:
        return {}
    facts: dict[str, Any] = {"class": type(optimizer).__name__}
    try:
        config = optimizer.get_config()
    except Exception as err:
        return {**facts, "config_error": f"{type(err).__name__}: {err}"}
    facts["config"] = jsonable(config)
    lr = config.get("learning_rate")
    if isinstance(lr, Mapping):  # a schedule: its serialised config
        facts["learning_rate"] = jsonable(lr)
    else:
        facts["learning_rate"] = keras_scalar(lr) if lr is not None else None
    return facts


def _names(value: Any) -> Any:
    """Loss / metric names from compile: strings kept, objects by their name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "class_name" in value:  # a serialised object
        config = value.get("config")
        name = config.get("name") if isinstance(config, Mapping) else None
        return str(name or value["class_name"])
    if isinstance(value, Mapping):
        return {str(k): _names(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_names(v) for v in value]
    name = getattr(value, "name", None) or getattr(value, "__name__", None)
    return str(name) if name else type(value).__name__


def _configs(value: Any) -> Any:
    """The settings of serialised loss / metric objects from compile (``from_logits``,
    ``reduction``...), in the shape *value* has; None for one given by its name."""
    if isinstance(value, Mapping) and "class_name" in value:
        config = value.get("config")
        return jsonable(dict(config)) if isinstance(config, Mapping) else None
    if isinstance(value, Mapping):
        return {str(k): _configs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_configs(v) for v in value]
    return None


def _compile_facts(model: Any) -> dict[str, Any]:
    try:
        config = model.get_compile_config() or {}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    facts = {key: _names(value) for key, value in config.items()
             if key in ("loss", "metrics", "weighted_metrics")}
    if "loss" in config:  # a loss object's settings: from_logits changes what it computes
        facts["loss_config"] = _configs(config["loss"])
        if isinstance(facts["loss_config"], Mapping) and "from_logits" in facts["loss_config"]:
            facts["from_logits"] = facts["loss_config"]["from_logits"]
    for key in ("loss_weights", "run_eagerly", "steps_per_execution", "jit_compile"):
        if key in config:
            facts[key] = jsonable(config[key])
    return facts


def model_counts(model: Any) -> dict[str, int]:
    """The model's parameter counts now (a subclassed model on tensorflow has none until
    its first step builds it)."""
    trainable = _count(model.trainable_weights)
    total = _count(model.weights)
    return {"parameters": total, "trainable_parameters": trainable,
            "non_trainable_parameters": total - trainable}


def run_info(model: Any) -> dict[str, Any]:
    """``Record.info`` of a fit: framework, model, optimizer, compile and distribution.
    On the torch and jax backends, reading them imports no TensorFlow."""
    with serialising_without_tensorflow():
        return _run_info(model)


def _run_info(model: Any) -> dict[str, Any]:
    try:
        config, problem = _json_or_none(model.get_config())
    except Exception as err:  # subclassed models without get_config, and the like
        config, problem = None, f"{type(err).__name__}: {err}"
    model_facts: dict[str, Any] = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name": getattr(model, "name", None),
        **model_counts(model),
        "config": config,
    }
    if problem is not None:
        model_facts["config_error"] = problem
    strategy = getattr(model, "distribute_strategy", None)
    resolver = cluster_resolver(model)
    distribution = {
        "strategy": strategy_name(strategy) if strategy is not None else None,
        "replicas": int(getattr(strategy, "num_replicas_in_sync", 1) or 1),
        "task_type": getattr(resolver, "task_type", None),
        "task_id": getattr(resolver, "task_id", None),
    }
    try:
        compile_facts = _compile_facts(model)
    except Exception as err:  # compile facts must never stop a run
        compile_facts = {"error": f"{type(err).__name__}: {err}"}
    return {
        "framework": f"keras {keras.__version__} ({keras.backend.backend()})",
        "model": model_facts,
        "optimizer": _optimizer_facts(getattr(model, "optimizer", None)),
        "compile": compile_facts,
        "distribution": jsonable(distribution),
        "seed": random_seed(),
    }
