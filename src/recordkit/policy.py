"""When to snapshot: the policy both callbacks share.

``every=N`` snapshots epochs N-1, 2N-1, ... (every N-th epoch, counting from 1);
``every=None`` only the last epoch; ``every="best"`` each epoch where *monitor* improves.
The final epoch is always snapshotted by the callbacks (``due(..., last=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["SnapshotPolicy"]


class SnapshotPolicy:
    """Decides which epochs get a weight snapshot.

    Args:
        every: a positive int N, None (last epoch only) or ``"best"``.
        monitor: with ``"best"``, the metric to watch.
        mode: ``"min"`` or ``"max"``: which direction is better for *monitor*.

    Example:
        >>> policy = SnapshotPolicy(2)
        >>> [e for e in range(6) if policy.due(e, {})]
        [1, 3, 5]
        >>> best = SnapshotPolicy("best", monitor="val_loss")
        >>> [best.due(e, {"val_loss": v}) for e, v in enumerate([3.0, 2.0, 2.5, 1.0])]
        [True, True, False, True]
    """

    def __init__(self, every: int | str | None = 1, *, monitor: str | None = None,
                 mode: str = "min", where: str = "SnapshotPolicy") -> None:
        if every == "best":
            if not monitor:
                raise ValueError(f'{where}(snapshot_every="best"): needs monitor=<metric '
                                 "name>. Received: monitor=None")
        elif every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                    or every < 1):
            raise ValueError(f"{where}(snapshot_every={every!r}): must be a positive int, "
                             f"None (last epoch only) or 'best'. Received: {every!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"{where}(mode={mode!r}): must be 'min' or 'max'")
        self.every = every
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None

    def due(self, epoch: int, metrics: Mapping[str, Any], *, last: bool = False) -> bool:
        """Whether *epoch* (0-based) gets a snapshot, given the metrics logged for it."""
        if self.every == "best":
            improved = self._improved(metrics)
            return improved or last
        if last:
            return True
        if self.every is None:
            return False
        assert isinstance(self.every, int)
        return (epoch + 1) % self.every == 0

    def _improved(self, metrics: Mapping[str, Any]) -> bool:
        assert self.monitor is not None
        if self.monitor not in metrics:
            return False
        try:
            value = float(metrics[self.monitor])
        except (TypeError, ValueError):
            return False
        if math.isnan(value):
            return False
        better = self.best is None or (value < self.best if self.mode == "min"
                                       else value > self.best)
        if better:
            self.best = value
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
