"""The run summary: written at close, read by load_all without reading the header."""

from __future__ import annotations

import json
import math
import pathlib

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.record import Record
from tests.support import require


def make_run(root: pathlib.Path, **params: object) -> rk.Recorder:
    rec = rk.Recorder(root, experiment="e", params=params, system=False)
    for epoch in range(5):
        rec.log({"loss": [3.0, 1.0, float("nan"), 2.0, 1.5][epoch], "val/acc": epoch / 10},
                epoch=epoch)
        if epoch % 2 == 0:
            rec.log({"sparse": float(epoch)}, epoch=epoch)
        rec.snapshot({"w": np.full(2, epoch)}, epoch=epoch)
        rec.commit()
    return rec


def test_summary_attribute_matches_the_history(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    with h5py.File(rec.path, "r", locking=False) as f:
        summary = json.loads(f.attrs["summary"])
    assert summary["fields"]["status"] == "completed"
    assert summary["fields"]["run_id"] == rec.run_id
    assert json.loads(summary["params"]) == {"lr": 0.1}
    loss = summary["metrics"]["loss"]
    assert (loss["count"], loss["final"], loss["min"], loss["min_epoch"]) == (5, 1.5, 1.0, 1)
    assert (loss["max"], loss["max_epoch"]) == (3.0, 0)
    assert summary["metrics"]["sparse"]["count"] == 3
    assert summary["epochs"] == 5 and summary["snapshots"] == 5


def test_lazy_record_equals_full_record(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1, opt={"name": "adam"})
    rec.save()
    lazy, full = Record(rec.path, lazy=True), Record(rec.path)
    assert lazy._summary is not None and "_history" not in vars(lazy)
    for field in ("run_id", "name", "experiment", "status", "created", "params",
                  "params_hash", "unserialisable_params", "epoch_count"):
        assert getattr(lazy, field) == getattr(full, field), field
    assert lazy.metric_summaries() == full.metric_summaries()
    # the rest is read on first use, with every safety check
    assert lazy.history["val/acc"].tolist() == full.history["val/acc"].tolist()
    assert lazy.snapshot_epochs == [0, 1, 2, 3, 4]
    assert lazy.weights()["w"].tolist() == [4, 4]


def test_load_all_table_from_summaries(tmp_path: pathlib.Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    require("pandas", "analysis")
    monkeypatch.setenv("RECORDKIT_CACHE", "0")
    ids = []
    for lr in (0.1, 0.2):
        rec = make_run(tmp_path, lr=lr)
        ids.append(rec.save())
    live = make_run(tmp_path, lr=0.3)  # still running: read in full
    frame = rk.load_all(tmp_path).to_dataframe()
    assert frame["run_id"].tolist() == [*ids, live.run_id]
    assert frame["lr"].tolist() == [0.1, 0.2, 0.3]
    assert frame["status"].tolist() == ["completed", "completed", "running"]
    assert frame["loss.final"].tolist() == [1.5, 1.5, 1.5]
    assert frame["loss.best"].tolist() == [1.0, 1.0, 1.0]
    assert frame["loss.best_epoch"].tolist() == [1, 1, 1]
    assert frame["val/acc.best"].tolist() == [0.4, 0.4, 0.4]  # accuracy: max
    assert frame["epochs"].tolist() == [5, 5, 5]
    live.close()


def test_resume_drops_the_stale_summary(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    resumed = rk.Recorder(tmp_path, resume=rec.run_id)
    with h5py.File(rec.path, "r", locking=False) as f:
        assert "summary" not in f.attrs
    resumed.log({"loss": 0.5}, epoch=5)
    resumed.save()
    lazy = Record(rec.path, lazy=True)
    assert lazy.metric_summaries()["loss"]["final"] == 0.5
    assert lazy.epoch_count == 6


def test_metric_without_finite_values(tmp_path: pathlib.Path) -> None:
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.log({"m": float("nan")}, epoch=0)
    stats = Record(rec.path, lazy=True).metric_summaries()["m"]
    assert stats["min"] is None and stats["max"] is None and math.isnan(stats["final"])
