"""The deployment files in ``contrib/`` and the README's "Install" section, checked
against each other, against systemd and against the kernel.

- The unit passes ``systemd-analyze verify``, and ``systemd-analyze security``
  rates it (offline) no worse than its comment and the README say; so does the
  service-user variant the comment describes.
- What the unit lets the service write and waits to be mounted is what the example
  config backs up and writes.
- Root with no capability but the unit's, and no new privileges, backs up a tree
  another user owns into a directory root owns, prunes there, and fails without it.
- The command works with no memory both writable and executable, as
  ``MemoryDenyWriteExecute=`` enforces, here through the kernel's own switch
  (``PR_SET_MDWE``): its ctypes calls build no code at run time.
- The cron entry is a well-formed ``/etc/cron.d`` line whose commands the CLI parses.
- The README installs the command, the config and the backup directory where the
  unit and the cron entry expect them.

systemd need not be running: ``systemd-analyze`` reads unit files offline. A test
that needs it, root or a kernel feature says so when it skips.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from backup import restore_backup
from backup.cli import build_parser

from .conftest import ROOT, SRC, snapshot

UNIT = ROOT / "contrib" / "obs-backup.service"
CRON = ROOT / "contrib" / "obs-backup.cron"
CONFIG = ROOT / "contrib" / "obs-backup.toml"
README = ROOT / "README.md"

# The unit's comment states the score reached, as root and as a service user.
ROOT_CLAIM = re.compile(r"rates this unit (\d+\.\d) ([A-Z]+)")
USER_CLAIM = re.compile(r"As a service user instead \(rated (\d+\.\d) ([A-Z]+)\)")
EXPOSURE = re.compile(r"Overall exposure level for obs-backup\.service: (\d+\.\d) ([A-Z]+)")

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1


def unit_directives(text: str) -> dict[str, list[tuple[str, str]]]:
    """Given a unit file's text, return each section's ``(key, value)`` pairs in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(text: str, section: str, key: str) -> list[str]:
    """Given a unit file's text, return the values of ``key`` in ``section``, split on
    white space and concatenated over its lines, as systemd does for path lists."""
    return [word for k, v in unit_directives(text)[section] if k == key for word in v.split()]


def exec_start(text: str) -> list[str]:
    [line] = [v for k, v in unit_directives(text)["Service"] if k == "ExecStart"]
    return shlex.split(line)


def service_user_variant(text: str) -> str:
    """Given the unit's text, return it as its comment says to run it as a service
    user: User= and Group= uncommented, the capability set emptied."""
    for line in ("# User=app\n", "# Group=app\n", "CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n"):
        assert line in text, f"the unit no longer has {line.strip()!r}; update this test's variant"
    return (
        text.replace("# User=app\n", "User=app\n")
        .replace("# Group=app\n", "Group=app\n")
        .replace("CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n", "CapabilityBoundingSet=\n")
    )


def install_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Install\n")
    return text[start : text.index("\n## ", start + 1)]


def shell_commands(markdown: str) -> list[list[str]]:
    """Given Markdown, return the commands of its ``sh`` code blocks, split as the shell
    would, comments and a leading ``sudo`` dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.DOTALL):
        for line in block.splitlines():
            argv: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word != "&&":
                    argv.append(word)
                elif argv:
                    commands.append(argv[1:] if argv[0] == "sudo" else argv)
                    argv = []
    return commands


def config() -> dict[str, object]:
    with CONFIG.open("rb") as file:
        return tomllib.load(file)


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """The path of a ``systemd-analyze`` that can rate unit files offline (systemd 250
    and newer); the test is skipped without one."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (scripts/install-system-tools.sh installs it)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.match(r"systemd (\d+)", version)
    if found is None or int(found[1]) < 250:
        pytest.skip(f"systemd-analyze is older than 250 and cannot rate a unit offline: {version.splitlines()[0]}")
    return path


def checkable_copy(tmp_path: Path, text: str) -> Path:
    """Given the unit's text, write a copy whose ExecStart names an executable that
    exists here (verify checks that it does) and return its path."""
    stub = tmp_path / "bin" / "obs-backup"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "obs-backup.service"
    unit.write_text(text.replace(exec_start(text)[0], str(stub)))
    return unit


