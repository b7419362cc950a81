"""Mutation testing of the pure and format modules: how many small faults the tests catch.

Each mutant is the module with one change: a comparison, arithmetic or boolean operator
flipped (``<`` to ``<=``, ``+`` to ``-``, ``and`` to ``or``), a ``not`` dropped, a
constant changed (``n`` to ``n + 1``, ``True`` to ``False``), or one statement removed
(replaced by ``pass``). Mutants are run in two stages, in a copy of the tree so the
checkout is never touched:

1. against the module's own unit tests (``-x``: the first failure kills it);
2. the survivors against every test of the whole suite that runs the mutated line (as
   recorded by one coverage run of the suite, per test), which is the whole suite as far
   as that line is concerned, in a fraction of its time.

A mutant whose tests time out counts as killed (an infinite loop is caught), in a
column of its own; a stage-two timeout is first given a second, patient run, since
many tests on a busy machine can be slow without a hang. The
survivors of both stages are printed with their line, for a person to judge: a test
is missing, or the mutant is equivalent (no input can tell it from the original), in
which case it belongs in ``EQUIVALENT`` below with a one-line reason.

    python benchmarks/mutate.py                     # every module, 150 mutants each
    python benchmarks/mutate.py --modules catalog   # one module
    python benchmarks/mutate.py --max-mutants 20    # a quick look
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = "tests/unit/backup"
# A second run of a stage-two set that timed out gets this long (seconds).
SUITE_PATIENCE = 900.0

# module: (source file, its unit tests)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "retention": ("src/backup/retention.py", (f"{UNIT}/test_retention.py",)),
    "safety": ("src/backup/safety.py", (f"{UNIT}/test_safety.py",)),
    "catalog": ("src/backup/catalog.py", (f"{UNIT}/test_catalog.py",)),
    "listing": ("src/backup/listing.py", (f"{UNIT}/test_listing.py", f"{UNIT}/test_listing_encrypted.py")),
    "manifest": ("src/backup/manifest/model.py", (f"{UNIT}/test_manifest.py",)),
    "tarformat": ("src/backup/stream/tarformat.py", (f"{UNIT}/stream/test_tarformat.py",)),
    "storage": ("src/backup/storage/local.py", (f"{UNIT}/storage/test_local.py",)),
}

# What a mutant of a line run only at import meets in stage two (coverage ties such a
# line to no test): every module's unit tests, and the round trips through the CLI.
IMPORT_TIME_TESTS = (
    *sorted({test for _, tests in MODULES.values() for test in tests}),
    f"{UNIT}/test_create.py",
    f"{UNIT}/test_restore.py",
    f"{UNIT}/test_verify.py",
    "tests/integration/test_roundtrip.py",
    "tests/integration/test_cli.py",
    "tests/integration/test_encryption.py",
)

# Survivors judged equivalent: (module, the mutated line's text, mutation) -> why no
# input tells the mutant from the original. Keyed by text, not number, so that edits
# elsewhere in the module do not unmoor the judgement. A text that more than one line
# of the module holds ("continue") is written "function(): text", the function (or
# Class.method) the line is in first; each key must name one line's mutants (a test checks).
_ANNOTATION_ONLY = "a type alias read only in annotations, which are never evaluated (postponed annotations)"
_INVARIANT = "asserts an invariant the code just before establishes: it never fails, so changing it changes nothing"
_FAST_PATH = "a test of encode_header's fast path: a member it sends the general way comes out byte for byte the same"
_DURABILITY = "only a power cut between the write and the rename could tell them apart; no test can make one"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("retention", "_Bucket = Callable[[datetime], Hashable]", "remove Assign"): _ANNOTATION_ONLY,
    ("retention", "assert moment is not None and newest_time is not None", "remove Assert"): _INVARIANT,
    ("retention", "assert moment is not None and newest_time is not None", "And -> Or"): _INVARIANT,
    ("retention", "assert backup.created_at is not None", "remove Assert"): _INVARIANT,
    ("retention", 'return "".join(chr(0x10FFFF - ord(ch)) for ch in text)', "1114111 -> 1114112"): (
        "shifts every inverted character by one and keeps their order; only NUL would differ, and no id holds one"
    ),
    (
        "safety",
        'MemberKind = Literal["file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev"]',
        "remove Assign",
    ): (_ANNOTATION_ONLY),
    ("tarformat", '__slots__ = ("acls", "mtime_ns", "realsize", "sparse_map", "xattrs")', "remove Assign"): (
        "slots only save memory: without them every attribute is still there"
    ),
    ("tarformat", "_ustar_block(): devmajor: int = 0,", "0 -> 1"): (
        "_ustar_block's default, taken only by pax headers, which are not devices: their device fields stay empty"
    ),
    ("tarformat", "if len(_PAX_HEADERS) < 4096:", "4096 -> 4097"): (
        "the bound of a cache of headers: one entry more changes memory by 512 bytes, never a header"
    ),
    ("tarformat", "return list(zip(numbers[::2], numbers[1::2], strict=True)), consumed", "True -> False"): (
        "the two slices are equal in length by construction (2 x count numbers): strict never has a case to refuse"
    ),
    ("listing", "return False  # gone already, or replaced meanwhile: not what was looked at", "remove Return"): (
        "falls through to None, as false as False to the one caller (if _remove(...))"
    ),
    ("safety", "MemberChecker._leads_outside(): return False", "remove Return"): (
        "falls through to None, as false as False to its callers, which only test it (a link loop leads nowhere)"
    ),
    ("storage", "LocalStorage.read_record(): return None", "remove Return"): (
        "falls through to the method's end, which returns None as well"
    ),
    ("storage", "def read(self, size: int = -1) -> bytes:", "1 -> 2"): (
        "a default of -2 is as negative as -1: both read all that is left of the range"
    ),
    ("tarformat", "and len(gname) <= 32", "LtE -> Lt"): (
        "a test of encode_header's fast path: a 32-byte group name sent the general way comes out the same bytes"
    ),
    ("tarformat", "if len(text) <= width and text.isascii():", "remove If"): (
        "_field's fast path: the general encoding gives the same bytes for ASCII that fits"
    ),
    ("tarformat", "if not 0 <= mtime < _OCTAL_LIMIT_11:", "0 -> 1"): (
        "only a time of 0 is told apart, and it is then set to 0"
    ),
    ("tarformat", "if len(_PAX_HEADERS) < 4096:", "Lt -> LtE"): (
        "the bound of a cache of headers: one entry more changes memory by 512 bytes, never a header"
    ),
    ("tarformat", "TarStreamReader._apply_pax(): return None", "remove Return"): (
        "the short-cut for a member with no records: the rest of the method then applies none, and returns None"
    ),
    ("manifest", "handle.flush()", "remove Expr"): _DURABILITY,
    ("manifest", "os.fsync(handle.fileno())", "remove Expr"): _DURABILITY,
    ("safety", "mtime_ns: int = 0", "0 -> 1"): "a default no caller uses: the checker passes every member's mtime_ns",
    ("safety", "init=False, repr=False, compare=False", "False -> True"): (
        "the flags of Selection's compiled-pattern cache, which nothing constructs, prints or compares by"
    ),
    ("safety", "return", "remove Return"): (
        "recheck_links' short-cut when external links are allowed: none was recorded to recheck then"
    ),
    ("listing", "raw = handle.read(limit + 1)", "1 -> 2"): (
        "reads one byte more of a file already known to be past the limit: the verdict is the same"
    ),
    ("manifest", "temp.unlink(missing_ok=True)", "True -> False"): (
        "the temporary file is created before anything in the try can fail, so it is always there to remove"
    ),
}

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}


@dataclass(frozen=True)
class Site:
    """One place to mutate: the node's position in a walk of the tree, and how."""

    index: int
    line: int
    kind: str  # "compare", "binop", "boolop", "not", "constant", "statement"
    description: str
    statement_line: int = 0  # where the statement holding it starts (coverage's line for it)
    function: str = ""  # the function (or Class.method) it is in; "" at module level


