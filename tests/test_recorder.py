"""The write side, read back value by value: Recorder → file → load."""

from __future__ import annotations

import argparse
import enum
import math
import pathlib
import warnings

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.errors import (
    NotARecordError,
    RecordClosedError,
    RecordkitWarning,
    RecordLockedError,
    RecordNotFoundError,
    RecordWriteError,
    SnapshotError,
)
from tests.support import require


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


def test_old_record_readme_flow(tmp_path: pathlib.Path) -> None:
    """The older Record tool's README: extend(args), extend(dict), add, save → id, get."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--layers", type=int, nargs="+", default=[64, 32])
    args = parser.parse_args(["--lr", "0.5"])
    model_0 = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -0.5])]

    rec = rk.Recorder(tmp_path)
    rec.extend(args)
    rec.extend({"dataset": "mnist", "epochs": 3})
    rec.add("model_0", model_0)
    rec.add("losses", [2.01, 1.53, 1.12])
    run_id = rec.save()

    r = rec.get(run_id)
    assert r.run_id == run_id
    assert r.params == {"lr": 0.5, "layers": [64, 32], "dataset": "mnist", "epochs": 3}
    assert r.extras["losses"] == [2.01, 1.53, 1.12]
    stored = r.extras["model_0"]
    assert len(stored) == 2
    for got, want in zip(stored, model_0):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert r.status == "completed"
    assert r.system["memory"] > 0 and isinstance(r.system["memory"], int)
    assert rk.load(run_id, root=tmp_path).params == r.params


def test_researcher_flow_same_params_gives_two_runs(tmp_path: pathlib.Path) -> None:
    params = {"lr": 0.1, "width": 32, "title": "baseline"}
    first = rk.record_experiment(params, tmp_path, observations={"loss": [1.0, 0.5]})
    second = rk.record_experiment(dict(reversed(list(params.items()))), tmp_path,
                                  observations={"loss": [0.9, 0.4], "accuracy": 0.75})
    assert first != second
    runs = rk.load_all(tmp_path)
    assert [r.run_id for r in runs] == [first, second]  # oldest first
    assert runs[0].params_hash == runs[1].params_hash
    assert runs[0].name == "baseline"
    data = runs[1].data
    assert data["lr"] == 0.1 and data["title"] == "baseline"
    assert data["observations"]["loss"] == [0.9, 0.4]
    assert data["observations"]["accuracy"] == 0.75
    assert runs[1].history["accuracy"].tolist() == [0.75]


def test_record_experiment_fold_form(tmp_path: pathlib.Path) -> None:
    folds = [[1.0, 0.5, 0.25], [3.0, 1.5, 0.75]]
    run_id = rk.record_experiment({"k": 2}, tmp_path, observations={"loss": folds})
    r = rk.load(run_id, root=tmp_path)
    assert r.data["observations"]["loss"] == folds
    assert r.history["loss"].tolist() == [2.0, 1.0, 0.5]  # mean over folds per epoch


ODD_NAMES = ["train/loss", "val.acc", "with space", "ünïcödé ✓", "100%", ".", "..", "a//b",
             "/leading", "trailing/", "%2F", "", "nul\x00inside", "%00"]


def test_odd_names_round_trip(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.log({name: float(i) for i, name in enumerate(ODD_NAMES)}, epoch=0)
        rec.snapshot({name: np.full(2, i, np.int32) for i, name in enumerate(ODD_NAMES)})
        for i, name in enumerate(ODD_NAMES):
            rec.add(name, [float(i)])
    r = rk.load(rec.path)
    assert sorted(r.history) == sorted(ODD_NAMES)
    weights = r.weights()
    assert sorted(weights) == sorted(ODD_NAMES)
    assert sorted(r.extras) == sorted(ODD_NAMES)
    for i, name in enumerate(ODD_NAMES):
        assert r.history[name].tolist() == [float(i)]
        assert weights[name].tolist() == [i, i]
        assert r.extras[name] == [float(i)]


def test_metrics_at_different_rates_keep_their_epochs(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch in range(6):
            rec.log({"loss": 10.0 - epoch}, epoch=epoch)
            if epoch % 3 == 2:
                rec.log({"val_loss": 100.0 + epoch}, epoch=epoch)
            for step in range(2):
                rec.log({"batch_loss": epoch + step / 10}, step=epoch * 2 + step)
            rec.commit()
    r = rk.load(rec.path)
    assert r.history.epochs("loss").tolist() == [0, 1, 2, 3, 4, 5]
    assert r.history.epochs("val_loss").tolist() == [2, 5]
    assert r.history["val_loss"].tolist() == [102.0, 105.0]
    assert r.history.steps("batch_loss").tolist() == list(range(12))
    assert r.history.epochs("batch_loss").tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert r.history.is_epoch_level("loss") and not r.history.is_epoch_level("batch_loss")

    require("pandas", "analysis")
    frame = r.history_frame()
    assert list(frame.index) == [0, 1, 2, 3, 4, 5]
    assert "batch_loss" not in frame.columns  # step-level: many rows per epoch
    assert math.isnan(frame.loc[3, "val_loss"]) and frame.loc[5, "val_loss"] == 105.0
    steps = r.history_frame(level="step")
    assert steps["batch_loss"].tolist() == [e + s / 10 for e in range(6) for s in range(2)]


def test_log_without_epoch_counts_per_metric(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.log({"a": 1.0})
        rec.log({"a": 2.0, "b": 3.0})
    r = rk.load(rec.path)
    assert r.history.epochs("a").tolist() == [0, 1]
    assert r.history.epochs("b").tolist() == [0]


def test_nan_and_inf_are_kept(tmp_path: pathlib.Path) -> None:
    values = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308]
    with rk.Recorder(tmp_path, system=False, params={"x": float("nan"), "y": float("inf")}
                     ) as rec:
        for epoch, value in enumerate(values):
            rec.log({"m": value}, epoch=epoch)
    r = rk.load(rec.path)
    got = r.history["m"]
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf
    assert got[3:].tolist() == [0.0, -0.0, 1e308] and math.copysign(1, got[4]) == -1
    assert math.isnan(r.params["x"]) and r.params["y"] == math.inf


@pytest.mark.parametrize("scalar", [np.float64, np.float32, np.float16, float])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_numpy_nan_and_inf_params_and_extras_round_trip(tmp_path: pathlib.Path, scalar: type,
                                                        text: str) -> None:
    """np.float64 is a float subclass whose numpy 2 repr is 'np.float64(inf)': it must be
    stored as 'inf', or the record does not load."""
    value = scalar(text)
    params = {"clip": value, "nested": {"v": [value, 1.0]}, "t": (value,)}
    with rk.Recorder(tmp_path, system=False, params=params) as rec:
        rec.extend({"late": value})
        rec.add("stats", {"best": value, "n": 3})
        rec.set_info({"lr_max": value})
    r = rk.load(rec.path)
    expected = float(text)
    for got in (r.params["clip"], r.params["nested"]["v"][0], r.params["t"][0],
                r.params["late"], r.extras["stats"]["best"], r.info["lr_max"]):
        assert (math.isnan(got) if math.isnan(expected) else got == expected), got
    if scalar is not float and scalar is not np.float64:
        assert r.params["clip"].dtype == np.dtype(scalar)
    assert not r.unserialisable_params
    with h5py.File(rec.path, "r") as f:
        assert "np.float" not in f["params"][()].decode()
    assert r.params_hash == rk.load(rec.path).params_hash


def test_params_written_with_numpy_float_repr_still_load(tmp_path: pathlib.Path) -> None:
    """Files written before the fix hold 'np.float64(inf)'; they load."""
    from recordkit import codec
    from recordkit.format import header

    with rk.Recorder(tmp_path, system=False, params={"clip": 1.0}) as rec:
        pass
    old = '{"clip": {"$type": "float", "value": "np.float64(-inf)"}}'
    rec.path.chmod(0o644)
    with h5py.File(rec.path, "r+") as f:
        del f["params"]
        f.create_dataset("params", data=old, dtype=h5py.string_dtype("utf-8"))
        f["params"].attrs["unserialisable"] = "[]"
        f.attrs["params_hash"] = codec.params_hash(old)
        del f.attrs["summary"]
        header.sign_header(f)  # a v2 header edited by hand is signed again
    assert rk.load(rec.path).params == {"clip": -math.inf}


def test_non_numeric_metric_is_skipped_with_a_warning(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec, pytest.warns(RecordkitWarning,
                                                                  match="'note'"):
        rec.log({"note": "hello", "loss": np.float32(0.5), "t": np.array([2.0])}, epoch=0)
    r = rk.load(rec.path)
    assert sorted(r.history) == ["loss", "t"]
    assert r.history["loss"].tolist() == [0.5] and r.history["t"].tolist() == [2.0]


@pytest.mark.parametrize("background", [True, False])
def test_zero_size_tensors_round_trip(tmp_path: pathlib.Path, background: bool) -> None:
    """A (0, 3) tensor once raised "Chunk shape must not be greater than data shape" and
    lost the whole snapshot."""
    from recordkit.verify import verify

    shapes = {"empty": (0, 3), "none": (0,), "mid": (4, 0, 2)}
    with rk.Recorder(tmp_path, system=False, background=background) as rec:
        for epoch in range(2):
            rec.snapshot({**{n: np.zeros(s, np.float32) for n, s in shapes.items()},
                          "w": np.full((2, 2), epoch, np.float64)}, epoch=epoch)
            rec.commit()
        rec.add("nothing", np.zeros((0, 3), np.int16))
    r = rk.load(rec.path)
    assert r.snapshot_epochs == [0, 1]
    for epoch in range(2):
        weights = r.weights(epoch)
        assert weights["w"].tolist() == [[epoch, epoch]] * 2
        for name, shape in shapes.items():
            assert weights[name].shape == shape and weights[name].dtype == np.float32
    assert r.weight("empty")[:].shape == (2, 0, 3)
    assert r.extras["nothing"].shape == (0, 3) and r.extras["nothing"].dtype == np.int16
    report = verify(rec.path, isolate=False)
    assert report.ok, report


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "uint8", "int64",
                                   "bool", "complex64"])
def test_weight_dtypes_are_kept(tmp_path: pathlib.Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    arrays = [(rng.standard_normal((3, 5)) * 10).astype(dtype) for _ in range(3)]
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch, array in enumerate(arrays):
            rec.snapshot({"w": array}, epoch=epoch)
    r = rk.load(rec.path)
    history = r.weight("w")
    assert len(history) == 3 and history.epochs.tolist() == [0, 1, 2]
    for i, array in enumerate(arrays):
        got = history[i]
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(history[1:], np.stack(arrays[1:]))


def test_bfloat16_weights_are_exact(tmp_path: pathlib.Path) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([1.0, -2.5, 3.140625, 1e-3, float("inf"), 65280.0], dtype=np.float32)
    bf16 = values.astype(ml_dtypes.bfloat16)
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": bf16}, epoch=0)
    r = rk.load(rec.path)
    got = r.weights()["w"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.view(np.uint16), bf16.view(np.uint16))
    with h5py.File(rec.path, "r") as f:  # the documented representation
        ds = f["weights/w"]
        assert ds.dtype == np.uint16 and ds.attrs["dtype"] == "bfloat16"
        as_f32 = (ds[0].astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(as_f32, bf16.astype(np.float32))


def test_bfloat16_bits_without_ml_dtypes(tmp_path: pathlib.Path) -> None:
    from recordkit.dtypes import BFloat16Bits, decode_tensor

    bits = np.array([0x3F80, 0xC020, 0x0000], dtype=np.uint16)  # 1.0, -2.5, 0.0
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": BFloat16Bits.of(bits)}, epoch=0)
    with h5py.File(rec.path, "r") as f:
        stored = f["weights/w"][0]
        assert f["weights/w"].attrs["dtype"] == "bfloat16"
    np.testing.assert_array_equal(stored, bits)
    np.testing.assert_array_equal(decode_tensor(stored, "bfloat16").astype(np.float32),
                                  [1.0, -2.5, 0.0])


def test_params_are_stored_faithfully(tmp_path: pathlib.Path) -> None:
    params = {
        "path": pathlib.Path("/data/set"),
        "np_float": np.float32(0.25),
        "np_int": np.int64(7),
        "array": np.arange(4, dtype=np.int16).reshape(2, 2),
        "colour": Colour.BLUE,
        "shape": (28, 28),
        "nested": {"opt": {"name": "adam", "betas": (0.9, 0.999)}, "layers": [1, [2, 3]]},
        "flag": True,
        "nothing": None,
        "keys": {1: "one", 2: "two"},
    }
    with rk.Recorder(tmp_path, params=params, system=False) as rec:
        pass
    got = rk.load(rec.path).params
    assert got["path"] == pathlib.Path("/data/set")
    assert got["np_float"] == np.float32(0.25) and got["np_float"].dtype == np.float32
    assert got["np_int"] == 7 and got["np_int"].dtype == np.int64
    np.testing.assert_array_equal(got["array"], params["array"])
    assert got["array"].dtype == np.int16
    assert got["colour"] == "Colour.BLUE"
    assert got["shape"] == (28, 28)
    assert got["nested"] == {"opt": {"name": "adam", "betas": (0.9, 0.999)},
                             "layers": [1, [2, 3]]}
    assert got["flag"] is True and got["nothing"] is None
    assert got["keys"] == {1: "one", 2: "two"}


def test_params_hash_ignores_key_order(tmp_path: pathlib.Path) -> None:
    a = rk.Recorder(tmp_path, params={"lr": 0.1, "opt": {"a": 1, "b": 2}}, system=False)
    b = rk.Recorder(tmp_path, params={"opt": {"b": 2, "a": 1}, "lr": 0.1}, system=False)
    c = rk.Recorder(tmp_path, params={"opt": {"b": 2, "a": 1}, "lr": 0.2}, system=False)
    ids = [rec.save() for rec in (a, b, c)]
    hashes = [rk.load(i, root=tmp_path).params_hash for i in ids]
    assert hashes[0] == hashes[1] != hashes[2]


def test_unserialisable_param_warns_and_is_flagged(tmp_path: pathlib.Path) -> None:
    class Net:
        pass

    with pytest.warns(RecordkitWarning, match=r"'model\.net'"):
        rec = rk.Recorder(tmp_path, params={"model": {"net": Net()}, "act": max}, system=False)
    rec.log({"loss": 1.0}, epoch=0)
    run_id = rec.save()
    r = rk.load(run_id, root=tmp_path)
    assert sorted(r.unserialisable_params) == ["act", "model.net"]
    assert r.params["model"]["net"].startswith("<") and "Net" in r.params["model"]["net"]
    assert "0x" not in r.params["model"]["net"]  # addresses removed: stable hash
    assert r.params["act"] == "<built-in function max>"


def test_unserialisable_param_warns_once(tmp_path: pathlib.Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = rk.Recorder(tmp_path, params={"f": lambda: 0}, system=False)
        rec.extend({"g": 1})
        rec.extend({"h": 2})
    assert len([w for w in caught if issubclass(w.category, RecordkitWarning)]) == 1
    rec.close()


@pytest.mark.parametrize("mask_secrets", [True, False])
def test_params_holding_themselves_or_odd_names_never_stop_training(
        tmp_path: pathlib.Path, mask_secrets: bool) -> None:
    """A dict holding itself raised RecursionError and a non-str name TypeError."""
    looped: dict = {"a": 1}
    looped["self"] = looped
    chain: list = [1]
    chain.append(chain)
    params = {"opt": looped, "chain": chain, 1: "one", "1": "uno", "api_key": "k"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = rk.Recorder(tmp_path, params=params, system=False, mask_secrets=mask_secrets)
        rec.extend({(2, 3): "pair"})
    caught = [w for w in caught if issubclass(w.category, RecordkitWarning)]
    messages = [str(w.message) for w in caught]
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]
    for key in ("'opt.self'", "'chain[1]'", "'1 (int)'", "'(2, 3)'"):
        assert any(key in m and str(rec.path) in m for m in messages), (key, messages)
    rec.save()
    r = rk.load(rec.path)
    assert r.params["opt"]["a"] == 1 and r.params["opt"]["self"] == "{'a': 1, 'self': {...}}"
    assert r.params["chain"] == [1, "[1, [...]]"]
    assert r.params["1"] == "uno" and r.params["1 (int)"] == "one"
    assert r.params["(2, 3)"] == "pair"
    assert r.params["api_key"] == ("***" if mask_secrets else "k")
    assert sorted(r.unserialisable_params) == ["(2, 3)", "1 (int)", "chain[1]", "opt.self"]


def test_params_nested_too_deep_are_stored_as_repr(tmp_path: pathlib.Path) -> None:
    deep: list = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    with pytest.warns(RecordkitWarning, match="'deep'"):
        rec = rk.Recorder(tmp_path, params={"deep": deep, "lr": 0.1}, system=False)
    rec.save()
    r = rk.load(rec.path)
    assert r.params["lr"] == 0.1 and isinstance(r.params["deep"], str)
    assert r.unserialisable_params == ["deep"]


def test_resume_keeps_the_flags_of_the_file(tmp_path: pathlib.Path) -> None:
    with pytest.warns(RecordkitWarning):
        rec = rk.Recorder(tmp_path, params={"f": max, 7: "x"}, system=False)
    rec.close("running")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already warned about when first stored
        again = rk.Recorder(tmp_path, resume=rec.run_id, params={"lr": 0.1}, system=False)
    again.save()
    assert sorted(rk.load(rec.path).unserialisable_params) == ["7", "f"]


def test_add_warns_and_flags_what_it_cannot_store_faithfully(tmp_path: pathlib.Path) -> None:
    """A dict mixing a big array with scalars, or any object, was stored as its repr
    (cut off) without a word."""
    class Thing:
        pass

    big = np.arange(200_000, dtype=np.float64)
    with rk.Recorder(tmp_path, system=False) as rec:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec.add("mixed", {"weights": big, "n": 3})
            rec.add("thing", Thing())
        assert all(issubclass(w.category, RecordkitWarning) for w in caught)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rec.add("fine", {"n": 3, "xs": [1.5, float("nan")]})
            rec.add("arrays", {"w": big, "b": np.ones(3)})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all(str(rec.path) in m for m in messages)
    assert "'mixed'" in messages[0] and "'mixed.weights'" in messages[0]
    assert "'thing'" in messages[1]
    r = rk.load(rec.path)
    assert r.unserialisable_extras == {"mixed": ["mixed.weights"], "thing": ["thing"]}
    assert r.extras["mixed"]["n"] == 3 and isinstance(r.extras["mixed"]["weights"], str)
    assert "Thing" in r.extras["thing"]
    np.testing.assert_array_equal(r.extras["arrays"]["w"], big)
    assert r.extras["fine"]["n"] == 3 and math.isnan(r.extras["fine"]["xs"][1])


@pytest.mark.parametrize("value", [np.linspace(0, 1, 7), np.arange(12).reshape(3, 4),
                                   np.float32(2.5), [0.5, 1.5], np.zeros((0, 2))],
                         ids=["1d", "2d", "0d", "list", "empty"])
def test_extras_are_checksummed(tmp_path: pathlib.Path, value: object) -> None:
    """Array extras carry fletcher32 (a 0-d one a sha256 attribute): damage is an error."""
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.add("x", value)
    with h5py.File(rec.path, "r") as f:
        ds = f["extras/x"]
        if ds.ndim and ds.size:
            assert ds.fletcher32 and ds.chunks is not None
        elif ds.size:
            assert "sha256" in ds.attrs
    got = rk.load(rec.path).extras["x"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(value))


def test_failed_and_interrupted_status(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ZeroDivisionError), rk.Recorder(tmp_path, system=False) as failing:
        failing.log({"loss": 1.0}, epoch=0)
        failing.commit()
        1 / 0  # noqa: B018
    r = rk.load(failing.path)
    assert r.status == "failed" and r.error.startswith("ZeroDivisionError")
    assert r.history["loss"].tolist() == [1.0]
    assert r.ended is not None

    with pytest.raises(KeyboardInterrupt), rk.Recorder(tmp_path, system=False) as stopped:
        raise KeyboardInterrupt
    assert rk.load(stopped.path).status == "interrupted"


def test_writes_are_refused_after_save(tmp_path: pathlib.Path) -> None:
    rec = rk.Recorder(tmp_path, system=False)
    rec.save()
    for call in (lambda: rec.log({"a": 1.0}), lambda: rec.snapshot({"w": np.zeros(1)}),
                 lambda: rec.add("k", 1), lambda: rec.extend({"a": 1}), rec.commit, rec.save):
        with pytest.raises(RecordClosedError, match=rec.run_id):
            call()
    rec.close()  # a second close is a no-op
    assert not (rec.path.stat().st_mode & 0o222)  # read-only on disk too


def test_open_run_reads_as_running_then_interrupted(tmp_path: pathlib.Path) -> None:
    rec = rk.Recorder(tmp_path, system=False)
    rec.log({"loss": 1.0}, epoch=0)
    rec.commit()
    live = rk.load(rec.path)
    assert live.status == "running" and live.history["loss"].tolist() == [1.0]
    rec.close("running")  # as a killed process leaves it: no live writer
    assert rk.load(rec.path).status == "interrupted"
    assert rk.load(rec.path).stored_status == "running"


def test_same_run_cannot_be_opened_twice_for_writing(tmp_path: pathlib.Path) -> None:
    rec = rk.Recorder(tmp_path, system=False)
    with pytest.raises(RecordLockedError, match=rec.run_id):
        rk.Recorder(tmp_path, resume=rec.path)
    rec.close("running")
    again = rk.Recorder(tmp_path, resume=rec.run_id)  # lock released
    again.close()


def test_resume_and_rewind(tmp_path: pathlib.Path) -> None:
    rec = rk.Recorder(tmp_path, params={"lr": 0.1}, system=False)
    for epoch in range(4):
        rec.log({"loss": float(epoch)}, epoch=epoch)
        rec.snapshot({"w": np.full(2, epoch)}, epoch=epoch)
        rec.commit()
    rec.close("running")  # crashed after epoch 3; the checkpoint was at epoch 1

    resumed = rk.Recorder(tmp_path, resume=rec.run_id, params={"extra": 1})
    resumed.rewind(2)
    for epoch in range(2, 5):
        resumed.log({"loss": 10.0 + epoch}, epoch=epoch)
        resumed.snapshot({"w": np.full(2, 10 + epoch)}, epoch=epoch)
        resumed.commit()
    resumed.save()

    r = rk.load(rec.path)
    assert r.history.epochs("loss").tolist() == [0, 1, 2, 3, 4]
    assert r.history["loss"].tolist() == [0.0, 1.0, 12.0, 13.0, 14.0]
    assert r.snapshot_epochs == [0, 1, 2, 3, 4]
    assert [int(r.weight("w")[i][0]) for i in range(5)] == [0, 1, 12, 13, 14]
    assert r.params == {"lr": 0.1, "extra": 1}
    assert len(r.restarts) == 1 and r.restarts[0]["last_epoch"] == 3
    assert r.status == "completed"


def test_snapshot_of_same_epoch_replaces(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": np.zeros(2)}, epoch=0)
        rec.snapshot({"w": np.ones(2)}, epoch=0)
    r = rk.load(rec.path)
    assert r.snapshot_epochs == [0]
    assert r.weights(0)["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("background", [True, False])
def test_snapshots_inside_one_epoch_at_distinct_steps_are_each_kept(
        tmp_path: pathlib.Path, background: bool) -> None:
    """A snapshot of the last snapshot's epoch adds a row when both steps are known and
    differ (one per validation inside an epoch) and replaces it otherwise."""
    with rk.Recorder(tmp_path, system=False, background=background) as rec:
        rec.snapshot({"w": np.full(2, 1.0)}, epoch=0, step=2)
        rec.snapshot({"w": np.full(2, 2.0)}, epoch=0, step=4)
        rec.snapshot({"w": np.full(2, 3.0)}, epoch=0, step=4)  # the same step: replaces
        with pytest.raises(SnapshotError, match="'w'.*missing"):
            rec.snapshot({"v": np.zeros(1)}, epoch=0, step=5)  # a new row needs every tensor
        rec.snapshot({"w": np.full(2, 4.0)}, epoch=1, step=6)
        rec.snapshot({"w": np.full(2, 5.0)}, epoch=1)  # no step: replaces
    r = rk.load(rec.path)
    assert r.snapshot_epochs == [0, 0, 1]
    assert r.snapshot_steps == [2, 4, -1]
    assert [r.weight("w")[i].tolist() for i in range(3)] == [[1.0, 1.0], [3.0, 3.0],
                                                               [5.0, 5.0]]
    assert r.weights(0)["w"].tolist() == [3.0, 3.0]  # the epoch's last snapshot
    assert r.weight("w").at(0).tolist() == [3.0, 3.0]


class _ClosesWhenCollected:
    """What a framework callback is to its recorder: it holds it in a reference cycle and
    closes it, as failed, from ``__del__`` (Keras' RecordCallback collected after a
    crashed fit)."""

    def __init__(self, rec: rk.Recorder) -> None:
        self.rec, self.cycle = rec, self

    def __del__(self) -> None:
        self.rec.close("failed", error=RuntimeError("boom"))


def test_a_recorder_collected_in_a_cycle_writes_what_it_queued(tmp_path: pathlib.Path) -> None:
    """A garbage-collected cycle loses its weak references before its finalizers run: the
    snapshots still queued behind a large one are written all the same, and the error
    stored is the crash's alone."""
    import gc

    rec = rk.Recorder(tmp_path, system=False, background=True)
    path = rec.path
    big = np.arange(16 << 20, dtype=np.float32)  # 64 MiB: the writer is busy with it
    rec.snapshot({"w": big, "b": np.zeros(3)}, epoch=0)
    rec.snapshot({"w": big + 1, "b": np.ones(3)}, epoch=1)  # queued behind it
    holder = _ClosesWhenCollected(rec)
    del rec, holder
    gc.collect()
    r = rk.load(path)
    assert r.stored_status == "failed"
    assert r.error == "RuntimeError: boom"
    assert r.snapshot_epochs == [0, 1]
    assert r.weights(1)["b"].tolist() == [1.0, 1.0, 1.0]
    assert np.array_equal(r.weight("w").at(1), big + 1)


