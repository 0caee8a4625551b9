"""The header cache of ``load_all``: what :meth:`recordkit.Record.cache_state` gave for each
finished run of a folder, kept as JSON lines (no pickle) in the user's cache folder, keyed
by file name and checked against the file's size, mtime and inode.

Opening a record and walking its header with h5py costs a few milliseconds, most of it in
the safety checks; a sweep of thousands of runs takes seconds. A finished run never
changes, so what its header held is kept. The whole cache of a folder is discarded when
its version changes: the record format version, the recordkit version, or
:data:`CACHE_LAYOUT` (bump it when :meth:`~recordkit.Record.cache_state` changes shape or
the reading code changes what a header holds).

Layout (:data:`CACHE_LAYOUT` 6): a first line ``{"version": ..., "folder": ...}``, then a
line per run, ``<crc32 of the rest, 8 hex digits>\t<head>\t<rest>``: *head* is the flat
JSON list ``[file name, size, mtime_ns, inode, kind, *run fields, *unserialisable
keys]`` (a run of kind ``"state"`` has neither fields nor keys there), *rest* the JSON of
the run's summary (kind ``"summary"``) or of its whole state (kind ``"state"``, a run
without a summary). Reading parses every head (one JSON document of short strings, flat:
nested lists parsed twice as slowly) and keeps each rest as bytes, parsed on the
record's first use of anything the head lacks, its params included (:class:`LazyJSON`):
100,000 runs' summaries are 160 MB of JSON, and parsing them all took most of
``load_all``'s time. A line whose CRC does not match (a torn write, damage) is dropped:
that run is read from its file. JSON text holds no raw tab or newline, so neither splits
a line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recordkit.codec import dumps_json, loads_json
from recordkit.format.layout import FORMAT_VERSION, HISTORY_DTYPE, RUN_FIELDS, SNAPSHOT_DTYPE
from recordkit.format.weights import StoredTensor

__all__ = ["CACHE_FILES", "CACHE_LAYOUT", "FullHeader", "HeaderCache", "LazyJSON", "cache_dir",
           "cache_enabled", "cache_version", "full_header_from_state", "full_header_state",
           "json_exact", "prune"]

#: The shape of the cache's entries (and of ``Record.cache_state``).
CACHE_LAYOUT = 6
#: Cache files (one per folder of records) kept; the least recently used go first.
CACHE_FILES = 200


def cache_enabled() -> bool:
    """False when the variable ``RECORDKIT_CACHE`` turns the cache off (0, false, empty)."""
    return os.environ.get("RECORDKIT_CACHE", "1") not in ("0", "false", "")


def cache_dir() -> Path:
    """``$RECORDKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/recordkit``, else
    ``~/.cache/recordkit``: never inside a folder of records, so that a folder from a
    stranger cannot bring its own cache."""
    explicit = os.environ.get("RECORDKIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recordkit"


@functools.cache
def cache_version() -> list[int | str]:
    """The version a cache file must carry to be used: [layout, format version,
    recordkit version]."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("recordkit")
    except PackageNotFoundError:
        package = "unknown"
    return [CACHE_LAYOUT, FORMAT_VERSION, package]


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class LazyJSON(Mapping[str, Any]):
    """A JSON object kept as its text (bytes) and parsed on first use: a read-only
    mapping.

    Raises (on first use):
        ValueError: the text is not a JSON object.
    """

    __slots__ = ("_start", "_text", "_value")

    def __init__(self, text: bytes, start: int = 0) -> None:
        self._text = text  # (the JSON is text[start:]: a line's rest, sliced on first use)
        self._start = start
        self._value: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._value is None:
            value = json.loads(self._text[self._start:])
            if type(value) is not dict:
                raise ValueError("not a JSON object")
            self._value = value
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return f"LazyJSON({self._decoded()!r})"


#: What the header cache keeps of one run: its stamp, its parsed head and its line.
_Entry = tuple[list[int], list[Any], bytes]
#: Where a head's run fields end (and its unserialisable keys begin).
_FIELDS_END = 5 + len(RUN_FIELDS)


