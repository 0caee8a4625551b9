"""Disk full, file too large, read-only folder, folder removed during training.

The core part of on_error: the Recorder raises RecordWriteError (what, where, why), and
the record stays readable up to the last commit that returned. The callbacks' on_error
("raise" | "warn") is tested with the integrations.

- file too large: RLIMIT_FSIZE in a child process (SIGXFSZ ignored, so write() fails with
  EFBIG instead of the signal killing the child);
- disk full: a real ENOSPC on a 3 MiB tmpfs mounted for the test (needs root and mount;
  skipped, with the reason, where it cannot be mounted);
- read-only folder: a read-only bind mount (root ignores file modes), else chmod;
- folder removed: shutil.rmtree while the run is open.

Budget: ~6 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordWriteError
from tests.support import takes_o_direct

ROOT = Path(__file__).resolve().parents[1]


def _writer(root: str, fsize_limit: int, rows: int = 512) -> None:
    """Child: record snapshots of one tensor of *rows* x 512 float32 (512: 1 MiB, written
    through HDF5; 1040: one 2 MiB chunk, written with O_DIRECT) until a write fails;
    report what happened as JSON."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if fsize_limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    committed, error, path, rec = -1, None, None, None
    try:
        rec = recordkit.Recorder(root, params={"x": 1}, system=False)
        path = str(rec.path)
        for epoch in range(1000):
            rec.log({"loss": float(epoch)}, epoch=epoch)
            rec.snapshot({"w": np.full((rows, 512), epoch, np.float32)}, epoch=epoch)
            rec.commit()
            committed = epoch
    except RecordWriteError as err:
        error = {"type": type(err).__name__, "msg": str(err), "errno": err.errno}
        try:
            rec.close("failed", error=err)
        except RecordWriteError as again:
            error["close"] = str(again)
    except BaseException as err:  # a raw error is a test failure
        error = {"type": type(err).__name__, "msg": str(err), "raw": True}
    direct = rec._snapshots._store.direct_bytes if rec is not None else 0
    print(json.dumps({"committed": committed, "error": error, "path": path,
                      "direct": direct}), flush=True)


def _run_child(call: str) -> dict:
    """Run ``tests.test_diskfull.<call>`` in a child; its last stdout line, as JSON."""
    name = call.split("(", 1)[0]
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_diskfull "
            f"import {name}; {call}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_writer(root: Path, fsize_limit: int = 0, rows: int = 512) -> dict:
    return _run_child(f"_writer({str(root)!r}, {fsize_limit}, {rows})")


#: (rows of the tensor, whether its chunks are written with O_DIRECT, the size limit)
WRITES = {"through HDF5": (512, False, 5), "direct": (1040, True, 9)}


def assert_committed_epochs_readable(result: dict) -> None:
    record = recordkit.load(result["path"])
    last = result["committed"]
    assert last >= 1, result
    assert record.history["loss"][: last + 1].tolist() == [float(e) for e in range(last + 1)]
    assert record.snapshot_epochs[: last + 1] == list(range(last + 1))
    for epoch in range(last + 1):
        assert float(record.weight("w").at(epoch)[0, 0]) == epoch
    assert record.status in ("failed", "interrupted")


def _check_direct(result: dict, direct: bool) -> None:
    """The snapshots before the failure were written the way the case is about (a file
    system without O_DIRECT writes through HDF5 whatever the chunk). The failure itself
    may come from the space check before a snapshot, or from HDF5's own writes."""
    if not direct:
        assert result["direct"] == 0, result
    elif result["direct"] == 0 and (result["path"] is None
                                    or not takes_o_direct(Path(result["path"]).parent)):
        pytest.skip("this file system refuses O_DIRECT")
    else:
        assert result["direct"] > 0, result


@pytest.mark.parametrize("writes", sorted(WRITES))
def test_file_too_large_is_a_clear_error_and_committed_epochs_stay(tmp_path: Path,
                                                                  writes: str) -> None:
    rows, direct, mib = WRITES[writes]
    result = run_writer(tmp_path, fsize_limit=mib * 1024 * 1024, rows=rows)
    error = result["error"]
    assert error is not None and not error.get("raw"), result
    assert error["type"] == "RecordWriteError"
    assert "larger than this process may write" in error["msg"]
    assert result["path"] in error["msg"]
    assert_committed_epochs_readable(result)
    _check_direct(result, direct)


