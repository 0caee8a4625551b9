"""One run read back: :class:`Record`, an immutable view of one run file (small parts
read at once, weights and extras when asked for), and :func:`load`."""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recordkit.codec import decode_params, flatten_params, loads_json, params_hash
from recordkit.config import config_hash, merged_config, run_config
from recordkit.errors import RecordDamagedError, RecordkitError
from recordkit.format.files import RecordFile, close, is_open
from recordkit.format.layout import RUN_FIELDS, escape_name
from recordkit.format.safety import MAX_OBJECTS
from recordkit.format.safety import max_read_bytes as _read_cap
from recordkit.format.summary import finished_epochs, metric_summary
from recordkit.format.weights import StoredTensor, read_tensors_at
from recordkit.headercache import (
    FullHeader,
    LazyJSON,
    full_header_from_state,
    full_header_state,
    json_exact,
)
from recordkit.locking import is_locked
from recordkit.opening import (
    PARTS,
    check_params_hash,
    open_record,
    read_closed_summary,
    read_consistently,
    read_lazily,
    read_opened,
    read_parts,
    read_tensor,
    reading,
    recalled,
    remembered,
    settled_stat,
)
from recordkit.paths import resolve_path
from recordkit.views import Extras, History, TensorHistory

T = TypeVar("T")

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Record", "load"]

#: Types whose values are shared, not copied, by :meth:`Record.flat_params`.
_IMMUTABLE = (str, int, float, bool, type(None), np.generic)


def _copied(value: Any) -> Any:
    """A deep copy of decoded JSON (dicts and lists of plain values, each container
    held once): immutable values shared, other values deep-copied. ``copy.deepcopy``
    of the params of a million keys took 2 s."""
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is dict:
        return {key: item if isinstance(item, _IMMUTABLE) else _copied(item)
                for key, item in value.items()}
    if type(value) is list:
        return [item if isinstance(item, _IMMUTABLE) else _copied(item) for item in value]
    return copy.deepcopy(value)


#: The attribute of a Record that holds each part read on first use
#: (:data:`recordkit.opening.PARTS`).
_PART_ATTRS = {"system": "_system", "info": "_info", "history": "_history",
               "snapshots": "_snapshots", "tensors": "_tensors", "extras": "_extra_keys"}
_ATTR_PARTS = {attr: part for part, attr in _PART_ATTRS.items()}
#: Parts kept by :func:`~recordkit.opening.remembered` across opens of an unchanged file:
#: a table and two dicts of immutable values, each copied for its record.
_KEPT_PARTS = frozenset({"snapshots", "tensors", "extras"})


