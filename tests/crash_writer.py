"""The writer process of the crash-consistency tests (tests/test_crash.py) and of
benchmarks/crash_kills.py: log + snapshot + commit in a loop until killed.

Every value is a function of the epoch (:func:`metrics`, :func:`weights`), so a checker
knows what each committed epoch must hold. Protocol on stdout, one flushed line each:
``path <record path>`` once the Recorder exists, then ``<epoch>`` after each commit()
returned, ``done`` after save().

Run: ``python tests/crash_writer.py ROOT [EPOCHS] [--big]``; check killed records with
``python tests/crash_writer.py --check JSON`` where JSON maps each record path to the last
epoch its writer reported (-1 for none), or to ``{"last": epoch, "statuses": [stored
statuses allowed], "params": [params documents allowed]}``: prints a JSON map of path to
its failures.

Crash points (tests/test_crashpoints.py): ``python tests/crash_writer.py --crashpoints
ROOT``, under ``LD_PRELOAD=tests/crashpoint_shim.so``, kills a writer before each write it
makes to its record in three phases (:data:`PHASES`), each writer a child forked from this
process (imports paid once), then checks each record in a forked child and prints one JSON
report.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import recordkit
from recordkit.format.layout import PACK_MIN_TENSORS, PACK_PREFIX
from recordkit.repair import needs_repair, repair
from recordkit.verify import verify


def metrics(epoch: int) -> dict[str, float]:
    values = {"loss": 1.0 / (epoch + 1), "val/acc": (epoch % 97) / 97.0}
    if epoch >= 3:  # a metric that first appears later: a dataset created mid-run
        values["late metric"] = epoch * 0.5
    return values


def weights(epoch: int, big: bool = False, side: int | None = None, small: bool = False
            ) -> dict[str, np.ndarray]:
    """The tensors of each epoch; with *small* (the crash points), also many small ones,
    which format v3 packs: one pack from the first snapshot on, a second from epoch 2."""
    side = side or (512 if big else 96)
    out = {
        "layer.weight": (np.arange(side * side, dtype=np.float32).reshape(side, side) % 251
                         + epoch).astype(np.float32),
        "layer.bias": np.full(side, epoch, dtype=np.float64),
    }
    out[DIRECT] = _direct(epoch)  # one chunk above HDF5's chunk cache: an O_DIRECT write
    for i in range(SMALL if small else 0):  # packed into one dataset (format v3)
        out[f"norm{i}.scale"] = np.full(3, epoch + i, dtype=np.float32)
    if epoch >= 2:  # a tensor that first appears later, and a name tied to a tensor
        out["head/w"] = np.full((7, 5), -epoch, dtype=np.int32)
        out["tied/w"] = out["head/w"]  # one array, new with it: stored once, as an alias
        if small:  # a second pack, made mid-run, with a tied member
            for i in range(SMALL):
                out[f"late/norm{i}"] = np.full(3, -epoch - i, dtype=np.float32)
            out["late/tied"] = out["late/norm0"]
    return out


#: Small tensors of each pack (as many as make a pack).
SMALL = PACK_MIN_TENSORS
#: A tensor of every snapshot whose one chunk (2 MiB, whole pages) is written with a
#: direct write (recordkit.format.directio): the crash points kill before those writes
#: too, the random kills also inside them.
DIRECT = "direct/w"
DIRECT_SHAPE = (520, 1024)
#: The tied tensors of :func:`weights`, once they appear (epoch 2); with *small*, also
#: :data:`SMALL_ALIASES`.
ALIASES = {"tied/w": "head/w"}
SMALL_ALIASES = {"late/tied": "late/norm0"}


@functools.lru_cache(maxsize=1)
def _direct_base() -> np.ndarray:
    return (np.arange(DIRECT_SHAPE[0] * DIRECT_SHAPE[1], dtype=np.float32)
            .reshape(DIRECT_SHAPE) % 241)


@functools.lru_cache(maxsize=16)
def _direct(epoch: int) -> np.ndarray:
    """The :data:`DIRECT` tensor of *epoch* (kept: the checks ask for it often)."""
    out = _direct_base() - np.float32(epoch)
    out.flags.writeable = False
    return out


def _weight_keys(path: str) -> list[str] | None:
    """Link names under /weights of the datasets the table lists, by plain h5py; None
    when plain h5py cannot read the killed file (recordkit reads around what a kill left,
    e.g. an end of file short of what the superblock says)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            listed = len(f["snapshots"])
            weights = f["weights"]
            return [k for k in weights if (ds := weights.get(k)) is not None
                    and int(ds.attrs.get("first_snapshot", 0)) < listed]
    except Exception:
        return None


