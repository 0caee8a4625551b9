"""The trials of sweep engines, duck-typed: an Optuna trial given as ``trial=``, and the
Ray Tune trial a process runs in, detected. The core never imports optuna or ray: an
Optuna trial is read through its attributes, and Ray only when the process has already
imported ``ray.tune`` (a Tune trainable's worker always has).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any

from recordkit.errors import RecordkitWarning
from recordkit.masking import mask_text

__all__ = ["TRIAL_STOP_WAIT_S", "is_ray_stop", "is_trial_pruned", "optuna_trial_facts",
           "ray_train_rank", "ray_train_warning", "ray_train_worker", "ray_trial",
           "status_for_exception", "storage_url", "with_trial_params"]


#: How long Tune's stop of a trial waits for the trial's training thread to end (and so to
#: close its record) once Tune has released it; see :func:`ray_trial`.
TRIAL_STOP_WAIT_S = 10.0


def is_trial_pruned(exc: BaseException | None) -> bool:
    """Whether *exc* is ``optuna.TrialPruned`` (or a subclass), told by its class's name
    and module, so that optuna is never imported here.

    Example:
        >>> is_trial_pruned(ValueError("x"))
        False
    """
    return exc is not None and any(
        cls.__name__ == "TrialPruned" and cls.__module__.partition(".")[0] == "optuna"
        for cls in type(exc).__mro__)


def is_ray_stop(exc: BaseException | None) -> bool:
    """Whether *exc* is how Ray Tune stops a function trainable: when a scheduler (ASHA)
    or a stopper ends a trial, Tune's ``stop`` sets the session's stop event and the
    training thread, blocked in ``tune.report``, raises ``SystemExit(0)`` there
    (``ray/train/_internal/session.py``, ``_report_training_result``). Told by the
    exception being a ``SystemExit`` of code 0 raised inside a ``ray`` module (the
    innermost frame of its traceback), so a user's own ``sys.exit`` is not taken for it.

    Example:
        >>> is_ray_stop(SystemExit(0))
        False
    """
    if not isinstance(exc, SystemExit) or exc.code not in (0, None):
        return False
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__")
    return isinstance(module, str) and module.partition(".")[0] == "ray"


def status_for_exception(exc: BaseException | None) -> str:
    """The status of a run that *exc* ended: ``completed`` for None, ``pruned`` for
    ``optuna.TrialPruned`` and for Ray Tune stopping the trial (:func:`is_ray_stop`),
    ``interrupted`` for KeyboardInterrupt, else ``failed``.

    Example:
        >>> status_for_exception(None), status_for_exception(KeyboardInterrupt())
        ('completed', 'interrupted')
    """
    if exc is None:
        return "completed"
    if is_trial_pruned(exc) or is_ray_stop(exc):
        return "pruned"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def storage_url(storage: Any) -> str | None:
    """Where an Optuna storage keeps its study, password masked: an ``RDBStorage``'s URL
    (``postgresql://user:***@host/db``), the file of a ``JournalStorage`` on a
    ``JournalFileBackend``, a Redis journal's URL; None for an in-memory storage or one
    not known. Optuna has no public attribute for these behind the storage that
    ``create_study`` returns (it wraps an RDBStorage in a cache), so the wrapper's
    ``_backend`` and the journal backend's ``_file_path`` / ``_url`` are read;
    tests/test_optuna.py fails when they change.

    Example:
        >>> storage_url(None) is None
        True
    """
    for _ in range(3):  # the cache wraps an RDBStorage; a JournalStorage wraps a backend
        if storage is None:
            return None
        for name in ("url", "_url"):
            url = getattr(storage, name, None)
            if isinstance(url, str):
                return mask_text(url)[0]
        path = getattr(storage, "_file_path", None)
        if isinstance(path, (str, os.PathLike)):
            return os.path.abspath(path)
        storage = getattr(storage, "_backend", None)
    return None


def optuna_trial_facts(trial: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The params of an Optuna ``Trial`` (or ``FrozenTrial``) and the facts that go into
    ``info["optuna"]``: its number, the study's name and the storage's URL."""
    number, params = getattr(trial, "number", None), getattr(trial, "params", None)
    if isinstance(number, bool) or not isinstance(number, int) or not isinstance(
            params, Mapping):
        raise TypeError(f"Recorder(trial={trial!r}): must be an Optuna trial (with an int "
                        "number and a params mapping), or None")
    study = getattr(trial, "study", None)
    name = getattr(study, "study_name", None)
    return dict(params), {
        "trial": number,
        "study": name if isinstance(name, str) else None,
        "storage": storage_url(getattr(trial, "storage", None)),
    }


def with_trial_params(params: Mapping[str, Any] | argparse.Namespace | None, trial: Any
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's params, the Optuna trial's over *params*, and the trial's facts; a
    warning names each key whose value the trial replaced."""
    sampled, facts = optuna_trial_facts(trial)
    given = dict(vars(params) if isinstance(params, argparse.Namespace) else params or {})
    for key in sorted(k for k in set(given) & set(sampled) if given[k] != sampled[k]):
        warnings.warn(f"recordkit: Recorder(params=..., trial=...): params[{key!r}] is "
                      f"{given[key]!r} but trial {facts['trial']} sampled {sampled[key]!r}; "
                      "the trial's value is recorded", RecordkitWarning, stacklevel=4)
    return {**given, **sampled}, facts


def ray_trial() -> tuple[dict[str, Any] | None, dict[str, Any]] | None:
    """The Ray Tune trial this thread runs, or None outside one: its config (None when it
    cannot be found) and the facts that go into ``info["ray_tune"]``: ``trial_id``,
    ``trial_name``, ``experiment``, ``trial_dir``, and in a Ray Train v1 worker
    ``world_rank`` and ``world_size`` (a v2 worker has no Tune context:
    :func:`ray_train_worker`).

    The facts come from Ray's public context API, ``ray.tune.get_context()``
    (``get_trial_id`` is None outside a trial). Ray has no public API for the trial's
    config inside the trainable (it is only the function's argument), so it is taken
    from the ``ray.tune.Trainable`` running the trial (its public ``config``), found on
    this thread's stack by its ``trial_id``: a function trainable's thread and a class
    trainable's ``step`` have it; a Ray Train worker does not (None).

    When that Trainable runs the trial on Ray's runner thread (a function trainable), its
    ``cleanup`` (which Tune's ``stop`` calls) is wrapped, once, to wait up to
    :data:`TRIAL_STOP_WAIT_S` for this thread to end after it: Tune's stop releases the
    thread blocked in ``tune.report`` without waiting for it
    (``FunctionTrainable.cleanup``: ``finish(timeout=0)``), and the actor's process is
    then ended with no exit handler run, so a record closed by that thread as it leaves
    (``pruned``) was cut mid-close and read ``running``.

    Example:
        >>> ray_trial() is None  # not inside a Tune trial
        True
    """
    context = _ray_context("ray.tune")
    trial_id = _context_facts(context, trial_id="get_trial_id").get("trial_id")
    if not isinstance(trial_id, str) or not trial_id:  # no context, or not in a trial
        return None
    facts = {"trial_id": trial_id, **_context_facts(
        context, trial_name="get_trial_name", experiment="get_experiment_name",
        trial_dir="get_trial_dir", world_rank="get_world_rank", world_size="get_world_size")}
    trainable = _running_trainable(trial_id, sys._getframe(1))
    if trainable is None:
        return None, facts
    _hold_stop_for_this_thread(trainable)
    config = getattr(trainable, "config", None)
    return (dict(config) if isinstance(config, Mapping) else None), facts


def ray_train_worker() -> dict[str, Any] | None:
    """The facts of the Ray Train worker this process is, for ``info["ray_train"]``, or
    None outside one: ``experiment`` (the Train run's name), ``world_rank``,
    ``world_size``, ``local_rank``, ``node_rank``.

    Ray Train's workers (a ``TorchTrainer``'s ``train_loop_per_worker``, run inside a Tune
    trial or not) have no Tune context since Train v2 (Ray 2.51's default): they are told
    by ``ray.train.get_context()``, which raises outside a worker, and gives a worker's
    ``DistributedTrainContext`` inside one. Anything else is not a worker: Train v1's
    context, which is there in every process (a v1 worker has the Tune context, which
    :func:`ray_trial` reads), and Train v2's local mode (``ScalingConfig(num_workers=0)``),
    whose context stays set in the driver after its ``fit()``. Asked only when the process
    has imported ``ray.train`` (a Train worker always has); no context method is called
    outside a worker, so none of Ray's warnings of misuse is used up.

    Example:
        >>> ray_train_worker() is None  # not a Ray Train worker
        True
    """
    context = _ray_context("ray.train")  # v2 raises outside a worker: None
    if type(context).__name__ != "DistributedTrainContext":
        return None
    facts = _context_facts(context, experiment="get_experiment_name",
                           world_rank="get_world_rank", world_size="get_world_size",
                           local_rank="get_local_rank", node_rank="get_node_rank")
    return facts if isinstance(facts.get("world_rank"), int) else None


def ray_train_rank() -> int | None:
    """This process's world rank when it is a Ray Train worker, else None.

    Example:
        >>> ray_train_rank() is None
        True
    """
    facts = ray_train_worker()
    return None if facts is None else facts["world_rank"]


def ray_train_warning(facts: Mapping[str, Any], root: os.PathLike[str] | str) -> str | None:
    """The warning for a ``Recorder`` opened under *root* on Ray Train worker *facts*
    other than rank zero (every worker that opens one writes a record of its own), or
    None on rank zero. The same text for every record under *root*: Python shows it once
    per place."""
    rank = facts.get("world_rank")
    if rank in (0, None):
        return None
    return (f"recordkit: Recorder opened on Ray Train worker rank {rank} of "
            f"{facts.get('world_size', '?')} (records under {str(root)!r}): every worker "
            "that opens one writes a record of its own; open it on rank zero only "
            "(ray.train.get_context().get_world_rank() == 0), as the callbacks do")


def _ray_context(module: str) -> Any:
    """``get_context()`` of the Ray module *module* (``ray.tune``, ``ray.train``) when
    the process has imported it; None when it has not, or when Ray raised."""
    get_context = getattr(sys.modules.get(module), "get_context", None)
    if not callable(get_context):
        return None
    with warnings.catch_warnings():  # Ray warns when its context is used outside
        warnings.simplefilter("ignore")
        try:
            return get_context()
        except Exception:  # e.g. Train v2 outside a worker: "... not initialized"
            return None


def _context_facts(context: Any, **methods: str) -> dict[str, Any]:
    """The facts a Ray context gives, by key, from its methods (Ray's warnings of use
    outside a trial or worker silenced); a fact it cannot give here (no context, the
    method raised, or gave no string or int) is left out."""
    facts: dict[str, Any] = {}
    if context is None:
        return facts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, method in methods.items():
            try:
                value = getattr(context, method)()
            except Exception:  # a fact Ray cannot give here is left out
                continue
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                facts[key] = value
    return facts


def _running_trainable(trial_id: str, frame: FrameType | None) -> Any:
    """The ``ray.tune.Trainable`` of trial *trial_id* found as ``self`` in a frame of
    this stack; None when there is none."""
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not None and any(
                cls.__name__ == "Trainable" and cls.__module__.startswith("ray.tune.")
                for cls in type(owner).__mro__) and getattr(owner, "trial_id", None) == trial_id:
            return owner  # the class first: getattr on any other frame's self is not safe
        frame = frame.f_back
    return None


class _StopHold:
    """A Trainable's ``cleanup``, then a wait (up to :data:`TRIAL_STOP_WAIT_S` in all)
    for the training threads registered with it to end."""

    def __init__(self, cleanup: Callable[..., Any]) -> None:
        self.cleanup = cleanup
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.cleanup(*args, **kwargs)
        finally:
            deadline = time.monotonic() + TRIAL_STOP_WAIT_S
            for thread in list(self.threads):
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))


def _hold_stop_for_this_thread(trainable: Any) -> None:
    """Make *trainable*'s ``cleanup`` wait for this thread when it is the thread Ray runs
    a function trainable on (its ``RunnerThread``, which the stop releases); a class
    trainable's ``step`` runs on the actor's thread, which calls ``cleanup`` itself.
    Never fails: a Trainable that cannot be wrapped is left as it is."""
    here = threading.current_thread()
    if not any(cls.__name__ == "RunnerThread" and cls.__module__.partition(".")[0] == "ray"
               for cls in type(here).__mro__):
        return
    try:
        cleanup = trainable.cleanup
        if not isinstance(cleanup, _StopHold):
            if not callable(cleanup):
                return
            cleanup = _StopHold(cleanup)
            trainable.cleanup = cleanup
        cleanup.threads.add(here)
    except Exception:  # a Trainable with no settable cleanup: nothing waits
        return
