"""Concurrency: parallel sweeps into one folder, readers during a write (including one that
keeps the file open across many commits), one writer per run, stale locks.

Budget: ~10 s (8 small writer processes at once, two ~2 s writers with readers).
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import recordkit
from recordkit.cli import main as cli_main
from recordkit.errors import RecordBusyError, RecordLockedError

ROOT = Path(__file__).resolve().parents[1]
WRITERS = 8


def _writer(root: str, index: int, epochs: int, pause: float) -> None:
    """Child: one run of *epochs* epochs; values are functions of (index, epoch)."""
    rec = recordkit.Recorder(root, experiment="sweep", params={"index": index, "lr": 0.1},
                             system=False)
    print(rec.path, flush=True)
    for epoch in range(epochs):
        rec.log({"loss": index + epoch / 1000}, epoch=epoch)
        rec.snapshot({"w": np.full((32, 32), index * 1000 + epoch, np.float32)}, epoch=epoch)
        rec.commit()
        time.sleep(pause)
    rec.save()


def start_writer(root: Path, index: int, epochs: int, pause: float = 0.0) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_concurrency "
            f"import _writer; _writer({str(root)!r}, {index}, {epochs}, {pause})")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


HOLDER = """
import sys, time, h5py
for attempt in range(300):
    try:
        f = h5py.File(sys.argv[1], "r")
        run_id = f.attrs["run_id"]
        break
    except (OSError, KeyError):
        time.sleep(0.01)
else:
    sys.exit("could not open the record in 300 tries")
print(run_id, flush=True)
time.sleep(600)
"""


def check_run(record: recordkit.Record, index: int, epochs: int) -> None:
    assert record.status == "completed"
    assert record.params["index"] == index
    assert record.history["loss"].tolist() == [index + e / 1000 for e in range(epochs)]
    assert record.snapshot_epochs == list(range(epochs))
    assert float(record.weight("w")[epochs - 1][3, 3]) == index * 1000 + epochs - 1


@pytest.mark.slow
def test_parallel_writers_into_one_folder(tmp_path: Path) -> None:
    procs = [start_writer(tmp_path, i, 15) for i in range(WRITERS)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    records = recordkit.load_all(tmp_path, experiment="sweep")
    assert len(records) == WRITERS and not records.skipped
    assert len({r.run_id for r in records}) == WRITERS
    for record in records:
        check_run(record, record.params["index"], 15)
    assert sorted(r.params["index"] for r in records) == list(range(WRITERS))


@pytest.mark.slow
def test_reading_while_a_run_is_written_never_disturbs_it(tmp_path: Path) -> None:
    epochs = 60
    proc = start_writer(tmp_path, 1, epochs, pause=0.03)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    seen: list[int] = []
    statuses: set[str] = set()
    busy = ls_runs = ls_running = 0
    while proc.poll() is None:
        try:
            record = recordkit.load(path)
            statuses.add(record.status)
            if record.stored_status == "completed":
                # saved: what follows is the writer's interpreter exiting, which on a busy
                # machine can take longer than the run, and is not a run being written
                break
            if record.stored_status == "running":
                seen.append(len(record.history["loss"]) if "loss" in record.history else 0)
                if record.snapshot_epochs:
                    tensor = record.weight("w")
                    last = len(tensor) - 1
                    assert float(tensor[last][0, 0]) == 1000 + tensor.epochs[last]
            assert len(recordkit.load_all(tmp_path)) == 1
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert cli_main(["ls", str(tmp_path)]) == 0
            ls_runs += 1
            ls_running += "running" in out.getvalue()
        except RecordBusyError:
            busy += 1  # caught mid-write even after retries: allowed, never a raw error
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "running" in statuses, statuses
    assert len(seen) >= 5 and seen == sorted(seen), seen
    assert ls_runs >= 5 and ls_running >= ls_runs // 2, (ls_runs, ls_running)
    assert busy <= len(seen) // 4, (busy, len(seen))
    check_run(recordkit.load(path), 1, epochs)


@pytest.mark.slow
def test_reader_holding_the_file_open_across_many_commits(tmp_path: Path) -> None:
    epochs = 80
    proc = start_writer(tmp_path, 2, epochs, pause=0.02)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    time.sleep(0.2)
    # Another process holds it open with plain h5py and HDF5's default file locking. Plain
    # h5py may catch the file between a write and its flush ("truncated file: eof = ...",
    # undefined for a non-SWMR reader), so it retries until one open succeeds.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip()
    record = recordkit.load(path)
    reads = 0
    try:
        with record:  # this process keeps its own handle open for the whole run
            while proc.poll() is None:
                if record.snapshot_epochs:
                    assert float(record.weight("w")[0][0, 0]) == 2000
                    reads += 1
                time.sleep(0.05)
        assert holder.poll() is None  # still holding the file when the writer finished
    finally:
        holder.kill()
        holder.communicate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert reads >= 10
    check_run(recordkit.load(path), 2, epochs)


def test_same_run_opened_twice_for_writing_is_refused(tmp_path: Path) -> None:
    rec = recordkit.Recorder(tmp_path, system=False)
    rec.log({"loss": 1.0}, epoch=0)
    rec.commit()
    with pytest.raises(RecordLockedError, match="open for writing in another live process"):
        recordkit.Recorder(tmp_path, resume=rec.run_id)
    code = (f"import recordkit\ntry:\n    recordkit.Recorder({str(tmp_path)!r}, "
            f"resume={str(rec.path)!r})\nexcept recordkit.errors.RecordLockedError as e:\n"
            "    print('locked', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.startswith("locked") and str(rec.path) in done.stdout, done.stderr
    assert recordkit.load(rec.path).status == "running"
    rec.save()
    assert recordkit.load(rec.path).status == "completed"


def test_stale_lock_of_a_killed_writer_does_not_block(tmp_path: Path) -> None:
    proc = start_writer(tmp_path, 3, 10_000, pause=0.01)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    time.sleep(0.3)
    assert recordkit.load(path).status == "running"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert Path(str(path) + ".lock").exists()  # the file stays; its flock died
    assert recordkit.load(path).status == "interrupted"
    start = time.perf_counter()
    with recordkit.Recorder(tmp_path, resume=path, experiment="sweep") as rec:
        rec.log({"loss": -1.0}, epoch=rec.last_epoch + 1)
    assert time.perf_counter() - start < 5
    assert recordkit.load(path).history["loss"][-1] == -1.0


def test_record_already_open_through_plain_h5py_in_this_process(tmp_path: Path) -> None:
    """HDF5 refuses a second open of one file with other locking flags; load() must not
    call that damage."""
    import h5py

    with recordkit.Recorder(tmp_path, system=False) as rec:
        rec.log({"loss": 0.5}, epoch=0)
        rec.snapshot({"w": np.arange(6.0).reshape(2, 3)}, epoch=0)
    with h5py.File(rec.path, "r") as f:  # h5py's default locking
        record = recordkit.load(rec.path)
        assert f.attrs["run_id"] == record.run_id
        assert record.history["loss"].tolist() == [0.5]
        assert record.weight("w")[0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
