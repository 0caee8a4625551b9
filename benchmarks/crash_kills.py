"""The big SIGKILL experiment behind docs/RELIABILITY.md (slow; not run by CI).

Starts tests/crash_writer.py N times, SIGKILLs each at a random moment, then checks every
record in one child process (tests/crash_writer.py --check): loads, holds every epoch
whose commit() returned with the logged values, snapshots equal, status interrupted,
``recordkit verify`` clean. Prints the figures.

    python benchmarks/crash_kills.py --kills 200 [--big] [--seed 1] [--early 0.1]

``--early`` is the share of kills timed from the spawn of the process instead of from the
moment the Recorder exists, so some land during import and run creation.
``--big`` uses 1 MiB weight tensors (longer snapshot writes, more kills inside them).

    python benchmarks/crash_kills.py --crashpoints

instead aims a kill at every write of each phase of tests/crash_writer.py's ``PHASES``
(tests/crashpoint_shim.c, built with ``cc``, preloaded) and prints the report of
tests/test_crashpoints.py: kill points per phase and every failure.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

WRITER = Path(__file__).resolve().parents[1] / "tests" / "crash_writer.py"
SHIM = WRITER.with_name("crashpoint_shim.c")


def crashpoints() -> int:
    """The crash-point harness of tests/test_crashpoints.py, its report printed."""
    import os

    work = Path(tempfile.mkdtemp(prefix="crashpoints-"))
    shim = work / "crashpoint_shim.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM), "-ldl"],
                   check=True)
    env = {**os.environ, "LD_PRELOAD": str(shim), "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(WRITER.parents[1])}
    done = subprocess.run([sys.executable, str(WRITER), "--crashpoints", str(work / "runs")],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        print("harness failed:", done.stderr[-3000:])
        return 1
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"kill points checked: {report['checked']} in {report['seconds']} s; "
          f"failed: {len(report['failures'])}")
    for phase, counts in report["phases"].items():
        failed = sum(p.rsplit(" write ", 1)[0] == phase for p in report["failures"])
        print(f"  {phase}: {counts}, failed {failed}")
    for point, entry in report["failures"].items():
        print(" FAIL", point, entry["failures"][:2])
    print("records kept in", work)
    return 1 if report["failures"] else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--early", type=float, default=0.1)
    parser.add_argument("--window", type=float, default=0.6, help="max seconds before a kill")
    parser.add_argument("--crashpoints", action="store_true",
                        help="a kill at every write of each phase instead of random kills")
    args = parser.parse_args()
    if args.crashpoints:
        return crashpoints()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="crash-kills-"))
    todo: dict[str, int] = {}
    outcome: Counter[str] = Counter()
    lasts = []
    start = time.perf_counter()
    for i in range(args.kills):
        cmd = [sys.executable, str(WRITER), str(root / f"k{i}")] + (["--big"] if args.big else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        assert proc.stdout is not None
        started = False
        if rng.random() < args.early:
            time.sleep(rng.uniform(0.0, 0.5))  # from spawn: may land before "path"
        else:
            started = proc.stdout.readline().startswith("path ")
            time.sleep(rng.uniform(0.0, args.window))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        if proc.returncode != -signal.SIGKILL:
            outcome[f"writer ended on its own (exit {proc.returncode}): harness error"] += 1
            continue
        lines = out.split()
        committed = [int(x) for x in lines if x.isdigit()]
        files = list((root / f"k{i}").glob("*/*.h5"))
        if not files:
            outcome["killed before the record file existed"] += 1
            continue
        if not started and "path" not in lines:
            outcome["killed inside Recorder() (file exists, not yet returned)"] += 1
        todo[str(files[0])] = max(committed, default=-1)
        lasts.append(max(committed, default=-1))
    done = subprocess.run([sys.executable, str(WRITER), "--check", json.dumps(todo)]
                          + (["--big"] if args.big else []),
                          capture_output=True, text=True, check=False)
    if done.returncode:
        print("checker died:", done.returncode, done.stderr[-3000:])
        return 1
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {p: r["failures"] for p, r in results.items() if r["failures"]}
    repaired = [p for p, r in results.items() if r["repaired"]]
    (root / "todo.json").write_text(json.dumps(todo))
    inside = {p for p in todo if todo[p] == -1}
    print(f"kills: {args.kills} (seed {args.seed}, big={args.big}, early={args.early}) "
          f"in {time.perf_counter() - start:.0f} s")
    for what, n in outcome.items():
        print(f"  {what}: {n}")
    print(f"records checked: {len(results)}; kept every committed epoch and loaded: "
          f"{len(results) - len(failed)}; failed: {len(failed)}")
    print(f"  of which no commit had returned yet: {len(inside)}")
    print(f"  needed `recordkit repair` (load said so) before every committed epoch read: "
          f"{len(repaired)}")
    stale = sum(bool(r["stale_end"]) for r in results.values())
    print(f"  superblock end address short of the file (read around by load): {stale}")
    if lasts:
        lasts.sort()
        print(f"last committed epoch at the kill: min {lasts[0]}, median "
              f"{lasts[len(lasts) // 2]}, max {lasts[-1]}")
    for path, failures in list(failed.items())[:10]:
        print(" FAIL", path, failures[:3])
    print("records kept in", root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
