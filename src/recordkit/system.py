"""A description of the machine, captured once per run.

Every probe is guarded on its own: a probe that fails leaves its key empty and a line in
``notes``, never an exception. Frameworks are never imported to learn their versions
(importing tensorflow takes seconds); environment variables are never stored (they hold
secrets), and secret-looking command-line values are masked.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["capture", "mask_secrets"]

MASK = "***"
_SECRET = re.compile(
    r"(key|token|secret|passw(or)?d|pwd|credential|auth|cookie|session|private)",
    re.IGNORECASE,
)
#: ``scheme://user:password@host``: the password of a URL's user info.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)")
_PACKAGES = ("numpy", "h5py", "psutil", "recordkit", "torch", "pytorch-lightning",
             "lightning", "tensorflow", "keras", "jax", "ml-dtypes", "hdf5plugin")


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET.search(name.lstrip("-")))


def mask_secrets(argv: Sequence[str]) -> list[str]:
    """The command line with the values of secret-looking options replaced by ``***``.

    Options named like key, token, secret, password, credential or auth are masked in the
    forms ``--name=value``, ``--name value`` and ``NAME=value``; so is the password of any
    URL with user info (``postgres://me:***@db``).

    Example:
        >>> mask_secrets(["train.py", "--api-key=abc", "--password", "hunter2", "--lr", "0.1"])
        ['train.py', '--api-key=***', '--password', '***', '--lr', '0.1']
        >>> mask_secrets(["HF_TOKEN=xyz", "--epochs=3"])
        ['HF_TOKEN=***', '--epochs=3']
        >>> mask_secrets(["--db=postgres://me:pw@db/x"])
        ['--db=postgres://me:***@db/x']
    """
    masked: list[str] = []
    mask_next = False
    for arg in argv:
        arg = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", str(arg))
        if mask_next and not (arg.startswith("-") and len(arg) > 1 and not _is_number(arg)):
            masked.append(MASK)
            mask_next = False
            continue
        mask_next = False
        if "=" in arg:
            name, _, _ = arg.partition("=")
            if _is_secret_name(name):
                masked.append(f"{name}={MASK}")
                continue
        elif arg.startswith("-") and _is_secret_name(arg):
            mask_next = True
        masked.append(arg)
    return masked


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _probe(notes: list[str], key: str, default: Any, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as err:
        notes.append(f"{key}: {type(err).__name__}: {err}")
        return default


def _user() -> str:
    try:
        return getpass.getuser()  # reads LOGNAME/USER/... first, then pwd
    except Exception:
        pass
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        for candidate in ("/etc/os-release", "/usr/lib/os-release"):
            try:
                text = Path(candidate).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.MULTILINE)
            if match:
                return match.group(1)
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]}".strip()
    if sys.platform == "win32":
        return f"Windows {platform.win32_ver()[0]}".strip()
    return platform.system()


def _cpu_model() -> str:
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for key in ("model name", "Hardware", "Processor", "cpu model"):
            match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
            if match:
                return match.group(1).strip()
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                             capture_output=True, text=True, timeout=5,
                             stdin=subprocess.DEVNULL, check=True)
        return out.stdout.strip()
    return platform.processor() or platform.machine()


def _storage(record_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    path = Path(record_dir) if record_dir is not None else Path.cwd()
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return {"path": str(path), "total": int(usage.total), "free": int(usage.free)}


def _git(cwd: Path) -> dict[str, Any] | None:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                 timeout=5, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if run("rev-parse", "--is-inside-work-tree") != "true":
        return None
    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    branch = run("rev-parse", "--abbrev-ref", "HEAD")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "branch": branch if branch and branch != "HEAD" else None}


def _packages() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _gpus(notes: list[str]) -> list[dict[str, Any]]:
    gpus: list[dict[str, Any]] = []
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                driver = pynvml.nvmlSystemGetDriverVersion()
                for i in range(pynvml.nvmlDeviceGetCount()):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                    gpus.append({
                        "name": _text(pynvml.nvmlDeviceGetName(handle)),
                        "memory_total": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                        "driver": _text(driver),
                        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                        "source": "nvml",
                    })
            finally:
                pynvml.nvmlShutdown()
            return gpus
        except Exception as err:
            notes.append(f"gpus: nvml: {type(err).__name__}: {err}")
    try:
        import GPUtil
    except ImportError:
        GPUtil = None
    if GPUtil is not None:
        try:
            for gpu in GPUtil.getGPUs():
                gpus.append({"name": gpu.name, "memory_total": int(gpu.memoryTotal * 2**20),
                             "driver": gpu.driver, "uuid": gpu.uuid, "source": "GPUtil"})
            if gpus:
                return gpus
        except Exception as err:
            notes.append(f"gpus: GPUtil: {type(err).__name__}: {err}")
    if "torch" in sys.modules:  # only when the user already imported it: no import cost
        try:
            torch = sys.modules["torch"]
            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    gpus.append({"name": props.name, "memory_total": int(props.total_memory),
                                 "driver": str(torch.version.cuda), "uuid":
                                 str(getattr(props, "uuid", "")), "source": "torch"})
        except Exception as err:
            notes.append(f"gpus: torch: {type(err).__name__}: {err}")
    if not gpus and "tensorflow" in sys.modules:
        try:
            tf = sys.modules["tensorflow"]
            for device in tf.config.list_physical_devices("GPU"):
                gpus.append({"name": device.name, "memory_total": None, "driver": None,
                             "uuid": None, "source": "tensorflow"})
        except Exception as err:
            notes.append(f"gpus: tensorflow: {type(err).__name__}: {err}")
    return gpus


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def capture(record_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Describe this machine and process as a JSON-serialisable dict.

    Args:
        record_dir: where the record is written; ``storage`` describes its filesystem.

    Returns:
        python, python_implementation, machine, processor, cpu_model, os, os_name, os_ver,
        platform, memory (total bytes), storage (path, total, free), cpu_count_logical,
        cpu_count_physical, hostname, user, command (masked), executable, cwd, git,
        packages, gpus, notes, captured.

    Example:
        >>> info = capture()
        >>> isinstance(info["memory"], int) and isinstance(info["gpus"], list)
        True
    """
    notes: list[str] = []
    info: dict[str, Any] = {}

    def probe(key: str, fn: Callable[[], Any], default: Any = None) -> None:
        info[key] = _probe(notes, key, default, fn)

    probe("python", platform.python_version)
    probe("python_implementation", platform.python_implementation)
    probe("machine", platform.machine)
    probe("processor", lambda: platform.processor() or platform.machine())
    probe("cpu_model", _cpu_model)
    probe("os", platform.system)
    probe("os_name", _os_name)
    probe("os_ver", platform.release)
    probe("platform", platform.platform)

    def memory() -> int:
        import psutil

        return int(psutil.virtual_memory().total)

    probe("memory", memory)
    probe("storage", lambda: _storage(record_dir))

    def physical() -> int | None:
        import psutil

        count = psutil.cpu_count(logical=False)
        return int(count) if count else None

    probe("cpu_count_logical", os.cpu_count)
    probe("cpu_count_physical", physical)
    probe("hostname", socket.gethostname)
    probe("user", _user)
    probe("command", lambda: mask_secrets(sys.argv))
    probe("executable", lambda: sys.executable)
    probe("cwd", os.getcwd)
    probe("git", lambda: _git(Path.cwd()))
    probe("packages", _packages, {})
    probe("gpus", lambda: _gpus(notes), [])
    info["notes"] = notes
    info["captured"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    return info
