"""Damaged files: truncated and byte-flipped copies of a record.

Every variant is read fully (load, all history, every snapshot of every tensor, every
extra) in a child process, so a segfault or a hang of the HDF5 library is recorded as a
failure of that variant instead of taking pytest down. Outcomes allowed: the record reads
back with data equal to the original (damage that hit unused bytes or metadata that
fails safe), or a RecordkitError naming the file. Damage inside stored data must be
detected (fletcher32, and in format v2 a CRC32C per weight chunk and extra chunk), never
read back as different numbers, and `recordkit verify` must report it; so must a changed
byte in a name (metric, tensor, extra, run id, experiment, status: v2's identity CRCs).
Zeroed chunks, zeroed 4 KiB pages inside a chunk and zeroed checksums (what a crash or a
sparse-file hole leaves, and what fletcher32 alone accepts) must be detected in every kind
of dataset.

Budget: ~10 s (one child reads all 80 variants, restarted after a crash).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.record import Record

ROOT = Path(__file__).resolve().parents[1]
SEED = 7
TIMEOUT = 120


def make_record(root: Path) -> Path:
    rng = np.random.default_rng(0)
    with recordkit.Recorder(root, experiment="dmg", params={"lr": 0.01, "depth": 3},
                            system=False) as rec:
        for epoch in range(6):
            rec.log({"loss": 1.0 / (epoch + 1), "acc": epoch / 10}, epoch=epoch)
            rec.snapshot({"fc.weight": rng.standard_normal((64, 32)).astype(np.float32),
                          "fc.bias": rng.standard_normal(32)}, epoch=epoch)
            rec.commit()
        rec.add("curve", np.linspace(0, 1, 50))  # chunked, fletcher32
        rec.add("layers", {"a": np.arange(12.0).reshape(3, 4), "b": np.ones(5, np.int32)})
        rec.add("best", np.float64(0.8125))  # 0-d: a sha256 attribute
        rec.add("folds", {"acc": [0.25, 0.5], "who": "me"})  # JSON text: a sha256 attribute
    return rec.path


def read_all(path: str) -> dict[str, Any]:
    """Read everything a user can read; a digest of the data, or the error."""
    try:
        record = recordkit.load(path)
        digest = hashlib.sha256()
        for name in sorted(record.history):
            digest.update(record.history.rows(name).tobytes())
        for name in sorted(record.tensor_names):
            tensor = record.weight(name)
            for i in range(len(tensor)):
                digest.update(tensor[i].tobytes())
        for key in sorted(record.extras):
            value = record.extras[key]
            digest.update(value.tobytes() if isinstance(value, np.ndarray) else
                          repr(value).encode())
        digest.update(repr(record.params).encode())
        record.system, record.status  # noqa: B018
        # What a table of many runs shows: the run opened from its summary, when usable.
        lazy = Record(path, lazy=True)
        digest.update(repr(sorted(lazy.metric_summaries().items())).encode())
        digest.update(repr((lazy.params, lazy.status, lazy.run_id, lazy.created,
                            lazy.epoch_count)).encode())
        return {"kind": "ok", "digest": digest.hexdigest()}
    except recordkit.RecordkitError as err:
        return {"kind": "error", "cls": type(err).__name__, "msg": str(err)}
    except BaseException as err:  # what must never happen: a raw exception
        return {"kind": "raw", "cls": type(err).__name__, "msg": str(err)[:500]}


def _child() -> None:
    """Read each path given on stdin's JSON list; one result line per path."""
    from recordkit.verify import verify

    for path in json.loads(sys.stdin.read()):
        print("START", flush=True)
        result = read_all(path)
        result["verify_ok"] = verify(path, isolate=False).ok
        print("RESULT " + json.dumps(result), flush=True)


def read_in_children(paths: list[str]) -> list[dict[str, Any]]:
    """Results in order; a child that dies is restarted after the variant that killed it."""
    results: list[dict[str, Any]] = []
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from tests.test_damaged import _child; _child()")
    while len(results) < len(paths):
        rest = paths[len(results):]
        try:
            done = subprocess.run([sys.executable, "-c", code], input=json.dumps(rest),
                                  capture_output=True, text=True, timeout=TIMEOUT, check=False)
            out, died = done.stdout, done.returncode
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            died = "timeout"
        lines = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
        results += lines
        if len(results) < len(paths):
            results.append({"kind": "crash", "cls": str(died), "msg": out[-300:]})
    return results


def chunk_offsets(path: Path) -> list[tuple[str, int, int]]:
    """(dataset, byte offset, size) of every stored chunk of a chunked dataset."""
    found: list[tuple[str, int, int]] = []
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    found.append((name, info.byte_offset, info.size))
        f.visititems(visit)
    return found


