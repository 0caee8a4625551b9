"""``load_all(..., workers=N)`` (issue 18 item 6): the files read in N spawned worker
processes give the same RecordSet as one process, attribute by attribute, with the same
skipped files, warnings and header cache; a run still written, a run without a summary,
damaged and foreign files included. Speed is measured by benchmarks/bench_load_all.py.

Budget: ~10 s (each load_all with workers starts two interpreters).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.errors import RecordkitWarning
from recordkit.headercache import HeaderCache
from recordkit.runindex import INDEX_FILE, RunIndex
from tests.test_recordset import _state_equal

#: What the parent and a worker must agree on, of every Record.
ATTRIBUTES = ("run_id", "name", "experiment", "status", "stored_status", "error", "created",
              "ended", "params", "params_hash", "config", "config_hash", "fields")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
    # the files themselves read (in workers): the folders' run index would serve them
    # all in the parent (test_workers_fill_the_run_index turns it on)
    monkeypatch.setenv("RECORDKIT_INDEX", "0")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two experiments: completed and failed runs, one closed run without a summary (an
    older record: read in full), a damaged file, a file that is not a record."""
    root = tmp_path / "records"
    rng = np.random.default_rng(3)
    for i in range(14):
        with rk.Recorder(root, experiment="a" if i % 3 else "b", name=f"run{i}",
                         params={"lr": float(rng.choice([0.1, 0.01])), "seed": i,
                                 "layers": [8, i], "opt": {"name": "adam", "beta": 0.9}},
                         system=i == 0) as rec:
            for epoch in range(4):
                rec.log({"loss": float(rng.random()), "val_accuracy": float(rng.random())},
                        epoch=epoch)
            if i == 5:
                rec.close("failed", error="ValueError: diverged")
    older = sorted((root / "a").glob("*.h5"))[2]
    older.chmod(0o644)
    with h5py.File(older, "r+", locking=False) as f:
        f.attrs.modify("summary", "")
    damaged = sorted((root / "a").glob("*.h5"))[4]
    data = bytearray(damaged.read_bytes())
    data[:64] = bytes(64)  # the superblock zeroed
    damaged.chmod(0o644)
    damaged.write_bytes(bytes(data))
    with h5py.File(root / "b" / "not-a-record.h5", "w") as f:
        f["x"] = np.arange(3)
    return root


def _load(root: Path, **kwargs: object) -> tuple[rk.RecordSet, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = rk.load_all(root, **kwargs)  # type: ignore[arg-type]
    return records, [str(w.message) for w in caught if issubclass(w.category,
                                                                   RecordkitWarning)]


def _same_sets(one: rk.RecordSet, many: rk.RecordSet) -> None:
    assert [r.path for r in one] == [r.path for r in many]
    for a, b in zip(one, many):
        for name in ATTRIBUTES:
            assert _state_equal(getattr(a, name), getattr(b, name)), (a.path, name)
        assert _state_equal(a.metric_summaries(), b.metric_summaries()), a.path
        assert _state_equal(dict(a.history.rows_by_metric()),
                            dict(b.history.rows_by_metric())), a.path
        assert _state_equal(a.system, b.system), a.path
    assert [(p, m) for p, m in one.skipped] == [(p, m) for p, m in many.skipped]


def test_workers_give_the_same_recordset(root: Path) -> None:
    one, warned_one = _load(root, cache=False, workers=1)
    many, warned_many = _load(root, cache=False, workers=2)
    assert len(one) == 13 and len(one.skipped) == 2  # the damaged file, the foreign one
    assert {r.status for r in one} == {"completed", "failed"}
    assert sum(r._summary is None for r in one) == 1  # the older record, read in full
    _same_sets(one, many)
    # the same warnings, in the same order (a pool that failed would add its own)
    assert warned_one == warned_many and len(warned_one) == 2
    b_one, _ = _load(root, experiment="b", cache=False)
    b_many, _ = _load(root, experiment="b", cache=False, workers=2)
    assert {r.experiment for r in b_many} == {"b"}
    _same_sets(b_one, b_many)


def test_a_run_being_written_is_read_by_the_parent(root: Path) -> None:
    with rk.Recorder(root, experiment="a", name="live", params={"lr": 1.0},
                     system=False) as rec:
        rec.log({"loss": 2.0}, epoch=0)
        rec.commit()
        one, _ = _load(root, cache=False)
        many, _ = _load(root, cache=False, workers=3)
        live = [r for r in many if r.name == "live"]
        assert len(live) == 1 and live[0].status == "running"
        assert live[0].history["loss"].tolist() == [2.0]
        _same_sets(one, many)


def test_workers_fill_the_header_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    many, _ = _load(root, workers=2)
    for folder in (root / "a", root / "b"):
        kept = HeaderCache(folder)
        for record in many:
            if record.path.parent == folder:
                assert kept.get(record.path) is not None, record.path

    def unread(*args: object) -> None:
        raise AssertionError("read from the file, not from the cache")

    monkeypatch.setattr(rk.Record, "_read_summary", unread)
    monkeypatch.setattr(rk.Record, "_read_full", unread)
    cached, _ = _load(root, workers=2)  # every run from the cache: no worker started
    monkeypatch.undo()
    _same_sets(many, cached)


def test_workers_fill_the_run_index(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs read in workers get their lines in their folder's run index (the records
    were written with the index off), after which no file is opened."""
    monkeypatch.setenv("RECORDKIT_INDEX", "1")
    assert not (root / "a" / INDEX_FILE).exists()
    many, _ = _load(root, cache=False, workers=2)
    closed_with_summary = [r for r in many if r._summary is not None]
    assert len(closed_with_summary) == 12  # (the older record has none: never indexed)
    for folder in (root / "a", root / "b"):
        index = RunIndex(folder)
        for record in closed_with_summary:
            if record.path.parent == folder:
                assert index.summary(record.path, os.stat(record.path)) == record._summary

    def unread(*args: object) -> None:
        raise AssertionError("read from the file, not from the index")

    monkeypatch.setattr(rk.Record, "_read_summary", unread)
    indexed, _ = _load(root, cache=False, index=True, workers=2)
    monkeypatch.undo()
    assert sorted(r.path for r in indexed if r._summary is not None) == sorted(
        r.path for r in closed_with_summary)


def test_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert len(rk.load_all(tmp_path / "empty", workers=2)) == 0


@pytest.mark.parametrize("workers", [0, -1, True, 1.5, "2", None])
def test_workers_must_be_a_positive_int(root: Path, workers: object) -> None:
    with pytest.raises(ValueError, match=r"load_all\(workers="):
        rk.load_all(root, workers=workers)  # type: ignore[arg-type]


def test_workers_from_a_script_with_a_main_guard(root: Path, tmp_path: Path) -> None:
    """As users call it: a script run as __main__ (the workers are spawned)."""
    script = tmp_path / "table.py"
    script.write_text(
        "import sys, recordkit as rk\n"
        "if __name__ == '__main__':\n"
        "    rs = rk.load_all(sys.argv[1], cache=False, workers=2)\n"
        "    print(len(rs), len(rs.skipped), sorted(r.name for r in rs)[:3])\n")
    done = subprocess.run([sys.executable, str(script), str(root)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "13 2 ['run0', 'run1', 'run10']"
