"""The run lock where flock is not available (issue 18 item 5): the exclusive-create lock
file, its stale rules (same host: pid and start time; other host: heartbeat), and an end
to end run under an LD_PRELOAD shim (tests/flock_unavailable_shim.c, built with ``cc``)
that makes every flock() fail as on an NFS mount without locks.

Budget: ~6 s (a shim build, five short child processes).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recordkit import locking
from recordkit.errors import RecordLockedError
from recordkit.locking import RunLock, is_locked, lock_owner, lock_path

ROOT = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).with_name("flock_unavailable_shim.c")
UNAVAILABLE = {"ENOLCK": errno.ENOLCK, "ENOTSUP": errno.ENOTSUP,
               "EOPNOTSUPP": errno.EOPNOTSUPP, "ENOTSUPP(524)": 524}


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> int:
    """Every fcntl.flock in this process fails with the errno of the test's parameter."""
    code = UNAVAILABLE[getattr(request, "param", "ENOLCK")]

    def flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    return code


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "run.h5"


def _write_owner(record: Path, **fields: object) -> Path:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": None,
             "token": "feedfacefeedface", "mode": "exclusive", "since": "then", **fields}
    path = lock_path(record)
    path.write_text(json.dumps(owner) + "\n")
    return path


def _lost(lock: RunLock) -> bool:
    try:
        lock.check()
    except RecordLockedError:
        return True
    return False


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("no_flock", sorted(UNAVAILABLE), indirect=True)
def test_no_flock_is_not_another_live_process(no_flock: int, record: Path) -> None:
    lock = RunLock.acquire(record)  # every flock fails: before the fix, RecordLockedError
    try:
        assert lock.mode == "exclusive"
        owner = lock_owner(record)
        assert owner is not None
        assert (owner.host, owner.pid, owner.mode) == (socket.gethostname(), os.getpid(),
                                                       "exclusive")
        assert owner.started == pytest.approx(
            __import__("psutil").Process().create_time(), abs=0.01)
        assert is_locked(record)
        with pytest.raises(RecordLockedError) as caught:
            RunLock.acquire(record)
        message = str(caught.value)
        assert f"process {os.getpid()} on host {socket.gethostname()!r}" in message
        assert str(lock_path(record)) in message and "RECORDKIT_LOCK_STALE_AFTER" in message
    finally:
        lock.release()
    assert not lock_path(record).exists()
    assert not is_locked(record)
    RunLock.acquire(record).release()  # free again


def test_a_run_without_a_lock_file_reads_unlocked_without_flock(no_flock: int,
                                                                record: Path) -> None:
    _write_owner(record, pid=_dead_pid())
    assert not is_locked(record)  # before the fix: every run read as live
    lock_path(record).unlink()
    assert not is_locked(record)


@pytest.mark.parametrize("case", ["dead pid", "pid reused by another process"])
def test_stale_lock_on_this_host_is_taken_over(no_flock: int, record: Path,
                                               case: str) -> None:
    if case == "dead pid":
        path = _write_owner(record, pid=_dead_pid())
    else:  # this process's pid, another start time: the writer was a different process
        path = _write_owner(record, started=time.time() - 86400)
    assert not is_locked(record)
    lock = RunLock.acquire(record)
    try:
        owner = lock_owner(record)
        assert owner is not None and owner.token != "feedfacefeedface"
        assert owner.pid == os.getpid()
        assert is_locked(record)
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".takeover")]
    finally:
        lock.release()


