"""Closes the records of fits that an exception ended without any callback hook: a
process-wide ``sys.excepthook``, chained and put back, IPython's ``post_run_cell`` and,
for a record still open when the interpreter exits, an ``atexit`` handler.

Keras calls no callback when ``fit`` raises. A callback that has a record open calls
:func:`watch` with two handlers; while any callback watches, ``sys.excepthook`` is a hook
of ours that runs every ``on_uncaught`` handler, then the hook that was there before. When
the last callback stops watching (:func:`unwatch`, or it is garbage-collected), the hook
that was there before is put back, but only if ``sys.excepthook`` is still ours: a hook
installed after ours stays, and ours, which it may call, keeps calling the one before it.
IPython and Jupyter never call ``sys.excepthook`` (the shell shows a cell's exception
itself), so the ``on_cell_end`` handlers run when a cell ends. IPython is only looked up,
never imported. The ``on_exit`` handlers run at interpreter exit, before the recorders'
own exit handlers (``atexit`` runs the handler registered last first, and ours is
registered when the first watch starts, after ``weakref.finalize``'s).
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["unwatch", "watch", "watched"]

ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]
OnUncaught = Callable[[Any, BaseException], None]
OnCellEnd = Callable[[Any, BaseException | None], None]
OnExit = Callable[[Any], None]


@dataclass(frozen=True)
class _Watch:
    owner: weakref.ref[Any]
    on_uncaught: OnUncaught
    on_cell_end: OnCellEnd
    on_exit: OnExit | None = None


_lock = threading.RLock()  # a weakref callback may run inside a locked section
_watches: dict[int, _Watch] = {}
_installed: tuple[ExceptHook, ExceptHook] | None = None  # (ours, the one before)
_ipython_shells: weakref.WeakSet[Any] = weakref.WeakSet()
_atexit_registered = False


class _Anchor:
    """Lives as long as the module: a ``weakref.finalize`` on it never runs before exit."""


_anchor = _Anchor()
# weakref.finalize registers its own atexit handler when the first finalize of the process
# is made; made here, it is registered before ours, so ours (registered by the first
# watch) runs first, while the recorders' finalizers have not closed their records yet.
weakref.finalize(_anchor, int)


def watch(owner: Any, *, on_uncaught: OnUncaught, on_cell_end: OnCellEnd,
          on_exit: OnExit | None = None) -> None:
    """Until :func:`unwatch` (*owner*), call ``on_uncaught(owner, exception)`` with an
    exception that ends the process, ``on_cell_end(owner, error)`` when an IPython cell
    ends (*error* None when it raised none) and ``on_exit(owner)`` when the interpreter
    exits. *owner* is held weakly, so the handlers are plain functions
    (``type(owner).method``), not bound methods."""
    global _atexit_registered
    key = id(owner)
    with _lock:
        current = _watches.get(key)
        if current is None or current.owner() is not owner:
            _watches[key] = _Watch(weakref.ref(owner, lambda ref: _forget(key, ref)),
                                   on_uncaught, on_cell_end, on_exit)
        _install_excepthook()
        if on_exit is not None and not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
    _watch_ipython_cells()


def unwatch(owner: Any) -> None:
    """Stop watching for *owner*; the last one out puts the previous excepthook back."""
    with _lock:
        current = _watches.get(id(owner))
        if current is not None and current.owner() is owner:
            del _watches[id(owner)]
        _restore_when_idle()


def watched() -> list[Any]:
    """The owners watching now."""
    with _lock:
        owners = [w.owner() for w in _watches.values()]
    return [owner for owner in owners if owner is not None]


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    with _lock:
        current = _watches.get(key)
        if current is not None and current.owner is ref:
            del _watches[key]
        _restore_when_idle()


def _install_excepthook() -> None:
    global _installed
    if _installed is not None:
        return
    previous: ExceptHook = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException,
                   tb: TracebackType | None) -> None:
        """An uncaught exception while a fit's record is open ended that fit: close the
        record (the handlers), then report the exception as the hook before ours does. A
        hook of ours that was put back while another hook held on to it only chains: the
        hook of ours installed after it runs the handlers."""
        try:
            if _installed is not None and _installed[0] is excepthook:
                _run_handlers("on_uncaught", exc)
        finally:
            # sys.excepthook may have been None (typeshed says it never is)
            report = previous if previous is not None else sys.__excepthook__
            report(exc_type, exc, tb)

    _installed = (excepthook, previous)
    sys.excepthook = excepthook


def _restore_when_idle() -> None:
    global _installed
    if _watches or _installed is None:
        return
    ours, previous = _installed
    _installed = None
    if sys.excepthook is ours:  # else someone installed theirs after ours: keep it
        sys.excepthook = previous


def _run_handlers(which: str, error: BaseException | None) -> None:
    with _lock:
        calls = [(w.owner(), getattr(w, which)) for w in _watches.values()]
    for owner, handler in calls:
        if owner is None:
            continue
        try:
            handler(owner, error)
        except Exception:  # closing one record must not keep the others open
            continue


def _at_exit() -> None:
    with _lock:
        calls = [(w.owner(), w.on_exit) for w in _watches.values()]
    for owner, handler in calls:
        if owner is None or handler is None:
            continue
        try:
            handler(owner)
        except Exception:  # closing one record must not keep the others open
            continue


def _watch_ipython_cells() -> None:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return
    try:
        shell = ipython.get_ipython()
        if shell is None or shell in _ipython_shells:
            return
        shell.events.register("post_run_cell", _after_ipython_cell)
        _ipython_shells.add(shell)
    except Exception:  # an IPython without events: the excepthook path stays
        return


def _after_ipython_cell(result: Any) -> None:
    _run_handlers("on_cell_end", getattr(result, "error_in_exec", None))
