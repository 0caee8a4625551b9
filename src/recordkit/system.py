"""A description of the machine and process, captured once per run.

Every probe is guarded on its own: a probe that fails leaves its key ``None`` (``[]`` for
``gpus``) and a line in ``notes``, never an exception. Frameworks are never imported to
learn their versions (importing tensorflow takes seconds) and their devices are listed only
when the program already imported them. Environment variables are never stored wholesale
(they hold secrets), only a batch scheduler's documented job variables
(:mod:`recordkit.scheduler`); secret-looking command-line values are masked, and every
string is masked by shape (:mod:`recordkit.masking`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import getpass
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from recordkit import masking
from recordkit.masking import MASK
from recordkit.scheduler import scheduler_context

__all__ = ["MASK", "capture", "is_secret_name", "mask_secrets", "masked_by_shape"]

#: Distributions whose versions are recorded when installed (names as pip knows them).
_PACKAGES = ("numpy", "h5py", "psutil", "recordkit", "torch", "pytorch-lightning",
             "lightning", "tensorflow", "keras", "jax", "jaxlib")
_GIT_BUDGET = 5.0  # seconds for all git calls together
_GPU_TIMEOUT = 10.0  # seconds for the driver probe (nvidia-smi can hang on a sick driver)


def is_secret_name(name: str) -> bool:
    """Whether an option or parameter name looks like it holds a secret
    (:func:`recordkit.masking.is_secret_name`).

    Example:
        >>> [is_secret_name(n) for n in ("api_key", "hf_token", "key_dim", "max_tokens")]
        [True, True, False, False]
    """
    return masking.is_secret_name(name)


def mask_secrets(argv: Sequence[str]) -> list[str]:
    """Return the command line with the values of secret-looking options replaced by ``***``.

    An option or ``NAME=value`` pair is secret when its name holds a word such as password,
    passwd, pwd, secret or credential, or ends in key, token or auth (``--api-key``,
    ``--hf_token``, ``API_KEY``, ``--apiKey``). Both ``--name=value`` and ``--name value``
    are masked; the names stay. ``-p VALUE`` is masked unless the value is a number. Every
    word is masked by shape too (:func:`recordkit.masking.mask_text`): the password of a
    URL, tokens (GitHub, Hugging Face, OpenAI, Slack...), AWS key ids, JWTs.
    Sizes named like ``--key-dim`` or ``--max-tokens`` are kept.

    Args:
        argv: the command line, such as ``sys.argv``.

    Returns:
        A new list of the same length.

    Example:
        >>> mask_secrets(["train.py", "--api-key=abc", "--password", "hunter2", "--lr", "0.1"])
        ['train.py', '--api-key=***', '--password', '***', '--lr', '0.1']
        >>> mask_secrets(["HF_TOKEN=xyz", "--max-tokens", "512", "--token", "--epochs=3"])
        ['HF_TOKEN=***', '--max-tokens', '512', '--token', '--epochs=3']
        >>> mask_secrets(["--db=postgres://me:pw@db/x", "-p", "hunter2"])
        ['--db=postgres://me:***@db/x', '-p', '***']
    """
    return masking.mask_argv(argv)


def _user() -> str:
    try:
        return getpass.getuser()  # LOGNAME, USER, LNAME, USERNAME, then the password database
    except Exception:  # no login environment and no passwd entry (containers)
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
            match = re.search(r"^PRETTY_NAME=(.*)$", text, re.MULTILINE)
            if match and match.group(1).strip("'\" "):
                return match.group(1).strip("'\" ")
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
        for key in ("model name", "Hardware", "Processor", "cpu model", "cpu"):
            match = re.search(rf"^{key}\s*:\s*(\S.*)$", text, re.MULTILINE)
            if match:
                return match.group(1).strip()
    elif sys.platform == "darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"], None, 5.0)
        if out:
            return out
    return platform.processor() or platform.machine()


def _memory() -> int:
    try:
        import psutil
    except ImportError:  # psutil is a dependency, but a broken install must not lose this
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return int(psutil.virtual_memory().total)


def _physical_cpus() -> int | None:
    import psutil

    count = psutil.cpu_count(logical=False)
    return int(count) if count else None


def _storage(record_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    path = (Path(record_dir) if record_dir is not None else Path.cwd()).absolute()
    while not path.exists() and path != path.parent:  # the folder is created later
        path = path.parent
    usage = shutil.disk_usage(path)
    return {"path": str(path), "total": int(usage.total), "free": int(usage.free)}


def _run(args: list[str], cwd: Path | None, timeout: float) -> str | None:
    """stdout of a command, or None when it fails, is missing or takes too long."""
    done = _run_full(args, cwd, timeout)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def _run_full(args: list[str], cwd: Path | None, timeout: float,
              env: Mapping[str, str] | None = None
              ) -> subprocess.CompletedProcess[str] | None:
    """The finished command (its return code, stdout and stderr), or None when it is
    missing or takes too long."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", **(env or {})}
    try:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=max(timeout, 0.1), stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _git_candidates() -> list[Path]:
    """cwd, then the script's folder unless the script belongs to Python itself.

    ``pytest`` or ``python -m pkg`` put a path inside the interpreter in ``sys.argv[0]``,
    and an interpreter may live in a git checkout (pyenv does): that is not the user's code.
    """
    candidates = [Path.cwd()]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None
    if script is None or not script.is_file():
        return candidates
    folder = script.resolve().parent
    paths = sysconfig.get_paths()
    interpreter = {sys.prefix, sys.base_prefix, sys.exec_prefix, paths["purelib"],
                   paths["platlib"], paths["stdlib"]}
    if not any(folder.is_relative_to(Path(p).resolve()) for p in interpreter if p):
        candidates.append(folder)
    return candidates


