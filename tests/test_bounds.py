"""Hostile files that are small but claim much (issue 17, items 1, 2 and 9): nesting too
deep for HDF5's recursive walk, variable-length data that claims gigabytes unallocated,
compressed data that expands past a cap, and reads that run out of memory. Each file is
built with plain h5py; each read of one runs in a child process (a segfault, a hang or an
out-of-memory kill fails the test, not the suite) under an address-space limit, so that
code without the bound fails quickly instead of taking the machine's memory.

Budget: ~15 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordDamagedError, RecordkitWarning, UnsafeRecordError
from recordkit.format import layout, safety

#: What a child may map (bytes): far more than any read these tests allow, far less than
#: what the files claim (16 GiB and more).
CHILD_MEMORY = 3 << 30
#: A child that runs longer than this hangs (the unbounded reads took 24 s to minutes).
CHILD_SECONDS = 60


def _record(root: Path, padding: int = 0) -> Path:
    """A small record; with *padding*, that many more bytes of stored random data."""
    with recordkit.Recorder(root, params={"lr": 0.1}, system=False) as rec:
        for epoch in range(2):
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot({"w": np.full((4, 4), epoch, np.float32)}, epoch=epoch)
            rec.commit()
        rec.add("cfg", {"a": 1, "b": [1, 2]})
        rec.add("curve", np.arange(5.0))
        rec.add("arrays", {"a": np.arange(3), "b": np.ones((2, 2))})
        if padding:
            rec.add("padding", np.random.default_rng(0).integers(0, 255, padding, np.uint8))
    rec.path.chmod(0o644)
    return rec.path


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return _record(tmp_path / "records")


#: What a child does with the record: (code run on ``path``, printed as the result).
ACTIONS = {
    "load": "recordkit.load(path)",
    "history": "recordkit.load(path).history",
    "extras": "[r.extras[k] for r in [recordkit.load(path)] for k in r.extras]",
    "everything": "_read_everything(recordkit.load(path))",
    "verify": "_verify(path)",
}

_CHILD = textwrap.dedent("""
    import json, resource, sys
    import recordkit
    from recordkit.verify import verify

    def _read_everything(r):
        r.params, r.system, r.info, r.history, r.snapshot_epochs
        for name in r.tensor_names:
            r.weight(name)[:]
        for key in r.extras:
            r.extras[key]

    def _verify(path):
        report = verify(path, isolate=False)
        if not report.ok:
            raise recordkit.errors.UnsafeRecordError(report.problems[0])

    path, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        {action}
        result = {{"cls": None, "msg": ""}}
    except Exception as err:
        result = {{"cls": type(err).__name__, "msg": str(err),
                  "recordkit": isinstance(err, recordkit.RecordkitError)}}
    print(json.dumps(result))
