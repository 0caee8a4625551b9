"""Warnings of the Lightning callback: each kind once per process, located at the user's
line (the ``trainer.fit(...)`` call), not at recordkit's or Lightning's.

Python shows a warning once per text and location; a text that names the run's file, or a
location inside recordkit, makes a sweep of 100 fits print it 100 times. So each kind is
shown once (later ones are dropped here, whatever the filters say) with a text that names
no run, and ``stacklevel`` is counted up to the first frame outside recordkit, Lightning
and torch.
"""

from __future__ import annotations

import sys
import threading
import warnings

from recordkit.errors import RecordkitWarning

__all__ = ["forget_shown", "warn_once"]

#: Modules whose frames are not the user's code.
_LIBRARY_PREFIXES = ("recordkit.", "lightning.", "pytorch_lightning.", "lightning_fabric.",
                     "torch.", "lightning_utilities.")

_shown: set[str] = set()
_lock = threading.Lock()


def user_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` called from :func:`warn_once` that names the
    first caller outside the library modules (the outermost frame when all are inside)."""
    frame = sys._getframe(2)  # 0: this function, 1: warn_once, 2: its caller
    level = 2  # warnings.warn in warn_once -> warn_once's caller
    while True:
        module = str(frame.f_globals.get("__name__", ""))
        if not (module + ".").startswith(_LIBRARY_PREFIXES):
            return level
        if frame.f_back is None:
            return level
        frame = frame.f_back
        level += 1


def warn_once(kind: str, message: str) -> bool:
    """Warn *message* (a :class:`~recordkit.errors.RecordkitWarning`) unless a warning of
    *kind* was shown in this process already; returns whether it was shown."""
    with _lock:
        if kind in _shown:
            return False
        _shown.add(kind)
    warnings.warn(message, RecordkitWarning, stacklevel=user_stacklevel())
    return True


def forget_shown() -> None:
    """Show every kind again (tests that check one warning each start from here)."""
    with _lock:
        _shown.clear()
