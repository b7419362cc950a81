"""The README's Guarantees table names the tests that check each promise: every test it
names must exist, so a renamed or deleted test cannot leave a promise unchecked unnoticed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `integration/test_x.py::test_y`, `::test_z` (same file as the one before), `unit/backup/test_lock.py`
_REFERENCE = re.compile(r"`((?:[\w/]+\.py)?)(?:::(\w+))?`")


def _guarantee_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    return [
        line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| promise", "| ---"))
    ]


def _references(row: str) -> list[tuple[str, str | None]]:
    checked = row.rsplit(" | ", 1)[1]
    found: list[tuple[str, str | None]] = []
    current = ""
    for path, name in _REFERENCE.findall(checked):
        current = path or current
        if current:
            found.append((current, name or None))
    return found


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def test_every_test_the_guarantees_name_exists() -> None:
    rows = _guarantee_rows()
    assert len(rows) >= 10
    missing = []
    for row in rows:
        references = _references(row)
        assert references, f"a promise names no test: {row[:80]}"
        for path, name in references:
            if path.startswith("benchmarks/"):
                file = ROOT / path
            else:
                file = ROOT / "tests" / path
            if not file.is_file():
                missing.append(path)
            elif name is not None and name not in _test_names(file):
                missing.append(f"{path}::{name}")
    assert missing == []
