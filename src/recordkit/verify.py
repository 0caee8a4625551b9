"""``recordkit verify``: read every byte of a record and say what is wrong with it.

:func:`verify` checks, in order: that the file opens; that it is safe (no links or storage
outside the file, no crafted sizes: :mod:`recordkit.format.safety`); that it is a record a
:class:`~recordkit.Record` can load; that every chunk of every dataset reads back (a chunk
that fails its fletcher32 checksum, or lies past the end of a truncated file, is reported
with its dataset and rows); and that the snapshot table and the weight datasets agree.

A damaged file can crash or hang the HDF5 library itself, which no ``try`` can catch. So by
default :func:`verify` does the reading in a child process with a time limit and reports a
crash or a hang of the child as damage; ``isolate=False`` reads in this process.

The one fix recordkit makes lives in :mod:`recordkit.repair`: a superblock whose end-of-file
address a kill or a full disk during a flush left different from the file's size
(``recordkit repair``; :func:`recordkit.load` reads around it without writing). Every other
damage (bad disks, bad copies) is reported here, never silently patched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from recordkit.errors import RecordkitError, UnsafeRecordError
from recordkit.format.attrs import is_record, object_name, read_attr
from recordkit.format.extras import extra_keys, read_extra
from recordkit.format.header import check_header_crcs
from recordkit.format.history import read_history
from recordkit.format.layout import (
    CHECKSUM_ATTR,
    CHECKSUMS,
    CRC32C_ATTR,
    EXTRAS,
    FIRST_SNAPSHOT_ATTR,
    HEADER_CRC_FIELDS,
    HISTORY,
    HISTORY_METRIC_CRCS,
    HISTORY_METRICS,
    PACK_PREFIX,
    SNAPSHOTS,
    SUMMARY_ATTR,
    WEIGHT_CHECKSUM_ATTR,
    WEIGHTS,
)
from recordkit.format.safety import check_file
from recordkit.format.summary import build_summary, read_summary, summary_checksum_ok
from recordkit.format.weights import (
    check_checksummed_rows,
    check_object_name,
    is_pack,
    pack_members,
    read_table,
)
from recordkit.locking import is_locked
from recordkit.record import Record
from recordkit.repair import damage_hint, needs_repair, open_with_patched_eof, repair

# Kept importable from here, where they were before recordkit.repair held them.
__all__ = ["VerifyReport", "damage_hint", "main", "needs_repair", "open_interrupted", "repair",
           "verify"]

#: The name :func:`~recordkit.repair.open_with_patched_eof` had before: it opens a record
#: whose end-of-file address a killed flush left short (nothing to do with the
#: ``interrupted`` status).
open_interrupted = open_with_patched_eof

#: Problems reported per dataset before the rest of it is skipped.
MAX_PROBLEMS_PER_DATASET = 5
#: Bytes read at once from a contiguous dataset.
_SLICE_BYTES = 16 << 20


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify` found in one file.

    Attributes:
        path: the file.
        problems: damage found; empty when the file is intact.
        notes: facts worth knowing that are not damage (an interrupted run, uncommitted
            rows a killed writer left behind, datasets without checksums).
        datasets: datasets read.
        chunks: chunks read.
        isolated: whether the reading ran in a child process.
    """

    path: str
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    datasets: int = 0
    chunks: int = 0
    isolated: bool = False

    @property
    def ok(self) -> bool:
        """True when no damage was found."""
        return not self.problems

    def __str__(self) -> str:
        where = "in a subprocess" if self.isolated else "in-process"
        head = (f"{self.path}: {'OK' if self.ok else 'DAMAGED'} "
                f"({self.datasets} datasets, {self.chunks} chunks read {where})")
        lines = [head]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify(path: str | os.PathLike[str], *, isolate: bool = True,
           timeout: float = 300.0) -> VerifyReport:
    """Check a record by reading all of it.

    Args:
        path: the record file.
        isolate: read in a child process, so that a crash or hang of the HDF5 library on
            a damaged file is reported instead of taking this process down.
        timeout: seconds the child may take (only with *isolate*).

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False when damage was found.

    Example:
        >>> import tempfile, numpy as np, recordkit as rk
        >>> with rk.Recorder(tempfile.mkdtemp(), system=False) as rec:
        ...     rec.log({"loss": 0.5}, epoch=0)
        ...     rec.snapshot({"w": np.ones(4)}, epoch=0)
        >>> report = verify(rec.path, isolate=False)
        >>> report.ok, report.problems
        (True, [])
    """
    if not isolate:
        return _verify_here(Path(path))
    command = [sys.executable, "-m", "recordkit.verify", "--json", "--in-process", str(path)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False,
                              env={**os.environ, "PYTHONFAULTHANDLER": "0"})
    except subprocess.TimeoutExpired:
        return VerifyReport(str(path), problems=[
            f"reading the file did not finish within {timeout:g} s in a subprocess: the "
            "HDF5 library loops on it (damaged metadata)"], isolated=True)
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return VerifyReport(str(path), problems=[
            f"reading the file crashed the HDF5 library ({name}) in a subprocess: its "
            "metadata is damaged; it cannot be read safely in-process"], isolated=True)
    try:
        data = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
        report = VerifyReport(**data)
    except (ValueError, IndexError, TypeError):
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return VerifyReport(str(path), problems=[
            f"the verifying subprocess failed (exit {done.returncode}): {' | '.join(tail)}"],
            isolated=True)
    report.isolated = True
    return report


