"""Reading a record again in the same process, the file unchanged: ``load`` and
``weight`` recall what the last open checked (opening.recalled / remembered), a snapshot
is read with the file's descriptor alone (format.weights.read_row_unopened), and any
change to the file (a write, damage, a resume, another file put at the path) is read
again from the file, never answered from what was kept. A file written less than
files.SETTLED ago is not kept at all: a second write in the same clock tick would leave
its stamp as it was.

Budget: ~6 s.
"""

from __future__ import annotations

import os
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

import recordkit
from recordkit import opening
from recordkit.errors import RecordDamagedError
from recordkit.format import chunkread, files
from recordkit.format import weights as weights_format
from tests.support import chunk_at, overwrite

MiB = 1 << 20


def _settle(path: Path) -> None:
    """Wait until *path*'s last write is older than files.SETTLED (with a margin)."""
    st = os.stat(path)
    newest = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    coarse = st.st_mtime_ns % 10**9 == 0 and st.st_ctime_ns % 10**9 == 0
    wait = (files.SETTLED_COARSE if coarse else files.SETTLED) + 0.05
    time.sleep(max(0.0, newest + wait - time.time()))


def _record(folder: Path, values: dict[str, np.ndarray], snapshots: int = 3) -> Path:
    with recordkit.Recorder(folder, system=False, params={"lr": 0.1}) as rec:
        for epoch in range(snapshots):
            rec.snapshot({k: v + epoch for k, v in values.items()}, epoch=epoch)
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    _settle(rec.path)
    return rec.path


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(23)
    return {"big": rng.standard_normal((1024, 1024)).astype(np.float32),  # one 4 MiB chunk
            "edge": rng.standard_normal((1001, 1100)).astype(np.float32),
            "small": rng.standard_normal(300).astype(np.float32)}


def _remembered(path: Path) -> list[object]:
    """What is kept for the file at *path* as it is now (an entry of a removed file
    whose inode number the file reuses has another stamp)."""
    st = os.stat(path)
    entry = opening._REMEMBERED.get((st.st_dev, st.st_ino))
    return [] if entry is None or entry[0] != files.file_stamp(st) else list(entry[1])


def test_an_unchanged_record_is_read_again_without_opening_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state()
    path = _record(tmp_path, state)
    first = recordkit.load(path)
    assert first.params == {"lr": 0.1}
    for name, value in state.items():
        assert np.array_equal(first.weight(name)[1], value + 1)
    kept = _remembered(path)
    assert any(w[0] == "opened" for w in kept if isinstance(w, tuple))
    assert sum(1 for w in kept if isinstance(w, tuple) and w[0] == "tensor") == len(state)
    st = os.stat(path)
    values = opening._REMEMBERED[(st.st_dev, st.st_ino)][1]
    tables = [v[0][1] for w, v in values.items() if w[0] == "tensor"]
    assert all(t is tables[0] for t in tables)  # one table kept for the three tensors

    def no_open(path: Path) -> None:
        raise AssertionError(f"{path} opened through HDF5")

    monkeypatch.setattr(opening, "open_record", no_open)
    for _ in range(3):
        again = recordkit.load(path)
        assert again.params == {"lr": 0.1} and again.status == "completed"
        for name, value in state.items():
            history = again.weight(name)
            assert history.epochs.tolist() == [0, 1, 2]
            for i in (2, 0, 1):
                got = history[i]
                assert got.dtype == value.dtype and np.array_equal(got, value + i)
    # what one record read is not shared with the next: changing it changes nothing kept
    again = recordkit.load(path)
    again._fields["status"] = "changed"
    assert recordkit.load(path).status == "completed"
    monkeypatch.undo()  # the other parts are read from the file, as before
    assert recordkit.load(path).snapshot_epochs == [0, 1, 2]


