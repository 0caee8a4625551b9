"""The superblock fix: a record whose end-of-file address a killed (or disk-full) flush
left different from the file's size, read around without changing it, or repaired.

HDF5 writes the end-of-file address in the superblock and the metadata that points past
it in no fixed order; a SIGKILL between the two (about 1 kill in 200 in
benchmarks/crash_kills.py) leaves blocks the file holds but the superblock does not
count. :func:`needs_repair` detects it, :func:`open_with_patched_eof` reads such a file
as if it were repaired (what :func:`recordkit.load` does), :func:`repair` writes the
fix, and :func:`damage_hint` says which of repair or verify a failed read calls for.
This module reads and writes the superblock's raw bytes; every other byte of a record
goes through HDF5.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

import h5py

from recordkit.errors import (
    NotARecordError,
    RecordkitError,
    RecordLockedError,
    RecordNotFoundError,
)
from recordkit.format.attrs import read_attr
from recordkit.format.files import RecordFile, open_file_object, open_read_only, reopen
from recordkit.locking import is_locked

__all__ = ["REWRITTEN_FIELDS", "damage_hint", "dangling_groups", "has_hdf5_signature",
           "needs_repair", "open_with_patched_eof", "repair", "unreadable_fields"]

#: The root attributes a writer rewrites while its run lives (at close: status, ended,
#: error, summary), and what :func:`repair` stores in one a kill left unreadable (None:
#: removed; the summary is absent until a run is closed). HDF5 frees the old value of a
#: variable-length string in the flush that writes the new one, in no fixed order with
#: the attribute itself: a kill between the two leaves the attribute pointing at a heap
#: object that is gone ("bad heap pointer"; issue 17). The values are those the run had
#: before: a run killed while closing reads as interrupted, with every committed epoch.
REWRITTEN_FIELDS: dict[str, str | None] = {"status": "running", "ended": "", "error": "",
                                           "summary": None}

_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def has_hdf5_signature(path: Path) -> bool:
    """Whether the file holds HDF5's superblock signature where HDF5 looks for it (byte
    0, 512, 1024, 2048, ...): tells a damaged HDF5 file from a file of another kind."""
    try:
        with open(path, "rb") as fh:
            offset = 0
            size = os.fstat(fh.fileno()).st_size
            while offset < min(size, 1 << 20):
                fh.seek(offset)
                if fh.read(8) == _SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


def _superblock(path: Path) -> tuple[int, int, int, int] | None:
    """(offset of the end-of-file-address field, its value, base address, size of
    offsets) of a version 0/1 superblock, or None for other versions or no HDF5 file.
    Every load() asks (``pread`` of the first 64 bytes: one system call, where a
    buffered file object cost a tenth of opening a small record)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        for at in (0, 512, 1024, 2048, 4096, 8192):
            head = os.pread(fd, 64, at)
            if len(head) < 40 or head[:8] != _SIGNATURE:
                continue
            version, size_of_offsets = head[8], head[13]
            if version not in (0, 1) or size_of_offsets not in (2, 4, 8):
                return None
            first = at + (24 if version == 0 else 28)
            fields = os.pread(fd, 3 * size_of_offsets, first)
            if len(fields) < 3 * size_of_offsets:
                return None
            base = int.from_bytes(fields[:size_of_offsets], "little")
            field_at = first + 2 * size_of_offsets
            eoa = int.from_bytes(fields[2 * size_of_offsets:], "little")
            return field_at, eoa, base, size_of_offsets
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def needs_repair(path: str | os.PathLike[str]) -> bool:
    """Whether the superblock's end-of-file address differs from the file's size.

    Before the end: a writer killed in the middle of a flush wrote metadata past the
    address it had recorded, and reads of it fail ("addr overflow"). After the end: a
    flush that failed on a full disk recorded an address it could not write up to, and
    HDF5 refuses to open the file ("truncated file")."""
    found = _superblock(Path(path))
    if found is None:
        return False
    _, eoa, base, _ = found
    try:
        return base + eoa != Path(path).stat().st_size
    except OSError:
        return False


