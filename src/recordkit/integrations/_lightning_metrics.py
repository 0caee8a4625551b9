"""Which of Lightning's ``trainer.callback_metrics`` the running loop wrote, and which of
their names go to epoch and step rows: written values are told apart by object identity,
the one Lightning behaviour recordkit relies on beyond Lightning's API.

Why identity: ``trainer.callback_metrics`` (like ``logged_metrics`` and
``progress_bar_metrics``) is one dict that keeps every name logged since the fit began,
from every loop and epoch; no public API says which names the running loop (this training
epoch, this validation run) logged. Values cannot tell either: a metric logged twice with
the same value looks unchanged. What does tell: each read of ``trainer.callback_metrics``
computes the running loop's results again (Lightning's private result collection) and
puts a new detached tensor under each of their names; the other names keep the object
they had. So two reads, or a copy taken earlier and a read now, compared with ``is``,
name exactly what was written.

``tests/test_integrations_lightning_metrics.py`` runs a real ``Trainer.fit`` and fails
when a Lightning release changes this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["epoch_values", "late_epoch_values", "running_loop_metrics", "step_values",
           "written_since"]


def running_loop_metrics(trainer: Any) -> dict[str, Any]:
    """The metrics of the loop that is running (names from earlier epochs or other loops
    left out), read twice from ``trainer.callback_metrics``."""
    first = dict(trainer.callback_metrics)
    second = trainer.callback_metrics
    return {k: v for k, v in second.items() if first.get(k) is not v}


def written_since(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The names of *after* whose value was written since *before* (a copy of
    ``callback_metrics`` taken then): those that hold another object now.

    Example:
        >>> loss = object()
        >>> sorted(written_since({"loss": loss}, {"loss": loss, "val_loss": 1.0}))
        ['val_loss']
    """
    return {k: v for k, v in after.items() if before.get(k) is not v}


# A metric logged with on_step=True and on_epoch=True appears as "x_step" (the step value),
# "x_epoch" (the epoch value) and "x" (the step value during the epoch, the epoch value at
# its end). Epoch rows keep it as "x", step rows as "x_step".


def epoch_values(fresh: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of an epoch's end for its epoch row: ``x_epoch`` left out beside ``x``.

    Example:
        >>> sorted(epoch_values({"loss": 1, "loss_epoch": 1, "loss_step": 2, "acc": 3}))
        ['acc', 'loss', 'loss_step']
    """
    return {k: v for k, v in fresh.items()
            if not (k.endswith("_epoch") and k[: -len("_epoch")] in fresh)}


def step_values(fresh: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of a step for its step row: ``x`` left out beside ``x_step``.

    Example:
        >>> sorted(step_values({"loss": 2, "loss_step": 2, "lr": 0.1}))
        ['loss_step', 'lr']
    """
    return {k: v for k, v in fresh.items() if f"{k}_step" not in fresh}


def late_epoch_values(before: Mapping[str, Any], now: Mapping[str, Any],
                      logged: set[str]) -> dict[str, Any]:
    """What was written since *before* (the metrics at the callback's epoch-end hook) that
    the epoch's row does not hold yet (*logged*): ``LightningModule.on_train_epoch_end``
    logs after the callbacks' hook. Step values and ``x_epoch`` beside ``x`` left out."""
    return {k: v for k, v in written_since(before, now).items() if k not in logged
            and not k.endswith("_step")
            and not (k.endswith("_epoch") and k[: -len("_epoch")] in logged)}
