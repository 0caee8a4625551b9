"""When and what to snapshot: the policy both callbacks share.

``every=N`` snapshots epochs N-1, 2N-1, ... (every N-th epoch, counting from 1);
``every=None`` only the last epoch; ``every="best"`` each epoch where *monitor* improves;
``every="validation"`` at each validation (the callback asks :attr:`at_validation`; inside
an epoch too, with ``val_check_interval``). The final epoch is always snapshotted by the
callbacks (``due(..., last=True)``).

What goes into a snapshot: *include* / *exclude* glob patterns on tensor names, frozen
tensors left out, and the storage dtype (``"keep"``, ``"float16"`` or ``"bfloat16"``;
bfloat16 is stored as its uint16 bit pattern, see ``dtypes.encode_tensor``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from recordkit.dtypes import STORAGE_DTYPES, cast_for_storage

# STORAGE_DTYPES and cast_for_storage live in recordkit.dtypes; importable from here too.
__all__ = ["STORAGE_DTYPES", "SnapshotPolicy", "cast_for_storage"]

def _patterns(value: str | Iterable[str] | None, what: str, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(p, str) for p in items):
        raise TypeError(f"{where}({what}={value!r}): must be a glob pattern (str) or a list "
                        "of them")
    return items


class SnapshotPolicy:
    """Decides which epochs get a weight snapshot.

    Args:
        every: a positive int N, None (last epoch only), ``"best"`` or ``"validation"``
            (at each validation; at epoch ends, only the last epoch is due).
        monitor: with ``"best"``, the metric to watch.
        mode: ``"min"`` or ``"max"``: which direction is better for *monitor*.
        where: the caller's name, used in error messages.
        include: glob pattern(s) on tensor names; only matching tensors are kept.
        exclude: glob pattern(s) on tensor names; matching tensors are left out.
        dtype: storage dtype of floating tensors: ``"keep"``, ``"float16"`` or
            ``"bfloat16"``.

    Example:
        >>> policy = SnapshotPolicy(2)
        >>> [e for e in range(6) if policy.due(e, {})]
        [1, 3, 5]
        >>> best = SnapshotPolicy("best", monitor="val_loss")
        >>> [best.due(e, {"val_loss": v}) for e, v in enumerate([3.0, 2.0, 2.5, 1.0])]
        [True, True, False, True]
        >>> at_val = SnapshotPolicy("validation")
        >>> at_val.at_validation, [at_val.due(e, {}, last=e == 2) for e in range(3)]
        (True, [False, False, True])
        >>> SnapshotPolicy(exclude="*.bias").select(["fc.weight", "fc.bias", "emb"],
        ...                                         frozen={"emb"})
        ['fc.weight']
    """

    def __init__(self, every: int | str | None = 1, *, monitor: str | None = None,
                 mode: str = "min", where: str = "SnapshotPolicy",
                 include: str | Iterable[str] | None = None,
                 exclude: str | Iterable[str] | None = None,
                 dtype: str = "keep") -> None:
        if every == "best":
            if not monitor:
                raise ValueError(f'{where}(snapshot_every="best"): needs monitor=<metric '
                                 "name>. Received: monitor=None")
        elif every != "validation" and every is not None and (
                isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"{where}(snapshot_every={every!r}): must be a positive int, "
                             "None (last epoch only), 'best' or 'validation'. "
                             f"Received: {every!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"{where}(mode={mode!r}): must be 'min' or 'max'")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"{where}(dtype={dtype!r}): must be one of {STORAGE_DTYPES}")
        self.every = every
        self.monitor = monitor
        self.mode = mode
        self.include = _patterns(include, "include", where)
        self.exclude = _patterns(exclude, "exclude", where)
        self.dtype = dtype
        self.best: float | None = None

    @property
    def at_validation(self) -> bool:
        """Whether each validation gets a snapshot (``every="validation"``)."""
        return self.every == "validation"

    def wants(self, name: str, frozen: Collection[str] = ()) -> bool:
        """Whether tensor *name* goes into a snapshot."""
        if name in frozen:
            return False
        if self.include is not None and not any(
            fnmatch.fnmatchcase(name, p) for p in self.include
        ):
            return False
        return not (self.exclude and any(fnmatch.fnmatchcase(name, p) for p in self.exclude))

    def select(self, names: Iterable[str], frozen: Collection[str] = ()) -> list[str]:
        """The names, in order, that go into a snapshot (include, exclude, not frozen)."""
        return [name for name in names if self.wants(name, frozen)]

    def planned_snapshots(self, epochs: int) -> int:
        """How many snapshots a run of *epochs* epochs takes at most (the last epoch is
        always one; ``"best"`` may improve every epoch; ``"validation"``: one an epoch, as
        far as the epochs tell)."""
        if epochs <= 0:
            return 0
        if self.every in ("best", "validation"):
            return epochs
        if self.every is None:
            return 1
        assert isinstance(self.every, int)
        return epochs // self.every + (1 if epochs % self.every else 0)

    def due(self, epoch: int, metrics: Mapping[str, Any], *, last: bool = False) -> bool:
        """Whether *epoch* (0-based) gets a snapshot, given the metrics logged for it."""
        if self.every == "best":
            improved = self._improved(metrics)
            return improved or last
        if last:
            return True
        if self.every is None or self.every == "validation":
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
