"""Hostile files: a record from a stranger never runs code, never reads outside itself and
never allocates what it merely claims. Each file is built with plain h5py.

Budget: ~3 s.
"""

from __future__ import annotations

import ast
import resource
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import RecordkitWarning, UnsafeRecordError
from recordkit.format import layout
from recordkit.format.safety import MAX_ATTR_BYTES, read_root_attrs
from recordkit.verify import verify

SRC = Path(recordkit.__file__).parent


@pytest.fixture
def record(tmp_path: Path) -> Path:
    with recordkit.Recorder(tmp_path, params={"lr": 0.1}, system=False) as rec:
        for epoch in range(3):
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot({"w": np.full((4, 4), epoch, np.float32)}, epoch=epoch)
            rec.commit()
    rec.path.chmod(0o644)
    return rec.path


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside.bin"
    path.write_bytes(np.arange(32, dtype="<f8").tobytes())
    return path


def external_link(f: h5py.File, tmp: Path) -> None:
    f["history"]["stolen"] = h5py.ExternalLink(str(secret_file(tmp)), "/")


def external_link_at_root(f: h5py.File, tmp: Path) -> None:
    f["extras"]["x"] = h5py.ExternalLink("/etc/passwd", "/x")


def soft_link(f: h5py.File, tmp: Path) -> None:
    f["extras"]["again"] = h5py.SoftLink("/history")


def external_storage(f: h5py.File, tmp: Path) -> None:
    outside = secret_file(tmp)
    ds = f["extras"].create_dataset("curve", shape=(32,), dtype="<f8",
                                    external=[(str(outside), 0, 256)])
    ds.attrs["kind"] = "array"


def external_storage_of_history(f: h5py.File, tmp: Path) -> None:
    del f[layout.HISTORY][layout.HISTORY_TABLE]
    f[layout.HISTORY].create_dataset(layout.HISTORY_TABLE, shape=(7,),
                                     dtype=layout.HISTORY_ROW_DTYPE,
                                     external=[(str(secret_file(tmp)), 0, 256)])


def virtual_dataset(f: h5py.File, tmp: Path) -> None:
    other = tmp / "other.h5"
    with h5py.File(other, "w") as g:
        g["data"] = np.arange(10.0)
    layout = h5py.VirtualLayout(shape=(10,), dtype="<f8")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(10,))
    f["extras"].create_virtual_dataset("virtual", layout)


def huge_history(f: h5py.File, tmp: Path) -> None:
    f[layout.HISTORY][layout.HISTORY_TABLE].resize((10**12,))  # 36 TB claimed, nothing stored


def huge_weight(f: h5py.File, tmp: Path) -> None:
    ds = f["weights"].create_dataset("huge", shape=(3, 10**6, 10**6), dtype="<f4",
                                     chunks=(1, 64, 64))
    ds.attrs["first_snapshot"] = 0
    ds.attrs["name"] = "huge"


def huge_extra(f: h5py.File, tmp: Path) -> None:
    ds = f["extras"].create_dataset("big", shape=(10**7, 10**5), dtype="<f8",
                                    chunks=(1, 1000))
    ds.attrs["kind"] = "array"


def huge_snapshot_table(f: h5py.File, tmp: Path) -> None:
    f[layout.SNAPSHOTS].resize((10**11,))


def long_attribute(f: h5py.File, tmp: Path) -> None:
    f.attrs["name"] = "x" * (MAX_ATTR_BYTES + 10)


def long_attribute_on_dataset(f: h5py.File, tmp: Path) -> None:
    # a fixed-size string in dense attribute storage (an object header of version 2)
    ds = f["extras"].create_dataset("big", data=np.zeros(3), track_order=True)
    ds.attrs["kind"] = np.frombuffer(b"y" * (3 * MAX_ATTR_BYTES), dtype=f"S{3 * MAX_ATTR_BYTES}")[0]


def _history(r: recordkit.Record) -> object:
    return r.history


def _extras(r: recordkit.Record) -> object:
    return r.extras


def _tensors(r: recordkit.Record) -> object:
    return r.tensor_names


def _snapshots(r: recordkit.Record) -> object:
    return r.snapshot_epochs


