"""``load_all(..., workers=N)``: the headers of many record files read in N worker
processes. h5py serialises every call within a process (one lock around the HDF5
library), so threads would not read two files at once; processes do.

Each worker opens its share of the files as ``load_all`` does (a closed run from its
summary, with the same checks) and sends back what :meth:`recordkit.Record.cache_state`
gives, plain JSON-able values, from which the parent makes each :class:`Record` without
opening the file again. Workers are started with ``spawn`` (a fork of a process holding
CUDA, threads or open HDF5 files is unsafe); as with any ``multiprocessing`` code, a
script calling ``load_all(workers=N)`` at import time needs the
``if __name__ == "__main__":`` guard.

Workers pay off only where a core is idle (or a second reader hides a filesystem's
latency): on a machine whose CPUs other sessions keep busy, Linux's autogroup scheduling
gives a session (``load_all`` and its workers together) the same share whatever its
number of processes, and the workers' start (a spawned interpreter importing numpy,
h5py and recordkit) is a loss (docs/BENCHMARKS.md, *100,000 runs*).
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from recordkit.errors import RecordkitError, RecordkitWarning
from recordkit.progress import with_progress

__all__ = ["check_workers", "read_states", "read_with_workers"]

#: Files per task sent to a worker: large enough that a task's cost hides the pickling,
#: small enough that the workers finish together.
CHUNK_FILES = 512


def check_workers(workers: Any) -> int:
    """*workers* as a positive int.

    Raises:
        ValueError: it is not one.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"load_all(workers={workers!r}): must be a positive int. "
                         f"Received: {workers!r}")
    return workers


def read_states(paths: Sequence[str], max_read_bytes: int) -> list[tuple[str, Any]]:
    """In a worker: for each file, ``("state", cache_state)``, ``("error", message)``
    for a file ``load_all`` skips (a RecordkitError), or ``("local", "")`` for one the
    parent reads itself (a running run, whose state is not kept, or an unexpected
    error, which the parent's own read raises as it would without workers)."""
    from recordkit.format.safety import check_fields
    from recordkit.record import Record

    results: list[tuple[str, Any]] = []
    for name in paths:
        path = Path(name)
        try:
            record = Record(path, lazy=True, max_read_bytes=max_read_bytes)
            check_fields(record.fields, path)
            state = record.cache_state()
        except RecordkitError as err:
            results.append(("error", str(err)))
            continue
        except Exception:
            results.append(("local", ""))
            continue
        results.append(("state", state) if state is not None else ("local", ""))
    return results


def read_with_workers(paths: Sequence[Path], max_read_bytes: int, workers: int, *,
                      progress: bool = False) -> list[tuple[str, Any]] | None:
    """What :func:`read_states` gives for each of *paths*, in their order, read in
    *workers* processes; None when the processes could not be started or died (the
    caller then reads the files itself), with a warning saying why."""
    if not paths:
        return []
    size = max(1, min(CHUNK_FILES, math.ceil(len(paths) / (4 * workers))))
    chunks = [[str(p) for p in paths[i:i + size]] for i in range(0, len(paths), size)]
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(read_states, chunk, max_read_bytes) for chunk in chunks]
            results: list[tuple[str, Any]] = []
            for future in with_progress(futures, progress, "reading records", leave=False):
                results.extend(future.result())
    except (BrokenProcessPool, OSError, RuntimeError) as err:
        warnings.warn(f"recordkit: load_all(workers={workers}) could not use worker "
                      f"processes ({type(err).__name__}: {err}); reading in this process "
                      "instead", RecordkitWarning, stacklevel=4)
        return None
    return results
