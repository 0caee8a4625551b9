"""Format version 2: weight chunks written whole (H5Dwrite_chunk) with a CRC32C each in
/checksums, read back verified; zeroed chunks, pages and checksums refused; version 1
records still read, verify and resume as version 1.

Budget: ~6 s.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordDamagedError
from recordkit.format import checksums, chunkread
from recordkit.verify import verify
from tests.support import chunk_at, overwrite

MiB = 1 << 20
V1 = Path(__file__).parent / "data" / "v1"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"


def _record(tmp_path: Path, state: dict[str, np.ndarray], snapshots: int = 3,
            **options: object) -> Path:
    with recordkit.Recorder(tmp_path, system=False, **options) as rec:  # type: ignore[arg-type]
        for epoch in range(snapshots):
            rec.snapshot({k: v + epoch for k, v in state.items()}, epoch=epoch)
            rec.commit()
    return rec.path


CASES = {
    # rows not a multiple of the chunk's rows: the padded edge chunk
    "float32 edge chunk": (np.float32, (1001, 700), 256 * 1024),
    "float64 one chunk, pipelined": (np.float64, (600, 600), 4 * MiB),
    "float16 3-d": (np.float16, (64, 96, 100), 300 * 1024),
    "int32 several chunks": (np.int32, (1024, 1024), MiB),
    "complex64": (np.complex64, (300, 512), 400 * 1024),
    # a row of 8 KiB above the 2 KiB target: split along the second axis too
    "split along two axes": (np.float32, (40, 2048), 2048),
    "bool": (np.bool_, (33, 17), 4 * MiB),
    "0-d": (np.float64, (), 4 * MiB),
    "1-d small": (np.float32, (10,), 4 * MiB),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_v2_chunks_read_back_verified_and_equal(tmp_path: Path, case: str) -> None:
    dtype, shape, chunk_bytes = CASES[case]
    rng = np.random.default_rng(3)
    value = (rng.standard_normal(shape) * 100).astype(dtype)
    path = _record(tmp_path, {"w": value}, chunk_bytes=chunk_bytes)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["format_version"] == 3
        ds, sums = f["weights/w"], f["checksums/w"]
        assert ds.attrs["checksum"] == "crc32c" and not ds.fletcher32
        assert ds.id.get_create_plist().get_nfilters() == 0
        assert sums.dtype == np.uint32 and sums.shape == (
            3, checksums.grid_size(shape, ds.chunks[1:]))
        for row in range(3):
            direct = chunkread.read_checked_row(ds, row, sums[row])
            assert direct is not None and direct.shape == shape
            assert np.array_equal(direct, ds[row]) and np.array_equal(direct, value + row)
    record = recordkit.load(path)
    assert np.array_equal(record.weight("w")[-1], value + 2)
    assert np.array_equal(record.weight("w")[0:3], np.stack([value + i for i in range(3)]))
    assert np.array_equal(record.weights(epoch=1)["w"], value + 1)
    assert verify(path, isolate=False).ok


def test_a_snapshot_grows_the_file_by_its_bytes_only(tmp_path: Path) -> None:
    """No fletcher32 trailer, no copy of padding: a snapshot of 16 MiB in 4 MiB chunks adds
    at most 2% to the file (the chunk index, the checksums and the table row)."""
    state = {f"t{i}": np.ones((1024, 1024), np.float32) for i in range(4)}
    sizes = []
    with recordkit.Recorder(tmp_path, system=False) as rec:
        for epoch in range(4):
            rec.snapshot(state, epoch=epoch)
            rec.commit()
            sizes.append(rec.path.stat().st_size)
    grown = np.diff(sizes)
    assert (grown <= 1.02 * 16 * MiB).all() and (grown >= 16 * MiB).all(), grown


@pytest.mark.parametrize("damage", ["zeroed chunk", "zeroed page", "flipped byte",
                                    "zeroed checksum", "edge chunk flipped"])
def test_damaged_chunk_or_checksum_is_refused_not_read(tmp_path: Path, damage: str) -> None:
    value = np.random.default_rng(5).standard_normal((1001, 1100)).astype(np.float32)
    path = _record(tmp_path, {"w": value})
    with h5py.File(path, "r", locking=False) as f:
        rows = f["weights/w"].chunks[1]
    assert rows == 501, rows  # two chunks, the second one an edge chunk
    at, size = chunk_at(path, "weights/w", (1, rows if damage.startswith("edge") else 0, 0))
    if damage == "zeroed chunk":
        overwrite(path, at, bytes(size))
    elif damage == "zeroed page":
        page = at + 4096 - at % 4096 + 8192
        overwrite(path, page, bytes(4096))
    elif damage == "zeroed checksum":
        sums_at, sums_size = chunk_at(path, "checksums/w", (0, 0))
        overwrite(path, sums_at, bytes(sums_size))
    else:
        with open(path, "rb") as raw:
            raw.seek(at + size // 3)
            byte = raw.read(1)
        overwrite(path, at + size // 3, bytes([byte[0] ^ 0x10]))
    record = recordkit.load(path)
    with pytest.raises(RecordDamagedError, match=r"'w', dataset row 1: the chunk at \[") as info:
        record.weight("w")[1]
    assert str(path) in str(info.value) and "recordkit verify" in str(info.value)
    with pytest.raises(RecordDamagedError):
        record.weights(epoch=1)
    if damage != "zeroed checksum":  # the other snapshots are intact
        assert np.array_equal(record.weight("w")[2], value + 2)
    report = verify(path, isolate=False)
    assert not report.ok and any("fails its CRC32C" in p for p in report.problems), report


def test_a_missing_chunk_of_a_listed_snapshot_is_damage(tmp_path: Path) -> None:
    """A listed snapshot whose chunk was never written reads as zeros through HDF5; v2
    refuses it."""
    value = np.ones((512, 512), np.float32)
    path = _record(tmp_path, {"w": value}, snapshots=2)
    path.chmod(0o644)
    with h5py.File(path, "r+", locking=False) as f:  # a dataset grown without its chunk
        f["weights/w"].resize((3, 512, 512))
        f["checksums/w"].resize((3, 1))
        f["checksums/w"][2] = [checksums.crc32c(value.tobytes())]
        f["snapshots"].resize((3,))
        f["snapshots"][2] = (2, -1, 1.0e9)
    with pytest.raises(RecordDamagedError, match="is missing"):
        recordkit.load(path).weight("w")[2]


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_chunks_are_checked_as_stored(tmp_path: Path, compression: str) -> None:
    value = np.zeros((256, 256), np.float32)
    value[::7] = 1.5
    path = _record(tmp_path, {"w": value}, compression=compression)
    with h5py.File(path, "r", locking=False) as f:
        ds = f["weights/w"]
        assert ds.compression == compression and not ds.fletcher32
        _, stored = ds.id.read_direct_chunk((1, 0, 0))
        assert len(stored) < value.nbytes // 4  # compressed: the CRC covers these bytes
        assert checksums.crc32c(stored) == f["checksums/w"][1, 0]
    assert np.array_equal(recordkit.load(path).weight("w")[1], value + 1)
    at, size = chunk_at(path, "weights/w", (1, 0, 0))
    overwrite(path, at, bytes(size))
    with pytest.raises(RecordDamagedError, match="fails its CRC32C"):
        recordkit.load(path).weight("w")[1]


def test_checksum_false_writes_no_checksums(tmp_path: Path) -> None:
    value = np.arange(12.0).reshape(3, 4)
    path = _record(tmp_path, {"w": value}, checksum=False)
    with h5py.File(path, "r", locking=False) as f:
        assert f["weights/w"].attrs["checksum"] == "none" and "checksums" not in f
    assert np.array_equal(recordkit.load(path).weight("w")[2], value + 2)


def test_crc32c_of_zeros_is_never_zero() -> None:
    """So a zeroed chunk with a zeroed checksum cannot verify, whatever its size."""
    sizes = sorted({1, 2, 3, 4, 8, 100, 4096, 4100, *(1 << k for k in range(13, 27)),
                    *(3 << k for k in range(10, 24)), 4 * MiB + 4})
    assert all(checksums.check_zero_crc(n) for n in sizes)
    assert checksums.crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_the_plain_h5py_check_in_format_md_runs(tmp_path: Path) -> None:
    """The snippet in docs/FORMAT.md, run as written, passes on a record and fails on a
    damaged one."""
    text = DOCS.read_text()
    snippet = re.search(r"```python\n(import h5py, itertools, crc32c\n.*?)```", text,
                        re.S)
    assert snippet, "the CRC32C snippet is missing from docs/FORMAT.md"
    value = np.random.default_rng(9).standard_normal((2048, 1024)).astype(np.float32)
    path = _record(tmp_path, {"fc.weight": value}, snapshots=4)
    scope: dict[str, object] = {"path": str(path)}
    exec(snippet.group(1), scope)  # our own documentation
    assert np.array_equal(scope["weights"], value + 3)
    at, _ = chunk_at(path, "weights/fc.weight", (3, 512, 0))
    overwrite(path, at + 100, b"\x01")
    with pytest.raises(AssertionError, match="is damaged"):
        exec(snippet.group(1), {"path": str(path)})


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / "v1" / name
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(V1 / name, target)
    target.chmod(0o644)
    return target


def _v1_state(epoch: int) -> dict[str, np.ndarray]:
    """tests/data/make_v1.py's state(), repeated here (tests do not import data/)."""
    rng = np.random.default_rng(epoch)
    return {"enc/big.weight": rng.standard_normal((640, 512)).astype(np.float32),
            "fc.bias": rng.standard_normal(32).astype(np.float64),
            "steps": np.array([epoch, 2 * epoch], np.int64),
            "half": rng.standard_normal((8, 4)).astype(np.float32)}


