"""A run's configuration: the user's params and the facts the callbacks captured, under one
set of names whatever the framework, and the hash that tells configurations apart.

The callbacks store what they see in ``Record.info`` in each framework's own shape (a
Lightning ``trainer`` and ``optimizers`` list, a Keras ``model.config`` and ``fit``).
:func:`run_config` reads both into one flat mapping whose common keys mean the same thing
for every framework (:data:`COMMON_KEYS`), so that a sweep of Keras fits and one of
Lightning fits sort, filter and group by ``lr``, ``batch_size`` or ``optimizer`` alike.

Example:
    >>> config = run_config({"lr": 0.1, "width": 64},
    ...                     {"optimizer": {"class": "SGD", "learning_rate": 0.05}})
    >>> config["lr"], config["captured.lr"], config["optimizer"]
    (0.1, 0.05, 'SGD')
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from recordkit.codec import flatten_params

__all__ = ["COMMON_KEYS", "CONFIG_HASH_IGNORES", "MAX_SUMMARY_FACTS_BYTES", "captured_facts",
           "config_hash", "merged_config", "run_config", "summary_facts"]

#: The most JSON bytes of captured facts a run's summary holds; a run with more (a model
#: of hundreds of layers) is read from its ``/info`` instead.
MAX_SUMMARY_FACTS_BYTES = 16_000

#: The captured facts with one meaning across frameworks, in the order tables show them.
COMMON_KEYS = (
    "framework", "model", "parameters", "trainable_parameters", "optimizer", "lr",
    "batch_size", "epochs", "max_steps", "steps_per_epoch", "accumulate_grad_batches",
    "precision", "strategy", "world_size", "seed",
)

#: What differs between repeats of one configuration, left out of :func:`config_hash`: a
#: key whose last dotted part matches (seeds, run ids and names, paths and directories,
#: times and dates).
CONFIG_HASH_IGNORES = re.compile(
    r"(^|_)(seed|seeds|run_id|run_name|dir|path|file|filename|timestamp|date|datetime"
    r"|start_time|end_time)($|_)"
    r"|^(output|log|logs|ckpt|checkpoint|checkpoints|cache|tmp|work)(_|$)"
    r"|^(trial|trial_state|value|study)$",  # an Optuna trial's identity and outcome
    re.IGNORECASE)

#: Prefix of a captured fact whose name a user param already has.
CAPTURED = "captured."

# Keras layer settings that tell architectures apart (``model.layers.<name>.<setting>``).
_LAYER_SETTINGS = ("units", "filters", "kernel_size", "strides", "pool_size", "activation",
                   "rate", "num_heads", "key_dim", "output_dim", "input_dim", "axis",
                   "return_sequences")
# Optimizer settings that are bookkeeping rather than hyperparameters.
_OPTIMIZER_BOOKKEEPING = {"name", "learning_rate", "lr", "initial_lr", "params",
                          "is_legacy_optimizer", "loss_scale_factor", "jit_compile",
                          "differentiable", "foreach", "fused", "capturable", "maximize",
                          "use_ema", "ema_momentum", "ema_overwrite_frequency",
                          "gradient_accumulation_steps"}


def run_config(params: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of a run: the user's *params* flattened to dotted keys, then the
    facts captured in *info* (:func:`captured_facts`). A user param wins a name clash; the
    captured value is kept beside it as ``captured.<key>`` when it differs, so the clash
    is visible."""
    return merged_config(params, captured_facts(info))


