"""System info: every key with its type, guarded probes, git, no secrets."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version

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
    "gpus": list, "scheduler": (dict, type(None)), "notes": list, "captured": str,
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
    for name in system._PACKAGES:  # read from the Version header: what metadata says
        try:
            expected = version(name)
        except PackageNotFoundError:
            assert name not in packages or name == "recordkit"
            continue
        assert packages[name] == expected, name


ODD = "whatever importlib.metadata makes of it"


@pytest.mark.parametrize(("metadata", "expected"), [
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nVersion: 1.2.3rc1+local.7\n\n"
     "Version: 9.9 in the long description\n", "1.2.3rc1+local.7"),
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nversion: \t 0.4.post2\n", "0.4.post2"),
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nVersion: 0.5  \n", "0.5  "),  # kept so
    ("Metadata-Version: 2.1\r\nName: rk-probe-dist\r\nVersion: 3.1\r\n\r\nbody\r\n", "3.1"),
    # not a plain version: importlib.metadata decides, however odd its answer
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nVersion: 1.0 (beta)\n", "1.0 (beta)"),
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nSummary: no version here\n\n"
     "Version: 2.0\n", None),
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nnot a header\nVersion: 2.0\n", None),
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nVersion: 2.0\n  continued\n", ODD),
    ("Metadata-Version: 2.1\nSummary: one\n  two\nName: rk-probe-dist\nVersion: 7\n", "7"),
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nVersion: 8", "8"),  # no newline at the end
    ("Metadata-Version: 2.1\nName: rk-probe-dist\nVersion: 1 (odd)\nVersion: 2\n", ODD),
])
def test_package_version_is_what_importlib_metadata_says(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, metadata: str,
        expected: str | None) -> None:
    info = tmp_path / "rk_probe_dist-1.dist-info"
    info.mkdir()
    (info / "METADATA").write_bytes(metadata.encode())
    monkeypatch.syspath_prepend(str(tmp_path))
    if expected is not ODD:
        assert version("rk-probe-dist") == expected
    assert system._version("rk-probe-dist") == version("rk-probe-dist")


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


@pytest.fixture
def git_calls(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A ``git`` first on PATH that logs each call to a file and runs the real git; with
    RK_OLD_GIT set it refuses porcelain v2 as git older than 2.17 does (usage, exit 129)."""
    real = shutil.which("git")
    assert real is not None
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "git-calls.txt"
    wrapper = folder / "git"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {shlex.quote(str(log))}
        if [ -n "$RK_OLD_GIT" ]; then
            case "$*" in *porcelain=v2*) echo "error: unknown option" >&2; exit 129;; esac
        fi
        exec {shlex.quote(real)} "$@"
        """))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    log.write_text("")
    return log


def _calls(log: pathlib.Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line]


@needs_git
@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for git")
@pytest.mark.parametrize("old_git", [False, True])
def test_git_state_in_one_call_and_with_an_older_git(
        repo: pathlib.Path, git_calls: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        old_git: bool) -> None:
    """One ``git status`` answers commit, branch and dirty; a git that refuses porcelain
    v2 gets the four calls of before, with the same answers."""
    if old_git:
        monkeypatch.setenv("RK_OLD_GIT", "1")
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", ["-c"])
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text("print(2)\n")
    (repo / "untracked.py").write_text("print(3)\n")  # untracked files are not dirt
    git_calls.write_text("")
    assert system.capture()["git"] == {"commit": head, "dirty": True, "branch": "main"}
    assert len(_calls(git_calls)) == (5 if old_git else 1), _calls(git_calls)
    _git(repo, "checkout", "-q", "train.py")
    _git(repo, "checkout", "-q", "--detach")
    assert system.capture()["git"] == {"commit": head, "dirty": False, "branch": None}
    _git(repo, "checkout", "-q", "-b", "(detached)")  # a branch may bear that name
    assert system.capture()["git"] == {"commit": head, "dirty": False,
                                       "branch": "(detached)"}


@needs_git
def test_git_branch_is_named_when_a_tag_has_its_name(repo: pathlib.Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _git(repo, "tag", "main")
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert system.capture()["git"]["branch"] == "main"  # not git's short "heads/main"


@needs_git
@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for git")
@pytest.mark.parametrize("old_git", [False, True])
def test_git_before_the_first_commit(tmp_path: pathlib.Path, git_calls: pathlib.Path,
                                     monkeypatch: pytest.MonkeyPatch, old_git: bool) -> None:
    if old_git:
        monkeypatch.setenv("RK_OLD_GIT", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _git(fresh, "init", "-q", "-b", "trunk")
    monkeypatch.chdir(fresh)
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert system.capture()["git"] == {"commit": None, "dirty": False, "branch": "trunk"}
    (fresh / "a.py").write_text("1\n")
    _git(fresh, "add", "a.py")
    assert system.capture()["git"]["dirty"] is True


@needs_git
@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for git")
def test_outside_a_work_tree_git_runs_once_per_folder(
        tmp_path: pathlib.Path, git_calls: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("LANG", "de_DE.UTF-8")  # git's messages are read in its C locale
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert system.capture()["git"] is None
    assert len(_calls(git_calls)) == 1, _calls(git_calls)


def test_without_git_no_call_is_made(monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git on PATH
    info = system.capture()
    assert info["git"] is None
    assert not any(note.startswith("git:") for note in info["notes"])


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
