"""Every path and attribute name inside a record file (format version 3; what versions 1
and 2 lack is said where it is named), and the shapes of its tables. docs/FORMAT.md describes
each object for readers who use plain h5py.

Layout of ``<root>/<experiment>/<run_id>.h5``::

    /                       attrs: format, format_version, run_id, name, experiment,
                                   status, created, ended, error, params_hash,
                                   recordkit_version, restarts, summary (closed runs),
                                   header_crc32c (v2)
    /params                 scalar UTF-8 string: the params as tagged JSON
                            attrs: unserialisable (JSON list of keys stored as repr)
    /system                 scalar UTF-8 string: system info as JSON
    /info                   scalar UTF-8 string: facts about the run (trainer, optimizer, ...)
    /history/metrics        1-D UTF-8 strings: metric names, in the order first logged
    /history/metrics_crc32c (v2) uint32, one per metric name: its identity CRC
    /history/rows           1-D compound (metric i4, epoch i8, step i8, value f8, time f8)
    /snapshots              1-D compound (epoch i8, step i8, time f8): one row per snapshot
    /weights/<tensor>       (n_snapshots, *tensor_shape), snapshot axis first, growing
                            attrs: name, dtype, first_snapshot, checksum (v2),
                                   attrs_crc32c (v2)
    /weights/%pack-<first>-<dtype>[-<n>]
                            (v3) (n_snapshots, total elements): many small tensors of one
                            stored dtype, first snapshotted together, one row per snapshot
                            attrs: name, kind ("pack"), dtype, first_snapshot, checksum,
                                   attrs_crc32c, members, members_crc32c
    /checksums/<tensor>     (v2) uint32 (n_snapshots, chunks per snapshot): the CRC32C of
                            each stored chunk of the weight dataset of the same name
    /extras/<key>           what Recorder.add stored: a dataset, a group of datasets, or JSON
                            attrs: name, kind, dtype, sha256, unserialisable,
                                   attrs_crc32c (v2)

Names of tensors and extras are escaped (see :func:`escape_name`) and the original
name is kept in the ``name`` attribute of each object.
"""

from __future__ import annotations

import re

import numpy as np

from recordkit.codec import MAX_TEXT_CHARS

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "HISTORY_DTYPE", "SNAPSHOT_DTYPE", "STATUSES",
           "escape_metric", "escape_name", "unescape_name"]

FORMAT_NAME = "recordkit"
#: The version new records are written in. Version 2 (2026-12): weight chunks are written
#: whole, without HDF5's fletcher32 filter, and each has a CRC32C in /checksums; extras
#: arrays carry per-chunk CRC32Cs; a zeroed table row or metric name is damage; every
#: string that names data has an identity CRC (header_crc32c, metrics_crc32c, attrs_crc32c).
#: Version 3 (2026-12): tensors of a few KiB first snapshotted together are packed into
#: one weight dataset per stored dtype (:data:`PACK_KIND`); a reader of version 2 would
#: not see them, so a record with packs says 3 (every ``version >= 2`` rule holds for 3).
FORMAT_VERSION = 3
#: Every version a reader of this recordkit reads.
READ_VERSIONS = (1, 2, 3)

#: Values of the root attribute ``status``. A reader treats ``running`` in a file that no
#: process holds open as an interrupted run. ``pruned`` (since 2026-12): a sweep's engine
#: stopped the run early (``optuna.TrialPruned``, a Ray Tune scheduler).
STATUSES = ("running", "completed", "failed", "interrupted", "pruned")

# --- objects ------------------------------------------------------------------------------

PARAMS = "params"
SYSTEM = "system"
INFO = "info"
HISTORY = "history"
#: Inside /history: the one table of every metric's rows, and the metric names.
HISTORY_TABLE = "rows"
HISTORY_METRICS = "metrics"
#: (v2) Inside /history: the identity CRC (:func:`.checksums.identity_crc`) of each stored
#: metric name, in the order of /history/metrics, appended with them.
HISTORY_METRIC_CRCS = "metrics_crc32c"
SNAPSHOTS = "snapshots"
WEIGHTS = "weights"
#: (v2) The per-chunk CRC32Cs of each weight dataset, under the same link name.
CHECKSUMS = "checksums"
EXTRAS = "extras"

# --- attributes ---------------------------------------------------------------------------

#: Root attributes that describe the run (the ``fields`` of its summary).
RUN_FIELDS = ("run_id", "name", "experiment", "status", "created", "ended", "error",
              "params_hash", "recordkit_version", "restarts")
