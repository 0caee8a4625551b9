"""Importers of the older tools' files, written as records through the public Recorder.

- ``researcher`` (one JSON file per experiment, `Lewington-pitsos/researcher`): the params
  at the top level with ``hash`` (md5 of the params JSON), ``timestamp``
  (``"%Y-%m-%d_%H:%M:%S"``, local time without a zone), optional ``title`` and
  ``duration`` (seconds), and the observations in one of the layouts the tool wrote over
  time: ``"observations": {metric: value | [values] | [[fold 0 values], [fold 1 ...]]}``
  (current), or ``"results": {"general_results": {metric: ...}, "fold_results":
  [{metric: [values]}, ...]}`` (older).
- ``Record`` (one MongoDB document per run, `ch3njust1n/record`), exported with
  ``mongoexport`` as JSON lines or as a JSON array (``--jsonArray``), in relaxed or
  canonical extended JSON: ``_id`` as ``{"$oid": ...}``; the machine's description at the
  top level (python, machine, processor, os, os_name, os_ver, memory, storage, user, gpus);
  a ``timestamp`` (``"%f-%S-%M-%H-%d-%m-%Y"``) in some versions; ``models`` as
  ``{key: {"params": [nested lists, one per tensor], "losses": [...], "color": [r, g, b],
  "label": ...}}``; every other top-level key is a param.

Assumptions (documented in the report of the import): a timestamp without a zone is taken
as UTC, since the original machine's zone is not in the file; a Record document without a
timestamp takes its creation time from the ObjectId (its first 4 bytes are the Unix time).

Each imported run keeps where it came from in ``Record.info["imported_from"]`` (tool, file,
original id or hash and timestamp); importing the same source again skips what is already
under the root, so nothing is duplicated.

Example:
    >>> import json, tempfile, pathlib, recordkit as rk
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "deep_ab12.json").write_text(json.dumps({"title": "deep", "lr": 0.1,
    ...     "hash": "ab12", "timestamp": "2020-12-10_00:01:04",
    ...     "observations": {"loss": [0.9, 0.5], "auc": [[0.6, 0.7], [0.8, 0.9]]}}))
    >>> root = tempfile.mkdtemp()
    >>> report = import_researcher(folder, root)
    >>> r = rk.load(report.imported[0], root=root)
    >>> r.name, r.created.isoformat(), r.history["auc"].tolist()
    ('deep', '2020-12-10T00:01:04+00:00', [0.7, 0.8])
    >>> len(import_researcher(folder, root).imported)  # already there: skipped
    0
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recordkit.codec import loads_json
from recordkit.errors import (
    ImportFormatError,
    RecordkitError,
    RecordkitWarning,
    RecordNotFoundError,
)
from recordkit.format.attrs import is_record
from recordkit.format.layout import INFO
from recordkit.paths import record_files
from recordkit.record import Record, open_h5
from recordkit.recorder import Recorder
from recordkit.researcher import log_observations, per_epoch
from recordkit.safety import check_dataset

__all__ = [
    "RECORD_SYSTEM_KEYS",
    "ImportReport",
    "import_record",
    "import_researcher",
    "read_record_documents",
    "read_researcher",
    "record_models",
]

#: The machine description the old Record tool put at the top level of every document.
RECORD_SYSTEM_KEYS = ("python", "machine", "processor", "os", "os_name", "os_ver", "memory",
                      "storage", "user", "gpus")
RESEARCHER_DATE_FORMAT = "%Y-%m-%d_%H:%M:%S"
RECORD_DATE_FORMAT = "%f-%S-%M-%H-%d-%m-%Y"
_RESEARCHER_FIELDS = ("hash", "timestamp", "observations", "results", "duration")
_MODELS_PREFIX = "models/"


@dataclasses.dataclass
class ImportReport:
    """What an import did."""

    imported: list[str] = dataclasses.field(default_factory=list)
    """Run ids of the records written, in source order."""
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(source, reason) of what was already imported."""
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(file, reason) of files in a folder that are not of the expected kind."""


# --- researcher ---------------------------------------------------------------------------


def read_researcher(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The data of one researcher JSON file, checked to be one.

    Raises:
        RecordNotFoundError: no such file.
        ImportFormatError: the file is not JSON, or not a researcher experiment.
    """
    data = _read_json(Path(path), "a researcher experiment")
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
    done = _imported_keys(root)
    for path in _progress(files, progress, "researcher files"):
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
    created = _parse_time(data.get("timestamp"), RESEARCHER_DATE_FORMAT)
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
        log_observations(rec, observations)
    return rec.run_id


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


# --- Record (MongoDB) ----------------------------------------------------------------------