def variants(original: Path, out: Path) -> list[tuple[str, str, Path]]:
    """(kind, description, file) for every damaged copy."""
    data = original.read_bytes()
    size = len(data)
    rng = random.Random(SEED)
    made: list[tuple[str, str, Path]] = []

    def write(kind: str, what: str, content: bytes) -> None:
        path = out / f"v{len(made):03d}.h5"
        path.write_bytes(content)
        made.append((kind, what, path))

    for cut in sorted({0, 8, 96, 512, 1024, 2048, 4096, size // 8, size // 4, size // 2,
                       3 * size // 4, size - 4096, size - 1024, size - 100, size - 1}):
        write("truncated", f"truncated to {cut} of {size} bytes", data[:cut])
    chunks = chunk_offsets(original)
    assert {name.split("/")[0] for name, _, _ in chunks} == {
        "weights", "checksums", "history", "snapshots", "extras"}
    for name, offset, length in chunks:
        # Not the names' heap references: a flip in an unused slot changes nothing read.
        if name.startswith(("weights", "history", "extras")) and name != "history/metrics":
            # the names' CRCs: within those of the record's two names (the rest unused)
            at = offset + rng.randrange(8 if name == "history/metrics_crc32c" else length)
            flipped = bytearray(data)
            flipped[at] ^= 0xFF
            write("data", f"byte {at} flipped inside a chunk of /{name}", bytes(flipped))
    for name, offset, length in chunks:  # zeroed checksums: the chunks of /checksums
        zeroed = bytearray(data)
        zeroed[offset:offset + length] = bytes(length)
        write("zeroed", f"the whole chunk of /{name} at {offset} zeroed ({length} bytes)",
              bytes(zeroed))
        if length > 4096:
            page = offset + 4096 - offset % 4096  # the first whole page inside the chunk
            zeroed = bytearray(data)
            zeroed[page:min(page + 4096, offset + length)] = bytes(min(4096, offset + length
                                                                       - page))
            write("zeroed", f"a 4 KiB page at {page} zeroed inside the chunk of /{name}",
                  bytes(zeroed))
    # Stored without an HDF5 checksum: the params text (its hash is in params_hash), a
    # JSON extra and a 0-d extra (a sha256 attribute each), the summary (its own sha256).
    # A digit changed keeps them well-formed, so only the checksum can tell.
    texts = {"params": b'{"lr": 0.01', "extra": b'"acc": [0.25, 0.5]',
             "summary": b'"final": 0.1666'}
    with h5py.File(original, "r") as f:
        best = f["extras/best"]
        texts["extra "] = data[best.id.get_offset():best.id.get_offset() + 8]
    for kind, text in texts.items():
        assert data.count(text) == 1, (kind, text)
        at = data.index(text) + len(text) - 1
        flipped = bytearray(data)
        flipped[at] = ord("7") if kind != "extra " else flipped[at] ^ 0x01
        write(kind.strip(), f"byte {at} changed in the {kind.strip()} ({text!r})",
              bytes(flipped))
    # Names, in HDF5's global heap (no HDF5 checksum; each object follows its 8-byte
    # length): its last byte changed, in every copy (the run's name is its run id).
    for text in ("loss", "fc.weight", "curve", "dmg", "completed", original.stem):
        raw = text.encode()
        found = [m.start() for m in re.finditer(re.escape(raw), data)
                 if data[m.start() - 8:m.start()] == len(raw).to_bytes(8, "little")]
        assert found, text
        flipped = bytearray(data)
        for at in found:
            flipped[at + len(raw) - 1] ^= 0x01
        write("name", f"last byte of the name {text!r} changed", bytes(flipped))
    for at in [*range(0, 96, 8), *(rng.randrange(size) for _ in range(30))]:
        flipped = bytearray(data)
        flipped[at] ^= 1 << rng.randrange(8)
        write("any", f"bit flipped at byte {at}", bytes(flipped))
    return made


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, Path, dict]]:
    base = tmp_path_factory.mktemp("damaged")
    original = make_record(base / "records")
    made = variants(original, base)
    results = read_in_children([str(original)] + [str(p) for _, _, p in made])
    reference = results[0]
    assert reference["kind"] == "ok" and reference["verify_ok"], reference
    for result in results[1:]:
        result["same_data"] = result.get("digest") == reference["digest"]
    return [(k, w, p, r) for (k, w, p), r in zip(made, results[1:])]


def test_at_least_40_variants(outcomes: list) -> None:
    assert len(outcomes) >= 40
    assert sum(k == "data" for k, *_ in outcomes) >= 10
    assert sum(k == "zeroed" and "page" in w for k, w, *_ in outcomes) >= 2
    assert sum(k == "name" for k, *_ in outcomes) == 6