class HeaderCache:
    """The cached header states of the records in one folder.

    :meth:`get` gives the state kept for a file that has not changed since, :meth:`put`
    keeps one, :meth:`save` writes the folder's cache file (entries of files not asked
    for since it was read are dropped).
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder.resolve()
        digest = hashlib.sha256(str(self._folder).encode("utf-8", "surrogateescape"))
        self._file = cache_dir() / f"headers-{digest.hexdigest()[:24]}.jsonl"
        self._entries: dict[str, _Entry] = {}
        self._seen: set[str] = set()
        self._dirty = False
        try:
            self._entries = self._read(self._file.read_bytes())
        except OSError:
            pass

    def _read(self, data: bytes) -> dict[str, _Entry]:
        """The entries of a cache file's bytes: none when its first line is not this
        folder's at this version; a line that fails its CRC or its shape is left out
        (and the file rewritten without it)."""
        lines = data.split(b"\n")
        try:
            document = json.loads(lines[0])
            if document.get("version") != cache_version() or document.get(
                    "folder") != str(self._folder):
                return {}
        except (ValueError, AttributeError):
            return {}
        kept: list[bytes] = []
        heads: list[bytes] = []
        for line in lines[1:]:
            crc, _, body = line.partition(b"\t")
            head, tab, _rest = body.partition(b"\t")
            try:
                if not tab or int(crc, 16) != zlib.crc32(body) or len(crc) != 8:
                    raise ValueError
            except ValueError:
                if line:
                    self._dirty = True  # damaged: written again without it
                continue
            kept.append(line)
            heads.append(head)
        try:
            parsed = json.loads(b"[" + b",".join(heads) + b"]")
        except ValueError:  # a line whose CRC matched but is not JSON: none is trusted
            self._dirty = True
            return {}
        entries: dict[str, _Entry] = {}
        for head, line in zip(parsed, kept):
            if (type(head) is list and len(head) >= 5 and type(head[0]) is str
                    and type(head[1]) is int and type(head[2]) is int
                    and type(head[3]) is int):
                entries[head[0]] = (head[1:4], head, line)
            else:
                self._dirty = True
        return entries

    def get(self, path: Path) -> Mapping[str, Any] | None:
        """The state kept for *path*, or None (none kept, or the file changed since).
        A run kept with its summary gives ``fields``, ``unserialisable`` and ``summary``
        (a :class:`LazyJSON`, which holds the params text); other runs the state
        :meth:`~recordkit.Record.cache_state` gave."""
        name = path.name
        self._seen.add(name)
        entry = self._entries.get(name)
        if entry is None:
            return None
        stamp, head, line = entry
        try:
            st = os.stat(path)
        except OSError:
            return None
        if stamp[0] != st.st_size or stamp[1] != st.st_mtime_ns or stamp[2] != st.st_ino:
            return None
        start = line.index(b"\t", 9) + 1  # the rest: after the CRC and the head
        kind = head[4]
        if kind == "summary" and len(head) >= _FIELDS_END:
            return {"fields": dict(zip(RUN_FIELDS, head[5:_FIELDS_END])),
                    "unserialisable": head[_FIELDS_END:], "summary": LazyJSON(line, start)}
        if kind == "state":
            try:
                state = json.loads(line[start:])
            except ValueError:
                return None
            return state if isinstance(state, dict) else None
        return None

    def put(self, path: Path, state: Mapping[str, Any] | None) -> None:
        """Keep *state* for *path*; None forgets what was kept (a run still changing)."""
        if state is None:
            if self._entries.pop(path.name, None) is not None:
                self._dirty = True
            return
        try:
            stamp = _file_stamp(path)
            fields = state["fields"]
            summary = state.get("summary")
            if summary is not None:
                head = [path.name, *stamp, "summary", *(str(fields[k]) for k in RUN_FIELDS),
                        *(str(k) for k in state["unserialisable"])]
                rest = json.dumps(dict(summary))
            else:
                head = [path.name, *stamp, "state"]
                rest = json.dumps(dict(state))
            body = f"{json.dumps(head)}\t{rest}".encode("utf-8", "surrogatepass")
        except (OSError, KeyError, TypeError, ValueError):
            return  # not kept: the file is read next time
        line = b"%08x\t%s" % (zlib.crc32(body), body)
        self._entries[path.name] = (stamp, head, line)
        self._dirty = True

    def save(self) -> None:
        """Write the folder's cache file when it changed (a cache that cannot be written
        only costs speed)."""
        stale = set(self._entries) - self._seen
        if stale:
            for name in stale:
                del self._entries[name]
            self._dirty = True
        if not self._dirty:
            return
        first = json.dumps({"version": cache_version(), "folder": str(self._folder)})
        data = b"\n".join([first.encode("utf-8", "surrogateescape"),
                           *(line for _, _, line in self._entries.values())])
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._file.with_name(f"{self._file.name}.{os.getpid()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, self._file)
            prune(self._file.parent)
        except (OSError, ValueError, TypeError):
            pass


def prune(folder: Path, keep: int = CACHE_FILES) -> None:
    """Keep the cache files of the *keep* folders read most recently (temporary folders
    of tests and notebooks would otherwise pile up; files of older layouts go first)."""
    for old in folder.glob("headers-*.json"):  # layout 4 and before
        old.unlink(missing_ok=True)
    files = list(folder.glob("headers-*.jsonl"))
    if len(files) <= keep:
        return
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


# --- JSON forms of header values (used by Record.cache_state) -------------------------------


def json_exact(value: Any) -> bool:
    """Whether json gives *value* back as it is: dicts with str keys, lists, str, int,
    float (NaN and inf too) and bool of exactly those types, and None."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return True
    if kind is list:
        return all(json_exact(v) for v in value)
    if kind is dict:
        return all(type(k) is str and json_exact(v) for k, v in value.items())
    return False