def read_record_documents(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The documents of a mongoexport file of the old Record tool: JSON lines or a JSON
    array, extended JSON (``{"$oid": ...}``, ``{"$numberDouble": "NaN"}``, ...) turned
    into plain values (``_id`` becomes the hex string).

    Raises:
        RecordNotFoundError: no such file.
        ImportFormatError: the file is not JSON, or its documents are not Record documents.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        parsed = json.loads(text)
        documents = parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ImportFormatError(
                    f"{str(path)!r} is neither a JSON array nor JSON lines (line {number}: "
                    f"{err.msg}); export the collection with mongoexport"
                ) from None
    if not documents:
        raise ImportFormatError(f"{str(path)!r} holds no Record documents")
    plain = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict) or "_id" not in document or not (
            "models" in document or any(k in document for k in RECORD_SYSTEM_KEYS)
        ):
            raise ImportFormatError(
                f"{str(path)!r}: document {index} is not a Record document (expected an "
                "object with '_id' and the system info or 'models'); for researcher JSON "
                "files use `recordkit import researcher`"
            )
        plain.append(_plain_json(document))
    return plain


def import_record(source: str | os.PathLike[str], root: str | os.PathLike[str], *,
                  experiment: str | None = None, progress: bool = False) -> ImportReport:
    """Write the documents of a mongoexport file of the old Record tool as records.

    Each document becomes one run: its system info is the original machine's (kept as
    given, with ``memory_bytes`` / ``storage_bytes`` added when "4 GB" can be parsed),
    its other top-level keys are the params, and each entry of ``models`` is kept as
    extras ``models/<key>/params`` (the tensors as arrays, float32 when the numbers are
    float32 values), ``models/<key>/losses``, ``models/<key>/color``,
    ``models/<key>/label``; the losses are also the history metric ``<key>/loss``.
    :func:`record_models` puts a model back together.

    Args:
        source: the exported file (JSON lines or JSON array).
        root: folder of records to write to.
        experiment: experiment of the new runs; the file's stem (often the collection)
            when None.
        progress: show a progress bar (tqdm) on stderr.

    Raises:
        RecordNotFoundError: no such file.
        ImportFormatError: the file is not Record documents.
    """
    path = Path(source)
    documents = read_record_documents(path)
    experiment = experiment or path.stem or "record"
    report = ImportReport()
    done = _imported_keys(root)
    for document in _progress(documents, progress, "Record documents"):
        key = f"record:{document['_id']}"
        if key in done:
            report.skipped.append((str(document["_id"]), f"already imported ({key})"))
            continue
        report.imported.append(_write_record(document, path, key, root, experiment))
        done.add(key)
    return report


