"""The recordkit command line: a few cases through the real console script and
``python -m recordkit`` in subprocesses, the rest through ``cli.main`` in this process."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit import cli
from recordkit.format import header
from recordkit.record import Record
from recordkit.recordset import RecordSet
from tests.support import require, signed_summary

LOSSES = {0.1: [1.0, 0.5, 0.25], 0.01: [1.0, 0.9, 0.8]}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def pd():
    """plot and export need the analysis extra; ls, show, import and verify do not (the
    core tox env runs those tests without pandas)."""
    require("matplotlib", "analysis")
    return require("pandas", "analysis")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "records"
    for lr, losses in LOSSES.items():
        with rk.Recorder(root, experiment="sweep", name=f"lr{lr}",
                         params={"lr": lr, "width": 8}, system=False) as rec:
            for epoch, loss in enumerate(losses):
                rec.log({"loss": loss, "val_accuracy": 1 - loss}, epoch=epoch)
    return root


def run(*argv, **env):
    environment = dict(os.environ, **env)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120,
                          env=environment)


# --- subprocesses ------------------------------------------------------------------------


def test_console_script_and_module(root):
    script = shutil.which("recordkit") or pytest.fail("the recordkit console script is "
                                                      "not installed (pip install -e .)")
    listed = run(script, "ls", str(root))
    assert listed.returncode == 0, listed.stderr
    assert "lr0.1" in listed.stdout and "lr0.01" in listed.stdout
    module = run(sys.executable, "-m", "recordkit", "ls", str(root), "-e", "sweep")
    assert module.returncode == 0 and module.stdout == listed.stdout
    helped = run(script, "import", "record", "--help")
    assert helped.returncode == 0 and "mongoexport" in helped.stdout


@pytest.mark.parametrize(("args", "named"), [
    (["ls", "{tmp}/nowhere"], "nowhere"),
    (["ls", "{tmp}/not-a-record.h5"], "not-a-record.h5"),
    (["show", "{tmp}/not-a-record.h5"], "not-a-record.h5"),
    (["import", "researcher", "{tmp}/not-a-record.h5", "--root", "{tmp}/r"],
     "not-a-record.h5"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, named):
    (tmp_path / "not-a-record.h5").write_text("plain text")
    result = run(sys.executable, "-m", "recordkit",
                 *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("recordkit: ")


# --- in process --------------------------------------------------------------------------


def test_ls_is_an_aligned_table(root, capsys):
    assert cli.main(["ls", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    # width is the same in every run, so lr is the key param shown
    assert header == ["id", "name", "status", "epochs", "lr", "loss", "val_accuracy"]
    runs = rk.load_all(root)
    for line, record in zip(lines[1:], runs):
        cells = line.split()
        assert cells[:4] == [record.run_id, record.name, "completed", "3"]
        assert float(cells[4]) == record.params["lr"]
        assert float(cells[5]) == pytest.approx(LOSSES[record.params["lr"]][-1])
    starts = {line.index(value) for line, value in zip(lines, ["loss", "0.25", "0.8"])}
    assert len(starts) == 1  # the loss column starts at one offset in every row


def test_ls_empty_folder_and_skipped_files(tmp_path, root, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["ls", str(tmp_path / "empty")]) == 1
    assert "no records under" in capsys.readouterr().err
    (root / "sweep" / "junk.h5").write_text("junk")
    assert cli.main(["ls", str(root)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "junk.h5" in captured.err
    assert len(captured.out.splitlines()) == 3


def _sweep_with_odd_metrics(root):
    """Runs whose metrics hold NaN, inf, step-level rows, and metrics only some runs log."""
    histories = [
        {"loss": [1.0, 0.5, float("nan")], "val_accuracy": [0.1, 0.2, 0.3]},
        {"loss": [1.0, float("inf")], "val_accuracy": [0.5, 0.25], "extra": [7.0]},
        {"loss": [2.0, 1.5, 1.25, 1.125], "lr": [0.1, 0.1, 0.01, 0.01]},
    ]
    for i, history in enumerate(histories):
        with rk.Recorder(root, experiment="sweep", name=f"run{i}",
                         params={"seed": i, "width": 8}, system=False) as rec:
            for metric, values in history.items():
                for epoch, value in enumerate(values):
                    rec.log({metric: value}, epoch=epoch)
            rec.log({"step_loss": 0.5}, epoch=0, step=1)
            rec.log({"step_loss": 0.25}, epoch=0, step=2)
    with rk.Recorder(root, experiment="sweep", name="crashed", params={"seed": 9},
                     system=False) as rec:
        rec.log({"loss": 3.0}, epoch=0)
        rec.close(status="failed")


def test_ls_reads_no_history_and_prints_what_full_reads_give(tmp_path, monkeypatch, capsys):
    """A finished run's table row comes from its summary: ``ls`` over many runs must not
    read every run in full (it did: 300 runs took 4-7 s instead of under 1 s)."""
    root = tmp_path / "records"
    _sweep_with_odd_metrics(root)
    full_reads = []
    read_full = Record._read_full

    def counting(self):
        full_reads.append(self.path.name)
        read_full(self)

    monkeypatch.setattr(Record, "_read_full", counting)
    assert cli.main(["ls", str(root), "--metrics", "6"]) == 0
    lazy = capsys.readouterr().out
    assert full_reads == []
    # The same table from records read in full (history and all): identical text.
    monkeypatch.setattr(cli, "load_all", lambda root, experiment=None, progress=False:
                        RecordSet(rk.load(p) for p in sorted(root.rglob("*.h5"))))
    assert cli.main(["ls", str(root), "--metrics", "6"]) == 0
    assert capsys.readouterr().out == lazy
    assert len(full_reads) == 4
    lines = lazy.splitlines()
    # the training loss, the validation metrics, the others by how many runs have them,
    # the learning rate last
    assert lines[0].split() == ["id", "name", "status", "epochs", "seed", "loss",
                                "val_accuracy", "step_loss", "extra", "lr"]
    cells = [line.split() for line in lines[1:]]
    assert [c[1:4] for c in cells] == [["run0", "completed", "3"], ["run1", "completed", "2"],
                                       ["run2", "completed", "4"], ["crashed", "failed", "1"]]
    assert cells[0][4:] == ["0", "nan", "0.3", "0.25"]  # no extra, no lr: empty cells
    assert cells[1][4:] == ["1", "inf", "0.25", "0.25", "7"]


def test_show(root, capsys):
    record = rk.load_all(root)[0]
    assert cli.main(["show", record.run_id[:22], "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert record.run_id in out and "lr = 0.1" in out and "loss: 3 values" in out


def _only_format_attribute(root):
    """An HDF5 file whose one root attribute says it is a record."""
    path = root / "sweep" / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "recordkit"
    return path


def _set_created(path, where, value):
    """Change ``created`` in the root attribute or in the summary of a finished run."""
    path.chmod(0o644)
    with h5py.File(path, "r+") as f:
        if where == "attribute":
            f.attrs["created"] = value
        else:
            summary = json.loads(f.attrs["summary"])
            summary["fields"]["created"] = value
            f.attrs["summary"] = signed_summary(summary)


def _one_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recordkit: "), err
    assert all(word in lines[0] for word in words), (words, lines[0])


@pytest.mark.parametrize("command", ["show", "export"])
def test_a_file_with_only_the_format_attribute_is_one_line_error(root, tmp_path, capsys,
                                                                 command):
    path = _only_format_attribute(root)
    for other in (root / "sweep").glob("2*.h5"):
        other.unlink()
    argv = ["show", str(path)] if command == "show" else [
        "export", str(root), "-o", str(tmp_path / "x.csv")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "foreign.h5" in err and "'format_version'" in err


def test_ls_skips_a_file_with_only_the_format_attribute(root, capsys):
    path = _only_format_attribute(root)
    assert cli.main(["ls", str(root)]) == 0
    captured = capsys.readouterr()
    _one_line(captured.err, "skipped", str(path), "'format_version'")
    rows = captured.out.splitlines()[1:]
    assert [row.split()[1] for row in rows] == ["lr0.1", "lr0.01"]  # no blank row


@pytest.mark.parametrize("where", ["attribute", "summary"])
def test_a_created_time_that_is_not_iso_is_named_not_a_traceback(root, tmp_path, capsys,
                                                                where, pd):
    damaged, intact = sorted((root / "sweep").glob("*.h5"))
    _set_created(damaged, where, "yesterday")
    assert cli.main(["show", str(damaged)]) == (1 if where == "attribute" else 0)
    if where == "attribute":
        _one_line(capsys.readouterr().err, str(damaged), "'created'", "'yesterday'")
    else:  # a full read uses the root attributes, which are intact
        assert "created    20" in capsys.readouterr().out
        # ls and export read the summary: the run is left out, with a line saying why
        for argv in (["ls", str(root)], ["export", str(root), "-o", str(tmp_path / "x.csv")]):
            assert cli.main(argv) == 0
            captured = capsys.readouterr()
            _one_line(captured.err, "skipped", str(damaged), "'created'", "'yesterday'")
            assert damaged.stem not in captured.out
        assert pd.read_csv(tmp_path / "x.csv")["run_id"].tolist() == [intact.stem]


def test_an_unexpected_error_is_one_line_not_a_traceback(root, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("something nobody checked\nsecond line")

    monkeypatch.setattr(cli, "load", broken)
    assert cli.main(["show", "x.h5", "--root", str(root)]) == 1
    _one_line(capsys.readouterr().err, "recordkit show x.h5",
              "(ValueError: something nobody checked)")


def test_repair_of_a_missing_file_says_so(tmp_path, root, capsys):
    missing = tmp_path / "nonexistent.h5"
    assert cli.main(["repair", str(missing)]) == 1
    captured = capsys.readouterr()
    _one_line(captured.err, str(missing), "no such file")
    assert "superblock" not in captured.err + captured.out


@pytest.mark.usefixtures("pd")
def test_plot_writes_learning_curves(root, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(root), "--metric", "loss", "-m", "val_accuracy",
                     "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 runs" in capsys.readouterr().out
    final = tmp_path / "final.svg"
    assert cli.main(["plot", str(root), "-m", "loss", "--kind", "final", "--by", "lr",
                     "-o", str(final)]) == 0
    assert "lr=0.1" in final.read_text()


@pytest.mark.parametrize("argv", [
    ["plot", "{root}", "-m", "nope", "-o", "{tmp}/x.png"],
    ["plot", "{root}", "-m", "loss", "-o", "{tmp}/missing/x.png"],
    ["export", "{root}", "-o", "{tmp}/x.xlsx"],
])
@pytest.mark.usefixtures("pd")
def test_plot_and_export_errors(root, tmp_path, capsys, argv):
    assert cli.main([a.format(root=root, tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recordkit: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export(root, tmp_path, suffix, pd):
    out = tmp_path / f"runs{suffix}"
    assert cli.main(["export", str(root), "-o", str(out)]) == 0
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    expected = rk.load_all(root).to_dataframe()
    assert frame["run_id"].tolist() == expected["run_id"].tolist()
    assert frame["loss.final"].tolist() == [0.25, 0.8]
    assert frame["val_accuracy.best_epoch"].tolist() == [2, 2]
    assert frame["lr"].tolist() == [0.1, 0.01]


def test_export_parquet_with_a_param_of_mixed_types(tmp_path, pd):
    root = tmp_path / "r"
    rk.record_experiment({"width": 8}, root)
    rk.record_experiment({"width": "auto"}, root)
    out = tmp_path / "mixed.parquet"
    assert cli.main(["export", str(root), "-o", str(out)]) == 0
    assert pd.read_parquet(out)["width"].tolist() == ["8", "auto"]


def test_import_researcher_and_record(tmp_path, capsys):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "a_1234.json").write_text(json.dumps({
        "title": "a", "lr": 0.1, "hash": "1234", "timestamp": "2020-12-10_00:01:04",
        "observations": {"loss": [0.5, 0.25]}}))
    root = tmp_path / "records"
    assert cli.main(["import", "researcher", str(folder), "--root", str(root)]) == 0
    assert "imported 1 run(s)" in capsys.readouterr().out
    assert cli.main(["import", "researcher", str(folder), "--root", str(root)]) == 0
    assert "imported 0 run(s)" in capsys.readouterr().out
    source = tmp_path / "runs.json"
    source.write_text(json.dumps({"_id": {"$oid": "5fc2e0416f47c33abb406d28"},
                                  "python": "3.8.5", "lr": 0.3}))
    assert cli.main(["import", "record", str(source), "--root", str(root),
                     "-e", "old"]) == 0
    runs = {r.experiment: r for r in rk.load_all(root)}
    assert runs["experiments"].history["loss"].tolist() == [0.5, 0.25]
    assert runs["old"].system["python"] == "3.8.5" and runs["old"].params == {"lr": 0.3}


def test_import_of_the_wrong_kind(tmp_path, capsys):
    source = tmp_path / "runs.json"
    source.write_text(json.dumps({"title": "a", "hash": "1", "timestamp": "x",
                                  "observations": {}}))
    assert cli.main(["import", "record", str(source), "--root", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "runs.json" in err and "not a Record document" in err


@pytest.mark.parametrize("command", [
    [], ["ls"], ["show"], ["plot"], ["export"], ["import"], ["import", "researcher"],
    ["import", "record"], ["verify"],
])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: recordkit" in capsys.readouterr().out


# --- a stranger's record: terminal and spreadsheet injection (issue 17 item 8) ------------

#: Clears the screen, colours, fakes a table row with a newline and a carriage return,
#: rings the bell, reverses what follows (bidi override and isolate), a C1 CSI and DEL.
HOSTILE = ("evil\x1b[2J\x1b[31mred\x1b[0m\nfake-run  completed  99\r\x07"
           "\u202egnp.exe\u2066\x9b31m\x7f")
UNSAFE = ["\x1b", "\r", "\x07", "\u202e", "\u2066", "\x9b", "\x7f"]


def _hostile_run(root):
    """A run whose name, param name and value, metric and tensor names are all HOSTILE."""
    with rk.Recorder(root, experiment="x", name=HOSTILE, system=False,
                     params={f"k{HOSTILE}": HOSTILE, "lr": 0.1}) as rec:
        rec.log({f"loss{HOSTILE}": 1.0}, epoch=0)
        rec.snapshot({f"w{HOSTILE}": np.zeros(2)}, epoch=0)
    return rec.path


def _safe(text, *escapes):
    """No control or bidi character in *text*; each of *escapes* shown instead."""
    assert not [c for c in UNSAFE if c in text], repr(text)
    assert all(e in text for e in escapes), (escapes, text)


def test_ls_and_show_escape_a_strangers_names(tmp_path, capsys):
    root = tmp_path / "records"
    path = _hostile_run(root)
    assert cli.main(["ls", str(root)]) == 0
    captured = capsys.readouterr()
    _safe(captured.out, "\\x1b[2J", "\\x0afake-run")  # cells are cut at 24 characters
    assert len(captured.out.splitlines()) == 2  # the header and one row: no fake row
    assert captured.out.splitlines()[1].startswith(path.stem + "  ")
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    _safe(out)
    lines = out.splitlines()
    assert ("name       evil\\x1b[2J\\x1b[31mred\\x1b[0m\\x0afake-run  completed  99\\x0d\\x07"
            "\\u202egnp.exe\\u2066\\x9b31m\\x7f") in lines
    assert any(line.startswith("  k" + "evil\\x1b[2J") for line in lines)  # a param name
    assert any(line.startswith("  loss" + "evil\\x1b[2J") for line in lines)  # a metric
    assert any(line.startswith("  w" + "evil\\x1b[2J") for line in lines)  # a tensor
    assert not any(line.startswith("fake-run") for line in lines)


def _forge_run_id(path, run_id):
    """Give a finished record another run id, in its root attribute and its summary (and
    its header checksum, where the format has one)."""
    path.chmod(0o644)
    with h5py.File(path, "r+") as f:
        f.attrs["run_id"] = run_id
        summary = json.loads(f.attrs["summary"])
        summary["fields"]["run_id"] = run_id
        f.attrs["summary"] = signed_summary(summary)
        sign = getattr(header, "sign_header", None)
        if sign is not None:
            sign(f)


@pytest.mark.parametrize("forged", ["../../x", "../../x\x1b[2J", "a/b"])
def test_a_run_id_that_is_not_one_is_shown_escaped_and_marked(root, capsys, forged):
    path = sorted((root / "sweep").glob("*.h5"))[0]
    _forge_run_id(path, forged)
    assert rk.load(path).run_id == forged  # loaded all the same: a user may rename files
    assert cli.main(["ls", str(root)]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [path.stem + "!", rows[1].split()[0]]
    assert "../" not in captured.out and "\x1b" not in captured.out + captured.err
    note = captured.err.strip()
    assert len(note.splitlines()) == 1 and str(path) in note, note
    assert f"its run id '{forged.replace(chr(27), '[ESC]')}'".replace("[ESC]", "\\x1b") in note
    assert "is not a run id recordkit writes" in note
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    run_line = out.splitlines()[0]
    assert run_line.startswith("run        '") and "! this run id is not a run id" in run_line
    assert "\x1b" not in out


def test_a_renamed_record_says_its_run_id_is_not_its_file_name(root, capsys):
    first, second = sorted((root / "sweep").glob("*.h5"))
    renamed = first.rename(first.with_name("best.h5"))
    assert cli.main(["ls", str(root)]) == 0
    captured = capsys.readouterr()
    cells = [row.split()[0] for row in captured.out.splitlines()[1:]]
    assert cells == ["best!", second.stem]
    assert f"its run id '{first.stem}' does not match the file name 'best.h5'" in captured.err
    assert cli.main(["show", str(renamed)]) == 0
    assert (f"run        '{first.stem}'  ! this run id does not match the file name 'best.h5'"
            in capsys.readouterr().out)
    assert cli.main(["show", str(second)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"run        {second.stem}"


def test_export_escapes_formulas_and_keeps_numbers(tmp_path, pd):
    root = tmp_path / "records"
    formulas = {"eq": "=1+2", "plus": "+1+2", "at": "@SUM(A1:A2)", "tab": "\t=1",
                "cr": "\r=1", "dash": "-2+3", "cmd": "=cmd|' /C calc'!A0"}
    numbers = {"neg": -5, "negf": -0.5, "negtext": "-5", "exp": "-1e-3", "plain": "adam"}
    params = {**formulas, **numbers, '=HYPERLINK("http://x")': 1, "mixed": -8}
    for name, given in (("=2+3", params), ("plain", {"mixed": "=x"})):
        with rk.Recorder(root, name=name, params=given, system=False) as rec:
            rec.log({"loss": -1.5}, epoch=0)
    out = tmp_path / "runs.csv"
    assert cli.main(["export", str(root), "-o", str(out)]) == 0
    with out.open(newline="", encoding="utf-8") as handle:
        head, first, second = list(csv.reader(handle))
    cells = dict(zip(head, first))
    for key, value in formulas.items():
        assert cells[key] == "'" + value, key
    assert cells["name"] == "'=2+3" and dict(zip(head, second))["name"] == "plain"
    assert "'=HYPERLINK(\"http://x\")" in head  # a column name is a cell too
    # the second run has none of these: -5 is in a float column
    assert [cells[k] for k in ("neg", "negf", "negtext", "exp", "plain")] == [
        "-5.0", "-0.5", "-5", "-1e-3", "adam"]
    assert cells["mixed"] == "-8" and dict(zip(head, second))["mixed"] == "'=x"
    assert cells["loss.final"] == "-1.5"  # a negative number is a number, not a formula
    frame = pd.read_csv(out)
    assert frame["neg"].iloc[0] == -5 and frame["loss.final"].tolist() == [-1.5, -1.5]


def _two_experiments(root):
    """Two experiments; a param named epochs; captured facts; a resumed run."""
    for experiment, lr in (("a", 0.1), ("b", 0.01)):
        with rk.Recorder(root, experiment=experiment, name=f"run-{experiment}",
                         params={"epochs": 3, "width": 8 if lr > 0.05 else 16},
                         system=False) as rec:
            rec.set_info({"optimizer": {"class": "SGD", "learning_rate": lr},
                          "fit": {"batch_size": 32, "epochs": 3}})
            for epoch in range(2):
                rec.log({"val_loss": 1.0 / (epoch + 1), "loss": 2.0 / (epoch + 1),
                         "epoch_time": 0.5}, epoch=epoch)
    path = rec.path
    with rk.Recorder(root, experiment="b", resume=path, system=False) as rec:
        rec.log({"val_loss": 0.25, "loss": 0.5, "epoch_time": 0.5}, epoch=2)
    return path


def test_ls_of_several_experiments_with_chosen_columns(tmp_path, capsys):
    root = tmp_path / "records"
    _two_experiments(root)
    assert cli.main(["ls", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:5] == ["id", "experiment", "name", "status", "epochs"]
    assert header.count("epochs") == 1  # the param `epochs` is not a second column
    assert {"width", "lr"} <= set(header)
    assert header[-3:] == ["loss", "val_loss", "epoch_time"]  # training loss first, time last
    assert [line.split()[1] for line in lines[1:]] == ["a", "b"]
    assert cli.main(["ls", str(root), "--param", "optimizer", "--param", "lr",
                     "--metric", "epoch_time"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[5:] == ["optimizer", "lr", "epoch_time"]
    assert [line.split()[5:] for line in lines[1:]] == [["SGD", "0.1", "0.5"],
                                                         ["SGD", "0.01", "0.5"]]
    assert cli.main(["ls", str(root), "--param", "learning_rat"]) == 1
    _one_line(capsys.readouterr().err, "'learning_rat'", "lr")


def test_show_prints_the_captured_facts_and_the_restarts(tmp_path, capsys):
    path = _two_experiments(tmp_path / "records")
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    captured = out[out.index("\ncaptured\n"):out.index("\nrestarts")]
    assert "  optimizer = 'SGD'" in captured and "  lr = 0.01" in captured
    assert "  batch_size = 32" in captured and "epochs" not in captured  # a param already
    assert "restarts 1" in out and "previous_status='completed'" in out


@pytest.fixture
def moving(tmp_path):
    """A run of four snapshots (epochs 0, 2, 3, 5) of a dense layer and a conv kernel."""
    rng = np.random.default_rng(7)
    state = {"fc.weight": rng.normal(size=(4, 6)).astype(np.float32),
             "fc.bias": rng.normal(size=4).astype(np.float32),
             "conv.weight": rng.normal(size=(3, 2, 2, 2)).astype(np.float32)}
    snapshots = {}
    with rk.Recorder(tmp_path / "records", experiment="w", name="mover",
                     system=False) as rec:
        for epoch in (0, 2, 3, 5):
            state = {k: v + rng.normal(size=v.shape).astype(np.float32) * 0.3
                     for k, v in state.items()}
            snapshots[epoch] = state
            rec.snapshot(state, epoch=epoch)
    return rec.path, snapshots


def _cells(value: float) -> str:
    return f"{value:.4g}"


def test_weights_prints_movement_and_spectral_norm_per_layer(moving, tmp_path, capsys, pd):
    path, snapshots = moving
    figure = tmp_path / "weights.svg"
    assert cli.main(["weights", str(path), "--plot", str(figure)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mover (") and "4 snapshots, epochs 0..5" in lines[0]
    assert lines[1].split() == ["layer", "parameters", "moved", "0->5", "relative", "moved",
                                "3->5", "spectral", "norm", "@5"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:4]}
    assert lines[4] == f"wrote {figure}"

    def flat(epoch, names):
        return np.concatenate([snapshots[epoch][n].astype(np.float64).ravel() for n in names])

    for layer, names in {"fc": ["fc.weight", "fc.bias"], "conv": ["conv.weight"]}.items():
        moved = np.linalg.norm(flat(5, names) - flat(0, names))
        recent = np.linalg.norm(flat(5, names) - flat(3, names))
        relative = moved / np.linalg.norm(flat(0, names))
        kernel = snapshots[5][names[0]].astype(np.float64)
        spectral = (np.linalg.norm(kernel, 2) if kernel.ndim == 2 else
                    max(np.linalg.norm(kernel[:, :, i, j], 2) for i in range(2)
                        for j in range(2)))
        assert rows[layer] == [str(sum(snapshots[5][n].size for n in names)), _cells(moved),
                               _cells(relative), _cells(recent), _cells(spectral)]
    drawn = figure.read_text()
    for text in ("weight trajectory", "PC1", "distance from init per layer",
                 "spectral norm per layer"):
        assert text in drawn


def test_weights_by_run_id_and_its_errors(moving, tmp_path, capsys, pd):
    path, _ = moving
    run_id = path.stem
    assert cli.main(["weights", run_id[:22], "--root", str(path.parent.parent)]) == 0
    assert capsys.readouterr().out.startswith("mover (")
    with rk.Recorder(tmp_path / "plain", system=False) as rec:
        rec.log({"loss": 1.0}, epoch=0)
    assert cli.main(["weights", str(rec.path)]) == 1
    err = capsys.readouterr().err
    assert "holds no weight snapshots" in err and str(rec.path) in err
    assert len(err.strip().splitlines()) == 1
    with rk.Recorder(tmp_path / "once", system=False) as rec:
        rec.snapshot({"fc.weight": np.ones((2, 2))}, epoch=0)
    assert cli.main(["weights", str(rec.path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split() == ["fc", "4", "0", "0", "2"]  # no last-epoch movement
    assert cli.main(["weights", str(rec.path), "--plot", str(tmp_path / "x.png")]) == 1
    assert "at least two" in capsys.readouterr().err


@pytest.mark.parametrize("end", ["killed", "failed"])
def test_ls_counts_only_the_epochs_a_crashed_run_finished(tmp_path, capsys, end):
    """A run that began an epoch (its step rows, a validation inside it) and died there
    finished the epochs before it only: ls, the summary and epoch_count say so."""
    root = tmp_path / "records"
    script = (
        "import os, signal, sys, recordkit\n"
        "rec = recordkit.Recorder(sys.argv[1], system=False)\n"
        "for epoch in range(2):\n"
        "    rec.log({'loss_step': 1.0}, epoch=epoch, step=epoch * 10)\n"
        "    rec.log({'loss': 1.0 / (epoch + 1)}, epoch=epoch)\n"
        "rec.log({'loss_step': 0.4, 'val_loss_step': 0.5}, epoch=2, step=25)\n"
        "rec.commit()\n"
        + ("os.kill(os.getpid(), signal.SIGKILL)\n" if end == "killed"
           else "rec.close('failed', error='boom')\n"))
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == (-9 if end == "killed" else 0), done.stderr[-2000:]
    [record] = rk.load_all(root, cache=False)
    assert record.epochs == [0, 1, 2]  # every epoch with a value
    assert record.epoch_count == 2  # the finished ones
    assert rk.load(record.path).epoch_count == 2  # read in full, not from the summary
    assert cli.main(["ls", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].split().index("epochs")
    assert lines[1].split()[column] == "2"
    steps_only = tmp_path / "steps"
    rec = rk.Recorder(steps_only, system=False)  # a run that logs step rows only
    for epoch in range(3):
        rec.log({"loss": 1.0}, epoch=epoch, step=epoch * 5)
    rec.save()
    assert rk.load_all(steps_only)[0].epoch_count == 3
