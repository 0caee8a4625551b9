"""The run summary: one root attribute, written when a run is closed, holding everything a
table of many runs needs (run fields, params, final and best of each metric), with its
own SHA-256 (a string in the global heap has no HDF5 checksum)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from recordkit.codec import dumps_json, loads_json
from recordkit.config import summary_facts
from recordkit.format.attrs import attr_str, read_attr, read_text
from recordkit.format.history import read_history
from recordkit.format.layout import (
    FORMAT_ATTR,
    INFO,
    MAX_SUMMARY_BYTES,
    PARAMS,
    RUN_FIELDS,
    SNAPSHOTS,
    SUMMARY_ATTR,
    UNSERIALISABLE_ATTR,
    VERSION_ATTR,
)

__all__ = ["build_summary", "drop_summary", "finished_epochs", "metric_summary",
           "read_summary", "summary_checksum_ok", "summary_from_text", "write_summary"]

def _finite_extreme(values: np.ndarray, epochs: np.ndarray, pick: Any) -> tuple[Any, Any]:
    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    index = int(pick(np.where(finite, values, np.nan)))
    return float(values[index]), int(epochs[index])


def metric_summary(rows: np.ndarray) -> dict[str, Any]:
    """count, final value and epoch, and the finite min and max with their epochs."""
    values, epochs = rows["value"], rows["epoch"]
    low, low_epoch = _finite_extreme(values, epochs, np.nanargmin)
    high, high_epoch = _finite_extreme(values, epochs, np.nanargmax)
    return {
        "count": len(rows),
        "final": float(values[-1]) if len(rows) else None,
        "final_epoch": int(epochs[-1]) if len(rows) else None,
        "min": low, "min_epoch": low_epoch, "max": high, "max_epoch": high_epoch,
        "epoch_level": bool(len(np.unique(epochs)) == len(epochs)),
    }


def finished_epochs(history: Mapping[str, np.ndarray]) -> list[int]:
    """The epochs a run finished, sorted: those with an epoch-level row (step -1) of some
    metric. A run that logs step rows only (no epoch-level row at all) has finished every
    epoch it has a row of. An epoch a crashed run began (its step rows, a validation
    inside it) but did not end is not one.

    Example:
        >>> import numpy as np
        >>> rows = np.array([(0, -1), (1, -1), (2, 40)],
        ...                 dtype=[("epoch", "<i8"), ("step", "<i8")])
        >>> finished_epochs({"loss": rows})
        [0, 1]
    """
    ended: set[int] = set()
    seen: set[int] = set()
    for rows in history.values():
        epochs = np.asarray(rows["epoch"])
        seen.update(int(e) for e in np.unique(epochs))
        ended.update(int(e) for e in np.unique(epochs[np.asarray(rows["step"]) == -1]))
    return sorted(ended if ended else seen)


def build_summary(f: h5py.File) -> dict[str, Any]:
    """What the ``summary`` attribute of the run in *f* holds, from its data."""
    history = read_history(f)
    epochs = finished_epochs(history)
    summary = {
        # the root's format and version again: a reader of the summary needs no other
        # attribute (summaries written before 2026-11-30 have neither)
        "format": attr_str(f, FORMAT_ATTR),
        "format_version": int(read_attr(f, VERSION_ATTR, 0)),
        "fields": {key: attr_str(f, key) for key in RUN_FIELDS},
        "params": read_text(f, PARAMS) or "{}",
        "unserialisable": attr_str(f[PARAMS], UNSERIALISABLE_ATTR, "[]") if PARAMS in f
        else "[]",
        "metrics": {name: metric_summary(rows) for name, rows in history.items()},
        "epochs": len(epochs),
        "snapshots": int(f[SNAPSHOTS].shape[0]) if SNAPSHOTS in f else 0,
    }
    # Record.config's captured facts, so that tables of many runs need not read /info
    # (summaries written before 2026-12-01 have none: their /info is read)
    captured = summary_facts(read_text(f, INFO))
    if captured is not None:
        summary["captured"] = captured
    return summary


def write_summary(f: h5py.File) -> None:
    """Write (or drop, when too large) the ``summary`` root attribute of a closed run.
    A writer that changes the root's ``format`` or ``format_version`` afterwards must
    write it again: readers of the summary trust its copy of them."""
    body = dumps_json(build_summary(f))
    digest = hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()
    text = f'{body[:-1]}, "sha256": "{digest}"}}'
    if len(text.encode("utf-8", "surrogateescape")) > MAX_SUMMARY_BYTES:
        text = ""  # too large: tables read this run in full
    _set_summary(f, text)


def _set_summary(f: h5py.File, text: str) -> None:
    """The summary attribute rewritten in place (``attrs.modify``), "" for none: deleting
    and creating it moved the root's attributes, possibly into a new header block that a
    kill inside the flush of a close left referenced but unwritten ("addr overflow";
    issue 17). A new record is created with an empty one."""
    if SUMMARY_ATTR in f.attrs:
        f.attrs.modify(SUMMARY_ATTR, text)
    elif text:
        f.attrs[SUMMARY_ATTR] = text


#: The summary's last member: the sha256 of its text without that member. A string in
#: the global heap has no HDF5 checksum, and a table shows what the summary says.
_SUMMARY_CHECKSUM = re.compile(r', "sha256": "([0-9a-f]{64})"\}\Z')


def summary_checksum_ok(text: str) -> bool | None:
    """Whether a summary's text matches its own sha256; None when it has none (those
    written before 2026-11-30, which also lack ``format``)."""
    found = _SUMMARY_CHECKSUM.search(text)
    if found is None:
        return None
    body = text[:found.start()] + "}"
    return hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest() == (
        found.group(1))


def read_summary(f: h5py.File | h5py.h5f.FileID) -> dict[str, Any] | None:
    """The ``summary`` attribute of a closed run, or None (running, too large, damaged,
    or not one recordkit writes)."""
    text = read_attr(f, SUMMARY_ATTR)
    if not isinstance(text, str):
        return None  # not one written by recordkit
    return summary_from_text(text)


def summary_from_text(text: str, *, require_checksum: bool = False
                      ) -> dict[str, Any] | None:
    """A summary's text (the attribute's, or a copy of it such as the run index's)
    checked as :func:`read_summary` checks it: at most :data:`MAX_SUMMARY_BYTES`, its own
    sha256 (required with *require_checksum*; only summaries older than 2026-11-30 lack
    one), JSON, the shape :func:`build_summary` gives; None when it fails any."""
    if len(text) > MAX_SUMMARY_BYTES:
        return None  # not one written by recordkit (a string of at most that many bytes)
    checked = summary_checksum_ok(text)
    if checked is False or (checked is None and require_checksum):
        return None  # damaged: the full read gives the run's own values
    try:
        summary = loads_json(text)
    except (ValueError, RecursionError):
        return None
    if checked is None and isinstance(summary, dict) and "format" in summary:
        return None  # a summary that carries the format carries a checksum: lost to damage
    return summary if _summary_shape_ok(summary) else None


_NUMBER = (int, float)
#: Per metric of a summary: the types of its values (None too where marked).
_METRIC_SUMMARY_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "count": ((int,), False), "final": (_NUMBER, True), "final_epoch": ((int,), True),
    "min": (_NUMBER, True), "min_epoch": ((int,), True), "max": (_NUMBER, True),
    "max_epoch": ((int,), True), "epoch_level": ((bool,), False),
}


def _summary_shape_ok(summary: Any) -> bool:
    """Whether a summary has the shape :func:`build_summary` gives it, so that a forged
    or damaged one sends its run to the full read instead of into a table."""
    if not isinstance(summary, dict) or not isinstance(summary.get("fields"), dict):
        return False
    if not isinstance(summary.get("params"), str) or not isinstance(
            summary.get("unserialisable", "[]"), str):
        return False
    if not all(isinstance(summary.get(key, 0), int) and not isinstance(
            summary.get(key, 0), bool) for key in ("epochs", "snapshots")):
        return False
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        return False
    for stats in metrics.values():
        if not isinstance(stats, dict):
            return False
        for key, (types, nullable) in _METRIC_SUMMARY_TYPES.items():
            value = stats.get(key)
            if value is None and nullable:
                continue
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                return False
    return True


def drop_summary(f: h5py.File) -> None:
    """Empty the summary of a run that changes again (resumed): it would be stale."""
    if SUMMARY_ATTR in f.attrs and read_attr(f, SUMMARY_ATTR):
        _set_summary(f, "")
