"""The batch scheduler a run was started by (SLURM, PBS/Torque, LSF, Kubernetes), from
the variables each documents for its jobs. Only the variables listed here are read, never
the environment as a whole (it holds secrets).

Sources:

- SLURM: ``sbatch(1)``, "OUTPUT ENVIRONMENT VARIABLES" (``srun`` and ``salloc`` set the
  same names).
- PBS Professional (``PBS_ARRAY_INDEX``, ``PBS_ARRAY_ID``) and Torque (``PBS_ARRAYID``,
  ``PBS_NUM_NODES``, ``PBS_NUM_PPN``, ``PBS_NP``): ``qsub(1B)``, "Environment variables";
  the node list is the (distinct) host names of the file ``$PBS_NODEFILE`` names.
- IBM Spectrum LSF: "Environment variables set for job execution" (``LSB_JOBINDEX`` is 0
  outside an array).
- Kubernetes: every container gets ``KUBERNETES_SERVICE_HOST`` (the ``kubernetes``
  service's variables, "Container environment"), and its hostname is the pod's name. The
  namespace is not in the environment unless the pod's spec puts it there through the
  downward API, under a name the user chooses; the names of the Kubernetes documentation's
  example (``MY_POD_NAMESPACE``, ``MY_NODE_NAME``) and the bare ``POD_NAMESPACE``,
  ``NODE_NAME`` are read, else the service account's ``namespace`` file when mounted.
  An Indexed Job's ``JOB_COMPLETION_INDEX`` is its array task id.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SCHEDULER_VARIABLES", "default_run_name", "scheduler_context",
           "scheduler_name_suffix"]

#: The variables read, per scheduler, in the order they are stored.
SCHEDULER_VARIABLES: dict[str, tuple[str, ...]] = {
    "slurm": (
        "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
        "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES",
        "SLURMD_NODENAME", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_CPUS_PER_TASK",
        "SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE", "SLURM_GPUS", "SLURM_GPUS_ON_NODE",
        "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS", "SLURM_JOB_ACCOUNT", "SLURM_JOB_QOS",
        "SLURM_CLUSTER_NAME", "SLURM_RESTART_COUNT", "SLURM_SUBMIT_HOST"),
    "pbs": (
        "PBS_JOBID", "PBS_JOBNAME", "PBS_ARRAY_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID",
        "PBS_QUEUE", "PBS_NODEFILE", "PBS_NUM_NODES", "PBS_NUM_PPN", "PBS_NP",
        "PBS_O_HOST", "PBS_TASKNUM", "NCPUS"),
    "lsf": (
        "LSB_JOBID", "LSB_JOBNAME", "LSB_JOBINDEX", "LSB_QUEUE", "LSB_HOSTS",
        "LSB_MCPU_HOSTS", "LSB_DJOB_NUMPROC", "LSB_MAX_NUM_PROCESSORS", "LSB_SUB_HOST",
        "LSB_RESTART"),
    "kubernetes": (
        "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX", "MY_POD_NAMESPACE",
        "POD_NAMESPACE", "MY_NODE_NAME", "NODE_NAME"),
}
#: Where Kubernetes mounts the pod's service account (namespace file included).
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_MAX_NODES = 1000  # a node file of a 10,000-rank job lists hosts, not a novel


def _detect(env: Mapping[str, str]) -> str | None:
    if env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"):
        return "slurm"
    if env.get("PBS_JOBID"):
        return "pbs"
    if env.get("LSB_JOBID"):
        return "lsf"
    if env.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*", text)
    return int(match.group(1)) if match else None


def _count(text: str | None) -> int | None:
    """A count, also in SLURM's forms ``"gpu:2"``, ``"a100:2,v100:1"``, ``"0,1"`` (a
    device list: its length) or ``"4(x2)"`` (its first value)."""
    if text is None or not text.strip():
        return None
    if _int(text) is not None:
        return _int(text)
    typed = re.findall(r"(?:^|,)(?:[\w.-]+:)+(\d+)", text)
    if typed:
        return sum(int(n) for n in typed)
    listed = re.fullmatch(r"\s*\d+(?:\s*,\s*\d+)+\s*", text)
    if listed:
        return len(text.split(","))
    repeated = re.match(r"\s*(\d+)\(x\d+\)", text)
    return int(repeated.group(1)) if repeated else None


def _node_file(path: str | None) -> list[str] | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            hosts = dict.fromkeys(line.strip() for line in lines if line.strip())
    except OSError:
        return None
    return list(hosts)[:_MAX_NODES]


def _namespace(env: Mapping[str, str]) -> str | None:
    for name in ("MY_POD_NAMESPACE", "POD_NAMESPACE"):
        if env.get(name):
            return env[name]
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def scheduler_context(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The scheduler context of this process, or None outside a scheduler's job.

    Args:
        environ: the environment to read (``os.environ`` by default); only the variables
            of :data:`SCHEDULER_VARIABLES` are read.

    Returns:
        ``scheduler`` (``slurm``, ``pbs``, ``lsf``, ``kubernetes``), ``job_id``,
        ``job_name``, ``array_job_id``, ``array_task_id`` (an int, None outside an array),
        ``array_task_count``, ``queue`` (SLURM's partition), ``nodes`` (the node list as
        the scheduler writes it; PBS: the hosts of its node file; LSF: the hosts),
        ``node`` (this host), ``num_nodes``, ``cpus`` (allocated to this task or on this
        node), ``gpus`` (allocated, where the scheduler says), ``restart_count``, and
        ``variables`` (each variable read that was set, as it was).

    Example:
        >>> ctx = scheduler_context({"SLURM_JOB_ID": "1043", "SLURM_ARRAY_JOB_ID": "1040",
        ...                          "SLURM_ARRAY_TASK_ID": "3", "SLURM_GPUS_ON_NODE": "2"})
        >>> ctx["scheduler"], ctx["array_job_id"], ctx["array_task_id"], ctx["gpus"]
        ('slurm', '1040', 3, 2)
        >>> scheduler_context({"HOME": "/home/me"}) is None
        True
    """
    env = os.environ if environ is None else environ
    kind = _detect(env)
    if kind is None:
        return None
    variables = {name: env[name] for name in SCHEDULER_VARIABLES[kind] if name in env}
    ctx: dict[str, Any] = {"scheduler": kind, "job_id": None, "job_name": None,
                           "array_job_id": None, "array_task_id": None,
                           "array_task_count": None, "queue": None, "nodes": None,
                           "node": None, "num_nodes": None, "cpus": None, "gpus": None,
                           "restart_count": None}
    get = env.get
    if kind == "slurm":
        task = _int(get("SLURM_ARRAY_TASK_ID"))
        ctx.update(
            job_id=get("SLURM_JOB_ID") or get("SLURM_JOBID"), job_name=get("SLURM_JOB_NAME"),
            array_job_id=get("SLURM_ARRAY_JOB_ID") if task is not None else None,
            array_task_id=task, array_task_count=_int(get("SLURM_ARRAY_TASK_COUNT")),
            queue=get("SLURM_JOB_PARTITION"), nodes=get("SLURM_JOB_NODELIST"),
            node=get("SLURMD_NODENAME"), num_nodes=_int(get("SLURM_JOB_NUM_NODES")),
            cpus=_count(get("SLURM_CPUS_PER_TASK")) or _count(get("SLURM_CPUS_ON_NODE")),
            gpus=next((n for n in (_count(get(v)) for v in (
                "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS"))
                if n is not None), None),
            restart_count=_int(get("SLURM_RESTART_COUNT")))
    elif kind == "pbs":
        pbs_index = get("PBS_ARRAY_INDEX") or get("PBS_ARRAYID")  # PBS Pro, Torque
        nodes = _node_file(get("PBS_NODEFILE"))
        job_id = get("PBS_JOBID")
        ctx.update(
            job_id=job_id, job_name=get("PBS_JOBNAME"),
            array_job_id=(get("PBS_ARRAY_ID") or _pbs_array_of(job_id)) if pbs_index
            else None,
            array_task_id=_int(pbs_index), queue=get("PBS_QUEUE"), nodes=nodes,
            node=socket.gethostname(),
            num_nodes=_int(get("PBS_NUM_NODES")) or (len(nodes) if nodes else None),
            cpus=_int(get("NCPUS")) or _int(get("PBS_NUM_PPN")) or _int(get("PBS_NP")))
    elif kind == "lsf":
        index = _int(get("LSB_JOBINDEX"))
        hosts = (get("LSB_HOSTS") or "").split()
        ctx.update(
            job_id=get("LSB_JOBID"), job_name=get("LSB_JOBNAME"),
            array_job_id=get("LSB_JOBID") if index else None,
            array_task_id=index or None, queue=get("LSB_QUEUE"),
            nodes=list(dict.fromkeys(hosts))[:_MAX_NODES] or None,
            node=socket.gethostname(), num_nodes=len(set(hosts)) or None,
            cpus=_int(get("LSB_DJOB_NUMPROC")) or _int(get("LSB_MAX_NUM_PROCESSORS")),
            restart_count=1 if get("LSB_RESTART") == "Y" else None)
    else:  # kubernetes
        pod = socket.gethostname()
        ctx.update(job_id=pod, array_task_id=_int(get("JOB_COMPLETION_INDEX")),
                   node=get("MY_NODE_NAME") or get("NODE_NAME"),
                   pod=pod, namespace=_namespace(env))
    ctx["variables"] = variables
    return ctx


