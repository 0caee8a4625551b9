"""``weights.distance`` from init over every epoch of a 20 x 64 MiB record, against raw
reads of the same bytes, and its peak memory against the issue's bound.

Target (issue 19 item 4): distance at least 0.8x the speed of reading those bytes raw
(``np.fromfile`` of each tensor's snapshot from one file holding them all, in the same
order), both in the page cache. Each round times the raw pass and the distance pass one
after the other, alternating which goes first; the ratio is taken per round (raw seconds
over distance seconds: a speed ratio) and the median of the rounds is reported, with the
raw speed beside it. Also timed, to show where the time goes: reading the same rows
through ``record.weight(name)[i]`` with no arithmetic (the read path, the bound).

Memory: in a fresh child process, ``tracemalloc``'s peak during one ``distance`` call
(numpy's buffers are traced; ``ru_maxrss`` is not used: the imports' own peak hides it),
against the bound: two snapshots of the largest tensor plus one snapshot of the small
tensors (under 1 MiB).

Two layouts of a 64 MiB snapshot (float32): ``even``, four 16 MiB tensors (as
bench_tensor_read.py), and ``mixed``, one 32 MiB tensor, one of 16, one of 8, one of 4 and
16 of 256 KiB (a model's biases and norms: many small reads).

Run: ``python benchmarks/bench_weights.py [--quick] [--rounds N] [--layout even|mixed]``
(quick: 20 x 16 MiB; both layouts by default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from baselines import MiB, report, scratch

from recordkit import Recorder, load, weights

SNAPSHOTS = 20
SMALL = 1 * MiB


def layout(kind: str, total: int) -> dict[str, int]:
    """Tensor name -> bytes of one snapshot of *total* bytes, of layout *kind*."""
    if kind == "even":
        return {f"fc{i}.weight": total // 4 for i in range(4)}
    sizes = {"embed.weight": total // 2, "fc1.weight": total // 4, "fc2.weight": total // 8,
             "fc3.weight": total // 16}
    sizes.update({f"norm{i}.bias": total // 256 for i in range(16)})
    assert sum(sizes.values()) == total
    return sizes


def write(folder: Path, sizes: dict[str, int]) -> tuple[Path, Path]:
    """The record and the raw file of the same bytes (tensor by tensor, snapshot by
    snapshot: the order distance reads them in)."""
    rng = np.random.default_rng(0)
    state = {name: rng.standard_normal(size // 4, dtype=np.float32).reshape(-1, 256)
             for name, size in sizes.items()}
    raw_path = folder / "raw.bin"
    with Recorder(folder, system=False) as rec:
        for epoch in range(SNAPSHOTS):
            for array in state.values():
                array += np.float32(0.01)
            rec.snapshot(state, epoch=epoch)
    with open(raw_path, "wb") as fh:
        for array in state.values():
            for epoch in range(SNAPSHOTS):  # the same sizes; the values do not matter
                (array + np.float32(epoch)).tofile(fh)
    return rec.path, raw_path


def read_raw(raw_path: Path, sizes: dict[str, int]) -> None:
    with open(raw_path, "rb") as fh:
        for size in sizes.values():
            for _ in range(SNAPSHOTS):
                np.fromfile(fh, dtype=np.float32, count=size // 4)


def read_rows(record_path: Path) -> None:
    record = load(record_path)
    with record:
        for name in record.tensor_names:
            history = record.weight(name)
            for i in range(len(history)):
                history[i]


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


CHILD = """
import json, sys, tracemalloc
from recordkit import load, weights
record = load(sys.argv[1])
with record:
    weights.distance(record, "init", per="tensor", tensors=record.tensor_names[-1:])
    tracemalloc.start()
    weights.distance(record, "init", per="layer")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps({"peak": peak}))
