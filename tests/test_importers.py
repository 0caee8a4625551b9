"""Importers of the older tools' files: researcher JSON and Record mongoexport documents.

The fixtures follow the real layouts: researcher's ``save_experiment`` (params at the top
level with ``hash``, ``timestamp`` "%Y-%m-%d_%H:%M:%S" and ``observations``, or the older
``results: {general_results, fold_results}``), and the Record tool's README example
document (system info at the top level, ``models`` with params/losses/color/label)
as mongoexport writes it (``{"$oid": ...}``, canonical ``{"$numberDouble": ...}``).
"""

from __future__ import annotations

import datetime as dt
import json
import math

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.errors import ImportFormatError, RecordNotFoundError
from recordkit.importers import (
    import_record,
    import_researcher,
    read_record_documents,
    record_models,
)
from recordkit.importing import imported_keys as _imported_keys

UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))


CURRENT = {  # researcher >= 0.1: "observations", with folds and a single value
    "title": "deep-adam-relu", "activation_function": "relu", "depth": 256, "lr": 0.001,
    "hash": "eebb49b9d1487396dd6c0e5271cc3083", "timestamp": "2020-12-10_00:01:04",
    "duration": 12.5,
    "observations": {
        "loss": [0.36, 0.17, 0.12],
        "val_accuracy": [0.94, 0.96, 0.97],
        "auc": [[0.6, 0.7], [0.8, 0.9], [0.7, 0.8]],   # three folds, two epochs each
        "test_f1": 0.81,                                 # a single value
        "notes": "converged",                            # not a number: kept, not logged
    },
}
OLDER = {  # researcher's older "results" layout, no hash in the file (only in its name)
    "title": "test", "experiment": "linear_reg", "folds": 3, "metrics": ["mse"],
    "timestamp": "2020-07-11_12:48:55",
    "results": {
        "fold_results": [{"mse": [0.45, 0.78]}, {"mse": [0.89, 0.11]}, {"mse": [0.33, 0.21]}],
        "general_results": {"flange_loss": 0.44, "accuracy": 0.87},
    },
}
EMPTY = {"title": "cool_experiment", "learning_rate": 0.003, "batch_size": 32,
         "hash": "d45dee5991986a5b8215706f5e904b3e", "timestamp": "2020-12-12_20:01:57",
         "observations": None}


