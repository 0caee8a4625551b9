"""RecordSet: filter, best, group_by, to_dataframe, history_frame, compare, header cache."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import recordkit as rk
from recordkit.headercache import LazyJSON
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


NAN, INF = float("nan"), float("inf")
# (loss rows as (epoch, value)): NaN and inf never win; ties keep the first epoch; a
# metric logged several times per epoch; a run with no finite loss at all.
ODD_RUNS = [
    [(0, 1.0), (1, NAN), (2, 0.25), (3, 0.25)],
    [(0, INF), (1, 0.5), (2, -INF), (3, 0.3)],
    [(0, NAN), (1, NAN)],
    [(0, 0.9), (0, 0.2), (1, 0.7), (1, 0.95)],
    [(0, 2.0), (1, 0.25), (2, 3.0)],
]


def _reference_best(records, metric, mode):
    """The best run and its value and epoch, from each run's full history."""
    best = None
    for record in records:
        if metric not in record.history:
            continue
        values, epochs = record.history[metric], record.history.epochs(metric)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        masked = np.where(finite, values, np.nan)
        i = int(np.nanargmin(masked) if mode == "min" else np.nanargmax(masked))
        if best is None or (values[i] < best[1] if mode == "min" else values[i] > best[1]):
            best = (record.run_id, float(values[i]), int(epochs[i]))
    return best


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_comes_from_summaries_and_equals_the_full_read(tmp_path, monkeypatch, mode):
    root = tmp_path / "odd"
    for i, rows in enumerate(ODD_RUNS):
        with rk.Recorder(root, name=f"odd{i}", params={"i": i}, system=False) as rec:
            for epoch, value in rows:
                rec.log({"loss": value}, epoch=epoch)
    running = rk.Recorder(root, name="live", params={"i": 9}, system=False)  # no summary
    running.log({"loss": 5.0 if mode == "min" else -5.0}, epoch=0)
    running.commit()
    try:
        rs = load_all(root)
        full_reads = []
        read_full = rk.Record._read_full
        monkeypatch.setattr(rk.Record, "_read_full",
                            lambda self: (full_reads.append(self.path), read_full(self)))
        best = rs.best("loss", mode=mode)
        assert full_reads == []  # the running run was read in full by load_all already
        expected = _reference_best([rk.load(r.path) for r in rs], "loss", mode)
        assert best.run_id == expected[0]
        assert best.name == ("odd4" if mode == "max" else "odd3")
        stats = best.metric_summaries()["loss"]
        assert (stats[mode], stats[f"{mode}_epoch"]) == expected[1:]
        with pytest.raises(rk.RecordkitError, match=r"no run of the 1 .* metrics: \['loss'\]"):
            rs.filter(i=2).best("loss", mode=mode)  # only NaN
    finally:
        running.save()


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
    assert list((tmp_path / "cache").glob("headers-*.jsonl"))
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
    from recordkit.headercache import prune as _prune

    folder = tmp_path / "cachefiles"
    folder.mkdir()
    for i in range(5):
        path = folder / f"headers-{i}.jsonl"
        path.write_text("{}")
        os.utime(path, (1000 + i, 1000 + i))
    (folder / "headers-old.json").write_text("{}")  # an older layout's: dropped
    _prune(folder, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["headers-3.jsonl", "headers-4.jsonl"]


def _state_equal(a: object, b: object) -> bool:
    """Equal values of equal types, NaN equal to NaN, arrays compared with their dtypes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and (
            a.tobytes() == b.tobytes())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, rk.views.History):
        return _state_equal(dict(a.rows_by_metric()), dict(b.rows_by_metric()))
    return a == b


def test_cached_records_equal_fresh_ones_attribute_by_attribute(tmp_path, monkeypatch):
    """What the header cache gives back is what reading the file gives: every attribute
    of every Record, of runs opened from their summary and of runs read in full."""
    root = tmp_path / "records"
    params = [
        {"lr": 0.1, "nan": float("nan"), "inf": float("-inf"), "shape": (3, 4),
         "tags": ["a", "b"], "nested": {"x": {"y": [1, 2.5, None, True]}}},
        {"lr": np.float32(0.01), "n": np.int64(3), "arr": np.arange(3),
         "unicode": "é ✓", "$type": "a key that looks like a tag"},
    ]
    for i, p in enumerate(params):
        with rk.Recorder(root, name=f"run{i}", params=p, system=True) as rec:
            rec.log({"loss": 1.0, "val/acc": float("nan")}, epoch=0)
            rec.log({"loss": 0.5}, epoch=1)
            rec.snapshot({"w": np.arange(4, dtype=np.float32)}, epoch=1)
    full = rk.load_all(root, cache=False)[1].path  # this one without a summary: read in full
    full.chmod(0o644)
    import h5py

    with h5py.File(full, "r+", locking=False) as f:
        del f.attrs["summary"]
    fresh = rk.load_all(root, cache=False)
    assert fresh[0]._summary is not None and fresh[1]._summary is None
    for record in fresh:
        # what the cache keeps of a run read from its file: every part, read on first use
        # (not at all for a run opened from its summary, which keeps the summary)
        record.cache_state()
    rk.load_all(root)  # fills the cache

    def unread(*args: object) -> None:
        raise AssertionError("read from the file, not from the cache")

    monkeypatch.setattr(rk.Record, "_read_summary", unread)
    monkeypatch.setattr(rk.Record, "_read_full", unread)
    cached = rk.load_all(root)
    assert isinstance(cached[0]._summary, LazyJSON) and "_params" not in vars(cached[0])
    for a, b in zip(fresh, cached, strict=True):
        b.params  # noqa: B018 - a run kept with its summary: params decoded on first use
        b_vars = dict(vars(b))
        if isinstance(b_vars["_summary"], LazyJSON):
            b_vars["_summary"] = dict(b_vars["_summary"])
            assert b_vars.pop("_params_text") == a._summary["params"]
        assert vars(a).keys() == b_vars.keys()
        for name in vars(a):
            if name not in ("_h5", "_walked"):  # the safety checks' count, not the file's
                assert _state_equal(vars(a)[name], b_vars[name]), name


def test_damaged_cache_lines_are_dropped_and_the_runs_read_from_their_files(root, tmp_path, pd):
    fresh = load_all(root, cache=False).to_dataframe()
    load_all(root)  # fills the cache
    (cache_file,) = (tmp_path / "cache").glob("headers-*.jsonl")
    lines = cache_file.read_bytes().split(b"\n")
    assert len(lines) == 1 + len(fresh)
    # one run's line changed (a value of its summary), another cut short (a torn write)
    lines[1] = lines[1].replace(b'"final": ', b'"final": 9', 1)
    lines[2] = lines[2][: len(lines[2]) // 2]
    cache_file.write_bytes(b"\n".join(lines))
    pd.testing.assert_frame_equal(fresh, load_all(root).to_dataframe())
    # the file was written again without them, and then holds every run
    assert len(cache_file.read_bytes().split(b"\n")) == 1 + len(fresh)
    pd.testing.assert_frame_equal(fresh, load_all(root).to_dataframe())
