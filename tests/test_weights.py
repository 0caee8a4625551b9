"""recordkit.weights on real records: distances, norms and spectra against numpy on the
fully loaded arrays, the trajectory against sklearn's PCA, interpolation and restore of
plain state dicts; the framework restores are in test_weights_lightning/_keras."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

import recordkit as rk
from recordkit import weights
from recordkit.weights import WeightsError
from tests.support import require

EPOCHS = [0, 1, 2, 4, 6]  # epochs 3 and 5 without a snapshot


def _state(rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {"conv.weight": rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * scale,
            "conv.bias": rng.normal(size=6).astype(np.float32) * scale,
            "fc.weight": rng.normal(size=(5, 12)).astype(np.float32) * scale,
            "fc.bias": rng.normal(size=5).astype(np.float32) * scale,
            "dense/kernel": rng.normal(size=(2, 2, 4, 7)).astype(np.float64) * scale,
            "steps": np.array(scale * 10, dtype=np.int64)}


@pytest.fixture
def run(tmp_path):
    """A record of five snapshots that drift away from the first, and the arrays."""
    rng = np.random.default_rng(0)
    start = _state(rng, 1.0)
    snapshots = {}
    with rk.Recorder(tmp_path, system=False) as rec:
        for i, epoch in enumerate(EPOCHS):
            state = {k: (v + v.dtype.type(0.3 * i) * _state(rng, 1.0)[k].astype(v.dtype)
                         if v.dtype.kind == "f" else np.array(i + 1, dtype=np.int64))
                     for k, v in start.items()}
            snapshots[epoch] = state
            rec.log({"loss": 1.0 / (i + 1)}, epoch=epoch)
            rec.snapshot(state, epoch=epoch)
    return rk.load(rec.path), snapshots


def _vector(state: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([state[n].astype(np.float64).ravel() for n in names])


def _expected(metric: str, a: np.ndarray, b: np.ndarray) -> float:
    if metric == "l2":
        return float(np.linalg.norm(b - a))
    if metric == "relative":
        return float(np.linalg.norm(b - a) / np.linalg.norm(a))
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


GROUPS = {"tensor": {n: [n] for n in _state(np.random.default_rng(1), 1.0)},
          "layer": {"conv": ["conv.weight", "conv.bias"], "fc": ["fc.weight", "fc.bias"],
                    "dense": ["dense/kernel"], "steps": ["steps"]},
          "model": {"model": list(_state(np.random.default_rng(1), 1.0))}}


@pytest.mark.parametrize("metric", ["l2", "cosine", "relative"])
@pytest.mark.parametrize("per", ["tensor", "layer", "model"])
def test_distance_from_init_and_previous_equals_numpy(run, per, metric):
    require("pandas", "analysis")
    record, snapshots = run
    for reference in ("init", "previous"):
        frame = weights.distance(record, reference, per=per, metric=metric)
        pairs = (list(zip([0] * 5, EPOCHS)) if reference == "init"
                 else list(itertools.pairwise(EPOCHS)))
        assert frame.index.tolist() == [b for _, b in pairs]
        assert frame.attrs["reference"] == reference
        assert sorted(frame.columns) == sorted(GROUPS[per])
        for group, names in GROUPS[per].items():
            expected = [_expected(metric, _vector(snapshots[a], names),
                                  _vector(snapshots[b], names)) for a, b in pairs]
            assert frame[group].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-9,
                                                          nan_ok=True), (group, reference)


@pytest.mark.parametrize("split", [False, True], ids=["one thread", "two threads"])
def test_distance_of_large_tensors_summed_as_read_equals_numpy(tmp_path, monkeypatch,
                                                               split):
    """Rows from init are summed piece by piece as they are read and checked (never held
    whole; from 2 MiB on two threads, a chunk cut between them): the values of numpy on
    the loaded arrays, for rows of several chunks with a padded edge chunk, float32 and
    float64, and bfloat16 (read whole: not summed as read); a damaged chunk is refused,
    not summed."""
    require("pandas", "analysis")
    from recordkit.errors import RecordDamagedError
    from recordkit.format import chunkread
    from tests.support import chunk_at, overwrite

    ml_dtypes = pytest.importorskip("ml_dtypes")
    monkeypatch.setattr(chunkread, "MIN_SPLIT_FOLD_BYTES", 1 << 20 if split else 1 << 40)
    rng = np.random.default_rng(3)
    start = {"edge.weight": rng.normal(size=(1001, 1100)).astype(np.float32),
             "f64.weight": rng.normal(size=(700, 800)),
             "bf16.weight": rng.normal(size=(300, 200)).astype(ml_dtypes.bfloat16)}
    snapshots = []
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch in range(3):
            state = {k: (v.astype(np.float64) + 0.01 * epoch * rng.normal(size=v.shape)
                         ).astype(v.dtype) for k, v in start.items()}
            rec.snapshot(state, epoch=epoch)
            snapshots.append(state)
    record = rk.load(rec.path)
    assert record.weight("bf16.weight").dtype_name == "bfloat16"
    for metric in ("l2", "cosine", "relative"):
        frame = weights.distance(record, "init", per="tensor", metric=metric)
        for name in start:
            expected = [_expected(metric, snapshots[0][name].astype(np.float64).ravel(),
                                  snapshots[e][name].astype(np.float64).ravel())
                        for e in range(3)]
            assert frame[name].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-9), (
                metric, name)
    at, size = chunk_at(rec.path, "weights/edge.weight", (2, 0, 0))
    overwrite(rec.path, at + size // 2, bytes(4096))
    with pytest.raises(RecordDamagedError, match=r"'edge.weight', dataset row 2"):
        weights.distance(rk.load(rec.path), "init", per="tensor", tensors=["edge.weight"])


def test_distance_between_two_epochs_and_from_an_epoch(run):
    require("pandas", "analysis")
    record, snapshots = run
    names = GROUPS["model"]["model"]
    pair = weights.distance(record, 1, 6, per="model")
    assert pair.index.tolist() == [6]
    assert pair.loc[6, "model"] == pytest.approx(np.linalg.norm(
        _vector(snapshots[6], names) - _vector(snapshots[1], names)), rel=1e-6)
    every = weights.distance(record, 2, per="tensor", tensors=["fc.weight"])
    assert every.columns.tolist() == ["fc.weight"]
    assert every["fc.weight"].tolist() == pytest.approx(
        [np.linalg.norm(snapshots[e]["fc.weight"].astype(np.float64)
                        - snapshots[2]["fc.weight"]) for e in EPOCHS], rel=1e-6)
    previous = weights.distance(record, "previous", 4, per="tensor", tensors=["fc.bias"])
    assert previous["fc.bias"].tolist() == pytest.approx(
        [np.linalg.norm(snapshots[4]["fc.bias"].astype(np.float64) - snapshots[2]["fc.bias"])])


def test_a_tiny_rotation_is_not_lost_in_one_minus_a_cosine(tmp_path):
    require("pandas", "analysis")
    angle = 1e-5
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": np.array([1.0, 0.0])}, epoch=0)
        rec.snapshot({"w": np.array([np.cos(angle), np.sin(angle)])}, epoch=1)
    frame = weights.distance(rk.load(rec.path), metric="cosine", per="tensor")
    assert frame.loc[1, "w"] == pytest.approx(1 - np.cos(angle), rel=1e-6)  # 5e-11


@pytest.mark.parametrize(("call", "message"), [
    (lambda r: weights.distance(r, 3), r"no snapshot at epoch 3.*\[0, 1, 2, 4, 6\]"),
    (lambda r: weights.distance(r, "init", 5), r"no snapshot at epoch 5"),
    (lambda r: weights.distance(r, "first"), r"'init' or 'previous'"),
    (lambda r: weights.distance(r, per="neuron"), r"per='neuron'.*'layer'"),
    (lambda r: weights.distance(r, metric="l1"), r"metric='l1'.*'cosine'"),
    (lambda r: weights.distance(r, tensors=["nope"]), r"no tensor 'nope'.*'fc.weight'"),
    (lambda r: weights.spectra(r, 3), r"no snapshot at epoch 3"),
    (lambda r: weights.spectra(r, tensors=["fc.bias"]), r"'fc.bias'.*no matrix"),
    (lambda r: weights.trajectory(r, k=6), r"k=6.*\(5\)"),
    (lambda r: next(weights.interpolate(r, 0, 3, [0.5])), r"no snapshot at epoch 3"),
])
def test_bad_requests_are_errors_naming_the_file_and_what_there_is(run, call, message):
    require("pandas", "analysis")
    record, _ = run
    with pytest.raises(WeightsError, match=message) as caught:
        call(record)
    assert isinstance(caught.value, rk.RecordkitError)
    if "snapshot at" in message:
        assert str(record.path) in str(caught.value)


def _stack(snapshots, names):
    return np.stack([_vector(snapshots[e], names) for e in EPOCHS])


@pytest.mark.parametrize("max_rows_bytes", [512 << 20, 1])  # all rows held; two at a time
def test_trajectory_equals_sklearn_pca_up_to_sign(run, max_rows_bytes):
    decomposition = require("sklearn.decomposition", "dev")
    record, snapshots = run
    path = weights.trajectory(record, k=3, max_rows_bytes=max_rows_bytes)
    names = [n for n in record.tensor_names]
    assert path.epochs == EPOCHS and path.tensors == names
    pca = decomposition.PCA(3).fit(_stack(snapshots, names))
    expected = pca.transform(_stack(snapshots, names))
    signs = np.sign(np.sum(path.coordinates * expected, axis=0))
    np.testing.assert_allclose(path.coordinates * signs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path.explained_variance, pca.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(path.explained_variance_ratio,
                               pca.explained_variance_ratio_, rtol=1e-6)
    subset = weights.trajectory(record, k=2, tensors=["fc.weight"])
    pca = decomposition.PCA(2).fit(_stack(snapshots, ["fc.weight"]))
    np.testing.assert_allclose(np.abs(subset.coordinates),
                               np.abs(pca.transform(_stack(snapshots, ["fc.weight"]))),
                               rtol=1e-5, atol=1e-6)


def test_trajectory_frame_and_a_tensor_missing_at_an_epoch(tmp_path):
    pd = require("pandas", "analysis")
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"a": np.zeros(3)}, epoch=0)
        rec.snapshot({"a": np.array([1.0, 0, 0]), "late": np.ones(2)}, epoch=1)
        rec.snapshot({"a": np.array([3.0, 0, 0]), "late": np.ones(2)}, epoch=2)
    record = rk.load(rec.path)
    path = weights.trajectory(record, k=1)
    assert path.tensors == ["a"]  # a tensor without a snapshot at every epoch is left out
    frame = path.frame()
    assert frame.index.tolist() == [0, 1, 2] and list(frame.columns) == ["pc1"]
    assert np.abs(frame["pc1"]).tolist() == pytest.approx([4 / 3, 1 / 3, 5 / 3])
    assert isinstance(frame, pd.DataFrame)
    with pytest.raises(WeightsError, match=r"'late'.*epoch\(s\) \[0\]"):
        weights.trajectory(record, tensors=["a", "late"])


def _numpy_spectrum(name, array):
    array = array.astype(np.float64)
    if array.ndim == 2:
        mats = [array]
    elif name.endswith("kernel"):
        mats = [array[i, j] for i in range(array.shape[0]) for j in range(array.shape[1])]
    else:
        mats = [array[:, :, i, j] for i in range(array.shape[2])
                for j in range(array.shape[3])]
    spectral = max(np.linalg.norm(m, 2) for m in mats)
    frobenius = np.linalg.norm(array.ravel())
    return spectral, frobenius, frobenius ** 2 / spectral ** 2


def test_spectra_equal_numpy_norms_with_conv_kernels_per_position(run):
    require("pandas", "analysis")
    record, snapshots = run
    table = weights.spectra(record)
    assert sorted(set(table["tensor"])) == ["conv.weight", "dense/kernel", "fc.weight"]
    assert table["epoch"].tolist() == EPOCHS * 3
    for row in table.itertuples():
        spectral, frobenius, stable = _numpy_spectrum(row.tensor,
                                                      snapshots[row.epoch][row.tensor])
        assert (row.spectral_norm, row.frobenius_norm, row.stable_rank) == pytest.approx(
            (spectral, frobenius, stable), rel=1e-9)
        assert row.layer == weights.layer_of(row.tensor)
    one = weights.spectra(record, 4, tensors=["fc.weight"], alpha=True)
    assert one["epoch"].tolist() == [4] and "alpha" in one.columns
    assert np.isnan(one["alpha"][0])  # 5 eigenvalues: too few to fit a power law


def test_power_law_alpha_recovers_the_exponent_of_a_pareto_tail():
    rng = np.random.default_rng(3)
    for alpha in (2.0, 3.0, 4.5):
        body = rng.uniform(0.01, 1.0, size=3000)  # below the tail: left out by the cut-off
        tail = (1 - rng.random(5000)) ** (-1 / (alpha - 1))
        assert weights.power_law_alpha(np.concatenate([body, tail])) == pytest.approx(
            alpha, abs=0.15)


def test_interpolate_is_the_line_between_the_ends_in_each_dtype(run, tmp_path):
    record, snapshots = run
    alphas = [0.0, 0.25, 1.0, 1.5]
    got = list(weights.interpolate(record, 0, 6, alphas))
    assert [a for a, _ in got] == alphas
    for alpha, state in got:
        assert set(state) == set(snapshots[0])
        for name, value in state.items():
            a, b = snapshots[0][name], snapshots[6][name]
            assert value.dtype == a.dtype and value.shape == a.shape
            if a.dtype.kind == "f":
                expected = ((1 - alpha) * a.astype(np.float64)
                            + alpha * b.astype(np.float64)).astype(a.dtype)
                np.testing.assert_array_equal(value, expected)
            else:
                np.testing.assert_array_equal(value, a if alpha < 0.5 else b)
    # two runs: the second's epoch 0 is the first's epoch 6
    with rk.Recorder(tmp_path / "other", system=False) as rec:
        rec.snapshot(snapshots[6], epoch=0)
    (_, middle), = weights.interpolate(record, 0, 0, [0.5], other=rk.load(rec.path))
    np.testing.assert_array_equal(middle["fc.weight"], (
        0.5 * snapshots[0]["fc.weight"].astype(np.float64)
        + 0.5 * snapshots[6]["fc.weight"].astype(np.float64)).astype(np.float32))
    with rk.Recorder(tmp_path / "bad", system=False) as rec:
        rec.snapshot({"fc.weight": snapshots[6]["fc.weight"]}, epoch=0)
    with pytest.raises(WeightsError, match=r"differ in tensors.*'conv.bias'"):
        next(weights.interpolate(record, 0, 0, [0.5], other=rk.load(rec.path)))


def test_distance_holds_two_snapshots_of_a_tensor_not_the_history(tmp_path):
    """Peak memory of distance over 8 snapshots of a 1.5 MiB tensor (and small ones):
    from init, the reference snapshot and the pieces each later one is summed in as it
    is read (chunkread.fold_laid_out_row), so about one snapshot; from the previous
    epoch, two snapshots (each is the next one's reference), not eight."""
    require("pandas", "analysis")
    rng = np.random.default_rng(0)
    big = rng.normal(size=(384, 1024)).astype(np.float32)
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch in range(8):
            big += 0.01
            rec.snapshot({"big": big, "small": np.full(100, float(epoch))}, epoch=epoch)
    record = rk.load(rec.path)
    peaks = {}
    for reference in ("init", "previous"):
        weights.distance(record, reference, per="tensor")  # warm: tensor list, readers
        tracemalloc.start()
        frame = weights.distance(record, reference, per="tensor")
        peaks[reference] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        moved = [0.01 * np.sqrt(big.size) * e for e in range(8)] if reference == "init" \
            else [0.01 * np.sqrt(big.size)] * 7  # epochs 1-7
        assert frame["big"].tolist() == pytest.approx(moved, rel=1e-3)
    assert big.nbytes <= peaks["init"] < 1.5 * big.nbytes
    assert 2 * big.nbytes <= peaks["previous"] < 2.6 * big.nbytes  # eight: 12 MiB


def test_restore_a_state_dict_needs_a_model():
    with pytest.raises(WeightsError, match="cannot load weights into a dict"):
        weights.restore({}, {"w": np.zeros(2)})
    with pytest.raises(WeightsError, match="a Record or a state dict"):
        weights.restore({}, [np.zeros(2)])


def test_a_group_not_whole_at_an_epoch_is_nan_there(tmp_path):
    require("pandas", "analysis")
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"fc.weight": np.zeros(3)}, epoch=0)
        rec.snapshot({"fc.weight": np.ones(3), "fc.bias": np.zeros(2)}, epoch=1)
        rec.snapshot({"fc.weight": np.full(3, 2.0), "fc.bias": np.ones(2)}, epoch=2)
    record = rk.load(rec.path)
    layer = weights.distance(record, per="layer")["fc"]
    assert np.isnan(layer[0])  # fc.bias has no snapshot at 0
    # fc.weight from its epoch 0, fc.bias from its own first snapshot (epoch 1)
    assert layer[1:].tolist() == pytest.approx([np.sqrt(3.0), np.sqrt(3 * 4.0 + 2 * 1.0)])
    tensor = weights.distance(record, per="tensor")
    assert np.isnan(tensor.loc[0, "fc.bias"]) and tensor.loc[1, "fc.bias"] == 0.0