FORMAT_ATTR = "format"
VERSION_ATTR = "format_version"
#: Root attribute written when a run is closed: everything a table of many runs needs.
SUMMARY_ATTR = "summary"
#: On /params and on an extra: JSON list of the keys stored as their repr.
UNSERIALISABLE_ATTR = "unserialisable"
#: On a weight dataset or an extra: the original name (escaped only for NUL and %).
NAME_ATTR = "name"
#: On a weight dataset or an extra array: the stored dtype name (``bfloat16``...).
DTYPE_ATTR = "dtype"
#: On a weight dataset: the snapshot index (row of /snapshots) of its first row.
FIRST_SNAPSHOT_ATTR = "first_snapshot"
#: On an extra: array, list, arrays, dict or json.
KIND_ATTR = "kind"
#: On an extra HDF5 cannot checksum (a 0-d array, JSON text): the SHA-256 of its bytes.
CHECKSUM_ATTR = "sha256"
#: (v2) On a weight dataset: how its chunks are checked, ``crc32c`` (/checksums holds one
#: per chunk) or ``none`` (``Recorder(checksum=False)``).
WEIGHT_CHECKSUM_ATTR = "checksum"
#: (v2) On a chunked extra array: uint32 array, the CRC32C of each stored chunk in chunk
#: order (C order of the chunk grid).
CRC32C_ATTR = "crc32c"
#: (v2) How an empty metric name is stored in /history/metrics: a stored empty string is
#: what a zeroed chunk reads as, so it is damage. ``%`` alone never results from escaping.
EMPTY_METRIC = "%"
#: (v2) On a weight dataset and on each object of an extra: uint32, the identity CRC of
#: its string attributes :data:`ATTRS_CRC_COVERS`, as stored ("" for an absent one): its
#: name, and what says how its data is read.
ATTRS_CRC_ATTR = "attrs_crc32c"
#: What :data:`ATTRS_CRC_ATTR` covers, in its order.
ATTRS_CRC_COVERS = ("name", "kind", "dtype", "checksum")
#: On a weight dataset: JSON list of the other names of its tensor, when it is tied (two
#: names for one tensor in memory, e.g. a language model's embedding and output weights):
#: the tensor is stored once, under the first of its names, and each other name is an
#: alias whose snapshots are those of the dataset. Absent when nothing is tied to it.
ALIASES_ATTR = "aliases"
#: On a weight dataset, beside :data:`ALIASES_ATTR`: uint32, its identity CRC
#: (:func:`~recordkit.format.checksums.identity_crc` of the text).
ALIASES_CRC_ATTR = "aliases_crc32c"
#: (v3) The ``kind`` of a weight dataset that packs many small tensors: each row is the
#: snapshot of every member, flattened (C order) and concatenated at its offset.
PACK_KIND = "pack"
#: (v3) How a pack's link name (and its ``name``) starts: :func:`escape_name` writes every
#: ``%`` of a tensor name as ``%25``, so no tensor's link name can start so.
PACK_PREFIX = "%pack-"
#: (v3) On a pack: JSON list of its members in offset order, each ``[name, offset,
#: shape]`` or ``[name, offset, shape, aliases]`` (the original name, the element offset
#: in the row, the shape; the other names of a tied tensor).
PACK_MEMBERS_ATTR = "members"
#: (v3) On a pack, beside :data:`PACK_MEMBERS_ATTR`: uint32, the identity CRC of its text.
PACK_MEMBERS_CRC_ATTR = "members_crc32c"
#: (v2) Root attribute: uint32 array of ``2 * len(HEADER_CRC_FIELDS) + 1``: the identity
#: CRC of each of :data:`HEADER_CRC_FIELDS` now, the same before the last change of the
#: header (a kill between the two leaves each value one or the other), and the CRC32C of
#: those little-endian bytes.
HEADER_CRC_ATTR = "header_crc32c"
#: (v2) What :data:`HEADER_CRC_ATTR` covers, in its order: root attributes (as text; a
#: missing one is ""), and the text of /system and /info (named with their slash).
HEADER_CRC_FIELDS = ("format", "format_version", "run_id", "name", "experiment", "status",
                     "created", "ended", "error", "params_hash", "recordkit_version",
                     "restarts", "/system", "/info")

# --- tables -------------------------------------------------------------------------------