#: One ``git status`` says all that is recorded: ``# branch.oid`` (the commit, or
#: ``(initial)`` before the first), ``# branch.head`` (the branch, or ``(detached)``) and
#: one line per changed tracked file. Porcelain v2 is git 2.11, ``--no-ahead-behind``
#: 2.17; an older git fails on them and the four calls of before are made instead.
_GIT_STATUS = ("status", "--porcelain=v2", "--branch", "--no-ahead-behind",
               "--untracked-files=no")
#: git's own messages in English (``not a git repository``), whatever the user's locale.
_GIT_C_LOCALE = {"LC_ALL": "C"}


def _git() -> dict[str, Any] | None:
    """``commit``, ``dirty`` and ``branch`` of the first candidate folder in a git work
    tree (:func:`_git_candidates`); None when none is. One ``git status`` per folder, the
    four calls of older recordkit versions when that call fails in a work tree."""
    deadline = time.monotonic() + _GIT_BUDGET
    if shutil.which("git") is None:
        return None  # what every call below would find, without starting any of them

    def git(cwd: Path, *args: str) -> str | None:
        return _run(["git", *args], cwd, deadline - time.monotonic())

    for cwd in _git_candidates():
        done = _run_full(["git", *_GIT_STATUS], cwd, deadline - time.monotonic(),
                         _GIT_C_LOCALE)
        if done is not None and done.returncode == 0:
            return _git_status_v2(done.stdout, functools.partial(
                git, cwd, "symbolic-ref", "--short", "-q", "HEAD"))
        if (done is not None and done.returncode == 128
                and "not a git repository" in done.stderr):
            continue  # the common answer outside a work tree: no second call needed
        # git older than 2.17, a status that failed or took too long, a .git folder...:
        # the calls that answered before, each on its own
        if git(cwd, "rev-parse", "--is-inside-work-tree") != "true":
            continue
        commit = git(cwd, "rev-parse", "--verify", "-q", "HEAD")  # None before a first commit
        branch = git(cwd, "symbolic-ref", "--short", "-q", "HEAD")  # None when detached
        status = git(cwd, "status", "--porcelain", "--untracked-files=no")
        return {"commit": commit or None, "dirty": None if status is None else bool(status),
                "branch": branch or None}
    return None


def _git_status_v2(out: str, symbolic_ref: Callable[[], str | None]) -> dict[str, Any]:
    """``commit``, ``dirty`` and ``branch`` from ``git status --porcelain=v2 --branch``;
    *symbolic_ref* asks git for the branch when the head reads ``(detached)`` (a branch
    may bear that name)."""
    commit: str | None = None
    head: str | None = None
    dirty = False
    for line in out.splitlines():
        if line.startswith("# branch.oid "):
            commit = line[len("# branch.oid "):].strip()
        elif line.startswith("# branch.head "):
            head = line[len("# branch.head "):].strip()
        elif line.strip() and not line.startswith("#"):
            dirty = True  # a changed, staged or unmerged tracked file
    if commit == "(initial)":
        commit = None  # no commit yet
    branch = symbolic_ref() if head == "(detached)" else head
    return {"commit": commit or None, "dirty": dirty, "branch": branch or None}