@pytest.mark.parametrize("name", ["checked.h5", "unchecked.h5"])
def test_version_1_records_still_read_and_verify(tmp_path: Path, name: str) -> None:
    path = _copy(name, tmp_path)
    record = recordkit.load(path)
    assert record.status == "completed" and record.snapshot_epochs == [0, 1]
    for epoch in range(2):
        expected = _v1_state(epoch)
        got = record.weights(epoch=epoch)
        for key in ("enc/big.weight", "fc.bias", "steps"):
            assert np.array_equal(got[key], expected[key]), key
        bits = np.asarray(got["half"], np.float32)
        assert np.abs(bits - expected["half"]).max() <= np.abs(expected["half"]).max() / 128
    assert record.history["loss"].tolist() == [1.0, 0.5]
    assert np.array_equal(record.extras["curve"], np.linspace(0, 1, 50))
    assert record.extras["folds"] == {"acc": [0.25, 0.5], "who": "me"}
    assert verify(path, isolate=False).ok
    if name == "checked.h5":  # v1's fletcher32 still refuses a flipped byte
        at, size = chunk_at(path, "weights/enc%2Fbig.weight", (1, 0, 0))
        overwrite(path, at + size // 2, b"\x55\xaa")
        with pytest.raises(RecordDamagedError):
            recordkit.load(path).weight("enc/big.weight")[1]


def test_a_resumed_version_1_record_stays_version_1(tmp_path: Path) -> None:
    path = _copy("empty.h5", tmp_path)
    value = np.random.default_rng(2).standard_normal((600, 500)).astype(np.float32)
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        rec.log({"loss": 0.5}, epoch=1)
        rec.snapshot({"w": value}, epoch=1)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["format_version"] == 1 and "checksums" not in f
        assert f["weights/w"].fletcher32 and "checksum" not in f["weights/w"].attrs
    record = recordkit.load(path)
    assert np.array_equal(record.weight("w")[0], value)
    assert record.history["loss"].tolist() == [1.0, 0.5]
    assert verify(path, isolate=False).ok


@pytest.mark.parametrize("name", ["w", "enc/fc.weight"])  # a link name that is escaped
def test_a_resumed_version_2_record_keeps_its_checksums(tmp_path: Path, name: str) -> None:
    value = np.ones((300, 300), np.float32)
    path = _record(tmp_path, {name: value}, snapshots=3)
    path.chmod(0o644)
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        rec.rewind(2)  # drops the snapshot of epoch 2 (and its checksums)
        rec.snapshot({name: value * 7}, epoch=1)  # replaces the snapshot of epoch 1
        rec.snapshot({name: value * 9}, epoch=2)
        rec.snapshot({name: value * 11}, epoch=3)
    key = name.replace("/", "%2F")
    with h5py.File(path, "r", locking=False) as f:
        assert f[f"checksums/{key}"].shape == (4, 1)
        assert f[f"weights/{key}"].shape == (4, 300, 300)
    record = recordkit.load(path)
    assert [float(record.weight(name)[i][0, 0]) for i in range(4)] == [1.0, 7.0, 9.0, 11.0]
    assert verify(path, isolate=False).ok


def _read_in_child(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(float(recordkit.load(path).weight("w")[2].sum()))


def test_forked_child_reads_with_its_own_crc_thread(tmp_path: Path) -> None:
    """The CRC thread does not survive fork: a child must start its own."""
    path = _record(tmp_path, {"w": np.ones((1024, 1024), np.float32)})
    assert float(recordkit.load(path).weight("w")[0].sum()) == 1024 * 1024  # thread made
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(str(path), queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung reading a snapshot")
    assert child.exitcode == 0 and queue.get(timeout=5) == 3.0 * 1024 * 1024


def test_chunk_grid_order_is_c_order() -> None:
    grid = list(checksums.chunk_grid((5, 6), (2, 4)))
    assert grid == list(itertools.product((0, 2, 4), (0, 4)))
    assert checksums.grid_size((5, 6), (2, 4)) == 6 and checksums.grid_size((0, 3), (1, 3)) == 0


def test_a_version_1_summary_is_trusted_like_a_version_2_one(tmp_path: Path) -> None:
    """Tables of many runs read one attribute per closed run: v1 records keep that."""
    from recordkit.record import Record

    path = _copy("checked.h5", tmp_path)
    lazy = Record(path, lazy=True)
    assert lazy._summary is not None and lazy._summary["format_version"] == 1
    assert lazy.params == {"lr": 0.01}


@pytest.mark.parametrize(("first", "second"), [(0, 5), (1, 1), (3, 4096), (MiB, MiB + 3),
                                               (2 * MiB, 2 * MiB), (7, 0)])
def test_crc32c_combine_equals_the_crc_of_the_concatenation(first: int, second: int) -> None:
    rng = np.random.default_rng(first + second)
    a = rng.integers(0, 256, first, dtype=np.uint8).tobytes()
    b = rng.integers(0, 256, second, dtype=np.uint8).tobytes()
    assert checksums.crc32c_combine(checksums.crc32c(a), checksums.crc32c(b), second) == (
        checksums.crc32c(a + b))


_CONCURRENT = r"""
import sys, threading
from pathlib import Path
import numpy as np
import recordkit

root = Path(sys.argv[1])
state = {f"w{i}": np.arange(i * 7919, i * 7919 + 40 * 300, dtype=np.float32).reshape(40, 300)
         for i in range(6)}
# A record read over and over while the writers write: reads take chunks directly too.
with recordkit.Recorder(root / "read", system=False, chunk_bytes=4096) as rec:
    rec.snapshot(state, epoch=0)
read_path = rec.path
paths, errors = [], []

def record(n: int) -> None:
    try:
        options = {"compression": "gzip"} if n == 2 else {}
        with recordkit.Recorder(root / f"w{n}", system=False, chunk_bytes=4096,
                                **options) as rec:
            paths.append(rec.path)
            for epoch in range(25):
                rec.snapshot({k: v + epoch for k, v in state.items()}, epoch=epoch)
                rec.commit()
    except BaseException as err:
        errors.append(err)

threads = [threading.Thread(target=record, args=(n,)) for n in range(3)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    record_ = recordkit.load(read_path)
    assert np.array_equal(record_.weight("w3")[0], state["w3"])
for t in threads:
    t.join()
assert not errors, errors
for path in paths:
    record_ = recordkit.load(path)
    for epoch in range(25):
        for k, v in state.items():
            assert np.array_equal(record_.weight(k)[epoch], v + epoch), (path, k, epoch)
print("checked", len(paths))
"""


def test_recorders_in_threads_write_and_read_chunks_at_once(tmp_path: Path) -> None:
    """h5py before 3.16 calls H5Dwrite_chunk / H5Dread_chunk without its global lock:
    two recorders' writer threads failed ('Unspecified error in H5Dwrite_chunk') or
    crashed the process. A child process, so a crash fails this test only."""
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _CONCURRENT,
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["checked", "3"]


def _zero_page_inside(path: Path, dataset: str, chunk: tuple[int, ...]) -> None:
    at, size = chunk_at(path, dataset, chunk)
    page = at + 4096 - at % 4096
    assert page + 4096 <= at + size, (at, size)  # a whole page inside the chunk
    overwrite(path, page, bytes(4096))


def test_a_zeroed_page_over_all_ones_words_is_refused(tmp_path: Path) -> None:
    """Issue 17 item 4: fletcher32 sums 16-bit words modulo 65535, so a word 0xFFFF counts
    as 0 and a page of them zeroed keeps the checksum (int -1, uint8 255, all-ones NaN
    payloads). CRC32C in v2 refuses it in weights and extras."""
    ones = np.full((64, 1024), -1, np.int16)  # 128 KiB of 0xFFFF words
    with recordkit.Recorder(tmp_path, system=False) as rec:
        for epoch in range(2):
            rec.snapshot({"w": ones}, epoch=epoch)
            rec.commit()
        rec.add("mask", ones)
    path = rec.path
    _zero_page_inside(path, "weights/w", (1, 0, 0))
    _zero_page_inside(path, "extras/mask", (0, 0))
    with pytest.raises(RecordDamagedError, match="fails its CRC32C"):
        recordkit.load(path).weight("w")[1]
    assert np.array_equal(recordkit.load(path).weight("w")[0], ones)  # the other row
    with pytest.raises(RecordDamagedError):
        recordkit.load(path).extras["mask"]
    report = verify(path, isolate=False)
    assert not report.ok and any("CRC32C" in p for p in report.problems), report


def test_fletcher32_alone_passes_that_page(tmp_path: Path) -> None:
    """Why v1 cannot be trusted there (docs/RELIABILITY.md): the same damage in a
    fletcher32 chunk reads back as zeros without an error, through HDF5 itself."""
    path = tmp_path / "f32.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=np.full((64, 1024), -1, np.int16), chunks=(64, 1024),
                         fletcher32=True)
    _zero_page_inside(path, "d", (0, 0))
    with h5py.File(path, "r") as f:
        back = f["d"][()]
    assert (back == 0).sum() == 2048 and (back == -1).sum() == 64 * 1024 - 2048