def test_packed_tensors_and_extras_are_read_again_without_opening_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A packed tensor (v3) is found through the list of every tensor, which is kept
    too, as are the snapshot table and the names of the extras."""
    small = {f"norm{i}.bias": np.full(16, float(i), np.float32) for i in range(40)}
    with recordkit.Recorder(tmp_path, system=False) as rec:
        for epoch in range(2):
            rec.snapshot({k: v + epoch for k, v in small.items()}, epoch=epoch)
        rec.add("notes", {"seed": 7})
    _settle(rec.path)
    first = recordkit.load(rec.path)
    assert np.array_equal(first.weight("norm3.bias")[1], small["norm3.bias"] + 1)
    names, extras = first.tensor_names, list(first.extras)
    assert len(names) == 40 and extras == ["notes"]

    def no_open(path: Path) -> None:
        raise AssertionError(f"{path} opened through HDF5")

    monkeypatch.setattr(opening, "open_record", no_open)
    again = recordkit.load(rec.path)  # the same reads, in the same order, as the first
    assert np.array_equal(again.weight("norm3.bias")[1], small["norm3.bias"] + 1)
    assert again.tensor_names == names and list(again.extras) == extras
    assert again.snapshot_epochs == [0, 1]
    for i in range(2):
        for name in ("norm3.bias", "norm39.bias"):
            assert np.array_equal(again.weight(name)[i], small[name] + i)
    monkeypatch.undo()
    assert again.extras["notes"] == {"seed": 7}


def test_damage_after_a_read_is_refused_by_the_next_load(tmp_path: Path) -> None:
    state = _state()
    path = _record(tmp_path, state)
    for _ in range(2):  # kept from the first read, then used by the second
        assert np.array_equal(recordkit.load(path).weight("big")[1], state["big"] + 1)
    at, size = chunk_at(path, "weights/big", (1, 0, 0))
    overwrite(path, at + size // 2 + 8192, bytes(4096))  # a page of the second half
    for _ in range(2):
        with pytest.raises(RecordDamagedError, match=r"'big', dataset row 1"):
            recordkit.load(path).weight("big")[1]
    assert np.array_equal(recordkit.load(path).weight("big")[2], state["big"] + 2)


def test_a_resumed_or_replaced_record_is_read_again(tmp_path: Path) -> None:
    state = _state()
    path = _record(tmp_path, state)
    record = recordkit.load(path)
    assert np.array_equal(record.weight("big")[2], state["big"] + 2)
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        rec.snapshot({k: v - 10 for k, v in state.items()}, epoch=3)
    again = recordkit.load(path)
    assert again.snapshot_epochs == [0, 1, 2, 3]
    assert np.array_equal(again.weight("big")[3], state["big"] - 10)
    assert np.array_equal(record.weight("big")[2], state["big"] + 2)
    _settle(path)
    assert np.array_equal(recordkit.load(path).weight("big")[3], state["big"] - 10)
    # another record put at the same path (a new inode): its own values
    other = _record(tmp_path / "other", {k: v * 2 for k, v in state.items()}, snapshots=2)
    os.replace(other, path)
    replaced = recordkit.load(path)
    assert replaced.snapshot_epochs == [0, 1]
    assert np.array_equal(replaced.weight("big")[1], state["big"] * 2 + 1)
    with pytest.raises(IndexError):
        replaced.weight("big")[3]


def test_a_file_written_just_now_is_not_kept(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose times are less than files.SETTLED old is read as before and nothing
    of it is kept (SETTLED raised to a minute, so that a slow machine cannot settle it
    during the test)."""
    path = _record(tmp_path, {"w": np.ones((300, 300), np.float32)})
    monkeypatch.setattr(files, "SETTLED", 60.0)
    for _ in range(2):
        record = recordkit.load(path)
        assert np.array_equal(record.weight("w")[1], np.full((300, 300), 2, np.float32))
    assert _remembered(path) == []
    st = os.stat(path)
    laid = weights_format._LAID.get((st.st_dev, st.st_ino, "w"))
    assert laid is None or laid.stamp != files.file_stamp(st)
    monkeypatch.undo()
    assert np.array_equal(recordkit.load(path).weight("w")[1], np.full((300, 300), 2,
                                                                       np.float32))
    assert _remembered(path)  # settled (files.SETTLED of 0.1 s): kept now


def test_settled_times() -> None:
    def stat(mtime: float, ctime: float) -> os.stat_result:
        return types.SimpleNamespace(  # type: ignore[return-value]
            st_mtime_ns=int(mtime * 1e9), st_ctime_ns=int(ctime * 1e9))

    now = 1_700_000_000.0
    assert files.settled(stat(now - 0.5, now - 0.3), now)
    assert not files.settled(stat(now - 0.5, now - 0.01), now)  # the ctime counts too
    assert not files.settled(stat(now - 0.01, now - 5), now)
    assert not files.settled(stat(now + 1, now + 1), now)  # a clock ahead of ours
    # whole seconds: a file system with coarse times (FAT, HFS+) waits longer
    assert not files.settled(stat(now - 2, now - 2), now)
    assert files.settled(stat(now - 4, now - 4), now)


def test_a_stale_layout_is_dropped_and_the_row_read_through_hdf5(tmp_path: Path) -> None:
    """A layout kept for the file as it is must still never give wrong values: if its
    checksums do not match what is read (which an unchanged file cannot do), the entry
    is dropped and the row read again through HDF5."""
    state = _state()
    path = _record(tmp_path, state)
    history = recordkit.load(path).weight("edge")
    assert np.array_equal(history[1], state["edge"] + 1)
    st = os.stat(path)
    where = (st.st_dev, st.st_ino, "edge")
    laid = weights_format._LAID[where]
    assert laid.crcs is not None
    weights_format._LAID[where] = type(laid)(laid.stamp, laid.layout, laid.crcs ^ 1)
    tensor = history._tensor
    assert weights_format.read_row_unopened(path, tensor, 1) is None
    assert where not in weights_format._LAID
    assert np.array_equal(history[1], state["edge"] + 1)
    assert weights_format._LAID[where].crcs is not None
    assert np.array_equal(weights_format._LAID[where].crcs, laid.crcs)


