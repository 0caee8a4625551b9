"""Argument checks the Lightning and Keras callbacks share (no framework imported here)."""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Mapping
from typing import Any

from recordkit.recorder import Recorder

__all__ = ["ON_ERROR", "RECORDER_OPTIONS", "check_callback_arguments"]

#: Keyword options of Recorder a callback passes through (``durable``, ``system``, ...).
RECORDER_OPTIONS = frozenset(
    name for name, p in inspect.signature(Recorder.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "resume"
)
ON_ERROR = ("raise", "warn")


def check_callback_arguments(
    *,
    root: Any,
    experiment: Any,
    name: Any,
    monitor: Any,
    params: Any,
    recorder: Any,
    resume: Any,
    on_error: Any,
    recorder_options: Mapping[str, Any],
) -> None:
    """Raise TypeError / ValueError naming the argument, what was received and what is
    allowed, before any fit starts.

    Example:
        >>> check_callback_arguments(  # doctest: +ELLIPSIS
        ...     root="records", experiment=None, name=None, monitor=None, params=None,
        ...     recorder=None, resume=None, on_error="ignore", recorder_options={})
        Traceback (most recent call last):
        ...
        ValueError: RecordCallback(on_error='ignore'): must be one of ('raise', 'warn')...
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"RecordCallback(root={root!r}): must be a folder path (str or "
                        f"os.PathLike). Received: {type(root).__name__}")
    for what, value in (("experiment", experiment), ("name", name), ("monitor", monitor)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"RecordCallback({what}={value!r}): must be a str or None. "
                            f"Received: {type(value).__name__}")
    if params is not None and not isinstance(params, (Mapping, argparse.Namespace)):
        raise TypeError(f"RecordCallback(params=...): must be a mapping, an "
                        f"argparse.Namespace or None. Received: {type(params).__name__}")
    if recorder is not None and not isinstance(recorder, Recorder):
        raise TypeError(f"RecordCallback(recorder={recorder!r}): must be a "
                        "recordkit.Recorder or None")
    if recorder is not None and resume is not None:
        raise ValueError("RecordCallback(recorder=..., resume=...): give one of them; "
                         "to continue a run, pass Recorder(root, resume=...) as recorder")
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"RecordCallback(resume={resume!r}): must be a record path or a "
                        f"run id. Received: {type(resume).__name__}")
    if on_error not in ON_ERROR:
        raise ValueError(f"RecordCallback(on_error={on_error!r}): must be one of "
                         f"{ON_ERROR}. Received: {on_error!r}")
    unknown = sorted(set(recorder_options) - RECORDER_OPTIONS)
    if unknown:
        raise TypeError(f"RecordCallback({unknown[0]}=...): not an option of "
                        f"RecordCallback or Recorder; Recorder takes "
                        f"{sorted(RECORDER_OPTIONS)}")
