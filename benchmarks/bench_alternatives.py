"""recordkit side by side with the other ways of keeping weights once per epoch, on a
1M-parameter model: the older tools' nested JSON lists (one document per epoch, as the
old Record stored them), ``torch.save(state_dict)``, ``safetensors`` and Keras
``save_weights``.

For each: write time per snapshot, bytes on disk, and the time to read one tensor of one
epoch from a fresh handle. Ratios are the alternative over recordkit (> 1: recordkit is
faster or smaller). Frameworks that are not installed are skipped.

Run: ``python benchmarks/bench_alternatives.py [--quick] [--no-keras]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from baselines import report, scratch

from recordkit import Recorder, load

# Two dense layers, 784 -> 1024 -> 192: 1,000,640 parameters.
SHAPES = {"dense1.kernel": (784, 1024), "dense1.bias": (1024,),
          "dense2.kernel": (1024, 192), "dense2.bias": (192,)}
READ = "dense1.kernel"


def make_state(epoch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(epoch)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Way:
    """One way of writing a snapshot per epoch and reading one tensor back."""

    name = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)

    def write(self, state: dict[str, np.ndarray], epoch: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def read(self, epoch: int) -> np.ndarray:
        raise NotImplementedError


class Recordkit(Way):
    name = "recordkit"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.rec = Recorder(folder, system=False)

    def write(self, state: dict[str, np.ndarray], epoch: int) -> None:
        self.rec.snapshot(state, epoch=epoch)
        self.rec.commit()  # waits until the snapshot is in the file

    def finish(self) -> None:
        self.rec.close()

    def read(self, epoch: int) -> np.ndarray:
        return load(self.rec.path).weight(READ).at(epoch)


class RecordkitLoaded(Recordkit):
    name = "recordkit, Record already loaded"

    def read(self, epoch: int) -> np.ndarray:
        if not hasattr(self, "record"):
            self.record = load(self.rec.path)
        return self.record.weight(READ).at(epoch)


class NestedJson(Way):
    name = "nested JSON lists (old Record)"

    def write(self, state: dict[str, np.ndarray], epoch: int) -> None:
        document = {"epoch": epoch, "weights": [v.tolist() for v in state.values()]}
        with open(self.folder / f"epoch{epoch}.json", "w") as fh:
            json.dump(document, fh)

    def read(self, epoch: int) -> np.ndarray:
        with open(self.folder / f"epoch{epoch}.json") as fh:
            document = json.load(fh)
        return np.asarray(document["weights"][list(SHAPES).index(READ)], dtype=np.float32)


class TorchSave(Way):
    name = "torch.save(state_dict)"

    def write(self, state: dict[str, np.ndarray], epoch: int) -> None:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()},
                   self.folder / f"epoch{epoch}.pt")

    def read(self, epoch: int) -> np.ndarray:
        import torch

        loaded = torch.load(self.folder / f"epoch{epoch}.pt", weights_only=True, mmap=True)
        return loaded[READ].numpy().copy()


class Safetensors(Way):
    name = "safetensors"

    def write(self, state: dict[str, np.ndarray], epoch: int) -> None:
        from safetensors.numpy import save_file

        save_file(state, str(self.folder / f"epoch{epoch}.safetensors"))

    def read(self, epoch: int) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(self.folder / f"epoch{epoch}.safetensors"), "np") as fh:
            return fh.get_tensor(READ)


class KerasSaveWeights(Way):
    name = "keras save_weights"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        import keras

        self.model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(1024),
                                       keras.layers.Dense(192)])

    def write(self, state: dict[str, np.ndarray], epoch: int) -> None:
        self.model.set_weights(list(state.values()))  # not timed apart: cheap next to I/O
        self.model.save_weights(self.folder / f"epoch{epoch}.weights.h5")

    def read(self, epoch: int) -> np.ndarray:
        # The Keras way reads every weight back into a model.
        self.model.load_weights(self.folder / f"epoch{epoch}.weights.h5")
        return np.asarray(self.model.layers[0].kernel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 10")
    parser.add_argument("--no-keras", action="store_true", help="skip Keras (slow import)")
    args = parser.parse_args()
    epochs = 3 if args.quick else 10
    ways: list[type[Way]] = [Recordkit, RecordkitLoaded, NestedJson]
    for module, way in (("torch", TorchSave), ("safetensors", Safetensors),
                        ("keras", KerasSaveWeights)):
        if importlib.util.find_spec(module) is None or (way is KerasSaveWeights
                                                         and args.no_keras):
            print(f"  (skipped {way.name}: {module} not installed or not asked for)")
        else:
            ways.append(way)
    if KerasSaveWeights in ways:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    states = [make_state(e) for e in range(epochs)]
    params = sum(v.size for v in states[0].values())
    print(f"bench_alternatives: {params:,} parameters, {epochs} epochs, one snapshot each")
    results = {}
    with scratch("alternatives") as folder:
        for way_cls in ways:
            way = way_cls(folder / way_cls.__name__)
            way.write(states[0], 0)  # warm-up: imports, first-file costs
            writes = [timed(lambda e=e, w=way: w.write(states[e], e)) for e in range(epochs)]
            way.finish()
            reads = []
            for e in range(epochs):
                start = time.perf_counter()
                value = way.read(e)
                reads.append(time.perf_counter() - start)
                np.testing.assert_array_equal(value, states[e][READ])  # read back exactly
            results[way_cls.name] = (float(np.median(writes)), folder_bytes(way.folder),
                                     float(np.median(reads)))
            write, size, read = results[way_cls.name]
            print(f"  {way_cls.name:32s} write {write * 1e3:8.1f} ms/snapshot  "
                  f"size {size / 1e6:7.1f} MB  read one tensor {read * 1e3:7.1f} ms")
    ours = results["recordkit"]
    for name, (write, size, read) in results.items():
        if name.startswith("recordkit"):
            continue
        report(f"{name}: write time / recordkit", write / ours[0], "info", None)
        report(f"{name}: size / recordkit", size / ours[1], "info", None)
        report(f"{name}: read one tensor / recordkit", read / ours[2], "info", None)


if __name__ == "__main__":
    main()
