"""RecordSet: filter, best, group_by, to_dataframe, history_frame, compare, header cache."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import recordkit as rk
from recordkit.recordset import load_all
from tests.support import require


@pytest.fixture
def pd():
    """Tables need the analysis extra; filter, best, compare and the cache do not (the core
    tox env runs those tests without pandas)."""
    return require("pandas", "analysis")

# Final losses of the sweep below: lr 0.1 runs reach 0.2 and 0.4, lr 0.01 runs 0.6 and 0.9.
SWEEP = [
    ({"lr": 0.1, "seed": 0, "opt": {"name": "sgd"}}, [1.0, 0.5, 0.2], [0.5, 0.7, 0.9]),
    ({"lr": 0.1, "seed": 1, "opt": {"name": "sgd"}}, [1.0, 0.3, 0.4], [0.5, 0.8, 0.6]),
    ({"lr": 0.01, "seed": 0, "opt": {"name": "adam"}}, [1.0, 0.8, 0.6], [0.4, 0.5, 0.55]),
    ({"lr": 0.01, "seed": 1, "opt": {"name": "adam"}}, [1.0, 0.95, 0.9], [0.3, 0.35, 0.4]),
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "records"
    for i, (params, loss, acc) in enumerate(SWEEP):
        with rk.Recorder(root, experiment="sweep", name=f"run{i}", params=params,
                         system=False) as rec:
            for epoch, (lo, ac) in enumerate(zip(loss, acc)):
                rec.log({"loss": lo, "val_accuracy": ac}, epoch=epoch)
    return root


def test_filter_by_params_status_and_predicate(root):
    rs = load_all(root)
    assert [r.name for r in rs.filter(lr=0.1)] == ["run0", "run1"]
    assert [r.name for r in rs.filter(**{"opt.name": "adam", "seed": 1})] == ["run3"]
    assert [r.name for r in rs.filter(lambda r: r.history.final("loss") < 0.5)] == [
        "run0", "run1"]
    assert len(rs.filter(status="completed")) == 4
    assert len(rs.filter(status=["failed", "interrupted"])) == 0
    assert len(rs.filter(lr=0.5)) == 0


@pytest.mark.parametrize(("metric", "mode", "expected"), [
    ("loss", None, "run0"),            # min by default: 0.2
    ("loss", "max", "run0"),           # every run starts at 1.0; the first wins the tie
    ("val_accuracy", None, "run0"),    # max by default for accuracy: 0.9
    ("val_accuracy", "min", "run3"),   # 0.3
])
def test_best(root, metric, mode, expected):
    assert load_all(root).best(metric, mode=mode).name == expected


def test_best_errors(root):
    with pytest.raises(rk.RecordkitError, match="no run .* 'nope'"):
        load_all(root).best("nope")
    with pytest.raises(ValueError, match="mode='median'"):
        load_all(root).best("loss", mode="median")


def test_group_by_param_gives_mean_and_spread(root, pd):
    table = load_all(root).group_by("lr").set_index("lr")
    assert table.loc[0.1, "runs"] == 2
    assert table.loc[0.1, "loss.final.mean"] == pytest.approx(0.3)
    assert table.loc[0.1, "loss.final.std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert table.loc[0.01, "loss.best.mean"] == pytest.approx(0.75)
    assert table.loc[0.01, "val_accuracy.best.mean"] == pytest.approx((0.55 + 0.4) / 2)
    assert len(table.loc[0.1, "run_ids"]) == 2


def test_group_by_params_hash_groups_repeated_runs(tmp_path, pd):
    root = tmp_path / "r"
    for final in (0.1, 0.3, 0.8):
        params = {"lr": 0.1} if final < 0.5 else {"lr": 0.5}
        rk.record_experiment(params, root, observations={"loss": [1.0, final]})
    table = load_all(root).group_by()
    assert sorted(table["runs"].tolist()) == [1, 2]
    repeated = table[table["runs"] == 2].iloc[0]
    assert repeated["lr"] == 0.1
    assert repeated["loss.final.mean"] == pytest.approx(0.2)
    single = table[table["runs"] == 1].iloc[0]
    assert math.isnan(single["loss.final.std"])


def test_to_dataframe_values(root, pd):
    frame = load_all(root).to_dataframe().set_index("name")
    assert frame.loc["run1", "lr"] == 0.1
    assert frame.loc["run1", "opt.name"] == "sgd"
    assert frame.loc["run1", "loss.final"] == 0.4
    assert frame.loc["run1", "loss.best"] == 0.3
    assert frame.loc["run1", "loss.best_epoch"] == 1
    assert frame.loc["run1", "val_accuracy.best"] == 0.8
    assert frame.loc["run1", "val_accuracy.best_epoch"] == 1
    assert frame.loc["run1", "status"] == "completed"
    assert frame.loc["run1", "epochs"] == 3


def test_history_frame_long_form(root, pd):
    rs = load_all(root)
    frame = rs.history_frame()
    assert list(frame.columns) == ["run_id", "name", "metric", "epoch", "step", "value"]
    assert len(frame) == 4 * 2 * 3
    run2 = frame[(frame["name"] == "run2") & (frame["metric"] == "loss")]
    assert run2["epoch"].tolist() == [0, 1, 2]
    assert run2["value"].tolist() == [1.0, 0.8, 0.6]
    assert set(frame["run_id"]) == {r.run_id for r in rs}
    assert rs.filter(lr=7).history_frame().empty


def test_compare(root):
    rs = load_all(root)
    comparison = rs.compare(rs[0], rs[3].run_id)
    assert comparison.differ == {"lr": (0.1, 0.01), "seed": (0, 1),
                                 "opt.name": ("sgd", "adam")}
    assert comparison.shared == {}
    same = rs.compare(rs[0], rs[1])
    assert same.shared == {"lr": 0.1, "opt.name": "sgd"}
    assert same.differ == {"seed": (0, 1)}
    assert same.only_a == same.only_b == {}


def test_cached_read_equals_uncached_and_follows_changes(root, tmp_path, pd):
    fresh = load_all(root, cache=False).to_dataframe()
    first = load_all(root).to_dataframe()  # fills the cache
    assert list((tmp_path / "cache").glob("headers-*.json"))
    cached_set = load_all(root)
    pd.testing.assert_frame_equal(fresh, first)
    pd.testing.assert_frame_equal(fresh, cached_set.to_dataframe())
    record = cached_set[2]
    assert record.params == SWEEP[2][0]
    assert record.history["loss"].tolist() == SWEEP[2][1]
    assert record.created == load_all(root, cache=False)[2].created
    # A file that changes (here: resumed and one more epoch) is read again.
    with rk.Recorder(root, resume=record.run_id) as rec:
        rec.log({"loss": 0.05}, epoch=3)
    changed = load_all(root).get(record.run_id)
    assert changed.history["loss"].tolist() == [*SWEEP[2][1], 0.05]
    assert len(changed.restarts) == 1
    # A deleted file leaves the set.
    os.remove(changed.path)
    assert len(load_all(root)) == 3


def test_cache_can_be_turned_off(root, tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_CACHE", "0")
    load_all(root)
    assert not (tmp_path / "cache").exists()


def test_running_run_is_not_cached(tmp_path):
    root = tmp_path / "r"
    rec = rk.Recorder(root, params={"lr": 1}, system=False)
    rec.log({"loss": 1.0}, epoch=0)
    rec.commit()
    assert load_all(root)[0].status == "running"
    rec.log({"loss": 0.5}, epoch=1)
    rec.commit()
    assert load_all(root)[0].history["loss"].tolist() == [1.0, 0.5]
    rec.save()
    assert load_all(root)[0].status == "completed"


def test_cache_keeps_the_most_recently_used_folders(tmp_path):
    from recordkit.recordset import _prune

    folder = tmp_path / "cachefiles"
    folder.mkdir()
    for i in range(5):
        path = folder / f"headers-{i}.json"
        path.write_text("{}")
        os.utime(path, (1000 + i, 1000 + i))
    _prune(folder, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["headers-3.json", "headers-4.json"]
