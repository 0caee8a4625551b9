"""The write side: one open run and its lifecycle (running → completed / failed / interrupted)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import os
import secrets
import stat
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
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
from recordkit.locking import RunLock
from recordkit.tensors import to_arrays

__all__ = ["Recorder", "new_run_id", "record_experiment"]

DEFAULT_EXPERIMENT = "default"
_COMPRESSIONS = (None, "gzip", "lzf")


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


def _params_of(args: Any, where: str) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        bad = [k for k in args if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: parameter names must be str. Received: {bad[:3]!r}")
        return dict(args)
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
        system: capture system info (once per run).
        checksum: fletcher32 checksums on history and weights, so damage is detected.
        compression: None (default), ``"gzip"`` or ``"lzf"`` for weights.
        compression_opts: e.g. the gzip level.
        chunk_bytes: target size of one chunk of a weight dataset.

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
        system: bool = True,
        checksum: bool = True,
        compression: str | None = None,
        compression_opts: Any = None,
        chunk_bytes: int = fmt.DEFAULT_CHUNK_BYTES,
    ) -> None:
        if compression not in _COMPRESSIONS:
            raise ValueError(
                f"Recorder(compression={compression!r}): must be one of {_COMPRESSIONS}"
            )
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1024:
            raise ValueError(
                f"Recorder(chunk_bytes={chunk_bytes!r}): must be an int >= 1024"
            )
        self._root = Path(root)
        self._durable = bool(durable)
        self._checksum = bool(checksum)
        self._compression = compression
        self._compression_opts = compression_opts
        self._chunk_bytes = chunk_bytes
        self._lock = threading.RLock()
        self._pending: dict[str, list[tuple[int, int, float, float]]] = {}
        self._last_epoch: dict[str, int] = {}
        self._epoch = -1
        self._status = "running"
        self._closed = False
        self._file: h5py.File | None = None
        self._run_lock: RunLock | None = None
        self._params: dict[str, Any] = _params_of(params, "Recorder(params=...)")
        if resume is not None:
            self._resume(resume, _check_experiment(experiment) if experiment else None,
                         _check_name("name", name))
        else:
            self._create(_check_experiment(experiment), _check_name("name", name), system)
        # Buffered rows are committed (status untouched) if the interpreter exits first.
        self._finalizer = weakref.finalize(self, Recorder._at_exit, weakref.ref(self))

    # --- creation -------------------------------------------------------------------------

    def _create(self, experiment: str, name: str | None, system: bool) -> None:
        folder = self._root / experiment
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RecordWriteError(
                f"cannot create the experiment folder {str(folder)!r}: {err.strerror}; "
                "choose a root you can write to"
            ) from err
        now = _dt.datetime.now(_dt.timezone.utc)
        for _attempt in range(5):
            run_id = new_run_id(now)
            path = folder / f"{run_id}.h5"
            self._run_lock = RunLock.acquire(path)
            try:
                self._file = fmt.new_file(str(path))
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
        document = self._encode_params(stacklevel=4)
        system_info = self._system_info() if system else {}
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
            self._file.require_group(fmt.HISTORY)
            self._file.create_dataset(
                fmt.SNAPSHOTS, shape=(0,), maxshape=(None,), dtype=fmt.SNAPSHOT_DTYPE,
                chunks=(fmt.HISTORY_CHUNK_ROWS,), fletcher32=self._checksum,
            )
            self._file.require_group(fmt.WEIGHTS)
            self._file.require_group(fmt.EXTRAS)
            self._file.flush()
        self._info: dict[str, Any] = {}

    def _system_info(self) -> dict[str, Any]:
        try:
            from recordkit import system

            return system.capture(self._root)
        except Exception as err:  # system info must never stop a run
            return {"notes": [f"system: {type(err).__name__}: {err}"]}

    def _resume(self, resume: str | os.PathLike[str], experiment: str | None,
                name: str | None) -> None:
        from recordkit.record import resolve_path

        path = resolve_path(resume, self._root, experiment)
        self._run_lock = RunLock.acquire(path)
        try:
            mode = path.stat().st_mode
            if not mode & stat.S_IWUSR:
                path.chmod(mode | stat.S_IWUSR)
            self._file = h5py.File(str(path), "r+", locking=False)
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
        old.update(self._params)
        self._params = old
        info_text = fmt.read_text(f, fmt.INFO)
        self._info = dict(fmt.loads_json(info_text)) if info_text else {}
        for metric, ds in fmt.members(f.get(fmt.HISTORY)):
            if len(ds):
                self._last_epoch[metric] = int(ds[-1]["epoch"])
        self._epoch = max(self._last_epoch.values(), default=-1)
        restarts = fmt.loads_json(fmt.attr_str(f, "restarts", "[]"))
        restarts.append({
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "previous_status": fmt.attr_str(f, "status"),
            "last_epoch": self._epoch,
            "pid": os.getpid(),
        })
        self._flagged = []
        document = self._encode_params(stacklevel=4)
        with self._writing("reopen the run"):
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
            self._params.update(_params_of(args, "Recorder.extend"))
            document = self._encode_params(stacklevel=4)
            with self._writing("write params"):
                self._write_params(document)

    def _encode_params(self, stacklevel: int) -> str:
        """Encode the params; warn once per key that is stored as its repr."""
        document, flagged = fmt.encode_params(self._params, warn=False)
        for key in flagged:
            if key not in self._flagged:
                warnings.warn(
                    f"recordkit: hyperparameter {key!r} cannot be stored faithfully; it is "
                    f"stored as its repr and flagged in {str(self._path)!r}",
                    RecordkitWarning, stacklevel=stacklevel,
                )
        self._flagged = flagged
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
                fmt.write_text(self._file, fmt.INFO, fmt.dumps_json(self._info))

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

    def snapshot(self, weights: Any, epoch: int | None = None, step: int | None = None) -> None:
        """Store one snapshot of every tensor in *weights*.

        Args:
            weights: ``{name: array}``, a torch Module or state_dict, or a Keras model.
            epoch: the epoch of the snapshot; the latest logged epoch when None (0 before
                any). A second snapshot of the same epoch replaces the first.
            step: the global step, when known.

        Raises:
            SnapshotError: a tensor changed shape or dtype since the first snapshot, or a
                tensor held in earlier snapshots is missing.
        """
        arrays = to_arrays(weights, copy=False)
        with self._lock:
            self._check_open("snapshot")
            if epoch is None:
                epoch = max(self._epoch, 0)
            self._write_snapshot(arrays, int(epoch), -1 if step is None else int(step))

    def _write_snapshot(self, arrays: Mapping[str, np.ndarray], epoch: int, step: int) -> None:
        f = self._file
        assert f is not None
        table = f[fmt.SNAPSHOTS]
        n = table.shape[0]
        index = n - 1 if n and int(table[n - 1]["epoch"]) == epoch else n
        weights = f[fmt.WEIGHTS]
        encoded = {}
        for name, array in arrays.items():
            try:
                encoded[name] = fmt.encode_tensor(np.asarray(array) if not isinstance(
                    array, fmt.BFloat16Bits) else array)
            except TypeError as err:
                raise SnapshotError(f"snapshot: tensor {name!r}: {err}") from None
        for key in weights:
            ds = weights[key]
            name = fmt.object_name(ds)
            if name not in encoded and ds.shape[0] > index:
                continue  # replacing a snapshot that did not hold this tensor either
            if name not in encoded and ds.shape[0] + int(ds.attrs["first_snapshot"]) > 0:
                raise SnapshotError(
                    f"snapshot at epoch {epoch}: tensor {name!r}, held in earlier snapshots "
                    f"of {str(self._path)!r}, is missing; snapshot the same tensors each time"
                )
        with self._writing(f"write the snapshot of epoch {epoch}"):
            for name, (array, stored_dtype) in encoded.items():
                ds = fmt.weight_dataset(
                    f, name, array, stored_dtype=stored_dtype, first_snapshot=index,
                    checksum=self._checksum, compression=self._compression,
                    compression_opts=self._compression_opts, chunk_bytes=self._chunk_bytes,
                )
                if ds.shape[1:] != array.shape or ds.dtype != array.dtype or (
                    fmt.attr_str(ds, "dtype") != stored_dtype
                ):
                    raise SnapshotError(
                        f"snapshot at epoch {epoch}: tensor {name!r} is {stored_dtype}"
                        f"{list(array.shape)} but earlier snapshots in {str(self._path)!r} "
                        f"hold {fmt.attr_str(ds, 'dtype')}{list(ds.shape[1:])}; a tensor must "
                        "keep its shape and dtype across snapshots"
                    )
                row = index - int(ds.attrs["first_snapshot"])
                if row >= ds.shape[0]:
                    ds.resize((row + 1, *ds.shape[1:]))
                ds[row] = array
            # The table row goes last: a reader trusts only snapshots the table lists.
            if index == n:
                table.resize((n + 1,))
            table[index] = (epoch, step, time.time())

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
                assert self._file is not None
                fmt.write_extra(self._file, key, value)

    def commit(self, durable: bool | None = None) -> None:
        """Write everything logged so far and flush it to the file.

        After commit returns, a process killed at any moment leaves these rows readable.

        Args:
            durable: also fsync, so a power loss keeps them; defaults to the recorder's
                ``durable`` option.
        """
        with self._lock:
            self._check_open("commit")
            self._commit(self._durable if durable is None else durable)

    def _commit(self, durable: bool) -> None:
        f = self._file
        assert f is not None
        with self._writing("commit"):
            for name, rows in self._pending.items():
                if rows:
                    ds = fmt.history_dataset(f, name, checksum=self._checksum)
                    fmt.append_rows(ds, np.array(rows, dtype=fmt.HISTORY_DTYPE))
            self._pending.clear()
            f.flush()
            if durable:
                os.fsync(f.id.get_vfd_handle())

    def rewind(self, epoch: int) -> None:
        """Drop history rows and snapshots of *epoch* and later, e.g. before a resumed run
        repeats those epochs, so that nothing is recorded twice."""
        with self._lock:
            self._check_open("rewind")
            f = self._file
            assert f is not None
            with self._writing(f"rewind to epoch {epoch}"):
                for name in list(self._pending):
                    self._pending[name] = [r for r in self._pending[name] if r[0] < epoch]
                self._last_epoch.clear()
                for name, ds in fmt.members(f[fmt.HISTORY]):
                    rows = ds[:]
                    kept = rows[rows["epoch"] < epoch]
                    if len(kept) < len(rows):
                        ds.resize((len(kept),))
                        if len(kept):
                            ds[:] = kept
                    epochs = [int(e) for e in kept["epoch"][-1:]]
                    epochs += [r[0] for r in self._pending.get(name, [])[-1:]]
                    if epochs:
                        self._last_epoch[name] = max(epochs)
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
        """
        if status not in fmt.STATUSES:
            raise ValueError(f"Recorder.close(status={status!r}): must be one of "
                             f"{fmt.STATUSES}")
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
            for name, rows in self._pending.items():
                if rows:
                    ds = fmt.history_dataset(f, name, checksum=self._checksum)
                    fmt.append_rows(ds, np.array(rows, dtype=fmt.HISTORY_DTYPE))
            self._pending.clear()
            attrs: dict[str, Any] = {"status": status}
            if status != "running":
                attrs["ended"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            if error is not None:
                attrs["error"] = (f"{type(error).__name__}: {error}"
                                  if isinstance(error, BaseException) else str(error))
            fmt.write_root_attrs(f, attrs)
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
            raise RecordWriteError(
                f"cannot {what} in {str(getattr(self, '_path', self._root))!r}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _write_error(self, err: OSError, what: str) -> RecordWriteError:
        path = getattr(self, "_path", self._root)
        text = str(err)
        code = err.errno
        if code is None and "No space left" in text:
            code = errno.ENOSPC
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
    with Recorder(root, experiment=experiment, name=title, params=values) as rec:
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
