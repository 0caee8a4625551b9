"""Where runs live: experiment folder names, the file of a run given as a path or a run
id, and the record files of a folder. No HDF5: both sides (writing and reading) use these."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recordkit.errors import RecordNotFoundError

__all__ = ["DEFAULT_EXPERIMENT", "check_experiment", "check_name", "record_files",
           "resolve_path"]

#: The experiment of a run created without one.
DEFAULT_EXPERIMENT = "default"


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
