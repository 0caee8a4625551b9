"""Snapshot throughput and training-thread time against raw writes of the same bytes.

Targets (issue 6, 2-core machine, uncompressed defaults):
  * throughput >= 0.85 of ``ndarray.tofile`` + fsync, 4 epochs x 256 MiB;
  * time the training thread spends inside ``snapshot()`` <= 0.5 of the raw write time.

Run: ``python benchmarks/bench_snapshot.py [--quick]`` (quick: 4 x 32 MiB).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from baselines import MiB, raw_write_seconds, report, scratch

from recordkit import Recorder

EPOCHS = 4


def make_state(total_bytes: int) -> dict[str, np.ndarray]:
    """A model-like state: a few big matrices and some small vectors, float32."""
    rng = np.random.default_rng(0)
    big = total_bytes // 8
    state = {f"layer{i}.weight": rng.standard_normal(big // 4, dtype=np.float32).reshape(
        -1, 1024) for i in range(7)}
    rest = total_bytes - 7 * big
    for i in range(16):
        state[f"layer{i}.bias"] = rng.standard_normal(rest // 64, dtype=np.float32)
    return state


def train_step(state: dict[str, np.ndarray], epoch: int) -> None:
    """Change the state in place a little, as an optimizer step would."""
    for value in state.values():
        value[:1] += np.float32(epoch)


def recordkit_back_to_back(state: dict[str, np.ndarray], folder: Path, durable: bool = True,
                           **options: object) -> tuple[float, float]:
    """(seconds from the first snapshot to the final commit, seconds inside snapshot()).

    durable=True: each snapshot is fsynced once written, as the raw baseline fsyncs each
    epoch's file."""
    with Recorder(folder, system=False, durable=durable, **options) as rec:  # type: ignore[arg-type]
        inside = 0.0
        start = time.perf_counter()
        for epoch in range(EPOCHS):
            t = time.perf_counter()
            rec.snapshot(state, epoch=epoch)
            inside += time.perf_counter() - t
            train_step(state, epoch)
        rec.commit()
        total = time.perf_counter() - start
    return total, inside


def recordkit_with_training(state: dict[str, np.ndarray], folder: Path, epoch_seconds: float
                            ) -> float:
    """Seconds spent inside snapshot() + commit(wait=False) when each epoch trains for
    *epoch_seconds* (sleep: the writer gets a core, as with a GPU or a 2-core box)."""
    with Recorder(folder, system=False) as rec:
        inside = 0.0
        for epoch in range(EPOCHS):
            time.sleep(epoch_seconds)
            train_step(state, epoch)
            t = time.perf_counter()
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot(state, epoch=epoch)
            rec.commit(wait=False)
            inside += time.perf_counter() - t
        rec.commit(durable=True)
    return inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x 32 MiB instead of 256 MiB")
    parser.add_argument("--variants", action="store_true",
                        help="also measure checksum off, chunk sizes and sync mode")
    args = parser.parse_args()
    size = (32 if args.quick else 256) * MiB

    def target(text: str) -> str:  # the targets are for 256 MiB epochs
        return f"{text} at 256 MiB; quick run: no verdict" if args.quick else text

    repeats = 2 if args.quick else 3
    state = make_state(size)
    nbytes = sum(v.nbytes for v in state.values())
    print(f"bench_snapshot: {EPOCHS} epochs x {nbytes / MiB:.0f} MiB, median of {repeats}")
    with scratch("snapshot") as folder:
        copies = [np.concatenate([v.ravel() for v in state.values()]) for _ in range(EPOCHS)]
        variants: list[tuple[str, dict[str, object]]] = [("default", {})]
        if args.variants:
            variants += [
                ("checksum=False", {"checksum": False}),
                ("chunk_bytes=16MiB", {"chunk_bytes": 16 * MiB}),
                ("background=False", {"background": False}),
                ("background=False checksum=False", {"background": False, "checksum": False}),
            ]
        # The machine is shared: each recordkit run is paired with a raw run just before
        # it, and the median of the paired ratios is reported.
        raws: list[float] = []
        for label, options in variants:
            ratios, rates = [], []
            for i in range(repeats):
                raw = raw_write_seconds(copies, folder)
                raws.append(raw)
                total, _ = recordkit_back_to_back(state, folder / f"{label}-{i}", **options)
                ratios.append(raw / total)
                rates.append(EPOCHS * nbytes / MiB / total)
            ratio = float(np.median(ratios))
            report(f"throughput vs raw [{label}] ({np.median(rates):.0f} MiB/s; raw "
                   f"{EPOCHS * nbytes / MiB / np.median(raws):.0f} MiB/s)", ratio,
                   target(">= 0.85"),
                   ratio >= 0.85 if label == "default" and not args.quick else None)
        # Without fsync (page cache only) the disk is out of the picture: this shows the
        # CPU ceiling of the HDF5 write path (checksums included) against raw write().
        cached = []
        for i in range(repeats):
            raw_cached = raw_write_seconds(copies, folder, fsync=False)
            total, _ = recordkit_back_to_back(state, folder / f"cached-{i}", durable=False)
            cached.append(raw_cached / total)
        report("throughput vs raw, no fsync (page cache only)", float(np.median(cached)),
               "none", None)
        del copies
        raw = float(np.median(raws))
        inside = float(np.median([
            recordkit_with_training(state, folder / f"train-{i}", raw / EPOCHS * 1.5)
            for i in range(repeats)]))
        report("time inside snapshot()+log()+commit(wait=False) / raw write", inside / raw,
               target("<= 0.5"), None if args.quick else inside / raw <= 0.5)

if __name__ == "__main__":
    main()
