"""Names must not change silently (issue 17, item 7): in format version 2 every string
that identifies data (metric and tensor names, extra names, run id, name, experiment,
status, error, the /system and /info text) is covered by a CRC32C that load (on first
use of the part) or `recordkit verify` checks. One changed byte in a name, or in its CRC,
or a zeroed CRC, is refused naming the file and the object, never read as another name;
on closed and on killed runs. A header change cut by a kill still loads. Version 1
records (no such CRCs) load and verify as before.

The damage is made in the file's bytes: a string in HDF5's global heap is stored after
its length (8 bytes, little-endian), which finds the one copy of it that a reader reads.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordDamagedError
from recordkit.format import header
from recordkit.format.attrs import write_root_attrs
from recordkit.format.checksums import identity_crc
from recordkit.format.layout import HEADER_CRC_ATTR, HEADER_CRC_FIELDS
from recordkit.format.summary import drop_summary
from recordkit.verify import verify

TESTS = Path(__file__).resolve().parent
V1 = TESTS / "data" / "v1"
SYSTEM = {"hostname": "box-one-host", "python": "3.11"}
INFO = {"trainer": "tiny-trainer-xyz"}


def make_record(root: Path, *, status: str = "completed") -> Path:
    with recordkit.Recorder(root, experiment="exp-ident", name="my-run",
                            params={"lr": 0.01}, system=SYSTEM) as rec:
        rec.set_info(INFO)
        for epoch in range(3):
            rec.log({"train/acc": epoch / 10, "val/loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot({"encoder/fc.weight": np.full((4, 3), epoch, np.float32),
                          "fc.bias": np.arange(3.0) + epoch,
                          "steps": np.arange(4, dtype=np.int16)}, epoch=epoch)
            rec.commit()
        rec.add("curve-xyz", np.linspace(0, 1, 20))
        rec.add("layers", {"alpha-member": np.ones(3), "b": np.zeros(2)})
        rec.add("notes", {"who": "me"})  # kind json
        if status != "completed":
            rec.close(status, error="ValueError: boom-xyz")
    return rec.path


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("identity")
    return {"completed": make_record(base / "ok"),
            "failed": make_record(base / "failed", status="failed")}


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run SIGKILLed after its 5th commit (tests/crash_writer.py): status 'running',
    no summary."""
    root = tmp_path_factory.mktemp("killed")
    writer = subprocess.Popen([sys.executable, str(TESTS / "crash_writer.py"), str(root)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    path = None
    try:
        for line in writer.stdout:
            if line.startswith("path "):
                path = Path(line.split(" ", 1)[1].strip())
            elif line.strip() == "4":
                break
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert path is not None and path.exists()
    return path


def heap_strings(data: bytes, text: str) -> list[int]:
    """The offsets of the global-heap objects whose bytes are exactly *text*."""
    raw = text.encode()
    size = len(raw).to_bytes(8, "little")
    return [m.start() for m in re.finditer(re.escape(raw), data)
            if data[m.start() - 8:m.start()] == size]


def damaged_copy(path: Path, out: Path, change: Callable[[bytearray], None]) -> Path:
    data = bytearray(path.read_bytes())
    change(data)
    target = out / path.name  # the run id is the file's stem
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return target


def change_last_byte(text: str, copies: int = 1) -> Callable[[bytearray], None]:
    """Change the last byte of each of the *copies* global-heap objects holding *text*."""
    def change(data: bytearray) -> None:
        found = heap_strings(bytes(data), text)
        assert len(found) == copies, (text, found)
        for start in found:
            data[start + len(text.encode()) - 1] ^= 0x01
    return change


def change_unique_text(text: str) -> Callable[[bytearray], None]:
    """Change the last byte of *text*, stored once in the file (a text dataset: in the
    global heap, or its raw data when it is a fixed-length string)."""
    def change(data: bytearray) -> None:
        raw = text.encode()
        assert bytes(data).count(raw) == 1, text
        data[bytes(data).index(raw) + len(raw) - 1] ^= 0x01
    return change


def assert_refused(path: Path, use: Callable[[recordkit.Record], Any], words: str) -> None:
    with pytest.raises(RecordDamagedError) as info:
        use(recordkit.load(path))
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)
    report = verify(path, isolate=False)
    assert not report.ok and any(words in p for p in report.problems), report.problems


# (text whose last byte changes, what reads it, words the error says, which record)
IDENTITY: dict[str, tuple[str, Callable[[recordkit.Record], Any], str, str]] = {
    "metric name": ("val/loss", lambda r: r.history, "/history/metrics", "completed"),
    "tensor name": ("encoder/fc.weight", lambda r: r.tensor_names,
                    "/weights/encoder%2Ffc.weight", "completed"),
    "tensor name, read alone": ("encoder/fc.weight", lambda r: r.weight("encoder/fc.weight"),
                                "/weights/encoder%2Ffc.weight", "completed"),
    "tensor dtype": ("int16", lambda r: r.tensor_names, "/weights/steps", "completed"),
    "extra name": ("curve-xyz", lambda r: list(r.extras), "/extras/curve-xyz", "completed"),
    "extra kind": ("json", lambda r: list(r.extras), "/extras/notes", "completed"),
    "member name of an extra": ("alpha-member", lambda r: r.extras["layers"],
                                "/extras/layers/alpha-member", "completed"),
    "run name": ("my-run", lambda r: r, "'name'", "completed"),
    "experiment": ("exp-ident", lambda r: r, "'experiment'", "completed"),
    "status": ("completed", lambda r: r, "'status'", "completed"),
    "failed status": ("failed", lambda r: r, "'status'", "failed"),
    "error": ("ValueError: boom-xyz", lambda r: r, "'error'", "failed"),
}


@pytest.mark.parametrize("case", sorted(IDENTITY))
def test_a_changed_byte_in_a_name_is_refused(records: dict[str, Path], tmp_path: Path,
                                             case: str) -> None:
    text, use, words, which = IDENTITY[case]
    path = damaged_copy(records[which], tmp_path, change_last_byte(text))
    assert_refused(path, use, words)


def test_a_changed_byte_in_the_run_id_is_refused(records: dict[str, Path],
                                                 tmp_path: Path) -> None:
    original = records["completed"]
    path = damaged_copy(original, tmp_path, change_last_byte(original.stem))
    assert_refused(path, lambda r: r, "'run_id'")


@pytest.mark.parametrize(("key", "document"), [("/system", SYSTEM), ("/info", INFO)])
def test_a_changed_byte_in_system_or_info_text_is_refused_by_verify(
        records: dict[str, Path], tmp_path: Path, key: str, document: dict[str, str]) -> None:
    original = records["completed"]
    with h5py.File(original, "r") as f:
        text = f[key][()].decode()
    assert all(value in text for value in document.values())
    path = damaged_copy(original, tmp_path, change_unique_text(text))
    report = verify(path, isolate=False)
    assert not report.ok and any(f"the text of {key}" in p for p in report.problems), (
        report.problems)
    with h5py.File(path, "r") as f, pytest.raises(RecordDamagedError, match=key):
        header.read_checked_text(f, key.lstrip("/"))


@pytest.mark.parametrize("key", ["/system", "/info"])
def test_a_changed_byte_in_system_or_info_text_is_refused_by_load(
        records: dict[str, Path], tmp_path: Path, key: str) -> None:
    original = records["completed"]
    with h5py.File(original, "r") as f:
        text = f[key][()].decode()
    path = damaged_copy(original, tmp_path, change_unique_text(text))
    with pytest.raises(RecordDamagedError, match=key):
        getattr(recordkit.load(path), key.lstrip("/"))


# --- the CRCs themselves -------------------------------------------------------------------


def _header_crc_at(data: bytes, path: Path) -> int:
    with h5py.File(path, "r") as f:
        raw = np.asarray(f.attrs[HEADER_CRC_ATTR]).astype("<u4").tobytes()
    assert data.count(raw) == 1
    return data.index(raw)


def _name_crc_at(data: bytes, path: Path, where: str) -> int:
    """The 4 bytes of the attrs_crc32c attribute of *where*: its value, found after the
    attribute's name in the object's header."""
    with h5py.File(path, "r") as f:
        raw = np.uint32(f[where].attrs["attrs_crc32c"]).tobytes()
    found = [m.start() for m in re.finditer(re.escape(raw), data)
             if b"attrs_crc32c" in data[max(0, m.start() - 120):m.start()]]
    assert len(found) == 1, found
    return found[0]


def _metric_crcs_at(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["history/metrics_crc32c"].id.get_chunk_info(0).byte_offset)


N = len(HEADER_CRC_FIELDS)
# (where the bytes are, which bytes: (start, length) from there, what reads it, words)
CRCS: dict[str, tuple[str, tuple[int, int], Callable[[recordkit.Record], Any], str]] = {
    "header: run_id's CRC": ("header", (4 * 2, 1), lambda r: r, HEADER_CRC_ATTR),
    "header: status's CRC before the last change": ("header", (4 * (N + 5) + 2, 1),
                                                     lambda r: r, HEADER_CRC_ATTR),
    "header: its own CRC": ("header", (4 * 2 * N + 3, 1), lambda r: r, HEADER_CRC_ATTR),
    "header: zeroed": ("header", (0, 4 * (2 * N + 1)), lambda r: r, HEADER_CRC_ATTR),
    "metric names: val/loss's CRC": ("metrics", (4 * 1 + 1, 1), lambda r: r.history,
                                     "metrics_crc32c"),
    "metric names: zeroed": ("metrics", (0, 8), lambda r: r.history, "metrics_crc32c"),
    "tensor name's CRC": ("tensor", (0, 1), lambda r: r.tensor_names, "attrs_crc32c"),
    "tensor name's CRC zeroed": ("tensor", (0, 4), lambda r: r.tensor_names, "attrs_crc32c"),
    "extra name's CRC": ("extra", (3, 1), lambda r: list(r.extras), "attrs_crc32c"),
}


@pytest.mark.parametrize("case", sorted(CRCS))
def test_a_changed_or_zeroed_crc_is_refused(records: dict[str, Path], tmp_path: Path,
                                            case: str) -> None:
    where, (start, length), use, words = CRCS[case]
    original = records["completed"]
    data = original.read_bytes()
    base = {"header": lambda: _header_crc_at(data, original),
            "metrics": lambda: _metric_crcs_at(original),
            "tensor": lambda: _name_crc_at(data, original, "weights/encoder%2Ffc.weight"),
            "extra": lambda: _name_crc_at(data, original, "extras/curve-xyz")}[where]()

    def change(buffer: bytearray) -> None:
        at = base + start
        if length == 1:
            buffer[at] ^= 0x10
        else:
            buffer[at:at + length] = bytes(length)

    path = damaged_copy(original, tmp_path, change)
    assert_refused(path, use, words)


def test_intact_records_load_and_verify(records: dict[str, Path], killed: Path) -> None:
    for path in (*records.values(), killed):
        record = recordkit.load(path)
        assert record.tensor_names and record.history and record.system is not None
        report = verify(path, isolate=False)
        assert report.ok, report.problems
    record = recordkit.load(records["failed"])
    assert (record.status, record.error, record.name, record.experiment) == (
        "failed", "ValueError: boom-xyz", "my-run", "exp-ident")
    assert record.system == SYSTEM and record.info == INFO
    assert set(record.history) == {"train/acc", "val/loss"}
    assert record.tensor_names == ["encoder/fc.weight", "fc.bias", "steps"]
    assert record.weight("steps")[2].dtype == np.int16
    assert record.extras["notes"] == {"who": "me"}


# --- killed runs (no summary) ----------------------------------------------------------


@pytest.mark.parametrize(("text", "use", "words"), [
    ("val/acc", lambda r: r.history, "/history/metrics"),
    ("head/w", lambda r: r.tensor_names, "/weights/head%2Fw"),
    ("running", lambda r: r, "'status'"),
])
def test_a_changed_name_in_a_killed_run_is_refused(killed: Path, tmp_path: Path, text: str,
                                                   use: Callable[[recordkit.Record], Any],
                                                   words: str) -> None:
    with h5py.File(killed, "r", locking=False) as f:
        assert f.attrs["status"] == "running" and not f.attrs.get("summary")
    path = damaged_copy(killed, tmp_path, change_last_byte(text))
    assert_refused(path, use, words)


def test_a_changed_run_id_in_a_killed_run_is_refused(killed: Path, tmp_path: Path) -> None:
    # its name is its run id (the default): both copies changed alike
    path = damaged_copy(killed, tmp_path, change_last_byte(killed.stem, copies=2))
    assert_refused(path, lambda r: r, "'run_id'")


# --- what a kill can leave, and what it cannot ---------------------------------------------


def _writable_copy(path: Path, out: Path) -> Path:
    target = out / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    target.chmod(0o644)
    return target


def test_a_header_change_cut_by_a_kill_loads(records: dict[str, Path],
                                             tmp_path: Path) -> None:
    """A kill after the new CRCs were flushed, before (or while) the values are written
    (here: a resume's), leaves each value old or new: each verifies, and the next change
    settles them."""
    path = _writable_copy(records["completed"], tmp_path)
    with h5py.File(path, "r+") as f:
        drop_summary(f)  # what write_reopened does first
        header._announce(f, {"status": "running", "ended": "", "error": "",
                             "name": "renamed", "restarts": '[{"pid": 1}]'})
        write_root_attrs(f, {"status": "running"})  # the others never written
    record = recordkit.load(path)
    assert (record.stored_status, record.name, record.restarts) == ("running", "my-run", [])
    report = verify(path, isolate=False)
    assert report.ok, report.problems
    with recordkit.Recorder(tmp_path, resume=path) as rec:  # the next change settles them
        rec.log({"val/loss": 0.1}, epoch=3)
    record = recordkit.load(path)
    assert record.status == "completed" and len(record.history["val/loss"]) == 4
    report = verify(path, isolate=False)
    assert report.ok, report.problems


def test_values_written_without_their_crcs_are_refused(records: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """The other order (values first) is what damage looks like: refused."""
    path = _writable_copy(records["completed"], tmp_path)
    with h5py.File(path, "r+") as f:
        write_root_attrs(f, {"experiment": "other"})
    assert_refused(path, lambda r: r, "'experiment'")
    with h5py.File(path, "r+") as f:  # a tool that edits the header by hand signs it
        header.sign_header(f)
    assert recordkit.load(path).experiment == "other"


def test_names_past_their_crcs(records: dict[str, Path], killed: Path,
                               tmp_path: Path) -> None:
    """A name without its CRC is a commit a kill cut short in a running run (left out,
    with its rows, and dropped when the run is resumed); damage in a closed one."""
    for which, path in (("killed", killed), ("completed", records["completed"])):
        copy = _writable_copy(path, tmp_path / which)
        with h5py.File(copy, "r+") as f:
            names = f["history/metrics"]
            names.resize((names.shape[0] + 1,))
            names[-1] = "ghost"
            rows = f["history/rows"]
            rows.resize((rows.shape[0] + 1,))
            rows[-1] = (names.shape[0] - 1, 9, -1, 1.0, 1.0e9)
        if which == "completed":
            assert_refused(copy, lambda r: r.history, "/history/metrics")
            continue
        assert "ghost" not in recordkit.load(copy).history
        report = verify(copy, isolate=False)
        assert report.ok and any("past their CRCs" in n for n in report.notes), report
        with recordkit.Recorder(tmp_path, resume=copy) as rec:
            rec.log({"new": 1.0}, epoch=9)
        history = recordkit.load(copy).history
        assert "ghost" not in history and history["new"].tolist() == [1.0]
        assert verify(copy, isolate=False).ok


def test_identity_crc_of_an_empty_text_is_not_zero() -> None:
    assert identity_crc("") != 0 and identity_crc("", "") != 0


# --- version 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in V1.glob("*.h5")))
def test_v1_records_load_and_verify_without_identity_crcs(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    shutil.copy(V1 / name, path)
    record = recordkit.load(path)
    assert record.format_version == 1
    record.history, record.tensor_names, record.system, record.info, dict(record.extras)
    report = verify(path, isolate=False)
    assert report.ok, report.problems
    with h5py.File(path, "r") as f:
        assert HEADER_CRC_ATTR not in f.attrs and "metrics_crc32c" not in f.get(
            "history", {})


def test_params_cut_from_their_hash_by_a_kill_read_as_the_params_the_header_vouches_for(
        tmp_path: Path) -> None:
    """A kill between the params text and its hash (Recorder.extend) leaves the new text
    with the old hash, or the old text with the new hash: both are params the header CRC
    announced, so each loads with the hash of the text read; any other hash is damage."""
    from recordkit.codec import params_hash

    script = (
        "import os, signal, sys, h5py, recordkit\n"
        "rec = recordkit.Recorder(sys.argv[1], params={'lr': 0.1}, system=False)\n"
        "rec.log({'loss': 1.0}, epoch=0); rec.commit()\n"
        "print(rec.path, recordkit.load(rec.path).params_hash, flush=True)\n"
        "rec.extend({'width': 64}); rec.commit()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    path, old_hash = done.stdout.split()
    with h5py.File(path, "r") as f:
        new_hash = f.attrs["params_hash"]
        new_text = f["params"][()]
    assert isinstance(new_hash, bytes) and len(new_hash) == 16  # fixed-length, in place
    assert new_hash.decode() != old_hash
    with h5py.File(path, "r+") as f:  # the new text, its hash not yet written
        f.attrs.modify("params_hash", np.bytes_(old_hash.encode()))
    r = recordkit.load(path)
    assert r.params == {"lr": 0.1, "width": 64}
    assert r.params_hash == new_hash.decode() == params_hash(r._params_text)
    old_text = new_text.replace(b', "width": 64', b"")
    assert params_hash(old_text.rstrip(b"\0").decode()) == old_hash
    with h5py.File(path, "r+") as f:  # the old text, the new hash written first
        f.attrs.modify("params_hash", new_hash)
        f["params"][()] = np.array(old_text, dtype=f["params"].dtype)
    r = recordkit.load(path)
    assert r.params == {"lr": 0.1} and r.params_hash == old_hash
    with h5py.File(path, "r+") as f:  # a hash the header never announced
        f.attrs.modify("params_hash", np.bytes_(params_hash('{"lr": 0.2}').encode()))
    with pytest.raises(RecordDamagedError, match="params_hash"):
        recordkit.load(path).params  # noqa: B018
