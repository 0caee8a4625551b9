"""recordkit side by side with raw writes, safetensors and torch.save, in one run (issue 13,
item 4).

Writing: a model-like state of torch float32 tensors (8 layers of 4 MiB and 8 MiB matrices
plus small vectors, 256 MiB) is kept for 4 epochs, the tensors changed a little between
epochs as a training step would, four ways:

- ``raw``: ``ndarray.tofile`` of each tensor into one file per epoch (the floor);
- ``safetensors``: ``safetensors.torch.save_file`` a file per epoch;
- ``torch.save``: ``torch.save(state_dict)`` a file per epoch;
- ``recordkit``: defaults, ``Recorder(root)``, ``rec.snapshot(state, epoch=e)`` per epoch,
  ``rec.save()``.

Every way does exactly one fsync per file, at the end, once everything is written (the
raw, safetensors and torch.save files are closed and each is fsynced through a fresh
descriptor; recordkit's defaults, ``durable=False``, never fsync, so its one file is
fsynced the same way after ``save()``). The time runs from the first byte (for recordkit:
``Recorder(root)``, system info included) to the end of the last fsync, the training
steps included for every way alike. Fresh files each time, removed after. Each round runs
the four ways one after the other, the order rotated from round to round, and the ratios
are taken within a round (paired) and their median reported, beside each way's own
median speed, so a slow-disk run can be recognised. ``/proc/self/io`` write_bytes is read
before and after each way's run (after its fsync; nothing else in this process writes
meanwhile): the bytes it sent to the disk over the tensor bytes.

Reading: one 4 MiB tensor of one epoch from a fresh open each time, with
``safe_open(...).get_tensor``, ``torch.load(mmap=True)[name]``, recordkit
``load(path).weight(name)[epoch]`` (and, for information, the same read from a record
loaded once, without ``load()`` in the time) and ``np.fromfile`` of the same bytes with
their offset in the raw file (the floor). Each result is copied into a reused buffer
(every byte read), so an mmap's laziness does not count as speed. Two passes: files in
the page cache, and with each file's pages dropped (``posix_fadvise(DONTNEED)``) before
each read. Then a whole epoch, in the page cache: ``np.fromfile`` of the raw epoch file
(one read of all its bytes), ``safetensors.torch.load_file``, and recordkit
``weights(epoch)`` of a record loaded once and after a fresh ``load()``.

Targets (issue 13): recordkit write throughput >= 1.0x safetensors and >= 0.95x raw in
the same run; one tensor read no slower than safetensors (page cache; the dropped pass is
informational: it measures this disk); write_bytes per snapshot <= 1.02x the tensor bytes;
a whole epoch of a record loaded once <= 1.2x reading its bytes raw.

Run: ``python benchmarks/bench_peers.py [--quick] [--rounds N] [--reads N]``
(full: 4 x 256 MiB, 5 rounds, 2-3 minutes; quick: 4 x 32 MiB, 3 rounds, no verdicts
on the size-dependent figures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from baselines import MiB, drop_page_cache_hint, report, scratch
from safetensors import safe_open

from recordkit import Recorder, load

EPOCHS = 4
#: The tensor read back: a 4 MiB matrix of the first layer, at this epoch.
READ_NAME = "layers.0.attn.q.weight"
READ_EPOCH = 2


def make_state(layers: int) -> dict[str, torch.Tensor]:
    """*layers* transformer-like blocks of 32 MiB each: four 1024x1024 attention matrices
    (4 MiB), two 1024x2048 MLP matrices (8 MiB), their biases and two layer norms."""
    gen = torch.Generator().manual_seed(0)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        p = f"layers.{i}"
        for m in ("q", "k", "v", "o"):
            shapes[f"{p}.attn.{m}.weight"] = (1024, 1024)
            shapes[f"{p}.attn.{m}.bias"] = (1024,)
        shapes[f"{p}.mlp.fc1.weight"] = (2048, 1024)
        shapes[f"{p}.mlp.fc1.bias"] = (2048,)
        shapes[f"{p}.mlp.fc2.weight"] = (1024, 2048)
        shapes[f"{p}.mlp.fc2.bias"] = (1024,)
        for n in ("norm1", "norm2"):
            shapes[f"{p}.{n}.weight"] = (1024,)
            shapes[f"{p}.{n}.bias"] = (1024,)
    return {k: torch.randn(s, generator=gen, dtype=torch.float32) for k, s in shapes.items()}


def train_step(state: dict[str, torch.Tensor], epoch: int) -> None:
    """Change every tensor a little, in place, as an optimizer step would (one value in
    every 64: cheap, but every 4 KiB page of every tensor is written)."""
    for value in state.values():
        value.view(-1)[::64].add_(1e-3 * (epoch + 1))


def io_write_bytes() -> int:
    """This process's ``write_bytes`` from /proc/self/io (all its threads)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def fsync_files(paths: list[Path]) -> None:
    """One fsync per file, through a fresh descriptor (the writer has closed it)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- the four ways of writing; each returns the files it wrote, fsynced ----------------

def write_raw(state: dict[str, torch.Tensor], folder: Path) -> list[Path]:
    paths = []
    for epoch in range(EPOCHS):
        path = folder / f"raw-{epoch}.bin"
        with open(path, "wb") as fh:
            for value in state.values():
                value.numpy().tofile(fh)
        paths.append(path)
        train_step(state, epoch)
    fsync_files(paths)
    return paths


def write_safetensors(state: dict[str, torch.Tensor], folder: Path) -> list[Path]:
    paths = []
    for epoch in range(EPOCHS):
        path = folder / f"epoch-{epoch}.safetensors"
        safetensors.torch.save_file(state, str(path))
        paths.append(path)
        train_step(state, epoch)
    fsync_files(paths)
    return paths


def write_torch(state: dict[str, torch.Tensor], folder: Path) -> list[Path]:
    paths = []
    for epoch in range(EPOCHS):
        path = folder / f"epoch-{epoch}.pt"
        torch.save(state, path)
        paths.append(path)
        train_step(state, epoch)
    fsync_files(paths)
    return paths


def write_recordkit(state: dict[str, torch.Tensor], folder: Path) -> list[Path]:
    rec = Recorder(folder)
    for epoch in range(EPOCHS):
        rec.snapshot(state, epoch=epoch)
        train_step(state, epoch)
    rec.save()
    fsync_files([rec.path])
    return [rec.path]


WRITERS: dict[str, Callable[[dict[str, torch.Tensor], Path], list[Path]]] = {
    "raw": write_raw, "safetensors": write_safetensors, "torch.save": write_torch,
    "recordkit": write_recordkit,
}


def timed_write(way: str, state: dict[str, torch.Tensor], folder: Path
                ) -> tuple[float, int, list[Path]]:
    """(seconds, write_bytes of this process meanwhile, the files written)."""
    folder.mkdir(parents=True)
    before = io_write_bytes()
    start = time.perf_counter()
    paths = WRITERS[way](state, folder)
    elapsed = time.perf_counter() - start
    return elapsed, io_write_bytes() - before, paths


def remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink()


# --- reading one tensor of one epoch, from a fresh open each time ----------------------

#: Every result is copied into this buffer: all its bytes are read, so an mmap-backed
#: result (torch.load(mmap=True); safe_open may map the file too) does not win by laziness.
SINK: dict[tuple[int, ...], np.ndarray] = {}


def touch(array: np.ndarray) -> None:
    """Copy *array* into a reused buffer of its shape (the same cost for every way)."""
    sink = SINK.setdefault(array.shape, np.empty(array.shape, np.float32))
    np.copyto(sink, array)


class Readers:
    """The files of one write of each way, and a reader of the same tensor for each."""

    def __init__(self, files: dict[str, list[Path]], state: dict[str, torch.Tensor]) -> None:
        self.files = files
        self.offset = 0
        for name, value in state.items():  # where the tensor starts in a raw epoch file
            if name == READ_NAME:
                break
            self.offset += value.numel() * value.element_size()
        self.shape = tuple(state[READ_NAME].shape)
        self.record = load(self.path("recordkit"))  # for the read without load()

    def path(self, way: str) -> Path:
        if way.startswith("recordkit"):
            return self.files["recordkit"][0]
        return self.files["torch.save" if way == "torch.load(mmap)" else way][READ_EPOCH]

    def read(self, way: str) -> np.ndarray:
        path = self.path(way)
        if way == "raw":
            count = int(np.prod(self.shape))
            return np.fromfile(path, dtype=np.float32, count=count,
                               offset=self.offset).reshape(self.shape)
        if way == "safetensors":
            with safe_open(str(path), framework="pt") as fh:
                return fh.get_tensor(READ_NAME).numpy()
        if way == "torch.load(mmap)":
            return torch.load(path, mmap=True)[READ_NAME].numpy()
        if way == "recordkit":
            return load(path).weight(READ_NAME)[READ_EPOCH]
        if way == "recordkit, loaded once":
            return self.record.weight(READ_NAME)[READ_EPOCH]
        raise ValueError(way)


READ_WAYS = ["raw", "safetensors", "torch.load(mmap)", "recordkit",
             "recordkit, loaded once"]


def pages_touched(array: np.ndarray) -> int:
    """One byte of every page of *array* read (a tensor backed by a file mapping, as
    safetensors' may be, is then in memory, not merely mapped); its bytes."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    int(flat[::4096].sum())
    return int(flat.nbytes)


def read_epoch(readers: Readers, way: str) -> int:
    """Every tensor of epoch READ_EPOCH, every page of each touched (:func:`pages_touched`);
    the bytes read."""
    if way == "raw":
        path = readers.files["raw"][READ_EPOCH]
        return pages_touched(np.fromfile(path, dtype=np.uint8))  # the whole epoch: one read
    if way == "safetensors":
        arrays = {k: v.numpy() for k, v in
                  safetensors.torch.load_file(str(readers.files["safetensors"][READ_EPOCH])
                                              ).items()}
    elif way == "recordkit":
        arrays = load(readers.path("recordkit")).weights(READ_EPOCH)
    else:
        arrays = readers.record.weights(READ_EPOCH)
    return sum(pages_touched(a) for a in arrays.values())


EPOCH_WAYS = ["raw", "safetensors", "recordkit", "recordkit, loaded once"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x 32 MiB, 3 rounds")
    parser.add_argument("--rounds", type=int, help="write rounds (each: every way once)")
    parser.add_argument("--reads", type=int, help="reads of each way per pass")
    args = parser.parse_args()
    layers = 1 if args.quick else 8
    rounds = args.rounds or (3 if args.quick else 5)
    reads = args.reads or (9 if args.quick else 21)
    warnings.filterwarnings("ignore")

    def target(text: str) -> str:  # the write targets are for 256 MiB epochs
        return f"{text} at 256 MiB; quick run: no verdict" if args.quick else text

    state = make_state(layers)
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    total_mib = EPOCHS * nbytes / MiB
    print(f"bench_peers: {EPOCHS} epochs x {nbytes / MiB:.1f} MiB ({len(state)} tensors, "
          f"float32), {rounds} rounds, order rotated; torch {torch.__version__}, "
          f"safetensors {safetensors.__version__}")
    ways = list(WRITERS)
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    written: dict[str, list[int]] = {w: [] for w in ways}
    with scratch("peers") as folder:
        warm = make_state(1)  # imports, thread start, first-call costs: not measured
        for way in ways:
            remove(timed_write(way, {k: v[..., :8].clone() for k, v in warm.items()},
                               folder / f"warm-{way}")[2])
        del warm
        for r in range(rounds):
            order = ways[r % len(ways):] + ways[:r % len(ways)]
            for way in order:
                elapsed, wbytes, paths = timed_write(way, state, folder / f"{way}-{r}")
                seconds[way].append(elapsed)
                written[way].append(wbytes)
                remove(paths)
            print(f"  round {r}: " + ", ".join(
                f"{w} {total_mib / seconds[w][-1]:.0f}" for w in ways) + " MiB/s "
                f"(order {', '.join(order)})", flush=True)
        rate = {w: total_mib / statistics.median(seconds[w]) for w in ways}
        print("  median MiB/s: " + ", ".join(f"{w} {rate[w]:.0f}" for w in ways))

        def paired(way: str, base: str) -> float:  # throughput ratio, median over rounds
            return statistics.median(b / a for a, b in zip(seconds[way], seconds[base]))

        for base, goal in (("safetensors", 1.0), ("raw", 0.95)):
            ratio = paired("recordkit", base)
            report(f"write throughput recordkit / {base} (recordkit {rate['recordkit']:.0f} "
                   f"MiB/s; {base} {rate[base]:.0f} MiB/s)", ratio, target(f">= {goal}"),
                   None if args.quick else ratio >= goal)
        for way in ("safetensors", "torch.save"):
            report(f"write throughput {way} / raw ({way} {rate[way]:.0f} MiB/s; raw "
                   f"{rate['raw']:.0f} MiB/s)", paired(way, "raw"), "none", None)
        for way in ways:
            per = statistics.median(written[way]) / (EPOCHS * nbytes)
            report(f"/proc/self/io write_bytes / tensor bytes [{way}] "
                   f"({statistics.median(written[way]) / EPOCHS / MiB:.1f} MiB per "
                   f"snapshot of {nbytes / MiB:.1f} MiB)", per,
                   target("<= 1.02") if way == "recordkit" else "none",
                   per <= 1.02 if way == "recordkit" and not args.quick else None)

        # Reading: one write of each way, kept, each from the same start state.
        start_state = make_state(layers)  # epoch e is written after e training steps
        for epoch in range(READ_EPOCH):
            train_step(start_state, epoch)
        expected = start_state.pop(READ_NAME).numpy()
        del start_state
        files = {way: timed_write(way, make_state(layers), folder / f"read-{way}")[2]
                 for way in ways}
        readers = Readers(files, state)
        for way in READ_WAYS:  # right bytes from each, before anything is timed
            got = readers.read(way)
            assert got.shape == expected.shape and np.array_equal(got, expected), way
        mib = expected.nbytes / MiB
        print(f"  reading {READ_NAME} ({mib:.0f} MiB) of epoch {READ_EPOCH}, a fresh open "
              f"each time, {reads} reads of each way per pass, order alternated")
        for cache in ("page cache", "dropped"):
            took: dict[str, list[float]] = {w: [] for w in READ_WAYS}
            for i in range(reads):
                for way in READ_WAYS if i % 2 == 0 else reversed(READ_WAYS):
                    if cache == "dropped":
                        drop_page_cache_hint(readers.path(way))
                    start = time.perf_counter()
                    touch(readers.read(way))
                    took[way].append(time.perf_counter() - start)
            med = {w: statistics.median(t) for w, t in took.items()}
            print(f"  [{cache}] median ms: " + ", ".join(
                f"{w} {med[w] * 1000:.2f} ({mib / med[w]:.0f} MiB/s)" for w in READ_WAYS))
            for base in ("safetensors", "torch.load(mmap)", "raw"):
                ratio = statistics.median(a / b for a, b in zip(took["recordkit"], took[base]))
                goal = base == "safetensors" and cache == "page cache"
                report(f"read one tensor [{cache}], recordkit / {base} (recordkit "
                       f"{med['recordkit'] * 1000:.2f} ms; {base} {med[base] * 1000:.2f} ms, "
                       f"{mib / med[base]:.0f} MiB/s)", ratio,
                       "<= 1.0" if goal else "none", ratio <= 1.0 if goal else None)
            ratio = statistics.median(
                a / b for a, b in zip(took["recordkit, loaded once"], took["raw"]))
            report(f"read one tensor [{cache}] of a record loaded once (no load() in the "
                   f"time), recordkit / raw ({med['recordkit, loaded once'] * 1000:.2f} ms; "
                   f"raw {med['raw'] * 1000:.2f} ms)", ratio, "none (issue 13 item 3: <= 1.2)",
                   None)
        # A whole epoch (issue 13 item 3: weights(epoch) <= 1.2x reading its bytes raw).
        sizes = {way: read_epoch(readers, way) for way in EPOCH_WAYS}
        assert len(set(sizes.values())) == 1, sizes
        epoch_mib = sizes["raw"] / MiB
        epoch_reads = max(3, reads // 3)
        print(f"  reading all of epoch {READ_EPOCH} ({epoch_mib:.0f} MiB), in the page cache, "
              f"{epoch_reads} reads of each way, order alternated")
        took = {w: [] for w in EPOCH_WAYS}
        for i in range(epoch_reads):
            for way in EPOCH_WAYS if i % 2 == 0 else reversed(EPOCH_WAYS):
                start = time.perf_counter()
                read_epoch(readers, way)
                took[way].append(time.perf_counter() - start)
        med = {w: statistics.median(t) for w, t in took.items()}
        print("  [whole epoch] median ms: " + ", ".join(
            f"{w} {med[w] * 1000:.1f} ({epoch_mib / med[w]:.0f} MiB/s)" for w in EPOCH_WAYS))
        for way in ("recordkit, loaded once", "recordkit"):
            for base in ("raw", "safetensors"):
                ratio = statistics.median(a / b for a, b in zip(took[way], took[base]))
                goal = way == "recordkit, loaded once" and base == "raw"
                report(f"read a whole epoch, {way} / {base} ({med[way] * 1000:.1f} ms; "
                       f"{base} {med[base] * 1000:.1f} ms, {epoch_mib / med[base]:.0f} "
                       "MiB/s)", ratio, target("<= 1.2") if goal else "none",
                       ratio <= 1.2 if goal and not args.quick else None)


if __name__ == "__main__":
    main()
