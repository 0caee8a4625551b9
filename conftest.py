"""Doctests of optional modules run only where their framework is installed; the slow
framework-free modules run once per tox run."""

import hashlib
import importlib.util
import os
import pathlib
import tempfile

import pytest

collect_ignore_glob = ["benchmarks/*", "examples/*"]
_OPTIONAL = {
    "src/recordkit/integrations/*lightning*.py": "torch",
    "src/recordkit/integrations/*keras*.py": "keras",
    "src/recordkit/plot.py": "matplotlib",
    "src/recordkit/recordset.py": "pandas",
    "src/recordkit/format/filters.py": "hdf5plugin",
    "src/recordkit/integrations/optuna.py": "optuna",
}
for _path, _module in _OPTIONAL.items():
    if importlib.util.find_spec(_module) is None:
        collect_ignore_glob.append(_path)

# load_all's header cache goes to a throwaway folder, not the user's ~/.cache.
os.environ.setdefault("RECORDKIT_CACHE_DIR", tempfile.mkdtemp(prefix="recordkit-test-cache-"))

# --- run once per tox run -------------------------------------------------------------------
# tox runs the suite twice: in the core env (no framework) and in the py env (every
# framework). The slow modules below need no framework, so the second run would repeat
# the first. The core env writes a stamp (the hash of the sources and tests) when the
# whole suite passed; the py env skips these modules only when the stamp matches the
# sources it runs. `tox -e py` alone, a changed file, or a failed core run: they run.
_ONCE_MODULES = ("test_crashpoints.py", "test_crash.py", "test_bounds.py", "test_fuzz.py",
                 "test_load_all_workers.py", "test_concurrency.py", "test_damaged.py",
                 "test_checksums.py", "test_diskfull.py", "test_locking.py")
_HERE = pathlib.Path(__file__).resolve().parent


def _sources_hash() -> str:
    """The hash of every file the tests' outcome depends on here."""
    digest = hashlib.sha256()
    files = [_HERE / "pyproject.toml", _HERE / "tox.ini", _HERE / "conftest.py"]
    for folder in ("src", "tests"):
        files += sorted(p for p in (_HERE / folder).rglob("*")
                        if p.suffix in (".py", ".c", ".h5", ".json") and p.is_file())
    for path in files:
        digest.update(str(path.relative_to(_HERE)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _whole_suite(config: pytest.Config) -> bool:
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not config.option.keyword and not config.option.markexpr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    stamp = os.environ.get("RECORDKIT_ONCE_STAMP")
    if os.environ.get("RECORDKIT_ONCE") != "skip" or not stamp:
        return
    try:
        written = pathlib.Path(stamp).read_text()
    except OSError:
        return
    if written != _sources_hash():
        return
    skip = pytest.mark.skip(reason=f"needs no framework; passed in the core env of this "
                                   f"tox run on these sources ({stamp})")
    for item in items:
        if item.path.name in _ONCE_MODULES and item.path.parent == _HERE / "tests":
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stamp = os.environ.get("RECORDKIT_ONCE_STAMP")
    if os.environ.get("RECORDKIT_ONCE") != "write" or not stamp:
        return
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker saw only its part
        return
    path = pathlib.Path(stamp)
    path.unlink(missing_ok=True)
    if exitstatus == 0 and not session.testsfailed and _whole_suite(session.config):
        path.write_text(_sources_hash())
