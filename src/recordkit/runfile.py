"""The file of one run on the write side: created under a hidden name and published once
its header is in it, reopened to resume, locked against a second writer, flushed,
checked for space, and closed read-only."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recordkit import system as system_info
from recordkit.codec import decode_params, dumps_json, loads_json, params_hash
from recordkit.diskspace import SpaceCheck, write_error
from recordkit.errors import (
    NotARecordError,
    RecordDamagedError,
    RecordExistsError,
    RecordkitError,
    RecordWriteError,
)
from recordkit.format.attrs import attr_str, is_record
from recordkit.format.checksums import identity_crc
from recordkit.format.extras import prepare_extra, write_extra
from recordkit.format.files import (
    RecordFile,
    close,
    file_handle,
    flush,
    hdf5_size,
    is_open,
    new_file,
    open_read_only,
    preallocate,
    reopen,
)
from recordkit.format.header import (
    params_hash_crcs,
    read_fields,
    read_format_version,
    read_info,
    read_params,
    write_info,
    write_new_run,
    write_params,
    write_reopened,
)
from recordkit.format.history import read_history
from recordkit.format.layout import FORMAT_VERSION
from recordkit.format.safety import check_file, check_layout
from recordkit.locking import RunLock
from recordkit.params import RunParams
from recordkit.paths import record_files, resolve_path
from recordkit.scheduler import default_run_name

__all__ = ["RunFile", "RunStart", "check_before_resume", "find_unfinished", "new_run_id",
           "resume_run", "start_run"]


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A run id that sorts by creation time and is unique even within one microsecond.

    Example:
        >>> a = new_run_id(); b = new_run_id()
        >>> a != b and len(a) == len(b) == 29
        True
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}"


class RunFile:
    """The open file of one run, its process lock and the thread lock that serialises
    every HDF5 call on it (the training thread's and the snapshot writer's).

    Use :meth:`create` or :meth:`resume`; :attr:`file` is the open h5py file, which the
    ``format`` modules read and write.
    """

    def __init__(self, path: Path, file: RecordFile, run_lock: RunLock) -> None:
        self.path = path
        self.file: RecordFile | None = file
        self.lock = threading.RLock()
        self._run_lock: RunLock | None = run_lock
        self._space = SpaceCheck(path)
        #: The copy a resume writes into until :meth:`publish` (None once published).
        self._unpublished: Path | None = None

    @classmethod
    def create(cls, folder: Path, now: _dt.datetime,
               write_header: Callable[[RecordFile, str, Path], None]) -> RunFile:
        """A new record in *folder* with a fresh run id. *write_header* (file, run id,
        final path) fills it before it is published: a process killed inside it leaves
        no half-made record for readers, only a hidden ``.<run_id>.h5.part``."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RecordWriteError(
                f"cannot create the experiment folder {str(folder)!r}: {err.strerror}; "
                "choose a root you can write to"
            ) from err
        for _attempt in range(5):
            run_id = new_run_id(now)
            path = folder / f"{run_id}.h5"
            partial = folder / f".{run_id}.h5.part"
            run_lock = RunLock.acquire(path)
            try:
                if path.exists():
                    raise FileExistsError(path)
                f = new_file(partial)
                break
            except FileExistsError:
                run_lock.release()
                continue
            except OSError as err:
                run_lock.release()
                raise write_error(err, f"create the record {str(path)!r}", folder.parent
                                  ) from err
        else:  # pragma: no cover - five random collisions in one microsecond
            raise RecordExistsError(f"could not find a free run id in {str(folder)!r}")
        run = cls(path, f, run_lock)
        try:
            with run.as_write_error("write the run header"):
                write_header(f, run_id, path)
                preallocate(f)
                flush(f)
        except BaseException:
            with contextlib.suppress(Exception):
                close(f)
            with contextlib.suppress(OSError):
                partial.unlink()
            run_lock.release()
            raise
        with run.as_write_error("publish the record"):
            os.replace(partial, path)
        return run

    @classmethod
    def resume(cls, path: Path) -> RunFile:
        """An existing record, reopened to continue it (made writable again), after the
        safety checks ``load`` makes (:func:`check_before_resume`): a file that load
        refuses is refused before anything of it is read or written (its mode too).

        Raises:
            RecordLockedError: another process has the run open.
            NotARecordError: the file is not a recordkit record, or of a newer format.
            UnsafeRecordError: the file reaches outside itself or claims more than it
                holds (what load refuses it for).
            RecordDamagedError: its header, tables or params are damaged.
        """
        run_lock = RunLock.acquire(path)
        try:
            check_before_resume(path)
        except BaseException:
            run_lock.release()
            raise
        # The resume's header (status, name, restarts, params) is written into a copy,
        # published over the record once flushed: a kill inside those writes leaves the
        # record as it was (HDF5 writes a flush's blocks in no fixed order, and a kill
        # between a block and what it references left a record load refused; issue 17).
        partial = path.with_name(f".{path.stem}.h5.part")
        try:
            shutil.copyfile(path, partial)
            f = reopen(partial)
        except OSError as err:
            with contextlib.suppress(OSError):
                partial.unlink()
            run_lock.release()
            raise write_error(err, f"reopen the record {str(path)!r}", path) from err
        if not is_record(f):
            close(f)
            with contextlib.suppress(OSError):
                partial.unlink()
            run_lock.release()
            raise NotARecordError(f"{str(path)!r} is not a recordkit record; cannot resume it")
        run = cls(path, f, run_lock)
        run._unpublished = partial
        return run

    def publish(self) -> None:
        """Put the resumed copy in the record's place (after its header was flushed): one
        rename, so a reader sees the record before the resume or after, never between.
        The copy is fsynced first, or a power loss could keep the rename and not the
        bytes."""
        partial, self._unpublished = self._unpublished, None
        if partial is None:
            return
        with self.as_write_error("publish the resumed record"):
            assert self.file is not None
            flush(self.file, fsync=True)
            os.replace(partial, self.path)

    def discard(self) -> None:
        """Close a resume that failed before :meth:`publish`, removing its copy; the
        record stays as it was."""
        partial, self._unpublished = self._unpublished, None
        self.close(read_only=False)
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink()

    @property
    def open(self) -> bool:
        return is_open(self.file)

    @contextlib.contextmanager
    def as_write_error(self, what: str) -> Iterator[None]:
        """Turn a failed write into a :class:`RecordWriteError` saying *what* failed."""
        try:
            yield
        except RecordkitError:
            raise
        except OSError as err:
            raise write_error(err, what, self.path) from err
        except (RuntimeError, ValueError, KeyError) as err:  # h5py's other error types
            if "errno = " in str(err):  # a system call failed inside HDF5 (e.g. on flush)
                raise write_error(OSError(str(err)), what, self.path) from err
            raise RecordWriteError(
                f"cannot {what} in {str(self.path)!r}: {type(err).__name__}: {err}"
            ) from err

    def ensure_space(self, nbytes: int, what: str) -> None:
        """Refuse a write of *nbytes* the disk (or RLIMIT_FSIZE) cannot take, before HDF5
        starts it (see :mod:`recordkit.diskspace`)."""
        f = self.file
        if f is None:
            return

        def file_size() -> int:  # on disk, or as HDF5 knows it when that is ahead
            assert f is not None
            return max(os.fstat(file_handle(f)).st_size, hdf5_size(f))

        self._space.ensure(nbytes, what, file_size=file_size)

    def write_params(self, document: str, flagged: list[str]) -> None:
        """The params document and its flagged keys (``unserialisable``)."""
        with self.as_write_error("write params"):
            self.ensure_space(len(document.encode("utf-8")), "write params")
            write_params(self._open_file(), document, dumps_json(flagged))

    def write_info(self, info: Mapping[str, Any]) -> None:
        """The run facts (``/info``)."""
        with self.as_write_error("write info"):
            text = dumps_json(info)
            self.ensure_space(len(text.encode("utf-8")), "write info")
            write_info(self._open_file(), text)

    def write_extra(self, key: str, value: Any) -> list[str]:
        """What ``Recorder.add`` stores under *key*; returns the keys inside it stored as
        their repr. The space is checked before HDF5 starts: a write that fails inside it
        can damage what earlier commits wrote."""
        with self.as_write_error(f"add {key!r}"):
            extra = prepare_extra(key, value)
            self.ensure_space(extra.nbytes, f"add {key!r}")
            return write_extra(self._open_file(), extra)

    def _open_file(self) -> RecordFile:
        assert self.file is not None
        return self.file

    def flush(self, *, durable: bool) -> None:
        """Flush (and with *durable* fsync) what was written."""
        assert self.file is not None
        flush(self.file, fsync=durable)

    def commit(self, *, durable: bool) -> None:
        """:meth:`flush`, then check that the file is still where readers look for it
        and that its lock is still this process's."""
        self.flush(durable=durable)
        self._check_still_there()
        if self._run_lock is not None:
            self._run_lock.check()

    def fsync_handle(self) -> int | None:
        """The descriptor to fsync after the lock is released, or None when closed."""
        return file_handle(self.file) if self.file is not None and is_open(self.file) else None

    def _check_still_there(self) -> None:
        """A removed file (or folder) takes writes without error until it is closed, and
        then they are lost: say so at the first commit after the removal."""
        f = self.file
        if f is None:
            return
        try:
            same = os.path.samestat(os.stat(self.path), os.fstat(file_handle(f)))
        except OSError:
            same = False
        if not same:
            error = RecordWriteError(
                f"cannot commit in {str(self.path)!r}: the record (or its folder) was "
                "removed or replaced while the run was being written; what it held is lost "
                "when the run closes. Restore the folder or start a new run")
            error.errno = errno.ENOENT
            raise error

    def close(self, *, read_only: bool) -> None:
        """Close the file and release the process lock; with *read_only*, take away the
        write bits (a closed run is not changed again). Safe to call twice."""
        f, self.file = self.file, None
        try:
            if is_open(f):
                assert f is not None
                with contextlib.suppress(Exception):
                    close(f)
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None
            if read_only:
                with contextlib.suppress(OSError):
                    mode = self.path.stat().st_mode
                    self.path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_before_resume(path: Path) -> None:
    """What ``recordkit.load`` checks of a file before it reads it, of the whole file at
    once (read-only: a refused file is left as it was, byte for byte): every link a hard
    link, no storage or virtual source outside the file, no size claimed beyond what it
    can hold (:func:`~recordkit.format.safety.check_file`), a record of a format version
    this recordkit writes, its run fields and tables laid out as a record's
    (:func:`~recordkit.format.safety.check_layout`), and its params matching their hash.
    Without it a resume read what an external link pointed to (another file's content)
    and stored it in the record (issue 17). A file that cannot be opened is left to the
    writable open, which says why.

    Raises:
        UnsafeRecordError, NotARecordError, RecordDamagedError: as load raises them.
    """
    try:
        f = open_read_only(path)
    except OSError:
        return  # missing, not HDF5, damaged: the writable open reports it
    with f:
        try:
            check_file(f, path)
            if not is_record(f):
                raise NotARecordError(f"{str(path)!r} is not a recordkit record; cannot "
                                      "resume it")
            check_layout(f, path)
            version = read_format_version(f)
            if version > FORMAT_VERSION:
                raise NotARecordError(
                    f"{str(path)!r} is a record of format version {version}; this "
                    f"recordkit reads up to version {FORMAT_VERSION}: upgrade recordkit")
            stored = attr_str(f, "params_hash")
            text, _ = read_params(f)
            digest = _params_hash_of(text)
            # (text that is not JSON at all fails the resume's own read, as it did; a
            # text whose hash header_crc32c vouches for is one a kill cut from its hash)
            if stored and digest is not None and digest != stored and (
                    identity_crc(digest) not in params_hash_crcs(f)):
                raise RecordDamagedError(
                    f"{str(path)!r} is damaged: its params (/params) do not match the "
                    f"params_hash {stored!r} written with them, so the stored bytes "
                    "changed; run `recordkit verify` on it")
        except RecordkitError:
            raise
        except Exception as err:  # h5py's errors on a damaged file
            raise RecordDamagedError(
                f"{str(path)!r} is damaged: {type(err).__name__}: {err}; run "
                "`recordkit verify` on it; it cannot be resumed") from None