def _value_state(value: Any) -> dict[str, Any]:
    """A header value (system info, run facts) as JSON: as it is when json gives it back
    exactly, else as tagged JSON (:func:`recordkit.codec.dumps_json`)."""
    return {"value": value} if json_exact(value) else {"text": dumps_json(value)}


def _value_from_state(state: Mapping[str, Any]) -> Any:
    """Invert :func:`_value_state`."""
    return state["value"] if "value" in state else loads_json(state["text"])


def _columns(rows: np.ndarray) -> dict[str, list[Any]]:
    """A table of structured rows as one list per field."""
    return {field: rows[field].tolist() for field in rows.dtype.names or ()}


def _table(dtype: np.dtype, columns: Mapping[str, list[Any]]) -> np.ndarray:
    """Invert :func:`_columns`."""
    fields = dtype.names or ()
    rows = np.empty(len(columns[fields[0]]) if fields else 0, dtype=dtype)
    for field in fields:
        rows[field] = columns[field]
    return rows




@dataclasses.dataclass
class FullHeader:
    """What a record read in full holds beyond its run fields and params (see
    :meth:`recordkit.Record.cache_state`)."""

    format_version: int
    params_text: str
    system: Any
    info: Any
    history: dict[str, np.ndarray]
    snapshots: np.ndarray
    tensors: dict[str, StoredTensor]
    extra_keys: dict[str, str]


def full_header_state(header: FullHeader) -> dict[str, Any] | None:
    """*header* as JSON-able values; None when a tensor's dtype has no exact JSON form."""
    if any(t.dtype.names or t.dtype.hasobject or np.dtype(t.dtype.str) != t.dtype
           for t in header.tensors.values()):
        return None
    return {
        "format_version": header.format_version,
        "params_text": header.params_text,
        "system": _value_state(header.system),
        "info": _value_state(header.info),
        "history": {name: _columns(rows) for name, rows in header.history.items()},
        "snapshots": _columns(header.snapshots),
        "tensors": {name: [t.key, t.stored_dtype, list(t.shape), t.dtype.str, t.first,
                           t.count, t.offset, t.size, t.member]
                    for name, t in header.tensors.items()},
        "extra_keys": dict(header.extra_keys),
    }


def full_header_from_state(state: Mapping[str, Any]) -> FullHeader:
    """Invert :func:`full_header_state`.

    Raises:
        KeyError, TypeError, ValueError: *state* is not one it gives.
    """
    return FullHeader(
        format_version=int(state["format_version"]),
        params_text=str(state["params_text"]),
        system=_value_from_state(state["system"]),
        info=_value_from_state(state["info"]),
        history={name: _table(HISTORY_DTYPE, columns)
                 for name, columns in state["history"].items()},
        snapshots=_table(SNAPSHOT_DTYPE, state["snapshots"]),
        tensors={name: StoredTensor(str(key), str(stored), tuple(int(d) for d in shape),
                                    np.dtype(dtype), int(first), int(count), int(offset),
                                    None if size is None else int(size), str(member))
                 for name, (key, stored, shape, dtype, first, count, offset, size, member)
                 in state["tensors"].items()},
        extra_keys={str(k): str(v) for k, v in state["extra_keys"].items()},
    )
