"""The one exception family recordkit raises on purpose.

Every error names the file (and the key, where there is one) and says what to do.
Catch :class:`RecordkitError` to catch them all.
"""

from __future__ import annotations

import re

__all__ = [
    "FilterUnavailableError",
    "ImportFormatError",
    "NotARecordError",
    "RecordBusyError",
    "RecordClosedError",
    "RecordDamagedError",
    "RecordExistsError",
    "RecordLockedError",
    "RecordNotFoundError",
    "RecordTooLargeError",
    "RecordWriteError",
    "RecordkitError",
    "RecordkitWarning",
    "SnapshotError",
    "UnsafeRecordError",
    "describe_error",
    "strip_terminal_codes",
]


class RecordkitError(Exception):
    """Base of every error recordkit raises on purpose."""


class RecordNotFoundError(RecordkitError, FileNotFoundError):
    """No record at the given path, or no run with the given id under the root."""


class NotARecordError(RecordkitError):
    """The file exists but is not a recordkit record (or is of an unknown format version)."""


class RecordDamagedError(RecordkitError):
    """The file is a record but cannot be read: truncated, corrupted or failing a checksum."""


class UnsafeRecordError(RecordkitError):
    """The file points outside itself (external links, external storage, virtual datasets)
    or claims sizes that would exhaust memory; it is refused without being read."""


class RecordTooLargeError(RecordkitError, MemoryError):
    """Reading a part of a record needs more memory than this process may allocate (a
    ``MemoryError``, or HDF5 failing to allocate); code that catches ``MemoryError``
    catches it too."""


class RecordClosedError(RecordkitError):
    """A write was attempted on a run that is closed (saved, failed or interrupted)."""


class RecordLockedError(RecordkitError):
    """Another live process holds the run open for writing."""


class RecordExistsError(RecordkitError, FileExistsError):
    """A file already exists where a new run was to be created."""


class RecordBusyError(RecordkitError):
    """The run is being written by another process and could not be read consistently."""


class RecordWriteError(RecordkitError, OSError):
    """Writing to the record failed: disk full, file too large, folder read-only or removed."""


class SnapshotError(RecordkitError, ValueError):
    """A weight snapshot cannot be stored as given (shape or dtype changed, unknown object)."""


class FilterUnavailableError(RecordkitError, ModuleNotFoundError):
    """A record's weights use a compression filter (Zstd, Blosc, ...) that needs the
    hdf5plugin package, which is not installed: ``pip install hdf5plugin``."""


class ImportFormatError(RecordkitError, ValueError):
    """A file given to an importer is not of the kind it reads (a researcher JSON file, or
    Record documents exported from MongoDB)."""


class RecordkitWarning(UserWarning):
    """Something was stored differently from what was asked (e.g. a parameter as its repr)."""


def describe_error(error: BaseException | str) -> str:
    """``"Type: message"`` of an exception (``"KeyboardInterrupt"`` when it has no
    message), as a run's ``error`` field stores it; a string as it is.

    Example:
        >>> describe_error(ValueError("bad lr")), describe_error(KeyboardInterrupt())
        ('ValueError: bad lr', 'KeyboardInterrupt')
    """
    if not isinstance(error, BaseException):
        return strip_terminal_codes(str(error))
    message = strip_terminal_codes(str(error))
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# ANSI/VT escape sequences: CSI (colours, cursor moves), OSC (titles, links) ended by BEL
# or ST, and the short ones (ESC, intermediate bytes, one final character: ESC c...).
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]")


def strip_terminal_codes(text: str) -> str:
    """*text* without terminal escape sequences (Keras' bold and coloured error messages
    stored as plain text).

    Example:
        >>> strip_terminal_codes("\x1b[1mValueError\x1b[0m: bad shape")
        'ValueError: bad shape'
    """
    return _TERMINAL_CODES.sub("", text) if "\x1b" in text or "\x9b" in text else text
