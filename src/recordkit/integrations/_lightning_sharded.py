"""Sharded strategies: where no rank holds the whole ``state_dict``.

Under ``FSDPStrategy`` each rank holds a shard of each parameter; the full state dict is a
collective (every rank must ask for it, or training hangs) and ``pl_module.state_dict()``
on rank zero alone gives flat shards or empty tensors. So every rank gathers it together
through torch's FSDP full-state API (``rank0_only``, offloaded to the CPU when the model is
on an accelerator, so no accelerator holds more than a unit at a time) and only rank zero
writes it; whether a snapshot is due is rank zero's decision, broadcast, so every rank
gathers or none does.

DeepSpeed (ZeRO-3 partitions the parameters) and ``ModelParallelStrategy`` (DTensor) are
refused at ``setup`` with a clear message: their full state needs their own engines,
which recordkit does not drive. They are told by their class names, so DeepSpeed is
refused without importing it.
"""

from __future__ import annotations

import os
from typing import Any

from recordkit.errors import RecordkitError

__all__ = ["agree", "check_strategy", "full_state_dict", "model_facts"]

#: Strategy classes (and subclasses) the callback refuses, with why.
_REFUSED = {
    "DeepSpeedStrategy": "DeepSpeed partitions parameters across ranks (ZeRO-3 leaves "
                         "empty tensors on each) and gathers them only through its own "
                         "engine",
    "ModelParallelStrategy": "its parameters are DTensors sharded across ranks",
}


def check_strategy(trainer: Any, root: str | os.PathLike[str]) -> str | None:
    """``"fsdp"`` when snapshots must be gathered by every rank; None when rank zero's
    ``state_dict()`` is whole.

    Raises:
        RecordkitError: on every rank, for a strategy whose full state the callback
            cannot gather (DeepSpeed, ModelParallelStrategy).
    """
    names = [cls.__name__ for cls in type(trainer.strategy).__mro__]
    for name, why in _REFUSED.items():
        if name in names:
            strategy = type(trainer.strategy).__name__
            raise RecordkitError(
                f"RecordCallback({str(root)!r}): Trainer(strategy={strategy}) "
                f"is not supported: {why}, so snapshots of the whole model cannot be "
                "taken without hanging or recording empty tensors. Use strategy='ddp' or "
                "FSDPStrategy, or record without this callback's snapshots.")
    return "fsdp" if "FSDPStrategy" in names else None


def agree(trainer: Any, decision: bool) -> bool:
    """Rank zero's *decision*, on every rank (a collective: every rank calls it)."""
    return bool(trainer.strategy.broadcast(bool(decision), src=0))


def full_state_dict(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The module's whole ``state_dict`` on rank zero (empty on the others), gathered by
    every rank: a collective."""
    from torch.distributed.fsdp import (
        FullStateDictConfig,
        FullyShardedDataParallel,
        StateDictType,
    )

    model = trainer.strategy.model  # the FSDP-wrapped module
    # torch 2.13 crashes offloading CPU tensors "to the CPU": offload only from a device.
    offload = trainer.strategy.root_device.type != "cpu"
    config = FullStateDictConfig(offload_to_cpu=offload, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                                  config):
        state = model.state_dict()
    return dict(state) if trainer.is_global_zero else {}


def model_facts(pl_module: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``Record.info["model"]`` from the gathered *state*: each rank's ``parameters()``
    are flat shards, the buffers are whole (FSDP does not shard them). Trainable
    parameters are counted when every shard trains alike (else None)."""
    buffers = {name for name, _ in pl_module.named_buffers()}
    count = sum(int(v.numel()) for k, v in state.items() if k not in buffers)
    flags = {bool(p.requires_grad) for p in pl_module.parameters()}
    trainable = (count if flags == {True} else 0 if flags == {False} else None)
    return {"class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "parameters": count, "trainable_parameters": trainable,
            "counted": "from the gathered state_dict (the strategy shards parameters)"}
