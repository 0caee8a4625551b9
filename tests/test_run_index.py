"""The run index of a folder (recordkit.runindex): appended at each run's close, by
concurrent processes too, read by load_all for runs whose file has not changed, and
never trusted over the file (torn, damaged, stale lines, an index of another folder)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.errors import RecordkitWarning
from recordkit.runindex import INDEX_FILE, RunIndex, add_closed_run, file_stamp, parse_line

WRITERS = 4
RUNS_PER_WRITER = 5


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RECORDKIT_INDEX", raising=False)


def _write_runs(root: Path, count: int, tag: str = "", big: bool = False) -> None:
    for i in range(count):
        params = {"lr": 0.1 / (i + 1), "seed": i, "tag": tag}
        if big:  # a line longer than a pipe's atomic write (PIPE_BUF, 4096 bytes)
            params["notes"] = f"{tag}-{i}-" + "x" * 9000
        with rk.Recorder(root, experiment="sweep", name=f"{tag}run{i}", params=params,
                         system=False) as rec:
            for epoch in range(3):
                rec.log({"loss": 1.0 / (epoch + 1 + i), "val_accuracy": 0.1 * epoch},
                        epoch=epoch)


def _lines(folder: Path) -> list[bytes]:
    """The index's lines (empty ones, which appends racing with another's leave, left out)."""
    data = (folder / INDEX_FILE).read_bytes()
    assert data.endswith(b"\n")
    return [line for line in data.split(b"\n")[:-1] if line]


def _read_from_files(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files load_all opens from now on (each Record read from its file)."""
    opened: list[Path] = []
    original = rk.Record._read_summary

    def counted(self: rk.Record) -> bool:
        opened.append(self.path)
        return original(self)

    monkeypatch.setattr(rk.Record, "_read_summary", counted)
    return opened


def _same_records(a: rk.RecordSet, b: rk.RecordSet) -> None:
    """Every attribute of every Record equal (paths, fields, params, summaries)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert vars(x).keys() == vars(y).keys()
        for name in vars(x):
            if name != "_h5":
                assert repr(vars(x)[name]) == repr(vars(y)[name]), name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "records"
    _write_runs(root, 4)
    return root


def test_each_close_appends_the_runs_summary_and_stat(root: Path) -> None:
    folder = root / "sweep"
    lines = _lines(folder)
    files = sorted(folder.glob("*.h5"))
    assert len(lines) == len(files) == 4
    by_name = {}
    for line in lines:
        parsed = parse_line(line)
        assert parsed is not None
        by_name[parsed[0]] = parsed
    for path in files:
        _, stamp, text = by_name[path.name]
        assert stamp == file_stamp(os.stat(path))
        with h5py.File(path, "r", locking=False) as f:
            assert text.decode() == f.attrs["summary"]


def test_load_all_reads_the_index_instead_of_the_files(root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = rk.load_all(root, cache=False, index=False)
    opened = _read_from_files(monkeypatch)
    indexed = rk.load_all(root, cache=False)
    assert opened == []
    _same_records(fresh, indexed)
    assert [r.metric_summaries() for r in fresh] == [r.metric_summaries() for r in indexed]


def test_concurrent_writers_leave_every_line_whole(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes closing runs into one folder at once: one whole line per run, each
    served (lines of 9 KB, beyond what a pipe writes atomically)."""
    root = tmp_path / "records"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_write_runs, args=(root, RUNS_PER_WRITER, f"w{w}", True))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    folder = root / "sweep"
    lines = _lines(folder)
    assert len(lines) == WRITERS * RUNS_PER_WRITER
    assert all(parse_line(line) is not None for line in lines)
    fresh = rk.load_all(root, cache=False, index=False)
    opened = _read_from_files(monkeypatch)
    _same_records(fresh, rk.load_all(root, cache=False))
    assert opened == []


def _append_many(paths: list[str], rounds: int) -> None:
    for _ in range(rounds):
        for path in paths:
            add_closed_run(path)


def test_concurrent_appends_of_the_same_runs(tmp_path: Path) -> None:
    """Four processes appending lines of the same runs as fast as they can: every line
    of the index is whole, and the last one of each run matches its file."""
    root = tmp_path / "records"
    _write_runs(root, 3, big=True)
    folder = root / "sweep"
    (folder / INDEX_FILE).unlink()
    paths = [str(p) for p in sorted(folder.glob("*.h5"))]
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_append_many, args=(paths, 30)) for _ in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    lines = _lines(folder)
    assert len(lines) == WRITERS * 30 * len(paths)
    assert all(parse_line(line) is not None for line in lines)
    index = RunIndex(folder)
    for path in map(Path, paths):
        summary = index.summary(path, os.stat(path))
        assert summary is not None and summary["fields"]["run_id"] == path.stem


def _rewrite_line(line: bytes, old: bytes, new: bytes, *, fix_crc: bool) -> bytes:
    crc, _, body = line.partition(b"\t")
    body = body.replace(old, new, 1)
    assert old != new and new in body
    return b"%08x\t%s" % (zlib.crc32(body), body) if fix_crc else crc + b"\t" + body


