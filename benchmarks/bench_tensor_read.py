"""Reading one tensor of one snapshot against a raw ``np.fromfile`` of the same bytes.

Target (issue 6): <= 2x, on a 20-snapshot x 64 MiB record (uncompressed defaults, with
checksums verified on read). The page cache is dropped for the file before each read
when the kernel allows it (posix_fadvise), for both ways alike.

Run: ``python benchmarks/bench_tensor_read.py [--quick]`` (quick: 20 x 16 MiB).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from baselines import MiB, drop_page_cache_hint, report, scratch

from recordkit import Recorder, load

SNAPSHOTS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB snapshots, not 64")
    args = parser.parse_args()
    size = (16 if args.quick else 64) * MiB
    # The target is for 64 MiB snapshots; a quick run gives figures, no verdict.
    target = "<= 2 at 64 MiB; quick run: no verdict" if args.quick else "<= 2"
    rng = np.random.default_rng(0)
    # Four tensors per snapshot; the one read is a quarter of the snapshot.
    state = {f"t{i}": rng.standard_normal(size // 16, dtype=np.float32).reshape(-1, 256)
             for i in range(4)}
    print(f"bench_tensor_read: {SNAPSHOTS} snapshots x {size / MiB:.0f} MiB, reading one "
          f"{state['t2'].nbytes / MiB:.0f} MiB tensor of one snapshot")
    with scratch("tensor-read") as folder:
        with Recorder(folder, system=False) as rec:
            for epoch in range(SNAPSHOTS):
                state["t2"][0, 0] = epoch
                rec.snapshot(state, epoch=epoch)
        with Recorder(folder / "nock", system=False, checksum=False) as plain:
            for epoch in range(SNAPSHOTS):
                state["t2"][0, 0] = epoch
                plain.snapshot(state, epoch=epoch)
        raw_path = folder / "raw.bin"
        state["t2"].tofile(raw_path)
        ours_cold, raw_cold, ours_warm, raw_warm, loads, opened, plain_opened = (
            [], [], [], [], [], [], [])
        record = load(rec.path)
        plain_record = load(plain.path)
        for epoch in (3, 11, 17, 7, 13):
            drop_page_cache_hint(rec.path)
            drop_page_cache_hint(raw_path)
            t = time.perf_counter()
            raw = np.fromfile(raw_path, dtype=np.float32)
            raw_cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            value = load(rec.path).weight("t2")[epoch]
            ours_cold.append(time.perf_counter() - t)
            assert value[0, 0] == epoch and raw.size == value.size
            t = time.perf_counter()
            np.fromfile(raw_path, dtype=np.float32)
            raw_warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            load(rec.path).weight("t2")[epoch]
            ours_warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            load(rec.path)
            loads.append(time.perf_counter() - t)
            with record:
                t = time.perf_counter()
                record.weight("t2")[epoch]
                opened.append(time.perf_counter() - t)
            with plain_record:
                t = time.perf_counter()
                plain_record.weight("t2")[epoch]
                plain_opened.append(time.perf_counter() - t)
    for label, ours, raw in (("cache dropped", ours_cold, raw_cold),
                             ("in page cache", ours_warm, raw_warm)):
        ratio = float(np.median(ours) / np.median(raw))
        print(f"  {label}: recordkit {np.median(ours) * 1e3:.1f} ms (load + read), raw "
              f"{np.median(raw) * 1e3:.1f} ms")
        report(f"load + read one tensor / np.fromfile [{label}]", ratio, target,
               None if args.quick else ratio <= 2)
    ratio = float(np.median(opened) / np.median(raw_warm))
    print(f"  load() alone: {np.median(loads) * 1e3:.1f} ms; the read alone, record open: "
          f"{np.median(opened) * 1e3:.1f} ms")
    report("read one tensor, record open / np.fromfile [in page cache]", ratio, target,
           None if args.quick else ratio <= 2)
    ratio = float(np.median(plain_opened) / np.median(raw_warm))
    report("the same, checksum=False record", ratio, "<= 2", None)


if __name__ == "__main__":
    main()
