"""The process-wide ``sys.excepthook`` the Keras callback installs while a fit's record is
open (``recordkit.integrations._crash_watch``): chained to the hook before it, put back
when the last callback is done, left alone when someone installed theirs after it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import recordkit
from recordkit.integrations import _crash_watch
from tests.support import require

REPO = Path(__file__).resolve().parents[1]


class Owner:
    """Stands for a callback: what its handlers were called with."""

    def __init__(self) -> None:
        self.uncaught: list[BaseException] = []
        self.cells: list[BaseException | None] = []

    def on_uncaught(self, exc: BaseException) -> None:
        self.uncaught.append(exc)

    def on_cell_end(self, error: BaseException | None) -> None:
        self.cells.append(error)

    def watch(self) -> None:
        _crash_watch.watch(self, on_uncaught=type(self).on_uncaught,
                           on_cell_end=type(self).on_cell_end)


@pytest.fixture
def users_hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A hook of the user's own, installed before any callback; the calls it got."""
    calls: list[str] = []
    # A Keras callback of an earlier test in this process (pytest-xdist gives a worker
    # modules in any order) whose fit raised and was caught keeps its watch until it is
    # collected (test_keras.py::test_backup_and_restore_after_crash[auto]): collected
    # here, it closes its record and stops watching, so this test starts clean.
    gc.collect()
    assert not _crash_watch.watched(), "an earlier test's live callback still watches"

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        calls.append(f"user: {exc}")

    monkeypatch.setattr(sys, "excepthook", hook)
    yield calls
    left = _crash_watch.watched()
    for owner in left:  # the next test starts clean even when this one failed
        _crash_watch.unwatch(owner)
    assert not left, "a test left a watch behind"


def raise_through_hook(message: str) -> None:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)


def test_the_last_callback_out_puts_the_previous_hook_back(users_hook: list[str]) -> None:
    before = sys.excepthook
    first, second = Owner(), Owner()
    first.watch()
    second.watch()
    assert sys.excepthook is not before
    raise_through_hook("boom")
    assert [str(e) for e in first.uncaught] == ["boom"] == [str(e) for e in second.uncaught]
    assert users_hook == ["user: boom"]  # chained: the user's hook still reports it
    _crash_watch.unwatch(first)
    assert sys.excepthook is not before  # second still watches
    _crash_watch.unwatch(second)
    assert sys.excepthook is before