class _ClosesFromFinalizer(_ClosesWhenCollected):
    def __del__(self) -> None:
        self.rec.close_from_finalizer("failed", error=RuntimeError("boom"))


def test_a_recorder_collected_inside_an_h5py_call_closes_on_a_thread(
        tmp_path: pathlib.Path) -> None:
    """A collection that runs while this thread holds h5py's library lock (inside any h5py
    call) must not close there: closing waits for the writer, which needs that lock. The
    close runs on a thread of its own once the lock is free, every snapshot written."""
    import gc
    import threading

    from h5py._objects import phil

    rec = rk.Recorder(tmp_path, system=False, background=True)
    path = rec.path
    big = np.arange(16 << 20, dtype=np.float32)
    rec.snapshot({"w": big}, epoch=0)
    rec.snapshot({"w": big + 1}, epoch=1)  # queued: the writer needs the lock for it
    holder = _ClosesFromFinalizer(rec)
    del rec, holder
    with phil:
        gc.collect()
    closers = [t for t in threading.enumerate() if t.name.startswith("recordkit-close-")]
    for closer in closers:
        closer.join(120)
    assert closers and not any(t.is_alive() for t in closers)
    r = rk.load(path)
    assert r.stored_status == "failed"
    assert r.error == "RuntimeError: boom"
    assert r.snapshot_epochs == [0, 1]
    assert np.array_equal(r.weight("w").at(1), big + 1)


