"""Reading one tensor of one snapshot against a raw ``np.fromfile`` of the same bytes.

Target (issue 6): <= 2x, on a 20-snapshot x 64 MiB record (uncompressed defaults, with
checksums verified on read). Each round reads five snapshots, the raw file and the record
alternately, so both see the same machine; figures are medians over all rounds (the raw file is read
twice per round and both reads make its median).

- *in page cache*: both files are in the page cache (the read is memory copies and, for
  the record, the fletcher32 checksums);
- *cache dropped*: the kernel is asked to forget both files first (posix_fadvise), so the
  bytes come from the disk.

Also printed, to show where the time goes: HDF5's own read of the snapshot (``ds[i]``,
which recordkit used before reading chunks itself) and the same read from a record
written with ``checksum=False``.

Run: ``python benchmarks/bench_tensor_read.py [--quick] [--rounds N]`` (quick: 20 x 16 MiB).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import h5py
import numpy as np
from baselines import MiB, drop_page_cache_hint, report, scratch

from recordkit import Recorder, load

SNAPSHOTS = 20
EPOCHS = (3, 11, 17, 7, 13)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB snapshots, not 64")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 5 reads (3)")
    args = parser.parse_args()
    size = (16 if args.quick else 64) * MiB
    # The target is for 64 MiB snapshots; a quick run gives figures, no verdict.
    target = "<= 2 at 64 MiB; quick run: no verdict" if args.quick else "<= 2"
    rng = np.random.default_rng(0)
    # Four tensors per snapshot; the one read is a quarter of the snapshot.
    state = {f"t{i}": rng.standard_normal(size // 16, dtype=np.float32).reshape(-1, 256)
             for i in range(4)}
    tensor_bytes = state["t2"].nbytes
    print(f"bench_tensor_read: {SNAPSHOTS} snapshots x {size / MiB:.0f} MiB, reading one "
          f"{tensor_bytes / MiB:.0f} MiB tensor of one snapshot, {args.rounds} rounds")
    times: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)

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
        del state
        record, plain_record = load(rec.path), load(plain.path)

        def read_raw() -> np.ndarray:
            return np.fromfile(raw_path, dtype=np.float32)

        for _ in range(args.rounds):
            for epoch in EPOCHS:
                read_record = lambda epoch=epoch: record.weight("t2")[epoch]  # noqa: E731
                load_read = lambda epoch=epoch: load(rec.path).weight("t2")[epoch]  # noqa: E731
                # from the disk: open record / raw, then load + read / raw
                with record:
                    drop_page_cache_hint(rec.path)
                    drop_page_cache_hint(raw_path)
                    add("raw cold", timed(read_raw))
                    add("open cold", timed(read_record))
                drop_page_cache_hint(rec.path)
                drop_page_cache_hint(raw_path)
                add("raw cold", timed(read_raw))
                add("load cold", timed(load_read))
                value = load(rec.path).weight("t2")[epoch]
                assert value[0, 0] == epoch and value.nbytes == tensor_bytes
                # in the page cache
                with record, plain_record, h5py.File(rec.path, "r", locking=False) as f:
                    ds = f["weights"]["t2"]
                    add("raw", timed(read_raw))
                    add("open", timed(read_record))
                    add("raw", timed(read_raw))
                    add("load", timed(load_read))
                    add("load alone", timed(lambda: load(rec.path)))
                    add("hdf5", timed(lambda ds=ds, epoch=epoch: ds[epoch]))
                    add("plain", timed(lambda epoch=epoch: plain_record.weight("t2")[epoch]))

    def ms(key: str) -> float:
        return float(np.median(times[key]) * 1e3)

    def ratio(key: str, raw: str) -> float:
        return ms(key) / ms(raw)

    verdict = None if args.quick else True
    print(f"  in page cache: raw {ms('raw'):.1f} ms, record open {ms('open'):.1f} ms, "
          f"load + read {ms('load'):.1f} ms (load alone {ms('load alone'):.1f} ms)")
    value = ratio("open", "raw")
    report("read one tensor, record open / np.fromfile [in page cache]", value, target,
           verdict and value <= 2)
    value = ratio("load", "raw")
    report("load() + read one tensor / np.fromfile [in page cache]", value, target,
           verdict and value <= 2)
    print(f"  cache dropped: raw {ms('raw cold'):.1f} ms, record open {ms('open cold'):.1f} "
          f"ms, load + read {ms('load cold'):.1f} ms")
    value = ratio("open cold", "raw cold")
    report("read one tensor, record open / np.fromfile [cache dropped]", value, target,
           verdict and value <= 2)
    value = ratio("load cold", "raw cold")
    report("load() + read one tensor / np.fromfile [cache dropped]", value, target,
           verdict and value <= 2)
    print(f"  where the time goes (in page cache): HDF5's own read ds[i] {ms('hdf5'):.1f} ms; "
          f"a checksum=False record {ms('plain'):.1f} ms")
    report("HDF5's own read ds[i], checksums verified by HDF5 / np.fromfile",
           ratio("hdf5", "raw"), "none", None)
    report("record written with checksum=False / np.fromfile", ratio("plain", "raw"),
           "none", None)


if __name__ == "__main__":
    main()
