"""System info: every key, guarded probes, git, no secrets."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
from importlib.metadata import version

import psutil
import pytest

from recordkit import system

OLD_RECORD_KEYS = ["python", "machine", "processor", "os", "os_name", "os_ver", "memory",
                   "storage", "user", "gpus"]


def test_keys_and_types(tmp_path: pathlib.Path) -> None:
    info = system.capture(tmp_path)
    for key in OLD_RECORD_KEYS:
        assert key in info
    assert info["python"] == platform.python_version()
    assert info["memory"] == psutil.virtual_memory().total
    assert isinstance(info["memory"], int)
    assert info["storage"]["path"] == str(tmp_path)
    assert 0 < info["storage"]["free"] <= info["storage"]["total"]
    assert info["cpu_count_logical"] == os.cpu_count()
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert info["cwd"] == os.getcwd()
    assert info["packages"]["numpy"] == version("numpy")
    assert info["packages"]["h5py"] == version("h5py")
    assert isinstance(info["gpus"], list)
    for gpu in info["gpus"]:
        assert {"name", "memory_total", "driver", "uuid", "source"} <= set(gpu)
    assert json.loads(json.dumps(info)) == info  # plain JSON


def test_storage_of_a_folder_not_created_yet(tmp_path: pathlib.Path) -> None:
    info = system.capture(tmp_path / "records" / "mnist")
    assert info["storage"]["path"] == str(tmp_path)


def test_user_without_login_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    info = system.capture()
    assert isinstance(info["user"], str) and info["user"]


def _git(cwd: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_commit_and_dirty_flag(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x")
    monkeypatch.chdir(tmp_path)
    info = system.capture()
    assert info["git"]["commit"] == _git(tmp_path, "rev-parse", "HEAD")
    assert info["git"]["dirty"] is False
    (tmp_path / "train.py").write_text("print(2)\n")
    assert system.capture()["git"]["dirty"] is True


def test_git_is_none_outside_a_work_tree(tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert system.capture()["git"] is None


def test_environment_is_never_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_TEST_TOKEN", "s3cr3t-env-value")
    assert "s3cr3t-env-value" not in json.dumps(system.capture())


@pytest.mark.parametrize(("argv", "expected"), [
    (["t.py", "--api-key=s3cr3t1", "--lr", "0.1"], ["t.py", "--api-key=***", "--lr", "0.1"]),
    (["t.py", "--password", "s3cr3t2", "--epochs", "3"],
     ["t.py", "--password", "***", "--epochs", "3"]),
    (["t.py", "--hf_token", "abc", "--db-password=x"],
     ["t.py", "--hf_token", "***", "--db-password=***"]),
    (["API_KEY=abc", "t.py", "--secret", "-5"], ["API_KEY=***", "t.py", "--secret", "***"]),
    (["t.py", "--token", "--lr", "0.1"], ["t.py", "--token", "--lr", "0.1"]),
])
def test_mask_secrets(argv: list[str], expected: list[str]) -> None:
    assert system.mask_secrets(argv) == expected


def test_command_line_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--api-key=s3cr3t1", "--password", "s3cr3t2"])
    info = system.capture()
    assert info["command"] == ["train.py", "--api-key=***", "--password", "***"]
    assert "s3cr3t" not in json.dumps(info)


def test_failing_probe_leaves_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("no machine today")

    monkeypatch.setattr(platform, "machine", broken)
    info = system.capture()
    assert info["machine"] is None
    assert any(n.startswith("machine: RuntimeError: no machine today") for n in info["notes"])
    assert info["memory"] > 0  # the other probes ran