def _researcher_folder(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name, data in (("deep-adam-relu_eebb49b9d1487396dd6c0e5271cc3083", CURRENT),
                       ("test_28hbsb12bns8612vt26867156", OLDER),
                       ("cool_experiment_d45dee5991986a5b8215706f5e904b3e", EMPTY)):
        (folder / f"{name}.json").write_text(json.dumps(data, indent=4))
    return folder


def _by_name(root):
    return {r.name: r for r in rk.load_all(root)}


def test_researcher_current_layout(tmp_path):
    root = tmp_path / "records"
    report = import_researcher(_researcher_folder(tmp_path), root)
    assert len(report.imported) == 3 and not report.skipped and not report.failed
    r = _by_name(root)["deep-adam-relu"]
    assert r.experiment == "experiments"
    assert r.created == dt.datetime(2020, 12, 10, 0, 1, 4, tzinfo=UTC)
    assert r.run_id.startswith("20201210-000104")
    assert r.params == {"title": "deep-adam-relu", "activation_function": "relu",
                        "depth": 256, "lr": 0.001}
    assert r.history["loss"].tolist() == [0.36, 0.17, 0.12]
    assert r.history["auc"].tolist() == pytest.approx([0.7, 0.8])   # fold means
    assert r.history["test_f1"].tolist() == [0.81]
    assert "notes" not in r.history
    assert r.data["observations"]["auc"] == [[0.6, 0.7], [0.8, 0.9], [0.7, 0.8]]
    assert r.data["observations"]["notes"] == "converged"
    assert r.info["imported_from"]["hash"] == CURRENT["hash"]
    assert r.info["duration_seconds"] == 12.5
    assert r.system == {}
    assert r.status == "completed"


def test_researcher_older_results_layout_and_null_observations(tmp_path):
    root = tmp_path / "records"
    import_researcher(_researcher_folder(tmp_path), root, experiment="old")
    runs = _by_name(root)
    older = runs["test"]
    assert older.experiment == "old"
    assert older.data["observations"]["mse"] == [[0.45, 0.78], [0.89, 0.11], [0.33, 0.21]]
    assert older.history["mse"].tolist() == pytest.approx([(0.45 + 0.89 + 0.33) / 3,
                                                           (0.78 + 0.11 + 0.21) / 3])
    assert older.history["accuracy"].tolist() == [0.87]
    assert older.params["metrics"] == ["mse"]
    assert "results" not in older.params
    assert older.info["imported_from"]["key"] == (
        "researcher:28hbsb12bns8612vt26867156:2020-07-11_12:48:55")
    empty = runs["cool_experiment"]
    assert len(empty.history) == 0
    assert empty.params["learning_rate"] == 0.003
    assert empty.created.year == 2020


def test_researcher_import_twice_duplicates_nothing(tmp_path):
    root = tmp_path / "records"
    folder = _researcher_folder(tmp_path)
    import_researcher(folder, root)
    again = import_researcher(folder, root)
    assert again.imported == [] and len(again.skipped) == 3
    assert len(rk.load_all(root)) == 3
    # The same params recorded at another time is another run.
    later = dict(CURRENT, timestamp="2021-01-01_00:00:00")
    (folder / "later.json").write_text(json.dumps(later))
    assert len(import_researcher(folder, root).imported) == 1


def test_duplicate_check_reads_only_info_and_ignores_what_is_not_an_import(
        tmp_path, monkeypatch):
    """The check of what is already imported must not read every run of the root in
    full (it did: about 14 ms per run, so imports slowed down as the root grew)."""
    root = tmp_path / "records"
    folder = _researcher_folder(tmp_path)
    import_researcher(folder, root)
    for seed in range(3):  # runs recorded natively share the root
        rk.record_experiment({"seed": seed}, root, observations={"loss": [1.0, 0.5]})
    (root / "junk.h5").write_text("not HDF5")
    with h5py.File(root / "foreign.h5", "w") as f:  # HDF5 with an info of its own
        f["info"] = json.dumps({"imported_from": {"key": "researcher:x:y"}})

    def no_record_read(self, *args, **kwargs):
        raise AssertionError(f"the duplicate check opened {args[0]} as a Record")

    monkeypatch.setattr(rk.Record, "__init__", no_record_read)
    again = import_researcher(folder, root)
    assert again.imported == [] and len(again.skipped) == 3
    monkeypatch.undo()
    assert len(rk.load_all(root, experiment="experiments")) == 3
    # Only the info of actual records counts: the foreign file's key is not an import.
    foreign = dict(CURRENT, hash="x", timestamp="y")
    keys = _imported_keys(root)
    assert "researcher:eebb49b9d1487396dd6c0e5271cc3083:2020-12-10_00:01:04" in keys
    assert len(keys) == 3 and "researcher:x:y" not in keys
    (folder / "foreign.json").write_text(json.dumps(foreign))
    assert len(import_researcher(folder, root).imported) == 1


def test_researcher_wrong_kind(tmp_path):
    record_doc = tmp_path / "record.json"
    record_doc.write_text(json.dumps({"_id": {"$oid": "5fc2e0416f47c33abb406d28"},
                                      "python": "3.8.5"}))
    with pytest.raises(ImportFormatError, match="record.json.*not a researcher"):
        import_researcher(record_doc, tmp_path / "r")
    not_json = tmp_path / "x.json"
    not_json.write_text("{nope")
    with pytest.raises(ImportFormatError, match=r"x\.json.*not JSON"):
        import_researcher(not_json, tmp_path / "r")
    with pytest.raises(RecordNotFoundError, match="no researcher JSON"):
        (tmp_path / "empty").mkdir()
        import_researcher(tmp_path / "empty", tmp_path / "r")
    # In a folder, a stray file is reported and the rest imported.
    folder = _researcher_folder(tmp_path)
    (folder / "package.json").write_text('{"name": "not research"}')
    report = import_researcher(folder, tmp_path / "r")
    assert len(report.imported) == 3
    assert [p.rsplit("/", 1)[-1] for p, _ in report.failed] == ["package.json"]


OID = "5fc2e0416f47c33abb406d28"
MODEL_0 = {
    "params": [[[0.18339073657989502, 0.642157256603241],
                [0.40168291330337524, -0.010262012481689453],
                [-0.2690439820289612, 0.16178512573242188]],
               [0.6983875632286072, -0.49078208208084106, 0.2637331485748291]],
    "losses": [2.0151028633117676, 2.535722017288208, 1.5341914892196655],
    "color": [0.6314553138423108, 0.801809036714752, 0.04997341760055618],
    "label": "model_0",
}
SYSTEM = {"python": "3.8.5", "machine": "x86_64", "processor": "i386", "os": "posix",
          "os_name": "Darwin", "os_ver": "17.7.0", "memory": "4 GB", "storage": "112 GB",
          "user": "justin", "gpus": []}


def _record_document(oid=OID, **extra):
    return {"_id": {"$oid": oid}, **SYSTEM, "learning_rate": 0.01,
            "epochs": {"$numberInt": "10"}, "desc": "Example of how to use Record",
            "models": {"model_0": MODEL_0,
                       "model_1": dict(MODEL_0, label="model_1",
                                       losses=[1.9, {"$numberDouble": "NaN"}, 1.5])},
            **extra}


@pytest.mark.parametrize("layout", ["lines", "array"])
def test_record_documents(tmp_path, layout):
    docs = [_record_document(),
            _record_document("5fc2e0ab6f47c33abb406d29", timestamp="000123-05-04-03-02-01-2021")]
    source = tmp_path / "Nov-27-2020.json"
    source.write_text("\n".join(json.dumps(d) for d in docs) if layout == "lines"
                      else json.dumps(docs))
    root = tmp_path / "records"
    report = import_record(source, root)
    assert len(report.imported) == 2
    runs = {r.name: r for r in rk.load_all(root)}
    r = runs[OID]
    assert r.experiment == "Nov-27-2020"
    assert r.created == dt.datetime.fromtimestamp(0x5FC2E041, UTC)  # from the ObjectId
    assert runs["5fc2e0ab6f47c33abb406d29"].created == dt.datetime(2021, 1, 2, 3, 4, 5, 123,
                                                                  tzinfo=UTC)
    system = r.system
    assert {k: system[k] for k in SYSTEM} == SYSTEM
    assert system["memory_bytes"] == 4 * 2**30 and system["storage_bytes"] == 112 * 2**30
    assert r.params == {"learning_rate": 0.01, "epochs": 10,
                        "desc": "Example of how to use Record"}
    models = record_models(r)
    assert sorted(models) == ["model_0", "model_1"]
    weights = models["model_0"]["params"]
    assert [w.shape for w in weights] == [(3, 2), (3,)]
    assert weights[0].dtype == np.float32  # the numbers were float32 values
    np.testing.assert_array_equal(weights[0], np.asarray(MODEL_0["params"][0], np.float32))
    assert models["model_0"]["losses"] == MODEL_0["losses"]
    assert models["model_0"]["color"] == MODEL_0["color"]
    assert models["model_1"]["label"] == "model_1"
    assert r.history["model_0/loss"].tolist() == MODEL_0["losses"]
    loss_1 = r.history["model_1/loss"]
    assert loss_1[0] == 1.9 and math.isnan(loss_1[1])
    assert r.info["imported_from"]["id"] == OID


def test_record_import_twice_duplicates_nothing(tmp_path):
    source = tmp_path / "runs.json"
    source.write_text(json.dumps(_record_document()))
    root = tmp_path / "records"
    assert len(import_record(source, root).imported) == 1
    again = import_record(source, root)
    assert again.imported == [] and again.skipped[0][0] == OID
    assert len(rk.load_all(root)) == 1


@pytest.mark.parametrize(("content", "message"), [
    (json.dumps(CURRENT), "document 0 is not a Record document"),
    ('{"_id": 1}\n{oops', "neither a JSON array nor JSON lines"),
    ("[]", "holds no Record documents"),
])
def test_record_wrong_kind(tmp_path, content, message):
    source = tmp_path / "wrong.json"
    source.write_text(content)
    with pytest.raises(ImportFormatError, match=f"wrong.json.*{message}"):
        read_record_documents(source)


def test_record_missing_file(tmp_path):
    with pytest.raises(RecordNotFoundError, match="nope.json"):
        import_record(tmp_path / "nope.json", tmp_path / "r")
