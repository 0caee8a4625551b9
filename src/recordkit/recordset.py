"""Many runs: scan a folder of records, filter them, summarise them as a table."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import numpy as np

from recordkit.config import CONFIG_HASH_IGNORES
from recordkit.errors import RecordkitError, RecordkitWarning, RecordNotFoundError
from recordkit.format.safety import MAX_READ_BYTES, check_fields
from recordkit.format.safety import max_read_bytes as max_read_bytes_of
from recordkit.headercache import HeaderCache, cache_enabled
from recordkit.metric_modes import metric_direction, metric_mode
from recordkit.paths import record_files
from recordkit.progress import with_progress
from recordkit.readworkers import check_workers, read_with_workers
from recordkit.record import Record
from recordkit.runindex import RunIndex, index_enabled
from recordkit.views import require_pandas

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ParamsComparison", "RecordSet", "load_all", "metric_mode"]

# metric_mode lives in recordkit.metric_modes; importable from here too.

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
        self._records = sorted(records, key=lambda r: (r.fields["created"], r.run_id))
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
        """The runs whose configuration (:attr:`Record.config`: params in dotted form,
        ``**{"optimizer.lr": 0.1}``, and the captured facts such as ``lr``,
        ``batch_size`` or ``optimizer``) equals every given value, with one of the given
        statuses, and for which *predicate* is true.

        Raises:
            RecordkitError: a key no run of the set has (it lists the keys they have).
        """
        statuses = {status} if isinstance(status, str) else set(status or ())
        if params:
            self._check_keys(params, "filter")
        kept = []
        for record in self._records:
            if statuses and record.status not in statuses:
                continue
            if params:
                config = record.config
                if any(key not in config or not _same(config[key], value)
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
        if mode is None and metric_direction(metric) is None:
            raise RecordkitError(
                f"best({metric!r}): {metric!r} has no best value by its name (a learning "
                "rate, a time or a counter); pass mode='min' or mode='max'")
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
        """The runs grouped by the values of *params* (configuration keys: dotted params
        and captured facts), or by :attr:`Record.config_hash` (repeated runs of one
        configuration, whatever their seeds) when none are given. Keys are tuples of the
        values (``(config_hash,)`` without *params*); a key a run lacks is None.

        Raises:
            RecordkitError: a key no run of the set has (it lists the keys they have).
        """
        if params:
            self._check_keys(params, "group_by")
        grouped: dict[tuple[Any, ...], list[Record]] = {}
        for record in self._records:
            if params:
                config = record.config
                key = tuple(_group_key(config.get(p)) for p in params)
            else:
                key = (record.config_hash,)
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
        pd = require_pandas()
        rows = []
        for key, members in self.groups(*params).items():
            summary = pd.DataFrame([summary_row(r) for r in members])
            row: dict[str, Any] = {}
            if params:
                row.update(zip(params, key))
            else:
                row["config_hash"] = key[0]
                for name, value in members[0].config.items():
                    if not CONFIG_HASH_IGNORES.search(name.rsplit(".", 1)[-1]):
                        row.setdefault(name, _cell(value))  # what the group shares
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
        """A row per run: run fields, ``duration`` (seconds, NaN while running), a column
        per configuration key (:attr:`Record.config`: the params first, then the captured
        facts), and for each metric its final value, best value and epoch of the best
        (``<metric>.final``, ``.best``, ``.best_epoch``; best is the maximum for metrics
        that grow when better, the minimum for the others, and none for learning rates,
        times and counters: :func:`recordkit.metric_modes.metric_direction`)."""
        pd = require_pandas()
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
        pd = require_pandas()
        columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("run_id", "name", "metric", "epoch", "step", "value")}
        for record in self._records:
            for metric, rows in record.history.rows_by_metric().items():
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
        """The configuration two runs share and what differs (:attr:`Record.config`: the
        params in dotted keys, then the captured facts).

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
        fa, fb = ra.config, rb.config
        differ = {k: (fa[k], fb[k]) for k in fa if k in fb and not _same(fa[k], fb[k])}
        shared = {k: fa[k] for k in fa if k in fb and _same(fa[k], fb[k])}
        return ParamsComparison(
            differ=differ, shared=shared,
            only_a={k: v for k, v in fa.items() if k not in fb},
            only_b={k: v for k, v in fb.items() if k not in fa},
        )

    def config_keys(self) -> list[str]:
        """Every configuration key of the runs of the set, in the order first seen."""
        keys: dict[str, None] = {}
        for record in self._records:
            keys.update(dict.fromkeys(record.config))
        return list(keys)

    def _check_keys(self, keys: Iterable[str], where: str) -> None:
        """Raise when a key is in no run's configuration: a typo must not give an empty
        result silently."""
        if not self._records:
            return
        known = self.config_keys()
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise RecordkitError(
                f"{where}: no run of this set has {', '.join(map(repr, unknown))} in its "
                f"configuration; the runs have: {', '.join(known) or '(nothing)'}")

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
    """Equal param values (arrays: same shape and elements); False when they cannot be
    compared."""
    try:
        result = a == b
        if isinstance(result, np.ndarray):
            return bool(result.all()) and np.shape(a) == np.shape(b)
        return bool(result)
    except Exception:
        return False


