"""Packs of small tensors (format version 3, issue 17 item 9): many tensors of a few KiB
first snapshotted together are stored in one weight dataset per stored dtype, and read
back exactly as if each had a dataset of its own (docs/FORMAT.md, "Packs")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.dtypes import BFloat16Bits
from recordkit.errors import RecordDamagedError, SnapshotError
from recordkit.format.layout import FORMAT_VERSION, PACK_MIN_TENSORS
from recordkit.verify import verify
from tests.support import chunk_at, overwrite

N = PACK_MIN_TENSORS  # small tensors of each kind: enough for packs


def _bf16(values: np.ndarray) -> BFloat16Bits:
    """bfloat16 bits of float32 *values* (truncated: exact for the small integers used)."""
    return BFloat16Bits.of((values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16))


def _as_float32(array: Any) -> np.ndarray:
    """A read-back bfloat16 tensor (ml_dtypes or float32) as float32."""
    return np.asarray(array).astype(np.float32)


def state(epoch: int, *, late: bool = True) -> dict[str, Any]:
    """A model-like state of each epoch: float32 vectors, float16, bfloat16, int64 0-d
    counters, an empty tensor and two big tensors; from epoch 1 on (*late*), more small
    tensors, which a second set of packs holds."""
    out: dict[str, Any] = {}
    for i in range(N):
        out[f"block{i}.bn.weight"] = np.arange(i % 7 + 1, dtype=np.float32) * 0.5 + epoch
        out[f"block{i}.bn.num_batches_tracked"] = np.array(100 * epoch + i, np.int64)
        out[f"block{i}/half"] = np.full((2, 3), i - epoch, np.float16)
        out[f"block{i} bf16"] = _bf16(np.arange(4, dtype=np.float32) + i + epoch)
    out["empty"] = np.zeros((0, 3), np.float32)
    out["conv.weight"] = np.arange(300 * 300, dtype=np.float32).reshape(300, 300) + epoch
    out["fc.weight"] = np.full((64, 65), epoch, np.float64)  # 33 KiB: above the threshold
    if late and epoch >= 1:
        for i in range(N + 3):
            out[f"late{i}"] = np.array([i, -i, epoch], np.float32)
    return out


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, BFloat16Bits):
        bits = want.view(np.ndarray).astype(np.uint32) << 16
        return bool(np.array_equal(_as_float32(got), bits.view(np.float32)))
    return bool(got.dtype == want.dtype and got.shape == want.shape
                and np.array_equal(got, want))


def _cli_verify(path: Path) -> subprocess.CompletedProcess[str]:
    """``recordkit verify PATH`` in a real process."""
    return subprocess.run([sys.executable, "-m", "recordkit", "verify", str(path)],
                          capture_output=True, text=True, timeout=300, check=False)


def _write(root: Path, epochs: range, *, background: bool = True, **options: Any) -> Path:
    with recordkit.Recorder(root, experiment="packed", system=False, background=background,
                            **options) as rec:
        for epoch in epochs:
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot(state(epoch), epoch=epoch)
            rec.commit()
    return rec.path


def _layout(path: Path) -> dict[str, Any]:
    """Link name under /weights -> its kind and, for a pack, its members' names."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r", locking=False) as f:
        for key, ds in f["weights"].items():
            if ds.attrs.get("kind") == "pack":
                out[key] = [m[0] for m in json.loads(ds.attrs["members"])]
            else:
                out[key] = ds.attrs["name"]
        assert f.attrs["format_version"] == FORMAT_VERSION == 3
    return out


def _check_values(record: recordkit.Record, epochs: list[int]) -> None:
    assert record.snapshot_epochs == epochs
    for epoch in epochs:
        want = state(epoch)
        got = record.weights(epoch)
        assert set(got) == set(want)
        for name, value in want.items():
            assert _same(got[name], value), (epoch, name)
    for name in ("block3.bn.weight", "block5.bn.num_batches_tracked", "block0/half",
                 "block7 bf16", "late2", "empty", "conv.weight"):
        history = record.weight(name)
        held = [e for e in epochs if name in state(e)]
        assert history.epochs.tolist() == held
        assert _same(history[-1], state(held[-1])[name])
        assert _same(history.at(held[0]), state(held[0])[name])
        stacked = history[0:len(held)]
        assert stacked.shape == (len(held), *np.shape(state(held[0])[name]))
        for i, epoch in enumerate(held):
            assert _same(stacked[i], state(epoch)[name]), (name, epoch)