class _PatchedSuperblock(io.RawIOBase):
    """A read-only view of a file with the superblock's end-of-file address replaced by
    the file's size: what :func:`repair` would write, without writing it."""

    def __init__(self, path: Path, field_at: int, value: bytes) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._at = field_at
        self._value = value
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self._fh.seek(self._pos)
        n = self._fh.readinto(view) or 0
        start, end = max(self._pos, self._at), min(self._pos + n, self._at + len(self._value))
        if start < end:
            view[start - self._pos:end - self._pos] = self._value[start - self._at:end - self._at]
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_with_patched_eof(path: str | os.PathLike[str]) -> RecordFile | None:
    """Open, read-only, a record whose superblock's end-of-file address a killed flush
    left short of the file's end (:func:`needs_repair`) as if it were repaired, without
    changing the file; None when the file does not need it or a live writer holds it.

    Such a file (about 1 kill in 200) would otherwise fail to read metadata the killed
    flush wrote past that address, and with it committed epochs."""
    file_path = Path(path)
    found = _superblock(file_path)
    if found is None:
        return None
    field_at, eoa, base, size_of_offsets = found
    try:
        size = file_path.stat().st_size
        # Only a file longer than its header says: a shorter one was cut (a bad copy, a
        # full disk) and HDF5's own refusal to open it is the safe answer.
        if base + eoa >= size or is_locked(file_path):
            return None
        view = _PatchedSuperblock(file_path, field_at,
                                  (size - base).to_bytes(size_of_offsets, "little"))
    except OSError:
        return None
    try:
        return open_file_object(view)
    except Exception:
        view.close()
        return None


def unreadable_fields(path: str | os.PathLike[str]) -> list[str]:
    """The root attributes of :data:`REWRITTEN_FIELDS` a record holds but that cannot be
    read (their heap object is gone); [] when the file does not open."""
    file_path = Path(path)
    try:
        f = open_with_patched_eof(file_path) or open_read_only(file_path)
    except Exception:
        return []
    found = []
    with f:
        for key in REWRITTEN_FIELDS:
            if key not in f.attrs:
                continue
            try:
                read_attr(f, key)
            except Exception:
                found.append(key)
    return found


def _stab_btree(raw: io.BufferedReader, header: int) -> int | None:
    """The B-tree address in the symbol table message of the version 1 object header at
    *header* (a group of the file format recordkit writes), from its first chunk."""
    raw.seek(header)
    prefix = raw.read(16)
    if len(prefix) < 16 or prefix[0] != 1:
        return None
    size = struct.unpack_from("<I", prefix, 8)[0]
    body = raw.read(min(size, 1 << 16))
    at = 0
    while at + 8 <= len(body):
        kind, length = struct.unpack_from("<HH", body, at)
        if kind == 0x11 and length >= 16:  # symbol table message: B-tree, local heap
            return int(struct.unpack_from("<Q", body, at + 8)[0])
        at += 8 + length
    return None