def test_wait_for_snapshots_makes_every_queued_snapshot_readable(tmp_path: pathlib.Path
                                                                 ) -> None:
    """What a callback calls while an exception leaves training: a reader then sees every
    snapshot taken, though the run stays open and nothing was committed after them."""
    rec = rk.Recorder(tmp_path, system=False, background=True)
    big = np.arange(16 << 20, dtype=np.float32)  # 64 MiB: still being written below
    rec.log({"loss": 1.0}, epoch=0)
    rec.commit(wait=False)
    rec.snapshot({"w": big}, epoch=0)
    rec.snapshot({"w": big + 1}, epoch=1)
    rec.wait_for_snapshots()
    seen = rk.load(rec.path)
    assert seen.status == "running"
    assert seen.snapshot_epochs == [0, 1]
    assert np.array_equal(seen.weight("w").at(1), big + 1)
    rec.close()
    rec.wait_for_snapshots()  # closed: nothing to wait for
    assert rk.load(rec.path).snapshot_epochs == [0, 1]


def test_snapshot_shape_change_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"fc.weight": np.zeros((2, 3))}, epoch=0)
        with pytest.raises(SnapshotError, match=r"'fc\.weight'.*\[2, 3\]"):
            rec.snapshot({"fc.weight": np.zeros((3, 3))}, epoch=1)
        with pytest.raises(SnapshotError, match="missing"):
            rec.snapshot({"other": np.zeros(1)}, epoch=1)


