"""The write side's facade: one open run and its lifecycle (running → completed / failed /
interrupted / pruned).

The Recorder checks its arguments and keeps the run's state; the file is written by the
``format`` modules through :class:`~recordkit.runfile.RunFile` (create, resume, locks,
flushes), :class:`~recordkit.snapshots.Snapshots` (weights), the history table and
:mod:`recordkit.params` (hyperparameters).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from recordkit.codec import dumps_json, loads_json
from recordkit.errors import RecordClosedError, RecordkitWarning, describe_error
from recordkit.format.files import RecordFile, hdf5_lock_held
from recordkit.format.header import write_end
from recordkit.format.layout import DEFAULT_CHUNK_BYTES, STATUSES
from recordkit.masking import SecretMask
from recordkit.params import RunParams, params_hash_of
from recordkit.paths import check_experiment, check_name
from recordkit.policy import SnapshotPolicy
from recordkit.runfile import find_unfinished, new_run_id, resume_run, start_run
from recordkit.runhistory import RunHistory
from recordkit.runindex import add_closed_run
from recordkit.snapshots import Snapshots
from recordkit.trials import (
    is_trial_pruned,
    ray_train_rank,
    ray_train_warning,
    ray_train_worker,
    ray_trial,
    status_for_exception,
    storage_url,
    with_trial_params,
)

__all__ = ["Recorder", "find_unfinished", "is_trial_pruned", "new_run_id", "params_hash_of",
           "ray_train_rank", "status_for_exception", "storage_url", "take_trial_records"]

#: A record whose estimated final size exceeds this gets a warning before its first snapshot.
SIZE_WARNING_BYTES = 10 * 1024**3

#: How long the exit of a Ray Tune trial's process waits for the training thread to close
#: an open run: when Tune stops a trial, the thread leaves ``tune.report`` with
#: ``SystemExit`` while the actor's process ends (see :func:`recordkit.trials.is_ray_stop`).
RAY_STOP_WAIT_S = 10.0

#: What :meth:`Recorder.get` loads a run with. The read side is not imported here (data
#: flows one way); ``recordkit/__init__.py`` sets it to :func:`recordkit.load`.
_loader: Callable[..., Any] | None = None


def set_loader(loader: Callable[..., Any]) -> None:
    """Give :meth:`Recorder.get` the read side's ``load`` (done by ``import recordkit``)."""
    global _loader
    _loader = loader


# --- trials of sweep engines (recordkit.trials) ------------------------------------------


#: The records of Optuna trials opened in this process, by (study name, trial number),
#: each with its recorder while that lives: what ``RecordStudy`` completes when the trial
#: ends (optuna calls study callbacks in the process that ran the trial).
_trial_records: dict[tuple[str | None, int], dict[Path, weakref.ref[Recorder]]] = {}
_trial_records_lock = threading.Lock()


def take_trial_records(study: str | None, number: int) -> list[tuple[Path, Recorder | None]]:
    """The records of trial *number* of *study* opened in this process since the last
    call, each with its recorder when that is still alive; forgotten here after.

    Example:
        >>> take_trial_records("no such study", 0)
        []
    """
    with _trial_records_lock:
        found = _trial_records.pop((study, number), {})
    return [(path, ref()) for path, ref in found.items()]