def _params_hash_of(text: str) -> str | None:
    try:
        return params_hash(text)
    except ValueError:  # not even JSON any more
        return None


def find_unfinished(root: str | os.PathLike[str], experiment: str, *, name: str | None,
                    params_hash: str, reached_epoch: int) -> Path | None:
    """The newest record of *experiment* under *root* that did not complete, has the
    given params hash (and name, when not None) and holds a metric row at
    *reached_epoch* or later: the run a restarted process continues. None when no such
    record can be read."""
    found: list[tuple[str, str, Path]] = []
    folder = Path(root) / experiment
    if not folder.is_dir():
        return None
    for path in record_files(Path(root), experiment):
        try:
            with open_read_only(path) as f:
                check_file(f, path)
                check_layout(f, path)  # run fields and tables as a load would check them
                if not is_record(f) or attr_str(f, "status") == "completed":
                    continue
                if attr_str(f, "params_hash") != params_hash or (
                        name is not None and attr_str(f, "name") != name):
                    continue
                epochs = [int(rows["epoch"].max()) for rows in read_history(f).values()
                          if len(rows)]
                if epochs and max(epochs) >= reached_epoch:
                    found.append((attr_str(f, "created"), attr_str(f, "run_id"), path))
        except Exception:  # unreadable, damaged or unsafe: not a run to continue
            continue
    return max(found)[2] if found else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recordkit")
    except PackageNotFoundError:
        return "unknown"


