"""Format version 2's direct writes (recordkit.format.directio): weight chunks larger than
HDF5's chunk cache and whole pages long are written with O_DIRECT at the place HDF5 gave
them when the dataset grew; every other chunk through H5Dwrite_chunk as before. Each
record is read back value by value, through recordkit and through plain h5py, and
verified; damage to a chunk written so is refused.

Budget: ~5 s.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordDamagedError
from recordkit.format import directio
from recordkit.verify import verify
from tests.support import chunk_at, overwrite, takes_o_direct

MiB = 1 << 20

#: name -> (shape, float32), and the bytes of its chunks that are written directly per
#: snapshot: whole 4 MiB chunks; an axis split into equal chunks of whole pages; one chunk
#: of 2 MiB; chunks that are not whole pages, a chunk of HDF5's cache size, a small tensor
#: (all three written through HDF5).
TENSORS: dict[str, tuple[tuple[int, ...], int]] = {
    "two chunks": ((2048, 1024), 8 * MiB),
    "equal parts": ((1500, 1024), 1500 * 1024 * 4),
    "one chunk": ((513, 1024), 513 * 4096),
    "not whole pages": ((1001, 1100), 0),
    "cache size": ((256, 1024), 0),
    "small": ((7, 5), 0),
}
DIRECT_PER_SNAPSHOT = sum(direct for _, direct in TENSORS.values())


def _state(epoch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(epoch)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, (shape, _) in TENSORS.items()}


def _direct_bytes(rec: recordkit.Recorder) -> int:
    return int(rec._snapshots._store.direct_bytes)


@pytest.fixture
def direct(tmp_path: Path) -> Path:
    if not takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT")
    return tmp_path


def _check_values(path: Path, written: dict[int, dict[str, np.ndarray]]) -> None:
    record = recordkit.load(path)
    assert record.snapshot_epochs == sorted(written)
    for epoch, state in written.items():
        got = record.weights(epoch)
        for name, value in state.items():
            assert np.array_equal(got[name], value), (epoch, name)
    with h5py.File(path, "r", locking=False) as f:  # plain h5py reads the same values
        for i, epoch in enumerate(sorted(written)):
            for name, value in written[epoch].items():
                assert np.array_equal(f["weights"][name][i], value), (epoch, name)
    report = verify(path, isolate=False)
    assert report.ok, report.problems


def test_large_chunks_are_written_directly_and_read_back(direct: Path) -> None:
    written: dict[int, dict[str, np.ndarray]] = {}
    with recordkit.Recorder(direct, system=False) as rec:
        for epoch in range(3):
            written[epoch] = _state(epoch)
            rec.snapshot(written[epoch], epoch=epoch)
            rec.commit()
        assert _direct_bytes(rec) == 3 * DIRECT_PER_SNAPSHOT
        written[2] = _state(12)  # the last epoch again: its row rewritten in place
        rec.snapshot(written[2], epoch=2)
        rec.commit()
        assert _direct_bytes(rec) == 4 * DIRECT_PER_SNAPSHOT
    _check_values(rec.path, written)
    with h5py.File(rec.path, "r", locking=False) as f:
        for name, (_, direct_bytes) in TENSORS.items():
            early = f["weights"][name].id.get_create_plist().get_alloc_time()
            assert (early == h5py.h5d.ALLOC_TIME_EARLY) == bool(direct_bytes), name


def test_a_resumed_record_goes_on_writing_directly(direct: Path) -> None:
    written = {0: _state(0)}
    with recordkit.Recorder(direct, system=False) as rec:
        rec.snapshot(written[0], epoch=0)
    with recordkit.Recorder(direct, resume=rec.path, system=False) as resumed:
        for epoch in (1, 2):
            written[epoch] = _state(epoch)
            resumed.snapshot(written[epoch], epoch=epoch)
            resumed.commit()
        assert _direct_bytes(resumed) == 2 * DIRECT_PER_SNAPSHOT
    _check_values(rec.path, written)


def test_a_reader_of_the_running_record_sees_each_rewrite(direct: Path) -> None:
    """The bytes a direct write puts on the disk are what a reader in the same process
    reads, also after the last snapshot was rewritten in place (the page cache holds
    nothing older)."""
    with recordkit.Recorder(direct, system=False) as rec:
        for version in range(3):
            state = _state(20 + version)
            rec.snapshot(state, epoch=0)
            rec.commit()
            got = recordkit.load(rec.path).weights(0)
            assert all(np.array_equal(got[k], v) for k, v in state.items()), version
        assert _direct_bytes(rec) == 3 * DIRECT_PER_SNAPSHOT


def test_unaligned_buffers_and_compression_take_hdf5s_write(direct: Path) -> None:
    """background=False writes from the caller's arrays (a view 4 bytes into a page is
    not one a direct write takes), compression through HDF5's filter: no direct write,
    the same values."""
    base = np.random.default_rng(1).standard_normal(2048 * 1024 + 1).astype(np.float32)
    value = base[1:].reshape(2048, 1024)  # whole 4 MiB chunks, not page-aligned
    for options in ({"background": False}, {"compression": "gzip"}):
        folder = direct / next(iter(options))
        with recordkit.Recorder(folder, system=False, **options) as rec:  # type: ignore[arg-type]
            rec.snapshot({"w": value}, epoch=0)
            rec.snapshot({"w": value + 1}, epoch=1)
        assert _direct_bytes(rec) == 0, options
        _check_values(rec.path, {0: {"w": value}, 1: {"w": value + 1}})


@pytest.mark.parametrize("damage", ["zeroed chunk", "zeroed page", "flipped byte"])
def test_damage_to_a_directly_written_chunk_is_refused(direct: Path, damage: str) -> None:
    written = {epoch: {"w": np.full((2048, 1024), epoch + 0.5, np.float32)}
               for epoch in range(3)}
    with recordkit.Recorder(direct, system=False) as rec:
        for epoch, state in written.items():
            rec.snapshot(state, epoch=epoch)
    assert _direct_bytes(rec) == 3 * 8 * MiB  # (closed: every snapshot written)
    at, size = chunk_at(rec.path, "weights/w", (1, 1024, 0))
    assert at % directio.PAGE == 0 and size == 4 * MiB
    if damage == "zeroed chunk":
        overwrite(rec.path, at, bytes(size))
    elif damage == "zeroed page":
        overwrite(rec.path, at + 3 * directio.PAGE, bytes(directio.PAGE))
    else:
        overwrite(rec.path, at + size // 3, bytes([0x10]))
    record = recordkit.load(rec.path)
    with pytest.raises(RecordDamagedError, match=r"'w', dataset row 1: the chunk at \["):
        record.weight("w")[1]
    assert np.array_equal(record.weight("w")[2], written[2]["w"])
    report = verify(rec.path, isolate=False)
    assert not report.ok and any("fails its CRC32C" in p for p in report.problems)


def test_direct_writes_leave_the_page_cache_alone(direct: Path) -> None:
    """What a direct write wrote is on the disk, not in the page cache (mincore of the
    chunk's pages): the copy into the cache, the one a buffered write makes on the
    writer's CPU, was not made."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(direct)], capture_output=True,
                          text=True, check=False).stdout.strip()
    if kind in ("tmpfs", "ramfs", ""):  # no disk: its O_DIRECT keeps the pages in memory
        pytest.skip(f"{direct} is on {kind or 'an unknown file system'}")
    libc = ctypes.CDLL(None, use_errno=True)
    with recordkit.Recorder(direct, system=False) as rec:
        rec.snapshot({"w": np.ones((2048, 1024), np.float32)}, epoch=0)
    assert _direct_bytes(rec) == 8 * MiB
    at, size = chunk_at(rec.path, "weights/w", (0, 0, 0))
    with open(rec.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pages = np.zeros(size // mmap.PAGESIZE, np.uint8)
        mapped = np.frombuffer(m, np.uint8)  # no page read: mincore only looks
        done = libc.mincore(ctypes.c_void_p(mapped.ctypes.data + at), ctypes.c_size_t(size),
                            pages.ctypes.data_as(ctypes.c_void_p))
        del mapped
    assert done == 0, os.strerror(ctypes.get_errno())
    resident = int((pages & 1).sum())
    assert resident == 0, f"{resident} of {len(pages)} pages of the chunk are in the page cache"