"""


def memory(record_path: Path) -> dict[str, int]:
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", CHILD, str(record_path)], check=True,
                          capture_output=True, text=True, env=env, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB snapshots, not 64")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--layout", choices=("even", "mixed"), action="append",
                        help="tensor layout (both by default)")
    args = parser.parse_args()
    for kind in args.layout or ["even", "mixed"]:
        measure(args, kind)


def measure(args: argparse.Namespace, kind: str) -> None:
    total = (16 if args.quick else 64) * MiB
    target = ">= 0.8 at 64 MiB; quick run: no verdict" if args.quick else ">= 0.8"
    verdict = None if args.quick else True
    sizes = layout(kind, total)
    print(f"bench_weights [{kind}]: distance from init, {SNAPSHOTS} snapshots x "
          f"{total / MiB:.0f} MiB ({len(sizes)} tensors, largest "
          f"{max(sizes.values()) / MiB:.0f} MiB), {args.rounds} rounds", flush=True)
    with scratch("weights") as folder:
        record_path, raw_path = write(folder, sizes)
        record = load(record_path)
        nbytes = SNAPSHOTS * total
        expected = None
        raw_times, distance_times, row_times, ratios, read_ratios = [], [], [], [], []
        read_raw(raw_path, sizes)  # both files in the page cache
        read_rows(record_path)
        weights.distance(record, "init", per="layer")  # pandas imported, threads started
        for round_ in range(args.rounds):
            def run_distance() -> None:
                nonlocal expected
                frame = weights.distance(record, "init", per="layer")
                expected = frame
            passes = [("raw", lambda: read_raw(raw_path, sizes)),
                      ("distance", run_distance), ("rows", lambda: read_rows(record_path))]
            if round_ % 2:
                passes.reverse()
            seconds = {name: timed(fn) for name, fn in passes}
            raw_times.append(seconds["raw"])
            distance_times.append(seconds["distance"])
            row_times.append(seconds["rows"])
            ratios.append(seconds["raw"] / seconds["distance"])
            read_ratios.append(seconds["raw"] / seconds["rows"])
        assert expected is not None and expected.shape == (SNAPSHOTS, len(sizes))
        # every tensor moved 0.01 per element per epoch: the distance says so
        size = sizes["fc3.weight"] // 4
        np.testing.assert_allclose(expected["fc3"].to_numpy(),
                                   0.01 * np.sqrt(size) * np.arange(SNAPSHOTS), rtol=1e-3)
        raw_speed = nbytes / float(np.median(raw_times)) / MiB
        print(f"  raw np.fromfile: {np.median(raw_times):.3f} s ({raw_speed:.0f} MiB/s); "
              f"distance: {np.median(distance_times):.3f} s "
              f"({nbytes / float(np.median(distance_times)) / MiB:.0f} MiB/s); record rows "
              f"read alone: {np.median(row_times):.3f} s "
              f"({nbytes / float(np.median(row_times)) / MiB:.0f} MiB/s)")
        print(f"  per round, raw / distance: {', '.join(f'{r:.2f}' for r in ratios)}")
        value = float(np.median(ratios))
        report(f"[{kind}] distance from init, speed / raw np.fromfile ({raw_speed:.0f} "
               "MiB/s) [in page cache]", value, target, verdict and value >= 0.8)
        report(f"[{kind}] record rows read alone, speed / raw np.fromfile ({raw_speed:.0f} "
               "MiB/s) [in page cache]", float(np.median(read_ratios)), "none (the read path)",
               None)
        report(f"[{kind}] distance, speed / the record's own row reads",
               float(np.median([r / d for r, d in zip(row_times, distance_times)])),
               "none", None)
        used = memory(record_path)
        bound = 2 * max(sizes.values()) + sum(v for v in sizes.values() if v < SMALL)
        print(f"  memory of one distance call: tracemalloc peak {used['peak'] / MiB:.1f} MiB; "
              "bound "
              f"{bound / MiB:.1f} MiB (2 x {max(sizes.values()) / MiB:.0f} MiB + "
              f"{(bound - 2 * max(sizes.values())) / MiB:.0f} MiB of small tensors)")
        report(f"[{kind}] distance peak memory (tracemalloc) / bound", used["peak"] / bound,
               "<= 1.1 (about the bound)", used["peak"] <= 1.1 * bound)


if __name__ == "__main__":
    main()
