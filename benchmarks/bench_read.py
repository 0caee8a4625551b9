"""How fast a sweep is read back: ``load_all(root).to_dataframe()`` over many runs.

Target (issue 5): 1,000 runs of 10 params and 3 metrics × 20 epochs each in under 1 s on
a 2-core machine, with every file opened (``cache=False``), and with the header cache
(stretch: 10,000 unchanged runs, ``--runs 10000``). The baseline, measured in the same
run, reads the same numbers from 1,000 JSON files (one per run: params + per-epoch
history) with ``json`` and builds the same table with pandas; it is what a folder of
researcher-style JSON files costs.

    python benchmarks/bench_read.py                 # 1,000 runs, data in a scratch folder
    python benchmarks/bench_read.py --quick         # 200 runs
    python benchmarks/bench_read.py --runs 10000 --keep /tmp/sweep10k   # reuse the data

The data is written once (writing 1,000 records takes a while); ``--keep DIR`` keeps it
for the next call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import report

METRICS = ("loss", "val_loss", "val_accuracy")
EPOCHS = 20
TARGET_SECONDS = 1.0


def write_sweep(root: Path, runs: int) -> None:
    """*runs* records (and a JSON twin of each for the baseline) under *root*."""
    import recordkit as rk

    rng = np.random.default_rng(0)
    twins = root / "json"
    twins.mkdir(parents=True, exist_ok=True)
    for i in range(runs):
        params = {f"p{k}": float(rng.choice([0.1, 0.01, 0.001])) for k in range(8)}
        params.update({"width": int(rng.choice([16, 32, 64])), "seed": i})
        history = {m: rng.random(EPOCHS).tolist() for m in METRICS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = rk.Recorder(root, experiment="sweep", name=f"run{i}", params=params,
                              system=False)
        for epoch in range(EPOCHS):
            rec.log({m: history[m][epoch] for m in METRICS}, epoch=epoch)
        rec.commit()
        rec.save()
        (twins / f"run{i}.json").write_text(json.dumps({**params, "history": history}))


def read_recordkit(root: Path, cache: bool = True) -> tuple[float, int]:
    import recordkit as rk

    start = time.perf_counter()
    frame = rk.load_all(root, experiment="sweep", cache=cache).to_dataframe()
    return time.perf_counter() - start, len(frame)


def ls_and_best(root: Path) -> tuple[float, float]:
    """``recordkit ls`` and ``RecordSet.best`` with every file opened (no header cache):
    both must cost what opening the runs costs, never a full read of each."""
    import contextlib
    import io

    import recordkit as rk
    from recordkit import cli

    previous = os.environ.get("RECORDKIT_CACHE")
    os.environ["RECORDKIT_CACHE"] = "0"
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["ls", str(root), "--experiment", "sweep"])
        ls = time.perf_counter() - start
        runs = rk.load_all(root, experiment="sweep")
        start = time.perf_counter()
        runs.best("val_loss")
        best = time.perf_counter() - start
    finally:
        if previous is None:
            del os.environ["RECORDKIT_CACHE"]
        else:
            os.environ["RECORDKIT_CACHE"] = previous
    return ls, best


#: load() of one large record (issue 13): at most this many seconds, whatever it holds.
LOAD_TARGET_SECONDS = 0.002


def load_large_record(repeat: int = 20, tensors: int = 100, snapshots: int = 20,
                      extras: int = 30) -> tuple[float, float]:
    """``recordkit.load()`` of one record of *tensors* weight tensors x *snapshots*
    snapshots and *extras* extras (the tensors are small: what load() could cost grows
    with the objects, not the bytes): min and median of *repeat* loads, seconds. The
    file is written once to a scratch folder and loaded once before the timed loads."""
    import statistics

    import recordkit as rk

    folder = Path(tempfile.mkdtemp(prefix="recordkit-bench-load-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = rk.Recorder(folder, experiment="large", params={"lr": 0.1},
                              system=False)
        state = {f"layer{i}.weight": np.full((64, 64), i, np.float32)
                 for i in range(tensors)}
        for epoch in range(snapshots):
            rec.log({"loss": 1.0 / (epoch + 1), "acc": epoch / snapshots}, epoch=epoch)
            rec.snapshot(state, epoch=epoch)
            rec.commit()
        for i in range(extras):
            rec.add(f"x{i}", np.arange(10))
        rec.save()
        rk.load(rec.path)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            rk.load(rec.path)
            times.append(time.perf_counter() - start)
        return min(times), statistics.median(times)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_json_baseline(root: Path) -> tuple[float, int]:
    """The same table from one JSON file per run: params, then final/best/best epoch."""
    import pandas as pd

    start = time.perf_counter()
    rows = []
    for path in sorted((root / "json").glob("*.json")):
        data = json.loads(path.read_text())
        history = data.pop("history")
        row = dict(data)
        for metric, values in history.items():
            arr = np.asarray(values)
            best = int(arr.argmax() if "acc" in metric else arr.argmin())
            row[f"{metric}.final"] = arr[-1]
            row[f"{metric}.best"] = arr[best]
            row[f"{metric}.best_epoch"] = best
        rows.append(row)
    frame = pd.DataFrame(rows)
    return time.perf_counter() - start, len(frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder to write the sweep to once and reuse afterwards")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many reads")
    parser.add_argument("--quick", action="store_true", help="200 runs (target scaled)")
    args = parser.parse_args(argv)
    if args.quick and args.runs == 1000:
        args.runs = 200

    root = args.keep or Path(tempfile.mkdtemp(prefix="recordkit-bench-read-"))
    cache_dir = Path(tempfile.mkdtemp(prefix="recordkit-bench-cache-"))
    try:
        existing = len(list((root / "sweep").glob("*.h5"))) if (root / "sweep").is_dir() else 0
        if existing != args.runs:
            if existing:
                shutil.rmtree(root)
            start = time.perf_counter()
            write_sweep(root, args.runs)
            print(f"wrote {args.runs} runs in {time.perf_counter() - start:.1f} s "
                  f"under {root}")
        # The header cache goes to a scratch folder, not the user's ~/.cache.
        os.environ["RECORDKIT_CACHE_DIR"] = str(cache_dir)
        # The first read warms the page cache for both readers alike (and imports pandas).
        read_json_baseline(root)
        read_recordkit(root, cache=False)
        opened = sorted(read_recordkit(root, cache=False)[0] for _ in range(args.repeat))
        first = read_recordkit(root)[0]  # reads every file, writes the header cache
        ours = min(read_recordkit(root)[0] for _ in range(args.repeat))
        base = min(read_json_baseline(root)[0] for _ in range(args.repeat))
        ls, best = (min(t) for t in zip(*(ls_and_best(root) for _ in range(args.repeat))))
        limit = TARGET_SECONDS * args.runs / 1000
        ok = opened[0] < limit and ours < limit
        print(f"  {args.runs} runs, 10 params, 3 metrics x {EPOCHS} epochs; baseline: the "
              "same numbers from one JSON file per run, json + pandas")
        report(f"load_all(cache=False).to_dataframe(), every file opened, seconds, min of "
               f"{args.repeat}", opened[0], f"< {limit:.2f} s", opened[0] < limit)
        report("the same, median", opened[len(opened) // 2], "none", None)
        report("every file opened / baseline", opened[0] / base, "none", None)
        report("load_all().to_dataframe(), unchanged runs (header cache), seconds", ours,
               f"< {limit:.2f} s", ours < limit)
        report("the same / baseline", ours / base, "none", None)
        report("first cached read (opens every file, fills the cache), seconds", first,
               "none", None)
        report("recordkit ls, every file opened, seconds", ls, "none", None)
        report("RecordSet.best('val_loss') after load_all, seconds", best, "none", None)
        load_min, load_median = load_large_record()
        report("load() of a record of 100 tensors x 20 snapshots and 30 extras, ms, min "
               "of 20", load_min * 1e3, f"<= {LOAD_TARGET_SECONDS * 1e3:.0f} ms",
               load_min <= LOAD_TARGET_SECONDS)
        report("the same, median", load_median * 1e3,
               f"<= {LOAD_TARGET_SECONDS * 1e3:.0f} ms", load_median <= LOAD_TARGET_SECONDS)
        ok = ok and load_median <= LOAD_TARGET_SECONDS
        return 0 if ok else 1
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
