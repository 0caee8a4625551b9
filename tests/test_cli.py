"""The recordkit command line: a few cases through the real console script and
``python -m recordkit`` in subprocesses, the rest through ``cli.main`` in this process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import recordkit as rk
from recordkit import cli
from tests.support import require

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


def test_show(root, capsys):
    record = rk.load_all(root)[0]
    assert cli.main(["show", record.run_id[:22], "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert record.run_id in out and "lr = 0.1" in out and "loss: 3 values" in out


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
