"""The run index of a folder of records: ``<folder>/.recordkit-index.jsonl``, a line per
closed run holding the run's ``summary`` attribute and the file's size, mtime, ctime and
inode when it was written (docs/FORMAT.md, *The run index*).

:class:`~recordkit.recorder.Recorder` appends a run's line when it closes the run
(:func:`add_closed_run`); ``load_all`` reads a run's summary from its line instead of
opening its file when the file's stat still matches, and appends the lines of the runs it
had to read from their files. It is a cache: the record file is the truth, and a line
that is torn, damaged, of another layout, or whose file's stat differs is ignored (that
run is read from its file).

Several processes (on one host, or on hosts sharing an NFS mount) append to one index at
once. Each line goes out in one ``write`` on a descriptor opened with ``O_APPEND``, and
carries a CRC32 of itself: on a local filesystem whole lines never interleave; on NFS,
where the client emulates ``O_APPEND`` (it writes at the end it last saw), two hosts'
lines can overwrite each other, which costs those lines' CRCs, never a wrong entry. An
index whose unusable lines outnumber its live ones is written again whole (a temporary
file renamed over it); a line another process appends meanwhile can be lost with the old
file, which costs only a read of that run's file next time.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recordkit.codec import dumps_json
from recordkit.errors import RecordkitWarning
from recordkit.format.attrs import read_attr
from recordkit.format.files import open_id
from recordkit.format.layout import FORMAT_NAME, MAX_SUMMARY_BYTES, READ_VERSIONS, SUMMARY_ATTR
from recordkit.format.summary import summary_checksum_ok, summary_from_text

__all__ = ["INDEX_FILE", "INDEX_LAYOUT", "RunIndex", "add_closed_run", "file_stamp",
           "index_enabled", "index_line", "parse_line"]

#: The index's name in each folder of records (a dot file: never listed as a record).
INDEX_FILE = ".recordkit-index.jsonl"
#: The first member of each line's head; a line of another layout is ignored.
INDEX_LAYOUT = 1
#: An index larger than this is not read (nor appended to): a file of the folder claims it.
MAX_INDEX_BYTES = 1 << 30
#: Unusable lines (damaged, superseded, stale, of files gone) tolerated before the index
#: is written again whole, beyond as many as it has live ones.
SLACK_LINES = 64

#: A file's stamp: size, mtime_ns, ctime_ns, inode. Any write moves mtime; a chmod, a
#: rename over it or a copy moves ctime or the inode, which no user can set back.
Stamp = tuple[int, int, int, int]


def index_enabled() -> bool:
    """False when the variable ``RECORDKIT_INDEX`` turns the run index off (0, false,
    empty): neither read nor written."""
    return os.environ.get("RECORDKIT_INDEX", "1") not in ("0", "false", "")


def file_stamp(st: os.stat_result) -> Stamp:
    """What a line records of its file's stat."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def index_line(name: str, stamp: Stamp, summary_text: str) -> bytes:
    """One line of the index (with its newline): ``<crc32 of the rest, 8 hex digits>\\t
    <head>\\t<summary text>``, *head* the JSON list ``[layout, file name, size, mtime_ns,
    ctime_ns, inode]``. JSON text holds no raw tab or newline, so neither splits it.

    Raises:
        ValueError: the summary holds a tab or newline (not JSON text recordkit writes).
    """
    if "\n" in summary_text or "\t" in summary_text:
        raise ValueError("a summary's JSON text holds no raw tab or newline")
    head = json.dumps([INDEX_LAYOUT, name, *stamp], ensure_ascii=False)
    body = f"{head}\t{summary_text}".encode("utf-8", "surrogatepass")
    return b"%08x\t%s\n" % (zlib.crc32(body), body)


def parse_line(line: bytes) -> tuple[str, Stamp, bytes] | None:
    """(file name, stamp, summary text) of one line (without its newline); None for a
    line that is torn, damaged or of another layout."""
    crc, tab, body = line.partition(b"\t")
    head, tab2, text = body.partition(b"\t")
    if not tab or not tab2 or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        parsed = json.loads(head)
    except ValueError:
        return None
    if (type(parsed) is not list or len(parsed) != 6 or parsed[0] != INDEX_LAYOUT
            or type(parsed[1]) is not str or not all(type(v) is int for v in parsed[2:])):
        return None
    return parsed[1], (parsed[2], parsed[3], parsed[4], parsed[5]), text


def _summary_of(text: bytes) -> dict[str, Any] | None:
    """The summary a line holds, checked as a summary read from its file is (its own
    sha256, the shape ``load_all`` relies on: :func:`~.format.summary.summary_from_text`)
    and of a format this recordkit reads; None when it is not one."""
    if len(text) > 4 * MAX_SUMMARY_BYTES:
        return None
    try:
        decoded = text.decode("utf-8", "surrogatepass")
    except ValueError:
        return None
    summary = summary_from_text(decoded, require_checksum=True)
    if (summary is None or summary.get("format") != FORMAT_NAME
            or summary.get("format_version") not in READ_VERSIONS):
        return None
    return summary