def _capture_system(root: Path) -> dict[str, Any]:
    try:
        return system_info.capture(root)
    except Exception as err:  # system info must never stop a run
        return {"notes": [f"system: {type(err).__name__}: {err}"]}


@dataclasses.dataclass
class RunStart:
    """What a recorder learns when its run's file is made or reopened."""

    run: RunFile
    run_id: str
    experiment: str
    name: str
    created: _dt.datetime
    #: The status and error the file had before a resume; None for a new run.
    previous: tuple[str, str] | None
    info: dict[str, Any]
    #: The committed history of a resumed run, per metric.
    history: dict[str, np.ndarray]


def start_run(root: Path, experiment: str, name: str | None, created: _dt.datetime | None,
              params: RunParams, *, system: bool | Mapping[str, Any],
              checksum: bool) -> RunStart:
    """Create the record of a new run under ``root/experiment``: its header (run fields,
    params, system info unless *system* is False; a mapping is stored as given) and its
    empty tables, published once complete."""
    now = _dt.datetime.now(_dt.timezone.utc) if created is None else (
        created if created.tzinfo else created.replace(tzinfo=_dt.timezone.utc))
    names: dict[str, str] = {}

    def write_header(f: RecordFile, run_id: str, path: Path) -> None:
        names["run_id"] = run_id
        names["name"] = name if name is not None else default_run_name(run_id)
        # warns at the caller of Recorder(): encode, this, create, start_run, __init__
        document = params.encode(path, stacklevel=5)
        write_new_run(f, {
            "recordkit_version": _version(), "run_id": run_id, "name": names["name"],
            "experiment": experiment, "status": "running", "created": now.isoformat(),
            "ended": "", "error": "", "restarts": "[]",
        }, params=document, unserialisable=dumps_json(params.flagged),
            system=system_info.masked_by_shape(system) if isinstance(system, Mapping)
            else _capture_system(root) if system else {},
            checksum=checksum)

    run = RunFile.create(root / experiment, now, write_header)
    return RunStart(run, names["run_id"], experiment, names["name"], now, None, {}, {})


