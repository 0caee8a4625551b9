"""Reading v2 weight rows through a dataset's layout read once (chunkread.row_layout,
read_laid_out_row; format.weights keeps it while the file is unchanged on disk): the
values written, for every dtype and shape, packs and compressed records included; and a
file changed after a read (damage written while a record stays open, or between two
opens) refused on the next read, never answered from what was read before.

Budget: ~4 s.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordDamagedError
from recordkit.format import chunkread
from tests.support import chunk_at, overwrite

MiB = 1 << 20


def _record(tmp_path: Path, state: dict[str, np.ndarray], snapshots: int = 3,
            **options: object) -> Path:
    with recordkit.Recorder(tmp_path, system=False, **options) as rec:  # type: ignore[arg-type]
        for epoch in range(snapshots):
            rec.snapshot({k: v + epoch for k, v in state.items()}, epoch=epoch)
            rec.commit()
    return rec.path


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "edge": rng.standard_normal((1001, 1100)).astype(np.float32),  # two chunks, padded
        "f16": rng.standard_normal((64, 96, 100)).astype(np.float16),
        "i64": rng.integers(-9, 9, (700, 800)).astype(np.int64),
        "u8": rng.integers(0, 255, 3000).astype(np.uint8),
        "scalar": np.float64(2.5) * np.ones(()),
        "empty": np.zeros((0, 4), np.float32),
    }


def _equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("options", [{}, {"compression": "gzip"}],
                         ids=["uncompressed", "gzip"])
def test_rows_read_back_value_by_value(tmp_path: Path, options: dict[str, object]) -> None:
    state = _state()
    path = _record(tmp_path, state, **options)
    record = recordkit.load(path)
    for _ in range(2):  # the second pass reads through the layout kept from the first
        with record:
            for name, value in state.items():
                for i in (2, 0, 1):
                    _equal(record.weight(name)[i], value + i)
            whole = record.weights(1)
        for name, value in state.items():
            _equal(whole[name], value + 1)


def test_bfloat16_and_packed_tensors(tmp_path: Path) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(3)
    small = {f"norm{i}.bias": rng.standard_normal(64).astype(np.float32) for i in range(40)}
    big = rng.standard_normal((512, 2048)).astype(ml_dtypes.bfloat16)
    path = _record(tmp_path, {**small, "big": big})
    with h5py.File(path, "r", locking=False) as f:
        assert any(k.startswith("%pack-") for k in f["weights"])  # v3 packs are read here
    record = recordkit.load(path)
    for _ in range(2):
        with record:
            for i in range(3):
                got = record.weight("big")[i]
                assert got.dtype == big.dtype
                assert np.array_equal(got.view(np.uint16), (big + i).view(np.uint16))
                snapshot = record.weights(i)
                for name, value in small.items():
                    _equal(record.weight(name)[i], value + i)
                    _equal(snapshot[name], value + i)


@pytest.mark.parametrize("damage", ["zeroed chunk", "zeroed page", "flipped byte",
                                    "zeroed checksum"])
@pytest.mark.parametrize("open_between", [False, True], ids=["same open", "reopened"])
def test_damage_written_after_a_read_is_refused(tmp_path: Path, damage: str,
                                                open_between: bool) -> None:
    """Checksums are read from the file when it changed, not from HDF5's chunk cache:
    a zeroed checksum is refused in the same open too."""
    value = np.random.default_rng(5).standard_normal((1001, 1100)).astype(np.float32)
    path = _record(tmp_path, {"w": value})
    at, size = chunk_at(path, "weights/w", (1, 0, 0))
    sums_at, sums_size = chunk_at(path, "checksums/w", (0, 0))
    record = recordkit.load(path)
    with record:
        _equal(record.weight("w")[1], value + 1)  # layout and checksums now kept
        if open_between:
            record.close()
        if damage == "zeroed chunk":
            overwrite(path, at, bytes(size))
        elif damage == "zeroed page":
            overwrite(path, at + 4096 - at % 4096 + 8192, bytes(4096))
        elif damage == "zeroed checksum":
            overwrite(path, sums_at, bytes(sums_size))
        else:
            with open(path, "rb") as raw:
                raw.seek(at + size // 3)
                byte = raw.read(1)
            overwrite(path, at + size // 3, bytes([byte[0] ^ 0x10]))
        if open_between:
            record.__enter__()
        with pytest.raises(RecordDamagedError, match=r"'w', dataset row 1: the chunk at"):
            record.weight("w")[1]
        with pytest.raises(RecordDamagedError):
            record.weights(1)
        if damage != "zeroed checksum":
            _equal(record.weight("w")[2], value + 2)


def test_a_chunk_moved_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    value = np.arange(2 * MiB // 4, dtype=np.float32).reshape(-1, 256)
    path = _record(tmp_path, {"w": value})
    with h5py.File(path, "r", locking=False) as f:
        ds = f["weights/w"]
        layout = chunkread.row_layout(ds)
        expected = f["checksums/w"][1]
        fd = chunkread.file_fd(f)
        assert layout is not None and fd is not None and layout.rows == 3
        _equal(chunkread.read_laid_out_row(fd, layout, 1, expected), value + 1)
        moved = chunkread.RowLayout(layout.shape, layout.dtype, layout.grid,
                                    layout.chunk_bytes, layout.places + (1 << 40),
                                    layout.sizes)
        with pytest.raises(chunkread.ChunkChecksumError, match="past the file"):
            chunkread.read_laid_out_row(fd, moved, 1, expected)
        missing = layout.places.copy()
        missing[1, 0] = -1
        gone = chunkread.RowLayout(layout.shape, layout.dtype, layout.grid,
                                   layout.chunk_bytes, missing, layout.sizes)
        with pytest.raises(chunkread.ChunkChecksumError, match="missing"):
            chunkread.read_laid_out_row(fd, gone, 1, expected)
        with pytest.raises(chunkread.ChunkChecksumError, match="checksums for"):
            chunkread.read_laid_out_row(fd, layout, 1, expected[:0])


def test_filtered_and_unchunked_layouts_are_not_laid_out(tmp_path: Path) -> None:
    path = _record(tmp_path / "gz", {"w": np.ones((300, 300), np.float32)},
                   compression="gzip")
    with h5py.File(path, "r", locking=False) as f:
        assert chunkread.row_layout(f["weights/w"]) is None
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("c", data=np.ones((2, 8), np.float32))
        f.create_dataset("two", data=np.ones((2, 8, 8), np.float32), chunks=(1, 4, 4))
        assert chunkread.row_layout(f["c"]) is None
        assert chunkread.row_layout(f["two"]) is None  # split along two axes


def test_large_rows_read_on_two_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setattr(chunkread, "MIN_PIPELINED_BYTES", 1 * MiB)
    rng = np.random.default_rng(11)
    state = {"one": rng.standard_normal((1024, 1024)).astype(np.float32),  # one 4 MiB chunk
             "many": rng.standard_normal((3000, 1024)).astype(np.float32)}
    path = _record(tmp_path, state)
    record = recordkit.load(path)
    with record:
        for name, value in state.items():
            for i in range(3):
                _equal(record.weight(name)[i], value + i)
    at, size = chunk_at(path, "weights/one", (2, 0, 0))
    overwrite(path, at + size - 4096, bytes(4096))  # the second half's last page
    with record, pytest.raises(RecordDamagedError, match="'one', dataset row 2"):
        record.weight("one")[2]


@pytest.fixture
def helper_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[str]:
    """How a row of two halves is folded: "one thread" (not split), "helper" (the helper
    thread always takes its half: a cancel never wins) or "stolen" (the helper is kept
    busy, so the calling thread takes both halves)."""
    path = request.param
    monkeypatch.setattr(chunkread, "MIN_SPLIT_FOLD_BYTES",
                        1 << 40 if path == "one thread" else 1 * MiB)
    if path == "helper":
        monkeypatch.setattr(concurrent.futures.Future, "cancel", lambda self: False)
    release = threading.Event()
    if path == "stolen":
        chunkread._helper_executor().submit(release.wait, 60)
    try:
        yield path
    finally:
        release.set()


@pytest.mark.parametrize("helper_path", ["one thread", "helper", "stolen"],
                         indirect=True)
def test_a_folded_row_is_every_byte_of_the_row_once(tmp_path: Path, helper_path: str
                                                     ) -> None:
    """TensorHistory.fold (chunkread.fold_laid_out_row): the pieces, in order, are the
    row's bytes, the edge chunk's padding left out, whether one thread folds the row or
    two (a chunk cut between them), and which thread took which half; a damaged chunk
    raises once folded; a bfloat16 or packed tensor is not folded (None: read it
    whole)."""
    threads: set[int] = set()

    def copy(piece: np.ndarray, at: int) -> np.ndarray:
        threads.add(threading.get_ident())
        return piece.copy()

    rng = np.random.default_rng(13)
    state = {"one": rng.standard_normal((1024, 1024)).astype(np.float32),  # one chunk
             "edge": rng.standard_normal((1001, 1100)).astype(np.float32),  # two, padded
             "i64": rng.integers(-9, 9, (700, 800)).astype(np.int64),
             "small": rng.standard_normal(1000)}
    path = _record(tmp_path, state)
    record = recordkit.load(path)
    with record:
        for name, value in state.items():
            for i in range(3):
                parts = record.weight(name).fold(i, copy)
                assert parts is not None
                starts = [at for at, _ in parts]
                assert starts == list(np.cumsum([0] + [p.size for _, p in parts[:-1]]))
                assert all(p.size <= chunkread.FOLD_PIECE_BYTES for _, p in parts)
                got = np.concatenate([p for _, p in parts]).view(value.dtype)
                _equal(got.reshape(value.shape), value + i)
    assert len(threads) == (2 if helper_path == "helper" else 1)
    with record, pytest.raises(IndexError, match="out of range"):
        record.weight("edge").fold(3, copy)
    at, size = chunk_at(path, "weights/edge", (2, 0, 0))
    overwrite(path, at + size // 2 + 4096, bytes(4096))  # in the first chunk's second half
    seen: list[int] = []
    with record, pytest.raises(RecordDamagedError, match=r"'edge', dataset row 2: the chunk"):
        record.weight("edge").fold(2, lambda piece, at: seen.append(at))
    assert seen  # folded, then refused
    with record:
        assert record.weight("edge").fold(1, lambda piece, at: None) is not None


@pytest.mark.parametrize("helper_path", ["one thread", "helper", "stolen"],
                         indirect=True)
def test_rows_folded_together_span_by_span(tmp_path: Path, helper_path: str) -> None:
    """TensorHistory.fold_rows: each row's pieces are its bytes, in order; a span of
    every row is folded before the next span (one thread: exactly that order); a
    damaged chunk of one row is refused, naming that row."""
    rng = np.random.default_rng(17)
    value = rng.standard_normal((1001, 1100)).astype(np.float32)  # two chunks, padded
    path = _record(tmp_path, {"w": value}, snapshots=4)
    record = recordkit.load(path)
    calls: list[tuple[int, int]] = []

    def copy(j: int, piece: np.ndarray, at: int) -> np.ndarray:
        calls.append((j, at))
        return piece.copy()

    with record:
        folded = record.weight("w").fold_rows([3, 0, 2], copy)
    assert folded is not None and len(folded) == 3
    for parts, row in zip(folded, [3, 0, 2]):
        got = np.concatenate([p for _, p in parts]).view(np.float32).reshape(value.shape)
        _equal(got, value + row)
    if helper_path == "one thread":
        spans = sorted({at for _, at in calls})
        assert calls == [(j, at) for at in spans for j in range(3)]
    at, _ = chunk_at(path, "weights/w", (2, 0, 0))
    overwrite(path, at + 8192, bytes(4096))
    with record, pytest.raises(RecordDamagedError, match=r"'w', dataset row 2: the chunk"):
        record.weight("w").fold_rows([0, 1, 2, 3], copy)
    with record:
        assert record.weight("w").fold_rows([0, 1, 3], copy) is not None


def test_bfloat16_and_packed_tensors_are_not_folded(tmp_path: Path) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    state = {"bf16": np.ones((300, 200), ml_dtypes.bfloat16)}
    state.update({f"bias{i}": np.full(10, float(i), np.float32) for i in range(40)})
    path = _record(tmp_path, state)
    record = recordkit.load(path)
    with record:
        assert record.weight("bf16").fold(0, lambda piece, at: at) is None
        assert record.weight("bias3").fold(0, lambda piece, at: at) is None  # packed
        assert record.weight("bias3")[0].tolist() == [3.0] * 10
