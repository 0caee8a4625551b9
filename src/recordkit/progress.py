"""Progress bars of the long loops over runs (``load_all``, imports): tqdm on stderr, when
it is installed and a bar is asked for."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["with_progress"]

T = TypeVar("T")


def with_progress(items: Iterable[T], show: bool, desc: str, *, leave: bool = True
                  ) -> Iterable[T]:
    """*items*, shown as a bar of runs named *desc* when *show* and tqdm is installed;
    *leave*: keep the finished bar on screen."""
    if not show:
        return items
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return items
    return tqdm(list(items), desc=desc, unit="run", leave=leave, file=sys.stderr)
