"""Where runs live: experiment folder names, the file of a run given as a path or a run
id, and the record files of a folder. No HDF5: both sides (writing and reading) use these."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from recordkit.errors import RecordNotFoundError

__all__ = ["DEFAULT_EXPERIMENT", "RUN_ID", "check_experiment", "check_name", "record_files",
           "resolve_path", "run_id_problem"]

#: The experiment of a run created without one.
DEFAULT_EXPERIMENT = "default"

#: A run id as recordkit writes it (``runfile.new_run_id``): UTC creation time to the
#: microsecond and 6 random hex digits, ``20261201-153149-343941-fe435b``.
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9]{6}-[0-9a-f]{6}")


def run_id_problem(run_id: str, path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the run id a record holds, or None: a run id recordkit did not
    write (``../../x``, a name holding control characters), or one that is not the
    record's file name (``<run_id>.h5``; a renamed or copied file). A record says so
    when shown; it is loaded all the same, and its run id never builds a path.

    Example:
        >>> run_id_problem("20261201-153149-343941-fe435b", "r/20261201-153149-343941-fe435b.h5")
        >>> run_id_problem("../../x", "r/20261201-153149-343941-fe435b.h5")
        'is not a run id recordkit writes (YYYYmmdd-HHMMSS-ffffff-hhhhhh)'
        >>> run_id_problem("20261201-153149-343941-fe435b", "r/best.h5")
        "does not match the file name 'best.h5'"
    """
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        return "is not a run id recordkit writes (YYYYmmdd-HHMMSS-ffffff-hhhhhh)"
    name = Path(path).name
    if name != f"{run_id}.h5":
        return f"does not match the file name {name!r}"
    return None


def resolve_path(path_or_run_id: str | os.PathLike[str], root: str | os.PathLike[str] | None,
                 experiment: str | None = None) -> Path:
    """The file of a run given as a path, or as a run id (or unique prefix) under *root*."""
    candidate = Path(path_or_run_id)
    if candidate.is_file() or candidate.suffix == ".h5" or root is None:
        if not candidate.exists():
            raise RecordNotFoundError(f"no record at {str(candidate)!r}")
        return candidate
    base = Path(root)
    run_id = str(path_or_run_id)
    if not base.is_dir():
        raise RecordNotFoundError(f"no folder {str(base)!r} to look for run {run_id!r} in")
    folders = [base / experiment] if experiment else [base, *sorted(
        p for p in base.iterdir() if p.is_dir())]
    exact = [f / f"{run_id}.h5" for f in folders if (f / f"{run_id}.h5").is_file()]
    if exact:
        return exact[0]
    prefixed = sorted({p for f in folders if f.is_dir() for p in f.glob(f"{run_id}*.h5")})
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise RecordNotFoundError(
            f"run id {run_id!r} is ambiguous under {str(base)!r}: "
            + ", ".join(p.stem for p in prefixed[:5])
        )
    raise RecordNotFoundError(f"no run {run_id!r} under {str(base)!r}")


def record_files(root: Path, experiment: str | None = None) -> list[Path]:
    """Record files under *root* (``<root>/<experiment>/*.h5``), and *root* itself when it
    is a folder of records."""
    if experiment is not None:
        folders = [root / experiment]
    else:
        folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    files: list[Path] = []
    for folder in folders:
        try:
            with os.scandir(folder) as entries:  # the file type without a stat per file
                names = sorted(e.name for e in entries if e.name.endswith(".h5")
                               and not e.name.startswith(".") and e.is_file())
        except OSError:  # not a folder (any more)
            continue
        files.extend(folder / name for name in names)
    return files


def check_name(what: str, value: Any) -> str | None:
    """*value* when it is a str or None, else TypeError naming the Recorder argument."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Recorder({what}={value!r}): must be a str or None. "
                        f"Received: {type(value).__name__}")
    return value


def check_experiment(experiment: str | None) -> str:
    """The experiment folder name (``"default"`` for None); ValueError for a name that
    is not one folder."""
    experiment = check_name("experiment", experiment) or DEFAULT_EXPERIMENT
    if "/" in experiment or "\x00" in experiment or experiment in {".", ".."}:
        raise ValueError(
            f"Recorder(experiment={experiment!r}): an experiment is a folder name; it may "
            "not contain '/' or NUL, nor be '.' or '..'"
        )
    return experiment
