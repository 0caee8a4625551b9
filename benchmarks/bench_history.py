"""History logging: log() + commit() of 20 metrics per epoch against a csv.writer row +
flush, and its cost at epoch 5,000 against epoch 1 (nothing is rewritten).

Targets (issue 6): <= 20x the csv row; epoch-5,000 cost <= 1.5x the epoch-1 cost.
Also reported: the cost of one buffered step-level log() call.

Run: ``python benchmarks/bench_history.py [--quick]`` (quick: 1,000 epochs).
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
from baselines import report, scratch

from recordkit import Recorder

METRICS = [f"metric_{i:02d}" for i in range(20)]
WINDOW = 200


def csv_seconds(folder, epochs: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    times = np.empty(epochs)
    with open(folder / "history.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *METRICS])
        for epoch in range(epochs):
            row = [epoch, *(float(epoch) * i for i in range(20))]
            t = time.perf_counter()
            writer.writerow(row)
            fh.flush()
            times[epoch] = time.perf_counter() - t
    return times


def recordkit_seconds(folder, epochs: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    times = np.empty(epochs)
    with Recorder(folder, system=False) as rec:
        for epoch in range(epochs):
            metrics = {name: float(epoch) * i for i, name in enumerate(METRICS)}
            t = time.perf_counter()
            rec.log(metrics, epoch=epoch)
            rec.commit()
            times[epoch] = time.perf_counter() - t
    return times


def step_log_seconds(folder, steps: int) -> float:  # type: ignore[no-untyped-def]
    with Recorder(folder, system=False) as rec:
        t = time.perf_counter()
        for step in range(steps):
            rec.log({"train_loss": 1.0 / (step + 1), "lr": 1e-3}, step=step)
        per_call = (time.perf_counter() - t) / steps
        rec.commit()
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 epochs instead of 5,000")
    args = parser.parse_args()
    epochs = 1000 if args.quick else 5000
    print(f"bench_history: {len(METRICS)} metrics x {epochs} epochs")
    with scratch("history") as folder:
        base = csv_seconds(folder, epochs)
        ours = recordkit_seconds(folder / "rk", epochs)
        step = step_log_seconds(folder / "steps", 20_000)
    csv_row = float(np.median(base))
    first = float(np.median(ours[:WINDOW]))
    last = float(np.median(ours[-WINDOW:]))
    print(f"  csv row + flush: {csv_row * 1e6:.1f} us; log+commit: first {WINDOW} epochs "
          f"{first * 1e6:.0f} us, last {WINDOW} {last * 1e6:.0f} us (medians)")
    report("log()+commit() / csv row+flush", first / csv_row, "<= 20", first / csv_row <= 20)
    report(f"log()+commit() at epoch {epochs} / at epoch 1", last / first, "<= 1.5",
           last / first <= 1.5)
    report("buffered step log() of 2 metrics (us per call)", step * 1e6, "none", None)


if __name__ == "__main__":
    main()