def judgement(module: str, site: Site, text: str) -> str | None:
    """The reason a mutant was judged equivalent, if it was."""
    return EQUIVALENT.get((module, f"{site.function}(): {text}", site.description)) or EQUIVALENT.get(
        (module, text, site.description)
    )


@dataclass
class Outcome:
    module: str
    line: int
    description: str
    killed_by: str  # "unit", "suite", "timeout", "" (survived), "equivalent"
    seconds: float
    source_line: str = ""
    reason: str = ""


@dataclass
class ModuleScore:
    module: str
    mutants: int = 0
    unit_killed: int = 0
    suite_killed: int = 0
    timed_out: int = 0  # killed: its tests hung (shown apart, for a reader to check)
    equivalent: int = 0
    survivors: list[Outcome] = field(default_factory=list)

    def score(self, killed: int) -> float:
        judged = self.mutants - self.equivalent
        return 100.0 * killed / judged if judged else 100.0


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and parent is not None
        and isinstance(parent, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and getattr(parent, "body", [None])[0] is node
    )


def _walk(tree: ast.AST) -> Iterator[tuple[ast.AST, ast.AST | None]]:
    """Every node with its parent, in a fixed order."""
    stack: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        children = list(ast.iter_child_nodes(node))
        stack.extend((child, node) for child in reversed(children))