#: The ``Version`` header of a distribution's metadata, when written plainly: one line,
#: not continued on the next.
_VERSION_HEADER = re.compile(r"^Version:[ \t]*([A-Za-z0-9][A-Za-z0-9.+!_-]*)\r?\n(?![ \t])",
                             re.MULTILINE | re.IGNORECASE)
#: A header line (``Name: value``) or the continuation of one, as email's parser reads them.
_HEADER_LINE = re.compile(r"[\x21-\x39\x3b-\x7e]+:|[ \t]")


def _version(name: str) -> str | None:
    """``importlib.metadata.version(name)``, without parsing the whole metadata file:
    that parse (an email parser over the long description) took 0.5-7 ms per package,
    10-15 ms per run for :data:`_PACKAGES`. A plain ``Version:`` line among the headers
    is read as it is; anything else is left to importlib.metadata.

    Raises:
        PackageNotFoundError: *name* is not installed.
    """
    from importlib.metadata import distribution

    dist = distribution(name)
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    match = _VERSION_HEADER.search(text)
    # a header only when every line before it is one (the headers end at the first
    # line that is not, a blank one included: the body may say Version: too), and the
    # first Version header
    if match and all(_HEADER_LINE.match(line) and line[:8].lower() != "version:"
                     for line in text[:match.start()].splitlines()):
        return match.group(1)
    return dist.version


def _packages() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError

    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = _version(name)
        except PackageNotFoundError:
            if name == "recordkit":  # running from a source tree that is not installed
                found[name] = "unknown"
    return found


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_gpus(pynvml: Any) -> list[dict[str, Any]]:
    pynvml.nvmlInit()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"name": _text(pynvml.nvmlDeviceGetName(handle)),
                         "memory_total": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                         "driver": driver, "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                         "source": "pynvml"})
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _gputil_gpus(gputil: Any) -> list[dict[str, Any]]:
    return [{"name": str(gpu.name), "memory_total": int(float(gpu.memoryTotal) * 2**20),
             "driver": str(gpu.driver), "uuid": str(gpu.uuid), "source": "GPUtil"}
            for gpu in gputil.getGPUs()]  # memoryTotal is in MiB


def _driver_gpus(notes: list[str]) -> list[dict[str, Any]]:
    """GPUs the NVIDIA driver reports: nvidia-ml-py when importable, else GPUtil."""
    try:
        import pynvml  # nvidia-ml-py: a thin ctypes binding, cheap to import
    except ImportError:
        pynvml = None
    if pynvml is not None:
        probe: Callable[[], list[dict[str, Any]]] = lambda: _nvml_gpus(pynvml)  # noqa: E731
        source = "pynvml"
    else:
        try:
            import GPUtil
        except ImportError:
            return []
        probe, source = (lambda: _gputil_gpus(GPUtil)), "GPUtil"
    # nvidia-smi (behind GPUtil) and NVML have no timeout of their own: a daemon thread
    # bounds the wait so that a sick driver cannot hang the start of a run.
    result: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(probe())
        except Exception as err:
            errors.append(err)

    thread = threading.Thread(target=target, name="recordkit-gpu-probe", daemon=True)
    thread.start()
    thread.join(_GPU_TIMEOUT)
    if thread.is_alive():
        notes.append(f"gpus: {source}: TimeoutError: no answer within {_GPU_TIMEOUT:g} s")
        return []
    if errors:
        notes.append(f"gpus: {source}: {type(errors[0]).__name__}: {errors[0]}")
        return []
    return result[0] if result else []


def _framework_gpus(notes: list[str]) -> list[dict[str, Any]]:
    """GPUs of frameworks the program already imported, without side effects on them.

    torch is asked only once CUDA is initialised (initialising it here would break a later
    fork); jax is never asked, because its first device query preallocates GPU memory.
    """
    gpus: list[dict[str, Any]] = []
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    uuid = getattr(props, "uuid", None)
                    gpus.append({"name": str(props.name),
                                 "memory_total": int(props.total_memory), "driver": None,
                                 "uuid": None if uuid is None else str(uuid),
                                 "source": "torch"})
        except Exception as err:
            notes.append(f"gpus: torch: {type(err).__name__}: {err}")
    tf = sys.modules.get("tensorflow")
    if tf is not None and not gpus:
        try:
            for device in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(device)
                gpus.append({"name": str(details.get("device_name", device.name)),
                             "memory_total": None, "driver": None, "uuid": None,
                             "source": "tensorflow"})
        except Exception as err:
            notes.append(f"gpus: tensorflow: {type(err).__name__}: {err}")
    return gpus