@pytest.mark.parametrize("background", [True, False])
def test_many_small_tensors_round_trip_value_by_value(tmp_path: Path, background: bool
                                                      ) -> None:
    path = _write(tmp_path, range(3), background=background)
    layout = _layout(path)
    packs = {key: names for key, names in layout.items() if key.startswith("%pack-")}
    # first snapshot: one pack per stored dtype; epoch 1's new tensors: a pack of their own
    assert sorted(packs) == ["%pack-0-bfloat16", "%pack-0-float16", "%pack-0-float32",
                             "%pack-0-int64", "%pack-1-float32"], sorted(packs)
    assert packs["%pack-0-int64"] == [f"block{i}.bn.num_batches_tracked" for i in range(N)]
    assert packs["%pack-1-float32"] == [f"late{i}" for i in range(N + 3)]
    # big tensors, and the empty one (nothing to pack), keep a dataset of their own
    assert sorted(k for k in layout if k not in packs) == ["conv.weight", "empty",
                                                          "fc.weight"]
    record = recordkit.load(path)
    assert sorted(record.tensor_names) == sorted(state(2))
    _check_values(record, [0, 1, 2])
    assert record.tensor_aliases == {}
    report = verify(path)
    assert report.ok, report.problems
    if background:
        done = _cli_verify(path)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("options", [{"checksum": False}, {"compression": "gzip"},
                                     {"chunk_bytes": 1024}])
def test_packs_with_the_storage_options(tmp_path: Path, options: dict[str, Any]) -> None:
    """Without checksums, compressed (written through HDF5's filters, the stored chunks'
    CRC32C read back), and with chunks smaller than a pack would be (more packs)."""
    path = _write(tmp_path, range(2), **options)
    packs = [k for k in _layout(path) if k.startswith("%pack-")]
    with h5py.File(path, "r", locking=False) as f:
        for key in packs:
            ds = f[f"weights/{key}"]
            assert ds.chunks == (1, ds.shape[1])  # a pack's row is one chunk
            assert ds.shape[1] * ds.dtype.itemsize <= options.get("chunk_bytes", 1 << 20)
            assert (ds.attrs["checksum"] == "none") == (options.get("checksum") is False)
            assert ds.compression == options.get("compression")
    assert len(packs) == 5, packs
    _check_values(recordkit.load(path), [0, 1])
    assert verify(path).ok


def test_a_pack_row_stays_within_one_chunk(tmp_path: Path) -> None:
    """1.2 MB of small tensors: two packs, the first holding as many as fit in 1 MiB."""
    big_state = {f"t{i}": np.arange(1000, dtype=np.float32) + i for i in range(300)}
    with recordkit.Recorder(tmp_path, experiment="split", system=False) as rec:
        rec.snapshot(big_state, epoch=0)
    layout = _layout(rec.path)
    assert sorted(layout) == ["%pack-0-float32", "%pack-0-float32-1"]
    assert len(layout["%pack-0-float32"]) == (1 << 20) // 4000
    got = recordkit.load(rec.path).weights()
    assert all(np.array_equal(got[k], v) for k, v in big_state.items())


def test_fewer_small_tensors_than_the_threshold_keep_datasets_of_their_own(
        tmp_path: Path) -> None:
    few = {f"b{i}": np.full(3, i, np.float32) for i in range(N - 1)}
    with recordkit.Recorder(tmp_path, experiment="few", system=False) as rec:
        rec.snapshot(few, epoch=0)
    assert sorted(_layout(rec.path)) == sorted(few)
    got = recordkit.load(rec.path).weights()
    assert all(np.array_equal(got[k], v) for k, v in few.items())


