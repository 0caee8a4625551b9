"""Made the format-version-1 records in this folder with recordkit at commit 0daf2de (the
last writer of version 1); kept so that every later version is tested on real old files.

Run (only with a version-1 writer): ``PYTHONPATH=<checkout of 0daf2de>/src python
tests/data/make_v1.py tests/data/v1``. tests/test_format_versions.py rebuilds the expected
values from the same seeds (:func:`expected`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def state(epoch: int) -> dict[str, np.ndarray]:
    """The weights of snapshot *epoch*: a tensor above the fast-read threshold (1 MiB), a
    small one, an int buffer and a bfloat16 one (stored as uint16 bits)."""
    rng = np.random.default_rng(epoch)
    return {"enc/big.weight": rng.standard_normal((640, 512)).astype(np.float32),
            "fc.bias": rng.standard_normal(32).astype(np.float64),
            "steps": np.array([epoch, 2 * epoch], np.int64),
            "half": rng.standard_normal((8, 4)).astype(np.float32)}


def make(folder: Path) -> None:
    import ml_dtypes

    import recordkit

    for name, checksum in (("checked", True), ("unchecked", False)):
        with recordkit.Recorder(folder, experiment="v1", name=name, params={"lr": 0.01},
                                system=False, checksum=checksum) as rec:
            for epoch in range(2):
                rec.log({"loss": 1.0 / (epoch + 1), "acc": epoch / 10}, epoch=epoch)
                weights = state(epoch)
                weights["half"] = weights["half"].astype(ml_dtypes.bfloat16)
                rec.snapshot(weights, epoch=epoch)
                rec.commit()
            rec.add("curve", np.linspace(0, 1, 50))
            rec.add("layers", {"a": np.arange(12.0).reshape(3, 4), "b": np.ones(5, np.int32)})
            rec.add("best", np.float64(0.8125))
            rec.add("folds", {"acc": [0.25, 0.5], "who": "me"})
        rec.path.rename(folder / "v1" / f"{name}.h5")
    # No snapshot yet: resumed by tests to get version-1 weight datasets of any shape.
    with recordkit.Recorder(folder, experiment="v1", name="empty", system=False) as rec:
        rec.log({"loss": 1.0}, epoch=0)
    rec.path.rename(folder / "v1" / "empty.h5")
    for lock in (folder / "v1").glob("*.lock"):
        lock.unlink()


if __name__ == "__main__":
    make(Path(sys.argv[1]).parent if Path(sys.argv[1]).name == "v1" else Path(sys.argv[1]))
