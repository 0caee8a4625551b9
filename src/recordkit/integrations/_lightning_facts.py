"""Lightning trainer and module objects turned into plain facts: hyperparameters, the run
info (trainer, optimizers, schedulers, model), learning rates and where the fit stands.

Only public attributes of ``Trainer``, ``LightningModule`` and torch optimizers are read.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from recordkit.integrations._common import jsonable

__all__ = ["batches_done", "cli_config", "data_facts", "hparams", "is_last_epoch",
           "learning_rates", "no_epoch_left", "optimizer_steps_differ", "overrides",
           "run_info", "torch_scalar"]

#: Keys Lightning itself adds to ``hparams``: not hyperparameters (LightningCLI's
#: instantiator, with which ``load_from_checkpoint`` rebuilds the module).
_INTERNAL_HPARAMS = ("_instantiator", "_class_path")


def torch_scalar(value: Any) -> float | None:
    """A one-element tensor or a number as a float; None for anything else."""
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None  # a tensor of several elements, a string...


def is_last_epoch(trainer: Any) -> bool:
    """Whether the running epoch is the last of ``max_epochs``."""
    max_epochs = trainer.max_epochs
    return bool(isinstance(max_epochs, int) and max_epochs >= 0
                and int(trainer.current_epoch) + 1 >= max_epochs)


def batches_done(trainer: Any) -> int:
    """The training batches done in the fit so far, the running one included (its
    ``on_train_batch_end``, or a validation after it): the step of recordkit's rows and
    snapshots. ``trainer.global_step`` (optimizer steps) when the fit loop does not say."""
    total = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None),
                    "total_batch_idx", None)
    return int(total) + 1 if isinstance(total, int) else int(trainer.global_step)


def optimizer_steps_differ(trainer: Any, pl_module: Any) -> bool:
    """Whether ``trainer.global_step`` (optimizer steps) may differ from the batches done:
    gradient accumulation, or manual optimization (any number of steps per batch)."""
    accumulate = trainer.accumulate_grad_batches
    return bool((isinstance(accumulate, int) and accumulate > 1)
                or not getattr(pl_module, "automatic_optimization", True))


def overrides(pl_module: Any, method: str) -> bool:
    """Whether the module's class defines *method* itself (``validation_step``...) rather
    than inheriting the ``LightningModule`` one."""
    for base in type(pl_module).__mro__:
        if base.__name__ == "LightningModule":
            return getattr(type(pl_module), method, None) is not getattr(base, method, None)
    return True


def no_epoch_left(trainer: Any) -> bool:
    """Whether the trainer has already trained every epoch of ``max_epochs``."""
    max_epochs = trainer.max_epochs
    return bool(isinstance(max_epochs, int) and max_epochs >= 0
                and int(trainer.current_epoch) >= max_epochs)


def hparams(pl_module: Any, trainer: Any) -> dict[str, Any]:
    """The module's ``hparams`` and the datamodule's; a datamodule value that disagrees
    with the module's is kept too, as ``datamodule.<key>``."""
    params = dict(getattr(pl_module, "hparams", None) or {})
    datamodule = getattr(trainer, "datamodule", None)
    for key, value in dict(getattr(datamodule, "hparams", None) or {}).items():
        if key in _INTERNAL_HPARAMS:
            continue
        if key in params and _differs(params[key], value):
            params[f"datamodule.{key}"] = value  # both kept when module and data disagree
        else:
            params[key] = value
    for key in _INTERNAL_HPARAMS:
        params.pop(key, None)
    return params


def cli_config(trainer: Any) -> tuple[dict[str, Any], str] | None:
    """The configuration a ``LightningCLI`` run was started with, when it was: the parsed
    config of the running subcommand as plain values (its internal keys dropped: the
    ``config`` files given, ``__path__``, keys starting with ``_``) and its YAML text, as
    the CLI's ``SaveConfigCallback`` writes it to ``config.yaml``. Read from that callback
    (``parser`` and ``config``, set by its constructor); None without one."""
    for callback in getattr(trainer, "callbacks", None) or ():
        if type(callback).__name__ != "SaveConfigCallback":
            continue
        parser, config = getattr(callback, "parser", None), getattr(callback, "config", None)
        if parser is None or config is None:
            return None
        try:
            text = str(parser.dump(config, skip_none=False))
            values = config.as_dict() if hasattr(config, "as_dict") else dict(config)
        except Exception:  # a CLI of another shape: nothing rather than a failed fit
            return None
        return _without_internal(values), text
    return None