def _skipped(node: ast.AST, parent: ast.AST | None) -> bool:
    """What is not mutated: docstrings, imports, ``__all__``, annotations, type-only code."""
    if _is_docstring(node, parent):
        return True
    if isinstance(node, ast.Import | ast.ImportFrom):
        return True
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
        return True
    return False


def _functions(tree: ast.AST, name: str = "") -> dict[int, str]:
    """Map each node to the qualified name of the function it is in ("" outside any)."""
    found: dict[int, str] = {}
    for child in ast.iter_child_nodes(tree):
        inner = name
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = f"{name}.{child.name}" if name else child.name
        found[id(child)] = inner if not isinstance(child, ast.ClassDef) else name
        found.update(_functions(child, inner))
    return found


def find_sites(tree: ast.Module) -> list[Site]:
    """Return every mutation site of a module, in a fixed order."""
    sites: list[Site] = []
    skip: set[int] = set()
    statement_of: dict[int, int] = {}
    function_of = _functions(tree)
    for index, (node, parent) in enumerate(_walk(tree)):
        if isinstance(node, ast.stmt):
            statement_of[id(node)] = node.lineno
        elif parent is not None:
            statement_of[id(node)] = statement_of.get(id(parent), 0)
        if id(node) in skip or _skipped(node, parent):
            for inner in ast.walk(node):
                skip.add(id(inner))
            continue
        if isinstance(node, ast.AnnAssign | ast.arg | ast.FunctionDef) and getattr(node, "annotation", None):
            for inner in ast.walk(node.annotation):  # type: ignore[attr-defined]
                skip.add(id(inner))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            for inner in ast.walk(node.returns):
                skip.add(id(inner))
        line = getattr(node, "lineno", 0)

        def add(kind: str, description: str, index: int = index, line: int = line, node: ast.AST = node) -> None:
            sites.append(
                Site(index, line, kind, description, statement_of.get(id(node), line), function_of.get(id(node), ""))
            )

        if isinstance(node, ast.Compare) and type(node.ops[0]) in _COMPARE_SWAPS:
            swapped = _COMPARE_SWAPS[type(node.ops[0])]
            add("compare", f"{type(node.ops[0]).__name__} -> {swapped.__name__}")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
            swapped_op = _BINOP_SWAPS[type(node.op)]
            add("binop", f"{type(node.op).__name__} -> {swapped_op.__name__}")
        elif isinstance(node, ast.BoolOp):
            other = "Or" if isinstance(node.op, ast.And) else "And"
            add("boolop", f"{type(node.op).__name__} -> {other}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add("not", "not x -> x")
        elif isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            if isinstance(node.value, bool):
                add("constant", f"{node.value} -> {not node.value}")
            else:
                add("constant", f"{node.value} -> {node.value + 1}")
        elif isinstance(node, ast.stmt) and not isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Pass | ast.Global | ast.Nonlocal
        ):
            add("statement", f"remove {type(node).__name__}")
    return sites


def mutate(tree: ast.Module, site: Site) -> str:
    """Return the module's source with the one change ``site`` names."""
    mutant = copy.deepcopy(tree)
    for index, (node, parent) in enumerate(_walk(mutant)):
        if index != site.index:
            continue
        if site.kind == "compare":
            assert isinstance(node, ast.Compare)
            node.ops[0] = _COMPARE_SWAPS[type(node.ops[0])]()
        elif site.kind == "binop":
            assert isinstance(node, ast.BinOp)
            node.op = _BINOP_SWAPS[type(node.op)]()
        elif site.kind == "boolop":
            assert isinstance(node, ast.BoolOp)
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif site.kind == "not":
            assert isinstance(node, ast.UnaryOp) and parent is not None
            _replace(parent, node, node.operand)
        elif site.kind == "constant":
            assert isinstance(node, ast.Constant)
            node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
        else:
            assert parent is not None
            _replace(parent, node, ast.Pass())
        return ast.unparse(ast.fix_missing_locations(mutant))
    raise ValueError(f"no node {site.index}")


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for name, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, name, new)
            return
        if isinstance(value, list) and old in value:
            value[value.index(old)] = new
            return
    raise ValueError("node not found under its parent")


# -- running -------------------------------------------------------------------------------


