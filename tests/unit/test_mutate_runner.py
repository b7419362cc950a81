"""The mutation runner of ``make mutate`` (benchmarks/mutate.py): the mutants it makes,
and its list of survivors judged equivalent, which must keep naming mutants it still
makes (a judgement whose line was edited away would otherwise excuse nothing, silently)."""

from __future__ import annotations

import ast
import importlib.util
import random
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate_runner", ROOT / "benchmarks" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


SAMPLE = '''"""Docstring: never mutated."""
import os

__all__ = ["f"]


def f(a: int, b: int = 3) -> int:
    """Nor this."""
    if a < b and not os.sep:
        return a + 1
    return True
'''


def test_each_kind_of_mutant_is_made_once_where_it_applies(runner: ModuleType) -> None:
    tree = ast.parse(SAMPLE)
    sites = runner.find_sites(tree)
    made = {(site.line, site.description): runner.mutate(tree, site) for site in sites}
    assert sorted(made) == [
        (7, "3 -> 4"),
        (9, "And -> Or"),
        (9, "Lt -> LtE"),
        (9, "not x -> x"),
        (9, "remove If"),
        (10, "1 -> 2"),
        (10, "Add -> Sub"),
        (10, "remove Return"),
        (11, "True -> False"),
        (11, "remove Return"),
    ]
    assert "b: int=4" in made[(7, "3 -> 4")]
    assert "if a < b or not os.sep:" in made[(9, "And -> Or")]
    assert "if a <= b and (not os.sep):" in made[(9, "Lt -> LtE")]
    assert "if a < b and os.sep:" in made[(9, "not x -> x")]
    assert "return a - 1" in made[(10, "Add -> Sub")]
    assert "return False" in made[(11, "True -> False")]
    original = ast.unparse(tree)
    for mutant in made.values():
        assert mutant != original
        compile(mutant, "<mutant>", "exec")


@pytest.mark.parametrize("name", ["retention", "safety", "catalog", "listing", "manifest", "tarformat", "storage"])
def test_every_module_and_its_unit_tests_exist_and_its_mutants_compile(runner: ModuleType, name: str) -> None:
    source, unit_tests = runner.MODULES[name]
    assert all((ROOT / test).is_file() for test in unit_tests)
    tree = ast.parse((ROOT / source).read_text())
    sites = runner.find_sites(tree)
    assert len(sites) > 100
    for site in random.Random(name).sample(sites, 20):
        compile(runner.mutate(tree, site), source, "exec")


def test_every_judged_equivalent_names_one_line_the_runner_still_mutates(runner: ModuleType) -> None:
    """A judgement names the mutants of one line: none (its line was edited away) would
    excuse nothing, silently; more ("continue") would excuse mutants nobody judged."""
    wrong = []
    for (name, text, description), reason in runner.EQUIVALENT.items():
        assert reason.strip(), (name, text)
        source = (ROOT / runner.MODULES[name][0]).read_text()
        lines = source.splitlines()
        qualified = re.fullmatch(r"([\w.]+)\(\): (.*)", text)
        function, bare = qualified.groups() if qualified else ("", text)
        matched = {
            site.line
            for site in runner.find_sites(ast.parse(source))
            if lines[site.line - 1].strip() == bare
            and site.description == description
            and (not function or site.function == function)
        }
        if len(matched) != 1:
            wrong.append(f"{name}: {description}: {text}: lines {sorted(matched)}")
    assert wrong == []


def test_a_judgement_may_name_the_function_its_line_is_in(runner: ModuleType) -> None:
    tree = ast.parse("def f(x):\n    for y in x:\n        continue\n\nclass C:\n    def g(self):\n        return 1\n")
    by_line = {site.line: site.function for site in runner.find_sites(tree)}
    assert by_line[3] == "f" and by_line[7] == "C.g"


def test_a_run_of_tests_passes_fails_or_times_out(runner: ModuleType, tmp_path: Path) -> None:
    """A hang is told apart from a failure: it counts as a kill, in a column of its own."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import time\n\ndef test_pass():\n    pass\n\ndef test_fail():\n    assert False\n\n"
        "def test_hang():\n    time.sleep(60)\n"
    )
    assert runner.run_tests(tmp_path, ["tests/test_x.py::test_pass"], 60)[0] == "pass"
    assert runner.run_tests(tmp_path, ["tests/test_x.py::test_fail"], 60)[0] == "fail"
    verdict, seconds = runner.run_tests(tmp_path, ["tests/test_x.py::test_hang"], 2)
    assert verdict == "timeout" and seconds < 30


def test_a_module_whose_unit_tests_fail_unmutated_is_refused_not_scored(
    runner: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else every mutant would be "killed" by the failure, and the module would score
    100% having measured nothing."""
    import argparse
    import subprocess

    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "tests").mkdir()
    (tree / "src" / "tiny.py").write_text("def f(a):\n    return a + 1\n")
    (tree / "tests" / "test_tiny.py").write_text("def test_broken():\n    assert False\n")
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run(["git", "-C", str(tree), "add", "."], check=True)
    monkeypatch.setattr(runner, "ROOT", tree)
    monkeypatch.setitem(runner.MODULES, "tiny", ("src/tiny.py", ("tests/test_tiny.py",)))
    args = argparse.Namespace(max_mutants=150, seed="1", jobs=1)
    with pytest.raises(SystemExit, match=r"tiny: its unit tests do not pass without any mutant \(fail\)"):
        runner.run_module("tiny", args, tmp_path / "work", {})
