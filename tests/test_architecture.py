"""The shape of the code (docs/ARCHITECTURE.md), checked from the source: the import graph
of ``src/recordkit`` has no cycle, including imports inside functions; data flows one way
(the write side never reaches the read side); the core never imports a framework; only
the ``format`` package (and the checkers) import h5py; integrations use the recorder's
public API; no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "recordkit"

FRAMEWORKS = {"torch", "lightning", "pytorch_lightning", "tensorflow", "keras", "tf_keras",
              "jax", "optuna", "ray"}
#: Modules that write a record; none of them may import (even indirectly) the read side.
WRITE_SIDE = {"recordkit.recorder", "recordkit.runfile", "recordkit.runhistory",
              "recordkit.snapshots", "recordkit.params", "recordkit.diskspace",
              "recordkit.writer", "recordkit.tensors", "recordkit.policy",
              "recordkit.dtypes", "recordkit.codec", "recordkit.researcher"}
#: Modules that read records back.
READ_SIDE = {"recordkit.record", "recordkit.views", "recordkit.opening",
             "recordkit.recordset", "recordkit.headercache", "recordkit.cli",
             "recordkit.plot", "recordkit.verify", "recordkit.repair",
             "recordkit.weights"}
#: Outside the format package, only these inspect files with h5py: verify, which reads
#: every chunk of a record, and repair (raw bytes of the superblock).
H5PY_CHECKERS = {"recordkit.verify", "recordkit.repair"}
#: What an integration may import of recordkit: the recorder's public API and the pieces
#: of the core that callbacks configure it with.
INTEGRATION_API = {"recordkit.recorder", "recordkit.policy", "recordkit.paths",
                   "recordkit.errors"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The recordkit module *name* stands for (a package's module, or the module an
    attribute import comes from); None outside recordkit."""
    if name != "recordkit" and not name.startswith("recordkit."):
        return None
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module name imported anywhere in the file (functions, TYPE_CHECKING blocks
    and try blocks included), with its line; ``from a import b`` gives ``a.b``."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            base = node.module or ""
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            found.append((base, node.lineno))
    return found


GRAPH: dict[str, set[str]] = {}
EXTERNAL: dict[str, set[str]] = {}
for _name, _path in MODULES.items():
    GRAPH[_name] = set()
    EXTERNAL[_name] = set()
    for _imported, _line in _imports(_path):
        target = _resolve(_imported)
        if target is None:
            EXTERNAL[_name].add(_imported.split(".")[0])
        elif target != _name and not _name.startswith(f"{target}."):
            # a package's own __init__ is imported with each of its modules: not an edge
            GRAPH[_name].add(target)


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    pending = [start]
    while pending:
        for target in GRAPH[pending.pop()]:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def test_the_graph_was_read() -> None:
    """The checks below look at real edges (a parser that found nothing would pass)."""
    assert "recordkit.format.history" in GRAPH["recordkit.runhistory"]
    assert "recordkit.format.summary" in GRAPH["recordkit.format.header"]
    assert "h5py" in EXTERNAL["recordkit.format.files"]
    assert "keras" in EXTERNAL["recordkit.integrations.keras"]
    assert len(MODULES) > 30


def test_no_import_cycle() -> None:
    cycles = []
    for module in GRAPH:
        if module in _reachable(module):
            path = [module]
            # one path back to the module, for the message
            while True:
                nxt = next(t for t in GRAPH[path[-1]] if module in _reachable(t) | {t})
                path.append(nxt)
                if nxt == module or len(path) > 20:
                    break
            cycles.append(" -> ".join(path))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_core_never_imports_a_framework() -> None:
    offenders = {name: sorted(EXTERNAL[name] & FRAMEWORKS) for name in MODULES
                 if not name.startswith("recordkit.integrations")
                 and EXTERNAL[name] & FRAMEWORKS}
    assert not offenders


def test_the_write_side_never_reaches_the_read_side() -> None:
    assert set(MODULES) >= WRITE_SIDE, sorted(WRITE_SIDE - set(MODULES))
    offenders = {name: sorted(_reachable(name) & READ_SIDE) for name in WRITE_SIDE
                 if _reachable(name) & READ_SIDE}
    assert not offenders


def test_only_the_format_package_and_the_checkers_import_h5py() -> None:
    importers = {name for name in MODULES if "h5py" in EXTERNAL[name]}
    outside = {name for name in importers if not name.startswith("recordkit.format")}
    assert outside <= H5PY_CHECKERS, sorted(outside - H5PY_CHECKERS)
    assert {"recordkit.format.weights", "recordkit.format.safety"} <= importers


@pytest.mark.parametrize("module", sorted(n for n in MODULES
                                          if n.startswith("recordkit.integrations.")))
def test_integrations_use_the_recorder_api_only(module: str) -> None:
    assert "h5py" not in EXTERNAL[module]
    used = {t for t in GRAPH[module] if not t.startswith("recordkit.integrations")}
    assert used <= INTEGRATION_API, sorted(used - INTEGRATION_API)


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = []
    for path in MODULES.values():
        for imported, line in _imports(path):
            last = imported.rsplit(".", 1)[-1]
            if (imported.startswith("recordkit.") and last.startswith("_")
                    and not last.startswith("__") and _resolve(imported) == imported):
                continue  # a private module of a package, imported whole: fine
            if imported.startswith("recordkit.") and last.startswith("_") and (
                    not last.startswith("__")):
                offenders.append(f"{path.name}:{line}: {imported}")
    assert not offenders


def test_each_module_says_its_one_job() -> None:
    missing = [name for name, path in MODULES.items()
               if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
                       or "").strip()]
    assert not missing