class Recorder:
    """Records one run into ``<root>/<experiment>/<run_id>.h5``.

    History rows are buffered in memory by :meth:`log` and written by :meth:`commit`;
    snapshots and extras are written when they are given. Every :meth:`commit` flushes the
    file, so a process killed at any moment leaves a record holding every committed epoch.

    Args:
        root: folder that holds one sub-folder per experiment.
        experiment: sub-folder name; ``"default"`` when None.
        name: a human label for the run (not unique); the run id when None.
        params: hyperparameters (a mapping or an ``argparse.Namespace``), nested allowed.
        resume: path or run id of an existing record to continue instead of starting one.
        evaluation: with *resume*, the run is reopened only to add the results of an
            evaluation (e.g. ``"validate"`` after fit); ``Record.restarts`` leaves such a
            reopening out and ``Record.evaluations`` lists it.
        durable: fsync on every commit, so committed epochs survive a power loss too.
        system: capture system info (once per run); a mapping is stored as the system
            info instead (importers keep the original machine's description this way).
        checksum: fletcher32 checksums on history and weights, so damage is detected.
        compression: None (default), ``"gzip"`` or ``"lzf"`` for weights; with the
            hdf5plugin package also ``"zstd"``, ``"blosc"``, ``"blosc2"``, ``"lz4"`` and
            ``"bitshuffle"`` (readers then need hdf5plugin too; recordkit imports it).
        compression_opts: e.g. the gzip level; for a plugin a level or a mapping of the
            hdf5plugin class's keywords.
        chunk_bytes: target size of one chunk of a weight dataset.
        background: write snapshots on a background thread (default); the training
            thread only copies the tensors. False writes them in :meth:`snapshot` itself,
            without copying.
        max_pending_bytes: bound on the bytes of snapshots copied but not yet written;
            :meth:`snapshot` waits when it is reached. None (default): one snapshot at a
            time, so memory holds at most the snapshot being written and the next copy.
        size_warning_bytes: warn (RecordkitWarning) before the first snapshot when the
            record's estimated final size exceeds this (see :meth:`plan`); None: never.
        created: the run's creation time (and so its run id) instead of now; importers
            of older tools' files pass the original timestamp. A naive time is UTC.
        mask_secrets: store the value of a param whose name looks like a secret
            (``api_key``, ``password``, ``hf_token``...) as ``"***"``, with a warning.
        trial: an Optuna ``Trial``: its params become the run's params (*params* adds
            to them; a key in both keeps the trial's value, with a warning when they
            differ), ``info["optuna"]`` holds its number, the study's name and the
            storage's URL (password masked), the run is named ``trial-<number>`` unless
            *name* is given, and a ``with`` block that ``optuna.TrialPruned`` leaves
            closes it ``pruned``. ``recordkit.integrations.optuna.RecordStudy`` adds the
            trial's state and objective value when the trial ends.

    Inside a Ray Tune trial (a function or class trainable, found through
    ``ray.tune.get_context()`` when the process has imported ``ray.tune``) the run takes,
    with no argument, the trial's config as params (*params* adds to them and wins on a
    clash), the experiment's name as *experiment* and the trial's name as *name* (each
    unless given), and ``info["ray_tune"]`` holds ``trial_id``, ``trial_name``,
    ``experiment``, ``trial_dir`` (and ``world_rank`` / ``world_size`` in a Ray Train v1
    worker, where the config is not found: pass it as *params*). In a Ray Train worker
    (``train_loop_per_worker``) ``info["ray_train"]`` holds the Train run's name (also
    the default *experiment*), ``world_rank``, ``world_size``, ``local_rank`` and
    ``node_rank``, and a Recorder opened on a rank other than zero warns: every worker
    that opens one writes a record of its own. A ``with`` block that Tune's
    stop of the trial leaves (a scheduler such as ASHA, or a stopper) closes it
    ``pruned``; see :func:`recordkit.trials.ray_trial` and
    :func:`recordkit.trials.is_ray_stop`.

    Raises:
        RecordWriteError: the folder cannot be created or written.
        RecordLockedError: with *resume*, when another process has the run open.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> with Recorder(root, experiment="demo", params={"lr": 0.1}) as rec:
        ...     rec.log({"loss": 1.0}, epoch=0)
        ...     rec.snapshot({"w": np.zeros(3)}, epoch=0)
        >>> rec.get(rec.run_id).history["loss"].tolist()
        [1.0]
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "records",
        experiment: str | None = None,
        name: str | None = None,
        params: Mapping[str, Any] | argparse.Namespace | None = None,
        *,
        resume: str | os.PathLike[str] | None = None,
        evaluation: str | None = None,
        durable: bool = False,
        system: bool | Mapping[str, Any] = True,
        checksum: bool = True,
        compression: str | None = None,
        compression_opts: Any = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        background: bool = True,
        max_pending_bytes: int | None = None,
        size_warning_bytes: int | None = SIZE_WARNING_BYTES,
        created: _dt.datetime | None = None,
        mask_secrets: bool = True,
        trial: Any = None,
    ) -> None:
        trial_facts = None
        ray = ray_trial()  # None outside a Ray Tune trial
        if ray is not None:
            config, ray_facts = ray
            given = vars(params) if isinstance(params, argparse.Namespace) else params
            params = {**(config or {}), **(given or {})}  # what the caller gives wins
            experiment = ray_facts.get("experiment") if experiment is None else experiment
            name = ray_facts.get("trial_name") if name is None and trial is None else name
        train = ray_train_worker() if ray is None else None  # a Ray Train v2 worker
        if train is not None and experiment is None:
            experiment = train.get("experiment")
        # before the file is made: a warning turned into an error leaves no record behind
        warning = ray_train_warning(train or (ray[1] if ray else {}), root)
        if warning is not None:
            warnings.warn(warning, RecordkitWarning, stacklevel=2)
        if trial is not None:
            params, trial_facts = with_trial_params(params, trial)
            name = f"trial-{trial_facts['trial']}" if name is None else name
        store = Snapshots.store(checksum=bool(checksum), compression=compression,
                                compression_opts=compression_opts, chunk_bytes=chunk_bytes)
        Snapshots.check_bound(max_pending_bytes)
        self._root = Path(root)
        self._durable = bool(durable)
        self._params = RunParams(params, mask_secrets=bool(mask_secrets))
        self._secrets = SecretMask(enabled=bool(mask_secrets))  # info, extras, error
        self._status = "running"
        self._closed = False
        if evaluation is not None and resume is None:
            raise TypeError("Recorder(evaluation=...) reopens a record: pass resume= too")
        if resume is not None:
            start = resume_run(self._root, resume, check_experiment(experiment)
                               if experiment else None, check_name("name", name),
                               self._params, check_name("evaluation", evaluation))
        else:
            start = start_run(self._root, check_experiment(experiment),
                              check_name("name", name), created, self._params,
                              system=system, checksum=bool(checksum))
        self._run, self._path, self._run_id = start.run, start.run.path, start.run_id
        self._experiment, self._name, self._created = start.experiment, start.name, start.created
        self._previous = start.previous  # status and error before a resume
        self._info: dict[str, Any] = start.info
        self._history = RunHistory(start.history)
        self._lock = self._run.lock
        self._snapshots = Snapshots(
            self._run, store, background=bool(background), max_pending_bytes=max_pending_bytes,
            size_warning_bytes=size_warning_bytes, durable=self._durable)
        # Buffered rows are committed (status untouched) if the interpreter exits first.
        self._finalizer = weakref.finalize(self, Recorder._at_exit, weakref.ref(self))
        self._trial = trial_facts
        if trial_facts is not None:
            self._start_trial(trial_facts)
        self._in_ray_trial = ray is not None
        self._ended = threading.Event()  # set once closed
        if ray is not None:
            self.set_info({"ray_tune": ray[1]})
        if train is not None:
            self.set_info({"ray_train": train})


    @property
    def path(self) -> Path:
        """Where the record file is."""
        return self._path

    @property
    def run_id(self) -> str:
        """Unique id of the run; sorts by creation time."""
        return self._run_id

    @property
    def root(self) -> Path:
        return self._root

    @property
    def experiment(self) -> str:
        return self._experiment

    @property
    def name(self) -> str:
        return self._name

    @property
    def status(self) -> str:
        return self._status

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def params(self) -> dict[str, Any]:
        """A copy of the params as recorded so far."""
        return dict(self._params.values)

    @property
    def trial(self) -> dict[str, Any] | None:
        """The Optuna trial of the run (``trial``, ``study``, ``storage``), as given by
        ``trial=``; None without one."""
        return None if self._trial is None else dict(self._trial)

    def _start_trial(self, facts: dict[str, Any]) -> None:
        """Store the trial's facts (kept with those of an earlier recording of the
        trial, e.g. its state) and list the record for ``RecordStudy``."""
        earlier = self._info.get("optuna")
        self.set_info({"optuna": {**(earlier if isinstance(earlier, Mapping) else {}),
                                  **facts}})
        with _trial_records_lock:
            records = _trial_records.setdefault((facts["study"], facts["trial"]), {})
            records[self._path.resolve()] = weakref.ref(self)

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the facts about the run set so far (:meth:`set_info`), those of a
        resumed run included."""
        with self._lock:
            return loads_json(dumps_json(self._info))

    @property
    def previous_status(self) -> str | None:
        """The status the file had before this recorder resumed it (``"completed"``,
        ``"running"``...); None for a new run."""
        return None if self._previous is None else self._previous[0]

    @property
    def previous_error(self) -> str:
        """The ``error`` the file held before this recorder resumed it (``""`` when none)."""
        return "" if self._previous is None else self._previous[1]

    @property
    def tensor_names(self) -> list[str]:
        """Names of the tensors earlier snapshots of this run hold (those of a resumed run
        included): each must be in every later snapshot."""
        with self._lock:
            return [] if self._run.file is None else self._snapshots.tensor_names()

    @property
    def last_epoch(self) -> int:
        """The highest epoch logged so far (-1 before any)."""
        return self._history.epoch

    def metrics_at(self, epoch: int) -> set[str]:
        """Names of the metrics that have a row at *epoch*, committed or buffered."""
        with self._lock:
            self._check_open("metrics_at")
            return self._history.metrics_at(self._file, epoch)

    def last_snapshot(self) -> dict[str, np.ndarray]:
        """Every tensor of the last snapshot as it is in the file (queued snapshots are
        written first); ``{}`` before any."""
        writer_error = self._snapshots.drain()
        if writer_error is not None:
            raise writer_error
        with self._lock:
            self._check_open("last_snapshot")
            return self._snapshots.read_last()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<recordkit.Recorder {self._name!r} run_id={self._run_id} "
                f"status={self._status} ({state}) at {str(self._path)!r}>")

    def extend(self, args: Mapping[str, Any] | argparse.Namespace) -> None:
        """Merge a mapping or an ``argparse.Namespace`` into the params.

        A value that cannot be stored faithfully is stored as its repr, flagged, and a
        :class:`~recordkit.errors.RecordkitWarning` names the key; training goes on.
        """
        with self._lock:
            self._check_open("extend")
            self._params.extend(args, "Recorder.extend")
            document = self._params.encode(self._path, stacklevel=2)
            self._run.write_params(document, self._params.flagged)

    def set_info(self, info: Mapping[str, Any]) -> None:
        """Merge facts about the run (trainer settings, optimizer, model size...) into
        ``/info``; integrations call this once per run."""
        with self._lock:
            self._check_open("set_info")
            self._info.update(self._secrets.info(info, self._path, stacklevel=2))
            self._run.write_info(self._info)

    def log(self, metrics: Mapping[str, Any], epoch: int | None = None,
            step: int | None = None) -> None:
        """Buffer one row of history; :meth:`commit` writes it.

        Args:
            metrics: ``{name: number}``. Names may hold any character. Values that are not
                numbers are skipped with a warning naming the key.
            epoch: the epoch of the row. When None: with *step* given, the latest epoch
                logged; without, one past the metric's own last epoch (0 at first).
            step: the global step, for step-level metrics; -1 is stored when None.
        """
        if not isinstance(metrics, Mapping):
            raise TypeError(f"Recorder.log: metrics must be a mapping of name to number. "
                            f"Received: {type(metrics).__name__}")
        with self._lock:
            self._check_open("log")
            self._history.log(metrics, epoch, step, self._path)
            self._snapshots.check()  # the row is kept; a snapshot failure surfaces

    def plan(self, epochs: int | None = None, *, snapshots: int | None = None,
             snapshot_epochs: int | None = None) -> None:
        """Say how long the run will be, so that the record's final size can be estimated
        before the first snapshot (a warning when it exceeds ``size_warning_bytes`` or the
        free disk space). Integrations call this when fitting starts.

        Args:
            epochs: the planned number of epochs; every epoch is snapshotted unless
                *snapshots* says otherwise.
            snapshots: how many snapshots the run will take, e.g.
                ``SnapshotPolicy.planned_snapshots(epochs)``.
            snapshot_epochs: the name *snapshots* had before (a count, not the list
                ``Record.snapshot_epochs``); still accepted.
        """
        given = snapshots if snapshots is not None else snapshot_epochs
        count = given if given is not None else epochs
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise ValueError(f"Recorder.plan(epochs={epochs!r}, snapshots={given!r}): "
                             "must be ints >= 0 or None")
        with self._lock:
            self._snapshots.plan(count)

    def snapshot(self, weights: Any, epoch: int | None = None, step: int | None = None, *,
                 policy: SnapshotPolicy | None = None, frozen: Collection[str] = ()) -> None:
        """Store one snapshot of every tensor in *weights*.

        With ``background=True`` (the default) this only copies the tensors to host memory
        and queues the copies; a writer thread writes them. :meth:`commit` waits until
        they are in the file. An error of the writer is raised by the next call of
        :meth:`snapshot`, :meth:`log`, :meth:`commit` or :meth:`close`.

        Args:
            weights: ``{name: array}``, a torch Module or state_dict, or a Keras model.
            epoch: the epoch of the snapshot; the latest logged epoch when None (0 before
                any). A second snapshot of the same epoch replaces the first, unless
                both have a *step* and the steps differ (several snapshots in an epoch).
            step: the global step, when known.
            policy: which tensors to keep (include / exclude patterns) and the storage
                dtype; every tensor in its own dtype when None.
            frozen: names of tensors that do not train; they are left out (a tensor that
                earlier snapshots hold, :attr:`tensor_names`, must not be).

        Raises:
            SnapshotError: a tensor changed shape or dtype since the first snapshot, or a
                tensor held in earlier snapshots is missing (checked before anything is
                queued).
            RecordWriteError: an earlier queued snapshot could not be written.
        """
        arrays, dtype = self._snapshots.select(weights, policy, frozen)
        with self._lock:
            self._check_open("snapshot")
            self._snapshots.check()
            epoch = max(self._history.epoch, 0) if epoch is None else int(epoch)
            step = -1 if step is None else int(step)
            arrays = self._snapshots.tie(arrays, epoch)  # a tied tensor is stored once
            nbytes = self._snapshots.take(arrays, dtype, epoch, step)
        if nbytes is not None:
            self._snapshots.queue(arrays, dtype, epoch, step, nbytes)

    def add(self, key: str, value: Any) -> None:
        """Store any named value: an array, a list of arrays, or a plain value.

        Adding the same key again replaces the value.

        Example:
            >>> import tempfile
            >>> rec = Recorder(tempfile.mkdtemp(), system=False)
            >>> rec.add("losses", [2.01, 1.53])
            >>> rec.get(rec.save()).extras["losses"]
            [2.01, 1.53]
        """
        if not isinstance(key, str):
            raise TypeError(f"Recorder.add: key must be a str. Received: {key!r}")
        with self._lock:
            self._check_open("add")
            value = self._secrets.extra(key, value, self._path, stacklevel=2)
            for name in self._run.write_extra(key, value):
                warnings.warn(
                    f"recordkit: extra {key!r}: {name!r} cannot be stored faithfully; it is "
                    f"stored as its repr and flagged in {str(self._path)!r}",
                    RecordkitWarning, stacklevel=2,
                )

    def commit(self, durable: bool | None = None, *, wait: bool = True) -> None:
        """Write everything logged so far and flush it to the file.

        After commit returns, a process killed at any moment leaves these rows readable.

        Queued snapshots are written first, so after commit returns they are in the file
        too, and flushed with the history.

        Args:
            durable: also fsync, so a power loss keeps them; defaults to the recorder's
                ``durable`` option.
            wait: False commits the history rows now without waiting for queued
                snapshots, so training overlaps their writing; each snapshot is flushed
                (committed) by the writer as soon as it is written. A writer error already
                known is still raised.

        Raises:
            SnapshotError, RecordWriteError: a queued snapshot failed; the history rows are
                committed before it is raised.
        """
        writer_error = self._snapshots.pending_error(wait=wait)
        with self._lock:
            self._check_open("commit")
            with self._run.as_write_error("commit"):
                self._write_buffered("commit")
                self._run.commit(durable=self._durable if durable is None else durable)
        if writer_error is not None:
            raise writer_error

    def wait_for_snapshots(self) -> None:
        """Wait until every queued snapshot is written (and flushed, as the writer flushes
        each one), without raising a snapshot's error: that is raised by the next
        :meth:`commit` or :meth:`close`. What a framework callback calls when an exception
        is leaving training, so that a reader then sees every snapshot taken, whatever
        the writer's pace. Nothing without a background writer or once closed."""
        if not self._closed:
            self._snapshots.wait_written()

    def _write_buffered(self, what: str) -> None:
        """Append the buffered history rows to the table (inside ``as_write_error``)."""
        self._run.ensure_space(self._history.nbytes, what)
        self._history.commit(self._file)

    def rewind(self, epoch: int) -> None:
        """Drop history rows and snapshots of *epoch* and later, e.g. before a resumed run
        repeats those epochs, so that nothing is recorded twice."""
        writer_error = self._snapshots.drain()  # queued snapshots predate the rewind
        if writer_error is not None:
            raise writer_error
        with self._lock:
            self._check_open("rewind")
            with self._run.as_write_error(f"rewind to epoch {epoch}"):
                self._history.rewind(self._file, epoch)
                self._snapshots.rewind(epoch)
                self._run.flush(durable=False)


    def save(self) -> str:
        """Close the run as completed and return its id. The record is closed after;
        ``Recorder(root, resume=run_id)`` reopens it."""
        with self._lock:
            self._check_open("save")
        self.close("completed")
        return self._run_id

    def close(self, status: str = "completed", *, error: BaseException | str | None = None
              ) -> None:
        """Commit, set the final status and close the file. Safe to call twice.

        Args:
            status: ``"completed"``, ``"failed"``, ``"interrupted"``, ``"pruned"`` (an
                Optuna trial stopped early), or ``"running"`` to leave the run open for a
                later resume.
            error: the exception (or its text) that ended a failed run.

        Raises:
            SnapshotError, RecordWriteError: a queued snapshot failed. The run is closed
                first and the failure is stored in its ``error`` attribute. When *error* is
                given (closing after a crash) it is not raised but stored and warned about,
                so it does not hide the crash.
        """
        if status not in STATUSES:
            raise ValueError(f"Recorder.close(status={status!r}): must be one of {STATUSES}")
        writer_error = None
        if not self._closed:
            error, writer_error = self._snapshots.stop_for_close(error)
        self._close(status, error)
        if writer_error is not None:
            raise writer_error

    def close_from_finalizer(self, status: str, *, error: BaseException | str | None = None
                             ) -> None:
        """:meth:`close` for a ``__del__`` or other finalizer (a callback collected with
        its record open), never raising: at once, or on a new thread when this thread
        holds the HDF5 library lock or the run's lock. A garbage collection runs inside
        whatever call allocated, an h5py call too, and closing waits for the snapshot
        writer, which needs that lock: closing there would wait forever. The process
        waits for that thread at exit."""
        if self._closed:
            return
        owned = getattr(self._lock, "_is_owned", None)
        if hdf5_lock_held() or (owned is not None and owned()):
            try:
                threading.Thread(target=self._close_quietly, args=(status, error),
                                 name=f"recordkit-close-{self._run_id}").start()
                return
            except RuntimeError:  # the interpreter is shutting down: no new thread
                pass
        self._close_quietly(status, error)

    def _close_quietly(self, status: str, error: BaseException | str | None) -> None:
        with contextlib.suppress(Exception):
            self.close(status, error=error)

    def _close(self, status: str, error: BaseException | str | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            written = False
            try:
                if self._run.open:
                    self._status = status
                    self._write_status(status, error)
                written = True
            finally:  # a run whose status could not be written stays writable
                self._run.close(read_only=written and status != "running")
                self._finalizer.detach()
                self._ended.set()
                self._snapshots.release_buffers()
            if status != "running":
                add_closed_run(self._path)  # the folder's run index (never raises)

    def _write_status(self, status: str, error: BaseException | str | None) -> None:
        with self._run.as_write_error(f"close the run as {status}"):
            self._write_buffered(f"close the run as {status}")
            write_end(self._file, status, error=None if error is None else self._secrets.text(
                          describe_error(error), "error", self._path, stacklevel=5),
                      ended=None if status == "running"
                      else _dt.datetime.now(_dt.timezone.utc).isoformat())
            self._run.flush(durable=self._durable)

    def get(self, run_id: str) -> Any:
        """Load a run of this recorder's root by id (the old ``Record.get``)."""
        if _loader is None:  # pragma: no cover - import recordkit sets it
            raise RuntimeError("Recorder.get needs the read side: import recordkit")
        return _loader(run_id, root=self._root)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        status = status_for_exception(exc if exc_type is not None else None)
        self.close(status, error=None if status == "completed" else exc)

    @staticmethod
    def _at_exit(ref: weakref.ref[Recorder]) -> None:
        rec = ref()
        if rec is not None and not rec._closed:
            if getattr(rec, "_in_ray_trial", False):  # Tune's stop: its thread closes it
                rec._ended.wait(RAY_STOP_WAIT_S)
            with contextlib.suppress(Exception):
                rec.close("running")


    @property
    def _file(self) -> RecordFile:
        """The open file (only while the run is open)."""
        f = self._run.file
        assert f is not None
        return f

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RecordClosedError(
                f"Recorder.{what}: run {self._run_id} at {str(self._path)!r} is closed "
                f"({self._status}); this recorder is closed. Start a new Recorder, or "
                "pass resume=<run id> to continue this run"
            )

