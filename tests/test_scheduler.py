"""The scheduler context in system info (issue 18 item 4): SLURM, PBS/Torque, LSF and
Kubernetes jobs, from the variables each documents, set here as a job would have them;
nothing else of the environment is stored; a run's default name inside a job array.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import recordkit
from recordkit import system
from recordkit.scheduler import (
    SCHEDULER_VARIABLES,
    default_run_name,
    scheduler_context,
    scheduler_name_suffix,
)


@pytest.fixture(autouse=True)
def no_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside any job, whatever the machine running the tests is."""
    for names in SCHEDULER_VARIABLES.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)


SLURM_ARRAY_TASK = {
    "SLURM_JOB_ID": "1043", "SLURM_JOB_NAME": "sweep", "SLURM_ARRAY_JOB_ID": "1040",
    "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8",
    "SLURM_JOB_PARTITION": "gpu", "SLURM_JOB_NODELIST": "gnode[10,20]",
    "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": "gnode10", "SLURM_CPUS_PER_TASK": "6",
    "SLURM_CPUS_ON_NODE": "12", "SLURM_GPUS_ON_NODE": "2", "SLURM_RESTART_COUNT": "1",
}


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_outside_a_job_there_is_no_scheduler(tmp_path: Path) -> None:
    assert system.capture(tmp_path)["scheduler"] is None
    assert scheduler_name_suffix() is None
    assert default_run_name("20260101-000000-000000-abcdef") == "20260101-000000-000000-abcdef"


def test_slurm_array_task_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SLURM_ARRAY_TASK)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("SLURM_JOB_USER", "someone")  # set by SLURM, not read
    rec = recordkit.Recorder(tmp_path, experiment="e")
    rec.save()
    stored = recordkit.load(rec.path).system["scheduler"]
    assert {k: v for k, v in stored.items() if k != "variables"} == {
        "scheduler": "slurm", "job_id": "1043", "job_name": "sweep",
        "array_job_id": "1040", "array_task_id": 3, "array_task_count": 8,
        "queue": "gpu", "nodes": "gnode[10,20]", "node": "gnode10", "num_nodes": 2,
        "cpus": 6, "gpus": 2, "restart_count": 1}
    assert stored["variables"] == SLURM_ARRAY_TASK
    text = json.dumps(recordkit.load(rec.path).system)
    assert "wJalrXUtnFEMI" not in text and "SLURM_JOB_USER" not in text


@pytest.mark.parametrize(("variables", "gpus", "cpus"), [
    ({"SLURM_JOB_GPUS": "0,1,3"}, 3, None),
    ({"SLURM_GPUS_PER_NODE": "a100:2"}, 2, None),
    ({"SLURM_GPUS": "v100:1,a100:2"}, 3, None),
    ({"SLURM_CPUS_ON_NODE": "16"}, None, 16),
    ({"SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "16"}, None, 4),
    ({}, None, None),
])
def test_slurm_allocations_in_their_documented_forms(variables: dict[str, str],
                                                     gpus: int | None,
                                                     cpus: int | None) -> None:
    ctx = scheduler_context({"SLURM_JOB_ID": "7", **variables})
    assert ctx is not None
    assert (ctx["gpus"], ctx["cpus"], ctx["array_task_id"], ctx["array_job_id"]) == (
        gpus, cpus, None, None)


def test_pbs_pro_array_subjob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = tmp_path / "nodefile"
    nodes.write_text("cn01\ncn01\ncn02\n")
    _set(monkeypatch, {"PBS_JOBID": "5512[7].pbs01", "PBS_JOBNAME": "sweep",
                       "PBS_ARRAY_INDEX": "7", "PBS_ARRAY_ID": "5512[].pbs01",
                       "PBS_QUEUE": "workq", "PBS_NODEFILE": str(nodes), "NCPUS": "8"})
    ctx = system.capture(tmp_path)["scheduler"]
    assert ctx["scheduler"] == "pbs"
    assert (ctx["job_id"], ctx["array_job_id"], ctx["array_task_id"]) == (
        "5512[7].pbs01", "5512[].pbs01", 7)
    assert (ctx["queue"], ctx["nodes"], ctx["num_nodes"], ctx["cpus"]) == (
        "workq", ["cn01", "cn02"], 2, 8)
    assert scheduler_name_suffix() == "5512.pbs01_7"


def test_torque_array_job(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"PBS_JOBID": "3301-4.torque", "PBS_ARRAYID": "4",
                       "PBS_NUM_NODES": "1", "PBS_NUM_PPN": "12"})
    ctx = scheduler_context()
    assert ctx is not None
    assert (ctx["array_job_id"], ctx["array_task_id"], ctx["num_nodes"], ctx["cpus"]) == (
        "3301", 4, 1, 12)
    assert scheduler_name_suffix() == "3301_4"


@pytest.mark.parametrize(("index", "task"), [("0", None), ("12", 12)])
def test_lsf_job(monkeypatch: pytest.MonkeyPatch, index: str, task: int | None) -> None:
    _set(monkeypatch, {"LSB_JOBID": "880", "LSB_JOBNAME": "sweep[1-20]",
                       "LSB_JOBINDEX": index, "LSB_QUEUE": "normal",
                       "LSB_HOSTS": "hostA hostA hostB", "LSB_DJOB_NUMPROC": "3"})
    ctx = scheduler_context()
    assert ctx is not None
    assert (ctx["scheduler"], ctx["job_id"], ctx["array_task_id"], ctx["queue"]) == (
        "lsf", "880", task, "normal")
    assert (ctx["nodes"], ctx["num_nodes"], ctx["cpus"]) == (["hostA", "hostB"], 2, 3)
    assert scheduler_name_suffix() == (None if task is None else "880_12")


def test_kubernetes_pod_of_an_indexed_job(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "JOB_COMPLETION_INDEX": "5",
                       "MY_POD_NAMESPACE": "ml-team", "MY_NODE_NAME": "pool-a-17"})
    ctx = system.capture(tmp_path)["scheduler"]
    assert ctx["scheduler"] == "kubernetes"
    assert (ctx["pod"], ctx["job_id"]) == (socket.gethostname(), socket.gethostname())
    assert (ctx["namespace"], ctx["node"], ctx["array_task_id"]) == ("ml-team", "pool-a-17", 5)
    assert scheduler_name_suffix() == "task5"


def test_strings_from_the_scheduler_are_masked_by_shape(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    token = "ghp_" + "a" * 36
    _set(monkeypatch, {"SLURM_JOB_ID": "9", "SLURM_JOB_NAME": f"run-{token}"})
    ctx = system.capture(tmp_path)["scheduler"]
    assert token not in json.dumps(ctx)
    assert ctx["job_name"].startswith("run-")


def test_default_name_of_an_array_task() -> None:
    env = {"SLURM_JOB_ID": "1043", "SLURM_ARRAY_JOB_ID": "1040", "SLURM_ARRAY_TASK_ID": "3"}
    assert default_run_name("20260101-000000-000000-abcdef", env) == (
        "20260101-000000-000000-abcdef-1040_3")


def test_recorder_default_name_holds_the_array_task(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SLURM_ARRAY_TASK)
    rec = recordkit.Recorder(tmp_path, experiment="e", system=False)
    rec.save()
    assert recordkit.load(rec.path).name == f"{rec.run_id}-1040_3"
    named = recordkit.Recorder(tmp_path, experiment="e", name="mine", system=False)
    named.save()
    assert recordkit.load(named.path).name == "mine"
