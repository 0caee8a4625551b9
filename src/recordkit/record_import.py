"""Importing the older ``Record`` tool's documents (one MongoDB document per run, exported
with mongoexport) as records, and putting an imported run's models back together.

See :mod:`recordkit.importers` for the documents it reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recordkit.errors import ImportFormatError, RecordkitWarning
from recordkit.importing import ImportReport, imported_keys, parse_time, read_text
from recordkit.progress import with_progress
from recordkit.record import Record
from recordkit.recorder import Recorder
from recordkit.researcher import per_epoch

__all__ = ["RECORD_DATE_FORMAT", "RECORD_SYSTEM_KEYS", "import_record",
           "read_record_documents", "record_models"]

#: The machine description the old Record tool put at the top level of every document.
RECORD_SYSTEM_KEYS = ("python", "machine", "processor", "os", "os_name", "os_ver", "memory",
                      "storage", "user", "gpus")
RECORD_DATE_FORMAT = "%f-%S-%M-%H-%d-%m-%Y"
_MODELS_PREFIX = "models/"


def read_record_documents(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The documents of a mongoexport file of the old Record tool: JSON lines or a JSON
    array, extended JSON (``{"$oid": ...}``, ``{"$numberDouble": "NaN"}``, ...) turned
    into plain values (``_id`` becomes the hex string).

    Raises:
        RecordNotFoundError: no such file.
        ImportFormatError: the file is not JSON, or its documents are not Record documents.
    """
    path = Path(path)
    text = read_text(path)
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
    done = imported_keys(root)
    for document in with_progress(documents, progress, "importing Record documents"):
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
    created = parse_time(document.get("timestamp"), RECORD_DATE_FORMAT) or _oid_time(oid)
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
            losses = per_epoch(model.get("losses"), strict=True)
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
