"""Peak memory during background snapshots, beyond the model itself.

Target (issue 6): peak <= 2x the state size. Measured two ways in this (fresh) process:
resident set size sampled every millisecond by a thread (psutil; sees HDF5's own buffers
too), and tracemalloc's peak (numpy's allocations).

Run: ``python benchmarks/bench_memory.py [--quick]`` (quick: 64 MiB state, else 256 MiB).
"""

from __future__ import annotations

import argparse
import threading
import time
import tracemalloc

import numpy as np
import psutil
from baselines import MiB, report, scratch

from recordkit import Recorder

EPOCHS = 4


class RssSampler:
    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB state instead of 256")
    args = parser.parse_args()
    size = (64 if args.quick else 256) * MiB
    rng = np.random.default_rng(0)
    state = {f"layer{i}.weight": rng.standard_normal(size // 32, dtype=np.float32)
             for i in range(8)}
    nbytes = sum(v.nbytes for v in state.values())
    print(f"bench_memory: {EPOCHS} back-to-back background snapshots of {nbytes / MiB:.0f} "
          "MiB (the worst case for the queue)")
    with scratch("memory") as folder:
        with Recorder(folder / "warm", system=False) as rec:  # imports, HDF5 set-up
            rec.snapshot({"w": np.ones(10)}, epoch=0)
        rec = Recorder(folder, system=False)
        base = psutil.Process().memory_info().rss
        tracemalloc.start()
        with RssSampler() as sampler:
            for epoch in range(EPOCHS):
                rec.snapshot(state, epoch=epoch)
                for value in state.values():
                    value[:1] += 1.0  # a training step
            rec.commit()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rec.close()
    rss = (sampler.peak - base) / nbytes
    traced = traced_peak / nbytes
    print(f"  peak RSS beyond the model: {(sampler.peak - base) / MiB:.0f} MiB; "
          f"tracemalloc peak: {traced_peak / MiB:.0f} MiB")
    report("peak RSS during background snapshots / state size", rss, "<= 2", rss <= 2)
    report("tracemalloc peak / state size", traced, "<= 2", traced <= 2)


if __name__ == "__main__":
    main()