def _group_key(value: Any) -> Any:
    """A param value as a key of :meth:`RecordSet.groups` (its text when unhashable)."""
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
        "config_hash": record.config_hash,
        "epochs": record.epoch_count,
        "duration": _duration(record),
    }
    for key, value in record.config.items():
        column = key if key not in row else f"params.{key}"
        row[column] = value if not isinstance(value, (list, dict, set, np.ndarray)) else str(
            value)
    for metric, stats in record.metric_summaries().items():
        final = stats["final"]
        row[f"{metric}.final"] = math.nan if final is None else float(final)
        mode = metric_direction(metric)
        if mode is None:
            continue  # a learning rate, a time, a counter: no best
        best = stats[mode]
        row[f"{metric}.best"] = math.nan if best is None else float(best)
        row[f"{metric}.best_epoch"] = -1 if best is None else int(stats[f"{mode}_epoch"])
    return row


def _duration(record: Record) -> float:
    """Seconds from the run's start to its end; NaN while it runs (or without an end)."""
    ended = record.ended
    return math.nan if ended is None else (ended - record.created).total_seconds()


def load_all(root: str | os.PathLike[str] = "records", experiment: str | None = None,
             *, cache: bool = True, progress: bool = False,
             max_read_bytes: int | None = None, workers: int = 1,
             index: bool = True) -> RecordSet:
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
        max_read_bytes: the most bytes one read of compressed data may expand to beyond
            8 times its file's size, for every record (see :func:`recordkit.load`); by
            default ``$RECORDKIT_MAX_READ_BYTES``, else 1 GiB. The header cache holds
            records checked with the default cap only: under another one, every file
            is read.
        workers: read the files the header cache does not hold in this many processes
            (:mod:`recordkit.readworkers`; h5py serialises its calls within a process);
            the same RecordSet as with 1. Starting them costs about a second: worth it
            for thousands of files, on a cold page cache or a network filesystem.
        index: read the summaries of closed runs the header cache lacks from their
            folder's run index (``<folder>/.recordkit-index.jsonl``, appended when a run
            closes: :mod:`recordkit.runindex`) for files whose size, mtime, ctime and
            inode are those it noted, instead of opening each file, and add the runs
            read from their files to it. The variable ``RECORDKIT_INDEX=0`` turns it off.

    Raises:
        RecordNotFoundError: *root* (or the experiment folder) does not exist.
        ValueError: *max_read_bytes* or *workers* is not a positive int.
    """
    cap = max_read_bytes_of(max_read_bytes, caller="load_all")
    workers = check_workers(workers)
    with _collector_paused():
        return _load_all(root, experiment, cache=cache, progress=progress, cap=cap,
                         workers=workers, index=index)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (when it was on): a load of
    100,000 runs makes millions of small containers, none in a cycle, and the collector's
    passes over them took up to half of a warm ``load_all``."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_Made = TypeVar("_Made")


class _PerFolder(Generic[_Made]):
    """One object per folder of runs (a header cache, a run index), made on first use;
    None for every path when *make* is None (that store is off)."""

    def __init__(self, make: Callable[[Path], _Made] | None) -> None:
        self._make = make
        #: keyed by the folder's text: a Path's parent and hash cost more than the rest
        #: of a cached run's lookup
        self.made: dict[str, _Made] = {}

    def __call__(self, path: Path) -> _Made | None:
        if self._make is None:
            return None
        folder = os.path.dirname(path)
        made = self.made.get(folder)
        if made is None:
            made = self.made[folder] = self._make(path.parent)
        return made


def _load_all(root: str | os.PathLike[str], experiment: str | None, *, cache: bool,
              progress: bool, cap: int, workers: int, index: bool) -> RecordSet:
    """:func:`load_all` with its arguments checked."""
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
    use_cache = cache and cache_enabled() and cap == MAX_READ_BYTES
    cache_of = _PerFolder(HeaderCache if use_cache else None)
    use_index = index and index_enabled()
    index_of = _PerFolder(RunIndex if use_index else None)
    files = record_files(base, experiment)
    found: list[Record | None] = [None] * len(files)
    errors: dict[int, str] = {}
    misses: list[int] = []
    for i, path in enumerate(files):
        # (a cached state passed check_fields before it was kept: not checked again)
        record = _cached(cache_of(path), path, cap)
        if record is None:
            misses.append(i)
        else:
            found[i] = record
    if use_index and misses:
        unindexed = []
        for i in misses:
            path = files[i]
            record = _indexed(index_of(path), path, cap)
            if record is None:
                unindexed.append(i)
                continue
            found[i] = record
            header_cache = cache_of(path)
            if header_cache is not None:
                header_cache.put(path, record.cache_state())
        misses = unindexed
    states = None
    if workers > 1 and len(misses) > 1:
        states = read_with_workers([files[i] for i in misses], cap, workers,
                                   progress=progress)
    local = with_progress(range(len(misses)), progress and states is None and len(misses) > 1,
                          "reading records", leave=False)
    for k in local:
        i = misses[k]
        path = files[i]
        header_cache = cache_of(path)
        kind, value = states[k] if states is not None else ("local", "")
        if kind == "error":
            errors[i] = str(value)
            continue
        if kind == "state" and isinstance(value, dict):
            try:
                found[i] = Record.from_cache_state(path, value, max_read_bytes=cap)
                if header_cache is not None:
                    header_cache.put(path, value)
                _index_state(index_of(path), path, value)
                continue
            except Exception:
                pass  # not a state this process can use: read the file here
        try:
            record = Record(path, lazy=True, max_read_bytes=cap)
            # The run fields of a run opened from its summary were not checked with the
            # root attributes: a forged summary is refused here, not by a property later.
            check_fields(record.fields, path)
            if header_cache is not None or use_index:
                # without the cache, nothing but the root is read (a run index keeps
                # only closed runs' summaries)
                state = record.cache_state(summary_only=header_cache is None)
                if header_cache is not None:
                    header_cache.put(path, state)
                _index_state(index_of(path), path, state)
            found[i] = record
        except RecordkitError as err:
            errors[i] = str(err)
    for header_cache in cache_of.made.values():
        header_cache.save()
    if index_of.made:
        names: dict[str, list[str]] = {}
        for path in files:
            names.setdefault(os.path.dirname(path), []).append(path.name)
        for folder, run_index in index_of.made.items():
            run_index.save(names.get(folder, ()))
    skipped = [(files[i], errors[i]) for i in sorted(errors)]
    for path, message in skipped:
        warnings.warn(f"recordkit: skipped {str(path)!r}: {message}", RecordkitWarning,
                      stacklevel=3)  # (the caller of load_all)
    return RecordSet([r for r in found if r is not None], skipped=skipped)


def _indexed(run_index: RunIndex | None, path: Path, cap: int) -> Record | None:
    """The record as its folder's run index noted it at its close, or None (no line, the
    file changed since, or a line that is not a closed run's summary: the file is read
    instead, and says what is wrong)."""
    if run_index is None:
        return None
    try:
        summary = run_index.summary(path, os.stat(path))
        if summary is None:
            return None
        record = Record.from_cache_state(path, {"summary": summary}, max_read_bytes=cap)
        check_fields(record.fields, path)
    except (RecordkitError, OSError, ValueError, TypeError, KeyError, AttributeError,
            RecursionError):
        return None
    return record


def _index_state(run_index: RunIndex | None, path: Path, state: Any) -> None:
    """Note in the run index a closed run read from its summary (*state*: what
    :meth:`Record.cache_state` gave)."""
    if run_index is not None and isinstance(state, dict) and "summary" in state:
        run_index.add(path, state["summary"])


def _cached(header_cache: HeaderCache | None, path: Path, cap: int) -> Record | None:
    """The record as the header cache kept it, or None (no cache, nothing kept, the file
    changed since, or an entry this recordkit cannot use: the file is read instead)."""
    state = header_cache.get(path) if header_cache is not None else None
    if state is None:
        return None
    try:
        return Record.from_cache_state(path, state, max_read_bytes=cap)
    except Exception:
        return None
