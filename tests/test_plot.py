"""recordkit.plot: what was drawn (lines, labels, colours, data), on the Agg backend."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import recordkit as rk
from tests.support import require

matplotlib = require("matplotlib", "analysis")
matplotlib.use("Agg")
import matplotlib.collections  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from recordkit import plot  # noqa: E402

LOSSES = {0.1: [1.0, 0.5, 0.25], 0.01: [1.0, 0.9, 0.8], 0.001: [1.0, 0.99, 0.98]}


@pytest.fixture(autouse=True)
def _private_cache_and_close(tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
    yield
    plt.close("all")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "records"
    for lr, losses in LOSSES.items():
        with rk.Recorder(root, name=f"lr={lr}", params={"lr": lr}, system=False) as rec:
            for epoch, loss in enumerate(losses):
                rec.log({"loss": loss, "acc": 1 - loss}, epoch=epoch)
    return rk.load_all(root)


def test_learning_curves_draw_each_run_with_its_colour_label_and_data(runs):
    fig = plot.learning_curves(runs, "loss")
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    for line, record in zip(ax.lines, runs):
        assert line.get_color() == plot.run_colour(record.run_id)
        assert line.get_marker() == plot.run_marker(record.run_id)
        assert line.get_label() == f"{record.name} ({record.run_id[-6:]})"
        assert line.get_xdata().tolist() == [0, 1, 2]
        assert line.get_ydata().tolist() == LOSSES[record.params["lr"]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        plot.run_label(r) for r in runs]
    assert ax.get_xlabel() == "epoch"


def test_a_run_keeps_its_colour_in_every_figure(runs):
    alone = plot.learning_curves(runs[2], "loss").axes[0].lines[0]
    together = plot.learning_curves(runs, "acc").axes[0].lines[2]
    assert alone.get_color() == together.get_color() == plot.run_colour(runs[2].run_id)
    assert plot.run_colour(runs[2].run_id) in plot.PALETTE


@pytest.fixture
def sweep(tmp_path):
    """Eight runs of a sweep, two of which prefer the same colour (a hash of the run id
    into 20 colours does that 4 times in 5; runs are added until it happens)."""
    root = tmp_path / "sweep"
    preferred: dict[str, list[str]] = {}
    lr = 1.0
    while len(preferred) < 20 and not (
            sum(len(ids) for ids in preferred.values()) >= 8
            and any(len(ids) > 1 for ids in preferred.values())):
        lr /= 2
        with rk.Recorder(root, name=f"lr={lr}", params={"lr": lr}, system=False) as rec:
            for epoch in range(3):
                rec.log({"loss": lr * (3 - epoch), "acc": 1 - lr / (epoch + 1)}, epoch=epoch)
        preferred.setdefault(plot.run_colour(rec.run_id), []).append(rec.run_id)
    runs = rk.load_all(root)
    clash = next(ids for ids in preferred.values() if len(ids) > 1)[:2]
    others = [r.run_id for r in runs if r.run_id not in clash][:6]
    return runs.filter(lambda r: r.run_id in {*clash, *others})


def test_eight_runs_of_a_sweep_get_eight_colours_the_same_in_every_figure(sweep):
    assert len(sweep) == 8
    assert len({plot.run_colour(r.run_id) for r in sweep}) < 8  # the hash alone clashes
    whole = plot.run_colours(r.run_id for r in sweep)
    curves = plot.learning_curves(sweep, ["loss", "acc"], colours=whole)
    colours = [[line.get_color() for line in ax.lines] for ax in curves.axes]
    assert len(set(colours[0])) == 8 and colours[0] == colours[1]
    assert plot.run_colours(r.run_id for r in reversed(sweep)) == whole
    again = plot.learning_curves(list(reversed(sweep)), "acc", colours=whole).axes[0].lines
    assert {line.get_label(): line.get_color() for line in again} == {
        plot.run_label(r): c for r, c in zip(sweep, colours[0])}
    dots = [c for c in plot.final_values(sweep, "loss", by="lr",
                                         colours=whole).axes[0].collections
            if isinstance(c, matplotlib.collections.PathCollection)]
    assert [c.get_facecolor()[0].tolist() for c in dots] == [
        list(matplotlib.colors.to_rgba(c)) for c in colours[0]]
    # a part of the sweep drawn in the whole sweep's colours
    part = plot.learning_curves(sweep[4:], "loss", colours=whole).axes[0].lines
    assert [line.get_color() for line in part] == colours[0][4:]


def test_several_metrics_get_an_axes_each_or_share_a_given_one(runs):
    fig = plot.learning_curves(runs, ["loss", "acc"])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "acc"]
    assert fig.axes[1].lines[0].get_ydata().tolist() == pytest.approx([0.0, 0.5, 0.75])
    given_fig, ax = plt.subplots()
    returned = plot.learning_curves(runs, ["loss", "acc"], ax=ax)
    assert returned is given_fig
    assert len(ax.lines) == 6
    assert {line.get_linestyle() for line in ax.lines} == {"-", "--"}
    assert ax.lines[3].get_label().endswith(" acc")


def test_learning_curves_unknown_metric(runs):
    with pytest.raises(KeyError, match="nope"):
        plot.learning_curves(runs, "nope")


def test_final_values_mean_and_spread_over_repeated_runs_and_folds(tmp_path):
    root = tmp_path / "r"
    for final in (0.2, 0.4):   # two repeated runs of one configuration
        rk.record_experiment({"lr": 0.1}, root, observations={"loss": [1.0, final]})
    # one run with three folds: fold finals 0.5, 0.7, 0.9
    rk.record_experiment({"lr": 0.5}, root, observations={
        "loss": [[1.0, 0.5], [1.0, 0.7], [1.0, 0.9]]})
    fig = plot.final_values(rk.load_all(root), "loss", by="lr")
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == pytest.approx([0.3, 0.7])
    # error bars: the vertical segments of the errorbar containers
    spreads = []
    for container in ax.containers:
        if hasattr(container, "lines") and container.lines[2]:
            segments = container.lines[2][0].get_segments()
            spreads.extend((seg[1][1] - seg[0][1]) / 2 for seg in segments)
    assert spreads == pytest.approx([np.std([0.2, 0.4], ddof=1), np.std([0.5, 0.7, 0.9],
                                                                        ddof=1)])
    dots = [c.get_offsets() for c in ax.collections
            if isinstance(c, matplotlib.collections.PathCollection)]
    points = sorted(tuple(xy) for d in dots for xy in d.tolist())
    assert [x for x, _ in points] == [0, 0, 1, 1, 1]
    assert [y for _, y in points] == pytest.approx([0.2, 0.4, 0.5, 0.7, 0.9])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lr=0.1\n(n=2)", "lr=0.5\n(n=3)"]


def test_final_values_best_uses_metric_direction(runs):
    ax = plot.final_values(runs, "acc", use="best").axes[0]
    assert sorted(b.get_height() for b in ax.patches) == pytest.approx([0.02, 0.2, 0.75])


@pytest.fixture
def trained(tmp_path):
    rng = np.random.default_rng(0)
    snapshots = []
    with rk.Recorder(tmp_path / "w", params={}, system=False) as rec:
        for epoch in range(4):
            weights = {"fc1.weight": rng.normal(size=(4, 3)).astype(np.float32),
                       "fc1.bias": rng.normal(size=4).astype(np.float32),
                       "out.weight": rng.normal(size=(2, 4)).astype(np.float32)}
            snapshots.append(weights)
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot(weights, epoch=epoch)
    return rk.load(rec.path), snapshots


def _moved(snapshots, names, i):
    return float(np.sqrt(sum(np.sum((snapshots[i][n].astype(np.float64)
                                     - snapshots[i - 1][n]) ** 2) for n in names)))


def test_weight_movement_per_layer_is_the_norm_of_the_difference(trained):
    record, snapshots = trained
    ax = plot.weight_movement(record).axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert sorted(lines) == ["fc1", "out"]
    assert lines["fc1"].get_xdata().tolist() == [1, 2, 3]
    assert lines["fc1"].get_ydata().tolist() == pytest.approx(
        [_moved(snapshots, ["fc1.weight", "fc1.bias"], i) for i in (1, 2, 3)])
    per_tensor = plot.weight_movement(record, by="tensor", tensors=["out.weight"]).axes[0]
    (line,) = per_tensor.lines
    assert line.get_label() == "out.weight"
    assert line.get_ydata().tolist() == pytest.approx(
        [_moved(snapshots, ["out.weight"], i) for i in (1, 2, 3)])


def test_weight_histograms_across_snapshots(trained):
    record, snapshots = trained
    fig, ax = plt.subplots()
    assert plot.weight_histograms(record, "fc1.weight", epochs=[0, 3], bins=5, ax=ax) is fig
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["epoch 0", "epoch 3"]
    assert len(ax.patches) == 2
    edges = np.linspace(min(snapshots[e]["fc1.weight"].min() for e in (0, 3)),
                        max(snapshots[e]["fc1.weight"].max() for e in (0, 3)), 6)
    for patch, epoch in zip(ax.patches, (0, 3)):
        expected, _ = np.histogram(snapshots[epoch]["fc1.weight"], bins=edges)
        heights = patch.get_xy()[1:-1:2, 1]  # the step outline: one top per bin
        assert heights.tolist() == expected.tolist()
    colours = [patch.get_edgecolor() for patch in ax.patches]
    assert colours[0] != colours[1]
    default = plot.weight_histograms(record, "fc1.bias").axes[0]
    assert len(default.patches) == 4  # up to six snapshots: all four here


def test_missing_matplotlib_names_the_extra(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError, match=r"recordkit\[analysis\]"):
        plot.learning_curves(runs, "loss")


@pytest.fixture
def drifting(tmp_path):
    """Five snapshots (epochs 0, 1, 2, 4, 6) of a conv kernel, a dense layer and a bias."""
    rng = np.random.default_rng(5)
    state = {"conv.weight": rng.normal(size=(4, 2, 3, 3)),
             "fc.weight": rng.normal(size=(3, 5)), "fc.bias": rng.normal(size=3)}
    snapshots = {}
    with rk.Recorder(tmp_path / "d", params={}, system=False) as rec:
        for epoch in (0, 1, 2, 4, 6):
            state = {k: v + 0.2 * rng.normal(size=v.shape) for k, v in state.items()}
            snapshots[epoch] = state
            rec.snapshot(state, epoch=epoch)
    return rk.load(rec.path), snapshots


def test_weight_trajectory_draws_the_pca_path_with_epochs_labelled(drifting):
    require("pandas", "analysis")
    decomposition = require("sklearn.decomposition", "dev")
    record, snapshots = drifting
    fig, ax = plt.subplots()
    assert plot.weight_trajectory(record, ax=ax) is fig
    stacked = np.stack([np.concatenate([s[n].ravel() for n in record.tensor_names])
                        for s in snapshots.values()])
    pca = decomposition.PCA(2).fit(stacked)
    expected = pca.transform(stacked)
    drawn = np.column_stack([ax.lines[0].get_xdata(), ax.lines[0].get_ydata()])
    signs = np.sign(np.sum(drawn * expected, axis=0))
    np.testing.assert_allclose(drawn * signs, expected, rtol=1e-6, atol=1e-9)
    labels = [(t.get_text(), t.xy) for t in ax.texts]
    assert [text for text, _ in labels] == ["0", "1", "2", "4", "6"]
    np.testing.assert_allclose([xy for _, xy in labels], drawn)
    assert ax.get_xlabel() == f"PC1 ({pca.explained_variance_ratio_[0]:.1%} of variance)"
    assert ax.get_ylabel() == f"PC2 ({pca.explained_variance_ratio_[1]:.1%} of variance)"


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_weight_distance_draws_each_layer_from_init(drifting, metric):
    require("pandas", "analysis")
    record, snapshots = drifting
    ax = plot.weight_distance(record, metric=metric).axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert sorted(lines) == ["conv", "fc"]
    names = {"conv": ["conv.weight"], "fc": ["fc.weight", "fc.bias"]}
    for layer, line in lines.items():
        assert line.get_xdata().tolist() == [0, 1, 2, 4, 6]
        start = np.concatenate([snapshots[0][n].ravel() for n in names[layer]])
        expected = []
        for state in snapshots.values():
            now = np.concatenate([state[n].ravel() for n in names[layer]])
            expected.append(np.linalg.norm(now - start) if metric == "l2" else
                            1 - now @ start / (np.linalg.norm(now) * np.linalg.norm(start)))
        assert line.get_ydata().tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_spectral_norms_draws_the_largest_singular_value_per_layer(drifting):
    require("pandas", "analysis")
    record, snapshots = drifting
    fig, ax = plt.subplots()
    assert plot.spectral_norms(record, ax=ax) is fig
    lines = {line.get_label(): line for line in ax.lines}
    assert sorted(lines) == ["conv", "fc"]  # the bias has no matrix
    assert lines["fc"].get_ydata().tolist() == pytest.approx(
        [np.linalg.norm(s["fc.weight"], 2) for s in snapshots.values()], rel=1e-9)
    # a torch conv kernel: the largest of its kernel positions' (out x in) matrices
    assert lines["conv"].get_ydata().tolist() == pytest.approx(
        [max(np.linalg.norm(s["conv.weight"][:, :, i, j], 2) for i in range(3)
             for j in range(3)) for s in snapshots.values()], rel=1e-9)
    assert lines["conv"].get_xdata().tolist() == [0, 1, 2, 4, 6]
