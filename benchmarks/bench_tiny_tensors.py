"""The per-tensor overhead of many tiny tensors (issue 17, item 9): 10,000 tensors of a few
floats each, written once as one snapshot and read back, by recordkit and by raw
``np.save`` (one ``.npy`` file per tensor), ``np.savez`` (one file) and safetensors
(``safetensors.numpy.save_file``, one file).

For each way: the bytes on disk per tensor (against the tensor's own bytes), the time to
write (recordkit: ``Recorder(root)``, ``snapshot``, ``save()``; the baselines: the save
call; no fsync for any), the time to read every tensor back (recordkit:
``load(path).weights()``), and the peak resident memory of the write and of the read,
each in a fresh child process (``ru_maxrss`` after the work, less ``ru_maxrss`` once the
tensors are built and the modules imported). Ratios are recordkit's figure over the
baseline's, printed beside the baseline's own figures. Informational (no target). Format
version 3 packs such tensors into one dataset per stored dtype (docs/FORMAT.md, "Version 3
packs"); ``PYTHONPATH=<a checkout of an older recordkit>/src`` measures that one instead.

    python benchmarks/bench_tiny_tensors.py                  # 10,000 tensors of 6 floats
    python benchmarks/bench_tiny_tensors.py --quick          # 1,000
    python benchmarks/bench_tiny_tensors.py --tensors 10000 --floats 6 --snapshots 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import report, scratch

WAYS = ("recordkit", "npy", "npz", "safetensors")


def tensors(count: int, floats: int, epoch: int = 0) -> dict[str, np.ndarray]:
    """*count* float32 tensors of *floats* values, named like a model's (``block3.b``)."""
    rng = np.random.default_rng(epoch)
    return {f"block{i}.b": rng.standard_normal(floats).astype(np.float32)
            for i in range(count)}


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _write(way: str, folder: Path, count: int, floats: int, snapshots: int) -> dict:
    states = [tensors(count, floats, epoch) for epoch in range(snapshots)]
    if way == "recordkit":
        import recordkit
    elif way == "safetensors":
        from safetensors.numpy import save_file
    before = _peak_kib()
    start = time.perf_counter()
    if way == "recordkit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = recordkit.Recorder(folder, system=False)
            for epoch, state in enumerate(states):
                rec.snapshot(state, epoch=epoch)
                rec.commit()
            rec.save()
    elif way == "npy":
        for epoch, state in enumerate(states):
            sub = folder / f"epoch{epoch}"
            sub.mkdir()
            for name, array in state.items():
                np.save(sub / f"{name}.npy", array)
    elif way == "npz":
        for epoch, state in enumerate(states):
            np.savez(folder / f"epoch{epoch}.npz", **state)
    elif way == "safetensors":
        for epoch, state in enumerate(states):
            save_file(state, str(folder / f"epoch{epoch}.safetensors"))
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"seconds": seconds, "bytes": size, "peak_kib": _peak_kib() - before}


def _read(way: str, folder: Path, count: int, floats: int, snapshots: int) -> dict:
    if way == "recordkit":
        import recordkit
    elif way == "safetensors":
        from safetensors import safe_open
    before = _peak_kib()
    start = time.perf_counter()
    total = 0
    if way == "recordkit":
        path = next(folder.rglob("*.h5"))
        record = recordkit.load(path)
        with record:
            for epoch in record.snapshot_epochs:
                total += sum(a.size for a in record.weights(epoch=epoch).values())
    elif way == "npy":
        for sub in sorted(folder.glob("epoch*")):
            total += sum(np.load(p).size for p in sub.glob("*.npy"))
    elif way == "npz":
        for path in sorted(folder.glob("epoch*.npz")):
            with np.load(path) as data:
                total += sum(data[k].size for k in data.files)
    elif way == "safetensors":
        for path in sorted(folder.glob("epoch*.safetensors")):
            with safe_open(str(path), framework="numpy") as data:
                total += sum(data.get_tensor(k).size for k in data.keys())  # noqa: SIM118
    seconds = time.perf_counter() - start
    assert total == count * floats * snapshots, (way, total)
    return {"seconds": seconds, "peak_kib": _peak_kib() - before}


def child(argv: list[str]) -> None:
    phase, way, folder, count, floats, snapshots = argv
    run = _write if phase == "write" else _read
    print(json.dumps(run(way, Path(folder), int(count), int(floats), int(snapshots))))


def measure(way: str, folder: Path, count: int, floats: int, snapshots: int) -> dict:
    """The write and the read of *way*, each in a fresh child process."""
    out: dict[str, dict] = {}
    for phase in ("write", "read"):
        done = subprocess.run(
            [sys.executable, __file__, "--child", phase, way, str(folder), str(count),
             str(floats), str(snapshots)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{way} {phase} failed: {done.stderr[-2000:]}")
        out[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def available(way: str) -> bool:
    if way != "safetensors":
        return True
    try:
        import safetensors.numpy  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=10_000)
    parser.add_argument("--floats", type=int, default=6, help="values per tensor")
    parser.add_argument("--snapshots", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each way; the fastest is kept (sizes are the same)")
    parser.add_argument("--quick", action="store_true", help="1,000 tensors, one round")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    if args.quick:
        args.tensors, args.rounds = 1_000, 1
    count, floats, snapshots = args.tensors, args.floats, args.snapshots
    data = count * floats * 4 * snapshots
    print(f"{count} tensors x {floats} float32 x {snapshots} snapshot(s): "
          f"{data / 1024:.0f} KiB of data, {floats * 4} B per tensor", flush=True)
    results: dict[str, dict] = {}
    for way in WAYS:
        if not available(way):
            print(f"  {way}: not installed, left out")
            continue
        best: dict | None = None
        for _ in range(args.rounds):
            with scratch(f"tiny-{way}") as folder:
                got = measure(way, folder, count, floats, snapshots)
            if best is None:
                best = got
            else:
                for phase in ("write", "read"):
                    best[phase]["seconds"] = min(best[phase]["seconds"],
                                                 got[phase]["seconds"])
                    best[phase]["peak_kib"] = min(best[phase]["peak_kib"],
                                                  got[phase]["peak_kib"])
        assert best is not None
        results[way] = best
        w, r = best["write"], best["read"]
        per = count * snapshots
        print(f"  {way:<12} {w['bytes'] / per:9.0f} B/tensor on disk "
              f"({w['bytes'] / data:6.1f}x the data), write {w['seconds']:6.3f} s "
              f"({w['seconds'] / per * 1e6:6.1f} us/tensor), read {r['seconds']:6.3f} s "
              f"({r['seconds'] / per * 1e6:6.1f} us/tensor), peak RSS write "
              f"{w['peak_kib'] / 1024:7.1f} MiB, read {r['peak_kib'] / 1024:7.1f} MiB",
              flush=True)
    mine = results["recordkit"]
    for way, theirs in results.items():
        if way == "recordkit":
            continue
        for label, value, base, unit in (
                ("file size", mine["write"]["bytes"], theirs["write"]["bytes"], "B"),
                ("write time", mine["write"]["seconds"], theirs["write"]["seconds"], "s"),
                ("read time", mine["read"]["seconds"], theirs["read"]["seconds"], "s"),
                ("write peak RSS", mine["write"]["peak_kib"], theirs["write"]["peak_kib"],
                 "KiB"),
                ("read peak RSS", mine["read"]["peak_kib"], theirs["read"]["peak_kib"],
                 "KiB")):
            ratio = value / base if base else float("inf")
            report(f"recordkit/{way} {label} (recordkit {value:.4g} {unit}, {way} "
                   f"{base:.4g} {unit})", ratio, "informational", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
