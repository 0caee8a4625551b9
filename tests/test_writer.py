"""The background snapshot writer: values, ordering, back-pressure, errors that surface."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import h5py
import numpy as np
import pytest

from recordkit import Recorder, load
from recordkit import snapshots as snapshots_module
from recordkit.errors import RecordkitWarning, RecordWriteError, SnapshotError
from recordkit.writer import SnapshotJob, SnapshotWriter


def _weights(epoch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(epoch)
    return {
        "fc.weight": rng.standard_normal((64, 33)).astype(np.float32),
        "fc.bias": rng.standard_normal(33),
        "steps": np.array(epoch, dtype=np.int64),
        "big/conv": rng.standard_normal((40, 8, 9)).astype(np.float32),
    }


@pytest.mark.parametrize("background", [True, False])
def test_values_read_back_exactly(tmp_path, monkeypatch, background):
    # Small slices so that the sliced write path (one lock hold per slice) is exercised.
    monkeypatch.setattr(snapshots_module, "SLICE_BYTES", 2048)
    given = []
    with Recorder(tmp_path, system=False, background=background) as rec:
        for epoch in range(4):
            weights = _weights(epoch)
            given.append({k: v.copy() for k, v in weights.items()})
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot(weights, epoch=epoch, step=10 * epoch)
            rec.commit()
    r = load(rec.path)
    assert r.snapshot_epochs == [0, 1, 2, 3]
    for epoch in range(4):
        stored = r.weights(epoch)
        assert stored.keys() == given[epoch].keys()
        for name, value in given[epoch].items():
            np.testing.assert_array_equal(stored[name], value)
            assert stored[name].dtype == value.dtype
    with h5py.File(rec.path, "r") as f:
        assert f["snapshots"]["step"].tolist() == [0, 10, 20, 30]


def test_background_snapshot_is_a_copy(tmp_path):
    weights = {"w": np.zeros((256, 256), dtype=np.float32)}
    with Recorder(tmp_path, system=False) as rec:
        for epoch in range(3):
            weights["w"][:] = epoch
            rec.snapshot(weights, epoch=epoch)
            weights["w"][:] = -1  # the next "training step" changes the tensor in place
    stored = load(rec.path).weight("w")
    assert [float(stored[i].mean()) for i in range(3)] == [0.0, 1.0, 2.0]


def test_same_epoch_twice_replaces(tmp_path):
    with Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": np.ones(3)}, epoch=0)
        rec.snapshot({"w": np.full(3, 2.0)}, epoch=0)
        rec.snapshot({"w": np.full(3, 3.0)}, epoch=1)
    r = load(rec.path)
    assert r.snapshot_epochs == [0, 1]
    assert r.weight("w")[0].tolist() == [2.0, 2.0, 2.0]


def _wait_idle(rec: Recorder) -> None:
    """Wait until the writer has taken every job, without consuming its error."""
    deadline = time.monotonic() + 10
    while rec._snapshots.writer.pending_bytes and time.monotonic() < deadline:
        time.sleep(0.005)


def _reopen(rec: Recorder, mode: str) -> None:
    """Swap the recorder's handle for one opened with *mode*: "r" makes every write of
    the writer thread fail inside HDF5, as a file that became unwritable would."""
    with rec._lock:
        rec._run.file.close()
        rec._run.file = h5py.File(rec.path, mode, locking=False)


def _fail_one_snapshot(rec: Recorder, epoch: int) -> None:
    _wait_idle(rec)  # earlier snapshots are written while the file is writable
    _reopen(rec, "r")
    rec.snapshot({"w": np.full((2, 3), float(epoch))}, epoch=epoch)  # queued; will fail
    _wait_idle(rec)
    _reopen(rec, "r+")


@pytest.mark.parametrize("surfaces_in", ["commit", "log", "snapshot", "close"])
def test_writer_failure_surfaces_on_next_call_once(tmp_path, surfaces_in):
    rec = Recorder(tmp_path, system=False)
    rec.snapshot({"w": np.ones((2, 3))}, epoch=0)
    rec.log({"loss": 0.5}, epoch=1)
    _fail_one_snapshot(rec, 1)
    calls = {
        "commit": rec.commit,
        "log": lambda: rec.log({"lr": 0.1}, epoch=1),
        "snapshot": lambda: rec.snapshot({"w": np.full((2, 3), 2.0)}, epoch=2),
        "close": rec.close,
    }
    with pytest.raises(RecordWriteError, match="write the snapshot of epoch 1"):
        calls[surfaces_in]()
    if surfaces_in != "close":
        rec.snapshot({"w": np.full((2, 3), 4.0)}, epoch=3)  # the recorder goes on
        rec.commit()  # the error was raised once, not again
        rec.close()
    r = load(rec.path)
    assert r.history["loss"].tolist() == [0.5]  # rows logged around the failure are kept
    if surfaces_in == "log":
        assert r.history["lr"].tolist() == [0.1]
    assert 1 not in r.snapshot_epochs
    if surfaces_in == "close":
        assert r.snapshot_epochs == [0]
        assert "RecordWriteError" in r.error
    else:
        assert r.snapshot_epochs == [0, 3]
        assert r.weight("w").at(3).tolist() == [[4.0] * 3] * 2


@pytest.mark.parametrize("background", [True, False])
def test_shape_change_raises_in_the_call_itself(tmp_path, background):
    rec = Recorder(tmp_path, system=False, background=background)
    rec.snapshot({"w": np.ones((2, 3)), "b": np.ones(2)}, epoch=0)
    with pytest.raises(SnapshotError, match=r"'w' is float64\[3, 3\].*float64\[2, 3\]"):
        rec.snapshot({"w": np.ones((3, 3)), "b": np.ones(2)}, epoch=1)
    with pytest.raises(SnapshotError, match=r"'w' is float32\[2, 3\]"):
        rec.snapshot({"w": np.ones((2, 3), np.float32), "b": np.ones(2)}, epoch=1)
    with pytest.raises(SnapshotError, match="'b'.*is missing"):
        rec.snapshot({"w": np.ones((2, 3))}, epoch=1)
    rec.snapshot({"w": np.zeros((2, 3)), "b": np.zeros(2)}, epoch=1)
    rec.close()
    assert load(rec.path).snapshot_epochs == [0, 1]


def test_failure_while_failed_run_closes_is_stored_and_warned(tmp_path):
    rec = Recorder(tmp_path, system=False)
    rec.snapshot({"w": np.ones((2, 3))}, epoch=0)
    _fail_one_snapshot(rec, 1)
    with pytest.warns(RecordkitWarning, match="a snapshot was not written"):
        rec.close("failed", error=RuntimeError("boom"))
    r = load(rec.path)
    assert r.status == "failed"
    assert r.error.startswith("RuntimeError: boom; a snapshot was not written: "
                              "RecordWriteError")


def test_commit_waits_and_flushes_for_another_process(tmp_path):
    rec = Recorder(tmp_path, system=False)
    value = np.arange(3_000_000, dtype=np.float32).reshape(3000, 1000)  # 12 MB
    rec.snapshot({"w": value}, epoch=0)
    rec.commit()
    # A reader in another process sees the snapshot as soon as commit has returned.
    code = textwrap.dedent(f"""
        import h5py
        with h5py.File({str(rec.path)!r}, "r", locking=False) as f:
            print(len(f["snapshots"]), float(f["weights/w"][0].sum(dtype="f8")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    rec.close()
    assert int(out[0]) == 1
    assert float(out[1]) == float(value.sum(dtype=np.float64))


@pytest.mark.parametrize("limit", [None, 3 * 40_000, 0])
def test_queued_bytes_never_exceed_the_bound(tmp_path, limit):
    rec = Recorder(tmp_path, system=False, max_pending_bytes=limit)
    snapshot = {"a": np.ones(5000), "b": np.ones(5000)}  # 80,000 bytes
    for epoch in range(12):
        rec.snapshot(snapshot, epoch=epoch)
    peak = rec._snapshots.writer.peak_pending_bytes
    rec.close()
    # None and 0 mean one snapshot at a time; a bound below one snapshot still lets one in.
    assert peak <= max(limit or 0, 80_000)
    assert load(rec.path).snapshot_epochs == list(range(12))


def test_reserve_blocks_until_the_writer_frees_room():
    gate = threading.Event()
    written: list[int] = []

    def slow_write(job: SnapshotJob) -> None:
        gate.wait(10)
        written.append(job.epoch)

    writer = SnapshotWriter(slow_write, max_pending_bytes=100)
    writer.reserve(60)
    writer.submit(SnapshotJob({}, 0, -1, 60))
    entered = threading.Event()

    def second() -> None:
        writer.reserve(60)  # 60 + 60 > 100: must wait for the first job
        entered.set()
        writer.submit(SnapshotJob({}, 1, -1, 60))

    thread = threading.Thread(target=second)
    thread.start()
    assert not entered.wait(0.3)
    assert writer.pending_bytes == 60
    gate.set()
    assert entered.wait(10)
    thread.join()
    writer.wait()
    writer.stop()
    assert written == [0, 1]
    assert writer.peak_pending_bytes == 60
    assert writer.pending_bytes == 0


def test_jobs_after_a_failure_are_dropped_and_counted():
    def write(job: SnapshotJob) -> None:
        if job.epoch == 1:
            raise OSError("disk on fire")

    writer = SnapshotWriter(write, max_pending_bytes=1000)
    for epoch in range(4):
        writer.reserve(1)
        writer.submit(SnapshotJob({}, epoch, -1, 1))
    with pytest.raises(OSError, match="disk on fire") as info:
        writer.wait()
    assert "2 snapshot(s) queued after this failure were not written" in str(
        getattr(info.value, "__notes__", []))
    writer.check()  # raised once only
    writer.stop()


def test_real_write_failure_from_file_size_limit(tmp_path):
    """RLIMIT_FSIZE makes pwrite fail with EFBIG in the writer thread of a child process;
    the failure must reach the training thread as a RecordWriteError."""
    code = textwrap.dedent(f"""
        import resource, signal, numpy as np
        from recordkit import Recorder
        from recordkit.errors import RecordWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        rec = Recorder({str(tmp_path)!r}, system=False)
        rec.log({{"loss": 1.0}}, epoch=0)
        rec.commit()
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
        rec.snapshot({{"w": np.ones(1_000_000)}}, epoch=0)  # 8 MB > the limit
        try:
            rec.commit()
        except RecordWriteError as err:
            print("RAISED", err)
        try:
            rec.close("running")
        except Exception as err:
            print("CLOSE", type(err).__name__)
        print("DONE")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "DONE" in run.stdout, run.stderr
    assert "RAISED" in run.stdout
    assert "larger than this process may write" in run.stdout


def test_size_estimate_warns_above_threshold(tmp_path):
    rec = Recorder(tmp_path, system=False, size_warning_bytes=50_000)
    rec.plan(epochs=10)
    with pytest.warns(RecordkitWarning, match=r"10 planned snapshot\(s\).*warning threshold"):
        rec.snapshot({"w": np.ones(1000)}, epoch=0)  # 8 kB × 10 > 50 kB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec.snapshot({"w": np.ones(1000)}, epoch=1)  # warned once, before the first
    rec.close()


def test_size_estimate_under_threshold_is_quiet(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Recorder(tmp_path, system=False, size_warning_bytes=50_000) as rec:
            rec.plan(epochs=5)
            rec.snapshot({"w": np.ones(1000)}, epoch=0)  # 40 kB planned


def test_size_estimate_warns_beyond_free_disk(tmp_path):
    rec = Recorder(tmp_path, system=False, size_warning_bytes=None)
    rec.plan(epochs=100, snapshot_epochs=10**9)
    with pytest.warns(RecordkitWarning, match="free on the disk"):
        rec.snapshot({"w": np.ones(1_000_000, dtype=np.uint8)}, epoch=0)  # 1 PB planned
    rec.close()


def test_writer_thread_ends_with_close(tmp_path):
    rec = Recorder(tmp_path, system=False)
    rec.snapshot({"w": np.ones(3)}, epoch=0)
    writer = rec._snapshots.writer
    assert writer.alive
    rec.close()
    deadline = time.monotonic() + 5
    while writer.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer.alive


def test_commit_without_waiting_still_commits_each_snapshot(tmp_path):
    rec = Recorder(tmp_path, system=False)
    value = np.arange(2_000_000, dtype=np.float64)
    rec.log({"loss": 0.25}, epoch=0)
    rec.snapshot({"w": value}, epoch=0)
    rec.commit(wait=False)  # history now; the writer flushes the snapshot when written
    _wait_idle(rec)
    code = textwrap.dedent(f"""
        import h5py
        with h5py.File({str(rec.path)!r}, "r", locking=False) as f:
            print(f["history"]["rows"]["value"].tolist(), len(f["snapshots"]),
                  float(f["weights/w"][0].sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    rec.close()
    assert out.split() == ["[0.25]", "1", str(float(value.sum()))]


def test_rewind_waits_for_queued_snapshots(tmp_path):
    rec = Recorder(tmp_path, system=False)
    for epoch in range(4):
        rec.log({"loss": float(epoch)}, epoch=epoch)
        rec.snapshot({"w": np.full(1000, float(epoch))}, epoch=epoch)
    rec.rewind(2)  # the queued snapshots of epochs 2 and 3 are written, then dropped
    rec.log({"loss": 20.0}, epoch=2)
    rec.snapshot({"w": np.full(1000, 20.0)}, epoch=2)
    rec.close()
    r = load(rec.path)
    assert r.snapshot_epochs == [0, 1, 2]
    assert [float(r.weight("w")[i][0]) for i in range(3)] == [0.0, 1.0, 20.0]
    assert r.history["loss"].tolist() == [0.0, 1.0, 20.0]


def test_resumed_run_checks_tensors_against_the_file(tmp_path):
    with Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": np.ones((2, 2), np.float32)}, epoch=0)
    resumed = Recorder(tmp_path, resume=rec.run_id, system=False)
    with pytest.raises(SnapshotError, match=r"'w' is float32\[3, 2\]"):
        resumed.snapshot({"w": np.ones((3, 2), np.float32)}, epoch=1)
    resumed.snapshot({"w": np.full((2, 2), 5.0, np.float32)}, epoch=1)
    resumed.close()
    r = load(rec.path)
    assert r.snapshot_epochs == [0, 1]
    assert r.weight("w").at(1).tolist() == [[5.0, 5.0], [5.0, 5.0]]


def test_queued_snapshots_are_written_when_the_interpreter_exits(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np
        from recordkit import Recorder
        rec = Recorder({str(tmp_path)!r}, system=False)
        for epoch in range(3):
            rec.snapshot({{"w": np.full(500_000, float(epoch))}}, epoch=epoch)
        print(rec.path)
        # no close(): the exit handlers write what is queued and leave the run "running"
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    r = load(run.stdout.strip())
    assert r.stored_status == "running"
    assert r.snapshot_epochs == [0, 1, 2]
    assert float(r.weight("w")[2][-1]) == 2.0


@pytest.mark.parametrize("max_pending_bytes", [None, 0, 10 * 4096])
def test_reused_buffers_never_change_a_queued_snapshot(tmp_path, max_pending_bytes):
    """Snapshots copy into the buffers of the last written one: a buffer still queued
    or being written must never be handed out again."""
    state = {"a": np.zeros((64, 16), np.float32), "b": np.zeros(300, np.int64)}
    expected = []
    with Recorder(tmp_path, system=False, max_pending_bytes=max_pending_bytes) as rec:
        for epoch in range(8):
            for array in state.values():
                array += epoch + 1  # training changes the tensors in place
            expected.append({k: v.copy() for k, v in state.items()})
            rec.snapshot(state, epoch=epoch)
    record = load(rec.path)
    assert record.snapshot_epochs == list(range(8))
    for epoch, want in enumerate(expected):
        got = record.weights(epoch)
        for name in state:
            np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_writer_thread_yields_the_cpu_to_training_threads() -> None:
    from recordkit.writer import WRITER_NICENESS

    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []
    writer = SnapshotWriter(lambda job: seen.append(
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    writer.reserve(1)
    writer.submit(SnapshotJob({}, 0, -1, 1))
    writer.wait()
    writer.stop()
    assert seen == [min(19, before + WRITER_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the caller's thread keeps its own


def test_plan_takes_the_snapshot_count_by_both_names(tmp_path):
    """plan(snapshots=N) is the count of snapshots; snapshot_epochs=N, its earlier name,
    still means the same: both warn for a run that will not fit."""
    for keyword in ("snapshots", "snapshot_epochs"):
        rec = Recorder(tmp_path, system=False, size_warning_bytes=1000)
        rec.plan(epochs=100, **{keyword: 2})
        with pytest.warns(RecordkitWarning, match="2 planned snapshot"):
            rec.snapshot({"w": np.zeros(100)}, epoch=0)  # 800 bytes x 2 > 1000
        rec.close()
    with pytest.raises(ValueError, match="snapshots=-1"):
        Recorder(tmp_path, system=False).plan(snapshots=-1)