def test_weights_by_epoch_and_lazy_tensor(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch in (0, 2, 4):
            rec.snapshot({"a": np.full((2, 2), epoch, np.float32), "b": np.arange(3) + epoch},
                         epoch=epoch)
    with rk.load(rec.path) as r:
        assert r.snapshot_epochs == [0, 2, 4]
        assert r.weights(2)["a"].tolist() == [[2, 2], [2, 2]]
        assert r.weights()["b"].tolist() == [4, 5, 6]
        assert r.weight("a").at(4)[0, 0] == 4 and r.weight("b")[-1].tolist() == [4, 5, 6]
        with pytest.raises(KeyError, match="snapshot epochs"):
            r.weights(3)
        with pytest.raises(KeyError, match="'a'"):
            r.weight("missing")
        with pytest.raises(IndexError):
            r.weight("a")[3]


def test_one_chunk_per_tensor_snapshot_and_large_tensors_split(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False, chunk_bytes=64 * 1024) as rec:
        rec.snapshot({"small": np.zeros((8, 8), np.float32),
                      "large": np.zeros((512, 256), np.float32)}, epoch=0)
        rec.snapshot({"small": np.ones((8, 8), np.float32),
                      "large": np.ones((512, 256), np.float32)}, epoch=1)
    with h5py.File(rec.path, "r") as f:
        assert f["weights/small"].chunks == (1, 8, 8)
        assert f["weights/large"].chunks == (1, 64, 256)  # 64 KiB
        assert f["weights/large"].maxshape == (None, 512, 256)
        assert not f["weights/large"].fletcher32  # format v2: a CRC32C per chunk instead
        assert f["checksums/large"].shape == (2, 8)  # 8 chunks of 64 rows per snapshot
        assert f["checksums/small"].shape == (2, 1)


def test_root_attributes_and_plain_h5py_layout(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, experiment="mnist", name="adam", params={"lr": 0.1}) as rec:
        rec.log({"train/loss": 0.5}, epoch=0, step=10)
        rec.snapshot({"fc.weight": np.eye(2)}, epoch=0)
    with h5py.File(rec.path, "r") as f:
        assert f.attrs["format"] == "recordkit" and f.attrs["format_version"] == 3
        assert f.attrs["run_id"] == rec.run_id and f.attrs["experiment"] == "mnist"
        assert f.attrs["status"] == "completed"
        names = [n.decode() for n in f["history/metrics"][()]]
        assert names == ["train/loss"]
        row = f["history/rows"][0]
        assert (row["metric"], row["epoch"], row["step"], row["value"]) == (0, 0, 10, 0.5)
        assert f["snapshots"]["epoch"].tolist() == [0]
        np.testing.assert_array_equal(f["weights/fc.weight"][0], np.eye(2))
        import json

        assert json.loads(f["params"][()].decode()) == {"lr": 0.1}
        assert json.loads(f["system"][()].decode())["memory"] > 0
    assert rec.path == tmp_path / "mnist" / f"{rec.run_id}.h5"


def test_run_ids_are_unique_and_sort_by_creation(tmp_path: pathlib.Path) -> None:
    ids = [rk.Recorder(tmp_path, system=False).save() for _ in range(20)]
    assert len(set(ids)) == 20 and ids == sorted(ids)


def test_not_a_record(tmp_path: pathlib.Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(NotARecordError, match="notes.h5"):
        rk.load(text)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(NotARecordError, match="plain.h5"):
        rk.load(plain)
    with pytest.raises(RecordNotFoundError, match="nope"):
        rk.load("nope", root=tmp_path)
    with pytest.raises(rk.RecordkitError):
        rk.load(tmp_path / "missing.h5")


def test_load_all_skips_bad_files_with_a_warning(tmp_path: pathlib.Path) -> None:
    good = rk.record_experiment({"a": 1}, tmp_path, experiment="e")
    (tmp_path / "e" / "junk.h5").write_bytes(b"not hdf5")
    with pytest.warns(RecordkitWarning, match="junk.h5"):
        rs = rk.load_all(tmp_path, experiment="e")
    assert [r.run_id for r in rs] == [good]
    assert rs.skipped[0][0].name == "junk.h5"
    with pytest.raises(RecordNotFoundError, match="experiments"):
        rk.load_all(tmp_path, experiment="missing")


def test_argument_checks_name_what_was_received(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="compression='zip'"):
        rk.Recorder(tmp_path, compression="zip")
    with pytest.raises(ValueError, match="experiment='a/b'"):
        rk.Recorder(tmp_path, experiment="a/b")
    with pytest.raises(TypeError, match="list"):
        rk.Recorder(tmp_path, params=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status='done'"):
        rk.Recorder(tmp_path, system=False).close("done")


def test_repr_says_where_and_state(tmp_path: pathlib.Path) -> None:
    rec = rk.Recorder(tmp_path, name="x", system=False)
    assert "open" in repr(rec) and str(rec.path) in repr(rec)
    rec.save()
    assert "closed" in repr(rec) and "completed" in repr(rec)


def test_secret_looking_params_are_masked(tmp_path: pathlib.Path) -> None:
    with pytest.warns(RecordkitWarning, match="'api_key' looks like a secret"):
        rec = rk.Recorder(tmp_path, system=False,
                          params={"api_key": "s3cr3t-1", "key_dim": 64,
                                  "db": {"password": "s3cr3t-2", "host": "h"}})
    run_id = rec.save()
    assert rk.load(run_id, root=tmp_path).params == {
        "api_key": "***", "key_dim": 64, "db": {"password": "***", "host": "h"}}
    assert b"s3cr3t" not in rec.path.read_bytes()
    kept = rk.Recorder(tmp_path, system=False, params={"token": "t"}, mask_secrets=False)
    assert rk.load(kept.save(), root=tmp_path).params == {"token": "t"}


def _warns_here(call: object, match: str) -> None:
    """*call* warns (RecordkitWarning matching *match*) at a line of this file: the
    user's call, not a frame inside recordkit or pytest."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()  # type: ignore[operator]
    hits = [w for w in caught if issubclass(w.category, RecordkitWarning)
            and match in str(w.message)]
    assert hits, [str(w.message) for w in caught]
    line = call.__code__.co_firstlineno  # type: ignore[attr-defined]
    assert {(w.filename, w.lineno) for w in hits} == {(__file__, line)}, [
        (w.filename, w.lineno) for w in hits]


@pytest.mark.parametrize("background", [True, False])
def test_warnings_point_at_the_users_call(tmp_path: pathlib.Path, background: bool) -> None:
    rec = rk.Recorder(tmp_path, system=False, size_warning_bytes=100, background=background)
    rec.plan(epochs=10)
    _warns_here(lambda: rec.snapshot({"w": np.zeros(100)}, epoch=0), "will hold about")
    _warns_here(lambda: rec.log({"loss": "high"}, epoch=0), "is not a number")
    _warns_here(lambda: rec.extend({"act": max}), "cannot be stored faithfully")
    _warns_here(lambda: rec.extend({"api_key": "k"}), "looks like a secret")
    _warns_here(lambda: rec.add("model", {"f": max}), "cannot be stored faithfully")
    rec.close("running")
    _warns_here(lambda: rk.Recorder(tmp_path, system=False, params={"pool": print}),
                "cannot be stored faithfully")
    _warns_here(lambda: rk.Recorder(tmp_path, resume=rec.path, params={"token": "t"}),
                "looks like a secret")


def test_record_experiment_logs_observations_as_given(tmp_path: pathlib.Path) -> None:
    """What is not a number is skipped by log() with a warning, the rest keeps its epoch;
    the observations extra keeps everything as given."""
    observations = {"acc": [0.5, "n/a", 0.3], "flag": True, "loss": [1.0, None]}
    with pytest.warns(RecordkitWarning, match="is not a number"):
        run_id = rk.record_experiment({"k": 1}, tmp_path, observations=observations)
    record = rk.load(run_id, root=tmp_path)
    assert record.history.epochs("acc").tolist() == [0, 2]
    assert record.history["acc"].tolist() == [0.5, 0.3]
    assert record.history["flag"].tolist() == [1.0]
    assert record.history["loss"].tolist() == [1.0]
    assert record.data["observations"] == observations


def test_resume_reads_only_what_it_continues_and_a_failed_one_releases_the_run(
        tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False, params={"lr": 0.1}) as rec:
        rec.log({"loss": 1.0}, epoch=0)
    rec.path.chmod(0o644)
    with h5py.File(rec.path, "r+") as f:  # damage resume has no use for
        del f["system"]
        f.create_dataset("system", data="not json {", dtype=h5py.string_dtype("utf-8"))
    with rk.Recorder(tmp_path, resume=rec.path) as resumed:
        resumed.log({"loss": 0.5}, epoch=1)
    assert h5py.File(rec.path, "r")["history"]["rows"].shape == (2,)
    rec.path.chmod(0o644)
    with h5py.File(rec.path, "r+") as f:  # damage it needs: the params document
        del f["params"]
        f.create_dataset("params", data="{not json", dtype=h5py.string_dtype("utf-8"))
    for _ in range(2):  # the first failure released the file: the second fails the same way
        with pytest.raises(RecordWriteError, match="reopen the run"):
            rk.Recorder(tmp_path, resume=rec.path)


def test_a_vector_metric_logged_per_element_reads_back_whole(tmp_path: pathlib.Path) -> None:
    """Elements ``m[i,j]`` (as the Keras callback stores a vector metric) read back as one
    array of (rows, *shape); an incomplete set of elements is not guessed at."""
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch in range(3):
            rec.log({f"m[{i},{j}]": 10.0 * epoch + 2 * i + j
                     for i in range(2) for j in range(2)}, epoch=epoch)
            rec.log({"gap[0]": 1.0, "gap[2]": 2.0}, epoch=epoch)
    history = rk.load(rec.path).history
    expected = np.array([[[10.0 * e + 2 * i + j for j in range(2)] for i in range(2)]
                         for e in range(3)])
    np.testing.assert_array_equal(history["m"], expected)
    assert history.epochs("m").tolist() == [0, 1, 2] and "m" in history
    assert "m" not in list(history)  # the stored names stay the elements
    with pytest.raises(KeyError, match="no metric 'gap'"):
        history["gap"]


def test_a_reopening_for_an_evaluation_is_not_a_restart(tmp_path: pathlib.Path) -> None:
    rec = rk.Recorder(tmp_path, "e", params={"lr": 0.1})
    rec.log({"loss": 1.0}, epoch=0)
    path = rec.path
    rec.save()
    again = rk.Recorder(tmp_path, resume=path)  # a restart: training goes on
    again.log({"loss": 0.5}, epoch=1)
    again.save()
    evaluated = rk.Recorder(tmp_path, resume=path, evaluation="validate")
    evaluated.add("validate", {"val_loss": 0.4})
    evaluated.close("completed")
    r = rk.load(path)
    assert [e["last_epoch"] for e in r.restarts] == [0]
    assert [(e["evaluation"], e["last_epoch"], e["previous_status"]) for e in r.evaluations] \
        == [("validate", 1, "completed")]
    assert r.history["loss"].tolist() == [1.0, 0.5]
    with pytest.raises(TypeError, match="pass resume="):
        rk.Recorder(tmp_path, evaluation="validate")
