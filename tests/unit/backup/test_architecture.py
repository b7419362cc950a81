"""The shape of the package, checked from its source: no import cycle (type-only and
function-level imports included), data flowing one way, pure modules free of I/O, and
the terminal libraries confined to the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"
PACKAGE = SRC / "backup"

# Modules that read or write files, directories or storage (directly or by design).
IO_MODULES = {
    "backup.check",
    "backup.hooks",
    "backup.select",
    "backup.checksum",
    "backup.cli",
    "backup.core",
    "backup.create",
    "backup.fstree",
    "backup.keys",
    "backup.listing",
    "backup.manifest.files",
    "backup.monitor",
    "backup.plan",
    "backup.prune",
    "backup.restore",
    "backup.scan",
    "backup.scheduler",
    "backup.storage",
    "backup.storage.durable",
    "backup.storage.local",
    "backup.storage.lock",
    "backup.storage.s3",
    "backup.stream.tarreader",
    "backup.stream.tarwriter",
    "backup.verify",
}
# Decisions and formats: they take records and return records.
PURE_MODULES = [
    "backup.acl",
    "backup.catalog",
    "backup.locations",
    "backup.manifest.model",
    "backup.manifest.sidecar",
    "backup.retention",
    "backup.safety",
    "backup.settings",
    "backup.stream.compression",
    "backup.stream.tarformat",
]
EXECUTORS = {"backup.create", "backup.restore", "backup.verify", "backup.prune"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = current.split(".") if is_package else current.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    found = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        found.append(candidate if candidate in MODULES else base)
    return found


def _imports(name: str) -> set[str]:
    """Every project module ``name`` imports, wherever the import statement is."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(name, path.name == "__init__.py", node))
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for neighbour in GRAPH[stack.pop()]:
            if neighbour not in seen:
                seen.add(neighbour)
                stack.append(neighbour)
    return seen


def test_the_graph_sees_the_whole_package() -> None:
    assert {"backup", "backup.core", "backup.stream.pipeline", "backup.storage.base"} <= set(MODULES)
    assert "backup.stream.compression" in GRAPH["backup.stream.pipeline"]


def test_no_import_cycles_not_even_type_only_ones() -> None:
    """Package __init__ modules re-export their children; apart from that, no module can
    reach itself through its imports (those under TYPE_CHECKING and in functions count)."""
    cycles = []
    for name in MODULES:
        if name in ("backup", "backup.manifest", "backup.storage", "backup.stream"):
            continue
        if name in _reachable(name):
            cycles.append(name)
    assert cycles == []


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_modules_reach_nothing_that_does_io(name: str) -> None:
    assert _reachable(name) & IO_MODULES == set()


def test_plans_do_not_import_executors() -> None:
    assert _reachable("backup.plan") & EXECUTORS == set()


def test_only_the_command_line_imports_terminal_libraries() -> None:
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        if name != "backup.cli":
            assert not imported & {"rich", "argparse"}, name


def test_nothing_below_the_command_line_imports_it() -> None:
    assert [name for name, imports in GRAPH.items() if "backup.cli" in imports and name != "backup.__main__"] == []
