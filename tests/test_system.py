"""System info: every key with its type, guarded probes, git, no secrets."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
from importlib.metadata import version

import psutil
import pytest

from recordkit import system

OLD_RECORD_KEYS = ["python", "machine", "processor", "os", "os_name", "os_ver", "memory",
                   "storage", "user", "gpus"]
KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "python": str, "python_implementation": str, "machine": str, "processor": str,
    "cpu_model": str, "os": str, "os_name": str, "os_ver": str, "platform": str,
    "memory": int, "storage": dict, "cpu_count_logical": int,
    "cpu_count_physical": (int, type(None)), "hostname": str, "user": str, "command": list,
    "executable": str, "cwd": str, "git": (dict, type(None)), "packages": dict,
    "gpus": list, "notes": list, "captured": str,
}
GPU_KEYS = {"name", "memory_total", "driver", "uuid", "source"}
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(cwd: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL).stdout.strip()


@pytest.fixture
def repo(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A git work tree with one commit, and git kept from finding any repository above."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print(1)\n")
    _git(path, "add", "train.py")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x")
    return path


def test_keys_and_types(tmp_path: pathlib.Path) -> None:
    info = system.capture(tmp_path)
    assert set(info) == set(KEY_TYPES)
    assert set(OLD_RECORD_KEYS) <= set(info)
    for key, kind in KEY_TYPES.items():
        assert isinstance(info[key], kind), (key, info[key])
    assert info["python"] == platform.python_version()
    assert info["python_implementation"] == platform.python_implementation()
    assert info["machine"] == platform.machine()
    assert info["os"] == platform.system()
    assert info["os_ver"] == platform.release()
    assert info["cpu_model"]
    assert info["cpu_count_logical"] == os.cpu_count()
    assert info["cwd"] == os.getcwd()
    assert info["executable"] == sys.executable
    assert info["captured"].endswith("+00:00")


def test_memory_is_total_bytes() -> None:
    memory = system.capture()["memory"]
    assert type(memory) is int
    assert memory == psutil.virtual_memory().total


def test_storage_of_the_record_folder(tmp_path: pathlib.Path) -> None:
    storage = system.capture(tmp_path)["storage"]
    usage = shutil.disk_usage(tmp_path)
    assert storage["path"] == str(tmp_path)
    assert storage["total"] == usage.total
    assert 0 < storage["free"] <= storage["total"]


def test_storage_of_a_folder_not_created_yet(tmp_path: pathlib.Path) -> None:
    storage = system.capture(tmp_path / "records" / "mnist")["storage"]
    assert storage["path"] == str(tmp_path)
    assert not (tmp_path / "records").exists()  # capturing creates nothing


def test_storage_defaults_to_cwd(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
                                 ) -> None:
    monkeypatch.chdir(tmp_path)
    assert system.capture()["storage"]["path"] == str(tmp_path)


def test_json_round_trip(tmp_path: pathlib.Path) -> None:
    info = system.capture(tmp_path)
    assert json.loads(json.dumps(info, allow_nan=False)) == info


def test_user_without_login_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    info = system.capture()
    assert isinstance(info["user"], str) and info["user"]
    assert not any(note.startswith("user:") for note in info["notes"])


def test_packages_versions_come_from_metadata() -> None:
    packages = system.capture()["packages"]
    for name in ("numpy", "h5py", "psutil"):
        assert packages[name] == version(name)
    assert isinstance(packages["recordkit"], str) and packages["recordkit"]


def test_frameworks_are_not_imported_to_find_versions() -> None:
    code = ("import sys, recordkit.system as s; s.capture(); "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'lightning', "
            "'pytorch_lightning', 'jax', 'GPUtil') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_gpus_entries_have_the_documented_keys() -> None:
    gpus = system.capture()["gpus"]
    assert isinstance(gpus, list)  # [] on a machine without an NVIDIA driver
    for gpu in gpus:
        assert set(gpu) >= GPU_KEYS
        assert isinstance(gpu["name"], str)
        assert gpu["memory_total"] is None or type(gpu["memory_total"]) is int


@needs_git
def test_git_commit_and_dirty_flag(repo: pathlib.Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    monkeypatch.chdir(repo)
    git = system.capture()["git"]
    assert git == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False,
                   "branch": "main"}
    (repo / "train.py").write_text("print(2)\n")
    assert system.capture()["git"]["dirty"] is True


@needs_git
def test_git_of_the_script_folder(repo: pathlib.Path, tmp_path: pathlib.Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py"), "--lr", "0.1"])
    git = system.capture()["git"]
    assert git is not None
    assert git["commit"] == _git(repo, "rev-parse", "HEAD")


@needs_git
def test_git_is_none_outside_a_work_tree(tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "train.py").write_text("print(1)\n")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "train.py")])
    assert system.capture()["git"] is None


def test_environment_is_never_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_TEST_TOKEN", "s3cr3t-xyz")
    text = json.dumps(system.capture())
    assert "s3cr3t-xyz" not in text
    assert "RECORDKIT_TEST_TOKEN" not in text


@pytest.mark.parametrize(("argv", "expected"), [
    (["t.py", "--api-key=s3cr3t1", "--lr", "0.1"], ["t.py", "--api-key=***", "--lr", "0.1"]),
    (["t.py", "--password", "s3cr3t2", "--epochs", "3"],
     ["t.py", "--password", "***", "--epochs", "3"]),
    (["t.py", "--api_key", "abc", "--hf-token=x", "--db-password", "y"],
     ["t.py", "--api_key", "***", "--hf-token=***", "--db-password", "***"]),
    (["API_KEY=abc", "t.py", "db.password=x", "lr=0.1"],
     ["API_KEY=***", "t.py", "db.password=***", "lr=0.1"]),
    (["t.py", "--token", "--lr", "0.1"], ["t.py", "--token", "--lr", "0.1"]),
    (["t.py", "--secret", "-5", "--passwd", "-Xy7"],
     ["t.py", "--secret", "***", "--passwd", "***"]),
    (["t.py", "--apiKey", "a", "--authtoken", "b", "--auth", "c", "--credentials=d"],
     ["t.py", "--apiKey", "***", "--authtoken", "***", "--auth", "***", "--credentials=***"]),
    (["t.py", "--key-dim", "64", "--max-tokens", "512", "--tokenizer", "gpt2", "-p", "4"],
     ["t.py", "--key-dim", "64", "--max-tokens", "512", "--tokenizer", "gpt2", "-p", "4"]),
    (["t.py", "--db=postgres://me:p@ss@db/x", "https://u:ab/cd@h"],
     ["t.py", "--db=postgres://me:***@db/x", "https://u:***@h"]),
    (["t.py", "--password"], ["t.py", "--password"]),
])
def test_mask_secrets(argv: list[str], expected: list[str]) -> None:
    assert system.mask_secrets(argv) == expected


def test_command_line_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["train.py", "--api-key=s3cr3t1", "--password", "s3cr3t2", "--token", "s3cr3t3",
            "API_KEY=s3cr3t4", "--lr", "0.1"]
    monkeypatch.setattr(sys, "argv", argv)
    info = system.capture()
    assert info["command"] == ["train.py", "--api-key=***", "--password", "***", "--token",
                               "***", "API_KEY=***", "--lr", "0.1"]
    assert "s3cr3t" not in json.dumps(info)
    assert sys.argv == argv  # masked in a copy


def test_failing_probe_leaves_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("no machine today")

    monkeypatch.setattr(platform, "machine", broken)
    info = system.capture()
    assert info["machine"] is None
    assert "machine: RuntimeError: no machine today" in info["notes"]
    assert info["memory"] == psutil.virtual_memory().total  # the other probes ran
    json.dumps(info)


def test_failing_gpu_probe_leaves_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(notes: list[str]) -> list[dict[str, object]]:
        raise OSError("driver gone")

    monkeypatch.setattr(system, "_driver_gpus", broken)
    info = system.capture()
    assert info["gpus"] == []
    assert "gpus: OSError: driver gone" in info["notes"]