def _append(folder: Path, lines: Iterable[bytes]) -> None:
    """Append whole lines to the folder's index in one write (``O_APPEND``).

    Raises:
        OSError: the index cannot be written.
    """
    data = b"".join(lines)
    if not data:
        return
    fd = os.open(folder / INDEX_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_INDEX_BYTES:
            return
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # after a torn line (its writer killed), or one another process is writing
            # now (then an empty line is left, ignored): a line of its own
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):  # a short write (disk full): the rest is a torn line
            os.write(fd, b"\n")
    finally:
        os.close(fd)


def add_closed_run(path: str | os.PathLike[str]) -> None:
    """Append the line of the closed run at *path* to its folder's index. Never raises:
    the index is a cache, and a failure to write it (warned) costs a read of the file."""
    path = Path(path)
    if not index_enabled():
        return
    try:
        before = file_stamp(os.stat(path))
        fid = open_id(path)
        try:
            text = read_attr(fid, SUMMARY_ATTR)
        finally:
            fid.close()
        if not isinstance(text, str) or not text:
            return  # no summary (too large): load_all reads this run in full anyway
        stamp = file_stamp(os.stat(path))
        if stamp != before:
            return  # changed meanwhile (resumed by another process): not indexed
        _append(path.parent, [index_line(path.name, stamp, text)])
    except FileNotFoundError:
        return  # the file or its folder removed meanwhile: nothing to index
    except Exception as err:  # (training never fails because of the index)
        warnings.warn(f"recordkit: could not add {str(path)!r} to the run index of its "
                      f"folder ({type(err).__name__}: {err}); load_all reads this run from "
                      "its file", RecordkitWarning, stacklevel=3)


class RunIndex:
    """The index of one folder as ``load_all`` uses it: :meth:`summary` gives a run's
    summary when its line matches the file, :meth:`add` keeps the line of a run read
    from its file, :meth:`save` appends those (or writes the index again whole, when
    most of its lines are of no use)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._lines: dict[str, tuple[Stamp, bytes, bytes]] = {}
        self._unusable = 0
        self._stale: set[str] = set()
        self._new: dict[str, bytes] = {}
        self._writable = True
        try:
            with open(folder / INDEX_FILE, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_INDEX_BYTES:
                    self._writable = False  # not read, and not made larger
                    return
                data = f.read()
        except OSError:
            return
        lines = data.split(b"\n")
        if lines[-1]:
            self._unusable += 1  # torn: no newline yet (or a writer is writing it now)
        for line in lines[:-1]:
            if not line:
                continue  # (a writer that saw another's line half copied began with "\n")
            parsed = parse_line(line)
            if parsed is None:
                self._unusable += 1
                continue
            name, stamp, text = parsed
            if name in self._lines:
                self._unusable += 1  # superseded by this later line
            self._lines[name] = (stamp, text, line)

    def summary(self, path: Path, st: os.stat_result) -> dict[str, Any] | None:
        """The summary of the run at *path* (whose stat is *st*) when its line matches the
        file, else None (no line, a line of an earlier state of the file, or a summary
        that is not one)."""
        entry = self._lines.get(path.name)
        if entry is None:
            return None
        stamp, text, _ = entry
        if stamp != file_stamp(st):
            self._stale.add(path.name)
            return None
        summary = _summary_of(text)
        if summary is None:
            self._stale.add(path.name)
        return summary

    def add(self, path: Path, summary: Mapping[str, Any]) -> None:
        """Keep a line for the closed run at *path*, read from its file with this
        *summary*; left out when the summary's JSON text does not come back exactly as
        written (its sha256 then fails) or the file cannot be stat'ed."""
        if not self._writable:
            return
        try:
            text = dumps_json(dict(summary))
            if summary_checksum_ok(text) is not True:
                return
            self._new[path.name] = index_line(path.name, file_stamp(os.stat(path)), text)
        except (OSError, ValueError, TypeError):
            return

    def save(self, names: Iterable[str]) -> None:
        """Write what :meth:`add` kept (*names*: the record files of the folder now):
        appended, or the index written again whole when its unusable lines (damaged,
        superseded, stale, of files gone) outnumber its live ones by more than
        :data:`SLACK_LINES`. An index that cannot be written only costs speed."""
        present = set(names)
        live = [name for name in self._lines
                if name in present and name not in self._stale and name not in self._new]
        unusable = self._unusable + len(self._lines) - len(live)
        try:
            if unusable > len(live) + SLACK_LINES:
                self._rewrite(live)
            elif self._new:
                _append(self._folder, self._new.values())
        except OSError:
            pass
        self._new.clear()

    def _rewrite(self, live: list[str]) -> None:
        """The index written again with the live lines and the new ones, renamed over the
        old one (readers see the old file or the new, never a part)."""
        lines = [self._lines[name][2] + b"\n" for name in live]
        lines.extend(self._new.values())
        temporary = self._folder / f"{INDEX_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            temporary.write_bytes(b"".join(lines))
            os.replace(temporary, self._folder / INDEX_FILE)
        finally:
            temporary.unlink(missing_ok=True)
