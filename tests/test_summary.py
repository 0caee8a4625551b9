"""The run summary: written at close, read by load_all without reading the header."""

from __future__ import annotations

import json
import math
import pathlib

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.format.layout import FORMAT_VERSION
from recordkit.record import Record
from tests.support import require
from tests.support import signed_summary as signed


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
        assert not f.attrs.get("summary")  # emptied: stale once the run goes on
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


def test_metric_summaries_are_copies(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    lazy = Record(rec.path, lazy=True)
    first = lazy.metric_summaries()
    first["loss"]["final"] = -1.0
    first.pop("sparse")
    again = lazy.metric_summaries()
    assert again["loss"]["final"] == 1.5 and "sparse" in again


ATTRIBUTES = {
    "vlen string": "héllo",
    "empty string": "",
    "fixed bytes": np.bytes_(b"abc"),
    "int": 7,
    "float": 0.25,
    "nan": float("nan"),
    "bool": np.bool_(True),
    "int array": np.arange(4),
    "string array": np.array(["a", "bc"], dtype=h5py.string_dtype()),
    "compound": np.array((1, 2.5), dtype=[("a", "i4"), ("b", "f8")]),
    "array type": np.zeros((), dtype=("f4", (3,))),
    "empty": h5py.Empty("f4"),
    # (value, dtype): written with attrs.create
    "ascii vlen string": ("abc", h5py.string_dtype("ascii")),
    "non-utf-8 vlen bytes": (b"\xff\xfeok", h5py.string_dtype("utf-8")),
    "fixed utf-8 string": ("é".encode(), h5py.string_dtype("utf-8", 8)),
    "enum": (1, h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1")),
}


@pytest.mark.parametrize("name", ["x", "é / 日本"])
@pytest.mark.parametrize("kind", sorted(ATTRIBUTES))
def test_read_attr_equals_h5py(tmp_path: pathlib.Path, kind: str, name: str) -> None:
    """The low-level attribute read of the fast open returns what h5py's .attrs does."""
    from recordkit.format import attrs as fmt

    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        value = ATTRIBUTES[kind]
        for obj in (f, f.create_group("g")):
            if isinstance(value, tuple):
                obj.attrs.create(name, value[0], dtype=value[1])
            else:
                obj.attrs[name] = value
    with h5py.File(path, "r") as f:
        for obj in (f, f["g"], f.id):
            expected = (f if obj is f.id else obj).attrs.get(name)
            got = fmt.read_attr(obj, name)
            assert type(got) is type(expected), kind
            if isinstance(expected, h5py.Empty):
                assert got == expected
            else:
                np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
                assert np.asarray(got).dtype == np.asarray(expected).dtype
            assert fmt.read_attr(obj, "missing", "default") == "default"
            assert fmt.read_attr(obj, "missing") is None


def _valid_but(change: object) -> str:
    """A summary as recordkit writes it (of make_run's run), changed by *change*."""
    summary = {"format": "recordkit", "format_version": 1, "fields": {},
               "params": "{}", "unserialisable": "[]", "epochs": 5, "snapshots": 5,
               "metrics": {"loss": {"count": 5, "final": 1.5, "final_epoch": 4, "min": 1.0,
                                    "min_epoch": 1, "max": 3.0, "max_epoch": 0,
                                    "epoch_level": True}}}
    change(summary)  # type: ignore[operator]
    return signed(summary)


FORGED_SUMMARIES = {
    "too long": _valid_but(lambda s: s.update(pad="x" * 70_000)),
    "not a string": np.int64(3),
    "not JSON": "{not json",
    "no metrics": signed({"fields": {}, "params": "{}"}),
    "metric not a mapping": _valid_but(lambda s: s["metrics"].update(loss=5)),
    "final as text": _valid_but(lambda s: s["metrics"]["loss"].update(final="1.5")),
    "count missing": _valid_but(lambda s: s["metrics"]["loss"].pop("count")),
    "epoch_level not a bool": _valid_but(
        lambda s: s["metrics"]["loss"].update(epoch_level=1)),
    "epochs as a bool": _valid_but(lambda s: s.update(epochs=True)),
    "params not text": _valid_but(lambda s: s.update(params={"lr": 0.1})),
    "params nested 20,000 deep": _valid_but(
        lambda s: s.update(params="[" * 20_000 + "]" * 20_000)),
    "summary nested 20,000 deep": "[" * 20_000 + "]" * 20_000,
}


@pytest.mark.parametrize("case", sorted(FORGED_SUMMARIES))
def test_oversized_or_odd_summary_is_read_in_full(tmp_path: pathlib.Path, case: str) -> None:
    """A summary recordkit would not have written is ignored: the run is opened from its
    full header, with every check, and a table of many runs shows its real values."""
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    assert Record(rec.path, lazy=True)._summary is not None  # the genuine one is used
    with h5py.File(rec.path, "r+", locking=False) as f:
        f.attrs["summary"] = FORGED_SUMMARIES[case]
    lazy = Record(rec.path, lazy=True)
    # opened from its root (as load() opens it): the rest on first use, with its checks
    assert lazy._summary is None and "_format_version" in vars(lazy)
    assert lazy.metric_summaries()["loss"]["final"] == 1.5
    records = rk.load_all(tmp_path, cache=False)
    assert len(records) == 1 and not records.skipped
    assert records[0].metric_summaries()["loss"]["min_epoch"] == 1


def test_summary_at_the_size_limit_is_used(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    with h5py.File(rec.path, "r", locking=False) as f:
        genuine = json.loads(f.attrs["summary"])
    text = signed({**genuine, "pad": ""})
    padded = signed({**genuine, "pad": "x" * (60_000 - len(text))})
    assert len(padded) == 60_000
    with h5py.File(rec.path, "r+", locking=False) as f:
        f.attrs["summary"] = padded
    assert Record(rec.path, lazy=True)._summary is not None
    with h5py.File(rec.path, "r+", locking=False) as f:
        f.attrs["summary"] = signed({**genuine, "pad": "x" * (60_001 - len(text))})
    assert Record(rec.path, lazy=True)._summary is None


def test_verify_reports_a_summary_that_disagrees_with_the_data(
        tmp_path: pathlib.Path) -> None:
    from recordkit.verify import verify

    rec = make_run(tmp_path, lr=0.1)
    rec.log({"diverged": float("nan")}, epoch=5)  # a final value of NaN
    rec.save()
    assert verify(rec.path, isolate=False).ok  # NaN compares equal to itself here
    _rewrite_summary(rec.path, lambda s: s["metrics"]["loss"].update(final=0.25))
    report = verify(rec.path, isolate=False)
    assert not report.ok
    assert any("summary" in p and "metrics" in p for p in report.problems), report.problems
    _rewrite_summary(rec.path, lambda s: s["metrics"]["loss"].update(final=1.5))
    assert verify(rec.path, isolate=False).ok
    _rewrite_summary(rec.path, lambda s: s.update(format_version=FORMAT_VERSION + 1))
    report = verify(rec.path, isolate=False)
    assert any("format_version" in p for p in report.problems), report.problems
    _rewrite_summary(rec.path, lambda s: [s.pop("format"), s.pop("format_version")])
    assert verify(rec.path, isolate=False).ok  # a summary from before the format copy


def _rewrite_summary(path: pathlib.Path, change: object) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        summary = json.loads(f.attrs["summary"])
        change(summary)  # type: ignore[operator]
        f.attrs["summary"] = signed(summary)


def test_summary_repeats_the_format(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    with h5py.File(rec.path, "r", locking=False) as f:
        summary = json.loads(f.attrs["summary"])
        assert (summary["format"], summary["format_version"]) == (
            f.attrs["format"], f.attrs["format_version"]) == ("recordkit", FORMAT_VERSION)


def test_summary_without_the_format_reads_the_root_attributes(
        tmp_path: pathlib.Path) -> None:
    """Summaries written before they repeated the format still open lazily; a file whose
    root says it is not a record is then read in full, which says so."""
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    _rewrite_summary(rec.path, lambda s: [s.pop("format"), s.pop("format_version")])
    assert Record(rec.path, lazy=True)._summary is not None
    with h5py.File(rec.path, "r+", locking=False) as f:
        f.attrs["format"] = "other"
    with pytest.raises(rk.errors.NotARecordError, match="not a recordkit record"):
        Record(rec.path, lazy=True)


def test_summary_of_a_newer_format_is_not_trusted(tmp_path: pathlib.Path) -> None:
    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    _rewrite_summary(rec.path, lambda s: s.update(format_version=FORMAT_VERSION + 1))
    lazy = Record(rec.path, lazy=True)  # the root says this version: read in full, fine
    assert lazy._summary is None and lazy.history["loss"][-1] == 1.5
    with h5py.File(rec.path, "r+", locking=False) as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(rk.errors.NotARecordError, match="upgrade recordkit"):
        Record(rec.path, lazy=True)


def test_summary_checksum(tmp_path: pathlib.Path) -> None:
    """A summary's text carries its own sha256: a changed digit (the global heap has no
    HDF5 checksum) sends the run to the full read, which shows its real values, and
    verify reports it. A summary from before checksums (no format, no sha256) is used."""
    from recordkit.format import summary as fmt
    from recordkit.verify import verify

    rec = make_run(tmp_path, lr=0.1)
    rec.save()
    with h5py.File(rec.path, "r", locking=False) as f:
        text = f.attrs["summary"]
    assert fmt.summary_checksum_ok(text) is True
    assert '"final": 1.5,' in text
    damaged = text.replace('"final": 1.5,', '"final": 1.7,')
    assert fmt.summary_checksum_ok(damaged) is False
    cases = {
        "a digit changed": (damaged, False),
        "its checksum lost": (text[:text.rindex(', "sha256"')] + "}", False),
        "written before checksums": (json.dumps(
            {k: v for k, v in json.loads(text).items()
             if k not in ("sha256", "format", "format_version")}), True),
    }
    for case, (forged, used) in cases.items():
        with h5py.File(rec.path, "r+", locking=False) as f:
            f.attrs["summary"] = forged
        lazy = Record(rec.path, lazy=True)
        assert (lazy._summary is not None) == used, case
        assert lazy.metric_summaries()["loss"]["final"] == 1.5, case
        table = rk.load_all(tmp_path, cache=False)
        assert table[0].metric_summaries()["loss"]["final"] == 1.5, case
    for forged, used in cases.values():
        with h5py.File(rec.path, "r+", locking=False) as f:
            f.attrs["summary"] = forged
        report = verify(rec.path, isolate=False)
        assert report.ok == used, report.problems
        if not used:
            assert any("sha256" in p for p in report.problems), report.problems
