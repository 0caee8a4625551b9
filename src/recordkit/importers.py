"""The importers of the older tools' files (researcher JSON, Record documents), written as
records through the public Recorder: the one place `recordkit import` and users call.

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

from recordkit.importing import ImportReport
from recordkit.record_import import (
    RECORD_SYSTEM_KEYS,
    import_record,
    read_record_documents,
    record_models,
)
from recordkit.researcher_import import import_researcher, read_researcher

__all__ = [
    "RECORD_SYSTEM_KEYS",
    "ImportReport",
    "import_record",
    "import_researcher",
    "read_record_documents",
    "read_researcher",
    "record_models",
]
