"""The table of a study's records: ``RecordSet.to_dataframe()`` and ``recordkit ls`` have
``trial``, ``trial_state`` and ``value`` columns (captured facts of ``info["optuna"]``),
the same as the study's ``trials_dataframe()``; a trial's identity and outcome stay out
of ``config_hash``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tests.support import require

optuna = require("optuna", "sweeps")
require("pandas", "analysis")

import recordkit  # noqa: E402
from recordkit import Recorder, cli  # noqa: E402
from recordkit.integrations.optuna import RecordStudy  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


class OddTrialsPruned(optuna.pruners.BasePruner):
    def prune(self, study: Any, trial: Any) -> bool:
        return trial.number % 2 == 1 and (trial.last_step or 0) >= 1


def run_study(root: Path) -> Any:
    def objective(trial: Any) -> float:
        width = trial.suggest_categorical("width", [8, 16])
        if trial.number == 3:  # recorded by the study callback alone
            return float(width)
        with Recorder(root, "study", trial=trial, system=False) as rec:
            for epoch in range(3):
                rec.log({"loss": width / (epoch + 1)}, epoch=epoch)
                trial.report(width / (epoch + 1), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return width / 3

    study = optuna.create_study(study_name="study", pruner=OddTrialsPruned())
    for width in (8, 16, 8, 16):  # each width twice
        study.enqueue_trial({"width": width})
    study.optimize(objective, n_trials=4, callbacks=[RecordStudy(root, system=False)])
    return study


def test_to_dataframe_has_the_trial_columns_of_the_study(tmp_path: Path) -> None:
    study = run_study(tmp_path)
    table = recordkit.load_all(tmp_path, cache=False).to_dataframe()
    trials = study.trials_dataframe()
    joined = trials.merge(table, left_on="number", right_on="trial")
    assert len(joined) == len(trials) == 4
    assert joined["state"].tolist() == joined["trial_state"].tolist()
    assert joined["value_x"].tolist() == joined["value_y"].tolist()
    assert joined["params_width"].tolist() == joined["width"].tolist()
    assert joined["status"].tolist() == ["completed", "pruned", "completed", "completed"]
    assert joined["state"].tolist() == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    # repeats share a config hash, trial and value aside
    by_width = table.groupby("width")["config_hash"].nunique()
    assert by_width.tolist() == [1, 1]
    assert table["config_hash"].nunique() == 2


def test_ls_shows_the_trial_columns(tmp_path: Path, capsys: Any) -> None:
    study = run_study(tmp_path)
    assert cli.main(["ls", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    for column in ("trial", "trial_state", "value"):
        assert column in header, header
    rows = {int(cells[header.index("trial")]): cells
            for cells in (line.split() for line in lines[1:])}
    for trial in study.trials:
        cells = rows[trial.number]
        assert cells[header.index("trial_state")] == trial.state.name
        assert math.isclose(float(cells[header.index("value")]), trial.value, rel_tol=1e-3)
