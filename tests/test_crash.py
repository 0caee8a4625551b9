"""Crash consistency: SIGKILL a writer at random moments; every record must load, hold
every epoch whose commit() returned, with the values logged, and not say completed.

Budget: about 30 s on a 2-core machine (30 kills, each within its first dozen epochs, and
one checker process). The 200-kill experiment reported in docs/RELIABILITY.md is
benchmarks/crash_kills.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.cli import main as cli_main
from recordkit.record import Record
from recordkit.repair import needs_repair, repair
from recordkit.verify import verify

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 30
SEED = 20261123


def run_and_kill(root: Path, delay: float, after: int = 0) -> tuple[Path | None, int, int]:
    """Start a writer, SIGKILL it *delay* seconds after its *after*-th commit returned (or,
    with *after* 0, after its Recorder exists); return the record path, the last epoch
    whose commit() returned (-1 for none) and the lines read. Counting commits rather
    than seconds puts the kill at the same point of the run on a busy machine, where a
    writer may commit nothing in the first 0.4 s."""
    proc = subprocess.Popen([sys.executable, str(WRITER), str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first.startswith("path "):
        proc.kill()
        raise AssertionError(f"writer failed to start: {first!r} {proc.stderr.read()!r}")
    seen = [proc.stdout.readline() for _ in range(after)]
    assert all(line.strip().isdigit() for line in seen), (seen, proc.stderr.read())
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    out = "".join(seen) + out
    committed = [int(line) for line in out.split() if line.isdigit()]
    assert "done" not in out
    return Path(first.split(" ", 1)[1].strip()), max(committed, default=-1), len(committed)


def check_in_subprocess(todo: dict[str, int]) -> dict[str, list[str]]:
    """Load and verify the records in a child, so a crash of the reader is a failure."""
    done = subprocess.run([sys.executable, str(WRITER), "--check", json.dumps(todo)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"checker died ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_every_committed_epoch(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    todo: dict[str, int] = {}
    for i in range(KILLS):
        # a few kills right after start (creation, first commit), the rest anywhere in
        # the first dozen epochs: after a random number of commits, at a random moment
        # of the next epoch (one epoch takes ~20 ms on a quiet machine)
        if i % 6 == 0:
            path, last, _ = run_and_kill(tmp_path / f"k{i}", rng.uniform(0.0, 0.02))
        else:
            path, last, _ = run_and_kill(tmp_path / f"k{i}", rng.uniform(0.0, 0.05),
                                         after=rng.randint(1, 12))
        assert path.exists()
        todo[str(path)] = last
    results = check_in_subprocess(todo)
    failed = {p: r["failures"] for p, r in results.items() if r["failures"]}
    assert not failed, json.dumps(failed, indent=1)[:4000]
    assert len(results) == KILLS
    repaired = sum(bool(r["repaired"]) for r in results.values())
    assert repaired <= KILLS // 10, f"{repaired} of {KILLS} records needed recordkit repair"


def test_killed_run_reads_as_interrupted_and_resumes(tmp_path: Path) -> None:
    path, last, _ = run_and_kill(tmp_path, 0.01, after=2)
    record = recordkit.load(path)
    assert record.status == "interrupted"
    assert record.epochs[-1] >= last
    assert not os.path.exists(str(path) + ".lock") or record.status == "interrupted"
    with recordkit.Recorder(tmp_path, resume=path) as rec:  # the flock died with the writer
        rec.log({"loss": -1.0}, epoch=record.epochs[-1] + 1)
    again = recordkit.load(path)
    assert again.status == "completed"
    assert again.history["loss"][-1] == -1.0
    assert again.restarts[0]["previous_status"] == "running"


def _record_with_end_address(tmp_path: Path, shift: int) -> tuple[Path, int]:
    """A record whose superblock end-of-file address is moved by *shift* bytes, the state
    a kill during a flush (shift < 0) or a flush failing on a full disk (shift > 0) leaves."""
    with recordkit.Recorder(tmp_path, system=False) as rec:
        for epoch in range(3):
            rec.log({"loss": float(epoch)}, epoch=epoch)
            rec.snapshot({"w": np.full((64, 64), epoch, np.float32)}, epoch=epoch)
            rec.commit()
    path = rec.path
    path.chmod(0o644)
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # version 0 superblock: end-of-file address at byte 40
        fh.seek(40)
        assert int.from_bytes(fh.read(8), "little") == size
        fh.seek(40)
        fh.write((size + shift).to_bytes(8, "little"))
    return path, size


def test_stale_short_end_address_is_read_around_and_repaired(tmp_path: Path) -> None:
    path, _ = _record_with_end_address(tmp_path, -4096)
    with pytest.raises(OSError, match="addr overflow"), h5py.File(path, "r") as f:
        f["weights"]["w"][()]  # what plain h5py makes of it (at open or at the read)
    record = recordkit.load(path)  # read as if repaired, without writing
    assert record.history["loss"].tolist() == [0.0, 1.0, 2.0]
    assert float(record.weight("w")[2][5, 5]) == 2.0
    assert needs_repair(path)
    report = verify(path)
    assert report.ok and any("recordkit repair" in n for n in report.notes), report
    assert "set from" in repair(path)
    assert not needs_repair(path)
    with h5py.File(path, "r") as f:  # plain h5py reads it again
        assert f["weights"]["w"][2, 5, 5] == 2.0


def test_end_address_past_the_file_says_repair_and_repair_fixes_it(tmp_path: Path) -> None:
    path, size = _record_with_end_address(tmp_path, +1000)
    with pytest.raises(recordkit.RecordkitError, match="recordkit repair") as info:
        recordkit.load(path)
    assert str(path) in str(info.value)
    assert cli_main(["repair", str(path)]) == 0
    assert path.stat().st_size == size
    assert recordkit.load(path).history["loss"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("shift", [-4096, -64, -8])
def test_lazy_open_of_a_short_end_address(tmp_path: Path, shift: int) -> None:
    """load_all opens closed runs from their summary without the patched view. When the
    root's header lies past the stale end address, the plain open fails and the run
    goes to the full read, which patches (since the summary is rewritten in place at
    close, the root's header may stay before it and the summary is read); either way the
    table and the history are the run's own."""
    path, _ = _record_with_end_address(tmp_path, shift)
    lazy = Record(path, lazy=True)
    assert lazy.status == "completed"
    assert lazy.metric_summaries()["loss"]["final"] == 2.0
    assert lazy.history["loss"].tolist() == [0.0, 1.0, 2.0]
    assert float(lazy.weight("w")[1][0, 0]) == 1.0
    records = recordkit.load_all(tmp_path)
    assert [r.path for r in records] == [path] and not records.skipped


def test_lazy_open_of_an_end_address_past_the_file(tmp_path: Path) -> None:
    path, _ = _record_with_end_address(tmp_path, +1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", recordkit.errors.RecordkitWarning)
        records = recordkit.load_all(tmp_path)
    assert len(records) == 0 and records.skipped[0][0] == path
    assert "recordkit repair" in records.skipped[0][1]
