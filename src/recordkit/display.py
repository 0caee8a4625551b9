"""Text from a record made safe to show: terminal control characters escaped visibly
(a stranger's run name holding ``ESC[2J``, colours, a newline that fakes a table row or a
bidi override that reorders what follows), and spreadsheet cells that a program would
read as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) escaped as OWASP recommends,
with a leading single quote. Numbers stay numbers. No HDF5 and no pandas import here."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["CSV_FORMULA_START", "csv_cell", "csv_safe_frame", "printable"]

#: C0 controls, DEL, C1 controls, the bidi embeddings, overrides and isolates
#: (U+202A-U+202E, U+2066-U+2069), the bidi marks (U+200E, U+200F, U+061C) and the line and
#: paragraph separators (U+2028, U+2029), which some terminals and editors break lines at.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int | None = None) -> str:
    """*text* as one line safe to print on a terminal: each control or bidi character
    shown as its escape (``\\x1b``, ``\\x0a``, ``\\u202e``), never dropped silently;
    with *limit*, cut to that many characters (``...`` at the end).

    Example:
        >>> printable("run\\x1b[2J\\nfake row\\u202e")
        'run\\\\x1b[2J\\\\x0afake row\\\\u202e'
        >>> printable("a" * 30, limit=10)
        'aaaaaaa...'
    """
    shown = _UNSAFE.sub(_escape, str(text))
    if limit is not None and len(shown) > limit:
        shown = shown[:max(0, limit - 3)] + "..."
    return shown


#: What a spreadsheet program reads as the start of a formula (OWASP, "CSV Injection").
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def csv_cell(value: Any) -> Any:
    """One cell for a CSV file: text that a spreadsheet would run as a formula gets a
    leading single quote; numbers (a negative one included, also as text: ``"-5"``),
    booleans and empty cells are returned as they are.

    Example:
        >>> [csv_cell(v) for v in ("=1+2", "@SUM(A1)", "-2+3", "-5", -5, "adam", None)]
        ["'=1+2", "'@SUM(A1)", "'-2+3", '-5', -5, 'adam', None]
    """
    if value is None or isinstance(value, bool | int | float | complex):
        return value
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", "O") in "biufcmM":
        return value  # a numpy number or time
    text = value if isinstance(value, str) else _text(value)
    if text is None or not text.startswith(CSV_FORMULA_START) or _NUMBER.fullmatch(text):
        return value
    return "'" + text


def _text(value: Any) -> str | None:
    """What the CSV writer would write for *value* (its str); None for a missing value."""
    try:
        if isinstance(value, float) and math.isnan(value):
            return None
        return str(value)
    except Exception:  # a broken __str__: the writer fails the same way, not here
        return None


def csv_safe_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame for ``to_csv``: every text cell and column name
    through :func:`csv_cell`; numeric, boolean and time columns untouched.
    """
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype.kind not in "biufcmM":  # object, string, category...
            safe[column] = safe[column].astype(object).map(csv_cell)
    safe.columns = [csv_cell(c) if isinstance(c, str) else c for c in safe.columns]
    return safe