def test_live_lock_on_this_host_is_respected(no_flock: int, record: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        started = psutil.Process(holder.pid).create_time()
        _write_owner(record, pid=holder.pid, started=started)
        assert is_locked(record)
        with pytest.raises(RecordLockedError, match=f"process {holder.pid} on host"):
            RunLock.acquire(record)
        assert json.loads(lock_path(record).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(record)


def test_other_host_lock_is_live_while_its_heartbeat_is_fresh(no_flock: int,
                                                             record: Path) -> None:
    path = _write_owner(record, host="gpu-node-017", pid=4242, started=1.0)
    assert is_locked(record)
    with pytest.raises(RecordLockedError, match="process 4242 on host 'gpu-node-017'"):
        RunLock.acquire(record)
    old = time.time() - locking.stale_after_seconds() - 60
    os.utime(path, (old, old))
    assert not is_locked(record)
    lock = RunLock.acquire(record)
    try:
        owner = lock_owner(record)
        assert owner is not None and owner.host == socket.gethostname()
    finally:
        lock.release()


def test_stale_after_is_configurable(no_flock: int, record: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_owner(record, host="gpu-node-017", pid=4242)
    old = time.time() - 120
    os.utime(path, (old, old))
    assert is_locked(record)  # 600 s by default
    assert locking.heartbeat_seconds() == 30.0
    monkeypatch.setenv("RECORDKIT_LOCK_STALE_AFTER", "60")
    assert not is_locked(record)
    assert locking.heartbeat_seconds() == 6.0


def test_heartbeat_refreshes_the_lock_and_notices_a_take_over(
        no_flock: int, record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDKIT_LOCK_STALE_AFTER", "1")  # a beat every 0.1 s
    lock = RunLock.acquire(record)
    try:
        path = lock_path(record)
        old = time.time() - 3600
        os.utime(path, (old, old))
        deadline = time.monotonic() + 30
        while path.stat().st_mtime < old + 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > old + 60  # touched again by the heartbeat
        lock.check()  # still ours
        _write_owner(record, host="gpu-node-017", pid=4242)  # another writer took it over
        while not _lost(lock) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(RecordLockedError, match="process 4242 on host 'gpu-node-017'"):
            lock.check()
    finally:
        lock.release()
    # the other writer's lock file is left as it is
    assert json.loads(lock_path(record).read_text())["host"] == "gpu-node-017"


def test_flock_holder_still_respects_a_live_exclusive_lock(record: Path) -> None:
    # flock works in this process; the file says a host without flock holds the run
    _write_owner(record, host="login-without-flock", pid=4242)
    assert is_locked(record)
    with pytest.raises(RecordLockedError, match="login-without-flock"):
        RunLock.acquire(record)
    _write_owner(record, pid=_dead_pid())  # that holder is dead: taken over by flock
    lock = RunLock.acquire(record)
    try:
        assert lock.mode == "flock"
        assert is_locked(record)
    finally:
        lock.release()


def test_flock_lock_left_by_a_killed_writer_is_taken_over(record: Path) -> None:
    _write_owner(record, mode="flock", pid=_dead_pid())
    assert not is_locked(record)
    lock = RunLock.acquire(record)
    try:
        assert lock.mode == "flock" and is_locked(record)
    finally:
        lock.release()


# --- end to end, every flock() failing through the LD_PRELOAD shim ---------------------------

WRITER = """
import sys, recordkit
rec = recordkit.Recorder(sys.argv[1], experiment="e", params={"lr": 0.1}, system=False)
rec.log({"loss": 1.5}, epoch=0)
rec.commit()
print(rec.path, flush=True)
sys.stdin.read()  # until killed
"""

SECOND = """
import fcntl, json, os, sys, recordkit
from recordkit.errors import RecordLockedError
from recordkit.locking import is_locked
from pathlib import Path
path = Path(sys.argv[1])
fd = os.open(str(path) + ".lock", os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_SH)
    flock = "works"
except OSError as err:
    flock = err.errno
os.close(fd)
try:
    recordkit.Recorder(resume=path, system=False).close()
    refused = None
except RecordLockedError as err:
    refused = str(err)
print(json.dumps({"flock": flock, "refused": refused, "locked": is_locked(path),
                  "status": recordkit.load(path).status}))
"""

TAKE_OVER = """
import json, sys, recordkit
from pathlib import Path
from recordkit.locking import is_locked
path = Path(sys.argv[1])
before = {"locked": is_locked(path), "status": recordkit.load(path).status}
rec = recordkit.Recorder(resume=path, system=False)
during = {"locked": is_locked(path), "status": recordkit.load(path).status}
rec.log({"loss": 0.5}, epoch=1)
rec.save()
print(json.dumps({"before": before, "during": during, "locked": is_locked(path),
                  "history": recordkit.load(path).history["loss"].tolist()}))
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build tests/flock_unavailable_shim.c")
    built = tmp_path_factory.mktemp("shim") / "flock_unavailable_shim.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(SHIM)],
                   check=True, capture_output=True, timeout=120)
    return built


def _env(shim: Path) -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": str(shim), "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"),
                                                      os.environ.get("PYTHONPATH")) if p)}


def _run(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _ls(root: Path, env: dict[str, str]) -> str:
    return _run("import sys; from recordkit.cli import main; sys.exit(main(sys.argv[1:]))",
                "ls", str(root), env=env).stdout


def test_a_run_on_a_filesystem_without_flock_end_to_end(shim: Path, tmp_path: Path) -> None:
    env = _env(shim)
    root = tmp_path / "records"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline().strip()
        assert line, writer.stderr.read() if writer.stderr else ""  # before: RecordLockedError
        path = Path(line)
        owner = lock_owner(path)
        assert owner is not None and (owner.pid, owner.mode) == (writer.pid, "exclusive")

        second = json.loads(_run(SECOND, str(path), env=env).stdout)
        assert second["flock"] == errno.ENOLCK  # the shim is in effect
        assert second["refused"] is not None
        assert f"process {writer.pid} on host {socket.gethostname()!r}" in second["refused"]
        assert second["locked"] is True and second["status"] == "running"
        assert "running" in _ls(root, env)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        for stream in (writer.stdin, writer.stdout, writer.stderr):
            if stream is not None:
                stream.close()

    assert lock_path(path).exists()  # nothing removes an exclusive lock of a killed writer
    table = _ls(root, env)
    assert "interrupted" in table and "running" not in table
    result = json.loads(_run(TAKE_OVER, str(path), env=env).stdout)
    assert result["before"] == {"locked": False, "status": "interrupted"}
    assert result["during"] == {"locked": True, "status": "running"}
    assert result["locked"] is False
    assert result["history"] == [1.5, 0.5]
    assert not lock_path(path).exists()
    assert "completed" in _ls(root, env)


@pytest.mark.parametrize("code", [errno.ENOTSUP, 524])
def test_every_caller_of_the_lock_under_the_shim(shim: Path, tmp_path: Path,
                                                 code: int) -> None:
    """Recorder, load, load_all, verify and repair's lock checks in a process where
    flock fails with *code*: a closed run is not reported live anywhere."""
    env = {**_env(shim), "RECORDKIT_SHIM_FLOCK_ERRNO": str(code)}
    script = """
import json, sys, recordkit
from recordkit.locking import is_locked
from recordkit.verify import verify
root = sys.argv[1]
rec = recordkit.Recorder(root, experiment="e", params={"lr": 0.1}, system=False)
rec.log({"loss": 1.0}, epoch=0)
rec.save()
path = rec.path
report = verify(path, isolate=False)
print(json.dumps({"locked": is_locked(path), "status": recordkit.load(path).status,
                  "all": [r.status for r in recordkit.load_all(root, cache=False)],
                  "verify_ok": bool(report.ok)}))
"""
    result = json.loads(_run(script, str(tmp_path), env=env).stdout)
    assert result == {"locked": False, "status": "completed", "all": ["completed"],
                      "verify_ok": True}


RACER = """
import json, os, sys, time
from pathlib import Path
from recordkit.errors import RecordLockedError
from recordkit.locking import RunLock
record, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
try:
    lock = RunLock.acquire(record)
except RecordLockedError:
    print("refused", flush=True)
    sys.exit(0)
print("won", flush=True)
sys.stdin.read()  # hold the lock until told
lock.release()
"""


def test_racers_taking_over_one_stale_lock_one_wins(shim: Path, tmp_path: Path) -> None:
    """Four processes without flock take over one dead writer's lock at the same moment:
    exactly one holds it, the others are refused (the renamed-aside check)."""
    record = tmp_path / "run.h5"
    _write_owner(record, pid=_dead_pid())
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(record), str(go)],
                               env=_env(shim), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline().strip() == "ready"
        go.touch()
        outcomes = []
        for racer in racers:
            assert racer.stdout is not None
            outcomes.append(racer.stdout.readline().strip())
        assert sorted(outcomes) == ["refused", "refused", "refused", "won"], outcomes
        winner = racers[outcomes.index("won")]
        owner = lock_owner(record)
        assert owner is not None and owner.pid == winner.pid
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".takeover")]
    finally:
        for racer in racers:
            racer.communicate(input="", timeout=60)
    assert not lock_path(record).exists()
