"""The write side: one open run and its lifecycle (running → completed / failed / interrupted)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import os
import re
import secrets
import stat
import threading
import time
import warnings
import weakref
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from recordkit import format as fmt
from recordkit.errors import (
    RecordClosedError,
    RecordExistsError,
    RecordkitError,
    RecordkitWarning,
    RecordWriteError,
    SnapshotError,
)
from recordkit.filters import dataset_options
from recordkit.locking import RunLock
from recordkit.paths import resolve_path
from recordkit.policy import SnapshotPolicy, cast_for_storage
from recordkit.tensors import to_arrays
from recordkit.writer import SnapshotJob, SnapshotWriter

__all__ = ["Recorder", "find_unfinished", "new_run_id", "record_experiment"]

DEFAULT_EXPERIMENT = "default"
#: A record whose estimated final size exceeds this gets a warning before its first snapshot.
SIZE_WARNING_BYTES = 10 * 1024**3
#: The writer thread writes a big tensor in slices of about this size, taking the recorder
#: lock for one slice at a time, so a log() call never waits for a whole snapshot.
_SLICE_BYTES = 16 * 1024 * 1024
#: The in-memory HDF5 type of history rows, built once: deriving it on every write costs
#: three times the write of one row.
_HISTORY_MTYPE = h5py.h5t.py_create(fmt.HISTORY_ROW_DTYPE)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recordkit")
    except PackageNotFoundError:
        return "unknown"


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A run id that sorts by creation time and is unique even within one microsecond.

    Example:
        >>> a = new_run_id(); b = new_run_id()
        >>> a != b and len(a) == len(b) == 29
        True
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}"


def _check_name(what: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Recorder({what}={value!r}): must be a str or None. "
                        f"Received: {type(value).__name__}")
    return value


def _check_experiment(experiment: str | None) -> str:
    experiment = _check_name("experiment", experiment) or DEFAULT_EXPERIMENT
    if "/" in experiment or "\x00" in experiment or experiment in {".", ".."}:
        raise ValueError(
            f"Recorder(experiment={experiment!r}): an experiment is a folder name; it may "
            "not contain '/' or NUL, nor be '.' or '..'"
        )
    return experiment


def _describe(error: BaseException | str) -> str:
    """``"Type: message"`` of an exception (``"KeyboardInterrupt"`` when it has no
    message); a string as it is."""
    if not isinstance(error, BaseException):
        return str(error)
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def params_hash_of(params: Mapping[str, Any] | argparse.Namespace | None, *,
                   mask_secrets: bool = True) -> str:
    """The params hash a :class:`Recorder` created with *params* stores (``params_hash``):
    to find the runs of one configuration without opening a recorder.

    Example:
        >>> params_hash_of({"lr": 0.1, "depth": 2}) == params_hash_of({"depth": 2, "lr": 0.1})
        True
    """
    plain = _params_of(params, "params_hash_of", {})
    masked = _secret_keys(plain, "") if mask_secrets else []
    document, _ = fmt.encode_params(_masked_copy(plain) if masked else plain, warn=False)
    return fmt.params_hash(document)


def _params_of(args: Any, where: str, renamed: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Params as a dict with str names. A name that is not a str (``{1: ...}``) becomes
    its str (made unique if a str name is already taken) and is entered in *renamed*
    (new name → the original's repr), so the recorder can warn and flag it: params never
    stop training."""
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        if all(isinstance(k, str) for k in args):
            return dict(args)
        taken = {k for k in args if isinstance(k, str)}
        out: dict[str, Any] = {}
        for key, value in args.items():
            if isinstance(key, str):
                out[key] = value
                continue
            try:
                name = str(key)
            except Exception:  # a broken __str__
                name = f"<{type(key).__name__}>"
            if name in taken:
                name = f"{name} ({type(key).__name__})"
            while name in taken:
                name += "'"
            taken.add(name)
            out[name] = value
            if renamed is not None:
                try:
                    renamed[name] = f"{key!r} ({type(key).__name__})"
                except Exception:
                    renamed[name] = f"a {type(key).__name__}"
        return out
    raise TypeError(
        f"{where}: expected a mapping or an argparse.Namespace. "
        f"Received: {type(args).__name__}"
    )


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
        durable: bool = False,
        system: bool | Mapping[str, Any] = True,
        checksum: bool = True,
        compression: str | None = None,
        compression_opts: Any = None,
        chunk_bytes: int = fmt.DEFAULT_CHUNK_BYTES,
        background: bool = True,
        max_pending_bytes: int | None = None,
        size_warning_bytes: int | None = SIZE_WARNING_BYTES,
        created: _dt.datetime | None = None,
        mask_secrets: bool = True,
    ) -> None:
        filter_options = dataset_options(compression, compression_opts)
        if max_pending_bytes is not None and (isinstance(max_pending_bytes, bool) or not
                                              isinstance(max_pending_bytes, int)
                                              or max_pending_bytes < 0):
            raise ValueError(f"Recorder(max_pending_bytes={max_pending_bytes!r}): must be "
                             "an int >= 0 or None (one snapshot at a time)")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1024:
            raise ValueError(
                f"Recorder(chunk_bytes={chunk_bytes!r}): must be an int >= 1024"
            )
        self._root = Path(root)
        self._durable = bool(durable)
        self._checksum = bool(checksum)
        self._compression = filter_options.get("compression")
        self._compression_opts = filter_options.get("compression_opts")
        self._chunk_bytes = chunk_bytes
        self._background = bool(background)
        self._max_pending_bytes = max_pending_bytes
        self._size_warning_bytes = size_warning_bytes
        self._writer: SnapshotWriter | None = None
        self._pool: dict[str, np.ndarray] = {}  # written snapshot buffers, for reuse
        self._pool_lock = threading.Lock()
        self._planned_snapshots: int | None = None
        self._tensor_specs: dict[str, tuple[Any, ...]] | None = None
        self._last_snapshot_epoch: int | None = None
        self._size_checked = False
        self._lock = threading.RLock()
        self._pending: dict[str, list[tuple[int, int, float, float]]] = {}
        self._metric_ids: dict[str, int] = {}  # index of each name in /history/metrics
        self._last_epoch: dict[str, int] = {}
        self._epoch = -1
        self._status = "running"
        self._closed = False
        self._file: h5py.File | None = None
        self._run_lock: RunLock | None = None
        self._renamed: dict[str, str] = {}  # params whose names were not str: _params_of
        self._carried: list[str] = []  # keys flagged in the file a resumed run continues
        self._params: dict[str, Any] = _params_of(params, "Recorder(params=...)",
                                                  self._renamed)
        self._mask_secrets = bool(mask_secrets)
        self._masked: list[str] = []
        self._previous: tuple[str, str] | None = None  # status and error before a resume
        if resume is not None:
            self._resume(resume, _check_experiment(experiment) if experiment else None,
                         _check_name("name", name))
        else:
            self._create(_check_experiment(experiment), _check_name("name", name), system,
                         created)
        # Buffered rows are committed (status untouched) if the interpreter exits first.
        self._finalizer = weakref.finalize(self, Recorder._at_exit, weakref.ref(self))

    # --- creation -------------------------------------------------------------------------

    def _create(self, experiment: str, name: str | None, system: bool | Mapping[str, Any],
                created: _dt.datetime | None = None) -> None:
        folder = self._root / experiment
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RecordWriteError(
                f"cannot create the experiment folder {str(folder)!r}: {err.strerror}; "
                "choose a root you can write to"
            ) from err
        now = _dt.datetime.now(_dt.timezone.utc) if created is None else (
            created if created.tzinfo else created.replace(tzinfo=_dt.timezone.utc))
        # The file is created under a hidden name and renamed once its header is flushed:
        # a process killed inside Recorder() leaves no half-made record for readers.
        for _attempt in range(5):
            run_id = new_run_id(now)
            path = folder / f"{run_id}.h5"
            partial = folder / f".{run_id}.h5.part"
            self._run_lock = RunLock.acquire(path)
            try:
                if path.exists():
                    raise FileExistsError(path)
                self._file = fmt.new_file(str(partial))
                break
            except FileExistsError:
                self._run_lock.release()
                continue
            except OSError as err:
                self._run_lock.release()
                raise self._write_error(err, f"create the record {str(path)!r}") from err
        else:  # pragma: no cover - five random collisions in one microsecond
            raise RecordExistsError(f"could not find a free run id in {str(folder)!r}")
        self._path = path
        self._run_id = run_id
        self._experiment = experiment
        self._name = name if name is not None else run_id
        self._created = now
        self._flagged: list[str] = []
        try:
            self._write_header(experiment, system, now)
        except BaseException:
            with contextlib.suppress(Exception):
                if self._file is not None:
                    self._file.close()
            with contextlib.suppress(OSError):
                partial.unlink()
            self._run_lock.release()
            raise
        with self._writing("publish the record"):
            os.replace(partial, path)
        self._info: dict[str, Any] = {}

    def _write_header(self, experiment: str, system: bool | Mapping[str, Any],
                      now: _dt.datetime) -> None:
        assert self._file is not None
        run_id = self._run_id
        document = self._encode_params(stacklevel=5)  # _write_header, _create, __init__
        system_info = (dict(system) if isinstance(system, Mapping)
                       else self._system_info() if system else {})
        with self._writing("write the run header"):
            fmt.write_root_attrs(self._file, {
                "format": fmt.FORMAT_NAME,
                "format_version": fmt.FORMAT_VERSION,
                "recordkit_version": _version(),
                "run_id": run_id,
                "name": self._name,
                "experiment": experiment,
                "status": "running",
                "created": now.isoformat(),
                "ended": "",
                "error": "",
                "params_hash": fmt.params_hash(document),
                "restarts": "[]",
            })
            self._write_params(document)
            fmt.write_text(self._file, fmt.SYSTEM, fmt.dumps_json(system_info))
            fmt.write_text(self._file, fmt.INFO, "{}")
            fmt.create_history(self._file, checksum=self._checksum)
            self._file.create_dataset(
                fmt.SNAPSHOTS, shape=(0,), maxshape=(None,), dtype=fmt.SNAPSHOT_DTYPE,
                chunks=(fmt.SNAPSHOT_CHUNK_ROWS,), fletcher32=self._checksum,
            )
            self._file.require_group(fmt.WEIGHTS)
            self._file.require_group(fmt.EXTRAS)
            self._file.flush()

    def _system_info(self) -> dict[str, Any]:
        try:
            from recordkit import system

            return system.capture(self._root)
        except Exception as err:  # system info must never stop a run
            return {"notes": [f"system: {type(err).__name__}: {err}"]}

    def _resume(self, resume: str | os.PathLike[str], experiment: str | None,
                name: str | None) -> None:
        path = resolve_path(resume, self._root, experiment)
        self._run_lock = RunLock.acquire(path)
        try:
            mode = path.stat().st_mode
            if not mode & stat.S_IWUSR:
                path.chmod(mode | stat.S_IWUSR)
            self._file = h5py.File(str(path), "r+", locking=False, **fmt.WRITE_OPTIONS)
        except OSError as err:
            self._run_lock.release()
            raise self._write_error(err, f"reopen the record {str(path)!r}") from err
        f = self._file
        if not fmt.is_record(f):
            f.close()
            self._run_lock.release()
            from recordkit.errors import NotARecordError

            raise NotARecordError(f"{str(path)!r} is not a recordkit record; cannot resume it")
        self._path = path
        self._run_id = fmt.attr_str(f, "run_id")
        self._experiment = fmt.attr_str(f, "experiment")
        self._name = name if name is not None else fmt.attr_str(f, "name")
        self._created = _dt.datetime.fromisoformat(fmt.attr_str(f, "created"))
        old = fmt.decode_params(fmt.read_text(f, fmt.PARAMS) or "{}")
        # Flags of the file stay unless the key is given again: a value stored as its repr
        # reads back as a plain string, which would not be flagged a second time.
        given = set(self._params)
        self._carried = [
            key for key in fmt.loads_json(fmt.attr_str(f[fmt.PARAMS], "unserialisable", "[]")
                                          if fmt.PARAMS in f else "[]")
            if isinstance(key, str) and not any(
                key == n or key.startswith((f"{n}.", f"{n}[", f"{n}{{")) for n in given)]
        old.update(self._params)
        self._params = old
        info_text = fmt.read_text(f, fmt.INFO)
        self._info = dict(fmt.loads_json(info_text)) if info_text else {}
        self._metric_ids = {name: i for i, name in enumerate(fmt.metric_names(f))}
        for metric, rows in fmt.read_history(f).items():
            self._last_epoch[metric] = int(rows[-1]["epoch"])
        self._epoch = max(self._last_epoch.values(), default=-1)
        restarts = fmt.loads_json(fmt.attr_str(f, "restarts", "[]"))
        restarts.append({
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "previous_status": fmt.attr_str(f, "status"),
            "last_epoch": self._epoch,
            "pid": os.getpid(),
        })
        self._flagged = list(self._carried)  # warned about when they were first stored
        self._previous = (fmt.attr_str(f, "status"), fmt.attr_str(f, "error"))
        document = self._encode_params(stacklevel=4)
        with self._writing("reopen the run"):
            if fmt.SUMMARY in f.attrs:  # the run changes again: its summary is stale
                del f.attrs[fmt.SUMMARY]
            fmt.write_root_attrs(f, {
                "status": "running", "ended": "", "error": "", "name": self._name,
                "restarts": fmt.dumps_json(restarts),
            })
            self._write_params(document)
            f.flush()

    # --- properties -----------------------------------------------------------------------

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
        return dict(self._params)

    @property
    def tensor_names(self) -> list[str]:
        """Names of the tensors earlier snapshots of this run hold (those of a resumed run
        included): each must be in every later snapshot."""
        with self._lock:
            if self._file is None:
                return []
            return [name for name, spec in self._known_tensors().items() if spec[3]]

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the facts about the run set so far (:meth:`set_info`), those of a
        resumed run included."""
        with self._lock:
            return fmt.loads_json(fmt.dumps_json(self._info))

    @property
    def previous_status(self) -> str | None:
        """The status the file had before this recorder resumed it (``"completed"``,
        ``"running"``...); None for a new run."""
        return None if self._previous is None else self._previous[0]

    @property
    def previous_error(self) -> str:
        """The ``error`` the file held before this recorder resumed it (``""`` when none)."""
        return "" if self._previous is None else self._previous[1]

    def metrics_at(self, epoch: int) -> set[str]:
        """Names of the metrics that have a row at *epoch*, committed or buffered."""
        with self._lock:
            self._check_open("metrics_at")
            assert self._file is not None
            names = {name for name, rows in fmt.read_history(self._file).items()
                     if (rows["epoch"] == epoch).any()}
            names.update(name for name, rows in self._pending.items()
                         if any(row[0] == epoch for row in rows))
            return names

    def last_snapshot(self) -> dict[str, np.ndarray]:
        """Every tensor of the last snapshot as it is in the file (queued snapshots are
        written first); ``{}`` before any."""
        writer_error = self._drain()
        if writer_error is not None:
            raise writer_error
        with self._lock:
            self._check_open("last_snapshot")
            assert self._file is not None
            return fmt.read_last_snapshot(self._file)

    @property
    def last_epoch(self) -> int:
        """The highest epoch logged so far (-1 before any)."""
        return self._epoch

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<recordkit.Recorder {self._name!r} run_id={self._run_id} "
                f"status={self._status} ({state}) at {str(self._path)!r}>")

    # --- writing --------------------------------------------------------------------------

    def extend(self, args: Mapping[str, Any] | argparse.Namespace) -> None:
        """Merge a mapping or an ``argparse.Namespace`` into the params.

        A value that cannot be stored faithfully is stored as its repr, flagged, and a
        :class:`~recordkit.errors.RecordkitWarning` names the key; training goes on.
        """
        with self._lock:
            self._check_open("extend")
            self._params.update(_params_of(args, "Recorder.extend", self._renamed))
            document = self._encode_params(stacklevel=3)
            with self._writing("write params"):
                self._ensure_space(len(document.encode("utf-8")), "write params")
                self._write_params(document)

    def _encode_params(self, stacklevel: int) -> str:
        """Encode the params; warn once per key that is stored as its repr, and once per
        secret-looking key (``api_key``, ``password``...) whose value is stored as ``***``."""
        masked = _secret_keys(self._params, "") if self._mask_secrets else []
        for key in masked:
            if key not in self._masked:
                self._masked.append(key)
                warnings.warn(
                    f"recordkit: hyperparameter {key!r} looks like a secret; it is stored "
                    f"as '***' in {str(self._path)!r} (pass mask_secrets=False to keep it)",
                    RecordkitWarning, stacklevel=stacklevel,
                )
        document, flagged = fmt.encode_params(
            _masked_copy(self._params) if masked and self._mask_secrets else self._params,
            warn=False)
        renamed = [key for key in self._renamed if key in self._params]
        news = [(key, f"hyperparameter name {self._renamed[key]} is not a str; it is "
                      f"stored as {key!r}") for key in renamed]
        news += [(key, f"hyperparameter {key!r} cannot be stored faithfully; it is stored "
                       "as its repr") for key in flagged]
        for key, what in news:  # each flagged key is warned about once
            if key not in self._flagged:
                warnings.warn(f"recordkit: {what} and flagged in {str(self._path)!r}",
                              RecordkitWarning, stacklevel=stacklevel)
        self._flagged = list(dict.fromkeys([*self._carried, *renamed, *flagged]))
        return document

    def _write_params(self, document: str) -> None:
        assert self._file is not None
        fmt.write_text(self._file, fmt.PARAMS, document)
        self._file[fmt.PARAMS].attrs["unserialisable"] = fmt.dumps_json(self._flagged)
        self._file.attrs["params_hash"] = fmt.params_hash(document)

    def set_info(self, info: Mapping[str, Any]) -> None:
        """Merge facts about the run (trainer settings, optimizer, model size...) into
        ``/info``; integrations call this once per run."""
        with self._lock:
            self._check_open("set_info")
            self._info.update(info)
            with self._writing("write info"):
                assert self._file is not None
                text = fmt.dumps_json(self._info)
                self._ensure_space(len(text.encode("utf-8")), "write info")
                fmt.write_text(self._file, fmt.INFO, text)

    def log(
        self,
        metrics: Mapping[str, Any],
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
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
            now = time.time()
            for key, value in metrics.items():
                name = str(key)
                number = _as_float(value)
                if number is None:
                    warnings.warn(
                        f"recordkit: metric {name!r} = {value!r} is not a number; skipped "
                        f"in {str(self._path)!r} (use Recorder.add for arrays and text)",
                        RecordkitWarning, stacklevel=2,
                    )
                    continue
                if epoch is not None:
                    row_epoch = int(epoch)
                elif step is not None:
                    row_epoch = max(self._epoch, 0)
                else:
                    row_epoch = self._last_epoch.get(name, -1) + 1
                self._pending.setdefault(name, []).append(
                    (row_epoch, -1 if step is None else int(step), number, now)
                )
                self._last_epoch[name] = row_epoch
                self._epoch = max(self._epoch, row_epoch)
            if self._writer is not None:  # the row is kept; a snapshot failure surfaces
                self._writer.check()

    def plan(self, epochs: int | None = None, *, snapshot_epochs: int | None = None) -> None:
        """Say how long the run will be, so that the record's final size can be estimated
        before the first snapshot (a warning when it exceeds ``size_warning_bytes`` or the
        free disk space). Integrations call this when fitting starts.

        Args:
            epochs: the planned number of epochs; every epoch is snapshotted unless
                *snapshot_epochs* says otherwise.
            snapshot_epochs: how many snapshots the run will take, e.g.
                ``SnapshotPolicy.planned_snapshots(epochs)``.
        """
        count = snapshot_epochs if snapshot_epochs is not None else epochs
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise ValueError(f"Recorder.plan(epochs={epochs!r}, snapshot_epochs="
                             f"{snapshot_epochs!r}): must be ints >= 0 or None")
        with self._lock:
            self._planned_snapshots = count
            self._size_checked = False

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
                any). A second snapshot of the same epoch replaces the first.
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
        arrays = to_arrays(weights, copy=False)
        dtype = "keep" if policy is None else policy.dtype
        if policy is not None:
            arrays = {name: arrays[name] for name in policy.select(arrays, frozen)}
        elif frozen:
            arrays = {name: a for name, a in arrays.items() if name not in frozen}
        with self._lock:
            self._check_open("snapshot")
            if self._writer is not None:
                self._writer.check()
            epoch = max(self._epoch, 0) if epoch is None else int(epoch)
            step = -1 if step is None else int(step)
            self._check_tensors(arrays, dtype, epoch)
            nbytes = sum(_stored_nbytes(a, dtype) for a in arrays.values())
            self._check_size(nbytes)
            if not self._background:  # the caller waits, so its arrays need no copy
                self._write_snapshot(
                    {name: cast_for_storage(a, dtype) for name, a in arrays.items()},
                    epoch, step)
                return
            writer = self._start_writer()
        try:
            writer.reserve(nbytes)  # back-pressure: waits, without the lock, for room
        except BaseException:
            with self._lock:
                self._tensor_specs = None  # this snapshot was checked but is not queued
            raise
        try:
            # The next training step may change the tensors: copy now. A cast is a copy.
            copies = {name: (self._host_copy(name, a) if dtype == "keep"
                             else cast_for_storage(a, dtype))
                      for name, a in arrays.items()}
        except BaseException:
            writer.release(nbytes)
            with self._lock:
                self._tensor_specs = None
            raise
        writer.submit(SnapshotJob(copies, epoch, step, nbytes))

    def _host_copy(self, name: str, array: np.ndarray) -> np.ndarray:
        """A copy of *array* that training can no longer change, made into the buffer of
        the same tensor's last written snapshot when there is one: fresh memory costs a
        page fault per 4 KiB, which made the copy 2-3x slower than the memcpy itself
        (docs/BENCHMARKS.md). At most one set of buffers is kept between snapshots."""
        with self._pool_lock:
            buffer = self._pool.pop(name, None)
        if (buffer is not None and buffer.shape == array.shape
                and buffer.dtype == array.dtype and type(buffer) is type(array)):
            np.copyto(buffer, array)
            return buffer
        return array.copy()  # .copy() keeps BFloat16Bits

    def _start_writer(self) -> SnapshotWriter:
        if self._writer is None or not self._writer.alive:
            ref = weakref.ref(self)

            def write(job: SnapshotJob) -> None:  # holds the recorder only while writing
                rec = ref()
                if rec is None:
                    raise RecordClosedError("the recorder was garbage-collected with "
                                            "snapshots still queued")
                try:
                    rec._write_snapshot(job.arrays, job.epoch, job.step)
                except BaseException:
                    with rec._lock:
                        rec._tensor_specs = None  # re-read from the file on the next call
                    raise
                with rec._pool_lock:  # written: its buffers take the next snapshot
                    rec._pool.update(job.arrays)

            self._writer = SnapshotWriter(write, max_pending_bytes=self._max_pending_bytes,
                                          name=f"recordkit-writer-{self._run_id}")
            # Queued snapshots are written when the recorder is dropped or at exit.
            weakref.finalize(self, self._writer.stop)
        return self._writer

    def _known_tensors(self) -> dict[str, tuple[Any, ...]]:
        """Per tensor of the file: shape, dtype, stored dtype name and whether earlier
        snapshots hold it; read from the file once, then kept up to date (under the lock)."""
        specs = self._tensor_specs
        if specs is None:
            assert self._file is not None
            specs = {}
            for _, ds in fmt.members(self._file.get(fmt.WEIGHTS)):
                held = ds.shape[0] + int(ds.attrs["first_snapshot"]) > 0
                specs[fmt.object_name(ds)] = (ds.shape[1:], ds.dtype,
                                              fmt.attr_str(ds, "dtype"), held)
            table = self._file[fmt.SNAPSHOTS]
            self._last_snapshot_epoch = int(table[-1]["epoch"]) if len(table) else None
            self._tensor_specs = specs
        return specs

    def _check_tensors(self, arrays: Mapping[str, np.ndarray], dtype: str, epoch: int) -> None:
        """Raise SnapshotError in the caller's thread, before anything is queued, when a
        tensor changed shape or dtype or went missing. The writer checks again against
        the file; this check only makes the error come from the call that caused it."""
        specs = self._known_tensors()
        for name, array in arrays.items():
            known = specs.get(name)
            stored = _stored_spec(array, dtype)
            if known is not None and (known[0], known[1], known[2]) != (
                    tuple(array.shape), *stored):
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {name!r} is {stored[1]}"
                    f"{list(array.shape)} but earlier snapshots in {str(self._path)!r} hold "
                    f"{known[2]}{list(known[0])}; a tensor must keep its shape and dtype "
                    "across snapshots"
                )
        if epoch != self._last_snapshot_epoch:  # not a replacement
            for name, (_, _, _, held) in specs.items():
                if held and name not in arrays:
                    raise SnapshotError(
                        f"snapshot at epoch {epoch}: tensor {name!r}, held in earlier "
                        f"snapshots of {str(self._path)!r}, is missing; snapshot the same "
                        "tensors each time (same include/exclude/frozen)"
                    )
        for name, array in arrays.items():
            specs[name] = (tuple(array.shape), *_stored_spec(array, dtype), True)
        self._tensor_specs = specs
        self._last_snapshot_epoch = epoch

    def _check_size(self, snapshot_bytes: int) -> None:
        """Warn once, before the first snapshot, when the record will not fit."""
        if self._size_checked:
            return
        self._size_checked = True
        planned = self._planned_snapshots
        total = snapshot_bytes * (planned if planned is not None else 1)
        try:
            usage = os.statvfs(self._path.parent)
            free: int | None = usage.f_bavail * usage.f_frsize
        except OSError:
            free = None
        about = (f"{planned} planned snapshot(s)" if planned is not None
                 else "one snapshot (call Recorder.plan(epochs=...) for a full estimate)")
        compressed = " before compression" if self._compression is not None else ""
        if free is not None and total > free:
            problem = f"only {_size(free)} are free on the disk"
        elif (planned is not None and self._size_warning_bytes is not None
              and total > self._size_warning_bytes):
            problem = f"above the warning threshold of {_size(self._size_warning_bytes)}"
        else:
            return
        warnings.warn(
            f"recordkit: {str(self._path)!r} will hold about {_size(total)}{compressed} of "
            f"weights ({about} of {_size(snapshot_bytes)}), {problem}; snapshot less often "
            "(snapshot_every=N or 'best'), exclude tensors, store float16/bfloat16, or "
            "choose another root",
            RecordkitWarning, stacklevel=3,
        )

    def _write_snapshot(self, arrays: Mapping[str, np.ndarray], epoch: int, step: int) -> None:
        """Write one snapshot: on the writer thread, or on the caller's in sync mode.

        The recorder lock is held for the metadata steps and for each slice of data, not
        for the whole snapshot. The table row goes last: readers trust only snapshots the
        table lists, so a crash mid-snapshot leaves the previous snapshots intact.
        """
        encoded = {}
        for name, array in arrays.items():
            try:
                encoded[name] = fmt.encode_tensor(np.asarray(array) if not isinstance(
                    array, fmt.BFloat16Bits) else array)
            except TypeError as err:
                raise SnapshotError(f"snapshot: tensor {name!r}: {err}") from None
        with self._lock:
            f = self._file
            if f is None:
                raise RecordClosedError(f"snapshot of epoch {epoch}: {str(self._path)!r} "
                                        "was closed before the snapshot was written")
            table = f[fmt.SNAPSHOTS]
            n = table.shape[0]
            index = n - 1 if n and int(table[n - 1]["epoch"]) == epoch else n
            weights = f[fmt.WEIGHTS]
            for key in weights:
                ds = weights[key]
                name = fmt.object_name(ds)
                if name not in encoded and ds.shape[0] > index:
                    continue  # replacing a snapshot that did not hold this tensor either
                if name not in encoded and ds.shape[0] + int(ds.attrs["first_snapshot"]) > 0:
                    raise SnapshotError(
                        f"snapshot at epoch {epoch}: tensor {name!r}, held in earlier "
                        f"snapshots of {str(self._path)!r}, is missing; snapshot the same "
                        "tensors each time (same include/exclude/frozen)"
                    )
            targets = []
            with self._writing(f"write the snapshot of epoch {epoch}"):
                self._ensure_space(sum(int(a.nbytes) for a, _ in encoded.values()),
                                   f"write the snapshot of epoch {epoch}")
                for name, (array, stored_dtype) in encoded.items():
                    ds = fmt.weight_dataset(
                        f, name, array, stored_dtype=stored_dtype, first_snapshot=index,
                        checksum=self._checksum, compression=self._compression,
                        compression_opts=self._compression_opts,
                        chunk_bytes=self._chunk_bytes,
                    )
                    if ds.shape[1:] != array.shape or ds.dtype != array.dtype or (
                        fmt.attr_str(ds, "dtype") != stored_dtype
                    ):
                        raise SnapshotError(
                            f"snapshot at epoch {epoch}: tensor {name!r} is {stored_dtype}"
                            f"{list(array.shape)} but earlier snapshots in "
                            f"{str(self._path)!r} hold {fmt.attr_str(ds, 'dtype')}"
                            f"{list(ds.shape[1:])}; a tensor must keep its shape and dtype "
                            "across snapshots"
                        )
                    row = index - int(ds.attrs["first_snapshot"])
                    if row < 0:
                        raise SnapshotError(
                            f"snapshot at epoch {epoch}: tensor {name!r} first appeared in a "
                            f"later snapshot of {str(self._path)!r}; it cannot be added to "
                            "an earlier one"
                        )
                    targets.append((ds, row, array))
                for ds, row, _ in targets:
                    if row >= ds.shape[0]:
                        ds.resize((row + 1, *ds.shape[1:]))
        for ds, row, array in targets:
            for part in _slices(ds.chunks, array.shape, array.dtype.itemsize):
                with self._lock, self._writing(f"write the snapshot of epoch {epoch}"):
                    if part is None:
                        ds[row] = array
                    else:
                        ds[row, part] = array[part]
        with self._lock, self._writing(f"write the snapshot of epoch {epoch}"):
            # The tensors reach the file before the row that lists them: one flush does
            # not order its writes, and a kill inside it could leave a listed snapshot
            # unwritten (benchmarks/crash_kills.py found it).
            f.flush()
            if index == n:
                table.resize((n + 1,))
            table[index] = (epoch, step, time.time())
            # Committed on its own: crash-safe once written, whether or not commit() waits.
            f.flush()
            fd = f.id.get_vfd_handle() if self._durable else None
        if fd is not None:  # without the lock: log() need not wait for the disk
            with self._writing(f"write the snapshot of epoch {epoch}"):
                os.fsync(fd)

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
            with self._writing(f"add {key!r}"):
                extra = fmt.prepare_extra(key, value)
                # Checked before HDF5 starts: a write that fails inside it can damage
                # what earlier commits wrote.
                self._ensure_space(extra.nbytes, f"add {key!r}")
                assert self._file is not None
                flagged = fmt.write_extra(self._file, extra)
            for name in flagged:
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
        writer_error = self._drain() if wait else None
        with self._lock:
            self._check_open("commit")
            if not wait and self._writer is not None:
                try:
                    self._writer.check()
                except BaseException as err:
                    writer_error = err
            self._commit(self._durable if durable is None else durable)
        if writer_error is not None:
            raise writer_error

    def _drain(self) -> BaseException | None:
        """Wait until the queued snapshots are written; return the writer's error, if any.

        Called without the lock held: the writer takes it for each slice it writes."""
        writer = self._writer
        if writer is None:
            return None
        try:
            writer.wait()
        except BaseException as err:
            return err
        return None

    def _commit(self, durable: bool) -> None:
        f = self._file
        assert f is not None
        with self._writing("commit"):
            self._ensure_space(self._pending_bytes(), "commit")
            self._write_pending()
            f.flush()
            if durable:
                os.fsync(f.id.get_vfd_handle())
        self._check_file_still_there()

    def _write_pending(self) -> None:
        """Append the buffered history rows to the one history table.

        One append per commit, whatever the number of metrics, and it costs the same at
        epoch 5,000 as at epoch 1: nothing is rewritten. New metric names go into
        ``/history/metrics`` first, so a row never points at a name not yet written. The
        low-level calls skip h5py's per-call checks, which cost more than the write itself
        for a few rows (docs/BENCHMARKS.md)."""
        f = self._file
        assert f is not None
        pending = [(name, rows) for name, rows in self._pending.items() if rows]
        if not pending:
            return
        new = [name for name, _ in pending if name not in self._metric_ids]
        if new:
            fmt.add_metric_names(f, new)
            for name in new:
                self._metric_ids[name] = len(self._metric_ids)
        data = np.array([(self._metric_ids[name], *row) for name, rows in pending
                         for row in rows], dtype=fmt.HISTORY_ROW_DTYPE)
        table = self.__dict__.get("_history_table")
        n = self.__dict__.get("_history_rows")
        if table is None or not table.id.valid:
            table = self._history_table = fmt.history_tables(f)[0]
            n = None
        dsid = table.id
        if n is None:  # asking HDF5 for the shape cost a tenth of a commit: counted here
            n = dsid.shape[0]
        self._history_rows = None  # until the append succeeds (a failed one asks again)
        dsid.set_extent((n + len(data),))
        space = dsid.get_space()
        space.select_hyperslab((n,), (len(data),))
        memory = _MEMORY_SPACES.get(len(data))
        if memory is None:
            memory = _MEMORY_SPACES.setdefault(len(data), h5py.h5s.create_simple((len(data),)))
        dsid.write(memory, space, data, mtype=_HISTORY_MTYPE)
        self._history_rows = n + len(data)
        self._pending.clear()

    def rewind(self, epoch: int) -> None:
        """Drop history rows and snapshots of *epoch* and later, e.g. before a resumed run
        repeats those epochs, so that nothing is recorded twice."""
        writer_error = self._drain()  # queued snapshots were taken before the rewind
        if writer_error is not None:
            raise writer_error
        with self._lock:
            self._tensor_specs = None
            self._check_open("rewind")
            f = self._file
            assert f is not None
            with self._writing(f"rewind to epoch {epoch}"):
                for name in list(self._pending):
                    self._pending[name] = [r for r in self._pending[name] if r[0] < epoch]
                self._last_epoch.clear()
                table = fmt.history_tables(f)[0]
                self._history_rows = None  # resized below: the next commit asks HDF5
                rows = table[()]
                kept = rows[rows["epoch"] < epoch]
                if len(kept) < len(rows):
                    table.resize((len(kept),))
                    if len(kept):
                        table[:] = kept
                names = {i: name for name, i in self._metric_ids.items()}
                for name, view in fmt.split_history(kept, [names[i] for i in
                                                           range(len(names))]).items():
                    self._last_epoch[name] = int(view["epoch"][-1])
                for name, pending_rows in self._pending.items():
                    if pending_rows:
                        self._last_epoch[name] = max(self._last_epoch.get(name, -1),
                                                     pending_rows[-1][0])
                table = f[fmt.SNAPSHOTS]
                snap_epochs = table["epoch"][:] if len(table) else np.zeros(0, np.int64)
                stale = np.nonzero(snap_epochs >= epoch)[0]
                if len(stale):
                    first = int(stale[0])
                    table.resize((first,))
                    for _, ds in fmt.members(f[fmt.WEIGHTS]):
                        rows = max(0, first - int(ds.attrs["first_snapshot"]))
                        if ds.shape[0] > rows:
                            ds.resize((rows, *ds.shape[1:]))
                self._epoch = max(self._last_epoch.values(), default=-1)
                f.flush()

    # --- closing --------------------------------------------------------------------------

    def save(self) -> str:
        """Close the run as completed and return its id. The record is read-only after."""
        with self._lock:
            self._check_open("save")
        self.close("completed")
        return self._run_id

    def close(self, status: str = "completed", *, error: BaseException | str | None = None
              ) -> None:
        """Commit, set the final status and close the file. Safe to call twice.

        Args:
            status: ``"completed"``, ``"failed"``, ``"interrupted"``, or ``"running"`` to
                leave the run open for a later resume.
            error: the exception (or its text) that ended a failed run.

        Raises:
            SnapshotError, RecordWriteError: a queued snapshot failed. The run is closed
                first and the failure is stored in its ``error`` attribute. When *error* is
                given (closing after a crash) it is not raised but stored and warned about,
                so it does not hide the crash.
        """
        if status not in fmt.STATUSES:
            raise ValueError(f"Recorder.close(status={status!r}): must be one of "
                             f"{fmt.STATUSES}")
        writer_error = None
        writer = self._writer
        if writer is not None and not self._closed:
            writer.stop()  # writes what is queued; without the lock, which it needs
            writer_error = self._drain()
        if writer_error is not None:
            lost = f"a snapshot was not written: {type(writer_error).__name__}: {writer_error}"
            if error is None:
                error = lost
            else:
                error = _describe(error) + f"; {lost}"
                warnings.warn(f"recordkit: {str(self._path)!r}: {lost}", RecordkitWarning,
                              stacklevel=2)
                writer_error = None
        self._close(status, error)
        if writer_error is not None:
            raise writer_error

    def _close(self, status: str, error: BaseException | str | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            f = self._file
            try:
                if f is not None and f.id.valid:
                    self._pending_commit_then_status(status, error)
            finally:
                if f is not None and f.id.valid:
                    with contextlib.suppress(Exception):
                        f.close()
                self._file = None
                if self._run_lock is not None:
                    self._run_lock.release()
                self._finalizer.detach()
                with self._pool_lock:
                    self._pool.clear()
            if status != "running":
                with contextlib.suppress(OSError):
                    mode = self._path.stat().st_mode
                    self._path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    def _pending_commit_then_status(self, status: str, error: BaseException | str | None
                                    ) -> None:
        f = self._file
        assert f is not None
        self._status = status
        with self._writing(f"close the run as {status}"):
            self._ensure_space(self._pending_bytes(), f"close the run as {status}")
            self._write_pending()
            attrs: dict[str, Any] = {"status": status}
            if status != "running":
                attrs["ended"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            if error is not None:
                attrs["error"] = _describe(error)
            fmt.write_root_attrs(f, attrs)
            if status != "running":
                fmt.write_summary(f)  # a table of many runs reads this one attribute
            f.flush()
            if self._durable:
                os.fsync(f.id.get_vfd_handle())

    def get(self, run_id: str) -> Any:
        """Load a run of this recorder's root by id (the old ``Record.get``)."""
        from recordkit.record import load

        return load(run_id, root=self._root)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted", error=exc)
        else:
            self.close("failed", error=exc)

    @staticmethod
    def _at_exit(ref: weakref.ref[Recorder]) -> None:
        rec = ref()
        if rec is not None and not rec._closed:
            with contextlib.suppress(Exception):
                rec.close("running")

    # --- internals ------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RecordClosedError(
                f"Recorder.{what}: run {self._run_id} at {str(self._path)!r} is closed "
                f"({self._status}); records are read-only once closed. Start a new "
                "Recorder, or pass resume=<run id> to continue this run"
            )

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        try:
            yield
        except RecordkitError:
            raise
        except OSError as err:
            raise self._write_error(err, what) from err
        except (RuntimeError, ValueError, KeyError) as err:  # h5py's other error types
            if "errno = " in str(err):  # a system call failed inside HDF5 (e.g. on flush)
                raise self._write_error(OSError(str(err)), what) from err
            raise RecordWriteError(
                f"cannot {what} in {str(getattr(self, '_path', self._root))!r}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _pending_bytes(self) -> int:
        return sum(len(rows) for rows in self._pending.values()) * fmt.HISTORY_DTYPE.itemsize

    def _ensure_space(self, nbytes: int, what: str) -> None:
        """Refuse a write the disk (or RLIMIT_FSIZE) cannot take, before HDF5 starts it.

        A write that fails inside HDF5 leaves the library unable to flush or close the
        file (and h5py can crash the process when it frees the handles), so the space is
        checked first; the record then stays as the last commit left it."""
        f = self._file
        if f is None:
            return
        needed = nbytes + nbytes // 16 + _SPACE_MARGIN  # chunk index, headers, heap
        free = self._free_space(needed)
        if free is not None and needed > free:
            error = RecordWriteError(
                f"cannot {what} in {str(self._path)!r}: the disk is full; it needs about "
                f"{_size(needed)} and {_size(free)} are free. Free space or choose another "
                "root; the epochs committed so far stay readable")
            error.errno = errno.ENOSPC
            raise error
        try:
            import resource
        except ImportError:  # pragma: no cover - Windows: no RLIMIT_FSIZE
            return
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        try:
            size = max(os.fstat(f.id.get_vfd_handle()).st_size, f.id.get_filesize())
        except Exception:
            return
        if size + needed > limit:
            error = RecordWriteError(
                f"cannot {what} in {str(self._path)!r}: the file is larger than this "
                f"process may write (RLIMIT_FSIZE / quota): it needs about {_size(needed)} "
                f"more and may grow by {_size(max(0, limit - size))}; the epochs committed "
                "so far stay readable")
            error.errno = errno.EFBIG
            raise error

    def _free_space(self, needed: int) -> int | None:
        """Free bytes on the record's disk. A commit of a few history rows asks every epoch;
        the ``statvfs`` call cost 15 % of such a commit, so a reading stays good for a
        second while the writes since it are far below what it found (above
        ``_SPACE_RECHECK`` to spare): a disk with little room is asked every time."""
        now = time.monotonic()
        last = self.__dict__.get("_space_reading")
        if last is not None:
            taken_at, free, used = last
            if (now - taken_at < 1.0 and free is not None
                    and free - used - needed > _SPACE_RECHECK):
                self._space_reading = (taken_at, free, used + needed)
                return free - used
        try:
            usage = os.statvfs(self._path.parent)
            free = usage.f_bavail * usage.f_frsize
        except OSError:
            free = None
        self._space_reading = (now, free, needed)
        return free

    def _check_file_still_there(self) -> None:
        """A removed file (or folder) takes writes without error until it is closed, and
        then they are lost: say so at the first commit after the removal."""
        f = self._file
        if f is None:
            return
        try:
            same = os.path.samestat(os.stat(self._path), os.fstat(f.id.get_vfd_handle()))
        except OSError:
            same = False
        if not same:
            error = RecordWriteError(
                f"cannot commit in {str(self._path)!r}: the record (or its folder) was "
                "removed or replaced while the run was being written; what it held is lost "
                "when the run closes. Restore the folder or start a new run")
            error.errno = errno.ENOENT
            raise error

    def _write_error(self, err: OSError, what: str) -> RecordWriteError:
        path = getattr(self, "_path", self._root)
        text = str(err)
        code = err.errno
        if code is None and "No space left" in text:
            code = errno.ENOSPC
        if code is None:  # HDF5 puts the errno in the message: "errno = 27, ..."
            found = re.search(r"errno = (\d+)", text)
            code = int(found.group(1)) if found else None
        if code == errno.ENOSPC:
            hint = "the disk is full; free space or choose another root"
            with contextlib.suppress(OSError):
                free = os.statvfs(Path(path).parent).f_bavail * os.statvfs(
                    Path(path).parent).f_frsize
                hint += f" ({free} bytes free)"
        elif code == errno.EFBIG:
            hint = "the file is larger than this process may write (RLIMIT_FSIZE / quota)"
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "the folder is not writable; choose another root"
        elif code == errno.ENOENT:
            hint = "the folder was removed while the run was being written"
        else:
            hint = text
        error = RecordWriteError(f"cannot {what} in {str(path)!r}: {hint}")
        error.errno = code
        return error


#: Bytes kept free beyond a write's data for HDF5's metadata (see Recorder._ensure_space).
_SPACE_MARGIN = 256 * 1024
#: HDF5 memory dataspaces of a history append, by row count (immutable once made).
_MEMORY_SPACES: dict[int, Any] = {}
#: A free-space reading is reused for a second only while this much more stays free.
_SPACE_RECHECK = 1024 ** 3


def _stored_spec(array: np.ndarray, dtype: str) -> tuple[np.dtype[Any], str]:
    """The numpy dtype and the dtype name a tensor is stored with (see cast_for_storage)."""
    bf16 = isinstance(array, fmt.BFloat16Bits) or array.dtype.name == fmt.BFLOAT16
    if dtype == "keep" or not (bf16 or array.dtype.kind == "f"):
        if bf16:
            return np.dtype(np.uint16), fmt.BFLOAT16
        return array.dtype, array.dtype.name
    if dtype == fmt.BFLOAT16:
        return np.dtype(np.uint16), fmt.BFLOAT16
    return np.dtype(np.float16), "float16"


def _stored_nbytes(array: np.ndarray, dtype: str) -> int:
    """Bytes a tensor takes once cast to the storage dtype."""
    if dtype != "keep" and (array.dtype.kind == "f" or isinstance(array, fmt.BFloat16Bits)):
        return int(array.size) * 2
    return int(array.nbytes)


def _slices(chunks: tuple[int, ...] | None, shape: tuple[int, ...], itemsize: int
            ) -> list[slice | None]:
    """Slices along a tensor's first axis, aligned to whole chunks, of about _SLICE_BYTES
    each; ``[None]`` when the tensor is written in one piece."""
    if not shape or chunks is None:
        return [None]
    row_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    if shape[0] * row_bytes <= _SLICE_BYTES:
        return [None]
    per_chunk = max(1, chunks[1])
    step = per_chunk * max(1, _SLICE_BYTES // max(1, per_chunk * row_bytes))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:  # a 1-element array or tensor
        arr = np.asarray(value)
        if arr.size == 1 and arr.dtype.kind in "biuf":
            return float(arr.reshape(()))
    except Exception:
        return None
    return None



def find_unfinished(root: str | os.PathLike[str], experiment: str, *, name: str | None,
                    params_hash: str, reached_epoch: int) -> Path | None:
    """The newest record of *experiment* under *root* that did not complete, has the
    given params hash (and name, when not None) and holds a metric row at
    *reached_epoch* or later: the run a restarted process continues. None when no such
    record can be read."""
    from recordkit.safety import check_file

    folder = Path(root) / experiment
    try:
        with os.scandir(folder) as entries:
            files = sorted((e.name for e in entries if e.name.endswith(".h5")
                            and not e.name.startswith(".") and e.is_file()), reverse=True)
    except OSError:
        return None
    found: list[tuple[str, str, Path]] = []
    for file_name in files:
        path = folder / file_name
        try:
            with h5py.File(str(path), "r", locking=False) as f:
                check_file(f, path)
                if not fmt.is_record(f) or fmt.attr_str(f, "status") == "completed":
                    continue
                if fmt.attr_str(f, "params_hash") != params_hash or (
                        name is not None and fmt.attr_str(f, "name") != name):
                    continue
                epochs = [int(rows["epoch"].max()) for rows in fmt.read_history(f).values()
                          if len(rows)]
                if epochs and max(epochs) >= reached_epoch:
                    found.append((fmt.attr_str(f, "created"), fmt.attr_str(f, "run_id"), path))
        except Exception:  # unreadable, damaged or unsafe: not a run to continue
            continue
    return max(found)[2] if found else None


def record_experiment(
    params: Mapping[str, Any] | argparse.Namespace,
    root: str | os.PathLike[str] = "records",
    observations: Mapping[str, Any] | None = None,
    title: str | None = None,
    *,
    experiment: str | None = None,
) -> str:
    """Record a finished experiment in one call (the older ``researcher`` API).

    Args:
        params: the hyperparameters; a ``title`` key becomes the run name when *title*
            is not given.
        root: folder of records.
        observations: ``{metric: values}`` where values is a list per epoch, a single
            number, or a list of per-fold lists. Per-epoch lists go to the history; every
            form is also kept as given, so ``Record.data["observations"]`` returns it.
        title: the run name.
        experiment: sub-folder; ``"default"`` when None.

    Returns:
        The run id. Running it twice with the same params gives two runs that share a
        params hash.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> run_id = record_experiment({"lr": 0.1}, root, observations={"loss": [1.0, 0.5]})
        >>> from recordkit import load
        >>> load(run_id, root=root).data["observations"]["loss"]
        [1.0, 0.5]
    """
    values = _params_of(params, "record_experiment(params=...)")
    if title is None and isinstance(values.get("title"), str):
        title = values["title"]
    # The params as given: the Recorder flags names that are not str.
    with Recorder(root, experiment=experiment, name=title, params=params) as rec:
        if observations:
            for metric, series in observations.items():
                for epoch, value in enumerate(_per_epoch(series)):
                    rec.log({metric: value}, epoch=epoch)
            rec.add("observations", dict(observations))
    return rec.run_id


def _per_epoch(series: Any) -> list[Any]:
    """The per-epoch values of an observation; folds are averaged for the history."""
    if isinstance(series, (list, tuple, np.ndarray)):
        items = list(series)
        if items and all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
            length = min(len(v) for v in items)
            return [float(np.nanmean([float(v[i]) for v in items])) for i in range(length)]
        return items
    return [series]


def _secret_keys(params: Mapping[str, Any], prefix: str,
                 active: set[int] | None = None) -> list[str]:
    """Dotted keys of params whose names look like secrets (recordkit.system's rule).
    *active*: ids of the mappings being walked, so a dict holding itself ends."""
    from recordkit.system import is_secret_name

    active = set() if active is None else active
    active.add(id(params))
    keys: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str):
            continue
        if is_secret_name(key) and value is not None and not isinstance(value, Mapping):
            keys.append(prefix + key)
        elif isinstance(value, Mapping) and id(value) not in active:
            keys.extend(_secret_keys(value, f"{prefix}{key}.", active))
    active.discard(id(params))
    return keys


def _masked_copy(params: Mapping[str, Any], copies: dict[int, dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """A copy of nested params with secret-looking values masked. *copies*: the copy made
    of each mapping so far, so a mapping holding itself gives a copy holding itself."""
    from recordkit.system import MASK, is_secret_name

    copies = {} if copies is None else copies
    copy: dict[str, Any] = {}
    copies[id(params)] = copy
    for key, value in params.items():
        if isinstance(value, Mapping):
            known = copies.get(id(value))
            copy[key] = known if known is not None else _masked_copy(value, copies)
        elif isinstance(key, str) and is_secret_name(key) and value is not None:
            copy[key] = MASK
        else:
            copy[key] = value
    return copy