def merged_config(params: Mapping[str, Any], captured: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_config` from facts already captured (a closed run's summary holds them,
    so that a table of many runs does not read each run's ``/info``)."""
    config = flatten_params(params)
    for key, value in captured.items():
        if key not in config:
            config[key] = value
        elif not _same(config[key], value):
            config[CAPTURED + key] = value
    return config


def config_hash(config: Mapping[str, Any]) -> str:
    """A short hash of *config* without what differs between repeats of one configuration
    (:data:`CONFIG_HASH_IGNORES`): repeats with other seeds share it, and configurations
    that differ in anything else do not.

    Example:
        >>> config_hash({"lr": 0.1, "seed": 1}) == config_hash({"lr": 0.1, "seed": 2})
        True
        >>> config_hash({"lr": 0.1}) == config_hash({"lr": 0.2})
        False
    """
    kept = {key: _canonical(value) for key, value in config.items()
            if not CONFIG_HASH_IGNORES.search(key.rsplit(".", 1)[-1])}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def captured_facts(info: Mapping[str, Any]) -> dict[str, Any]:
    """The common facts (:data:`COMMON_KEYS`) and the optimizer's and model's settings
    found in a record's *info*, as the Lightning or the Keras callback stored it; an
    info of neither shape gives what it holds under the common names only."""
    if not isinstance(info, Mapping):
        return {}
    facts = _lightning(info) if isinstance(info.get("trainer"), Mapping) else _keras(info)
    facts.update(_optuna(info))
    ordered = {key: facts.pop(key) for key in COMMON_KEYS if facts.get(key) is not None}
    ordered.update((k, v) for k, v in facts.items() if v is not None)
    return ordered


def summary_facts(info_text: str | None) -> dict[str, Any] | None:
    """The captured facts of a run's ``/info`` text for its summary, or None when there
    are too many (:data:`MAX_SUMMARY_FACTS_BYTES`) or the text is not JSON."""
    try:
        info = json.loads(info_text or "{}")
    except ValueError:
        return None
    facts = captured_facts(info)
    try:
        size = len(json.dumps(facts, allow_nan=False))
    except (TypeError, ValueError):  # NaN or an odd type: the summary keeps none
        return None
    return facts if size <= MAX_SUMMARY_FACTS_BYTES else None


def _optuna(info: Mapping[str, Any]) -> dict[str, Any]:
    """An Optuna trial's number, state and objective value and the study's name, from
    ``info["optuna"]`` (``Recorder(trial=...)`` and ``RecordStudy`` write it)."""
    trial = _mapping(info.get("optuna"))
    return {"trial": trial.get("trial"), "trial_state": trial.get("state"),
            "value": trial.get("value"), "study": trial.get("study")}


def _lightning(info: Mapping[str, Any]) -> dict[str, Any]:
    trainer = _mapping(info.get("trainer"))
    model = _mapping(info.get("model"))
    data = _mapping(info.get("data"))
    facts: dict[str, Any] = {
        "framework": _framework_name(trainer.get("framework")),
        "model": _class_name(model.get("class")),
        "parameters": model.get("parameters"),
        "trainable_parameters": model.get("trainable_parameters"),
        "batch_size": data.get("batch_size"),
        "epochs": _positive(trainer.get("max_epochs")),
        "max_steps": _positive(trainer.get("max_steps")),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches"),
        "precision": trainer.get("precision"),
        "strategy": trainer.get("strategy"),
        "world_size": trainer.get("world_size"),
        "seed": trainer.get("seed"),
    }
    optimizers = [o for o in info.get("optimizers") or [] if isinstance(o, Mapping)]
    for i, optimizer in enumerate(optimizers):
        groups = [g for g in optimizer.get("param_groups") or [] if isinstance(g, Mapping)]
        first = groups[0] if groups else {}
        prefix = "optimizer" if i == 0 else f"optimizer_{i}"
        facts[prefix] = optimizer.get("class")
        lr = first.get("initial_lr", first.get("lr"))  # a scheduler moves "lr"
        facts["lr" if i == 0 else f"lr_{i}"] = lr
        for key, value in first.items():
            if key not in _OPTIMIZER_BOOKKEEPING:
                facts[f"{prefix}.{key}"] = _scalar_or_list(value)
    schedulers = [s for s in info.get("lr_schedulers") or [] if isinstance(s, Mapping)]
    if schedulers:
        facts["lr_scheduler"] = "+".join(str(s.get("class")) for s in schedulers)
    return facts


def _keras(info: Mapping[str, Any]) -> dict[str, Any]:
    model = _mapping(info.get("model"))
    optimizer = _mapping(info.get("optimizer"))
    fit = _mapping(info.get("fit"))
    distribution = _mapping(info.get("distribution"))
    config = _mapping(optimizer.get("config"))
    facts: dict[str, Any] = {
        "framework": _framework_name(info.get("framework")),
        "model": _class_name(model.get("class")),
        "parameters": model.get("parameters"),
        "trainable_parameters": model.get("trainable_parameters"),
        "optimizer": optimizer.get("class"),
        "lr": _float32(_initial_lr(optimizer.get("learning_rate"))),
        "batch_size": fit.get("batch_size"),
        "epochs": fit.get("epochs"),
        "steps_per_epoch": fit.get("steps_per_epoch"),
        "precision": _keras_precision(model.get("config")),
        "strategy": distribution.get("strategy"),
        "world_size": distribution.get("replicas"),
        "seed": info.get("seed"),
    }
    for key, value in config.items():
        if key not in _OPTIMIZER_BOOKKEEPING and value is not None:
            facts[f"optimizer.{key}"] = _float32(_scalar_or_list(value))
    if isinstance(optimizer.get("learning_rate"), Mapping):
        facts["lr_scheduler"] = optimizer["learning_rate"].get("class_name")
    facts.update(_keras_layers(model.get("config")))
    return facts


def _keras_layers(config: Any) -> dict[str, Any]:
    """``model.layers.<layer name>.<setting>`` of each layer of a serialised Sequential or
    functional model (nested models' layers too). A name Keras made up is numbered within
    the model (``dense``, ``dense_1``), not within the process, which numbers the layers
    of every model it builds: the second model of a sweep would have ``dense_2``."""
    facts: dict[str, Any] = {}
    seen: dict[str, int] = {}
    pending = [_mapping(config)]
    while pending:
        layers = pending.pop().get("layers")
        for layer in layers if isinstance(layers, list) else []:
            layer = _mapping(layer)
            settings = _mapping(layer.get("config"))
            if isinstance(settings.get("layers"), list):
                pending.append(settings)
                continue
            name = _layer_name(settings.get("name"), layer.get("class_name"), seen)
            if name is None:
                continue
            for key in _LAYER_SETTINGS:
                value = settings.get(key)
                if isinstance(value, Mapping):  # a serialised activation or the like
                    value = _mapping(value.get("config")).get("name") or value.get(
                        "class_name")
                if value is not None:
                    facts[f"model.layers.{name}.{key}"] = _scalar_or_list(value)
    return facts


def _layer_name(name: Any, class_name: Any, seen: dict[str, int]) -> str | None:
    """The layer's own name, or for one Keras named after its class (``dense_7``) the
    name it would have in a fresh process: its class's count within this model."""
    if not isinstance(class_name, str):
        return name if isinstance(name, str) else None
    snake = _snake_case(class_name)
    if isinstance(name, str) and not re.fullmatch(rf"{re.escape(snake)}(_\d+)?", name):
        return name  # named by the user
    count = seen.get(snake, 0)
    seen[snake] = count + 1
    return snake if count == 0 else f"{snake}_{count}"


def _snake_case(name: str) -> str:
    """Keras' own rule for default layer names (``BatchNormalization`` ->
    ``batch_normalization``, ``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_precision(config: Any) -> str | None:
    """The dtype policy of the first layer that names one (``mixed_float16``...)."""
    for layer in _mapping(config).get("layers") or []:
        policy = _mapping(_mapping(layer).get("config")).get("dtype")
        if isinstance(policy, str):
            return policy
        name = _mapping(_mapping(policy).get("config")).get("name")
        if isinstance(name, str):
            return name
    return None


def _initial_lr(value: Any) -> Any:
    """A learning rate, or a schedule's initial one (its serialised config)."""
    if isinstance(value, Mapping):
        settings = _mapping(value.get("config"))
        for key in ("initial_learning_rate", "learning_rate", "lr"):
            if isinstance(settings.get(key), (int, float)):
                return settings[key]
        return None
    return value


def _float32(value: Any) -> Any:
    """A Keras hyperparameter read back from a float32 variable (0.009999999776482582) as
    the number the user wrote (0.01): the shortest decimal of that float32."""
    if isinstance(value, float) and math.isfinite(value) and float(np.float32(value)) == value:
        return float(str(np.float32(value)))
    return value


def _framework_name(text: Any) -> str | None:
    """``lightning``, ``pytorch_lightning`` or ``keras`` from ``"<package> <version>..."``."""
    if not isinstance(text, str) or not text:
        return None
    return text.split()[0].split(".")[0]


def _class_name(text: Any) -> str | None:
    return text.rsplit(".", 1)[-1] if isinstance(text, str) and text else None


def _positive(value: Any) -> Any:
    """``max_epochs`` / ``max_steps`` as set: -1 and None mean unset."""
    return value if isinstance(value, int) and value >= 0 else None


def _scalar_or_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _same(a: Any, b: Any) -> bool:
    try:
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return bool(a == b)
    except Exception:
        return False


def _canonical(value: Any) -> Any:
    """JSON-stable: floats by repr (1e-3 and 0.001 alike), tuples as lists."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value