#: One row of a metric's history as readers see it. ``step`` is -1 when the row was logged
#: without a step.
HISTORY_DTYPE = np.dtype(
    [("epoch", "<i8"), ("step", "<i8"), ("value", "<f8"), ("time", "<f8")]
)
#: One row of ``/history/rows`` in the file: the same, with the metric's index into
#: ``/history/metrics``. All metrics share one table, so a commit appends once.
HISTORY_ROW_DTYPE = np.dtype(
    [("metric", "<i4"), ("epoch", "<i8"), ("step", "<i8"), ("value", "<f8"), ("time", "<f8")]
)
#: One row of the snapshot table: the epoch (and step) each snapshot index stands for.
SNAPSHOT_DTYPE = np.dtype([("epoch", "<i8"), ("step", "<i8"), ("time", "<f8")])

# --- storage ------------------------------------------------------------------------------

#: Rows per chunk of the history table: 113 rows of 36 bytes + the 4-byte checksum fit one
#: 4 KiB page. With WRITE_OPTIONS the chunk is page-aligned, so the in-place rewrite of
#: the last chunk on each commit is one page, which a SIGKILL cannot tear (Linux stops a
#: killed write between pages): committed rows never fail their checksum after a crash.
HISTORY_CHUNK_ROWS = 113
#: Rows per chunk of the snapshot table: 170 rows of 24 bytes + checksum, one page.
SNAPSHOT_CHUNK_ROWS = 170
#: Names per chunk of /history/metrics.
METRIC_NAME_CHUNK = 64
#: File access options of every writer: objects of 4000 bytes or more (history and table
#: chunks, weight chunks) start on a 4 KiB page boundary; each dataset's chunk cache is
#: 1 MiB (HDF5 1.14's default; HDF5 2.0 made it 8 MiB), so that a larger weight chunk is
#: never cached and may be written directly (format/directio.py). Not stored in the file.
WRITE_OPTIONS: dict[str, int] = {"alignment_threshold": 4000, "alignment_interval": 4096,
                                 "rdcc_nbytes": 1 << 20}
#: Target size of one chunk of a weight dataset: big enough for fast appends, small enough
#: to stay far below HDF5's 4 GiB chunk limit. Tensors above it are split along their axes.
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: (v3) A tensor of at most this many bytes, new in a snapshot, may be packed.
PACK_TENSOR_BYTES = 16 * 1024
#: (v3) Packs are made only when a snapshot brings at least this many new small tensors:
#: below it the per-tensor cost is a fraction of a second, and each tensor keeps a
#: dataset of its own (the layout plain h5py reads by name).
PACK_MIN_TENSORS = 32
#: (v3) Bytes of one pack's row at most (one chunk: reading one member reads the row).
PACK_BYTES = 1024 * 1024
#: (v3) Characters of one pack's members text at most (an attribute stays compact).
PACK_MEMBERS_CHARS = 48 * 1024
#: Attribute strings are bounded: error messages and names stay far below 64 KiB.
MAX_ATTR_CHARS = MAX_TEXT_CHARS
#: A summary above this size is not written (HDF5's compact attribute storage ends at
#: 64 KiB); readers then read the whole header instead.
MAX_SUMMARY_BYTES = 60_000


# --- names --------------------------------------------------------------------------------


def escape_name(name: str) -> str:
    """Turn any string into a legal HDF5 link name, reversibly.

    ``%``, ``/`` and NUL are percent-encoded; the names ``.`` and the empty string (which
    HDF5 refuses) become ``%2E`` and ``%``.

    Example:
        >>> escape_name("train/loss")
        'train%2Floss'
        >>> unescape_name(escape_name("100% ./x\\x00")) == "100% ./x\\x00"
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"names must be str, received {type(name).__name__}: {name!r}")
    escaped = name.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    if escaped == ".":
        return "%2E"
    if escaped == "":
        return "%"
    return escaped


_UNESCAPE = re.compile(r"%(25|2F|00|2E)")
_UNESCAPE_MAP = {"25": "%", "2F": "/", "00": "\x00", "2E": "."}


def unescape_name(escaped: str) -> str:
    """Invert :func:`escape_name`."""
    if escaped == "%":
        return ""
    return _UNESCAPE.sub(lambda m: _UNESCAPE_MAP[m.group(1)], escaped)


def escape_metric(name: str) -> str:
    """HDF5 strings cannot hold NUL: ``%`` and NUL are percent-encoded in metric names and
    ``name`` attributes (nothing else: ``train/loss`` stays readable).

    Example:
        >>> escape_metric("train/loss 100%")
        'train/loss 100%25'
    """
    return name.replace("%", "%25").replace("\x00", "%00")
