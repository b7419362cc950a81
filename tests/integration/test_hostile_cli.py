"""Every hostile archive of test_hostile_archives.py, through the real command line.

For each case of its ``CASES`` table (the same builders, the same arena) the CLI runs
as a real process, ``python -m backup``: ``restore`` into the user's target for every
case; ``restore --overwrite``, ``restore`` into a target that does not exist yet, and
``verify`` for a representative subset (one case or two of each kind: paths, links, hard links,
damaged streams, damaged manifests, damaged data), since each process
costs about 0.15 s and all of them for all cases would take half a minute. Each must
exit 1 with no traceback; a restore prints exactly one line on stderr, naming the
problem (the very line the library gives); a verify prints every problem the library
finds. The whole tree under ``tmp_path`` (target, sentinel beside it, archives, and
the process's working directory, which is inside it) must be exactly as before:
nothing written outside the target, the target unchanged, no staging left.

The processes of a case run at once (they are independent), to keep this fast.

The archives of its ``SPECIAL_CASES`` (FIFOs and device nodes, no manifest) are not
refused: through the CLI too they restore, with warnings on stderr, FIFOs made, device
nodes skipped, and nothing written outside the target.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backup import restore_backup, verify_backup

from . import test_hostile_archives as hostile
from .conftest import SRC, staging_leftovers
from .test_hostile_archives import (
    CASES,
    SPECIAL_CASES,
    Arena,
    _file_signature,
    _state,
    check_special_restore,
    device_warning,
)

arena = hostile.arena  # the same fixture: the target, a sentinel beside it, the archives

_FLAGS = {"allow_external_links": "--allow-external-links"}


def _cli_flags(kwargs: dict) -> list[str]:
    """The restore keyword arguments of a case, as command-line flags."""
    assert set(kwargs) <= set(_FLAGS), kwargs
    return [_FLAGS[key] for key, value in kwargs.items() if value]


def _start(arena: Arena, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "backup", *argv],
        cwd=arena.root,  # anything written relative to the working directory shows up in _state
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Also restored with --overwrite and into a new target, and verified, through the CLI
# (every case is restored through the CLI into the user's target).
FULL = {
    "absolute-member",
    "dotdot-member-gnu-tar",
    "symlink-outside-then-write-allowed",
    "symlink-chain-escapes-through-later-link",
    "hardlink-to-etc-passwd",
    "duplicate-file-and-dir",
    "pax-huge-size-gz",
    "truncated-tar-gz",
    "not-a-tar",
    "manifest-lists-path-archive-lacks",
    "manifest-version-99",
    "flipped-byte-in-file-data",
}
assert FULL <= set(CASES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_archive_through_the_cli(arena: Arena, name: str) -> None:
    case = CASES[name]
    archive, kwargs = case.build(arena)
    flags = _cli_flags(kwargs)
    before = _state(arena)
    passwd = _file_signature("/etc/passwd")
    assert before["work/target/keep.txt"][0] == "file" and before["work/sentinel/orig.txt"][0] == "file"

    # label -> (target, overwrite)
    runs = {"into the user's target": (arena.target, False)}
    if name in FULL:
        runs["into the user's target, --overwrite"] = (arena.target, True)
        runs["into a new target"] = (arena.fresh, False)
    restores = {
        label: _start(arena, "restore", str(archive), str(target), *flags, *(["--overwrite"] if overwrite else []))
        for label, (target, overwrite) in runs.items()
    }
    verify = _start(arena, "verify", str(archive)) if name in FULL else None
    outputs = {label: proc.communicate(timeout=30) for label, proc in restores.items()}

    for label, proc in restores.items():
        out, err = outputs[label]
        assert proc.returncode == 1, (name, label, out, err)
        assert "Traceback" not in err and "internal error" not in err, (name, label, err)
        assert out == "", (name, label, out)
        assert err.endswith("\n") and err.count("\n") == 1, (name, label, err)
        assert err.startswith("obs-backup: error: "), (name, label, err)
        for needle in case.error:
            assert needle in err, (name, label, needle, err)
        # The very line the library gives (asked here after the CLI ran; the library's
        # own refusal is test_hostile_archives' business).
        target, overwrite = runs[label]
        expected = restore_backup(archive, target, overwrite=overwrite, **kwargs).error
        assert err == f"obs-backup: error: {expected}\n", (name, label)

    if verify is not None:
        verify_out, verify_err = verify.communicate(timeout=30)
        report = verify_backup(archive)
        assert "Traceback" not in verify_err and "internal error" not in verify_err, (name, verify_err)
        case.verify(report)
        if report.ok:
            # Only links pointing out: what they are is archived intact, which verify
            # checks; the restore above refused them without --allow-external-links.
            assert verify.returncode == 0, (name, verify_out, verify_err)
            assert verify_out.splitlines() == [report.summary()] and verify_err == "", name
            assert "OK, no checksums" in report.summary()
        else:
            assert verify.returncode == 1, (name, verify_out, verify_err)
            assert verify_out == "", (name, verify_out)
            assert verify_err.splitlines() == [*report.lines(), report.summary()], name
            assert "FAILED" in report.summary()

    assert _state(arena) == before, name
    assert staging_leftovers(arena.root) == []
    assert not arena.fresh.exists()
    assert _file_signature("/etc/passwd") == passwd


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(SPECIAL_CASES))
def test_fifo_and_device_members_through_the_cli(arena: Arena, name: str) -> None:
    """``restore`` of an archive without a manifest holding FIFOs or device nodes exits 0;
    its only output on stderr is one warning line that nothing was verified and one for
    the device nodes it skipped; the FIFOs are made, and nothing is written elsewhere.
    ``verify`` reads it whole and says it is intact, with no checksums to compare."""
    case = SPECIAL_CASES[name]
    archive, kwargs = case.build(arena)
    assert _cli_flags(kwargs) == []
    passwd = _file_signature("/etc/passwd")
    for target in (arena.target, arena.fresh):
        before = _state(arena)
        proc = _start(arena, "restore", str(archive), str(target))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (name, out, err)
        assert "Traceback" not in err and "internal error" not in err, (name, err)
        warnings = [f"{archive}: no manifest; restored without checksum verification"]
        warnings += device_warning(archive, case.devices)
        assert err.splitlines() == [f"obs-backup: warning: {line}" for line in warnings], (name, err)
        count = len(case.files + case.fifos)
        assert out.startswith(f"restored {count} {'entry' if count == 1 else 'entries'} "), (name, out)
        assert f" into {target} (not verified)" in out, (name, out)
        check_special_restore(arena, case, target, before)

    before = _state(arena)
    verify = _start(arena, "verify", str(archive))
    verify_out, verify_err = verify.communicate(timeout=30)
    assert verify.returncode == 0, (name, verify_out, verify_err)
    report = verify_backup(archive)
    assert verify_out.splitlines() == [report.summary()] and verify_err == "", name
    assert report.ok and not report.checksums and report.lines() == []
    assert _state(arena) == before
    assert _file_signature("/etc/passwd") == passwd


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(SPECIAL_CASES))
def test_a_dry_run_says_which_device_nodes_it_would_skip(arena: Arena, name: str) -> None:
    """A dry run lists the device nodes of an archive without a manifest as skipped, not
    as written, and writes nothing."""
    case = SPECIAL_CASES[name]
    archive, _kwargs = case.build(arena)
    before = _state(arena)
    proc = _start(arena, "restore", "--dry-run", str(archive), str(arena.fresh))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (name, out, err)
    skipped = [line for line in out.splitlines() if " skip " in line]
    written = [line for line in out.splitlines() if " write " in line]
    assert len(skipped) == len(case.devices), out
    assert all("device nodes are made only by root" in line for line in skipped)
    assert not any("chardev" in line or "blockdev" in line for line in written), out
    assert len(written) == len(case.files + case.fifos), out
    assert _state(arena) == before and not arena.fresh.exists()
