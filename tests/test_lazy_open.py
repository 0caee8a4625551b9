"""Opening a record reads its root and params only, whatever else it holds (issue 13:
``load()`` at most 2 ms); each other part is read, after the safety checks of that part,
on first use, and a part that is damaged or hostile is refused then, with the error a
full check at open gave. No timing here (benchmarks/bench_read.py measures it): what is
counted is the bytes HDF5 reads and the objects it touches.

Budget: ~8 s (each test writes a record of 30 tensors x 4 snapshots and 12 extras).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import recordkit
from recordkit import opening
from recordkit.errors import RecordDamagedError, UnsafeRecordError
from recordkit.format import safety
from recordkit.record import Record

TENSORS = 30
SNAPSHOTS = 4
EXTRAS = 12


def _record(root: Path, tensors: int, snapshots: int, extras: int) -> Path:
    with recordkit.Recorder(root, experiment="e", params={"lr": 0.1, "depth": 3},
                            system=False) as rec:
        for epoch in range(snapshots):
            rec.log({"loss": 1.0 / (epoch + 1), "acc": epoch / 10}, epoch=epoch)
            rec.snapshot({f"layer{i}.weight": np.full((8, 4), i + epoch, np.float32)
                          for i in range(tensors)}, epoch=epoch)
            rec.commit()
        for i in range(extras):
            rec.add(f"x{i}", np.arange(10) + i)
        rec.set_info({"trainer": "test"})
    rec.path.chmod(0o644)
    return rec.path


@pytest.fixture
def big(tmp_path: Path) -> Path:
    return _record(tmp_path / "big", TENSORS, SNAPSHOTS, EXTRAS)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return _record(tmp_path / "small", 1, 1, 1)


class _Counting(io.RawIOBase):
    """A read-only file that counts the bytes HDF5 reads through it."""

    def __init__(self, path: Path, reads: list[tuple[int, int]]) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._reads = reads

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readinto(self, buffer: Any) -> int:
        at = self._fh.tell()
        n = self._fh.readinto(buffer) or 0
        self._reads.append((at, n))
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _counting_opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every open of a record by recordkit's reader goes through :class:`_Counting`."""
    reads: list[tuple[int, int]] = []
    monkeypatch.setattr(opening, "open_record", lambda path: h5py.File(
        _Counting(path, reads), "r", locking=False))
    return reads


def _header_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """(address, address + 16) of the object header of every object but the root."""
    found: dict[str, tuple[int, int]] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            addr = h5py.h5o.get_info(obj.id).addr
            found[name] = (addr, addr + 16)
        f.visititems(visit)
    return found


