"""The writer process of the crash-consistency tests (tests/test_crash.py) and of
benchmarks/crash_kills.py: log + snapshot + commit in a loop until killed.

Every value is a function of the epoch (:func:`metrics`, :func:`weights`), so a checker
knows what each committed epoch must hold. Protocol on stdout, one flushed line each:
``path <record path>`` once the Recorder exists, then ``<epoch>`` after each commit()
returned, ``done`` after save().

Run: ``python tests/crash_writer.py ROOT [EPOCHS] [--big]``; check killed records with
``python tests/crash_writer.py --check JSON`` where JSON maps each record path to the last
epoch its writer reported (-1 for none): prints a JSON map of path to a list of failures.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import recordkit
from recordkit.repair import needs_repair, repair
from recordkit.verify import verify


def metrics(epoch: int) -> dict[str, float]:
    values = {"loss": 1.0 / (epoch + 1), "val/acc": (epoch % 97) / 97.0}
    if epoch >= 3:  # a metric that first appears later: a dataset created mid-run
        values["late metric"] = epoch * 0.5
    return values


def weights(epoch: int, big: bool = False) -> dict[str, np.ndarray]:
    side = 512 if big else 96
    out = {
        "layer.weight": (np.arange(side * side, dtype=np.float32).reshape(side, side) % 251
                         + epoch).astype(np.float32),
        "layer.bias": np.full(side, epoch, dtype=np.float64),
    }
    if epoch >= 2:  # a tensor that first appears later
        out["head/w"] = np.full((7, 5), -epoch, dtype=np.int32)
    return out


def check(path: str, last_committed: int, big: bool = False) -> list[str]:
    """What is wrong with a killed writer's record: [] when it keeps its promises."""
    try:
        record = recordkit.load(path)
    except recordkit.RecordkitError as err:
        return [f"load failed: {err}"]
    failures = []
    if record.stored_status != "running" or record.status != "interrupted":
        failures.append(f"status {record.stored_status!r}/{record.status!r}, "
                        "expected running/interrupted")
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
    for name in record.tensor_names:
        tensor = record.weight(name)
        for i, epoch in enumerate(tensor.epochs):
            if not np.array_equal(tensor[i], weights(int(epoch), big)[name]):
                failures.append(f"tensor {name!r} at epoch {epoch}: wrong values")
                break
    report = verify(path, isolate=False)
    failures += [f"verify: {p}" for p in report.problems]
    return failures


def check_or_repair(path: str, last_committed: int, big: bool = False) -> dict[str, object]:
    """Check; when a read fails and the message asks for ``recordkit repair``, repair and
    check again. ``failures`` is what is still wrong after that."""
    stale_end = needs_repair(path)  # read around by recordkit.load, no repair needed
    try:
        failures = check(path, last_committed, big)
    except recordkit.RecordkitError as err:
        failures = [f"read failed: {err}"]
    repaired = False
    if failures and any("recordkit repair" in f for f in failures):
        repair(path)
        repaired = True
        try:
            failures = check(path, last_committed, big)
        except recordkit.RecordkitError as err:
            failures = [f"read failed after repair: {err}"]
    return {"failures": failures, "repaired": repaired, "stale_end": stale_end}


def main(argv: list[str]) -> int:
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