def test_a_version_2_record_resumed_gets_no_packs(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A record an older recordkit wrote (version 2) stays version 2 when resumed, and
    its new tensors get datasets of their own: an older reader would not see a pack."""
    with monkeypatch.context() as patch:
        patch.setattr("recordkit.format.header.FORMAT_VERSION", 2)
        with recordkit.Recorder(tmp_path, experiment="v2", system=False) as rec:
            rec.snapshot(state(0, late=False), epoch=0)
        path = rec.path
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        rec.snapshot(state(1), epoch=1)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["format_version"] == 2
        assert not [k for k in f["weights"] if k.startswith("%")]
        assert len(f["weights"]) == len(state(1))
    record = recordkit.load(path)
    assert record.format_version == 2
    _check_values(record, [0, 1])


def test_a_resume_continues_the_packs(tmp_path: Path) -> None:
    path = _write(tmp_path, range(2))
    before = _layout(path)
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        last = rec.last_snapshot()  # what a resume restores from
        assert set(last) == set(state(1)) and all(_same(last[k], v)
                                                 for k, v in state(1).items())
        for epoch in (2, 3):
            rec.snapshot(state(epoch), epoch=epoch)
            rec.commit()
    assert _layout(path) == before  # the same datasets, grown
    _check_values(recordkit.load(path), [0, 1, 2, 3])
    assert verify(path).ok


def test_rewind_drops_pack_rows_and_writes_them_again(tmp_path: Path) -> None:
    with recordkit.Recorder(tmp_path, experiment="rewind", system=False) as rec:
        for epoch in range(4):
            rec.snapshot(state(epoch), epoch=epoch)
            rec.commit()
        rec.rewind(2)
        assert rec.last_snapshot()["late4"].tolist() == [4, -4, 1]
        rec.snapshot(state(2), epoch=2)
    record = recordkit.load(rec.path)
    _check_values(record, [0, 1, 2])
    with h5py.File(rec.path, "r", locking=False) as f:
        assert f["weights/%pack-1-float32"].shape[0] == 2
        assert f["checksums/%pack-1-float32"].shape[0] == 2
    assert verify(rec.path).ok


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("change", ["missing", "shape", "dtype"])
def test_a_packed_tensor_that_goes_missing_or_changes_is_refused_in_the_call(
        tmp_path: Path, change: str, background: bool) -> None:
    with recordkit.Recorder(tmp_path, experiment="change", system=False,
                            background=background) as rec:
        rec.snapshot(state(0), epoch=0)
        rec.snapshot(state(1), epoch=1)
        bad = state(2)
        if change == "missing":
            del bad["block4.bn.weight"]
        elif change == "shape":
            bad["late3"] = np.zeros(4, np.float32)
        else:
            bad["block2.bn.num_batches_tracked"] = np.array(1, np.int32)
        with pytest.raises(SnapshotError, match="block4.bn.weight|late3|block2.bn.num"):
            rec.snapshot(bad, epoch=2)
        rec.snapshot(state(2), epoch=2)  # the run goes on
    _check_values(recordkit.load(rec.path), [0, 1, 2])


def test_tied_tensors_in_a_pack_keep_their_aliases(tmp_path: Path) -> None:
    def tied(epoch: int) -> dict[str, Any]:
        out = state(epoch, late=False)
        out["decoder.weight"] = out["block1.bn.weight"]  # one array under two names
        out["head/alias"] = out["block1.bn.weight"]
        return out

    with recordkit.Recorder(tmp_path, experiment="tied", system=False) as rec:
        rec.snapshot(tied(0), epoch=0)
    path = rec.path
    with recordkit.Recorder(tmp_path, resume=path, system=False) as rec:
        rec.snapshot(tied(1), epoch=1)  # the tie is read back from the pack's members
        bad = tied(2)
        bad["decoder.weight"] = bad["decoder.weight"].copy()
        with pytest.raises(SnapshotError, match="tied"):
            rec.snapshot(bad, epoch=2)
    with h5py.File(path, "r", locking=False) as f:
        members = json.loads(f["weights/%pack-0-float32"].attrs["members"])
        (tied_member,) = [m for m in members if m[0] == "block1.bn.weight"]
        assert tied_member[3] == ["decoder.weight", "head/alias"]
    record = recordkit.load(path)
    assert record.tensor_aliases == {"decoder.weight": "block1.bn.weight",
                                     "head/alias": "block1.bn.weight"}
    for epoch in (0, 1):
        got = record.weights(epoch)
        assert got["decoder.weight"] is got["block1.bn.weight"] is got["head/alias"]
        assert np.array_equal(got["decoder.weight"], tied(epoch)["block1.bn.weight"])
    assert np.array_equal(record.weight("head/alias")[1], tied(1)["block1.bn.weight"])


def _chunk_of(path: Path, key: str, row: int) -> tuple[int, int]:
    return chunk_at(path, f"weights/{key}", (row, 0))


def test_a_zeroed_pack_chunk_is_damage_naming_the_tensor_and_its_pack(tmp_path: Path
                                                                      ) -> None:
    path = _write(tmp_path, range(3))
    at, size = _chunk_of(path, "%pack-0-float16", 1)
    overwrite(path, at, bytes(size))
    record = recordkit.load(path)
    with pytest.raises(RecordDamagedError, match=r"block3/half.*%pack-0-float16"):
        record.weight("block3/half")[1]
    with pytest.raises(RecordDamagedError, match="%pack-0-float16"):
        record.weights(1)
    _check_values_except(record, "block0/half", epoch=1)
    report = verify(path)
    assert not report.ok
    assert any("%pack-0-float16" in p and "row 1" in p for p in report.problems), (
        report.problems)
    done = _cli_verify(path)
    assert done.returncode == 1 and "%pack-0-float16" in done.stdout, done.stdout


def _check_values_except(record: recordkit.Record, name: str, epoch: int) -> None:
    """Other snapshots of the damaged tensor, and other packs, still read."""
    assert np.array_equal(record.weight(name)[0], state(0)[name])
    assert np.array_equal(record.weight(name)[2], state(2)[name])
    assert np.array_equal(record.weight("block3.bn.weight")[epoch],
                          state(epoch)["block3.bn.weight"])


@pytest.mark.parametrize("damage", ["offsets swapped", "name changed", "kind removed",
                                    "members removed"])
def test_changed_pack_attributes_are_damage(tmp_path: Path, damage: str) -> None:
    path = _write(tmp_path, range(2))
    path.chmod(0o644)
    with h5py.File(path, "r+", locking=False) as f:
        ds = f["weights/%pack-0-float32"]
        members = json.loads(ds.attrs["members"])
        if damage == "offsets swapped":  # same length, other values: a silent misread
            members[0][1], members[1][1] = members[1][1], members[0][1]
            ds.attrs["members"] = json.dumps(members)
        elif damage == "name changed":
            members[2][0] = members[2][0].replace("block2", "block9")
            ds.attrs["members"] = json.dumps(members)
        elif damage == "kind removed":
            del ds.attrs["kind"]
        else:
            del ds.attrs["members"]
    with pytest.raises(RecordDamagedError, match="%pack-0-float32"):
        recordkit.load(path).tensor_names  # noqa: B018
    report = verify(path)
    assert any("%pack-0-float32" in p for p in report.problems), report.problems


def test_plain_h5py_reads_a_packed_tensor_as_format_md_says(tmp_path: Path) -> None:
    path = _write(tmp_path, range(3))
    # docs/FORMAT.md, "Packs": find the member, slice the row, reshape
    import json as json_

    with h5py.File(path, "r") as f:
        found = {}
        for ds in f["weights"].values():
            if ds.attrs.get("kind") != "pack":
                continue
            for name, offset, shape, *_ in json_.loads(ds.attrs["members"]):
                found[name] = (ds, offset, shape)
        ds, offset, shape = found["block5.bn.weight"]
        first = int(ds.attrs["first_snapshot"])
        epochs = f["snapshots"]["epoch"][first:first + ds.shape[0]]
        size = int(np.prod(shape))
        values = ds[:, offset:offset + size].reshape(-1, *shape)
        assert epochs.tolist() == [0, 1, 2]
        for epoch, value in zip(epochs, values):
            assert np.array_equal(value, state(int(epoch))["block5.bn.weight"])
        ds, offset, shape = found["late7"]
        assert int(ds.attrs["first_snapshot"]) == 1
        assert ds[1, offset:offset + 3].tolist() == [7, -7, 2]


def test_load_all_reads_packed_records_the_same_from_its_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
    _write(tmp_path / "runs", range(2))
    for _ in range(2):  # the second load_all finds the first one's cache
        (record,) = recordkit.load_all(tmp_path / "runs")
        _check_values(record, [0, 1])


def test_a_torch_model_with_batchnorm_loads_back_exactly(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    def model() -> Any:
        layers: list[Any] = []
        for i in range(8):
            layers += [torch.nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1),
                       torch.nn.BatchNorm2d(8), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(8 * 16, 3))

    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 3, 4, 4)
    with recordkit.Recorder(tmp_path, experiment="bn", system=False) as rec:
        for epoch in range(2):
            net.train()
            loss = net(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.snapshot(net, epoch=epoch)
            rec.commit()
    state_dict = net.state_dict()
    assert sum(v.numel() * v.element_size() <= 16 * 1024 for v in state_dict.values()) >= N
    assert any(k.startswith("%pack-") for k in _layout(rec.path))
    restored = model()
    weights = recordkit.load(rec.path).weights()
    restored.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    for name, value in restored.state_dict().items():
        assert value.dtype == state_dict[name].dtype, name
        assert torch.equal(value, state_dict[name]), name
    net.eval()
    restored.eval()
    assert torch.equal(restored(x), net(x))
