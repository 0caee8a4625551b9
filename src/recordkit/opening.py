"""Opening a record read-only, and turning every failure into the right RecordkitError:
not found, a folder, not HDF5, busy (a live writer), damaged (with a repair or verify
hint)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from recordkit.codec import loads_json, params_hash
from recordkit.errors import (
    NotARecordError,
    RecordBusyError,
    RecordDamagedError,
    RecordkitError,
    RecordNotFoundError,
)
from recordkit.format.attrs import is_record, read_text
from recordkit.format.files import RecordFile, is_open, open_id, open_read_only
from recordkit.format.header import read_format_version
from recordkit.format.layout import FORMAT_NAME, FORMAT_VERSION, INFO
from recordkit.format.safety import check_dataset, check_root
from recordkit.format.summary import read_summary
from recordkit.locking import is_locked
from recordkit.repair import damage_hint, has_hdf5_signature, open_with_patched_eof

__all__ = ["check_params_hash", "open_record", "read_closed_summary", "read_consistently",
           "read_info_alone",
           "reading"]

T = TypeVar("T")

#: Attempts of a read that a live writer's write got in the way of, and the first pause.
_ATTEMPTS = 3
_PAUSE = 0.05


def open_record(path: Path) -> RecordFile:
    """Open a record file read-only, turning every failure into a RecordkitError.

    Raises:
        RecordNotFoundError: nothing at *path*.
        NotARecordError: a folder, or a file that is not HDF5.
        RecordBusyError: a live writer holds it and it could not be read consistently.
        RecordDamagedError: an HDF5 file HDF5 cannot open (with what to do about it).
    """
    patched = open_with_patched_eof(path)  # a killed flush's stale end address, read around
    if patched is not None:
        return patched
    try:
        return open_read_only(path)
    except OSError as err:
        if not path.exists():
            raise RecordNotFoundError(f"no record at {str(path)!r}") from None
        if path.is_dir():
            raise NotARecordError(f"{str(path)!r} is a folder, not a record file; "
                                  "use recordkit.load_all for a folder of runs") from None
        if "locking flag values don't match" in str(err):
            # Already open in this process through plain h5py, whose default locking
            # HDF5 will not mix with ours: share that setting instead.
            try:
                return open_read_only(path, shared_locking=True)
            except OSError:
                pass
        if not has_hdf5_signature(path):
            raise NotARecordError(
                f"{str(path)!r} is not a recordkit record (not an HDF5 file)"
            ) from None
        if is_locked(path):
            raise RecordBusyError(
                f"{str(path)!r} is being written by another process and could not be read "
                f"consistently ({err}); try again in a moment"
            ) from None
        raise RecordDamagedError(
            f"{str(path)!r} is damaged and cannot be opened ({err}); "
            f"{damage_hint(path, err)}"
        ) from None


def read_closed_summary(path: Path) -> dict[str, Any] | None:
    """The one-attribute summary of a closed run of this format version, read with
    HDF5's low-level calls: root attributes only (their sizes checked), no link followed
    and no dataset read. None when the run has none that can be used (running, killed,
    too large, another version, or not readable this way): the full read says why.

    Raises:
        UnsafeRecordError: a root attribute claims more than the safety limit.
    """
    # A file whose superblock a killed flush left short (repair.open_with_patched_eof)
    # needs no patched view here: a read within the old end address gets the same
    # bytes, and an open or a read past it fails, which sends the run to the full read,
    # which patches.
    try:
        fid = open_id(path)
    except Exception:
        return None  # missing, not HDF5, busy, damaged: the full read says which
    try:
        check_root(fid, path)
        # The rest of the file is checked (check_file) when the full header is needed.
        summary = read_summary(fid)
        if summary is None:
            return None
        if "format" in summary:  # it says what the root's attributes say
            known = (summary["format"], summary.get("format_version"))
        else:
            known = (FORMAT_NAME if is_record(fid) else "", read_format_version(fid))
        return summary if known == (FORMAT_NAME, FORMAT_VERSION) else None
    except RecordkitError:
        raise
    except Exception:
        return None  # the full read says what is wrong
    finally:
        fid.close()


def check_params_hash(path: Path, text: str, stored: str) -> None:
    """The params text carries no HDF5 checksum; its hash in the root attribute
    ``params_hash`` is one. A mismatch is damage, never params read as other values.

    Raises:
        RecordDamagedError: *text* does not have the hash *stored* (when there is one).
    """
    if not stored:  # a file that never had one: nothing to compare
        return
    try:
        same = params_hash(text) == stored
    except ValueError:  # not even JSON any more
        same = False
    if not same:
        raise RecordDamagedError(
            f"{str(path)!r} is damaged: its params (/params) do not match the "
            f"params_hash {stored!r} written with them, so the stored bytes changed; "
            f"run `recordkit verify` on it")


def read_consistently(path: Path, read: Callable[[RecordFile], T]) -> T:
    """``read(file)`` on the record opened read-only. A run being written can be caught
    mid-write: a live writer is given a moment (three attempts); any other failure of
    *read* is damage.

    Raises:
        RecordkitError: what :func:`open_record` or *read* raised, or
            RecordBusyError / RecordDamagedError for another exception of *read*.
    """
    last_error: RecordkitError | None = None
    for attempt in range(_ATTEMPTS):
        try:
            with open_record(path) as f:
                return read(f)
        except RecordBusyError as err:
            last_error = err
            time.sleep(_PAUSE * (attempt + 1))
        except RecordkitError:
            raise
        except Exception as err:
            if is_locked(path):
                last_error = RecordBusyError(
                    f"{str(path)!r} is being written by another process and could "
                    f"not be read consistently ({type(err).__name__}: {err}); try again"
                )
                time.sleep(_PAUSE * (attempt + 1))
                continue
            raise RecordDamagedError(
                f"{str(path)!r} is damaged: {type(err).__name__}: {err}; "
                f"{damage_hint(path, err)}"
            ) from None
    assert last_error is not None
    raise last_error


@contextlib.contextmanager
def reading(path: Path, held: RecordFile | None = None) -> Iterator[RecordFile]:
    """The record for one lazy read: *held* when it is open (a ``with record:`` block),
    else opened for this read only (a handle left open would clash with plain h5py in
    this process). Damage found by the read (e.g. a fletcher32 checksum) is a
    RecordDamagedError that says where and what."""
    try:
        if is_open(held):
            assert held is not None
            yield held
            return
        with open_record(path) as f:
            yield f
    except RecordkitError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise RecordDamagedError(
            f"{str(path)!r} is damaged: reading it failed with "
            f"{type(err).__name__}: {err}; {damage_hint(path, err)}"
        ) from None


def read_info_alone(path: str | os.PathLike[str]) -> Any:
    """The run facts (``/info``) of a record, read and checked alone (nothing else in the
    file is walked: about 1 ms per file); None when the file is not a record or has no
    facts.

    Raises:
        RecordkitError: the file cannot be opened, or its ``/info`` is unsafe.
        ValueError: the facts are not JSON.
    """
    file_path = Path(path)
    with open_record(file_path) as f:
        if not is_record(f):
            return None
        try:
            check_dataset(f, INFO, file_path)
        except KeyError:
            return None
        text = read_text(f, INFO)
    return None if text is None else loads_json(text)
