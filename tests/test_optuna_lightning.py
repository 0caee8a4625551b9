"""The Lightning callback with an Optuna trial: optuna-integration's
``PyTorchLightningPruningCallback`` ends a trial, its record reads ``pruned``; and a real
distributed study of four worker processes on one ``JournalFileBackend`` storage."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

optuna = require("optuna", "sweeps")
optuna_integration = require("optuna_integration", "sweeps")
lp = require("lightning.pytorch", "lightning")  # the package optuna-integration uses
torch = require("torch", "lightning")

import recordkit  # noqa: E402
from recordkit.integrations.lightning import RecordCallback  # noqa: E402
from recordkit.integrations.optuna import RecordStudy  # noqa: E402
from recordkit.verify import verify  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec"),
              pytest.mark.filterwarnings("ignore:.*does not have many workers"),
              pytest.mark.filterwarnings("ignore:The number of training batches")]

MODULE = textwrap.dedent('''
    import torch
    import lightning.pytorch as lp

    class Tiny(lp.LightningModule):
        def __init__(self, width: int = 4, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, 1))
            g = torch.Generator().manual_seed(0)
            self.data = torch.utils.data.TensorDataset(torch.randn(16, 3, generator=g),
                                                       torch.randn(16, 1, generator=g))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.data, batch_size=8)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(self.data, batch_size=8)

    class OddTrialsPruned(optuna.pruners.BasePruner):
        """Prunes odd-numbered trials once they reported step 1."""

        def prune(self, study, trial):
            return trial.number % 2 == 1 and (trial.last_step or 0) >= 1

    def fit(trial, root, experiment, epochs=3, pruner_first=False):
        model = Tiny(trial.suggest_int("width", 2, 6),
                     trial.suggest_float("lr", 1e-3, 1e-1, log=True))
        callbacks = [RecordCallback(root, experiment, trial=trial, system=False),
                     PyTorchLightningPruningCallback(trial, "val_loss")]
        trainer = lp.Trainer(
            max_epochs=epochs, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
            devices=1, callbacks=callbacks[::-1] if pruner_first else callbacks)
        trainer.fit(model)
        return float(trainer.callback_metrics["val_loss"])
''')
namespace: dict[str, Any] = {
    "optuna": optuna, "RecordCallback": RecordCallback,
    "PyTorchLightningPruningCallback": optuna_integration.PyTorchLightningPruningCallback}
exec(MODULE, namespace)  # the same module and objective as the worker processes run


@pytest.mark.parametrize(("with_study_callback", "pruner_first"),
                         [(True, False), (False, False), (True, True)])
def test_pruning_callback_ends_the_trial_pruned(tmp_path: Path, with_study_callback: bool,
                                                pruner_first: bool) -> None:
    root = tmp_path / "records"
    study = optuna.create_study(pruner=namespace["OddTrialsPruned"]())
    study.optimize(lambda trial: namespace["fit"](trial, root, "lightning",
                                                  pruner_first=pruner_first), n_trials=2,
                   callbacks=[RecordStudy(root, system=False)] if with_study_callback
                   else [])
    records = {r.info["optuna"]["trial"]: r for r in recordkit.load_all(root, cache=False)}
    assert sorted(records) == [0, 1]
    completed, pruned = records[0], records[1]
    assert completed.status == "completed"
    assert pruned.status == "pruned"
    assert pruned.error == "TrialPruned: Trial was pruned at epoch 1."
    # the pruner raises in on_validation_end of epoch 1 (before or after the callback's
    # own hook): the callback records that validation when the exception reaches it, so
    # the record holds the value that pruned the trial (epoch 1's training never ended)
    assert pruned.history.epochs("val_loss").tolist() == [0, 1]
    assert pruned.history.epochs("loss").tolist() == [0]
    trial = study.trials[1]
    assert sorted(trial.intermediate_values) == [0, 1]
    assert pruned.history["val_loss"].tolist() == pytest.approx(
        [trial.intermediate_values[0], trial.intermediate_values[1]])
    assert completed.history["val_loss"].tolist() == pytest.approx(
        [study.trials[0].intermediate_values[e] for e in (0, 1, 2)])
    for number, record in records.items():
        assert record.params["width"] == study.trials[number].params["width"]
        assert record.params["lr"] == study.trials[number].params["lr"]
        if with_study_callback:
            assert record.info["optuna"]["value"] == study.trials[number].value
            assert record.info["optuna"]["state"] == study.trials[number].state.name
        else:
            assert "state" not in record.info["optuna"]


WORKER = '''
import sys
import optuna
from optuna_integration import PyTorchLightningPruningCallback
from recordkit.integrations.lightning import RecordCallback
from recordkit.integrations.optuna import RecordStudy
''' + MODULE + '''
root, journal, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
study = optuna.create_study(study_name="sweep", storage=storage, load_if_exists=True,
                            sampler=optuna.samplers.RandomSampler(seed=worker),
                            pruner=OddTrialsPruned())

def objective(trial):
    import os
    trial.set_user_attr("pid", os.getpid())
    return fit(trial, root, "sweep")

study.optimize(objective, n_trials=2, callbacks=[RecordStudy(root, "sweep", system=False)])
'''


@pytest.mark.slow
def test_distributed_study_of_four_worker_processes(tmp_path: Path) -> None:
    root, journal = tmp_path / "records", tmp_path / "journal.log"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [subprocess.Popen([sys.executable, str(script), str(root), str(journal),
                                 str(worker)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for worker in range(4)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="sweep", storage=storage)
    frame = study.trials_dataframe()
    assert len(frame) == 8 and frame["user_attrs_pid"].nunique() == 4
    runs = recordkit.load_all(root, cache=False)
    assert runs.skipped == []
    records = list(runs)
    assert len({r.run_id for r in records}) == len(records) == 8
    for record in records:
        assert verify(record.path).ok, record.path
    table = runs.to_dataframe()
    table["number"] = [r.info["optuna"]["trial"] for r in records]
    table["value"] = [r.info["optuna"]["value"] for r in records]
    table["state"] = [r.info["optuna"]["state"] for r in records]
    joined = frame.merge(table, on="number", suffixes=("_study", "_record"))
    assert len(joined) == 8
    assert joined["value_study"].tolist() == joined["value_record"].tolist()
    assert joined["state_study"].tolist() == joined["state_record"].tolist()
    assert joined["params_width"].tolist() == joined["width"].tolist()
    assert joined["params_lr"].tolist() == joined["lr"].tolist()
    assert sorted(joined.loc[joined["state_study"] == "PRUNED", "status"]) == ["pruned"] * 4
    for record, number in zip(records, table["number"]):
        assert record.status == ("pruned" if number % 2 else "completed")
        assert record.info["optuna"]["storage"] == str(journal.resolve())
        trial = study.trials[number]
        steps = sorted(trial.intermediate_values)  # the pruned epoch's too (see above)
        assert record.history.epochs("val_loss").tolist() == steps
        assert record.history["val_loss"].tolist() == pytest.approx(
            [trial.intermediate_values[s] for s in steps])