def dangling_groups(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Root groups whose links a kill lost: ``(name, B-tree address)`` of each group whose
    B-tree is one leaf listing symbol table nodes none of which was ever written (zeros
    or past the end: the node a group's first link makes is written after the B-tree
    that points to it, issue 17). ``/weights`` and ``/checksums`` only while no snapshot
    is listed: their links were then to no committed data."""
    file_path = Path(path)
    try:
        f = open_with_patched_eof(file_path) or open_read_only(file_path)
    except Exception:
        return []
    found: list[tuple[str, int]] = []
    with f, open(file_path, "rb") as raw:
        try:
            names = [name for name in f if f.get(name, getclass=True) is h5py.Group]
            listed = len(f["snapshots"]) if "snapshots" in f else 0
        except Exception:
            return []
        for name in names:
            if name in ("weights", "checksums") and listed:
                continue
            try:
                header = int(h5py.h5o.get_info(h5py.h5o.open(f.id, name.encode())).addr)
            except Exception:
                continue
            btree = _stab_btree(raw, header)
            if btree is None:
                continue
            raw.seek(btree)
            node = raw.read(24)
            if len(node) < 24 or node[:4] != b"TREE" or node[4] != 0 or node[5] != 0:
                continue
            entries = struct.unpack_from("<H", node, 6)[0]
            children = []
            for i in range(entries):
                raw.seek(btree + 24 + 8 + 16 * i)
                children.append(struct.unpack("<Q", raw.read(8))[0])
            written = []
            for child in children:
                raw.seek(child)
                written.append(raw.read(4) == b"SNOD")
            if children and not any(written):
                found.append((name, btree))
    return found


def damage_hint(path: str | os.PathLike[str], err: BaseException | str) -> str:
    """What to tell the user about a read that failed: repair, or verify."""
    text = str(err)
    if "symbol table node" in text and dangling_groups(path):
        return (f"the writer was killed while it made a group's first links, before any "
                f"data they hold was committed; run `recordkit repair {path}` to read it")
    if "heap" in text and unreadable_fields(path):
        return (f"the writer was killed while it wrote the run's status; run `recordkit "
                f"repair {path}` to read the run as interrupted, with every committed epoch")
    if "addr overflow" in text and needs_repair(path):
        return (f"the writer was killed while flushing; run `recordkit repair {path}` to "
                "make every committed epoch readable again")
    if "truncated file" in text and needs_repair(path):
        return (f"the file ends before its header says: if its writer ran out of disk or "
                f"was killed, `recordkit repair {path}` makes the committed epochs readable; "
                "if it was cut short by a copy, copy it again")
    return "run `recordkit verify` on it"


def repair(path: str | os.PathLike[str]) -> str:
    """Make a record killed in the middle of a flush readable again.

    HDF5 writes the end-of-file address in the superblock and the metadata that points
    past it in no fixed order; a SIGKILL between the two (about 1 kill in 200 in
    benchmarks/crash_kills.py) leaves blocks the file holds but the superblock does not
    count, and reads of them fail with "addr overflow". Repair sets that address to the
    file's size (as ``h5clear --increment`` does). A run field that a kill while closing
    left unreadable (:data:`REWRITTEN_FIELDS`) is written again with the value it had
    before. Nothing else is changed.

    Returns:
        What was done, in one sentence.

    Raises:
        RecordLockedError: a live process writes the run (its end address is moving).
        RecordkitError: the file is not HDF5 with a version 0/1 superblock.
    """
    file_path = Path(path)
    if not file_path.exists():
        raise RecordNotFoundError(f"no such file {str(file_path)!r} to repair")
    if file_path.is_dir():
        raise NotARecordError(f"{str(file_path)!r} is a folder; repair takes record files "
                              "(<root>/<experiment>/<run_id>.h5)")
    if is_locked(file_path):
        raise RecordLockedError(f"{str(file_path)!r} is being written by a live process; "
                                "repair it after that process ends")
    found = _superblock(file_path)
    if found is None:
        raise RecordkitError(f"{str(file_path)!r}: no HDF5 version 0/1 superblock found; "
                             "recordkit repair handles the files recordkit writes only")
    field_at, eoa, base, size_of_offsets = found
    size = file_path.stat().st_size
    done = []
    mode = file_path.stat().st_mode
    try:
        if base + eoa != size:
            if not mode & 0o200:
                file_path.chmod(mode | 0o200)
            with open(file_path, "r+b") as fh:
                fh.seek(field_at)
                fh.write((size - base).to_bytes(size_of_offsets, "little"))
                fh.flush()
                os.fsync(fh.fileno())
            done.append(f"end-of-file address set from {eoa} to {size - base} "
                        "(the file's size)")
        groups = dangling_groups(file_path)
        if groups:
            if not mode & 0o200:
                file_path.chmod(mode | 0o200)
            with open(file_path, "r+b") as fh:
                for _, btree in groups:
                    fh.seek(btree + 6)  # the leaf's entry count: no node, no links
                    fh.write(b"\0\0")
                fh.flush()
                os.fsync(fh.fileno())
            done.append("links a kill cut before they were written removed from "
                        + ", ".join(f"/{name}" for name, _ in groups))
        fields = unreadable_fields(file_path)
        if fields:
            if not mode & 0o200:
                file_path.chmod(mode | 0o200)
            _rewrite_fields(file_path, fields)
            done.append("run fields " + ", ".join(fields) + " written again as before "
                        "the close a kill cut")
    except OSError as err:
        raise RecordkitError(f"cannot repair {str(file_path)!r}: {err.strerror}") from err
    finally:
        if not mode & 0o200:
            file_path.chmod(mode)
    if not done:
        return f"{file_path}: nothing to repair (its end address {eoa} is its size)"
    return f"{file_path}: " + "; ".join(done)


def _rewrite_fields(path: Path, fields: list[str]) -> None:
    """Each unreadable root attribute of *fields* deleted (HDF5 does not free a deleted
    attribute's heap object, so the missing one is not touched) and written anew."""
    try:
        f = reopen(path)
    except Exception as err:
        raise RecordkitError(f"cannot repair {str(path)!r}: {err}") from None
    with f:
        for key in fields:
            del f.attrs[key]
            value = REWRITTEN_FIELDS[key]
            if value is not None:
                f.attrs[key] = value
        f.flush()
        os.fsync(int(f.id.get_vfd_handle()))