def _big_write(root: str, fsize_limit: int, operation: str) -> None:
    """Child: commit 3 epochs, then one write too big for the disk (or the file limit)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if fsize_limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    rec = recordkit.Recorder(root, params={"x": 1}, system=False)
    for epoch in range(3):
        rec.log({"loss": float(epoch)}, epoch=epoch)
        rec.snapshot({"w": np.full((16, 16), epoch, np.float32)}, epoch=epoch)
        rec.commit()
    rec.add("small", np.arange(10))
    error = None
    try:
        if operation == "add":
            rec.add("big", np.ones(600_000))
        elif operation == "extend":
            rec.extend({"notes": "x" * 5_000_000})
        else:
            rec.set_info({"notes": "x" * 5_000_000})
    except RecordWriteError as err:
        error = {"type": type(err).__name__, "msg": str(err), "errno": err.errno}
    except BaseException as err:  # a raw error is a test failure
        error = {"type": type(err).__name__, "msg": str(err), "raw": True}
    try:
        rec.close("failed", error="disk full")
    except RecordWriteError as again:
        error = {**(error or {}), "close": str(again)}
    print(json.dumps({"committed": 2, "error": error, "path": str(rec.path)}), flush=True)


def run_big_write(root: Path, operation: str, fsize_limit: int = 0) -> dict:
    return _run_child(f"_big_write({str(root)!r}, {fsize_limit}, {operation!r})")


@pytest.mark.parametrize("operation", ["add", "extend", "set_info"])
@pytest.mark.parametrize("limit", ["disk", "file size"])
def test_too_big_add_extend_or_set_info_keeps_committed_epochs(
        tmp_path: Path, operation: str, limit: str) -> None:
    """add() and friends once wrote without checking the space: HDF5 failed half-way and
    the file no longer opened ("bad symbol table node signature")."""
    if limit == "disk":
        disk = tmp_path / "tiny"
        context: contextlib.AbstractContextManager = mounted(
            disk, "-t", "tmpfs", "-o", "size=3m", f"recordkit-{uuid.uuid4().hex[:6]}")
        run = lambda: run_big_write(disk, operation)  # noqa: E731
    else:
        context = contextlib.nullcontext()
        run = lambda: run_big_write(tmp_path, operation, 3 * 1024 * 1024)  # noqa: E731
    with context:
        result = run()
        error = result["error"]
        assert error is not None and not error.get("raw"), result
        assert error["type"] == "RecordWriteError" and result["path"] in error["msg"]
        assert f"cannot {operation.replace('_', ' ')}" in error["msg"] or (
            "cannot write" in error["msg"]), error
        record = recordkit.load(result["path"])
        assert record.history["loss"].tolist() == [0.0, 1.0, 2.0]
        assert [float(record.weight("w").at(e)[0, 0]) for e in range(3)] == [0.0, 1.0, 2.0]
        assert record.extras["small"].tolist() == list(range(10))
        assert "big" not in record.extras
        assert "notes" not in record.params and "notes" not in record.info
        assert record.status == "failed"


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root and mount(8)")
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}); RLIMIT_FSIZE covers "
                    "the write-failure path")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.mark.parametrize("writes", sorted(WRITES))
def test_disk_full_is_a_clear_error_and_committed_epochs_stay(tmp_path: Path,
                                                             writes: str) -> None:
    rows, direct, mib = WRITES[writes]
    disk = tmp_path / "tiny"
    with mounted(disk, "-t", "tmpfs", "-o", f"size={mib - 2}m",
                 f"recordkit-{uuid.uuid4().hex[:6]}"):
        result = run_writer(disk, rows=rows)
        error = result["error"]
        assert error is not None and not error.get("raw"), result
        assert error["type"] == "RecordWriteError"
        assert "disk is full" in error["msg"] and "are free" in error["msg"]
        assert result["path"] in error["msg"]
        assert_committed_epochs_readable(result)
        _check_direct(result, direct)


def test_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    (folder / "default").mkdir(parents=True)
    if os.geteuid() == 0:
        context = mounted(folder, "--bind", "-o", "ro", str(folder))
    else:
        folder.chmod(0o555)
        (folder / "default").chmod(0o555)
        context = contextlib.nullcontext()
    with context, pytest.raises(RecordWriteError, match="not writable") as info:
        recordkit.Recorder(folder, system=False)
    assert str(folder) in str(info.value)


def test_folder_removed_during_training_is_a_clear_error(tmp_path: Path) -> None:
    rec = recordkit.Recorder(tmp_path / "runs", system=False)
    rec.log({"loss": 1.0}, epoch=0)
    rec.commit()
    shutil.rmtree(tmp_path / "runs")
    rec.log({"loss": 0.5}, epoch=1)
    with pytest.raises(RecordWriteError, match="removed") as info:
        rec.commit()
    assert str(rec.path) in str(info.value)
    rec.close("failed", error=info.value)  # closing a run whose file is gone is quiet
    assert rec.closed
