"""Shared test support: frameworks that may be absent, and reading records back."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

#: How long a test waits for a child process that starts a framework (TensorFlow, torch,
#: Lightning, a distributed strategy) before it calls it hung: a child that takes 20 s
#: on a quiet machine took over 120 s with both cores loaded (issue 16 item 9).
SUBPROCESS_TIMEOUT_S = 600


def required() -> set[str]:
    """Frameworks the environment promises (``RECORDKIT_REQUIRE=lightning,keras``)."""
    return {s.strip() for s in os.environ.get("RECORDKIT_REQUIRE", "").split(",") if s.strip()}


def require(module: str, extra: str) -> ModuleType:
    """Import *module* or skip the calling test module; a failure instead of a skip when
    the environment promises the extra (so a skip never hides a broken environment)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if extra in required():
            pytest.fail(f"RECORDKIT_REQUIRE names {extra!r} but {module} does not import: {err}",
                        pytrace=False)
        pytest.skip(f"{module} is not installed (pip install 'recordkit[{extra}]')",
                    allow_module_level=True)
        raise  # unreachable


def signed_summary(summary: dict) -> str:
    """A summary's text as recordkit writes it, for tests that forge one: its own sha256
    as the last member (docs/FORMAT.md), so that readers use it."""
    import hashlib
    import json

    body = json.dumps({k: v for k, v in summary.items() if k != "sha256"},
                      ensure_ascii=False)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f'{body[:-1]}, "sha256": "{digest}"}}'


def chunk_at(path: Path, dataset: str, coord: tuple[int, ...]) -> tuple[int, int]:
    """The byte offset and stored size in *path* of the chunk of *dataset* at *coord*, for
    tests that damage one chunk on disk."""
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        info = f[dataset].id.get_chunk_info_by_coord(coord)
    return int(info.byte_offset), int(info.size)


def overwrite(path: Path, at: int, data: bytes) -> None:
    """Write *data* over *path* at byte *at* (a closed record is read-only on disk)."""
    path.chmod(0o644)
    with open(path, "r+b") as raw:
        raw.seek(at)
        raw.write(data)


def takes_o_direct(folder: Path) -> bool:
    """Whether *folder*'s file system opens files with ``O_DIRECT`` (else recordkit writes
    every chunk through HDF5)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    probe = folder / ".o_direct-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | flag))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True
