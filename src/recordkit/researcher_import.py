"""Importing the older ``researcher`` tool's JSON files (one per experiment) as records.

See :mod:`recordkit.importers` for the layouts it reads.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recordkit.errors import ImportFormatError, RecordkitWarning, RecordNotFoundError
from recordkit.importing import ImportReport, imported_keys, parse_time, read_json
from recordkit.progress import with_progress
from recordkit.recorder import Recorder
from recordkit.researcher import log_observations

__all__ = ["RESEARCHER_DATE_FORMAT", "import_researcher", "read_researcher",
           "researcher_observations"]

RESEARCHER_DATE_FORMAT = "%Y-%m-%d_%H:%M:%S"
_RESEARCHER_FIELDS = ("hash", "timestamp", "observations", "results", "duration")


def read_researcher(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The data of one researcher JSON file, checked to be one.

    Raises:
        RecordNotFoundError: no such file.
        ImportFormatError: the file is not JSON, or not a researcher experiment.
    """
    data = read_json(Path(path), "a researcher experiment")
    if not isinstance(data, dict) or "_id" in data or not (
        "timestamp" in data or "hash" in data
    ) or not ("observations" in data or "results" in data or "hash" in data):
        raise ImportFormatError(
            f"{str(path)!r} is not a researcher experiment file: expected a JSON object of "
            "params with 'hash' and 'timestamp' and 'observations' (or 'results'); for "
            "Record documents exported from MongoDB use `recordkit import record`"
        )
    return data


def researcher_observations(data: Mapping[str, Any]) -> dict[str, Any]:
    """The observations of a researcher experiment in the current layout (metric → value,
    list of values, or list of per-fold lists), converted from the older ``results``
    layout when needed."""
    observations = data.get("observations")
    merged: dict[str, Any] = dict(observations) if isinstance(observations, Mapping) else {}
    results = data.get("results")
    if isinstance(results, Mapping):
        general = results.get("general_results")
        if isinstance(general, Mapping):
            merged.update(general)
        folds = results.get("fold_results")
        if isinstance(folds, Mapping):
            merged.update(folds)
        elif isinstance(folds, list):
            names: list[str] = []
            for fold in folds:
                for name in fold if isinstance(fold, Mapping) else ():
                    if name not in names:
                        names.append(name)
            for name in names:
                key = name if name not in merged else f"{name}.folds"
                merged[key] = [_as_list(fold.get(name, [])) if isinstance(fold, Mapping)
                               else [] for fold in folds]
    return merged


def import_researcher(source: str | os.PathLike[str], root: str | os.PathLike[str], *,
                      experiment: str | None = None, progress: bool = False) -> ImportReport:
    """Write researcher JSON files as records.

    Args:
        source: a researcher JSON file, or a folder of them (``*.json``, like
            ``researcher.all_experiments``).
        root: folder of records to write to.
        experiment: experiment (sub-folder) of the new runs; the source folder's name when
            None.
        progress: show a progress bar (tqdm) on stderr.

    Returns:
        What was imported, skipped (already under *root*) and, for a folder, which files
        were not researcher files.

    Raises:
        RecordNotFoundError: *source* does not exist, or is a folder without JSON files.
        ImportFormatError: *source* is a file that is not a researcher experiment.
    """
    source = Path(source)
    if not source.exists():
        raise RecordNotFoundError(f"no researcher file or folder at {str(source)!r}")
    if source.is_dir():
        files = sorted(source.glob("*.json"))
        if not files:
            raise RecordNotFoundError(f"no researcher JSON files (*.json) in {str(source)!r}")
        experiment = experiment or source.resolve().name or "researcher"
    else:
        files = [source]
        experiment = experiment or source.resolve().parent.name or "researcher"
    report = ImportReport()
    done = imported_keys(root)
    for path in with_progress(files, progress, "importing researcher files"):
        try:
            data = read_researcher(path)
        except ImportFormatError as err:
            if not source.is_dir():
                raise
            report.failed.append((str(path), str(err)))
            continue
        key = _researcher_key(data, path)
        if key in done:
            report.skipped.append((str(path), f"already imported ({key})"))
            continue
        report.imported.append(_write_researcher(data, path, key, root, experiment))
        done.add(key)
    return report


def _researcher_key(data: Mapping[str, Any], path: Path) -> str:
    hash_ = data.get("hash")
    if not isinstance(hash_, str):  # the oldest files kept the hash in the file name only
        hash_ = path.stem.rsplit("_", 1)[-1]
    return f"researcher:{hash_}:{data.get('timestamp', '')}"


def _write_researcher(data: Mapping[str, Any], path: Path, key: str,
                      root: str | os.PathLike[str], experiment: str) -> str:
    params = {k: v for k, v in data.items() if k not in _RESEARCHER_FIELDS}
    observations = researcher_observations(data)
    title = data.get("title")
    created = parse_time(data.get("timestamp"), RESEARCHER_DATE_FORMAT)
    if created is None:
        created = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)
    origin: dict[str, Any] = {"tool": "researcher", "file": str(path), "key": key,
                              "hash": data.get("hash"), "timestamp": data.get("timestamp")}
    with warnings.catch_warnings():
        # A param researcher could store is always storable; keep the log quiet.
        warnings.simplefilter("ignore", RecordkitWarning)
        rec = Recorder(root, experiment=experiment,
                       name=title if isinstance(title, str) else None, params=params,
                       system={}, created=created)
    with rec:
        info: dict[str, Any] = {"imported_from": origin}
        if isinstance(data.get("duration"), (int, float)):
            info["duration_seconds"] = float(data["duration"])
        rec.set_info(info)
        log_observations(rec, observations, strict=True)
    return rec.run_id


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]
