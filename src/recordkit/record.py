"""The read side: an immutable view of one run file, lazy on weights."""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from recordkit.codec import decode_params, loads_json, params_hash
from recordkit.dtypes import decode_tensor
from recordkit.errors import (
    NotARecordError,
    RecordBusyError,
    RecordDamagedError,
    RecordkitError,
    RecordNotFoundError,
)
from recordkit.format.attrs import attr_str, is_record, object_name, read_attr, read_text
from recordkit.format.chunkread import read_snapshot
from recordkit.format.extras import extra_flags, read_extra
from recordkit.format.filters import ensure_readable
from recordkit.format.history import read_history
from recordkit.format.layout import (
    EXTRAS,
    FORMAT_NAME,
    FORMAT_VERSION,
    HISTORY_DTYPE,
    INFO,
    PARAMS,
    RUN_FIELDS,
    SNAPSHOT_DTYPE,
    SNAPSHOTS,
    SYSTEM,
    WEIGHTS,
)
from recordkit.format.summary import metric_summary, read_summary
from recordkit.locking import is_locked
from recordkit.paths import resolve_path
from recordkit.safety import check_file, check_layout, check_root
from recordkit.verify import damage_hint, open_interrupted

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["History", "Record", "TensorHistory", "load"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _has_hdf5_signature(path: Path) -> bool:
    """HDF5's superblock signature sits at byte 0, 512, 1024, 2048, ..."""
    try:
        with open(path, "rb") as fh:
            offset = 0
            size = os.fstat(fh.fileno()).st_size
            while offset < min(size, 1 << 20):
                fh.seek(offset)
                if fh.read(8) == _HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


@functools.cache
def _read_only_access() -> h5py.h5p.PropFAID:
    """What ``h5py.File(path, "r", locking=False)`` opens with, made once: h5py builds
    it anew for every file, a tenth of opening a small record."""
    plist = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    plist.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    plist.set_file_locking(False, ignore_when_disabled=False)
    return plist


def _open_read_only(path: Path) -> h5py.h5f.FileID:
    """HDF5's own open, read-only and without file locking; OSError when it fails."""
    return h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=_read_only_access())


def open_h5(path: Path) -> h5py.File:
    """Open a record file read-only, turning every failure into a RecordkitError."""
    patched = open_interrupted(path)  # a killed flush's stale end address, read around
    if patched is not None:
        return patched
    try:
        return h5py.File(_open_read_only(path))
    except OSError as err:
        if not path.exists():
            raise RecordNotFoundError(f"no record at {str(path)!r}") from None
        if path.is_dir():
            raise NotARecordError(f"{str(path)!r} is a folder, not a record file; "
                                  "use recordkit.load_all for a folder of runs") from None
        if "locking flag values don't match" in str(err):
            # Already open in this process through plain h5py, whose default locking
            # HDF5 will not mix with ours: share that setting instead.
            try:
                return h5py.File(str(path), "r")
            except OSError:
                pass
        if not _has_hdf5_signature(path):
            raise NotARecordError(
                f"{str(path)!r} is not a recordkit record (not an HDF5 file)"
            ) from None
        if is_locked(path):
            raise RecordBusyError(
                f"{str(path)!r} is being written by another process and could not be read "
                f"consistently ({err}); try again in a moment"
            ) from None
        raise RecordDamagedError(
            f"{str(path)!r} is damaged and cannot be opened ({err}); "
            f"{damage_hint(path, err)}"
        ) from None