def resume_run(root: Path, resume: str | os.PathLike[str], experiment: str | None,
               name: str | None, params: RunParams, evaluation: str | None = None) -> RunStart:
    """Reopen the record *resume* (a path, or a run id under *root*) to continue it:
    running again, its params merged under *params*, the restart listed (marked with
    ``"evaluation"`` when the run is reopened only to add an evaluation's results)."""
    path = resolve_path(resume, root, experiment)
    run = RunFile.resume(path)
    try:
        with run.as_write_error("reopen the run"):
            f = run.file
            assert f is not None
            fields = read_fields(f)
            params_text, flagged = read_params(f)
            params.continue_from(decode_params(params_text), flagged)
            info = dict(read_info(f))
            history = read_history(f)
            created = _dt.datetime.fromisoformat(fields["created"])
        last_epoch = max((int(rows["epoch"][-1]) for rows in history.values() if len(rows)),
                         default=-1)
        restarts = loads_json(fields["restarts"] or "[]")
        restart = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "previous_status": fields["status"],
            "last_epoch": last_epoch,
            "pid": os.getpid(),
        }
        if evaluation is not None:
            restart["evaluation"] = evaluation
        restarts.append(restart)
        name = name if name is not None else fields["name"]
        document = params.encode(path, stacklevel=3)  # encode, resume_run, __init__
        with run.as_write_error("reopen the run"):
            write_reopened(f, name=name, restarts=dumps_json(restarts), params=document,
                           unserialisable=dumps_json(params.flagged))
            run.flush(durable=False)
        run.publish()
    except BaseException:
        run.discard()  # the lock too: the run can be resumed again
        raise
    return RunStart(run, fields["run_id"], fields["experiment"], name, created,
                    (fields["status"], fields["error"]), info, history)