def _write_record(document: Mapping[str, Any], path: Path, key: str,
                  root: str | os.PathLike[str], experiment: str) -> str:
    oid = str(document["_id"])
    system: dict[str, Any] = {k: document[k] for k in RECORD_SYSTEM_KEYS if k in document}
    for field in ("memory", "storage"):
        size = _gigabytes(system.get(field))
        if size is not None:
            system[f"{field}_bytes"] = size
    system["source"] = "Record (MongoDB) document"
    params = {k: v for k, v in document.items()
              if k not in RECORD_SYSTEM_KEYS and k not in ("_id", "timestamp", "models")}
    created = _parse_time(document.get("timestamp"), RECORD_DATE_FORMAT) or _oid_time(oid)
    origin = {"tool": "Record", "file": str(path), "key": key, "id": oid,
              "timestamp": document.get("timestamp")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        rec = Recorder(root, experiment=experiment, name=oid, params=params, system=system,
                       created=created)
    with rec:
        rec.set_info({"imported_from": origin})
        models = document.get("models")
        if isinstance(models, list):
            models = {f"model_{i}": m for i, m in enumerate(models)}
        for model_key, model in (models or {}).items():
            if not isinstance(model, Mapping):
                rec.add(f"{_MODELS_PREFIX}{model_key}", model)
                continue
            for field, value in model.items():
                stored = _tensors(value) if field == "params" else value
                rec.add(f"{_MODELS_PREFIX}{model_key}/{field}", stored)
            losses = per_epoch(model.get("losses"))
            for epoch, loss in enumerate(losses):
                rec.log({f"{model_key}/loss": loss}, epoch=epoch)
    return rec.run_id


def record_models(record: Record) -> dict[str, dict[str, Any]]:
    """The ``models`` of an imported Record document, put back together: ``{key:
    {"params": [arrays], "losses": [...], "color": ..., "label": ...}}``.

    Example:
        >>> import json, tempfile, pathlib, recordkit as rk
        >>> source = pathlib.Path(tempfile.mkdtemp()) / "runs.json"
        >>> _ = source.write_text(json.dumps({"_id": {"$oid": "5fc2e0416f47c33abb406d28"},
        ...     "python": "3.8.5", "lr": 0.01, "models": {"model_0": {"params": [[1.5, 2.0]],
        ...     "losses": [2.0, 1.5], "color": [0.1, 0.2, 0.3], "label": "model_0"}}}))
        >>> root = tempfile.mkdtemp()
        >>> r = rk.load(import_record(source, root).imported[0], root=root)
        >>> model = record_models(r)["model_0"]
        >>> model["params"][0].tolist(), model["losses"], model["label"]
        ([1.5, 2.0], [2.0, 1.5], 'model_0')
    """
    models: dict[str, dict[str, Any]] = {}
    for name in record.extras:
        if not name.startswith(_MODELS_PREFIX):
            continue
        rest = name[len(_MODELS_PREFIX):]
        model_key, _, field = rest.rpartition("/")
        if not model_key:
            models[rest] = record.extras[name]
            continue
        models.setdefault(model_key, {})[field] = record.extras[name]
    return models


def _tensors(value: Any) -> Any:
    """The old Record's model params (a list of nested lists, one per tensor) as a list of
    arrays; float32 when every number is a float32 value (Record wrote float32 as text)."""
    if not isinstance(value, list):
        return value
    arrays: list[np.ndarray] = []
    for item in value:
        try:
            array = np.asarray(item, dtype=np.float64)
        except (ValueError, TypeError):  # ragged or not numbers: kept as JSON
            return value
        narrow = array.astype(np.float32)
        if np.array_equal(narrow.astype(np.float64), array, equal_nan=True):
            arrays.append(narrow)
        else:
            arrays.append(array)
    return arrays


def _gigabytes(text: Any) -> int | None:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*GB\s*", text) if isinstance(text, str) else None
    return int(float(match.group(1)) * 2**30) if match else None


def _oid_time(oid: str) -> _dt.datetime | None:
    if re.fullmatch(r"[0-9a-fA-F]{24}", oid):
        return _dt.datetime.fromtimestamp(int(oid[:8], 16), _dt.timezone.utc)
    return None


def _plain_json(value: Any) -> Any:
    """MongoDB extended JSON (relaxed or canonical) as plain values."""
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag == "$oid":
            return str(body)
        if tag in ("$numberDouble", "$numberDecimal"):
            return float(body)
        if tag in ("$numberInt", "$numberLong"):
            return int(body)
        if tag == "$date":
            if isinstance(body, dict):
                body = _plain_json(body)
            if isinstance(body, (int, float)):
                return _dt.datetime.fromtimestamp(body / 1000, _dt.timezone.utc).isoformat()
            return str(body)
    return {k: _plain_json(v) for k, v in value.items()}


# --- shared --------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.exists():
        raise RecordNotFoundError(f"no file at {str(path)!r}")
    if path.is_dir():
        raise ImportFormatError(f"{str(path)!r} is a folder; give the exported JSON file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ImportFormatError(f"{str(path)!r} is not a JSON text file (not UTF-8)") from None
    except OSError as err:
        raise RecordNotFoundError(f"cannot read {str(path)!r}: {err.strerror}") from None


def _read_json(path: Path, what: str) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except ValueError as err:
        raise ImportFormatError(
            f"{str(path)!r} is not {what}: not JSON ({err})"
        ) from None


def _parse_time(text: Any, date_format: str) -> _dt.datetime | None:
    if not isinstance(text, str):
        return None
    for parse in (lambda t: _dt.datetime.strptime(t, date_format), _dt.datetime.fromisoformat):
        try:
            moment = parse(text)
        except ValueError:
            continue
        return moment if moment.tzinfo else moment.replace(tzinfo=_dt.timezone.utc)
    return None


def _imported_keys(root: str | os.PathLike[str]) -> set[str]:
    """The source keys of every run already imported under *root*.

    Reads the one small ``/info`` dataset of each record and nothing else (about 1 ms per
    file; reading each run in full cost 5-15 ms, so an import slowed down as the root
    grew). Files that are not readable records are not imports: they are passed over."""

    base = Path(root)
    if not base.is_dir():
        return set()
    keys = set()
    for path in record_files(base):
        key = _import_key(path)
        if key is not None:
            keys.add(key)
    return keys


def _import_key(path: Path) -> str | None:
    """``info["imported_from"]["key"]`` of one record, or None (not an import, or not a
    readable record)."""
    try:
        with open_h5(path) as f:
            if not is_record(f) or not f.id.links.exists(INFO.encode()):
                return None
            value = check_dataset(f, INFO, path)[()]
        info = loads_json(value.decode("utf-8") if isinstance(value, bytes)
                              else str(value))
    except (RecordkitError, OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None
    origin = info.get("imported_from") if isinstance(info, Mapping) else None
    if isinstance(origin, Mapping) and isinstance(origin.get("key"), str):
        return str(origin["key"])
    return None


def _progress(items: Iterable[Any], show: bool, what: str) -> Iterator[Any]:
    if show:
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:
            pass
        else:
            yield from tqdm(list(items), desc=f"importing {what}", unit="run",
                            file=sys.stderr)
            return
    yield from items