@pytest.mark.parametrize("helper", ["free", "busy"])
def test_a_large_row_is_shared_with_the_helper_or_read_alone(tmp_path: Path, helper: str
                                                              ) -> None:
    """chunkread._Sharer: a row of MIN_PIPELINED_BYTES or more is read half by the
    helper thread when it starts in time; when it is busy the caller reads both halves,
    then reads alone for a while (no hand-over to a helper that has no core)."""
    state = {"one": np.random.default_rng(29).standard_normal((1024, 1024)).astype(
        np.float32),  # one 4 MiB chunk: two halves
        "many": np.random.default_rng(31).standard_normal((3000, 1024)).astype(np.float32)}
    path = _record(tmp_path, state)
    sharer = chunkread._read_sharer()
    release = threading.Event()
    blocker = None
    if helper == "busy":
        blocker = sharer.hand(lambda: release.wait(60))
        deadline = time.time() + 10
        while not blocker._claimed.locked() and time.time() < deadline:
            time.sleep(0.001)  # until the helper is inside it
        assert blocker._claimed.locked()
    sharer._alone = 0
    try:
        record = recordkit.load(path)
        for name, value in state.items():
            for i in range(3):
                assert np.array_equal(record.weight(name)[i], value + i)
        if helper == "busy":
            assert sharer._alone > 0  # its half was read here, and the next rows alone
    finally:
        release.set()
    if blocker is not None:
        assert blocker.claim_or_wait() and blocker.value() is True
    sharer._alone = 0
    at, _ = chunk_at(path, "weights/one", (2, 0, 0))
    overwrite(path, at + 4096, bytes(4096))  # a page of the helper's half (the first)
    with pytest.raises(RecordDamagedError, match=r"'one', dataset row 2"):
        recordkit.load(path).weight("one")[2]


def test_a_record_holding_an_older_table_does_not_spoil_what_is_kept(tmp_path: Path
                                                                    ) -> None:
    """A record that read its snapshot table before the run was resumed counts the
    tensor's snapshots from that table (its own view); what it reads is not kept for a
    record that reads the file as it is now."""
    state = _state()
    path = _record(tmp_path, state)
    older = recordkit.load(path)
    assert older.snapshot_epochs == [0, 1, 2]
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        rec.snapshot({k: v - 10 for k, v in state.items()}, epoch=3)
    _settle(path)
    assert older.weight("big").epochs.tolist() == [0, 1, 2]
    assert set(older.tensor_names) == set(state)
    for first_table in (True, False):
        now = recordkit.load(path)
        if first_table:
            assert now.snapshot_epochs == [0, 1, 2, 3]
        history = now.weight("big")
        assert history.epochs.tolist() == [0, 1, 2, 3]
        assert np.array_equal(history[-1], state["big"] - 10)


def test_inside_a_with_block_the_held_file_is_read(tmp_path: Path) -> None:
    """A ``with record:`` block reads the file it holds, even when another file was put
    at its path since (one this process read, so its layout is known)."""
    value = np.ones((1024, 1024), np.float32)
    path = _record(tmp_path / "a", {"w": value})
    other = _record(tmp_path / "b", {"w": value * 100})
    assert recordkit.load(other).weight("w")[1][0, 0] == 101.0  # laid out, kept
    record = recordkit.load(path)
    with record:
        history = record.weight("w")
        assert history[1][0, 0] == 2.0
        os.replace(other, path)  # (its ctime changes: what was kept of it is not used)
        assert history[1][0, 0] == 2.0 and np.array_equal(history[2], value + 2)
        _settle(path)
        assert recordkit.load(path).weight("w")[1][0, 0] == 101.0  # kept again, at the path
        assert history[1][0, 0] == 2.0 and np.array_equal(history[2], value + 2)
    assert recordkit.load(path).weight("w")[1][0, 0] == 101.0


def test_a_read_error_of_a_kept_layout_is_said_as_damage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error while a row is read through a kept layout is not raised bare: the
    row is read again through HDF5, whose error names the file and what to do."""
    path = _record(tmp_path, {"w": np.ones((1024, 1024), np.float32)})
    history = recordkit.load(path).weight("w")
    assert history[1][0, 0] == 2.0

    def failing(fd: int, buffers: object, offset: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(RecordDamagedError, match="Input/output error"):
        history[1]


def test_a_file_changed_between_its_stat_and_the_read_is_not_kept(tmp_path: Path
                                                                 ) -> None:
    """opening.remembered keeps a read only when the file is still the one stat'ed
    before it was opened: a write in between (HDF5 read the root at the open) leaves
    nothing kept."""
    path = _record(tmp_path, {"w": np.ones(10, np.float32)})
    before = opening.settled_stat(path)
    assert before is not None
    time.sleep(0.01)
    os.utime(path)  # a write after the stat
    with opening.open_record(path) as f:
        assert opening.remembered(f, ("probe",), lambda f: 1, before) == 1
    assert opening.recalled(path, ("probe",)) is None
    _settle(path)
    before = opening.settled_stat(path)
    with opening.open_record(path) as f:
        assert opening.remembered(f, ("probe",), lambda f: 2, before) == 2
    assert opening.recalled(path, ("probe",)) == 2
