"""Baselines the benchmarks compare against, measured in the same process, and the way
each benchmark reports a figure against its target."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MiB = 1024 * 1024
RESULTS: list[tuple[str, float, str, bool | None]] = []


def raw_write_seconds(arrays: list[np.ndarray], folder: Path, *, fsync: bool = True
                      ) -> float:
    """Seconds to write the same bytes raw: ``ndarray.tofile`` + fsync, one file per array."""
    start = time.perf_counter()
    for i, array in enumerate(arrays):
        with open(folder / f"raw{i}.bin", "wb") as fh:
            array.tofile(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    for i in range(len(arrays)):
        (folder / f"raw{i}.bin").unlink()
    return elapsed


def drop_page_cache_hint(path: Path) -> None:
    """Ask the kernel to forget a file's cached pages (no root needed; best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A folder under /tmp that is removed afterwards, whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=f"recordkit-bench-{prefix}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def best_of(n: int, fn, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    """The fastest of *n* runs: the least disturbed by the other users of the machine."""
    return min(fn(*args, **kwargs) for _ in range(n))


def report(name: str, value: float, target: str, ok: bool | None) -> None:
    """Print one figure: ``ok`` None means informational (no target)."""
    verdict = {True: "PASS", False: "FAIL", None: "info"}[ok]
    print(f"  [{verdict}] {name}: {value:.3f}  (target {target})", flush=True)
    RESULTS.append((name, value, target, ok))