def _verify_here(path: Path) -> VerifyReport:
    report = VerifyReport(str(path))
    try:
        _verify_into(path, report)
    except Exception as err:  # damage that slipped past a more specific check
        report.problems.append(f"reading failed: {_why(err)}")
    if report.problems and needs_repair(path) and any(
            "addr overflow" in p or "truncated file" in p for p in report.problems):
        report.problems.append("the superblock's end-of-file address is not the file's "
                               "size: `recordkit repair` sets it (a kill or a full disk "
                               "during a flush does this; a cut copy cannot be repaired)")
    return report


def _verify_into(path: Path, report: VerifyReport) -> VerifyReport:
    if not path.is_file():
        report.problems.append("no such file")
        return report
    try:
        f = open_with_patched_eof(path) or h5py.File(str(path), "r", locking=False)
    except Exception as err:
        report.problems.append(f"the file cannot be opened as HDF5: {_why(err)}")
        return report
    if needs_repair(path) and not is_locked(path) and f.driver == "fileobj":
        report.notes.append(
            "a kill during a flush left the superblock's end-of-file address short of the "
            "file's end; recordkit reads around it, plain h5py may fail: `recordkit repair` "
            "fixes the file")
    with f:
        try:
            check_file(f, path)
        except UnsafeRecordError as err:
            report.problems.append(f"unsafe, not read further: {err}")
            return report
        except Exception as err:
            report.problems.append(f"its structure cannot be walked: {_why(err)}")
            return report
        if not is_record(f):
            report.problems.append("an HDF5 file but not a recordkit record "
                                   "(no root attribute format='recordkit')")
            return report
        _read_everything(f, path, report)
        _check_header(f, report)
        _check_tables(f, report)
        _check_extras(f, report)
        _check_summary(f, report)
    _check_loads(path, report)
    return report


def _why(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def _read_everything(f: h5py.File, path: Path, report: VerifyReport) -> None:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(
        obj, (h5py.Dataset, h5py.Group)) else None)
    file_size = path.stat().st_size
    _read_attrs(f, "/", report)
    for name in names:
        try:
            obj = f[name]
        except Exception as err:
            report.problems.append(f"/{name} cannot be opened: {_why(err)}")
            continue
        _read_attrs(obj, f"/{name}", report)
        if isinstance(obj, h5py.Dataset):
            report.datasets += 1
            _read_dataset(obj, f"/{name}", file_size, report)


