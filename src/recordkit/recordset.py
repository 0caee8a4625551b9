"""Many runs: scan a folder of records, filter them, summarise them as a table."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from recordkit.codec import decode_value, encode_value, flatten_params
from recordkit.errors import RecordkitError, RecordkitWarning, RecordNotFoundError
from recordkit.paths import record_files
from recordkit.record import History, Record, _pandas
from recordkit.safety import check_fields

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ParamsComparison", "RecordSet", "load_all", "metric_mode"]

_MAXIMISED = re.compile(
    r"(acc|accuracy|auc|f1|precision|recall|score|iou|dice|r2|map|bleu|rouge|reward|return)",
    re.IGNORECASE,
)


def metric_mode(name: str) -> str:
    """``"max"`` for metrics that grow when better (accuracy, auc, f1, ...), else ``"min"``.

    Example:
        >>> metric_mode("val/accuracy"), metric_mode("val_loss")
        ('max', 'min')
    """
    return "max" if _MAXIMISED.search(name) and "loss" not in name.lower() else "min"


class RecordSet(Sequence[Record]):
    """An ordered collection of records, oldest first.

    Example:
        >>> import tempfile, recordkit as rk
        >>> root = tempfile.mkdtemp()
        >>> for lr in (0.1, 0.01):
        ...     _ = rk.record_experiment({"lr": lr}, root, observations={"loss": [1.0, lr]})
        >>> rs = rk.load_all(root)
        >>> [r.params["lr"] for r in rs.filter(lr=0.01)]
        [0.01]
    """

    def __init__(self, records: Iterable[Record] = (), *,
                 skipped: Iterable[tuple[Path, str]] = ()) -> None:
        self._records = sorted(records, key=lambda r: (r._attrs["created"], r.run_id))
        self.skipped: list[tuple[Path, str]] = list(skipped)
        """Files under the root that could not be read, with the reason."""

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> RecordSet: ...

    def __getitem__(self, index: int | slice) -> Record | RecordSet:
        if isinstance(index, slice):
            return RecordSet(self._records[index])
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"<recordkit.RecordSet of {len(self)} runs>"

    def get(self, run_id: str) -> Record:
        """The run with this id (or unique id prefix)."""
        hits = [r for r in self._records if r.run_id.startswith(run_id)]
        if len(hits) != 1:
            raise RecordNotFoundError(
                f"{'no' if not hits else 'more than one'} run matches {run_id!r} in this set"
            )
        return hits[0]

    def filter(self, predicate: Callable[[Record], bool] | None = None, /, *,
               status: str | Sequence[str] | None = None, **params: Any) -> RecordSet:
        """The runs whose params equal every given value (nested keys in dotted form,
        ``**{"optimizer.lr": 0.1}``), with one of the given statuses, and for which
        *predicate* is true."""
        statuses = {status} if isinstance(status, str) else set(status or ())
        kept = []
        for record in self._records:
            if statuses and record.status not in statuses:
                continue
            if params:
                flat = flatten_params(record._params)
                if any(key not in flat or not _equal(flat[key], value)
                       for key, value in params.items()):
                    continue
            if predicate is not None and not predicate(record):
                continue
            kept.append(record)
        return RecordSet(kept)

    def best(self, metric: str, mode: str | None = None) -> Record:
        """The run with the best value of *metric* at any epoch.

        Args:
            metric: a metric name.
            mode: ``"min"`` or ``"max"``; by default ``"max"`` for accuracy-like names
                (see :func:`metric_mode`), else ``"min"``.

        Raises:
            RecordkitError: no run in the set has a finite value of *metric*.

        Example:
            >>> import tempfile, recordkit as rk
            >>> root = tempfile.mkdtemp()
            >>> for lr in (0.1, 0.01):
            ...     _ = rk.record_experiment({"lr": lr}, root, observations={"loss": [1.0, lr]})
            >>> rk.load_all(root).best("loss").params["lr"]
            0.01
        """
        mode = _check_mode(metric, mode)
        best: tuple[float, Record] | None = None
        for record in self._records:
            found = _best_of(record, metric, mode)
            if found is None:
                continue
            value = found[0]
            if best is None or (value < best[0] if mode == "min" else value > best[0]):
                best = (value, record)
        if best is None:
            known = sorted({m for r in self._records for m in r.metric_summaries()})
            raise RecordkitError(
                f"RecordSet.best({metric!r}): no run of the {len(self)} in this set has a "
                f"finite value of {metric!r}; metrics: {known[:20]}"
            )
        return best[1]

    def groups(self, *params: str) -> dict[tuple[Any, ...], RecordSet]:
        """The runs grouped by the values of *params* (dotted keys for nested params), or
        by params hash (repeated runs of one configuration) when none are given. Keys are
        tuples of the values (``(params_hash,)`` without *params*); a missing param is
        None."""
        grouped: dict[tuple[Any, ...], list[Record]] = {}
        for record in self._records:
            if params:
                flat = flatten_params(record._params)
                key = tuple(_hashable(flat.get(p)) for p in params)
            else:
                key = (record.params_hash,)
            grouped.setdefault(key, []).append(record)
        return {key: RecordSet(records) for key, records in grouped.items()}

    def group_by(self, *params: str) -> pd.DataFrame:
        """Mean and spread of each metric over the runs of each group.

        Args:
            params: param names (dotted for nested params) to group by; without any, runs
                are grouped by params hash, i.e. repeated runs of one configuration.

        Returns:
            A row per group: the grouping values (or ``params_hash`` and the params of that
            configuration), ``runs`` (how many), ``run_ids``, and for each metric
            ``<metric>.final.mean``, ``.final.std``, ``.best.mean``, ``.best.std`` (the
            sample standard deviation; NaN for a group of one run).

        Example:
            >>> import tempfile, recordkit as rk
            >>> root = tempfile.mkdtemp()
            >>> for seed, final in ((0, 0.2), (1, 0.4), (0, 0.9)):
            ...     lr = 0.1 if final < 0.5 else 0.01
            ...     _ = rk.record_experiment({"lr": lr, "seed": seed}, root,
            ...                              observations={"loss": [1.0, final]})
            >>> table = rk.load_all(root).group_by("lr")
            >>> table[["lr", "runs"]].values.tolist(), table["loss.final.mean"].round(3).tolist()
            ([[0.1, 2.0], [0.01, 1.0]], [0.3, 0.9])
        """
        pd = _pandas()
        rows = []
        for key, members in self.groups(*params).items():
            summary = pd.DataFrame([summary_row(r) for r in members])
            row: dict[str, Any] = {}
            if params:
                row.update(zip(params, key))
            else:
                row["params_hash"] = key[0]
                for name, value in flatten_params(members[0]._params).items():
                    row.setdefault(name, _cell(value))
            row["runs"] = len(members)
            row["run_ids"] = [r.run_id for r in members]
            for column in summary.columns:
                if column.endswith((".final", ".best")):
                    values = pd.to_numeric(summary[column], errors="coerce")
                    row[f"{column}.mean"] = float(values.mean())
                    row[f"{column}.std"] = float(values.std()) if len(values) > 1 else math.nan
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dataframe(self) -> pd.DataFrame:
        """A row per run: run fields, flattened params, and for each metric its final
        value, best value and epoch of the best (``<metric>.final``, ``.best``,
        ``.best_epoch``; best is the minimum, or the maximum for accuracy-like names)."""
        pd = _pandas()
        rows = [summary_row(r) for r in self._records]
        return pd.DataFrame(rows)

    def history_frame(self) -> pd.DataFrame:
        """Every logged value of every run in long form: a row per (run, metric, logged
        value) with columns ``run_id``, ``name``, ``metric``, ``epoch``, ``step``,
        ``value``. Handy for ``seaborn.lineplot`` or ``groupby``.

        Example:
            >>> import tempfile, recordkit as rk
            >>> root = tempfile.mkdtemp()
            >>> _ = rk.record_experiment({"lr": 0.1}, root, observations={"loss": [1.0, 0.5]})
            >>> rk.load_all(root).history_frame()[["metric", "epoch", "value"]].values.tolist()
            [['loss', 0, 1.0], ['loss', 1, 0.5]]
        """
        pd = _pandas()
        columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("run_id", "name", "metric", "epoch", "step", "value")}
        for record in self._records:
            for metric, rows in record.history._rows.items():
                n = len(rows)
                columns["run_id"].append(np.full(n, record.run_id, dtype=object))
                columns["name"].append(np.full(n, record.name, dtype=object))
                columns["metric"].append(np.full(n, metric, dtype=object))
                columns["epoch"].append(rows["epoch"])
                columns["step"].append(rows["step"])
                columns["value"].append(rows["value"])
        empty = {"epoch": np.int64, "step": np.int64, "value": np.float64}
        return pd.DataFrame({
            k: np.concatenate(v) if v else np.zeros(0, dtype=empty.get(k, object))
            for k, v in columns.items()
        })

    def compare(self, a: Record | str, b: Record | str) -> ParamsComparison:
        """The params two runs share and those that differ (flattened, dotted keys).

        Args:
            a, b: records, or run ids (or unique prefixes) of runs in this set.

        Example:
            >>> import tempfile, recordkit as rk
            >>> root = tempfile.mkdtemp()
            >>> a = rk.record_experiment({"lr": 0.1, "width": 8}, root)
            >>> b = rk.record_experiment({"lr": 0.2, "width": 8, "seed": 1}, root)
            >>> c = rk.load_all(root).compare(a, b)
            >>> c.differ, c.shared, c.only_b
            ({'lr': (0.1, 0.2)}, {'width': 8}, {'seed': 1})
        """
        ra = a if isinstance(a, Record) else self.get(a)
        rb = b if isinstance(b, Record) else self.get(b)
        fa, fb = flatten_params(ra._params), flatten_params(rb._params)
        differ = {k: (fa[k], fb[k]) for k in fa if k in fb and not _same(fa[k], fb[k])}
        shared = {k: fa[k] for k in fa if k in fb and _same(fa[k], fb[k])}
        return ParamsComparison(
            differ=differ, shared=shared,
            only_a={k: v for k, v in fa.items() if k not in fb},
            only_b={k: v for k, v in fb.items() if k not in fa},
        )

    def close(self) -> None:
        for record in self._records:
            record.close()


@dataclasses.dataclass(frozen=True)
class ParamsComparison:
    """What :meth:`RecordSet.compare` returns: flattened params of two runs."""

    differ: dict[str, tuple[Any, Any]]
    """Params both runs have, with different values: ``{key: (value in a, value in b)}``."""
    shared: dict[str, Any]
    """Params both runs have with equal values."""
    only_a: dict[str, Any]
    """Params only the first run has."""
    only_b: dict[str, Any]
    """Params only the second run has."""


def _check_mode(metric: str, mode: str | None) -> str:
    if mode is None:
        return metric_mode(metric)
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r}: must be 'min', 'max' or None (from the metric name)")
    return mode


def _best_of(record: Record, metric: str, mode: str) -> tuple[float, int] | None:
    """(best finite value, its epoch) of one run, or None when it has none.

    Taken from the run's metric summary (:meth:`Record.metric_summaries`), which a
    finished run opened by ``load_all`` holds without reading its history: the finite
    minimum or maximum (NaN and inf never win) and the epoch of its first occurrence."""
    stats = record.metric_summaries().get(metric)
    if stats is None or stats.get(mode) is None:
        return None
    return float(stats[mode]), int(stats[f"{mode}_epoch"])


def _same(a: Any, b: Any) -> bool:
    try:
        result = a == b
        if isinstance(result, np.ndarray):
            return bool(result.all()) and np.shape(a) == np.shape(b)
        return bool(result)
    except Exception:
        return False


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return str(value)
    return value


def _cell(value: Any) -> Any:
    """A param value as a table cell: containers as text, scalars as they are."""
    return str(value) if isinstance(value, (list, dict, set, tuple, np.ndarray)) else value


def summary_row(record: Record) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": record.run_id,
        "name": record.name,
        "experiment": record.experiment,
        "status": record.status,
        "created": record.created,
        "params_hash": record.params_hash,
        "epochs": record.epoch_count,
    }
    for key, value in flatten_params(record._params).items():
        column = key if key not in row else f"params.{key}"
        row[column] = value if not isinstance(value, (list, dict, set, np.ndarray)) else str(
            value)
    for metric, stats in record.metric_summaries().items():
        mode = metric_mode(metric)
        best = stats[mode]
        final = stats["final"]
        row[f"{metric}.final"] = math.nan if final is None else float(final)
        row[f"{metric}.best"] = math.nan if best is None else float(best)
        row[f"{metric}.best_epoch"] = -1 if best is None else int(stats[f"{mode}_epoch"])
    return row


def _equal(stored: Any, wanted: Any) -> bool:
    try:
        return bool(stored == wanted)
    except Exception:
        return False


def load_all(root: str | os.PathLike[str] = "records", experiment: str | None = None,
             *, cache: bool = True, progress: bool = False) -> RecordSet:
    """Every record under *root* (or under one experiment), oldest first.

    Files that cannot be read are left out with a warning naming each, and listed in
    ``RecordSet.skipped``.

    Args:
        root: folder of records (``<root>/<experiment>/<run_id>.h5``).
        experiment: only this experiment's folder.
        cache: reuse the headers read last time for files whose size, mtime and inode
            have not changed (finished runs only). The cache is a JSON file per folder in
            the user's cache folder (``$RECORDKIT_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/recordkit``, else ``~/.cache/recordkit``), never inside the
            folder of records, so a folder from a stranger cannot bring its own; the
            variable ``RECORDKIT_CACHE=0`` turns it off.
        progress: show a progress bar (tqdm, when installed) on stderr.

    Raises:
        RecordNotFoundError: *root* (or the experiment folder) does not exist.
    """
    base = Path(root)
    if base.is_file():
        raise RecordNotFoundError(f"{str(base)!r} is a file, not a folder of records; "
                                  "open one run with recordkit.load (`recordkit show`)")
    if not base.is_dir():
        raise RecordNotFoundError(f"no folder of records at {str(base)!r}")
    if experiment is not None and not (base / experiment).is_dir():
        known = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise RecordNotFoundError(
            f"no experiment {experiment!r} under {str(base)!r}; experiments: {known}"
        )
    use_cache = cache and os.environ.get("RECORDKIT_CACHE", "1") not in ("0", "false", "")
    caches: dict[Path, _HeaderCache] = {}
    records, skipped = [], []
    files = record_files(base, experiment)
    for path in _progress(files, progress):
        header_cache = None
        if use_cache:
            header_cache = caches.get(path.parent)
            if header_cache is None:
                header_cache = caches[path.parent] = _HeaderCache(path.parent)
        try:
            record = header_cache.get(path) if header_cache is not None else None
            cached = record is not None
            if record is None:
                record = Record(path, lazy=True)
            # The run fields of a run opened from its summary were not checked with the
            # root attributes: a forged summary is refused here, not by a property later.
            check_fields(record._attrs, path)
            if header_cache is not None and not cached:
                header_cache.put(path, record)
            records.append(record)
        except RecordkitError as err:
            skipped.append((path, str(err)))
            warnings.warn(f"recordkit: skipped {str(path)!r}: {err}", RecordkitWarning,
                          stacklevel=2)
    for header_cache in caches.values():
        header_cache.save()
    return RecordSet(records, skipped=skipped)


def _progress(files: list[Path], show: bool) -> Iterable[Path]:
    if show and len(files) > 1:
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:
            return files
        return tqdm(files, desc="reading records", unit="run", leave=False)
    return files


# --- the header cache -------------------------------------------------------------------------
#
# Opening a record and walking its header with h5py costs a few milliseconds, most of it in
# the safety checks; a sweep of thousands of runs takes seconds. A finished run never
# changes, so what its header held is kept, as JSON (no pickle), per folder, keyed by file
# name and checked against the file's size, mtime and inode. The cache holds the Record's
# header attributes generically, so new attributes need no change here; a change of
# the reading code (record.py, format.py, safety.py: size and mtime) discards the cache.

_CACHE_VERSION = 2
#: Cache files (one per folder of records) kept; the least recently used go first.
_CACHE_FILES = 200


class _Uncacheable(Exception):
    pass


def _cache_dir() -> Path:
    explicit = os.environ.get("RECORDKIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recordkit"


def _code_stamp() -> list[int | str]:
    """Changes whenever the code that reads a header (record, format, safety) changes."""
    stamp: list[int | str] = [_CACHE_VERSION]
    for name in ("record.py", "format.py", "safety.py"):
        try:
            st = (Path(__file__).parent / name).stat()
            stamp += [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp.append("unknown")
    return stamp


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class _HeaderCache:
    """The cached headers of the records in one folder."""

    def __init__(self, folder: Path) -> None:
        import hashlib

        self._folder = folder.resolve()
        digest = hashlib.sha256(str(self._folder).encode("utf-8", "surrogateescape"))
        self._file = _cache_dir() / f"headers-{digest.hexdigest()[:24]}.json"
        self._entries: dict[str, Any] = {}
        self._seen: set[str] = set()
        self._dirty = False
        try:
            document = json.loads(self._file.read_text(encoding="utf-8"))
            if document.get("code") == _code_stamp() and document.get("folder") == str(
                    self._folder):
                self._entries = dict(document["entries"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._entries = {}

    def get(self, path: Path) -> Record | None:
        self._seen.add(path.name)
        entry = self._entries.get(path.name)
        if entry is None:
            return None
        try:
            if entry["stamp"] != _file_stamp(path):
                return None
            record = Record.__new__(Record)
            for name, frozen in entry["state"].items():
                setattr(record, name, _thaw(frozen))
            record._path = path
            record._h5 = None
            return record
        except Exception:  # a stale or foreign entry: read the file instead
            return None

    def put(self, path: Path, record: Record) -> None:
        if record.stored_status == "running":  # still changing
            self._entries.pop(path.name, None)
            return
        try:
            state = {name: _freeze(value) for name, value in vars(record).items()
                     if name not in ("_path", "_h5")}
            stamp = _file_stamp(path)
        except (_Uncacheable, OSError):
            return
        self._entries[path.name] = {"stamp": stamp, "state": state}
        self._dirty = True

    def save(self) -> None:
        stale = set(self._entries) - self._seen
        if stale:
            for name in stale:
                del self._entries[name]
            self._dirty = True
        if not self._dirty:
            return
        document = {"code": _code_stamp(), "folder": str(self._folder),
                    "entries": self._entries}
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._file.with_name(f"{self._file.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(document), encoding="utf-8")
            os.replace(temporary, self._file)
            _prune(self._file.parent)
        except OSError:  # a cache that cannot be written only costs speed
            pass


def _prune(folder: Path, keep: int = _CACHE_FILES) -> None:
    """Keep the cache files of the *keep* folders read most recently (temporary folders
    of tests and notebooks would otherwise pile up)."""
    files = list(folder.glob("headers-*.json"))
    if len(files) <= keep:
        return
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def _freeze(value: Any) -> Any:
    """A Record attribute as JSON; raises _Uncacheable for what it cannot hold exactly."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, History):
        return {"$history": {name: _freeze(rows) for name, rows in value._rows.items()}}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise _Uncacheable
        dtype = value.dtype.descr if value.dtype.names else value.dtype.str
        return {"$array": [dtype, list(value.shape), value.tolist()]}
    if isinstance(value, np.dtype):
        if value.hasobject:
            raise _Uncacheable
        return {"$dtype": value.descr if value.names else value.str}
    if isinstance(value, tuple):
        return {"$tuple": [_freeze(v) for v in value]}
    if _plain(value):  # e.g. a summary, system info: kept as it is, thawed by json alone
        return {"$json": value}
    if isinstance(value, list):
        return [_freeze(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$map": {k: _freeze(v) for k, v in value.items()}}
    flagged: list[str] = []
    encoded = encode_value(value, "", flagged)
    if flagged:
        raise _Uncacheable
    return {"$leaf": encoded}


def _plain(value: Any) -> bool:
    """Whether json gives *value* back as it is: dicts with str keys, lists, str, int,
    float (NaN and inf too) and bool of exactly those types, and None."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return True
    if kind is list:
        return all(_plain(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def _dtype_of(spec: Any) -> np.dtype:
    if isinstance(spec, str):
        return np.dtype(spec)
    return np.dtype([tuple(field) for field in spec])


def _thaw(frozen: Any) -> Any:
    if isinstance(frozen, list):
        return [_thaw(v) for v in frozen]
    if not isinstance(frozen, dict):
        return frozen
    (tag, body), = frozen.items()
    if tag == "$json":
        return body
    if tag == "$map":
        return {k: _thaw(v) for k, v in body.items()}
    if tag == "$tuple":
        return tuple(_thaw(v) for v in body)
    if tag == "$array":
        spec, shape, data = body
        dtype = _dtype_of(spec)
        if dtype.names:
            return np.array([tuple(row) for row in data], dtype=dtype).reshape(shape)
        return np.array(data, dtype=dtype).reshape(shape)
    if tag == "$dtype":
        return _dtype_of(body)
    if tag == "$history":
        return History({name: _thaw(rows) for name, rows in body.items()})
    if tag == "$leaf":
        return decode_value(body)
    raise ValueError(f"unknown cache tag {tag!r}")