def _without_internal(value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and depth < 32:
        return {str(k): _without_internal(v, depth + 1) for k, v in value.items()
                if not str(k).startswith("_") and not (depth == 0 and k == "config")}
    if isinstance(value, list) and depth < 32:
        return [_without_internal(v, depth + 1) for v in value]
    return jsonable(value)


def data_facts(trainer: Any) -> dict[str, Any]:
    """``Record.info["data"]``: the train DataLoader's batch size and batches per epoch,
    once the fit loop has set it up (``on_train_start``); a loader of several (Lightning's
    ``CombinedLoader``) gives one batch size per name when they differ."""
    loader = getattr(trainer, "train_dataloader", None)
    if loader is None:
        return {}
    iterables = getattr(loader, "iterables", None)  # CombinedLoader
    if isinstance(iterables, dict):
        sizes: Any = {str(k): _batch_size(v) for k, v in iterables.items()}
    elif isinstance(iterables, (list, tuple)):
        sizes = [_batch_size(v) for v in iterables]
    else:
        sizes = _batch_size(loader)
    if isinstance(sizes, (dict, list)):
        values = list(sizes.values()) if isinstance(sizes, dict) else sizes
        if values and all(v == values[0] for v in values):
            sizes = values[0]
    facts: dict[str, Any] = {"batch_size": sizes}
    batches = getattr(trainer, "num_training_batches", None)
    if isinstance(batches, int):
        facts["batches_per_epoch"] = batches
    return jsonable(facts)


def _batch_size(loader: Any) -> int | None:
    size = getattr(loader, "batch_size", None)
    if size is None:  # a batch_sampler of the user's: its own batch_size, if it has one
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _differs(a: Any, b: Any) -> bool:
    try:
        return a is not b and bool(a != b)
    except Exception:  # e.g. tensors of several elements
        return True


def _framework(trainer: Any) -> str:
    package = type(trainer).__module__.split(".trainer", 1)[0]
    try:
        version = importlib.import_module(package.split(".")[0]).__version__
    except (ImportError, AttributeError):
        version = "unknown"
    return f"{package} {version}"


def _seed() -> int | None:
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything
    try:
        return int(seed) if seed is not None else None
    except ValueError:
        return None


def run_info(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """``Record.info`` of a fit: trainer facts, optimizers, schedulers and the model."""
    parameters = list(pl_module.parameters())
    facts = {
        "framework": _framework(trainer),
        "max_epochs": trainer.max_epochs,
        "min_epochs": trainer.min_epochs,
        "max_steps": trainer.max_steps,
        "precision": trainer.precision,
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "device_ids": list(getattr(trainer, "device_ids", []) or []),
        "num_nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "val_check_interval": getattr(trainer, "val_check_interval", None),
        "limit_train_batches": trainer.limit_train_batches,
        "limit_val_batches": trainer.limit_val_batches,
        "seed": _seed(),
    }
    return {
        "trainer": jsonable(facts),
        "optimizers": [_optimizer_facts(o) for o in trainer.optimizers],
        "lr_schedulers": [_scheduler_facts(c) for c in trainer.lr_scheduler_configs],
        "model": {
            "class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "parameters": sum(int(p.numel()) for p in parameters),
            "trainable_parameters": sum(int(p.numel()) for p in parameters if p.requires_grad),
        },
    }


def _optimizer_facts(optimizer: Any) -> dict[str, Any]:
    groups = [{k: v for k, v in group.items() if k != "params"}
              for group in optimizer.param_groups]
    return {"class": type(optimizer).__name__, "param_groups": jsonable(groups)}


def _scheduler_facts(config: Any) -> dict[str, Any]:
    scheduler = config.scheduler
    try:
        state = scheduler.state_dict()
    except Exception:  # a scheduler without state_dict still gets its class recorded
        state = {}
    settings = {k: v for k, v in state.items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "interval": config.interval,
            "frequency": config.frequency, "monitor": config.monitor,
            "settings": jsonable(settings)}


def learning_rates(trainer: Any) -> dict[str, float]:
    """``lr-<Optimizer>`` per optimizer (``-<i>`` when classes repeat), ``/pg<j>`` per
    parameter group beyond one: the names Lightning's LearningRateMonitor uses."""
    rates: dict[str, float] = {}
    optimizers = list(trainer.optimizers)
    names = [type(o).__name__ for o in optimizers]
    for i, optimizer in enumerate(optimizers):
        name = f"lr-{names[i]}" + (f"-{i}" if names.count(names[i]) > 1 else "")
        groups = optimizer.param_groups
        for j, group in enumerate(groups):
            if "lr" in group:
                rates[name + (f"/pg{j + 1}" if len(groups) > 1 else "")] = float(group["lr"])
    return rates