def _read_attrs(obj: h5py.HLObject, where: str, report: VerifyReport) -> None:
    try:
        keys = list(obj.attrs)
    except Exception as err:
        report.problems.append(f"the attributes of {where} cannot be listed: {_why(err)}")
        return
    for key in keys:
        try:
            obj.attrs[key]
        except Exception as err:
            report.problems.append(f"attribute {key!r} of {where} cannot be read: {_why(err)}")


def _read_dataset(ds: h5py.Dataset, where: str, file_size: int, report: VerifyReport) -> None:
    found = 0
    if ds.chunks is None:
        if ds.size and ds.dtype.kind in "biufc" and CHECKSUM_ATTR not in ds.attrs:
            report.notes.append(f"dataset {where} has no checksum: damage inside its data "
                                "cannot be detected")
        try:
            if ds.shape and ds.ndim and ds.size:
                step = max(1, _SLICE_BYTES // max(1, ds.nbytes // max(1, ds.shape[0])))
                for start in range(0, ds.shape[0], step):
                    ds[start:start + step]
            else:
                ds[()]
            report.chunks += 1
        except Exception as err:
            report.problems.append(f"dataset {where} cannot be read: {_why(err)}")
        return
    filters = ds.id.get_create_plist()
    codes = [filters.get_filter(i)[0] for i in range(filters.get_nfilters())]
    checked_elsewhere = (  # v2: CRC32C per chunk, checked in _check_tables / _check_extras
        where.startswith(f"/{CHECKSUMS}/") or CRC32C_ATTR in ds.attrs
        or read_attr(ds, WEIGHT_CHECKSUM_ATTR) == "crc32c"
        # v2: the metric names against their CRCs (read_history, in _check_tables)
        or (where in (f"/{HISTORY}/{HISTORY_METRICS}", f"/{HISTORY}/{HISTORY_METRIC_CRCS}")
            and isinstance(ds.parent.get(HISTORY_METRIC_CRCS), h5py.Dataset)))
    if h5py.h5z.FILTER_FLETCHER32 not in codes and ds.size and not checked_elsewhere:
        report.notes.append(f"dataset {where} has no checksum: damage inside its data "
                            "cannot be detected")
    for region in ds.iter_chunks() if ds.size else ():
        if found >= MAX_PROBLEMS_PER_DATASET:
            report.problems.append(f"dataset {where}: further chunks not checked")
            return
        corner = tuple(s.start for s in region)
        try:
            info = ds.id.get_chunk_info_by_coord(corner)
            if info.byte_offset is not None and info.byte_offset + info.size > file_size:
                raise OSError(f"the chunk lies at bytes {info.byte_offset}.."
                              f"{info.byte_offset + info.size}, past the end of the file "
                              f"({file_size} bytes): the file is truncated")
            ds[region]
            report.chunks += 1
        except Exception as err:
            found += 1
            text = _why(err)
            if "addr overflow" in text and needs_repair(ds.file.filename):
                text += " (a flush was cut by a kill: `recordkit repair` fixes this)"
            if "checksum" in text.lower() or "filter" in text.lower():
                text += " (its fletcher32 checksum does not match: the stored bytes changed)"
            report.problems.append(f"dataset {where}, chunk at {list(corner)}: {text}")


def _same_json(a: Any, b: Any) -> bool:
    """JSON values equal, NaN equal to NaN (a metric's final value may be NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(a == b)
    except Exception:
        return False


def _has_format(text: Any) -> bool:
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and "format" in parsed


def _check_summary(f: h5py.File, report: VerifyReport) -> None:
    """The ``summary`` attribute (what load_all and `recordkit ls` show of a closed run)
    must say what the run's data says."""
    if not read_attr(f, SUMMARY_ATTR):  # none, or empty (a running run's)
        return
    where = ("its summary attribute (what load_all and `recordkit ls` read instead of "
             "the whole file)")
    text = read_attr(f, SUMMARY_ATTR)
    checked = summary_checksum_ok(text) if isinstance(text, str) else None
    if checked is False:
        report.problems.append(f"{where} does not match its sha256 checksum: the stored "
                               "bytes changed; tables of many runs read this run in full")
        return
    if checked is None and _has_format(text):
        report.problems.append(f"{where} has lost the sha256 checksum that summaries "
                               "carrying the format end with: the stored bytes changed")
        return
    stored = read_summary(f)
    if stored is None:
        report.notes.append(f"{where} is not one recordkit writes; tables of many runs "
                            "read this run in full")
        return
    try:
        expected = build_summary(f)
    except Exception as err:
        report.problems.append(f"{where} cannot be compared with the data: {_why(err)}")
        return
    stored.pop("sha256", None)
    if "format" not in stored:  # written before summaries repeated the format
        expected.pop("format", None)
        expected.pop("format_version", None)
    if "captured" not in stored:  # written before summaries held the captured facts
        expected.pop("captured", None)
    differ = sorted(k for k in expected.keys() | stored.keys()
                    if not _same_json(expected.get(k), stored.get(k)))
    if differ:
        report.problems.append(
            f"{where} disagrees with the run's data in {', '.join(differ)}: tables of "
            "many runs show wrong values for this run; recordkit.load reads the data itself")


def _damage(err: BaseException) -> str:
    """A RecordDamagedError's message without the file's path (the report names it)."""
    return str(err).split(" is damaged: ", 1)[-1]


def _check_header(f: h5py.File, report: VerifyReport) -> None:
    """(v2) Every root attribute and text the root's ``header_crc32c`` covers."""
    try:
        check_header_crcs(f, ())  # the attribute itself: there (v2), and intact
    except RecordkitError as err:
        report.problems.append(_damage(err))
        return
    for key in HEADER_CRC_FIELDS:
        try:
            check_header_crcs(f, (key,))
        except RecordkitError as err:
            report.problems.append(_damage(err))
        except Exception as err:
            report.problems.append(f"{key} cannot be checked: {_why(err)}")


def _check_tables(f: h5py.File, report: VerifyReport) -> None:
    """Snapshots listed in the table must exist in every tensor that holds them; in v2
    each of their chunks must match its CRC32C, and no table row or metric name may be
    zeroed."""
    for what, read in (("the history", read_history), ("the snapshot table", read_table)):
        try:
            read(f)
        except Exception as err:
            report.problems.append(f"{what} cannot be read: {_why(err)}")
    try:
        names, sums = f[HISTORY][HISTORY_METRICS], f[HISTORY].get(HISTORY_METRIC_CRCS)
        if isinstance(sums, h5py.Dataset) and names.shape[0] > sums.shape[0]:
            report.notes.append(
                f"{names.shape[0] - sums.shape[0]} metric name(s) past their CRCs: left by "
                "a run killed during a commit; readers ignore them and their rows")
    except Exception:  # no history: read_history above said what is wrong
        pass
    try:
        table = f.get(SNAPSHOTS)
        weights = f.get(WEIGHTS)
        n = int(table.shape[0]) if isinstance(table, h5py.Dataset) else 0
        for key in weights if isinstance(weights, h5py.Group) else []:
            ds = weights[key]
            first = int(ds.attrs.get(FIRST_SNAPSHOT_ATTR, 0))
            listed = max(0, n - first)
            rows = int(ds.shape[0])
            name = object_name(ds)
            if rows < listed and first < n:
                # A tensor added after the first snapshots keeps rows from first on; one
                # dropped later is refused by the recorder, so fewer rows is damage.
                report.problems.append(
                    f"tensor {name!r} holds {rows} snapshots but the table lists {listed} "
                    f"from snapshot {first} on")
            elif rows > listed:
                report.notes.append(
                    f"tensor {name!r} holds {rows - listed} snapshot row(s) past the table: "
                    "left by a run killed while writing a snapshot; readers ignore them")
            if min(rows, listed) > 0:  # (a tensor the table does not list is never read)
                try:
                    check_object_name(ds, key, name)
                    if key.startswith(PACK_PREFIX):  # (v3) and what each member is
                        if not is_pack(ds):
                            report.problems.append(f"/{WEIGHTS}/{key} has the link name "
                                                   "of a pack but is not one")
                        pack_members(ds)
                except RecordkitError as err:
                    report.problems.append(_damage(err))
            report.problems.extend(check_checksummed_rows(f, key, listed))
            for row in range(min(rows, listed) if ds.size else 0):  # zero-size: no data
                coord = (row,) + (0,) * (ds.ndim - 1)
                if ds.chunks is not None and ds.id.get_chunk_info_by_coord(
                        coord).byte_offset is None:
                    report.problems.append(
                        f"tensor {name!r}: snapshot {first + row} is listed but its data "
                        "was never written (it would read as zeros)")
                    break
    except Exception as err:
        report.problems.append(f"the snapshot table cannot be checked: {_why(err)}")


def _check_extras(f: h5py.File, report: VerifyReport) -> None:
    """Extras HDF5 cannot checksum (JSON text, 0-d arrays) carry a SHA-256 attribute:
    read each back through :func:`recordkit.format.read_extra`, which compares it.
    Chunked extras were read chunk by chunk, their fletcher32 checked, above."""
    group = f.get(EXTRAS)
    if not isinstance(group, h5py.Group):
        return
    try:
        extra_keys(f)  # their names (v2: against their CRCs and link names)
    except Exception as err:
        report.problems.append(f"the names of the extras: {_why(err)}")
    for key in group:
        try:
            obj = group[key]
            datasets = [obj] if isinstance(obj, h5py.Dataset) else [
                obj[k] for k in obj if isinstance(obj[k], h5py.Dataset)]
            if all(ds.fletcher32 and CRC32C_ATTR not in ds.attrs for ds in datasets):
                continue  # fletcher32 alone (version 1): checked chunk by chunk above
            read_extra(obj)
        except Exception as err:
            text = _why(err)
            if "checksum" in text:
                text += " (the stored bytes changed)"
            report.problems.append(f"extra /{EXTRAS}/{key} cannot be read back: {text}")


def _check_loads(path: Path, report: VerifyReport) -> None:
    try:
        record = Record(path)
        stored = record.stored_status
    except RecordkitError as err:
        report.problems.append(f"recordkit.load fails: {err}")
        return
    if stored == "running":
        if is_locked(path):
            report.notes.append("the run is being written by a live process right now")
        else:
            report.notes.append("status 'running' but no process writes it: an interrupted "
                                "run (killed or crashed); every committed epoch is kept")
    try:
        epochs = record.epochs
        snapshots = len(record.snapshot_epochs)
    except RecordkitError as err:  # a part refused on first use
        if not any(str(err) in problem for problem in report.problems):  # said above
            report.problems.append(f"recordkit.load fails on first use of a part: {err}")
        return
    report.notes.append(f"status {record.status}; {len(epochs)} epochs "
                        f"(last {epochs[-1] if epochs else '-'}); {snapshots} snapshots")


def _to_json(report: VerifyReport) -> str:
    data: dict[str, Any] = dataclasses.asdict(report)
    return json.dumps(data, ensure_ascii=True, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recordkit.verify [--json] [--in-process] FILE...``: exit 1 on damage."""
    parser = argparse.ArgumentParser(prog="python -m recordkit.verify")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON report per line")
    parser.add_argument("--in-process", action="store_true",
                        help="read in this process (no subprocess)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        report = verify(path, isolate=not args.in_process)
        print(_to_json(report) if args.json else report, flush=True)
        status = status or int(not report.ok)
    return status


if __name__ == "__main__":
    sys.exit(main())