def _gpus(notes: list[str]) -> list[dict[str, Any]]:
    # The driver's list is complete; a framework's list is the fallback, not an addition,
    # so that one device is never counted twice.
    return _driver_gpus(notes) or _framework_gpus(notes)


def _json_types(value: Any) -> Any:
    """The value as JSON's types only (a numpy scalar or a Path from a probe becomes one)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_types(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_types(v) for v in value]
    if hasattr(value, "item"):
        return _json_types(value.item())
    return str(value)


def capture(record_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Describe this machine and process as a JSON-serialisable dict.

    Never raises: a probe that fails leaves its key ``None`` (``gpus``: ``[]``,
    ``packages``: ``{}``) and a line ``"<key>: <error type>: <message>"`` in ``notes``.

    Args:
        record_dir: where the record is written; ``storage`` describes the filesystem that
            holds it (its nearest existing parent when it does not exist yet). Defaults to
            the current directory.

    Returns:
        A dict with ``python``, ``python_implementation``, ``machine``, ``processor``,
        ``cpu_model``, ``os``, ``os_name``, ``os_ver``, ``platform``, ``memory`` (total
        bytes), ``storage`` (``path``, ``total``, ``free`` bytes), ``cpu_count_logical``,
        ``cpu_count_physical``, ``hostname``, ``user``, ``command`` (``sys.argv``, secrets
        masked), ``executable``, ``cwd``, ``git`` (``commit``, ``dirty``, ``branch``; None
        outside a work tree), ``packages`` (name → version), ``gpus`` (``name``,
        ``memory_total``, ``driver``, ``uuid``, ``source``), ``scheduler`` (the batch
        job's context, :func:`recordkit.scheduler.scheduler_context`; None outside a
        job), ``notes`` and ``captured`` (ISO-8601, UTC).

    Example:
        >>> info = capture()
        >>> isinstance(info["memory"], int), isinstance(info["gpus"], list)
        (True, True)
    """
    notes: list[str] = []
    info: dict[str, Any] = {}

    def probe(key: str, fn: Callable[[], Any], default: Any = None) -> None:
        try:
            info[key] = _json_types(fn())
        except Exception as err:
            notes.append(f"{key}: {type(err).__name__}: {err}")
            info[key] = default

    probe("python", platform.python_version)
    probe("python_implementation", platform.python_implementation)
    probe("machine", platform.machine)
    probe("processor", lambda: platform.processor() or platform.machine())
    probe("cpu_model", _cpu_model)
    probe("os", platform.system)
    probe("os_name", _os_name)
    probe("os_ver", platform.release)
    probe("platform", platform.platform)
    probe("memory", _memory)
    probe("storage", lambda: _storage(record_dir))
    probe("cpu_count_logical", os.cpu_count)
    probe("cpu_count_physical", _physical_cpus)
    probe("hostname", socket.gethostname)
    probe("user", _user)
    probe("command", lambda: mask_secrets(sys.argv))
    probe("executable", lambda: sys.executable or None)
    probe("cwd", os.getcwd)
    probe("git", _git)
    probe("packages", _packages, {})
    probe("gpus", lambda: _gpus(notes), [])
    probe("scheduler", scheduler_context)
    info["notes"] = notes
    info["captured"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    return masked_by_shape(info)


def masked_by_shape(info: Mapping[str, Any]) -> dict[str, Any]:
    """System info with every string masked by shape (a token in a folder name, a URL
    with a password in a probe's error note; :func:`recordkit.masking.mask_text`), as
    :func:`capture` returns it; for system info given as a mapping too (importers).
    Never an exception: unmasked on a masking bug, with a note saying so.

    Example:
        >>> masked_by_shape({"cwd": "/ci/postgres://u:pw@h/db", "notes": []})
        {'cwd': '/ci/postgres://u:***@h/db', 'notes': []}
    """
    try:
        masked = masking.mask_tree(dict(info), "", [], names=None)
    except Exception as err:  # system info must never stop a run
        notes = info.get("notes")
        return {**info, "notes": [*(notes if isinstance(notes, list) else []),
                                  f"masking: {type(err).__name__}: {err}"]}
    return masked if isinstance(masked, dict) else dict(info)