""")


def _in_child(path: Path, action: str, memory: int = CHILD_MEMORY) -> dict:
    """The outcome of *action* on *path* in a child process: the exception it raised
    (``cls``, ``msg``), or ``cls`` None; a crash or a hang fails the test."""
    code = _CHILD.format(action=ACTIONS.get(action, action))
    done = subprocess.run([sys.executable, "-c", code, str(path), str(memory)],
                          capture_output=True, text=True, timeout=CHILD_SECONDS, check=False)
    assert done.returncode == 0, (f"the child died with {done.returncode} "
                                  f"(-11 is SIGSEGV): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _show(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recordkit", "show", str(path)],
                          capture_output=True, text=True, timeout=CHILD_SECONDS, check=False)


# --- item 1: nesting -------------------------------------------------------------------


def _nest(path: Path, under: str, depth: int) -> None:
    """*depth* groups more, each in the one before, under /*under* (created when
    absent) or under the deepest of those made before."""
    with h5py.File(path, "r+") as f:
        group = (f[under] if under in f else f.create_group(under)).id
        while group.links.exists(b"g"):
            group = h5py.h5g.open(group, b"g")
        for _ in range(depth):
            group = h5py.h5g.create(group, b"g")


@pytest.mark.parametrize(("under", "depth", "action"), [
    ("extras", 10_000, "extras"),
    ("history", 10_000, "history"),
    ("foreign", 10_000, "load"),  # not written by recordkit: checked when it is opened
    ("extras", 10_000, "everything"),
])
def test_deep_nesting_is_refused_without_crashing(record: Path, under: str, depth: int,
                                                  action: str) -> None:
    """10,000 nested groups crashed HDF5's recursive H5Lvisit (SIGSEGV) in load and
    show; the walk is recordkit's own and stops at MAX_DEPTH."""
    _nest(record, under, depth)
    result = _in_child(record, action)
    assert result["cls"] == "UnsafeRecordError", result
    assert str(record) in result["msg"] and f"/{under}/g/g/g" in result["msg"]
    assert f"nested {safety.MAX_DEPTH + 1} groups deep (limit {safety.MAX_DEPTH}" \
        in result["msg"]
    verified = _in_child(record, "verify")
    assert verified["cls"] == "UnsafeRecordError" and "nested" in verified["msg"]
    shown = _show(record)
    assert shown.returncode >= 0, shown.stderr[-2000:]  # -11: SIGSEGV
    if under != "extras":  # show reads the history (and load the foreign object)
        assert shown.returncode > 0 and "nested" in shown.stderr, shown


def test_nesting_recordkit_writes_is_walked(record: Path) -> None:
    """A dict extra is two groups deep under the root; as deep as MAX_DEPTH is walked."""
    _nest(record, "foreign", safety.MAX_DEPTH - 1)  # /foreign is one deep
    loaded = recordkit.load(record)
    assert loaded.extras["arrays"]["b"].tolist() == [[1, 1], [1, 1]]
    _nest(record, "foreign", 1)
    with pytest.raises(UnsafeRecordError, match="limit 64"):
        recordkit.load(record)


def test_hard_link_cycle_deeper_than_the_limit_is_walked_once(record: Path) -> None:
    with h5py.File(record, "r+") as f:
        f["extras/loop"] = f["extras"]  # a group that holds itself: walked once
    assert "cfg" in recordkit.load(record).extras


# --- item 2: variable-length data -------------------------------------------------------


def _vlen_in_place(f: h5py.File, name: str, count: int) -> None:
    """/*name* replaced by an unallocated dataset of *count* variable-length strings,
    with the attributes the old one had (nothing stored: the file stays small)."""
    old = f[name]
    attrs = {k: old.attrs[k] for k in old.attrs
             if k not in (layout.CHECKSUM_ATTR, layout.CRC32C_ATTR)}
    parent, key = name.rsplit("/", 1) if "/" in name else ("/", name)
    del f[name]
    new = f[parent].create_dataset(key, shape=(count,), dtype=h5py.string_dtype(),
                                   chunks=(min(count, 1 << 16),), maxshape=(None,))
    for k, v in attrs.items():
        new.attrs[k] = v


#: Where the strings are, and the first use that reads them.
VLEN = {
    f"{layout.HISTORY}/{layout.HISTORY_METRICS}": "history",
    layout.PARAMS: "load",
    f"{layout.EXTRAS}/cfg": "extras",
}


@pytest.mark.parametrize("power", [24, 26, 31])
@pytest.mark.parametrize("name", sorted(VLEN))
def test_unallocated_strings_are_refused_before_they_are_read(record: Path, name: str,
                                                              power: int) -> None:
    """2**24 empty strings in a 166 KB file took 24 s and 434 MB to load, 2**31 asked
    for 16 GiB: a string counts 16 bytes (its descriptor) at least."""
    with h5py.File(record, "r+") as f:
        _vlen_in_place(f, name, 1 << power)
    assert record.stat().st_size < 1 << 20
    result = _in_child(record, VLEN[name])
    assert result["cls"] == "UnsafeRecordError", result
    assert str(record) in result["msg"] and f"dataset /{name} claims" in result["msg"]
    assert f"{1 << power} variable-length elements, 16 bytes each" in result["msg"]
    verified = _in_child(record, "verify")
    assert verified["cls"] == "UnsafeRecordError" and "variable-length" in verified["msg"]


def _shared_strings(f: h5py.File, name: str, count: int, layout_kind: str) -> int | None:
    """/*name* replaced by *count* strings whose descriptors all name one stored string
    of 1 MiB (each element is within the file; together they are *count* MiB). A
    contiguous dataset's descriptors are patched after the file is closed: the offset
    of its data is returned for :func:`_patch_contiguous`."""
    old = f[name]
    attrs = {k: old.attrs[k] for k in old.attrs}
    parent, key = name.rsplit("/", 1)
    del f[name]
    values = np.array(["x" * (1 << 20)] + [""] * (count - 1), dtype=object)
    chunks = (64,) if layout_kind == "chunked" else None
    new = f[parent].create_dataset(key, data=values, dtype=h5py.string_dtype(),
                                   chunks=chunks, maxshape=(None,) if chunks else None)
    for k, v in attrs.items():
        new.attrs[k] = v
    if chunks is None:
        return new.id.get_offset()
    first = new.id.read_direct_chunk((0,))[1][:16]
    for index in range(new.id.get_num_chunks()):
        where = new.id.get_chunk_info(index).chunk_offset
        new.id.write_direct_chunk(where, first * chunks[0])
    return None


def _patch_contiguous(path: Path, offset: int, count: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        first = fh.read(16)
        fh.write(first * (count - 1))


@pytest.mark.parametrize("layout_kind", ["chunked", "contiguous"])
def test_strings_sharing_stored_data_are_refused(record: Path, layout_kind: str) -> None:
    """A 1 MB file whose 2,000 metric names all name one stored string of 1 MiB read
    back as 2 GiB: the lengths in the descriptors are added up before HDF5 reads."""
    count = 2000
    name = f"{layout.HISTORY}/{layout.HISTORY_METRICS}"
    with h5py.File(record, "r+") as f:
        offset = _shared_strings(f, name, count, layout_kind)
    if offset is not None:
        _patch_contiguous(record, offset, count)
    assert record.stat().st_size < 2 << 20
    result = _in_child(record, "history")
    assert result["cls"] == "UnsafeRecordError", result
    assert f"dataset /{name} claims" in result["msg"]
    assert f"its {count} variable-length elements add up to {count << 20} bytes" \
        in result["msg"]


def _shared_attribute(path: Path, count: int) -> None:
    """A root attribute of *count* strings whose descriptors all name one stored string
    of 1 MiB: written as one such string and *count* - 1 strings of one byte, then each
    of those descriptors made a copy of the first in the file's bytes (the object header
    of the default file format has no checksum)."""
    with h5py.File(path, "r+") as f:
        values = np.array(["x" * (1 << 20)] + ["y"] * (count - 1), dtype=object)
        f.attrs.create("tags", values, dtype=h5py.string_dtype())
    data = bytearray(path.read_bytes())
    at = data.find(b"\x00\x00\x10\x00")  # a descriptor of 1 MiB, then one of 1 byte
    while at >= 0 and data[at + 16:at + 20] != b"\x01\x00\x00\x00":
        at = data.find(b"\x00\x00\x10\x00", at + 1)
    assert at >= 0
    data[at + 16:at + 16 * count] = bytes(data[at:at + 16]) * (count - 1)
    path.write_bytes(bytes(data))


def test_attribute_strings_that_may_share_stored_data_are_refused(record: Path) -> None:
    """Every root attribute is read when a record is opened: 2,000 strings naming one
    stored string of 1 MiB read back as 2 GiB from a 1.2 MB file (11 s in plain h5py);
    an attribute's descriptors cannot be read raw, so many strings in it are refused
    when they could claim more than the file holds."""
    _shared_attribute(record, 2000)
    assert record.stat().st_size < 2 << 20
    result = _in_child(record, "load")
    assert result["cls"] == "UnsafeRecordError", result
    assert "attribute 'tags' of the root group holds 2000 variable-length values" \
        in result["msg"]


def test_attribute_of_a_few_strings_is_read(record: Path) -> None:
    with h5py.File(record, "r+") as f:
        f.attrs["tags"] = ["a", "b", "c"]
    assert recordkit.load(record).run_id


# --- item 9: the cap on compressed data ----------------------------------------------------


def _compressed_zeros(f: h5py.File, name: str, size: int) -> None:
    """/*name* replaced by a gzip dataset of *size* bytes of float64, never written: it
    reads as zeros and the file holds nothing of it (what a decompression bomb claims)."""
    old = f[name]
    attrs = {k: old.attrs[k] for k in old.attrs
             if k not in (layout.CHECKSUM_ATTR, layout.CRC32C_ATTR)}
    parent, key = name.rsplit("/", 1)
    del f[name]
    new = f[parent].create_dataset(key, shape=(size // 8,), dtype="<f8", compression="gzip",
                                   chunks=(1 << 17,))
    for k, v in attrs.items():
        new.attrs[k] = v


def test_compressed_claim_past_the_cap_is_refused_with_how_to_raise_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 MB file of gzip data may claim 2.2 GB within gzip's best ratio; the default
    cap (1 GiB) refuses it, naming the object, its claim, the cap and how to raise it."""
    record = _record(tmp_path / "records", padding=2 << 20)
    claim = 1536 << 20
    with h5py.File(record, "r+") as f:
        _compressed_zeros(f, "extras/curve", claim)
    assert record.stat().st_size < 3 << 20
    loaded = recordkit.load(record)
    with pytest.raises(UnsafeRecordError) as info:
        loaded.extras  # noqa: B018
    message = str(info.value)
    assert str(record) in message and "dataset /extras/curve" in message
    assert f"claims {claim} bytes" in message
    assert f"cap on what compressed data may expand to, {safety.MAX_READ_BYTES} bytes" \
        in message
    assert "max_read_bytes=2147483648" in message and "RECORDKIT_MAX_READ_BYTES" in message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        records = recordkit.load_all(record.parent.parent)
    with pytest.raises(UnsafeRecordError, match="cap on what compressed"):
        records[0].extras  # noqa: B018
    # raised: the check lets it through (nothing is read here)
    assert "curve" in recordkit.load(record, max_read_bytes=2 << 30).extras
    monkeypatch.setenv(safety.MAX_READ_BYTES_VARIABLE, str(2 << 30))
    assert "curve" in recordkit.load(record).extras
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        assert "curve" in recordkit.load_all(record.parent.parent)[0].extras


def test_lowered_cap_refuses_and_raised_cap_reads(record: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    claim = 48 << 20  # within 1,100 times the file, past 8 times it
    with h5py.File(record, "r+") as f:
        _compressed_zeros(f, "extras/curve", claim)
    assert recordkit.load(record).extras["curve"].shape == (claim // 8,)  # the default
    for cap in (32 << 20, None):
        if cap is None:
            monkeypatch.setenv(safety.MAX_READ_BYTES_VARIABLE, str(32 << 20))
        with pytest.raises(UnsafeRecordError, match=f"expand to, {32 << 20} bytes"):
            recordkit.load(record, max_read_bytes=cap).extras  # noqa: B018
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordkitWarning)
            lazy = recordkit.load_all(record.parent.parent, max_read_bytes=cap)
        with pytest.raises(UnsafeRecordError, match="cap on what compressed"):
            lazy[0].extras  # noqa: B018
    assert not recordkit.load(record, max_read_bytes=64 << 20).extras["curve"].any()


def test_uncompressed_reads_are_not_capped(tmp_path: Path) -> None:
    """The cap bounds what compressed data expands to; what the file holds is read."""
    record = _record(tmp_path / "records", padding=3 << 20)
    assert len(recordkit.load(record, max_read_bytes=1 << 20).extras["padding"]) == 3 << 20


@pytest.mark.parametrize("value", [0, -1, 1.5, "1GiB", True])
def test_cap_must_be_a_positive_int(record: Path, value: object) -> None:
    with pytest.raises(ValueError, match=r"load\(max_read_bytes="):
        recordkit.load(record, max_read_bytes=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"load_all\(max_read_bytes="):
        recordkit.load_all(record.parent.parent,
                           max_read_bytes=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0", "-5", "lots", "1.5"])
def test_cap_variable_must_be_a_positive_number(record: Path, text: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(safety.MAX_READ_BYTES_VARIABLE, text)
    with pytest.raises(ValueError, match="RECORDKIT_MAX_READ_BYTES"):
        recordkit.load(record)


# --- allocation failures ----------------------------------------------------------------------


_OUT_OF_MEMORY = textwrap.dedent("""
    import json, resource, sys
    import recordkit

    path = sys.argv[1]
    record = recordkit.load(path)
    keys = list(record.extras)  # checked: the claim is within every bound
    with open("/proc/self/status") as status:
        mapped = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize"))
    limit = mapped + (24 << 20)  # less than the extra's 48 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        record.extras["curve"]
        result = {"cls": None}
    except BaseException as err:
        result = {"cls": type(err).__name__, "msg": str(err),
                  "recordkit": isinstance(err, recordkit.RecordkitError),
                  "memory": isinstance(err, MemoryError)}
    print(json.dumps(result))
""")


def test_read_out_of_memory_is_a_recordkit_error(record: Path) -> None:
    """Under RLIMIT_AS, a read that cannot be allocated is a RecordkitError naming the
    file and the object, not a raw MemoryError."""
    with h5py.File(record, "r+") as f:
        _compressed_zeros(f, "extras/curve", 48 << 20)
    done = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY, str(record)],
                          capture_output=True, text=True, timeout=CHILD_SECONDS, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # a RecordkitError that code catching MemoryError catches too
    assert result["cls"] == "RecordTooLargeError" and result["recordkit"], result
    assert result["memory"], result
    assert str(record) in result["msg"] and "the extra 'curve'" in result["msg"]
    assert "more memory than this process may allocate" in result["msg"]


# --- params -------------------------------------------------------------------------------


def test_changed_params_are_refused_when_decoded_later(record: Path) -> None:
    """load() reads the params text but decodes it (seconds for a million keys) and
    compares its hash on first use: a changed text is refused then (or by load itself,
    when a checksum read with the root covers it), and load_all skips the run."""
    with h5py.File(record, "r+") as f:
        attrs = dict(f[layout.PARAMS].attrs)
        del f[layout.PARAMS]
        f[layout.PARAMS] = '{"lr": 0.2}'
        for k, v in attrs.items():
            f[layout.PARAMS].attrs[k] = v
        del f.attrs["summary"]
    with pytest.raises(RecordDamagedError, match="params") as info:
        loaded = recordkit.load(record)
        assert loaded.status == "completed"
        loaded.flat_params()
    assert str(record) in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        records = recordkit.load_all(record.parent.parent, cache=False)
    assert len(records) == 0 and "params" in records.skipped[0][1]