def _same_table(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two snapshot tables are the same rows."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


class Record:
    """An immutable view of one run file. Opening one reads its run fields and params
    only, whatever else it holds; each other part (system info, run facts, history,
    snapshot table, tensors, extras) is read, after the safety checks of that part, when
    first asked for, and weights and extras themselves when asked for.

    Use :func:`recordkit.load` to get one. Each lazy read opens the file for that read;
    inside ``with record:`` the file stays open for the block (faster for many reads).
    The params are decoded (and their hash compared) on first use too: a document of a
    million keys takes seconds to parse.
    """

    #: What a read of the file's root sets; a record opened from its summary (or from
    #: the header cache of one) reads it on first use of anything the summary lacks.
    _ROOT_FIELDS = frozenset({"_format_version", "_params_text"})

    # Set when read (the root by _read_full, each part by _read_parts, all by
    # from_cache_state); until then __getattr__ reads them on first use.
    _format_version: int
    _params_text: str
    _params: dict[str, Any]
    _walked: int
    _system: Any
    _info: Any
    _history: History
    _snapshots: np.ndarray
    _tensors: dict[str, StoredTensor]
    _extra_keys: dict[str, str]
    _config: dict[str, Any]

    def __init__(self, path: str | os.PathLike[str], *, lazy: bool = False,
                 max_read_bytes: int | None = None) -> None:
        """Open a record: its root (run fields, format) and params, with the safety
        checks of those; the rest on first use. With *lazy*, a closed run is opened from
        its one-attribute summary (run fields, params, metric summaries) instead: what
        ``load_all`` does to stay fast on thousands of runs (and the params of a run
        opened from its root are checked at once, so that a damaged one is skipped).
        *max_read_bytes*: see :func:`load`."""
        self._path = Path(path)
        self._h5: RecordFile | None = None
        self._summary: Mapping[str, Any] | None = None
        self._max_read_bytes = _read_cap(max_read_bytes, caller="load")
        if lazy and self._read_summary():
            return
        self._read_full()
        if lazy:
            self._params  # noqa: B018 - decoded and checked now

    def _read_summary(self) -> bool:
        """The fast path of a closed run: the root's ``summary`` attribute (and the
        sizes of the others), read with HDF5's low-level calls. False when the run has no
        usable summary (running, killed, too large, or not readable this way), and the
        full header is needed."""
        summary = read_closed_summary(self._path)
        if summary is None:
            return False
        try:
            self._fields = {k: str(summary["fields"].get(k, "")) for k in RUN_FIELDS}
            params_text = summary["params"]
            if self._fields["params_hash"] and params_hash(
                    params_text) != self._fields["params_hash"]:
                return False  # a damaged summary: the full read checks the params
            self._params = decode_params(params_text)
            self._unserialisable = list(loads_json(summary["unserialisable"]))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return False  # a damaged or forged summary: the full read says what is wrong
        if self._fields["status"] == "running":
            return False
        self._summary = summary
        return True

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set: a part not read yet, or the root of a
        # record opened from its summary.
        if "_path" in self.__dict__:
            if name == "_params":
                if "_params_text" not in self.__dict__:
                    try:
                        text = (self._summary.get("params")
                                if isinstance(self._summary, LazyJSON) else None)
                    except ValueError:  # (its line's CRC matched: not seen in practice)
                        text = None
                    if isinstance(text, str):  # kept by the header cache, from the file's
                        self._params_text = text
                    else:
                        self._read_full()
                self._params = self._decoded_params()
                return self._params
            if name in Record._ROOT_FIELDS:
                self._read_full()
                return self.__dict__[name]
            if name == "_config":  # params and facts under one set of names
                captured = (self._summary or {}).get("captured")
                self._config = (merged_config(self._params, captured)
                                if isinstance(captured, dict)  # no /info read
                                else run_config(self._params, self._info))
                return self._config
            part = _ATTR_PARTS.get(name)
            if part is not None:
                self._read_parts((part,))
                return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _read_full(self) -> None:
        """Read the root of the file (run fields, format) and the params, with their
        safety checks; what the summary said is superseded."""
        what = ("opened", self._max_read_bytes)
        opened = recalled(self._path, what)  # this file, read unchanged before
        if opened is None:
            before = settled_stat(self._path)
            opened = read_consistently(self._path, lambda f: remembered(
                f, what, lambda f: read_opened(f, self._path, check_params=False,
                                               max_read_bytes=self._max_read_bytes),
                before))
        self._summary = None
        self._fields = dict(opened.fields)  # (kept by remembered: not changed here)
        self._format_version = opened.format_version
        self._params_text = opened.params_text
        self.__dict__.pop("_params", None)  # decoded from this text on first use
        self._unserialisable = list(opened.unserialisable)
        self._walked = opened.walked
        self._params_hash_crcs = opened.params_hash_crcs

    def _kept_read(self, what: tuple[Any, ...],
                   read: Callable[[RecordFile, np.ndarray | None], tuple[T, int]],
                   table_of: Callable[[T], np.ndarray | None]) -> tuple[T, int]:
        """``read(file, table)`` of a part read on first use: (its value, the links the
        checks walked in all, from ``self._walked`` on); *table* is the snapshot table
        it counts snapshots by, None to read the file's own (``table_of(value)``).

        Outside a ``with record:`` block (whose open file's view may be older than the
        file) the value is the file's own, read with its own table: recalled when the
        same unchanged file gave it before in this process
        (:func:`~recordkit.opening.recalled`; if the links its checks walked still fit
        in what the bound on the walk leaves, :data:`~recordkit.format.safety.MAX_OBJECTS`),
        else read and kept. It is used when this record holds no table yet or the same
        one; else (the file changed since this record read its table) the part is read
        with this record's table, not kept. The caller copies what it keeps."""
        held = self.__dict__.get("_snapshots")
        if not is_open(self._h5):
            start = self._walked
            what = (*what, self._max_read_bytes)
            got = recalled(self._path, what)
            if got is None or start + got[1] > MAX_OBJECTS:
                def walked_here(f: RecordFile) -> tuple[T, int]:
                    value, walked = read(f, None)
                    return value, walked - start

                before = settled_stat(self._path)
                got = read_lazily(self._path, self._h5,
                                  lambda f: remembered(f, what, walked_here, before))
            value, links = got
            table = table_of(value)
            if held is None or table is None or _same_table(table, held):
                return value, start + links
        return read_lazily(self._path, self._h5, lambda f: read(f, held))

    def _decoded_params(self) -> dict[str, Any]:
        """The params text read with the root, its hash compared, decoded.

        Raises:
            RecordDamagedError: the text does not match its hash, or is not a params
                document.
        """
        text = self._params_text
        self._fields["params_hash"] = check_params_hash(
            self._path, text, self._fields["params_hash"],
            self.__dict__.get("_params_hash_crcs", ()))
        try:
            return decode_params(text)
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            raise RecordDamagedError(
                f"{str(self._path)!r} is damaged: its params (/params) are not a params "
                f"document ({type(err).__name__}: {err}); run `recordkit verify` on it"
            ) from None

    def _read_parts(self, parts: tuple[str, ...]) -> None:
        """Read the parts not read yet among *parts* (and the snapshot table the tensors
        need), in one open of the file, each after its safety checks."""
        if "_format_version" not in self.__dict__:  # opened from its summary
            self._read_full()
        missing = tuple(p for p in parts if _PART_ATTRS[p] not in self.__dict__)
        if not missing:
            return

        def read(f: RecordFile, table: np.ndarray | None) -> tuple[dict[str, Any], int]:
            return read_parts(f, self._path, missing, snapshots=table, walked=self._walked,
                              max_read_bytes=self._max_read_bytes)

        # The table, the tensors and the extras are kept for the next open of the same
        # unchanged file (as the root is): values no caller changes, copied below. The
        # tensors' snapshot counts come from the table read with them.
        kept = set(missing) <= _KEPT_PARTS
        if kept:
            got = self._kept_read(("parts", missing), read, lambda values: values.get(
                "snapshots") if "tensors" in missing else None)
        else:
            got = read_lazily(self._path, self._h5, lambda f: read(
                f, self.__dict__.get("_snapshots")))
        values, walked = got
        self._walked = walked
        for part, value in values.items():
            if _PART_ATTRS[part] not in self.__dict__:
                setattr(self, _PART_ATTRS[part], History(value) if part == "history"
                        else value.copy() if kept else value)

    # --- the header cache (recordkit.headercache) --------------------------------------------

    def cache_state(self, *, summary_only: bool = False) -> dict[str, Any] | None:
        """What was read of the header, as JSON-able values, for
        :meth:`from_cache_state`; None when the run is running (it still changes) or
        something in it has no exact JSON form (the run is then read from its file).
        *summary_only*: None, rather than every part read and checked, for a run
        without a usable summary (what the run index keeps of a run, with no cache)."""
        if self._fields["status"] == "running":
            return None
        state: dict[str, Any] = {
            "fields": dict(self._fields),
            # the decoded params when JSON gives them back exactly, else decoded again
            # from the stored text
            "params": self._params if json_exact(self._params) else None,
            "unserialisable": list(self._unserialisable),
        }
        if self._summary is not None:
            summary = dict(self._summary)  # (a LazyJSON of the header cache: parsed)
            if not json_exact(summary):
                return None
            state["summary"] = summary
            return state
        if summary_only:
            return None
        self._read_parts(PARTS)  # every part, each with its checks
        header = full_header_state(FullHeader(
            self._format_version, self._params_text, self._system, self._info,
            dict(self._history.rows_by_metric()), self._snapshots, self._tensors,
            self._extra_keys))
        if header is None:
            return None
        state["header"] = header
        state["params_hash_crcs"] = list(self.__dict__.get("_params_hash_crcs", ()))
        return state

    @classmethod
    def from_cache_state(cls, path: str | os.PathLike[str], state: Mapping[str, Any], *,
                         max_read_bytes: int | None = None) -> Record:
        """The record *path* held when :meth:`cache_state` gave *state*, when the header
        cache gave it (:meth:`recordkit.headercache.HeaderCache.get`), or, for a state
        ``{"summary": summary}``, when its summary attribute was *summary* (the run index
        gives it: :mod:`recordkit.runindex`; checked as :class:`Record` checks a file's).
        *max_read_bytes*: see :func:`load`, for what is read of it later.

        Raises:
            KeyError, TypeError, ValueError: *state* is not one :meth:`cache_state` gives.
        """
        record = cls.__new__(cls)
        record._path = path if isinstance(path, Path) else Path(path)
        record._h5 = None
        record._summary = None
        record._max_read_bytes = _read_cap(max_read_bytes, caller="load_all")
        if state.keys() == {"summary"}:  # the run index's: checked as a file's summary is
            summary = state["summary"]
            record._fields = {k: str(summary["fields"].get(k, "")) for k in RUN_FIELDS}
            text = summary["params"]
            if record._fields["status"] == "running" or (
                    record._fields["params_hash"]
                    and params_hash(text) != record._fields["params_hash"]):
                raise ValueError("a running run, or params that do not match their hash")
            record._params = decode_params(text)
            record._unserialisable = list(loads_json(summary["unserialisable"]))
            record._summary = dict(summary)
            return record
        # As cache_state wrote them: load_all checks the run fields (check_fields) of
        # every record it returns, cached or not.
        record._fields = dict(state["fields"])
        record._unserialisable = list(state["unserialisable"])
        summary = state.get("summary")
        if isinstance(summary, LazyJSON):  # the header cache's: parsed on first use
            # the params text too (taken from it), then decoded and its hash compared
            record._summary = summary
            return record
        params = state["params"]
        if "summary" in state:
            summary = state["summary"]
            record._params = (decode_params(summary["params"]) if params is None
                              else dict(params))
            record._summary = dict(summary)
            return record
        header = full_header_from_state(state["header"])
        record._params_text = header.params_text
        record._params = decode_params(header.params_text) if params is None else dict(params)
        record._format_version = header.format_version
        record._system = header.system
        record._info = header.info
        record._history = History(header.history)
        record._snapshots = header.snapshots
        record._tensors = header.tensors
        record._extra_keys = header.extra_keys
        record._walked = 0  # every part is here: nothing more is checked
        record._params_hash_crcs = tuple(int(c) for c in state.get("params_hash_crcs", ()))
        return record

    # --- run fields -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def run_id(self) -> str:
        return self._fields["run_id"]

    @property
    def name(self) -> str:
        return self._fields["name"]

    @property
    def experiment(self) -> str:
        return self._fields["experiment"]

    @property
    def stored_status(self) -> str:
        """The status as written in the file."""
        return self._fields["status"]

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``interrupted``, ``pruned`` (a sweep's engine stopped
        it early: ``optuna.TrialPruned``), or ``running`` while a live process writes the
        run. A file left ``running`` by a process that died reads as ``interrupted``."""
        status = self._fields["status"]
        if status == "running" and not is_locked(self._path):
            return "interrupted"
        return status

    @property
    def error(self) -> str:
        """``"Type: message"`` of the exception that ended a failed run, else ``""``."""
        return self._fields["error"]

    @property
    def created(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self._fields["created"])

    @property
    def ended(self) -> _dt.datetime | None:
        text = self._fields["ended"]
        return _dt.datetime.fromisoformat(text) if text else None

    @property
    def restarts(self) -> list[dict[str, Any]]:
        """One entry per time the run was resumed to go on training (reopenings that only
        added an evaluation's results are in :attr:`evaluations`)."""
        return [entry for entry in self._reopenings() if "evaluation" not in entry]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """One entry per evaluation recorded into this run, in order: what the callback
        wrote to ``info["evaluations"]`` (stage, epoch, time, metrics, results) when it
        did, else the reopenings marked as evaluations (``Recorder(evaluation=...)``)."""
        listed = self.info.get("evaluations")
        if isinstance(listed, list) and all(isinstance(e, dict) for e in listed):
            return [dict(e) for e in listed]
        return [entry for entry in self._reopenings() if "evaluation" in entry]

    def _reopenings(self) -> list[dict[str, Any]]:
        entries = loads_json(self._fields["restarts"] or "[]")
        return [dict(e) if isinstance(e, dict) else {"entry": e} for e in entries]

    @property
    def params(self) -> dict[str, Any]:
        return _copied(self._params)

    def flat_params(self) -> dict[str, Any]:
        """The params flattened to dotted keys (``{"optimizer.lr": 0.1}``), a new dict;
        immutable values (numbers, strings) are shared with the record, containers are
        copies. Cheaper than ``flatten_params(record.params)`` for tables of many runs.

        Example:
            >>> import tempfile, recordkit as rk
            >>> root = tempfile.mkdtemp()
            >>> run_id = rk.record_experiment({"opt": {"lr": 0.1}, "seed": 1}, root)
            >>> rk.load(run_id, root=root).flat_params()
            {'opt.lr': 0.1, 'seed': 1}
        """
        flat = flatten_params(self._params)
        for key, value in flat.items():
            if not isinstance(value, _IMMUTABLE):
                flat[key] = _copied(value)
        return flat

    @property
    def fields(self) -> Mapping[str, str]:
        """The run fields as stored (``run_id``, ``name``, ``experiment``, ``status``,
        ``created``, ``ended``, ``error``, ``params_hash``, ``recordkit_version``,
        ``restarts``), as text, read-only; a missing one is ``""``."""
        return types.MappingProxyType(self._fields)

    @property
    def unserialisable_params(self) -> list[str]:
        """Keys of params stored as their repr because they could not be stored faithfully."""
        return list(self._unserialisable)

    @property
    def params_hash(self) -> str:
        """Identifies the parameter set (independent of key order); repeated runs of one
        configuration share it."""
        crcs = self.__dict__.get("_params_hash_crcs", ())
        if len(crcs) == 2 and crcs[0] != crcs[1]:
            self._params  # noqa: B018 - a change of the params may have been cut: checked
        return self._fields["params_hash"]

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration: its params flattened to dotted keys, then the facts
        the callbacks captured under one set of names whatever the framework
        (``framework``, ``model``, ``parameters``, ``optimizer``, ``lr``, ``batch_size``,
        ``epochs``, ``precision``, ``seed``, ...; :mod:`recordkit.config`). A param wins a
        name clash; the captured value then shows as ``captured.<key>``. A new dict.

        Example:
            >>> import tempfile, recordkit as rk
            >>> root = tempfile.mkdtemp()
            >>> run_id = rk.record_experiment({"opt": {"lr": 0.1}, "seed": 1}, root)
            >>> rk.load(run_id, root=root).config
            {'opt.lr': 0.1, 'seed': 1}
        """
        return _copied(self._config)

    @property
    def config_hash(self) -> str:
        """Identifies the configuration without what differs between repeats of it
        (seeds, run ids and names, paths, times; :func:`recordkit.config.config_hash`):
        repeated runs share it, runs of other configurations do not."""
        return config_hash(self._config)

    @property
    def system(self) -> dict[str, Any]:
        return _copied(self._system)

    @property
    def info(self) -> dict[str, Any]:
        """Facts about the run written by the integrations (trainer, optimizer, model)."""
        return _copied(self._info)

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
        return self._history.frame(level)

    def metric_summaries(self) -> dict[str, dict[str, Any]]:
        """Per metric: ``count``, ``final``, ``final_epoch``, finite ``min`` / ``max`` and
        their epochs (None when the metric has no finite value), ``epoch_level``. Read from
        the run's summary when it was opened from one, without reading the history."""
        if self._summary is not None:
            # one level of scalars each (JSON numbers, null, bools): a copy per metric
            return {name: dict(stats) for name, stats in self._summary["metrics"].items()}
        return {name: metric_summary(rows)
                for name, rows in self._history.rows_by_metric().items()}

    @property
    def epoch_count(self) -> int:
        """How many epochs the run finished: those with an epoch-level row of some metric
        (an epoch a crashed run began but did not end is not counted;
        :func:`~recordkit.format.summary.finished_epochs`)."""
        if self._summary is not None:
            return int(self._summary.get("epochs", 0))
        return len(finished_epochs(self._history.rows_by_metric()))

    # --- weights ---------------------------------------------------------------------------

    @property
    def snapshot_epochs(self) -> list[int]:
        """Epochs that have weights, in snapshot order (an epoch snapshotted at several
        steps, e.g. at each validation, is listed once per snapshot)."""
        return [int(e) for e in self._snapshots["epoch"]]

    @property
    def snapshot_steps(self) -> list[int]:
        """The global step of each snapshot, in snapshot order (-1 where not known)."""
        return [int(s) for s in self._snapshots["step"]]

    @property
    def tensor_names(self) -> list[str]:
        """Names of the tensors snapshots hold, aliases of tied tensors included."""
        return [name for name, tensor in self._tensors.items() if tensor.count]

    @property
    def tensor_aliases(self) -> dict[str, str]:
        """Tied tensors, ``{alias: tensor}``: names the record stores once, as one tensor
        (a state_dict gave one tensor under both). :meth:`weights` gives back one array
        under both names, as the state_dict had it."""
        # a tensor's own dataset is named after it; a packed one is named in its pack
        owner = {(tensor.key, tensor.offset): name for name, tensor in self._tensors.items()
                 if (tensor.member == name if tensor.size is not None
                     else escape_name(name) == tensor.key)}
        return {name: owner[at] for name, tensor in self._tensors.items()
                if (at := (tensor.key, tensor.offset)) in owner and owner[at] != name}

    def weight(self, name: str) -> TensorHistory:
        """All snapshots of one tensor, read lazily (the first use of a tensor reads and
        checks that one, not the list of every tensor)."""
        tensor = self._one_tensor(name)
        if tensor is None:
            try:
                tensor = self._tensors[name]
            except KeyError:
                known = ", ".join(repr(k) for k in list(self._tensors)[:20]) or "none"
                raise KeyError(f"no tensor {name!r} in {str(self._path)!r}; tensors: "
                               f"{known}") from None
        return TensorHistory(name, tensor, tensor.epochs(self._snapshots), self._path,
                             self._file, held=lambda: is_open(self._h5))

    def _one_tensor(self, name: str) -> StoredTensor | None:
        """The tensor *name* when the list of every tensor was not read: that one read
        and checked alone (kept for the next use); None when the list was read, or the
        file does not name it as recordkit does (the list then says what there is)."""
        if "_tensors" in self.__dict__:
            return None
        known = self.__dict__.setdefault("_tensor_of", {})
        if name in known:
            return known[name]
        if "_format_version" not in self.__dict__:  # opened from its summary
            self._read_full()

        def read(f: RecordFile, table: np.ndarray | None
                 ) -> tuple[tuple[StoredTensor | None, np.ndarray], int]:
            tensor, read_table, walked = read_tensor(f, self._path, name, snapshots=table,
                                                     walked=self._walked,
                                                     max_read_bytes=self._max_read_bytes)
            return (tensor, read_table), walked

        # the tensor's snapshot count comes from the table read with it
        got = self._kept_read(("tensor", name), read, lambda value: value[1])
        (tensor, table), walked = got
        self._walked = walked
        if "_snapshots" not in self.__dict__:
            self._snapshots = table.copy()  # (kept by remembered: not shared)
        if tensor is not None:
            known[name] = tensor
        return tensor

    def weights(self, epoch: int = -1) -> dict[str, np.ndarray]:
        """Every tensor of one snapshot: ``epoch=-1`` is the last snapshot, otherwise the
        snapshot taken at that epoch (its last, when the epoch has several)."""
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
        tensors = self._tensors  # read (and checked) before the file is opened for the rows
        with self._file(f"the snapshot at epoch {self.snapshot_epochs[index]}") as f:
            # each dataset row read once: a tied tensor's, a pack's for all its members
            return read_tensors_at(f, tensors, index, self._path)

    # --- extras and plain data --------------------------------------------------------------

    @property
    def extras(self) -> Mapping[str, Any]:
        """What ``Recorder.add`` stored, read on access."""
        return Extras(self._extra_keys, self._file)

    @property
    def unserialisable_extras(self) -> dict[str, list[str]]:
        """Per extra: the keys inside it stored as their repr, not faithfully (extras
        stored faithfully are left out). ``Recorder.add`` warned about each."""
        return Extras(self._extra_keys, self._file).flagged()

    @property
    def data(self) -> dict[str, Any]:
        """A plain dict: params, run fields and ``observations`` (metric → list of values),
        the shape the older ``researcher`` tool gave."""
        data: dict[str, Any] = self.params
        fields = {
            "run_id": self.run_id, "name": self.name, "title": self.name,
            "experiment": self.experiment, "status": self.status,
            "created": self._fields["created"], "timestamp": self._fields["created"],
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

    def _file(self, what: str = "") -> contextlib.AbstractContextManager[RecordFile]:
        """The open file for one lazy read (of *what*, for messages): the one a ``with
        record:`` block keeps open, else opened for this read only (see
        :func:`recordkit.opening.reading`)."""
        return reading(self._path, self._h5, what)

    def close(self) -> None:
        """Release the file handle a ``with`` block keeps open. Safe to call twice."""
        if self._h5 is not None:
            if is_open(self._h5):
                close(self._h5)
            self._h5 = None

    def __enter__(self) -> Record:
        """Keep the file open for many lazy reads (faster); closed at the end of the block."""
        if not is_open(self._h5):
            self._h5 = open_record(self._path)
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
        try:
            snapshots: object = (self._summary.get("snapshots", "?")
                                 if self._summary is not None else len(self._snapshots))
            epochs: object = self.epoch_count
        except RecordkitError:  # a damaged or refused part: said when it is asked for
            snapshots = epochs = "?"
        return (f"<recordkit.Record {self.name!r} run_id={self.run_id} status={self.status} "
                f"epochs={epochs} snapshots={snapshots} "
                f"at {str(self._path)!r}>")

    @property
    def epochs(self) -> list[int]:
        """Every epoch that has at least one metric value, sorted."""
        seen: set[int] = set()
        for rows in self._history.rows_by_metric().values():
            seen.update(int(e) for e in rows["epoch"])
        return sorted(seen)


def load(path_or_run_id: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
         *, max_read_bytes: int | None = None) -> Record:
    """Open one record: a path, or a run id (or a unique prefix of one) under *root*.

    Args:
        path_or_run_id: the record's path, or its run id (or a unique prefix) under *root*.
        root: the folder of records a run id is looked up in.
        max_read_bytes: the most bytes one read of compressed data may expand to beyond
            8 times the file's size (a decompression bomb is refused before it is read);
            by default ``$RECORDKIT_MAX_READ_BYTES``, else 1 GiB. Raise it for a trusted
            record of very compressible data. Reads of uncompressed data are bounded by
            the file's size whatever the cap.

    Raises:
        RecordNotFoundError: nothing at that path, or no such run under root.
        NotARecordError: the file is not a record.
        RecordDamagedError: the file is a damaged record.
        UnsafeRecordError: the file reaches outside itself or claims more than it holds
            (checked, part by part, on the first read of each).
        ValueError: *max_read_bytes* is not a positive int.
    """
    return Record(resolve_path(path_or_run_id, root), max_read_bytes=max_read_bytes)