def check(path: str, last_committed: int, big: bool = False, *, side: int | None = None,
          statuses: tuple[str, ...] = ("running",), params: tuple[Any, ...] | None = None,
          small: bool = False) -> list[str]:
    """What is wrong with a killed writer's record: [] when it keeps its promises.
    *statuses*: the stored statuses it may have (read as interrupted unless completed);
    *params*: the params it may hold (any, when None); *small*: written with the small
    tensors of :func:`weights`."""
    try:
        record = recordkit.load(path)
    except recordkit.RecordkitError as err:
        return [f"load failed: {err}"]
    failures = []
    stored = record.stored_status
    if stored not in statuses or record.status != (
            "completed" if stored == "completed" else "interrupted"):
        failures.append(f"status {stored!r}/{record.status!r}, expected one of "
                        f"{statuses} read as interrupted")
    if params is not None and record.params not in params:
        failures.append(f"params {record.params!r}, expected one of {params!r}")
    for name in ("loss", "val/acc", "late metric"):
        epochs = record.history.epochs(name) if name in record.history else np.zeros(0)
        first = 3 if name == "late metric" else 0
        expected = list(range(first, len(epochs) + first))
        if epochs.tolist() != expected:
            failures.append(f"{name}: epochs {epochs.tolist()[:5]}... not contiguous")
        if last_committed >= first and (not len(epochs) or epochs[-1] < last_committed):
            failures.append(f"{name}: last epoch {epochs[-1:].tolist()} < committed "
                            f"{last_committed}")
        if len(epochs):
            want = [metrics(int(e))[name] for e in epochs]
            if record.history[name].tolist() != want:
                failures.append(f"{name}: values differ from what was logged")
    steps = record.history.steps("step loss") if "step loss" in record.history else []
    if len(steps) < last_committed + 1 or any(s != 10 * i for i, s in enumerate(steps)):
        failures.append(f"step loss: steps {list(steps)[:5]}... for committed "
                        f"{last_committed}")
    snaps = record.snapshot_epochs
    if snaps != list(range(len(snaps))) or len(snaps) < last_committed + 1:
        failures.append(f"snapshot epochs {snaps[:5]}... (n={len(snaps)}) for committed "
                        f"{last_committed}")
    aliases = {**ALIASES, **(SMALL_ALIASES if small else {})}
    if "head/w" in record.tensor_names and record.tensor_aliases != aliases:
        failures.append(f"aliases {record.tensor_aliases!r}, expected {aliases!r}")
    if snaps and DIRECT not in record.tensor_names:
        failures.append(f"{DIRECT!r} missing: {record.tensor_names!r}")
    if small and snaps and sum(n.startswith(("norm", "late/norm"))
                               for n in record.tensor_names) < SMALL:
        failures.append(f"small tensors missing: {record.tensor_names!r}")
    for name in record.tensor_names:
        tensor = record.weight(name)
        for i, epoch in enumerate(tensor.epochs):
            if not np.array_equal(tensor[i], weights(int(epoch), big, side, small)[name]):
                failures.append(f"tensor {name!r} at epoch {epoch}: wrong values")
                break
    report = verify(path, isolate=False)
    failures += [f"verify: {p}" for p in report.problems]
    keys = _weight_keys(path) if not failures else None
    packs = [k for k in keys or () if k.startswith(PACK_PREFIX)]
    if keys is not None and len(packs) != (0 if not small or not snaps else 2 if "head/w"
                                           in record.tensor_names else 1):
        failures.append(f"packs {packs!r}: expected one, and a second from epoch 2")
    return failures