def make_copy(workdir: Path, name: str) -> Path:
    """A copy of the tracked tree (sources and tests) to mutate in."""
    target = workdir / name
    shutil.rmtree(target, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for relative in filter(None, files.decode().split("\0")):
        source = ROOT / relative
        if source.is_file() and not source.is_symlink():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    """Run the given tests in ``tree``; return ("pass", "fail" or "timeout", seconds). A
    module that no longer imports fails; pytest refusing its arguments (exit 4 or 5) is
    this runner's mistake, and stops it."""
    environment = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree / 'tests'}"}
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    try:
        finished = subprocess.run(command, cwd=tree, env=environment, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    if finished.returncode in (4, 5):
        raise SystemExit(
            f"mutate: pytest refused the tests it was given (exit {finished.returncode}):\n"
            + finished.stdout.decode(errors="replace")[-2000:]
        )
    return "pass" if finished.returncode == 0 else "fail", time.monotonic() - started


def coverage_map(workdir: Path, modules: list[str], refresh: bool) -> dict[str, dict[int, list[str]]]:
    """Return ``{source file: {line: [test ids]}}``: which tests of the whole suite run
    each line of the modules. Each module's map is cached in ``workdir`` under its
    source's hash, since line numbers belong to the source as it is; tests added since
    only add to what is caught (``refresh`` records them too). The modules without a
    map are recorded together, in one run of the whole suite under coverage."""
    maps: dict[str, dict[int, list[str]]] = {}
    missing = []
    for name in modules:
        source = MODULES[name][0]
        cache = workdir / f"coverage-{name}.json"
        key = hashlib.sha256(b"map 3\0" + (ROOT / source).read_bytes()).hexdigest()
        if cache.exists() and not refresh:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                maps[source] = {int(line): tests for line, tests in cached["lines"].items()}
                continue
        missing.append((name, source, cache, key))
    if not missing:
        return maps
    tree = make_copy(workdir, "coverage")
    rc = tree / ".coveragerc"
    rc.write_text(
        "[run]\ninclude =\n"
        + "".join(f"    {tree / source}\n" for _, source, _, _ in missing)
        + f"data_file = {tree / '.coverage'}\n"
    )
    environment = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree / 'tests'}"}
    names = ", ".join(name for name, _, _, _ in missing)
    print(f"coverage: running the whole suite once, recording which tests run each line of {names} ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            f"--cov={tree / 'src' / 'backup'}",
            f"--cov-config={rc}",
            "--cov-context=test",
            "--cov-report=",
        ],
        cwd=tree,
        env=environment,
        capture_output=True,
    )
    from coverage import CoverageData

    data = CoverageData(basename=str(tree / ".coverage"))
    data.read()
    for _, source, cache, key in missing:
        contexts = data.contexts_by_lineno(str(tree / source))
        # A context is a pytest node id and the phase: "tests/x.py::test_y[1]|run". A
        # test is run with all its parameters (their ids can hold anything).
        lines = {
            line: sorted({c.rsplit("|", 1)[0].split("[", 1)[0] for c in found if c.endswith("|run")})
            for line, found in contexts.items()
        }
        cache.write_text(json.dumps({"key": key, "lines": lines}))
        maps[source] = lines
    shutil.rmtree(tree, ignore_errors=True)
    return maps


