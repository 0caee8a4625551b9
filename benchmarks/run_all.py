"""Run every benchmark in this folder, one fresh process each, and summarise.

Run: ``python benchmarks/run_all.py [--quick]``. Each benchmark prints its figures as
ratios against a baseline measured in the same process; lines tagged [PASS] / [FAIL] have
a target from issue 6 (or from the benchmark's own issue), [info] lines have none.
The exit status is 1 when a target failed or a benchmark crashed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Order: the cheap ones first; benchmarks written for other issues run when present
#: (bench_peers.py: recordkit beside raw, safetensors and torch.save, issue 13).
ORDER = ["bench_history.py", "bench_memory.py", "bench_snapshot.py", "bench_tensor_read.py",
         "bench_read.py",
         "bench_alternatives.py", "bench_peers.py", "bench_lightning.py", "bench_keras.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, for a check in a minute or two")
    parser.add_argument("only", nargs="*", help="run only these benchmarks (file names)")
    args = parser.parse_args()
    present = sorted(p.name for p in HERE.glob("bench_*.py"))
    scripts = [n for n in ORDER if n in present] + [n for n in present if n not in ORDER]
    if args.only:
        scripts = [n for n in scripts if n in args.only or n.removesuffix(".py") in args.only]
    failures: list[str] = []
    lines: list[str] = []
    for name in scripts:
        quick = args.quick and "--quick" in (HERE / name).read_text()
        command = [sys.executable, str(HERE / name)] + (["--quick"] if quick else [])
        print(f"\n=== {name} ({' '.join(command[1:])})", flush=True)
        start = time.perf_counter()
        run = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        tagged = [line.strip() for line in run.stdout.splitlines()
                  if line.strip().startswith(("[PASS]", "[FAIL]"))]
        lines += [f"{name}: {line}" for line in tagged]
        if run.returncode != 0:
            sys.stdout.write(run.stderr[-3000:])
            failures.append(f"{name} exited with {run.returncode}")
        failures += [f"{name}: {line}" for line in tagged if line.startswith("[FAIL]")]
        print(f"    ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\n=== summary")
    for line in lines:
        print(f"  {line}")
    print(f"  {len(scripts)} benchmark(s), {len(failures)} failure(s)")
    for failure in failures:
        print(f"  ! {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