#: case: (how the file is made, words of the refusal, the first use that refuses it: None
#: for load itself). load() checks the root and the params; each other part is checked,
#: everything under it, when it is first read.
HOSTILE: dict[str, tuple[Callable[[h5py.File, Path], None], str,
                         Callable[[recordkit.Record], object] | None]] = {
    "external link": (external_link, "external link", _history),
    "external link to /etc/passwd": (external_link_at_root, "/etc/passwd", _extras),
    "soft link": (soft_link, "soft link", _extras),
    "external storage": (external_storage, "external storage", _extras),
    "external storage of a history table": (external_storage_of_history,
                                            "external storage", _history),
    "virtual dataset": (virtual_dataset, "virtual dataset", _extras),
    "huge history": (huge_history, "claims", _history),
    "huge weight": (huge_weight, "claims", _tensors),
    "huge extra": (huge_extra, "claims", _extras),
    "huge snapshot table": (huge_snapshot_table, "claims", _snapshots),
    "long attribute": (long_attribute, "attribute 'name'", None),
    "long attribute on a dataset": (long_attribute_on_dataset, "attribute 'kind'", _extras),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_record_is_refused_unread(record: Path, tmp_path: Path, case: str) -> None:
    make, words, use = HOSTILE[case]
    with h5py.File(record, "r+") as f:
        make(f, tmp_path)
    if use is None:
        with pytest.raises(UnsafeRecordError, match=words) as info:
            recordkit.load(record)
    else:
        loaded = recordkit.load(record)  # the root and the params only
        with pytest.raises(UnsafeRecordError, match=words) as info:
            use(loaded)
        with pytest.raises(UnsafeRecordError, match=words):
            use(loaded)  # refused again, not read on a second try
        with pytest.raises(UnsafeRecordError, match=words):
            _read_everything(recordkit.load(record))
    assert str(record) in str(info.value)
    report = verify(record, isolate=False)
    assert not report.ok and "unsafe" in report.problems[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordkitWarning)
        records = recordkit.load_all(record.parent.parent)
    if len(records):
        # Opened from its summary attribute (no link followed, no dataset read): the
        # rest of the file is refused when it is first needed.
        # (what load() refuses, the first read of anything the summary lacks refuses)
        assert all(path != record for path, _ in records.skipped)
        with pytest.raises(UnsafeRecordError, match=words):
            (use or _history)(records[0])
    else:
        assert "refused" in records.skipped[0][1]


def _read_everything(r: recordkit.Record) -> None:
    """Every part of a record, as a user reading it all would."""
    r.params, r.system, r.info, r.history, r.snapshot_epochs  # noqa: B018
    for name in r.tensor_names:
        r.weight(name)[:]
    for key in r.extras:
        r.extras[key]


def test_huge_claim_is_refused_without_allocating(record: Path, tmp_path: Path) -> None:
    """Under a 2 GiB address-space limit, reading the history of a file that claims 36 TB
    of it is refused with UnsafeRecordError (not a MemoryError, not an OOM kill)."""
    with h5py.File(record, "r+") as f:
        huge_history(f, tmp_path)
    code = (
        "import resource, recordkit\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({2 << 30}, {2 << 30}))\n"
        "try:\n"
        f"    recordkit.load({str(record)!r}).history\n"
        "except recordkit.errors.UnsafeRecordError as err:\n"
        "    print('refused', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused") and "claims" in done.stdout
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY  # parent untouched


def test_long_but_sane_attribute_is_read(record: Path) -> None:
    # an attribute recordkit does not write (the run fields carry a checksum now)
    with h5py.File(record, "r+") as f:
        f.attrs["notes"] = "e" * 100_000
    assert recordkit.load(record).run_id
    with h5py.File(record, "r") as f:
        assert read_root_attrs(f, record)["notes"] == "e" * 100_000


def test_killed_writers_unwritten_tensor_is_not_refused(record: Path) -> None:
    """A tensor whose first snapshot was being written at a SIGKILL (its dataset exists,
    the table row does not) is never read, so its size is no reason to refuse."""
    with h5py.File(record, "r+") as f:
        ds = f["weights"].create_dataset("late", shape=(1, 10**5, 10**5), dtype="<f4",
                                         chunks=(1, 256, 256))
        ds.attrs["first_snapshot"] = 3
        ds.attrs["name"] = "late"
    loaded = recordkit.load(record)
    assert loaded.tensor_names == ["w"]
    assert loaded.weight("w")[2].tolist() == np.full((4, 4), 2.0).tolist()


@pytest.mark.parametrize("link", ["external", "soft"])
def test_import_check_never_follows_a_link_out_of_info(record: Path, tmp_path: Path,
                                                       link: str) -> None:
    """The duplicate check of an import reads only ``/info`` of each record: a link there
    to another file (or object) is not followed, so its content counts for nothing."""
    from recordkit.importing import imported_keys as _imported_keys

    elsewhere = tmp_path / "elsewhere.h5"
    with h5py.File(elsewhere, "w") as g:
        g["info"] = '{"imported_from": {"key": "researcher:stolen:1"}}'
    with h5py.File(record, "r+") as f:
        f["decoy"] = '{"imported_from": {"key": "researcher:stolen:1"}}'
        del f[layout.INFO]
        f[layout.INFO] = (h5py.ExternalLink(str(elsewhere), "/info") if link == "external"
                       else h5py.SoftLink("/decoy"))
    assert _imported_keys(record.parent.parent) == set()


def _python_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    return files


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: p.name)
def test_source_never_imports_pickle_or_evaluates_code(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    banned_modules = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            names = set()
        assert not names & banned_modules, f"{path}:{node.lineno} imports {names}"
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            assert name not in {"eval", "exec", "__import__"}, f"{path}:{node.lineno} {name}"
            for kw in node.keywords:  # np.load(..., allow_pickle=True)
                assert not (kw.arg == "allow_pickle" and isinstance(kw.value, ast.Constant)
                            and kw.value.value), f"{path}:{node.lineno} allow_pickle"