@pytest.mark.parametrize("damage", ["torn", "flipped", "forged with its CRC"])
def test_a_torn_or_damaged_line_sends_its_run_to_its_file(
        root: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    fresh = rk.load_all(root, cache=False, index=False)
    folder = root / "sweep"
    lines = _lines(folder)
    victim = parse_line(lines[1])
    assert victim is not None
    if damage == "torn":  # a writer killed in its write: the last line cut short
        lines.append(lines.pop(1))
        data = b"\n".join(lines)[:-200]
    else:  # a value of the summary changed (a bit flip; or a forged line, CRC redone)
        lines[1] = _rewrite_line(lines[1], b'"final": ', b'"final": 9',
                                 fix_crc=damage == "forged with its CRC")
        data = b"\n".join(lines) + b"\n"
    (folder / INDEX_FILE).write_bytes(data)
    opened = _read_from_files(monkeypatch)
    _same_records(fresh, rk.load_all(root, cache=False))
    assert [p.name for p in opened] == [victim[0]]
    # its line was appended again: now every run is served from the index
    opened.clear()
    _same_records(fresh, rk.load_all(root, cache=False))
    assert opened == []


def test_a_file_rewritten_after_its_line_is_read_from_the_file(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = root / "sweep"
    first, second = sorted(folder.glob("*.h5"))[:2]
    # the first run's file replaced by a copy of the second's (same size, new contents)
    copy = folder / ".copy.h5.part"
    shutil.copy2(second, copy)
    os.replace(copy, first)
    # and one whose mtime alone moved (a change that kept its size)
    third = sorted(folder.glob("*.h5"))[2]
    st = os.stat(third)
    os.utime(third, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    fresh = rk.load_all(root, cache=False, index=False)
    assert fresh[0].run_id == fresh[1].run_id  # the copy says what its file holds
    opened = _read_from_files(monkeypatch)
    _same_records(fresh, rk.load_all(root, cache=False))
    assert sorted(p.name for p in opened) == sorted([first.name, third.name])


def test_a_resumed_run_is_not_served_from_its_old_line(tmp_path: Path) -> None:
    root = tmp_path / "records"
    with rk.Recorder(root, experiment="sweep", name="r", params={"lr": 0.1},
                     system=False) as rec:
        rec.log({"loss": 1.0}, epoch=0)
        run_id = rec.run_id
    with rk.Recorder(root, experiment="sweep", resume=run_id, system=False) as rec:
        rec.log({"loss": 0.5}, epoch=1)
        (during,) = rk.load_all(root, cache=False)
        assert during.status == "running"
    (after,) = rk.load_all(root, cache=False)
    assert after.status == "completed"
    assert after.metric_summaries()["loss"]["final"] == 0.5
    assert len(_lines(root / "sweep")) == 2  # a line per close; the last one matches


def test_an_index_copied_from_another_folder_is_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder copied whole (same names, sizes and mtimes, its index with it), and
    another folder's index copied over this one's: every run is read from its file."""
    root = tmp_path / "records"
    _write_runs(root, 3, tag="a")
    copied = tmp_path / "copied"
    shutil.copytree(root, copied)  # copy2: contents and mtimes kept, not inodes
    other = tmp_path / "other"
    _write_runs(other, 3, tag="b")
    shutil.copyfile(other / "sweep" / INDEX_FILE, root / "sweep" / INDEX_FILE)
    for folder in (copied, root):
        fresh = rk.load_all(folder, cache=False, index=False)
        opened = _read_from_files(monkeypatch)
        _same_records(fresh, rk.load_all(folder, cache=False))
        assert sorted(opened) == sorted((folder / "sweep").glob("*.h5"))
        monkeypatch.undo()
        monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
        assert [r.name for r in fresh] == ["arun0", "arun1", "arun2"]


def test_a_missing_index_is_rebuilt_and_a_mostly_unusable_one_rewritten(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = root / "sweep"
    fresh = rk.load_all(root, cache=False, index=False)
    (folder / INDEX_FILE).unlink()
    _same_records(fresh, rk.load_all(root, cache=False))
    assert len(_lines(folder)) == len(fresh)
    # 100 damaged lines: more than the live ones and the slack, so written again whole
    with open(folder / INDEX_FILE, "ab") as f:
        f.write(b"00000000\tnot a line\n" * 100)
    opened = _read_from_files(monkeypatch)
    _same_records(fresh, rk.load_all(root, cache=False))
    assert opened == []
    assert len(_lines(folder)) == len(fresh)


def test_an_index_that_cannot_be_written_never_fails_a_run(tmp_path: Path) -> None:
    root = tmp_path / "records"
    (root / "sweep" / INDEX_FILE).mkdir(parents=True)  # a folder where the file would be
    with pytest.warns(RecordkitWarning, match="run index"), rk.Recorder(
            root, experiment="sweep", params={"lr": 0.1}, system=False) as rec:
        rec.log({"loss": 1.0}, epoch=0)
    (record,) = rk.load_all(root, cache=False)
    assert record.status == "completed" and record.metric_summaries()["loss"]["final"] == 1.0


def test_the_variable_turns_the_index_off(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_INDEX", "0")
    root = tmp_path / "records"
    _write_runs(root, 2)
    assert not (root / "sweep" / INDEX_FILE).exists()
    assert len(rk.load_all(root)) == 2
    assert not (root / "sweep" / INDEX_FILE).exists()


def test_a_run_with_unusual_params_comes_back_equal(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "records"
    params = {"lr": np.float32(0.01), "n": np.int64(3), "arr": np.arange(3),
              "nan": float("nan"), "unicode": "é ✓", "$type": "a key that looks like a tag",
              "act": object()}
    with pytest.warns(RecordkitWarning), rk.Recorder(root, params=params,
                                                     system=False) as rec:
        rec.log({"loss": float("nan"), "acc": 0.5}, epoch=0)
    fresh = rk.load_all(root, cache=False, index=False)
    opened = _read_from_files(monkeypatch)
    indexed = rk.load_all(root, cache=False)
    assert opened == []
    _same_records(fresh, indexed)
    assert indexed[0].unserialisable_params == ["act"]