def check_or_repair(path: str, last_committed: int | dict[str, Any], big: bool = False
                    ) -> dict[str, object]:
    """Check; when a read fails and the message asks for ``recordkit repair``, repair and
    check again. ``failures`` is what is still wrong after that. *last_committed* is the
    last epoch, or a dict of it (``last``) and the keywords of :func:`check`."""
    options: dict[str, Any] = {}
    if isinstance(last_committed, dict):
        options = {k: tuple(v) if isinstance(v, list) else v
                   for k, v in last_committed.items() if k != "last"}
        last_committed = int(last_committed["last"])
    stale_end = needs_repair(path)  # read around by recordkit.load, no repair needed
    try:
        failures = check(path, last_committed, big, **options)
    except recordkit.RecordkitError as err:
        failures = [f"read failed: {err}"]
    repaired = False
    if failures and any("recordkit repair" in f for f in failures):
        repair(path)
        repaired = True
        try:
            failures = check(path, last_committed, big, **options)
        except recordkit.RecordkitError as err:
            failures = [f"read failed after repair: {err}"]
    return {"failures": failures, "repaired": repaired, "stale_end": stale_end}


# --- crash points -------------------------------------------------------------------

#: The phases whose every write a kill is aimed at: the run's creation and first epoch;
#: a later epoch (epoch 3: the first of "late metric", a dataset created mid-run); the
#: epoch that adds a tensor (epoch 2: "head/w", new datasets in /weights and
#: /checksums); a resume of a run closed as interrupted after epochs 0-3, with new
#: params and new run facts, and its next epoch; params merged mid-run by
#: Recorder.extend after four committed epochs, then an epoch; and the close (save).
PHASES = ("first", "later", "new tensor", "resume", "extend", "close")
LATER = 3
NEW_TENSOR = 2
#: Small tensors: the writes are the same in number, each one is faster.
SIDE = 16
PARAMS = {"epochs": 100}
RESUMED_PARAMS = {"epochs": 100, "resumed": True}


def _shim() -> Any:
    lib = ctypes.CDLL(None)
    lib.rk_writes.restype = ctypes.c_long
    lib.rk_kill_after.argtypes = [ctypes.c_long]
    return lib


def _epoch(rec: recordkit.Recorder, epoch: int, log: Any) -> None:
    rec.log(metrics(epoch), epoch=epoch)
    rec.log({"step loss": float(epoch)}, epoch=epoch, step=epoch * 10)
    rec.snapshot(weights(epoch, side=SIDE, small=True), epoch=epoch)
    rec.commit()
    log(str(epoch))


def _phase(phase: str, root: Path, base: Path | None, kill: int, log: Any) -> int:
    """One writer of *phase* (in a forked child), killed before its *kill*-th write to the
    record counted from the start of the phase (never, for 0). Returns the writes the
    phase made (when not killed)."""
    shim = _shim()
    if phase == "resume":
        assert base is not None
        folder = root / "crash"
        folder.mkdir(parents=True)
        target = folder / base.name
        shutil.copyfile(base, target)
        start = shim.rk_writes()
        shim.rk_kill_after(kill)
        rec = recordkit.Recorder(root, resume=target, params=RESUMED_PARAMS)
        log(f"path {rec.path}")
        rec.set_info({"resumed": True})  # /info replaced, as integrations do at fit start
        _epoch(rec, LATER + 1, log)
        return int(shim.rk_writes() - start)
    if phase == "first":
        shim.rk_kill_after(kill)
    rec = recordkit.Recorder(root, experiment="crash", params=PARAMS, system=False)
    log(f"path {rec.path}")
    start = 0
    at = {"later": LATER, "new tensor": NEW_TENSOR}.get(phase)
    for epoch in range(LATER + 1 if phase in ("close", "extend") else 1 if at is None
                       else at + 1):
        if epoch == at:
            start = shim.rk_writes()
            shim.rk_kill_after(kill)
        _epoch(rec, epoch, log)
    if phase == "close":
        start = shim.rk_writes()
        shim.rk_kill_after(kill)
        log("closing")
        rec.save()
    if phase == "extend":  # params merged mid-run
        start = shim.rk_writes()
        shim.rk_kill_after(kill)
        rec.extend({"resumed": True})
        _epoch(rec, LATER + 1, log)
    return int(shim.rk_writes() - start)


