"""Reading a version-1 snapshot straight from its chunks (recordkit.format.chunkread): the
same values as HDF5 reads, the same refusal of damaged data, and HDF5's own read for every
other layout. Version 1 weights (fletcher32) are written here the way a v1 record gets
new ones today: a real v1 record (tests/data/v1) resumed by this recordkit. Version 2
(CRC32C) reads are tested in tests/test_checksums.py.

Budget: ~3 s.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordDamagedError
from recordkit.format import chunkread, fletcher32

MiB = 1 << 20
V1_RECORD = Path(__file__).parent / "data" / "v1" / "empty.h5"


@pytest.mark.parametrize("size", [1, 2, 5, 6, 720, 721, 4099])
def test_reference_fletcher32_is_the_checksum_hdf5_stores(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("d", data=data[None], chunks=(1, size), fletcher32=True)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        _, stored = f["d"].id.read_direct_chunk((0, 0))
    assert len(stored) == size + 4
    assert fletcher32.fletcher32(stored[:-4]) == int.from_bytes(stored[-4:], "little")


def test_native_checksum_is_found_and_agrees() -> None:
    native = fletcher32.native()
    assert native is not None, "H5_checksum_fletcher32 not found in h5py's libhdf5"
    data = np.random.default_rng(1).integers(0, 256, 3 * MiB + 6, dtype=np.uint8)
    assert fletcher32.same(native(data.ctypes.data, data.nbytes), fletcher32.fletcher32(data))


def test_pieces_combine_into_the_whole_checksum() -> None:
    native = fletcher32.native()
    assert native is not None
    data = np.random.default_rng(2).integers(0, 256, 10_000, dtype=np.uint8)
    pieces = [fletcher32.piece_sums(native, data.ctypes.data + lo, hi - lo)
              for lo, hi in ((0, 2_000), (2_000, 2_002), (2_002, 7_000), (7_000, 10_000))]
    assert fletcher32.same(fletcher32.combine(pieces), fletcher32.fletcher32(data))


def _record(tmp_path: Path, state: dict[str, np.ndarray], snapshots: int = 3, **options: object
            ) -> Path:
    """A version-1 record holding *snapshots* snapshots of *state* (epochs 1, 2, ...),
    made by resuming the v1 record of tests/data that has none yet."""
    folder = tmp_path / "v1"
    folder.mkdir(exist_ok=True)
    path = folder / "r.h5"
    shutil.copyfile(V1_RECORD, path)
    path.chmod(0o644)
    with recordkit.Recorder(tmp_path, system=False, resume=path,  # type: ignore[arg-type]
                            **options) as rec:
        for row in range(snapshots):
            rec.snapshot({k: v + row for k, v in state.items()}, epoch=1 + row)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["format_version"] == 1  # a resumed v1 record stays v1
    return path


CASES = {
    # rows not a multiple of the chunk's rows: the last chunk is partial
    "float32 partial last chunk": (np.float32, (1000, 700), 256 * 1024),
    "float64 one chunk": (np.float64, (400, 400), 4 * MiB),
    "float16 3-d": (np.float16, (64, 96, 100), 300 * 1024),
    "int32": (np.int32, (513, 1024), MiB),
    "complex64": (np.complex64, (300, 512), 400 * 1024),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_read_equals_hdf5_read(tmp_path: Path, case: str) -> None:
    dtype, shape, chunk_bytes = CASES[case]
    rng = np.random.default_rng(3)
    state = {"w": (rng.standard_normal(shape) * 100).astype(dtype)}
    path = _record(tmp_path, state, chunk_bytes=chunk_bytes)
    with h5py.File(path, "r", locking=False) as f:
        ds = f["weights"]["w"]
        assert ds.shape[1:] == shape and ds.nbytes // 3 >= chunkread.MIN_BYTES
        for index in range(3):
            direct = chunkread.read_snapshot(ds, index)
            assert direct is not None, "the plain layout must be read directly"
            assert direct.dtype == ds.dtype and direct.shape == shape
            assert np.array_equal(direct, ds[index])
            assert np.array_equal(direct, state["w"] + index)
    record = recordkit.load(path)
    assert np.array_equal(record.weight("w")[-1], state["w"] + 2)
    assert np.array_equal(record.weights(epoch=2)["w"], state["w"] + 1)


@pytest.mark.parametrize("options", [
    {"checksum": False},
    {"compression": "gzip"},
    {"chunk_bytes": 2048},  # rows of 4 KiB split along the second tensor axis
])
def test_other_layouts_are_left_to_hdf5(tmp_path: Path, options: dict[str, object]) -> None:
    state = {"w": np.random.default_rng(4).standard_normal((1024, 1024)).astype(np.float32)}
    path = _record(tmp_path, state, **options)
    with h5py.File(path, "r", locking=False) as f:
        assert chunkread.read_snapshot(f["weights"]["w"], 1) is None
    assert np.array_equal(recordkit.load(path).weight("w")[1], state["w"] + 1)


def test_small_tensors_and_odd_rows_are_left_to_hdf5(tmp_path: Path) -> None:
    state = {"small": np.ones((10, 10), np.float32),
             "odd": np.arange(2 * MiB + 3, dtype=np.uint8).reshape(-1, 1)}
    path = _record(tmp_path, state)
    with h5py.File(path, "r", locking=False) as f:
        assert chunkread.read_snapshot(f["weights"]["small"], 0) is None
        assert chunkread.read_snapshot(f["weights"]["odd"], 0) is None
    record = recordkit.load(path)
    assert np.array_equal(record.weight("odd")[2], state["odd"] + 2)


def _flip_inside_chunk(path: Path, tensor: str, index: int, chunk_row: int) -> None:
    with h5py.File(path, "r", locking=False) as f:
        ds = f["weights"][tensor]
        rows = ds.chunks[1]
        info = ds.id.get_chunk_info_by_coord((index, chunk_row // rows * rows, 0))
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)
        raw.seek(info.byte_offset + info.size // 2)
        raw.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("chunk_row", [0, 999])  # a full chunk, the partial last chunk
def test_damaged_chunk_is_refused_not_read(tmp_path: Path, chunk_row: int) -> None:
    state = {"w": np.random.default_rng(5).standard_normal((1000, 700)).astype(np.float32)}
    path = _record(tmp_path, state, chunk_bytes=256 * 1024)
    with h5py.File(path, "r", locking=False) as f:
        assert 1000 % f["weights"]["w"].chunks[1], "the last chunk must be partial"
    _flip_inside_chunk(path, "w", 1, chunk_row)
    with h5py.File(path, "r", locking=False) as f:
        ds = f["weights"]["w"]
        assert chunkread.read_snapshot(ds, 1) is None  # the checksum fails: HDF5's turn
        assert np.array_equal(chunkread.read_snapshot(ds, 0), state["w"])  # others intact
    record = recordkit.load(path)
    with pytest.raises(RecordDamagedError, match="is damaged") as info:
        record.weight("w")[1]
    assert str(path) in str(info.value)
    assert np.array_equal(record.weight("w")[2], state["w"] + 2)


def _read_in_child(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with h5py.File(path, "r", locking=False) as f:
        value = chunkread.read_snapshot(f["weights"]["w"], 2)
    queue.put(None if value is None else float(value.sum()))


def test_forked_child_reads_with_its_own_threads(tmp_path: Path) -> None:
    """A pool's threads do not survive fork: a child reuses the parent's pool object at its
    peril (its tasks would wait forever)."""
    state = {"w": np.ones((1024, 512), np.float32)}
    path = _record(tmp_path, state)
    with h5py.File(path, "r", locking=False) as f:
        assert chunkread.read_snapshot(f["weights"]["w"], 0) is not None  # the pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(str(path), queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung reading a snapshot")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 3.0 * 1024 * 512
