"""Compressed weights: built-in and hdf5plugin filters, and readers that open them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from recordkit import Recorder, load
from recordkit.format.filters import COMPRESSIONS, dataset_options

PLUGINS = [c for c in COMPRESSIONS if c not in (None, "gzip", "lzf")]


def _weights(epoch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(epoch)
    return {
        "w": rng.standard_normal((300, 40)).astype(np.float32),
        "zeros": np.zeros((1000,), dtype=np.float64),
        "ids": np.arange(500, dtype=np.int32),
    }


def _filter_ids(ds: h5py.Dataset) -> list[int]:
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip(tmp_path, compression):
    if compression in PLUGINS:
        pytest.importorskip("hdf5plugin")
    with Recorder(tmp_path, system=False, compression=compression) as rec:
        for epoch in range(2):
            rec.snapshot(_weights(epoch), epoch=epoch)
    r = load(rec.path)
    for epoch in range(2):
        for name, value in _weights(epoch).items():
            np.testing.assert_array_equal(r.weight(name).at(epoch), value)
    with h5py.File(rec.path, "r") as f:
        ids = _filter_ids(f["weights/zeros"])
        # Format v2: no fletcher32; every stored chunk (compressed or not) has its CRC32C.
        assert f["weights/zeros"].attrs["checksum"] == "crc32c"
        assert f["checksums/zeros"].shape[0] == 2
        if compression is None:
            assert ids == []  # written whole with H5Dwrite_chunk, no filter
        else:
            expected = dataset_options(compression)["compression"]
            code = {"gzip": 1, "lzf": 32000}.get(expected, expected)
            assert ids == [code]
            assert f["weights/zeros"].id.get_storage_size() < 1000 * 8 * 2 / 4


def test_gzip_level_and_plugin_options(tmp_path):
    pytest.importorskip("hdf5plugin")
    assert dataset_options("gzip", 9) == {"compression": "gzip", "compression_opts": 9}
    blosc = dataset_options("blosc", {"cname": "zstd", "clevel": 3})
    with Recorder(tmp_path, system=False, compression="blosc",
                  compression_opts={"cname": "zstd", "clevel": 3}) as rec:
        rec.snapshot(_weights(0), epoch=0)
    with h5py.File(rec.path, "r") as f:
        plist = f["weights/w"].id.get_create_plist()
        filters = {plist.get_filter(i)[0]: plist.get_filter(i)[2]
                   for i in range(plist.get_nfilters())}
    assert tuple(filters[blosc["compression"]][4:]) == tuple(blosc["compression_opts"][4:])


@pytest.mark.parametrize(("compression", "opts", "message"), [
    ("snappy", None, "must be one of"),
    pytest.param("zstd", "high", "pass a level", marks=pytest.mark.skipif(
        importlib.util.find_spec("hdf5plugin") is None,
        reason="hdf5plugin is not installed (the compression extra)")),
])
def test_bad_compression_arguments(tmp_path, compression, opts, message):
    with pytest.raises(ValueError, match=message):
        Recorder(tmp_path, system=False, compression=compression, compression_opts=opts)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_reader_imports_hdf5plugin_lazily(tmp_path):
    pytest.importorskip("hdf5plugin")
    with Recorder(tmp_path, system=False, compression="zstd") as rec:
        rec.snapshot(_weights(0), epoch=0)
        rec.log({"loss": 0.25}, epoch=0)
    run = _run(f"""
        import sys, numpy as np, recordkit
        r = recordkit.load({str(rec.path)!r})
        print("history", r.history["loss"].tolist(), "hdf5plugin" in sys.modules)
        w = r.weight("w")[0]
        print("weights", float(w.sum(dtype="f8")), "hdf5plugin" in sys.modules)
    """)
    assert run.returncode == 0, run.stderr
    expected = float(_weights(0)["w"].sum(dtype=np.float64))
    assert run.stdout.split("\n")[:2] == [
        "history [0.25] False",  # reading history never imports the plugin package
        f"weights {expected} True",
    ]


def test_reader_without_hdf5plugin_says_how_to_install(tmp_path):
    pytest.importorskip("hdf5plugin")
    with Recorder(tmp_path, system=False, compression="zstd") as rec:
        rec.snapshot(_weights(0), epoch=0)
    run = _run(f"""
        import sys
        sys.modules["hdf5plugin"] = None  # as if it were not installed
        import recordkit
        from recordkit.errors import FilterUnavailableError
        r = recordkit.load({str(rec.path)!r})
        print(r.snapshot_epochs)
        try:
            r.weight("w")[0]
        except FilterUnavailableError as err:
            print("ERROR", isinstance(err, ModuleNotFoundError), err)
    """)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "[0]"
    assert lines[1].startswith("ERROR True reading 'w' from")
    assert "pip install hdf5plugin" in lines[1]