def _in_child(work: Any) -> tuple[int, str]:
    """``work(log)`` in a forked child; its exit status (negative: the signal) and what it
    logged. The child never returns into the caller."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        code = 0
        try:
            result = work(lambda line: os.write(write_end, f"{line}\n".encode()))
            if result is not None:
                os.write(write_end, f"result {json.dumps(result)}\n".encode())
        except BaseException as err:  # reported to the parent, whatever it is
            os.write(write_end, f"error {type(err).__name__}: {err}\n".encode())
            code = 3
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, b"".join(chunks).decode()


def _last_result(out: str) -> Any:
    lines = [line for line in out.splitlines() if line.startswith("result ")]
    return json.loads(lines[-1].split(" ", 1)[1]) if lines else None


def crashpoints(root: Path, phases: tuple[str, ...] = PHASES, every: int = 1
                ) -> dict[str, Any]:
    """Kill a writer of each phase before each of its writes (every *every*-th), then
    check each record; the report lists the kills and the failures."""
    started = time.perf_counter()
    base = None
    if "resume" in phases:  # the run the resume continues: epochs 0-3, interrupted
        def make_base(log: Any) -> str:
            rec = recordkit.Recorder(root / "base", experiment="crash", params=PARAMS,
                                     system=False)
            for epoch in range(LATER + 1):
                _epoch(rec, epoch, log)
            rec.close("interrupted")
            return str(rec.path)
        code, out = _in_child(make_base)
        assert code == 0, out
        base = Path(_last_result(out))
    report: dict[str, Any] = {"phases": {}, "failures": {}}
    todo: dict[str, Any] = {}
    for phase in phases:
        code, out = _in_child(lambda log, p=phase: _phase(p, root / f"dry-{p}", base, 0, log))
        assert code == 0, out
        writes = int(_last_result(out))
        killed = unpublished = survived = 0
        for kill in range(1, writes + 1, every):
            folder = root / f"{phase}-{kill}"
            code, out = _in_child(lambda log, p=phase, n=kill, d=folder: _phase(
                p, d, base, n, log))
            if code != -signal.SIGKILL:
                survived += 1  # fewer writes this time (a thread's timing): nothing to check
                continue
            killed += 1
            lines = out.split()
            committed = [int(x) for x in lines if x.lstrip("-").isdigit()]
            files = sorted(folder.glob("*/*.h5"))
            if not files:
                unpublished += 1  # killed before the record was published: nothing kept
                continue
            last = max(committed, default=LATER if phase == "resume" else -1)
            statuses = ["running"]
            if phase == "resume":
                statuses.append("interrupted")  # killed before the resume was published
            if "closing" in lines:
                statuses.append("completed")
            allowed = ([PARAMS, RESUMED_PARAMS] if phase in ("resume", "extend")
                       else [PARAMS])
            todo[str(files[0])] = {"last": last, "statuses": statuses, "params": allowed,
                                   "side": SIDE, "small": True, "phase": phase,
                                   "kill": kill}
        report["phases"][phase] = {"writes": writes, "kill_points": killed,
                                   "unpublished": unpublished, "not_reached": survived}
    for path, entry in todo.items():
        options = {k: v for k, v in entry.items() if k not in ("phase", "kill")}
        code, out = _in_child(lambda log, p=path, o=options: check_or_repair(p, o))
        result = _last_result(out) if code == 0 else None
        if result is None:
            result = {"failures": [f"checker died ({code}): {out[-500:]}"],
                      "repaired": False, "stale_end": False}
        if result["failures"]:
            report["failures"][f"{entry['phase']} write {entry['kill']}"] = {
                "path": path, "failures": result["failures"]}
        phase_report = report["phases"][entry["phase"]]
        phase_report["repaired"] = phase_report.get("repaired", 0) + bool(result["repaired"])
        phase_report["stale_end"] = phase_report.get("stale_end", 0) + bool(
            result["stale_end"])
    report["checked"] = len(todo)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str]) -> int:
    if argv[0] == "--crashpoints":
        phases = tuple(argv[2].split(",")) if len(argv) > 2 and argv[2] else PHASES
        every = int(argv[3]) if len(argv) > 3 else 1
        print(json.dumps(crashpoints(Path(argv[1]), phases, every)), flush=True)
        return 0
    if argv[0] == "--check":
        todo = json.loads(argv[1])
        big = "--big" in argv
        print(json.dumps({p: check_or_repair(p, last, big) for p, last in todo.items()}),
              flush=True)
        return 0
    root = argv[0]
    epochs = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 100_000
    big = "--big" in argv
    rec = recordkit.Recorder(root, experiment="crash", params={"epochs": epochs},
                             system=False)
    print("path", rec.path, flush=True)
    for epoch in range(epochs):
        rec.log(metrics(epoch), epoch=epoch)
        rec.log({"step loss": float(epoch)}, epoch=epoch, step=epoch * 10)
        rec.snapshot(weights(epoch, big), epoch=epoch)
        rec.commit()
        print(epoch, flush=True)
    rec.save()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