class History(Mapping[str, np.ndarray]):
    """Per-metric history: ``history[name]`` is the values, in logging order.

    Each metric keeps its own epochs (and steps): ``history.epochs(name)``.
    """

    def __init__(self, rows: Mapping[str, np.ndarray]) -> None:
        self._rows = dict(rows)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._rows[name]["value"].copy()
        except KeyError:
            known = ", ".join(repr(k) for k in list(self._rows)[:20]) or "none"
            raise KeyError(f"no metric {name!r}; metrics: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"History({', '.join(f'{k!r}: {len(v)} rows' for k, v in self._rows.items())})"

    def rows(self, name: str) -> np.ndarray:
        """The structured rows (epoch, step, value, time) of one metric."""
        self[name]  # raises the helpful KeyError
        return self._rows[name].copy()

    def epochs(self, name: str) -> np.ndarray:
        return self.rows(name)["epoch"]

    def steps(self, name: str) -> np.ndarray:
        return self.rows(name)["step"]

    def times(self, name: str) -> np.ndarray:
        return self.rows(name)["time"]

    def final(self, name: str) -> float:
        values = self[name]
        return float(values[-1]) if len(values) else float("nan")

    def is_epoch_level(self, name: str) -> bool:
        """One row per epoch (as opposed to step-level metrics, many rows per epoch)."""
        epochs = self.epochs(name)
        return len(np.unique(epochs)) == len(epochs)


def _weight_dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """A weight dataset, its compression filters made available (hdf5plugin, lazily)."""
    ds = f[WEIGHTS][key]
    ensure_readable(ds, path)
    return ds


def _read_snapshot(ds: h5py.Dataset, index: int) -> np.ndarray:
    """One snapshot of a weight dataset: straight from its chunks when it has the plain
    layout (checksums verified by :mod:`recordkit.chunkread`), else through HDF5."""
    data = read_snapshot(ds, index)
    return ds[index] if data is None else data


class TensorHistory:
    """The snapshots of one tensor, read lazily: ``r.weight("fc.weight")[3]`` reads the
    bytes of that one snapshot only."""

    def __init__(self, record: Record, name: str, key: str, epochs: np.ndarray,
                 stored_dtype: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._record = record
        self.name = name
        self._key = key
        self.epochs = epochs
        self._stored_dtype = stored_dtype
        self.shape = shape
        self.dtype_name = stored_dtype
        self._dtype = dtype

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        return (f"<TensorHistory {self.name!r} {self.dtype_name}{list(self.shape)} "
                f"× {len(self)} snapshots>")

    def __getitem__(self, index: int | slice) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            positions = range(*index.indices(n))
            if not positions:
                return decode_tensor(np.zeros((0, *self.shape), dtype=self._dtype),
                                         self._stored_dtype)
            with self._record._file() as f:
                ds = _weight_dataset(f, self._key, self._record.path)
                if positions.step > 0:
                    data = ds[positions.start:positions.stop:positions.step]
                else:
                    data = np.stack([ds[i] for i in positions])
            return decode_tensor(data, self._stored_dtype)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"snapshot index {i} out of range: tensor {self.name!r} has "
                             f"{n} snapshots (epochs {self.epochs.tolist()[:10]})")
        with self._record._file() as f:
            data = _read_snapshot(_weight_dataset(f, self._key, self._record.path), i % n)
        return decode_tensor(data, self._stored_dtype)

    def at(self, epoch: int) -> np.ndarray:
        """The snapshot taken at *epoch*."""
        hits = np.nonzero(self.epochs == epoch)[0]
        if not len(hits):
            raise KeyError(f"tensor {self.name!r} has no snapshot at epoch {epoch}; "
                           f"snapshot epochs: {self.epochs.tolist()}")
        return self[int(hits[-1])]


class Record:
    """An immutable view of one run file. Small parts are read at once; weights and
    extras are read when asked for.

    Use :func:`recordkit.load` to get one. Each lazy read opens the file for that read;
    inside ``with record:`` the file stays open for the block (faster for many reads).
    """

    #: What the full header holds; a record opened from its summary reads it on first use.
    _HEADER_FIELDS = frozenset({"_system", "_info", "_history", "_snapshots", "_tensors",
                                "_rows", "_extra_keys", "_format_version"})

    def __init__(self, path: str | os.PathLike[str], *, lazy: bool = False) -> None:
        """Open a record. With *lazy*, a closed run is opened from its one-attribute
        summary (run fields, params, metric summaries) and the rest is read on first use:
        what ``load_all`` does to stay fast on thousands of runs."""
        self._path = Path(path)
        self._h5: h5py.File | None = None
        self._summary: dict[str, Any] | None = None
        if lazy and self._read_summary():
            return
        self._read_full()

    def _read_summary(self) -> bool:
        """The fast path of a closed run: the root's ``summary`` attribute (and the
        sizes of the others), read with HDF5's low-level calls. False when the run has no
        usable summary (running, killed, too large, or not readable this way), and the
        full header is needed."""
        # A file whose superblock a killed flush left short (open_interrupted) needs no
        # patched view here: a read within the old end address gets the same bytes, and
        # an open or a read past it fails, which sends the run to the full read, which
        # patches.
        try:
            fid = _open_read_only(self._path)
        except Exception:
            return False  # missing, not HDF5, busy, damaged: the full read says which
        try:
            check_root(fid, self._path)
            # Root attributes only: no link is followed and no dataset read. The rest of
            # the file is checked (check_file) when the full header is first needed.
            summary = read_summary(fid)
            if summary is None:
                return False
            if "format" in summary:  # it says what the root's attributes say
                known = (summary["format"], summary.get("format_version"))
            else:
                known = (FORMAT_NAME if is_record(fid) else "",
                         int(read_attr(fid, "format_version", 0)))
            if known != (FORMAT_NAME, FORMAT_VERSION):
                return False
        except RecordkitError:
            raise
        except Exception:
            return False  # the full read says what is wrong
        finally:
            fid.close()
        try:
            self._attrs = {k: str(summary["fields"].get(k, "")) for k in RUN_FIELDS}
            if self._attrs["params_hash"] and params_hash(
                    summary["params"]) != self._attrs["params_hash"]:
                return False  # a damaged summary: the full read checks the params
            self._params = decode_params(summary["params"])
            self._unserialisable = list(loads_json(summary["unserialisable"]))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return False  # a damaged or forged summary: the full read says what is wrong
        if self._attrs["status"] == "running":
            return False
        self._summary = summary
        return True

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set: the header of a record opened lazily.
        if name in Record._HEADER_FIELDS and "_path" in self.__dict__:
            self._read_full()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _read_full(self) -> None:
        last_error: RecordkitError | None = None
        # A run being written can be caught mid-write; a live writer is given a moment.
        for attempt in range(3):
            try:
                with open_h5(self._path) as f:
                    self._read_header(f)
                return
            except RecordBusyError as err:
                last_error = err
                time.sleep(0.05 * (attempt + 1))
            except RecordkitError:
                raise
            except Exception as err:
                if is_locked(self._path):
                    last_error = RecordBusyError(
                        f"{str(self._path)!r} is being written by another process and could "
                        f"not be read consistently ({type(err).__name__}: {err}); try again"
                    )
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise RecordDamagedError(
                    f"{str(self._path)!r} is damaged: {type(err).__name__}: {err}; "
                    f"{damage_hint(self._path, err)}"
                ) from None
        assert last_error is not None
        raise last_error

    def _read_header(self, f: h5py.File) -> None:
        self._summary = None  # the full header supersedes it
        check_file(f, self._path)  # refuses links outside the file, crafted sizes
        check_layout(f, self._path)
        if not is_record(f):
            raise NotARecordError(
                f"{str(self._path)!r} is an HDF5 file but not a recordkit record "
                "(no root attribute format='recordkit')"
            )
        version = int(read_attr(f, "format_version", 0))
        if version > FORMAT_VERSION:
            raise NotARecordError(
                f"{str(self._path)!r} is a record of format version {version}; this "
                f"recordkit reads up to version {FORMAT_VERSION}: upgrade recordkit"
            )
        self._attrs = {k: attr_str(f, k) for k in (
            "run_id", "name", "experiment", "status", "created", "ended", "error",
            "params_hash", "recordkit_version", "restarts")}
        self._format_version = version
        params_text = read_text(f, PARAMS) or "{}"
        self._check_params_hash(params_text, self._attrs["params_hash"])
        self._params = decode_params(params_text)
        flagged = f[PARAMS].attrs.get("unserialisable", "[]") if PARAMS in f else "[]"
        self._unserialisable = list(loads_json(
            flagged.decode() if isinstance(flagged, bytes) else flagged))
        self._system = loads_json(read_text(f, SYSTEM) or "{}")
        self._info = loads_json(read_text(f, INFO) or "{}")
        self._history = History(read_history(f))
        table = f[SNAPSHOTS][()] if SNAPSHOTS in f else np.zeros(
            0, SNAPSHOT_DTYPE)
        self._snapshots = table
        self._tensors: dict[str, tuple[str, str, tuple[int, ...], np.dtype, int]] = {}
        self._rows: dict[str, int] = {}
        weights = f.get(WEIGHTS)
        for key in weights if weights is not None else []:
            ds = weights[key]
            name = object_name(ds)
            first = int(ds.attrs.get("first_snapshot", 0))
            # Rows past the snapshot table were written by a commit that did not finish.
            self._rows[name] = max(0, min(ds.shape[0], len(table) - first))
            self._tensors[name] = (key, attr_str(ds, "dtype", ds.dtype.name),
                                   tuple(ds.shape[1:]), ds.dtype, first)
        extras = f.get(EXTRAS)
        self._extra_keys = {} if extras is None else {
            object_name(extras[k]): k for k in extras}

    def _check_params_hash(self, text: str, stored: str) -> None:
        """The params text carries no HDF5 checksum; its hash in the root attribute
        ``params_hash`` is one. A mismatch is damage, never params read as other values."""
        if not stored:  # a file that never had one: nothing to compare
            return
        try:
            same = params_hash(text) == stored
        except ValueError:  # not even JSON any more
            same = False
        if not same:
            raise RecordDamagedError(
                f"{str(self._path)!r} is damaged: its params (/params) do not match the "
                f"params_hash {stored!r} written with them, so the stored bytes changed; "
                f"run `recordkit verify` on it")

    # --- run fields -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def run_id(self) -> str:
        return self._attrs["run_id"]

    @property
    def name(self) -> str:
        return self._attrs["name"]

    @property
    def experiment(self) -> str:
        return self._attrs["experiment"]

    @property
    def stored_status(self) -> str:
        """The status as written in the file."""
        return self._attrs["status"]

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``interrupted``, or ``running`` while a live process
        writes the run. A file left ``running`` by a process that died reads as
        ``interrupted``."""
        status = self._attrs["status"]
        if status == "running" and not is_locked(self._path):
            return "interrupted"
        return status

    @property
    def error(self) -> str:
        """``"Type: message"`` of the exception that ended a failed run, else ``""``."""
        return self._attrs["error"]

    @property
    def created(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self._attrs["created"])

    @property
    def ended(self) -> _dt.datetime | None:
        text = self._attrs["ended"]
        return _dt.datetime.fromisoformat(text) if text else None

    @property
    def restarts(self) -> list[dict[str, Any]]:
        """One entry per time the run was resumed."""
        return list(loads_json(self._attrs["restarts"] or "[]"))

    @property
    def params(self) -> dict[str, Any]:
        return copy.deepcopy(self._params)

    @property
    def unserialisable_params(self) -> list[str]:
        """Keys of params stored as their repr because they could not be stored faithfully."""
        return list(self._unserialisable)

    @property
    def params_hash(self) -> str:
        """Identifies the parameter set (independent of key order); repeated runs of one
        configuration share it."""
        return self._attrs["params_hash"]

    @property
    def system(self) -> dict[str, Any]:
        return copy.deepcopy(self._system)

    @property
    def info(self) -> dict[str, Any]:
        """Facts about the run written by the integrations (trainer, optimizer, model)."""
        return copy.deepcopy(self._info)

    @property
    def format_version(self) -> int:
        return self._format_version

    # --- history ---------------------------------------------------------------------------

    @property
    def history(self) -> History:
        return self._history

    @property
    def metrics(self) -> list[str]:
        return list(self._history)

    def history_frame(self, level: str = "epoch") -> pd.DataFrame:
        """The history as a pandas DataFrame.

        Args:
            level: ``"epoch"``: one row per epoch, a column per epoch-level metric (metrics
                logged at other rates hold NaN where they have no value);
                ``"step"``: one row per step, a column per metric logged with steps;
                ``"long"``: one row per logged value (metric, epoch, step, value, time).
        """
        pd = _pandas()
        if level == "long":
            fields = HISTORY_DTYPE.names or ()
            frames = [pd.DataFrame({"metric": name, **{k: rows[k] for k in fields}})
                      for name, rows in self._history._rows.items()]
            if not frames:
                return pd.DataFrame(columns=["metric", "epoch", "step", "value", "time"])
            return pd.concat(frames, ignore_index=True)
        if level not in ("epoch", "step"):
            raise ValueError(f"history_frame(level={level!r}): must be 'epoch', 'step' "
                             "or 'long'")
        columns: dict[str, Any] = {}
        for name, rows in self._history._rows.items():
            if level == "epoch" and self._history.is_epoch_level(name):
                columns[name] = pd.Series(rows["value"], index=rows["epoch"])
            elif level == "step" and (rows["step"] >= 0).any():
                chosen = rows[rows["step"] >= 0]
                series = pd.Series(chosen["value"], index=chosen["step"])
                columns[name] = series[~series.index.duplicated(keep="last")]
        frame = pd.DataFrame(columns)
        frame.index.name = level
        return frame.sort_index()

    def metric_summaries(self) -> dict[str, dict[str, Any]]:
        """Per metric: ``count``, ``final``, ``final_epoch``, finite ``min`` / ``max`` and
        their epochs (None when the metric has no finite value), ``epoch_level``. Read from
        the run's summary when it was opened from one, without reading the history."""
        if self._summary is not None:
            # one level of scalars each (JSON numbers, null, bools): a copy per metric
            return {name: dict(stats) for name, stats in self._summary["metrics"].items()}
        return {name: metric_summary(rows) for name, rows in self._history._rows.items()}

    @property
    def epoch_count(self) -> int:
        """How many distinct epochs have at least one metric value."""
        if self._summary is not None:
            return int(self._summary.get("epochs", 0))
        return len(self.epochs)

    # --- weights ---------------------------------------------------------------------------

    @property
    def snapshot_epochs(self) -> list[int]:
        """Epochs that have weights, in snapshot order."""
        return [int(e) for e in self._snapshots["epoch"]]

    @property
    def tensor_names(self) -> list[str]:
        return [name for name, rows in self._rows.items() if rows]

    def weight(self, name: str) -> TensorHistory:
        """All snapshots of one tensor, read lazily."""
        try:
            key, stored, shape, dtype, first = self._tensors[name]
        except KeyError:
            known = ", ".join(repr(k) for k in list(self._tensors)[:20]) or "none"
            raise KeyError(f"no tensor {name!r} in {str(self._path)!r}; tensors: {known}"
                           ) from None
        rows = self._rows[name]
        epochs = self._snapshots["epoch"][first:first + rows] if rows else np.zeros(
            0, np.int64)
        return TensorHistory(self, name, key, np.asarray(epochs, dtype=np.int64),
                             stored, shape, dtype)

    def weights(self, epoch: int = -1) -> dict[str, np.ndarray]:
        """Every tensor of one snapshot: ``epoch=-1`` is the last snapshot, otherwise the
        snapshot taken at that epoch."""
        epochs = self.snapshot_epochs
        if not epochs:
            raise KeyError(f"{str(self._path)!r} holds no weight snapshots")
        if epoch == -1:
            index = len(epochs) - 1
        elif epoch in epochs:
            index = len(epochs) - 1 - epochs[::-1].index(epoch)
        else:
            raise KeyError(f"no snapshot at epoch {epoch} in {str(self._path)!r}; "
                           f"snapshot epochs: {epochs}")
        out: dict[str, np.ndarray] = {}
        with self._file() as f:
            for name, (key, stored, _, _, first) in self._tensors.items():
                rows = self._rows[name]
                if rows and first <= index < first + rows:
                    ds = _weight_dataset(f, key, self._path)
                    out[name] = decode_tensor(_read_snapshot(ds, index - first), stored)
        return out

    # --- extras and plain data --------------------------------------------------------------

    @property
    def extras(self) -> Mapping[str, Any]:
        """What ``Recorder.add`` stored, read on access."""
        return _Extras(self)

    @property
    def unserialisable_extras(self) -> dict[str, list[str]]:
        """Per extra: the keys inside it stored as their repr, not faithfully (extras
        stored faithfully are left out). ``Recorder.add`` warned about each."""
        if not self._extra_keys:
            return {}
        out: dict[str, list[str]] = {}
        with self._file() as f:
            group = f[EXTRAS]
            for name, key in self._extra_keys.items():
                flagged = extra_flags(group[key])
                if flagged:
                    out[name] = flagged
        return out

    @property
    def data(self) -> dict[str, Any]:
        """A plain dict: params, run fields and ``observations`` (metric → list of values),
        the shape the older ``researcher`` tool gave."""
        data: dict[str, Any] = self.params
        fields = {
            "run_id": self.run_id, "name": self.name, "title": self.name,
            "experiment": self.experiment, "status": self.status,
            "created": self._attrs["created"], "timestamp": self._attrs["created"],
            "hash": self.params_hash,
        }
        for key, value in fields.items():
            data.setdefault(key, value)
        observations = {name: self._history[name].tolist() for name in self._history}
        if "observations" in self._extra_keys:
            stored = self.extras["observations"]
            if isinstance(stored, Mapping):
                observations.update(stored)
        data["observations"] = observations
        return data

    # --- file handle ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _file(self) -> Iterator[h5py.File]:
        """The open file: the one a ``with record:`` block keeps open, else opened for
        this read only (a handle left open would clash with plain h5py in this process)."""
        try:
            if self._h5 is not None and self._h5.id.valid:
                yield self._h5
                return
            with open_h5(self._path) as f:
                yield f
        except RecordkitError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            # Damage found by a lazy read (e.g. a fletcher32 checksum): say where and what.
            raise RecordDamagedError(
                f"{str(self._path)!r} is damaged: reading it failed with "
                f"{type(err).__name__}: {err}; {damage_hint(self._path, err)}"
            ) from None

    def close(self) -> None:
        """Release the file handle a ``with`` block keeps open. Safe to call twice."""
        if self._h5 is not None:
            if self._h5.id.valid:
                self._h5.close()
            self._h5 = None

    def __enter__(self) -> Record:
        """Keep the file open for many lazy reads (faster); closed at the end of the block."""
        if self._h5 is None or not self._h5.id.valid:
            self._h5 = open_h5(self._path)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        snapshots = (self._summary.get("snapshots", "?") if self._summary is not None
                     else len(self._snapshots))
        return (f"<recordkit.Record {self.name!r} run_id={self.run_id} status={self.status} "
                f"epochs={self.epoch_count} snapshots={snapshots} "
                f"at {str(self._path)!r}>")

    @property
    def epochs(self) -> list[int]:
        """Every epoch that has at least one metric value, sorted."""
        seen: set[int] = set()
        for rows in self._history._rows.values():
            seen.update(int(e) for e in rows["epoch"])
        return sorted(seen)


class _Extras(Mapping[str, Any]):
    def __init__(self, record: Record) -> None:
        self._record = record

    def __getitem__(self, key: str) -> Any:
        try:
            escaped = self._record._extra_keys[key]
        except KeyError:
            known = ", ".join(repr(k) for k in self._record._extra_keys) or "none"
            raise KeyError(f"no extra {key!r}; extras: {known}") from None
        with self._record._file() as f:
            return read_extra(f[EXTRAS][escaped])

    def __iter__(self) -> Iterator[str]:
        return iter(self._record._extra_keys)

    def __len__(self) -> int:
        return len(self._record._extra_keys)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "recordkit needs pandas for data frames: pip install 'recordkit[analysis]'"
        ) from err
    return pd


def load(path_or_run_id: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
         ) -> Record:
    """Open one record: a path, or a run id (or a unique prefix of one) under *root*.

    Raises:
        RecordNotFoundError: nothing at that path, or no such run under root.
        NotARecordError: the file is not a record.
        RecordDamagedError: the file is a damaged record.
    """
    return Record(resolve_path(path_or_run_id, root))