def test_load_reads_the_same_bytes_whatever_the_record_holds(
        big: Path, small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load() of a record of 40 tensors x 6 snapshots and 12 extras reads what load() of
    a record of 1 x 1 and 1 extra reads: the root and the params, no tensor, extra,
    table or history header."""
    reads = _counting_opens(monkeypatch)
    totals = {}
    for name, path in (("small", small), ("big", big)):
        reads.clear()
        record = recordkit.load(path)
        assert record.params == {"lr": 0.1, "depth": 3} and record.status == "completed"
        totals[name] = (len(reads), sum(n for _, n in reads))
        if name == "big":
            headers = _header_ranges(path)
            assert _touched(headers, reads) == {"params"}, _touched(headers, reads)
            reads.clear()
            record.weight("layer7.weight")  # one tensor: its header, not the others'
            touched = {o for o in _touched(headers, reads) if o.startswith("weights/")}
            assert touched == {"weights/layer7.weight"}, touched
            reads.clear()
            record.tensor_names  # noqa: B018 - the list of the weights walks them all
            weights = {obj for obj in headers if obj.startswith("weights/")}
            assert len(weights) == TENSORS and weights <= _touched(headers, reads)
            assert not {o for o in _touched(headers, reads) if o.startswith("extras/")}
    assert totals["big"][0] <= totals["small"][0] + 2, totals
    assert totals["big"][1] <= totals["small"][1] + 4096, totals


def _touched(headers: dict[str, tuple[int, int]], reads: list[tuple[int, int]]) -> set[str]:
    """The objects whose header was read: HDF5 reads an object header from its address
    on (a read that merely covers it belongs to what is before it: HDF5 reads metadata
    in 512-byte pieces and more, whatever lies behind)."""
    return {obj for obj, (start, _) in headers.items() if any(at == start for at, _ in reads)}


def _damage_header(path: Path, name: str) -> None:
    """Overwrite the first bytes of the object header of /*name*: HDF5 cannot open it."""
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f[name].id).addr
    with open(path, "r+b") as fh:
        fh.seek(addr)
        fh.write(b"\xff" * 16)


#: A dataset whose header is damaged, and the first use that reads it. (The header of a
#: group of the earliest file format can be damaged unnoticed: its parent's symbol table
#: caches where its links are, and that is all a read needs.)
PARTS: dict[str, Callable[[Record], object]] = {
    "weights/layer3.weight": lambda r: r.weight("layer3.weight")[0],
    "snapshots": lambda r: r.snapshot_epochs,
    "history/rows": lambda r: r.history,
    "history/metrics": lambda r: r.metrics,
    "extras/x3": lambda r: r.extras["x3"],
    "system": lambda r: r.system,
    "info": lambda r: r.info,
}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_damaged_part_is_not_touched_by_load_and_refused_on_first_use(
        big: Path, name: str) -> None:
    _damage_header(big, name)
    record = recordkit.load(big)  # touches none of it
    assert record.params == {"lr": 0.1, "depth": 3}
    assert record.run_id and record.status == "completed"
    with pytest.raises(RecordDamagedError) as info:
        PARTS[name](record)
    assert str(big) in str(info.value)
    with pytest.raises(RecordDamagedError):
        PARTS[name](record)  # again: nothing half-read was kept
    # the other parts read as ever
    if not name.startswith(("weights", "snapshots")):
        assert record.weight("layer5.weight")[SNAPSHOTS - 1][0, 0] == 5 + SNAPSHOTS - 1
    if not name.startswith("history"):
        assert record.history["loss"][-1] == 1.0 / SNAPSHOTS
    if not name.startswith("extras"):
        assert record.extras["x2"].tolist() == list(range(2, 12))


def test_damaged_params_are_refused_by_load(big: Path) -> None:
    _damage_header(big, "params")
    with pytest.raises(RecordDamagedError, match=str(big)):
        recordkit.load(big)


def test_every_part_read_together_in_a_with_block(big: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside ``with record:`` the parts are read through the handle the block holds."""
    record = recordkit.load(big)
    opens: list[Path] = []
    real = opening.open_record
    monkeypatch.setattr(opening, "open_record", lambda path: (opens.append(path),
                                                              real(path))[1])
    with record:
        assert len(opens) == 0  # Record.__enter__ opens through its own import
        assert record.tensor_names == [f"layer{i}.weight" for i in sorted(
            range(TENSORS), key=lambda i: f"layer{i}.weight")]
        assert record.snapshot_epochs == list(range(SNAPSHOTS))
        assert sorted(record.extras) == sorted(f"x{i}" for i in range(EXTRAS))
        assert record.info == {"trainer": "test"}
    assert opens == []


def _link(kind: str) -> Callable[[h5py.File, Path], None]:
    def make(f: h5py.File, tmp: Path) -> None:
        target = tmp / "outside.h5"
        with h5py.File(target, "w") as g:
            g["x"] = np.arange(3)
        where = {"unknown": "decoy", "unknown group": "decoy/deep/er",
                 "system": "system", "checksums": "checksums/layer0.weight",
                 "weights": "weights/other", "weight": "weights/layer0.weight",
                 "history": "history/other", "extras": "extras/other"}[kind]
        if where in f:  # /system, and the checksums of a tensor in format version 2
            del f[where]
        f[where] = h5py.ExternalLink(str(target), "/x")
    return make


#: where an external link is put: refused by load (None), or by the first use of...
LINKS: dict[str, Callable[[Record], object] | None] = {
    "unknown": None,  # a root object recordkit does not write: nothing would check it
    "unknown group": None,
    "system": None,  # the root's own links are checked at open
    # format version 2 keeps them beside the weights: checked with the one tensor read
    "checksums": lambda r: r.weight("layer0.weight"),
    "weights": lambda r: r.tensor_names,  # a tensor read alone checks that one only
    "weight": lambda r: r.weight("layer0.weight"),
    "history": lambda r: r.metrics,
    "extras": lambda r: list(r.extras),
}


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_external_link_is_refused_before_what_it_is_in_is_read(
        big: Path, tmp_path: Path, kind: str) -> None:
    with h5py.File(big, "r+") as f:
        _link(kind)(f, tmp_path)
    use = LINKS[kind]
    if use is None:
        with pytest.raises(UnsafeRecordError, match="external link") as info:
            recordkit.load(big)
    else:
        record = recordkit.load(big)
        with pytest.raises(UnsafeRecordError, match="external link") as info:
            use(record)
        if kind.startswith(("weight", "checksums")):
            with pytest.raises(UnsafeRecordError, match="external link"):
                recordkit.load(big).tensor_names  # noqa: B018 - the list of every tensor
            # another tensor, read alone, is not what the link is in
            assert recordkit.load(big).weight("layer1.weight")[0][0, 0] == 1
    assert str(big) in str(info.value)


def test_soft_link_loop_is_refused_unfollowed(big: Path) -> None:
    with h5py.File(big, "r+") as f:
        f["extras/loop"] = h5py.SoftLink("/extras/loop")
        f["history/again"] = h5py.SoftLink("/history")
    record = recordkit.load(big)
    with pytest.raises(UnsafeRecordError, match="soft link to '/extras/loop'"):
        record.extras  # noqa: B018
    with pytest.raises(UnsafeRecordError, match="soft link to '/history'"):
        record.history  # noqa: B018
    assert record.weight("layer1.weight")[0][0, 0] == 1  # the weights hold no such link


def test_hard_link_cycle_is_walked_once(big: Path) -> None:
    with h5py.File(big, "r+") as f:
        f["extras/cycle"] = f["extras"]  # a group that holds itself
    record = recordkit.load(big)
    assert "x1" in record.extras  # walked without looping
    with pytest.raises(RecordDamagedError, match=str(big)):
        record.extras["cycle"]


def test_objects_of_all_parts_together_are_bounded(big: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_OBJECTS bounds the links walked by the checks of all parts together, as it
    bounded the walk of the whole file at open."""
    limit = 2 * TENSORS + 20
    monkeypatch.setattr(safety, "MAX_OBJECTS", limit)
    monkeypatch.setattr(opening, "MAX_OBJECTS", limit)
    with h5py.File(big, "r+") as f:
        for i in range(30):
            f.create_group(f"extras/empty{i}")
    record = recordkit.load(big)
    assert len(record.tensor_names) == TENSORS  # the weights alone are under the limit
    with pytest.raises(UnsafeRecordError, match=f"more than {limit} objects"):
        record.extras  # noqa: B018
    # the extras alone are under it too: refused because of what was walked before
    assert len(recordkit.load(big).extras) == EXTRAS + 30


@pytest.mark.parametrize(("change", "use", "words"), [
    (lambda f: f.__delitem__("snapshots") or f.create_dataset("snapshots", data=[1, 2]),
     lambda r: r.snapshot_epochs, "is not the snapshot table"),
    (lambda f: f["weights"].create_dataset("odd", data=np.array([b"a"])),
     lambda r: r.tensor_names, "is not a weight dataset"),
    (lambda f: f.__delitem__("history") or f.create_dataset("history", data=[1]),
     lambda r: r.history, "/history is not a group"),
    (lambda f: f.__delitem__("system") or f.create_dataset(
        "system", shape=(4,), dtype="u1", external=[("/etc/hostname", 0, 4)]),
     lambda r: r.system, "external storage"),
])
def test_layout_of_a_part_is_checked_on_first_use(big: Path, change: Callable[[h5py.File], Any],
                                                  use: Callable[[Record], object],
                                                  words: str) -> None:
    with h5py.File(big, "r+") as f:
        change(f)
    record = recordkit.load(big)
    with pytest.raises((RecordDamagedError, UnsafeRecordError), match=words) as info:
        use(record)
    assert str(big) in str(info.value)


def test_load_all_and_the_header_cache_check_every_part(big: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A run without a usable summary is opened from its root by load_all; what the
    header cache keeps of it is every part, each checked, and a hostile part is not
    cached but skipped."""
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
    with h5py.File(big, "r+") as f:
        del f.attrs["summary"]
    root = big.parent.parent
    first = recordkit.load_all(root)
    assert len(first) == 1 and first[0]._summary is None
    cached = recordkit.load_all(root)
    assert cached[0].tensor_names == first[0].tensor_names
    assert cached[0].history["loss"].tolist() == first[0].history["loss"].tolist()
    with h5py.File(big, "r+") as f:
        f["extras/other"] = h5py.SoftLink("/params")
    with pytest.warns(recordkit.errors.RecordkitWarning, match="soft link"):
        skipped = recordkit.load_all(root)
    assert len(skipped) == 0 and "soft link" in skipped.skipped[0][1]
    lazy = recordkit.load_all(root, cache=False)  # nothing but the root read
    assert len(lazy) == 1
    with pytest.raises(UnsafeRecordError, match="soft link"):
        lazy[0].extras  # noqa: B018