def test_zeroed_chunks_pages_and_checksums_are_detected(outcomes: list) -> None:
    """fletcher32 passes a chunk whose data and checksum are all zeros; format v2 must
    not: every zeroed chunk (weights, their checksums, history rows and names, the
    snapshot table, extras) and zeroed page is a RecordDamagedError and fails verify."""
    zeroed = [(w, r) for k, w, _, r in outcomes if k == "zeroed"]
    kinds = {w.split("/")[1].split(" ")[0] for w, _ in zeroed}
    assert {"weights", "checksums", "history", "snapshots", "extras"} <= kinds, kinds
    for what, result in zeroed:
        assert result["kind"] == "error" and result["cls"] == "RecordDamagedError", (
            what, result)
        assert not result["verify_ok"], what


def test_never_a_crash_hang_or_raw_traceback(outcomes: list) -> None:
    bad = [(w, r) for _, w, _, r in outcomes if r["kind"] not in ("ok", "error")]
    assert not bad, bad


def test_errors_name_the_file(outcomes: list) -> None:
    for _, what, path, result in outcomes:
        if result["kind"] == "error":
            assert str(path) in result["msg"], (what, result)


def test_damage_in_stored_data_is_detected_not_read_as_wrong_numbers(outcomes: list) -> None:
    for kind, what, _, result in outcomes:
        if kind in ("data", "params", "extra", "zeroed", "name"):
            assert result["kind"] == "error", (what, result)
            assert result["cls"] == "RecordDamagedError", (what, result)
            assert not result["verify_ok"], what
        if result["kind"] == "ok":  # damage in bytes nothing reads, or caught metadata
            assert result["same_data"], (what, "read back different numbers")


def test_damaged_params_and_unchunked_extras_are_detected(outcomes: list) -> None:
    """The params text and extras HDF5 cannot checksum (JSON, 0-d) were once read back
    with other values, and verify said OK."""
    found = {kind: result for kind, _, _, result in outcomes if kind in ("params", "extra")}
    assert found["params"]["cls"] == "RecordDamagedError", found
    assert "params" in found["params"]["msg"], found
    assert sum(kind == "extra" for kind, *_ in outcomes) == 2
    assert sum(kind == "data" and "/extras" in what for kind, what, *_ in outcomes) >= 3
    for kind, what, _, result in outcomes:
        if kind == "extra" or (kind == "data" and "/extras" in what):
            assert result["cls"] == "RecordDamagedError", (what, result)
            assert not result["verify_ok"], what
        if kind == "extra":
            assert "checksum" in result["msg"], (what, result)


def test_damaged_summary_is_not_shown_and_verify_reports_it(outcomes: list) -> None:
    """A digit changed in the summary (what load_all and `recordkit ls` show) once showed
    another number in every table, and verify said OK."""
    [(what, result)] = [(w, r) for kind, w, _, r in outcomes if kind == "summary"]
    assert result["kind"] == "ok" and result["same_data"], (what, result)
    assert not result["verify_ok"], what


def test_truncation_is_an_error_and_verify_reports_it(outcomes: list) -> None:
    for kind, what, _, result in outcomes:
        if kind == "truncated":
            assert result["kind"] == "error", (what, result)
            assert not result["verify_ok"], what


def test_summary(outcomes: list, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the figures for docs/RELIABILITY.md (pytest -s)."""
    table: dict[tuple[str, str], int] = {}
    for kind, _, _, result in outcomes:
        label = result.get("cls", "read fine, same data") if result["kind"] != "ok" else (
            "read fine, same data" if result["same_data"] else "read fine, DIFFERENT data")
        table[(kind, label)] = table.get((kind, label), 0) + 1
    with capsys.disabled():
        for (kind, label), n in sorted(table.items()):
            print(f"damaged {kind:9s} {label:28s} {n}")
    assert sum(table.values()) == len(outcomes)


def test_recordkit_verify_command_reports_damage(outcomes: list, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    from recordkit.cli import main

    damaged = next(p for kind, _, p, _ in outcomes if kind == "data")
    assert main(["verify", str(damaged)]) == 1  # read in a child process
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "in a subprocess" in out
    assert "fletcher32" in out or "CRC32C" in out


@pytest.mark.parametrize(("script", "words"), [
    ("kill -SEGV $$", "crashed the HDF5 library (SIGSEGV) in a subprocess"),
    ("sleep 30", "did not finish within 1 s in a subprocess"),
])
def test_verify_reports_a_reader_that_crashes_or_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, words: str) -> None:
    """What verify says when the reading child dies or hangs, as HDF5 does on some damaged
    files: a stand-in interpreter that crashes (SIGSEGV) or hangs."""
    import recordkit.verify as verify_module

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(verify_module.sys, "executable", str(fake))
    report = verify_module.verify(tmp_path / "any.h5", timeout=1)
    assert not report.ok and report.isolated
    assert words in report.problems[0]
