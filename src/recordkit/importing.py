"""What the importers of the older tools' files share: the report of an import, reading
a source file as text or JSON, its timestamps, and the keys of what a root already holds
(so that an import never writes a run twice)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recordkit.errors import ImportFormatError, RecordkitError, RecordNotFoundError
from recordkit.opening import read_info_alone
from recordkit.paths import record_files

__all__ = ["ImportReport", "imported_keys", "parse_time", "read_json", "read_text"]


@dataclasses.dataclass
class ImportReport:
    """What an import did."""

    imported: list[str] = dataclasses.field(default_factory=list)
    """Run ids of the records written, in source order."""
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(source, reason) of what was already imported."""
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(file, reason) of files in a folder that are not of the expected kind."""


def read_text(path: Path) -> str:
    """A source file's text (UTF-8).

    Raises:
        RecordNotFoundError: no such file, or it cannot be read.
        ImportFormatError: a folder, or not UTF-8 text.
    """
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


def read_json(path: Path, what: str) -> Any:
    """A source file parsed as JSON; *what* it should be names it in the error."""
    text = read_text(path)
    try:
        return json.loads(text)
    except ValueError as err:
        raise ImportFormatError(
            f"{str(path)!r} is not {what}: not JSON ({err})"
        ) from None


def parse_time(text: Any, date_format: str) -> _dt.datetime | None:
    """A source's timestamp in *date_format* or ISO 8601 (UTC when it has no zone), or
    None."""
    if not isinstance(text, str):
        return None
    for parse in (lambda t: _dt.datetime.strptime(t, date_format), _dt.datetime.fromisoformat):
        try:
            moment = parse(text)
        except ValueError:
            continue
        return moment if moment.tzinfo else moment.replace(tzinfo=_dt.timezone.utc)
    return None


def imported_keys(root: str | os.PathLike[str]) -> set[str]:
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
        info = read_info_alone(path)
    except (RecordkitError, OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None
    origin = info.get("imported_from") if isinstance(info, Mapping) else None
    if isinstance(origin, Mapping) and isinstance(origin.get("key"), str):
        return str(origin["key"])
    return None
