"""Resume trusts no stranger's file (issue 17, item 5): ``Recorder(root, resume=path)``
refuses every hostile file that load refuses, with load's error, before it reads or
writes anything of it: the file stays byte for byte (and mode for mode) as it was.

Each file is built with plain h5py, as tests/test_hostile.py builds those of load.
Budget: ~3 s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import recordkit
from recordkit.errors import UnsafeRecordError
from recordkit.format import layout
from tests.test_hostile import HOSTILE


def _record(root: Path) -> Path:
    with recordkit.Recorder(root, params={"lr": 0.1}, system=False) as rec:
        for epoch in range(3):
            rec.log({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
            rec.snapshot({"w": np.full((4, 4), epoch, np.float32)}, epoch=epoch)
            rec.commit()
    return rec.path


def params_external_link(f: h5py.File, tmp: Path) -> None:
    """/params an external link to another HDF5 file whose /params is valid JSON: the
    resume used to read it and store its content in the record."""
    other = tmp / "other.h5"
    with h5py.File(other, "w") as g:
        g["params"] = '{"stolen": "from another file"}'
    del f[layout.PARAMS]
    f[layout.PARAMS] = h5py.ExternalLink(str(other), "/params")


def params_soft_link(f: h5py.File, tmp: Path) -> None:
    f["decoy"] = '{"lr": 0.1}'
    del f[layout.PARAMS]
    f[layout.PARAMS] = h5py.SoftLink("/decoy")


def info_link_out_of_the_file(f: h5py.File, tmp: Path) -> None:
    del f[layout.INFO]
    f[layout.INFO] = h5py.ExternalLink("/etc/passwd", "/")


#: case: (how the file is made, words of the refusal): those of load's hostile files,
#: and links of the root objects a resume reads first.
CASES: dict[str, tuple[Callable[[h5py.File, Path], None], str]] = {
    "external link /params": (params_external_link, "external link"),
    "soft link /params": (params_soft_link, "soft link"),
    "external link /info out of the file": (info_link_out_of_the_file, "/etc/passwd"),
    **{case: (make, words) for case, (make, words, _) in HOSTILE.items()},
}


def _load_refusal(path: Path) -> UnsafeRecordError:
    """What load (or the first read of every part of what it loaded) refuses *path* with."""
    try:
        record = recordkit.load(path)
        record.params, record.system, record.info, record.history  # noqa: B018
        record.snapshot_epochs, record.tensor_names, record.extras  # noqa: B018
    except UnsafeRecordError as err:
        return err
    raise AssertionError(f"load did not refuse {path}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_refuses_what_load_refuses_and_leaves_the_file_unchanged(
        tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    path = _record(tmp_path / "records")
    path.chmod(0o644)
    with h5py.File(path, "r+") as f:
        make(f, tmp_path)
    path.chmod(0o444)  # as a closed run is left
    before, mode = path.read_bytes(), os.stat(path).st_mode
    refused = _load_refusal(path)
    with pytest.raises(UnsafeRecordError, match=words) as info:
        recordkit.Recorder(tmp_path / "records", resume=path)
    assert str(path) in str(info.value)
    assert str(info.value) == str(refused)
    assert path.read_bytes() == before
    assert os.stat(path).st_mode == mode
    # refused again (the lock was released), and nothing was stored in between
    with pytest.raises(UnsafeRecordError, match=words):
        recordkit.Recorder(tmp_path / "records", resume=path.stem)
    assert path.read_bytes() == before


def test_resume_of_a_sound_record_still_works(tmp_path: Path) -> None:
    path = _record(tmp_path)
    with recordkit.Recorder(tmp_path, resume=path, params={"lr": 0.2}) as rec:
        rec.log({"loss": 0.1}, epoch=3)
    again = recordkit.load(path)
    assert again.params == {"lr": 0.2}
    assert again.history["loss"].tolist() == [1.0, 0.5, 1.0 / 3, 0.1]
    assert again.restarts[0]["previous_status"] == "completed"