def test_the_unit_verifies_without_a_complaint(tmp_path: Path, systemd_analyze: str) -> None:
    unit = checkable_copy(tmp_path, UNIT.read_text())
    run = subprocess.run(
        [systemd_analyze, "verify", "--man=no", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Complaints about other units on this machine are not the unit's own.
    own = [line for line in (run.stdout + run.stderr).splitlines() if unit.name in line]
    assert run.returncode == 0 and not own, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("variant", "claim"),
    [(lambda text: text, ROOT_CLAIM), (service_user_variant, USER_CLAIM)],
    ids=["root", "service-user"],
)
def test_the_sandbox_scores_what_the_unit_and_the_readme_say(
    tmp_path: Path, systemd_analyze: str, variant: Callable[[str], str], claim: re.Pattern[str]
) -> None:
    text = UNIT.read_text()
    stated = claim.search(text)
    assert stated, f"the unit's comment no longer states its score ({claim.pattern})"
    score, rating = float(stated[1]), stated[2]
    assert f"{stated[1]} {rating}" in install_section(), "README's Install section states another score"
    unit = checkable_copy(tmp_path, variant(text))
    run = subprocess.run(
        # The threshold is in tenths: exit non-zero above the stated score.
        [systemd_analyze, "security", "--offline=true", f"--threshold={round(score * 10)}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    measured = EXPOSURE.search(run.stdout)
    assert measured, run.stdout + run.stderr
    assert run.returncode == 0 and float(measured[1]) <= score, (
        f"rated {measured[1]} {measured[2]}, not {score} {rating} or better:\n{run.stdout}"
    )


def test_the_unit_may_write_what_the_config_writes_and_waits_for_its_mounts() -> None:
    text = UNIT.read_text()
    settings = config()
    schedule = settings["schedule"]
    assert isinstance(schedule, dict)
    writable = values(text, "Service", "ReadWritePaths")
    # No "-": a missing backup directory stops the unit instead of a run failing.
    assert settings["backup_dir"] in writable
    metrics_dir = str(Path(schedule["metrics-file"]).parent)
    assert metrics_dir in writable or f"-{metrics_dir}" in writable
    mounts = values(text, "Unit", "RequiresMountsFor")
    assert settings["source"] in mounts and settings["backup_dir"] in mounts
    ordering = values(text, "Unit", "After") + values(text, "Unit", "Wants") + values(text, "Unit", "Requires")
    assert "network-online.target" not in ordering, "a local backup waits for its mounts, not the network"
    argv = exec_start(text)
    assert argv[1:3] == ["--config", "/etc/obs-backup.toml"] and argv[-1] == "schedule"
    build_parser().parse_args(argv[1:])  # exits (fails the test) if the CLI refuses them


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        spread, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if spread == "*":
            continue
        first, _, last = spread.partition("-")
        bounds = [first, last] if last else [first]
        if not all(b.isdigit() and low <= int(b) <= high for b in bounds):
            return False
    return True


# Between create and prune: prune after a complete backup, with warnings (exit 3) or not.
_AFTER_CREATE = "; test $? -eq 0 -o $? -eq 3 && "


@pytest.mark.parametrize(("create_exits", "prunes"), [(0, True), (3, True), (1, False), (2, False)])
def test_the_cron_entry_prunes_after_a_complete_backup_only(tmp_path: Path, create_exits: int, prunes: bool) -> None:
    """The cron command itself, run by sh with a stand-in for obs-backup: a backup that
    completed with warnings (exit 3) must not stop the pruning, or backups pile up."""
    [job] = [line for line in CRON.read_text().splitlines() if line[:1].isdigit()]
    command = job.split(maxsplit=6)[6]
    calls = tmp_path / "calls"
    stub = tmp_path / "obs-backup"
    stub.write_text(f'#!/bin/sh\necho "$3" >>{calls}\n[ "$3" = create ] && exit {create_exits}\nexit 0\n')
    stub.chmod(0o755)
    binary = exec_start(UNIT.read_text())[0]
    subprocess.run(["/bin/sh", "-c", command.replace(binary, str(stub))], check=False, timeout=30)
    assert calls.read_text().split() == (["create", "prune"] if prunes else ["create"])


def test_the_cron_entry_is_one_line_cron_d_accepts_running_the_installed_command() -> None:
    text = CRON.read_text()
    assert text.endswith("\n"), "cron ignores a last line without a newline"
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    environment = dict(line.split("=", 1) for line in lines if re.match(r"[A-Z_]+=", line))
    [job] = [line for line in lines if not re.match(r"[A-Z_]+=", line)]
    *times, user, command = job.split(maxsplit=6)
    assert len(times) == 5, job
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    assert all(_cron_field_ok(field, *bounds) for field, bounds in zip(times, ranges, strict=True)), times
    assert user == "root"
    binary = exec_start(UNIT.read_text())[0]
    assert os.path.dirname(binary) in environment["PATH"].split(":")
    steps = [shlex.split(step) for step in command.split(_AFTER_CREATE)]
    assert [step[0] for step in steps] == [binary, binary]
    for step in steps:
        assert step[1:3] == ["--config", "/etc/obs-backup.toml"], step
        build_parser().parse_args(step[1:])
    assert [step[3] for step in steps] == ["create", "prune"]


def test_the_readme_installs_what_the_unit_and_cron_run() -> None:
    commands = shell_commands(install_section())
    binary = exec_start(UNIT.read_text())[0]
    config_path = exec_start(UNIT.read_text())[2]

    def find(*words: str) -> list[str]:
        matches = [argv for argv in commands if all(word in argv for word in words)]
        assert matches, f"no command in README's Install section has {words}"
        return matches[0]

    pipx = find("pipx", "install")
    assert f"PIPX_BIN_DIR={os.path.dirname(binary)}" in pipx, pipx
    venv = find("-m", "venv")[-1]
    assert find("install", f"{venv}/bin/pip")
    assert find("ln", "-s")[-2:] == [f"{venv}/bin/obs-backup", binary]

    backup_dir = config()["backup_dir"]
    made = find("install", "-d")
    assert made[-1] == backup_dir and made[made.index("-m") + 1] == "0700", made
    assert find("install", "contrib/obs-backup.toml")[-1] == config_path
    assert find("cp", "contrib/obs-backup.service")[-1] == "/etc/systemd/system/"
    assert find("install", "contrib/obs-backup.cron")[-1] == "/etc/cron.d/obs-backup"


def _bounding_set(text: str) -> str:
    """Given the unit's text, return its capability bounding set as setpriv's option."""
    names = values(text, "Service", "CapabilityBoundingSet")
    return ",".join(["-all", *(f"+{name.removeprefix('CAP_').lower()}" for name in names)])


def _has_capability(number: int) -> bool:
    status = Path("/proc/self/status").read_text()
    [bounding] = re.findall(r"^CapBnd:\s*([0-9a-f]+)$", status, flags=re.MULTILINE)
    return bool(int(bounding, 16) >> number & 1)


def _foreign_tree(tmp_path: Path) -> Path:
    """A private tree owned by a user that is not root: mode 0700 directories, 0600 and
    0640 files."""
    source = tmp_path / "app"
    (source / "config").mkdir(parents=True)
    (source / "data").mkdir()
    (source / "config" / "app.toml").write_bytes(b"secret = 'x'\n")
    (source / "data" / "orders.json").write_bytes(b"[1, 2, 3]\n" * 100)
    for path in [source, *source.rglob("*")]:
        os.chown(path, 4242, 4242)
        path.chmod(0o700 if path.is_dir() else 0o600)
    (source / "data" / "orders.json").chmod(0o640)
    return source


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the source to another user")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_root_with_only_the_units_capabilities_backs_up_what_another_user_owns(tmp_path: Path) -> None:
    if not _has_capability(2):  # CAP_DAC_READ_SEARCH
        pytest.skip("this process cannot hold CAP_DAC_READ_SEARCH")
    source = _foreign_tree(tmp_path)
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)  # root's own, as the README makes it

    def confined(bounding: str, *argv: str) -> subprocess.CompletedProcess[str]:
        # As root, a program gets exactly the bounding set at exec.
        command = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs"]
        return subprocess.run(
            [*command, sys.executable, "-m", "backup", *argv],
            env=dict(os.environ, PYTHONPATH=str(SRC)),
            capture_output=True,
            text=True,
            timeout=60,
        )

    unit_caps = _bounding_set(UNIT.read_text())
    assert unit_caps == "-all,+dac_read_search"
    refused = confined("-all", "create", "--quiet", str(source), str(backups))
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
    for _ in range(2):
        made = confined(unit_caps, "create", "--quiet", str(source), str(backups))
        assert made.returncode == 0, made.stderr
    pruned = confined(unit_caps, "prune", "--quiet", "--keep-last", "1", str(backups))
    assert pruned.returncode == 0, pruned.stderr
    [archive] = backups.glob("*.tar.*")
    checked = confined(unit_caps, "verify", "--quiet", str(archive))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    restored = restore_backup(archive, tmp_path / "restored")
    assert restored.success, restored.error
    assert snapshot(tmp_path / "restored") == snapshot(source)


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


# Refuses writable-and-executable memory for this process and what it executes, then
# runs obs-backup in a fresh interpreter; exit 77 if the kernel does not carry the
# refusal across exec.
_UNDER_MDWE = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE) failed: errno %d" % ctypes.get_errno())
child = (
    "import ctypes, sys\\n"
    "if ctypes.CDLL(None).prctl({PR_GET_MDWE}, 0, 0, 0, 0) != {PR_MDWE_REFUSE_EXEC_GAIN}: sys.exit(77)\\n"
    "from backup.cli import main\\n"
    "sys.exit(main(sys.argv[1:]))\\n"
)
os.execv(sys.executable, [sys.executable, "-c", child, *sys.argv[1:]])
"""


@pytest.mark.skipif(not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3 and newer)")
def test_backup_verify_and_restore_need_no_writable_executable_memory(tmp_path: Path) -> None:
    source = tmp_path / "app"
    (source / "data").mkdir(parents=True)
    (source / "data" / "orders.json").write_bytes(b"[1, 2, 3]\n" * 100)
    (source / "notes.txt").write_bytes(b"hello\n")

    def under_mdwe(*argv: str) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, "-c", _UNDER_MDWE, *argv],
            env=dict(os.environ, PYTHONPATH=str(SRC)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode == 77:
            pytest.skip("the kernel does not keep PR_SET_MDWE across exec")
        return run

    made = under_mdwe("create", "--quiet", "--compression", "zst", str(source), str(tmp_path / "backups"))
    assert made.returncode == 0, made.stderr
    [archive] = (tmp_path / "backups").glob("*.tar.zst")
    checked = under_mdwe("verify", "--quiet", str(archive))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A restore moves the tree into place with renameat2, called through ctypes.
    restored = under_mdwe("restore", "--quiet", str(archive), str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stderr
    assert snapshot(tmp_path / "restored") == snapshot(source)