def run_module(name: str, args: argparse.Namespace, workdir: Path, covered: dict[int, list[str]]) -> ModuleScore:
    source_path, unit_tests = MODULES[name]
    original = (ROOT / source_path).read_text()
    tree = ast.parse(original)
    sites = find_sites(tree)
    if len(sites) > args.max_mutants:
        sites = sorted(random.Random(f"{args.seed}:{name}").sample(sites, args.max_mutants), key=lambda s: s.index)
    lines = original.splitlines()
    score = ModuleScore(name, mutants=len(sites))
    copies = [make_copy(workdir, f"{name}-{worker}") for worker in range(args.jobs)]
    free = list(copies)
    verdict, baseline = run_tests(copies[0], list(unit_tests), timeout=600)
    if verdict != "pass":
        # Every mutant would count as killed: a score of 100% that measured nothing.
        raise SystemExit(f"mutate: {name}: its unit tests do not pass without any mutant ({verdict})")
    timeout = max(30.0, baseline * 5)
    print(f"{name}: {len(sites)} mutants, unit tests take {baseline:.1f}s", flush=True)

    def one(site: Site) -> Outcome:
        copy_root = free.pop()
        try:
            target = copy_root / source_path
            target.write_text(mutate(tree, site))
            shown = lines[site.line - 1].strip() if 0 < site.line <= len(lines) else ""
            judged = judgement(name, site, shown)
            verdict, seconds = run_tests(copy_root, list(unit_tests), timeout)
            if verdict != "pass":
                killer = "unit" if verdict == "fail" else "timeout"
                return Outcome(name, site.line, site.description, killer, seconds, shown)
            running = set(covered.get(site.line, [])) | set(covered.get(site.statement_line, []))
            if not running:
                # Run at import (a constant, a class body, a decorator), before any test:
                # coverage gives it to none, so the broad set stands in for the suite.
                running = set(IMPORT_TIME_TESTS)
            others = sorted(t for t in running if not t.startswith(unit_tests))
            if others:
                verdict, more = run_tests(copy_root, others, max(timeout, 120.0))
                if verdict == "timeout":
                    # Many tests on a busy machine may take long without a hang: a
                    # second, patient run tells the two apart.
                    verdict, more = run_tests(copy_root, others, SUITE_PATIENCE)
                seconds += more
                if verdict != "pass":
                    killer = "suite" if verdict == "fail" else "timeout"
                    return Outcome(name, site.line, site.description, killer, seconds, shown)
            if judged is not None:
                return Outcome(name, site.line, site.description, "equivalent", seconds, shown, judged)
            return Outcome(name, site.line, site.description, "", seconds, shown)
        finally:
            (copy_root / source_path).write_text(original)
            free.append(copy_root)

    with ThreadPoolExecutor(args.jobs) as pool:
        for outcome in pool.map(one, sites):
            if outcome.killed_by == "unit":
                score.unit_killed += 1
            elif outcome.killed_by == "suite":
                score.suite_killed += 1
            elif outcome.killed_by == "timeout":
                score.timed_out += 1
            elif outcome.killed_by == "equivalent":
                score.equivalent += 1
                score.survivors.append(outcome)
            else:
                score.survivors.append(outcome)
    for copy_root in copies:
        shutil.rmtree(copy_root, ignore_errors=True)
    alive = [s for s in score.survivors if s.killed_by != "equivalent"]
    print(
        f"{name}: {score.unit_killed} killed by its unit tests, {score.suite_killed} more by the suite, "
        f"{score.timed_out} by a timeout, {score.equivalent} equivalent, {len(alive)} alive",
        flush=True,
    )
    for survivor in alive:
        print(f"  {survivor.line}: {survivor.description}: {survivor.source_line}", flush=True)
    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated: " + ", ".join(MODULES))
    parser.add_argument("--max-mutants", type=int, default=150, help="per module (a fixed random sample)")
    parser.add_argument("--seed", default="2026", help="the sample's seed")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--workdir", default="bench-output/mutate")
    parser.add_argument("--json", default="bench-output/mutate.json")
    parser.add_argument("--floor", type=float, default=95.0, help="percent of non-equivalent mutants to kill")
    parser.add_argument("--refresh-coverage", action="store_true", help="re-run the suite under coverage")
    parser.add_argument("--unit-only", action="store_true", help="skip stage 2 (a quick look)")
    args = parser.parse_args()
    names = [name.strip() for name in args.modules.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        parser.error(f"unknown modules: {', '.join(unknown)}")
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    lines = {} if args.unit_only else coverage_map(workdir, names, args.refresh_coverage)
    scores: list[ModuleScore] = []
    for name in names:
        scores.append(run_module(name, args, workdir, lines.get(MODULES[name][0], {})))
        # Kept as each module finishes: a run stopped part way keeps what it measured.
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(score) for score in scores], indent=2) + "\n")

    print(
        f"\n{'module':<10} {'mutants':>7} {'unit':>7} {'+suite':>7} {'timeout':>7} {'equiv':>6} {'survive':>7}  score"
    )
    below = []
    for score in scores:
        killed = score.unit_killed + score.suite_killed + score.timed_out
        unit_pct = score.score(score.unit_killed)
        total_pct = score.score(killed)
        alive = len(score.survivors) - score.equivalent
        print(
            f"{score.module:<10} {score.mutants:>7} {unit_pct:>6.0f}% {total_pct:>6.0f}% {score.timed_out:>7} "
            f"{score.equivalent:>6} "
            f"{alive:>7}  {'ok' if total_pct >= args.floor else 'BELOW ' + str(args.floor) + '%'}"
        )
        if total_pct < args.floor:
            below.append(score.module)
    for score in scores:
        for survivor in score.survivors:
            status = f"equivalent: {survivor.reason}" if survivor.killed_by == "equivalent" else "SURVIVED"
            print(f"{survivor.module}:{survivor.line}: {survivor.description}: {survivor.source_line}  [{status}]")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps([asdict(score) for score in scores], indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 1 if below else 0


if __name__ == "__main__":
    raise SystemExit(main())