def test_trajectory_directions_and_center_equal_sklearn_components_and_mean(run):
    decomposition = require("sklearn.decomposition", "dev")
    record, snapshots = run
    path = weights.trajectory(record, k=2, directions=True)
    names = path.tensors
    pca = decomposition.PCA(2).fit(_stack(snapshots, names))
    assert path.directions is not None and path.center is not None
    axes = np.concatenate([path.directions[n].reshape(2, -1) for n in names], axis=1)
    signs = np.sign(np.sum(axes * pca.components_, axis=1))
    np.testing.assert_allclose(axes * signs[:, None], pca.components_, atol=1e-7)
    np.testing.assert_allclose(np.concatenate([path.center[n].ravel() for n in names]),
                               pca.mean_, rtol=1e-12, atol=1e-12)
    assert path.directions["fc.weight"].shape == (2, 5, 12)
    # each epoch's weights: the center plus its coordinates along the axes (5 epochs,
    # all 4 axes: exact)
    full = weights.trajectory(record, k=4, directions=True)
    for i, epoch in enumerate(EPOCHS):
        rebuilt = full.center["fc.weight"] + np.tensordot(full.coordinates[i],
                                                          full.directions["fc.weight"], 1)
        np.testing.assert_allclose(rebuilt, snapshots[epoch]["fc.weight"], atol=1e-9)