def _pbs_array_of(job_id: str | None) -> str | None:
    """The array job of a PBS Pro subjob id ``"1234[7].server"`` (``"1234[]"``) or a
    Torque one ``"1234-7.server"`` (``"1234"``)."""
    if not job_id:
        return None
    pro = re.match(r"^(\d+)\[\d+\]", job_id)
    if pro:
        return f"{pro.group(1)}[]"
    torque = re.match(r"^(\d+)-\d+", job_id)
    return torque.group(1) if torque else job_id.split(".", 1)[0]


def scheduler_name_suffix(environ: Mapping[str, str] | None = None) -> str | None:
    """What a run's default name gets after its run id inside a job array:
    ``<array job id>_<task id>`` (SLURM's ``%A_%a``; the array job as each scheduler
    names it), ``task<index>`` for a Kubernetes Indexed Job; None outside an array.

    Example:
        >>> scheduler_name_suffix({"SLURM_JOB_ID": "1043", "SLURM_ARRAY_JOB_ID": "1040",
        ...                        "SLURM_ARRAY_TASK_ID": "3"})
        '1040_3'
        >>> scheduler_name_suffix({"SLURM_JOB_ID": "1043"}) is None
        True
    """
    try:
        ctx = scheduler_context(environ)
    except Exception:  # naming a run must never stop it
        return None
    if ctx is None or ctx["array_task_id"] is None:
        return None
    array = ctx.get("array_job_id")
    if not array:
        return f"task{ctx['array_task_id']}"
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '', str(array))}_{ctx['array_task_id']}"


def default_run_name(run_id: str, environ: Mapping[str, str] | None = None) -> str:
    """A run's name when none is given: its run id, followed inside a job array by
    ``-<array job id>_<task id>`` (:func:`scheduler_name_suffix`).

    Example:
        >>> default_run_name("20260101-000000-000000-abcdef",
        ...                  {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7",
        ...                   "SLURM_ARRAY_TASK_ID": "2"})
        '20260101-000000-000000-abcdef-7_2'
    """
    suffix = scheduler_name_suffix(environ)
    return run_id if suffix is None else f"{run_id}-{suffix}"