def test_a_hook_installed_after_ours_is_left_and_ours_keeps_chaining(
        users_hook: list[str]) -> None:
    before = sys.excepthook
    owner = Owner()
    owner.watch()
    ours = sys.excepthook
    calls: list[str] = []

    def theirs(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        calls.append(f"theirs: {exc}")
        ours(exc_type, exc, tb)

    sys.excepthook = theirs
    _crash_watch.unwatch(owner)
    assert sys.excepthook is theirs  # not ours to take away
    raise_through_hook("first")
    assert calls == ["theirs: first"] and users_hook == ["user: first"]
    # a later callback installs a hook over theirs; every hook runs once
    later = Owner()
    later.watch()
    raise_through_hook("second")
    assert [str(e) for e in later.uncaught] == ["second"] and owner.uncaught == []
    assert calls == ["theirs: first", "theirs: second"]
    assert users_hook == ["user: first", "user: second"]
    _crash_watch.unwatch(later)
    assert sys.excepthook is theirs
    sys.excepthook = before


def test_a_garbage_collected_callback_stops_watching(users_hook: list[str]) -> None:
    before = sys.excepthook
    owner = Owner()
    owner.watch()
    assert sys.excepthook is not before
    del owner
    gc.collect()
    assert sys.excepthook is before and not _crash_watch.watched()


def test_a_failing_handler_does_not_stop_the_others(users_hook: list[str]) -> None:
    class Failing(Owner):
        def on_uncaught(self, exc: BaseException) -> None:
            raise OSError("disk gone")

    failing, other = Failing(), Owner()
    failing.watch()
    other.watch()
    raise_through_hook("boom")
    assert [str(e) for e in other.uncaught] == ["boom"] and users_hook == ["user: boom"]
    _crash_watch.unwatch(failing)
    _crash_watch.unwatch(other)


# --- the Keras callback -----------------------------------------------------------------


def tiny_model() -> Any:
    keras = require("keras", "keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


X = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
Y = X[:, :1] * 2


def test_keras_fit_puts_the_users_hook_back(tmp_path: Path, users_hook: list[str]) -> None:
    keras = require("keras", "keras")
    from recordkit.integrations.keras import RecordCallback

    before = sys.excepthook
    during: list[Any] = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            during.append(sys.excepthook)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            raise RuntimeError("data pipeline broke")

    callback = RecordCallback(tmp_path, system=False)
    tiny_model().fit(X, Y, epochs=2, verbose=0, callbacks=[callback, Probe()])
    assert during and all(hook is not before for hook in during)  # ours during the fit
    assert sys.excepthook is before
    # a fit that raised keeps its record open, so the hook stays until the record closes
    with pytest.raises(RuntimeError):
        tiny_model().fit(X, Y, epochs=2, verbose=0, callbacks=[callback, Crash()])
    assert sys.excepthook is not before
    tiny_model().fit(X, Y, epochs=1, verbose=0, callbacks=[callback])  # closes it first
    assert sys.excepthook is before
    assert users_hook == []


CRASH_WITH_USER_HOOKS = """
import sys
import numpy as np
import keras
from recordkit.integrations.keras import RecordCallback

def users_hook(exc_type, exc, tb):
    print(f"user's hook: {exc}", file=sys.stderr, flush=True)

sys.excepthook = users_hook

class OtherLibrary(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:  # installs its own hook over ours during the fit, and chains
            previous = sys.excepthook
            def library_hook(exc_type, exc, tb):
                print(f"library's hook: {exc}", file=sys.stderr, flush=True)
                previous(exc_type, exc, tb)
            sys.excepthook = library_hook
        if epoch == 2:
            raise RuntimeError("data pipeline broke")

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
callback = RecordCallback(sys.argv[1], system=False)
model.fit(x, x[:, :1], epochs=4, verbose=0, callbacks=[callback, OtherLibrary()])
"""


@pytest.mark.slow
def test_a_crashed_fit_runs_every_hook_and_closes_the_record_as_failed(
        tmp_path: Path) -> None:
    require("keras", "keras")
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASH_WITH_USER_HOOKS))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "records")], capture_output=True,
        text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-3000:]
    hooks = [line for line in done.stderr.splitlines() if "'s hook:" in line]
    # the library's hook, then ours (it chains), then the user's: each once
    assert hooks == ["library's hook: data pipeline broke",
                     "user's hook: data pipeline broke"]
    assert "Traceback" not in done.stderr  # the user's hook replaced Python's report
    [path] = (tmp_path / "records").rglob("*.h5")
    record = recordkit.load(path)
    assert record.status == "failed"
    assert record.error == "RuntimeError: data pipeline broke"
    assert record.history.epochs("loss").tolist() == [0, 1]
    assert record.snapshot_epochs == [0, 1]


AT_EXIT = """
import sys, weakref
from recordkit.integrations import _crash_watch

class Owner:
    def on_exit(self):
        print("owner's exit handler", flush=True)

class Later:
    pass

owner, later = Owner(), Later()
_crash_watch.watch(owner, on_uncaught=lambda o, e: None, on_cell_end=lambda o, e: None,
                   on_exit=Owner.on_exit)
# a finalizer made after the watch (as a Recorder's is) still runs after the handler
weakref.finalize(later, print, "a finalizer at exit", flush=True)
"""


def test_exit_handlers_run_before_the_finalizers_of_later_objects(tmp_path: Path) -> None:
    script = tmp_path / "exit.py"
    script.write_text(textwrap.dedent(AT_EXIT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["owner's exit handler", "a finalizer at exit"]
