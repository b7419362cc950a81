"""The command line: sub-commands, JSON output, dry runs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.cli import main
from support.backups import make_backup
from support.cli import run_cli
from support.clock import fixed_now


def _source(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("alpha")
    (root / "b.log").write_text("beta")
    (root / "link").symlink_to("sub/a.txt")
    return root


def _create(capsys: pytest.CaptureFixture[str], source: Path, backups: Path, *extra: str) -> dict:
    code, out, err = run_cli(capsys, "create", str(source), str(backups), "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_create_list_verify_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _source(tmp_path / "src")
    backups = tmp_path / "backups"

    created = _create(capsys, source, backups, "--compression", "zst", "--exclude", "*.log")
    assert created["success"] is True
    assert created["file_count"] == 1
    assert created["path"].endswith(".tar.zst")

    code, out, _ = run_cli(capsys, "list", str(backups), "--json")
    listed = json.loads(out)
    assert code == 0
    assert len(listed) == 1
    assert {"backup_id", "archive_path", "manifest_path", "created_at", "size_bytes", "file_count"} <= set(listed[0])
    assert listed[0]["archive_path"] == created["path"]
    assert listed[0]["size_bytes"] == os.path.getsize(created["path"])
    assert listed[0]["file_count"] == 1

    code, out, _ = run_cli(capsys, "verify", created["path"])
    assert code == 0
    assert "OK, 3 entries, 5 bytes verified" in out

    code, out, err = run_cli(capsys, "restore", created["path"], str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "alpha"
    assert os.readlink(tmp_path / "out" / "link") == "sub/a.txt"
    assert not (tmp_path / "out" / "b.log").exists()


def test_list_text_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "none").mkdir()
    code, out, _ = run_cli(capsys, "list", str(tmp_path / "none"))
    assert (code, out.strip()) == (0, f"no complete backups in {tmp_path / 'none'}")
    created = _create(capsys, _source(tmp_path / "src"), tmp_path / "b")
    code, out, _ = run_cli(capsys, "list", str(tmp_path / "b"))
    assert code == 0
    assert created["backup_id"] in out


def test_list_marks_backups_dated_in_the_future(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A backup made while the clock ran ahead is flagged in the table and in --json."""
    source = _source(tmp_path / "src")
    backups = tmp_path / "b"
    now = datetime.now(UTC)
    past = make_backup(source, backups, now=fixed_now(now - timedelta(days=1))).backup_id
    ahead = make_backup(source, backups, now=fixed_now(now + timedelta(days=365))).backup_id

    code, out, _ = run_cli(capsys, "list", str(backups), "--json")
    assert code == 0
    assert [(row["backup_id"], row["future"]) for row in json.loads(out)] == [(past, False), (ahead, True)]

    code, out, _ = run_cli(capsys, "list", str(backups))
    assert code == 0
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(str(ahead)))
    assert lines[row + 1] == "  warning: dated in the future: kept; check the clock"
    assert sum("dated in the future" in line for line in lines) == 1


def test_create_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _source(tmp_path / "src")

    code, out, _ = run_cli(
        capsys, "create", str(source), str(tmp_path / "b"), "--dry-run", "--exclude", "*.log", "--list"
    )

    assert code == 0
    assert not (tmp_path / "b").exists()
    assert all(line.startswith("(dry run; not making any changes)") for line in out.splitlines())
    assert "exclude b.log: matches exclude pattern '*.log'" in out
    assert "archive file    sub/a.txt" in out


def test_create_dry_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "create", str(_source(tmp_path / "src")), str(tmp_path / "b"), "--dry-run", "--json")

    plan = json.loads(out)
    assert code == 0
    assert plan["dry_run"] is True
    assert plan["file_count"] == 2
    assert plan["total_bytes"] == 9
    assert not (tmp_path / "b").exists()


def test_restore_dry_run_shows_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    created = _create(capsys, _source(tmp_path / "src"), tmp_path / "b")
    target = tmp_path / "t"
    target.mkdir()
    (target / "b.log").write_text("mine")

    code, out, _ = run_cli(capsys, "restore", created["path"], str(target), "--dry-run")

    assert code == 0
    assert "conflict (already exists) b.log" in out
    assert sorted(p.name for p in target.iterdir()) == ["b.log"]
    assert (target / "b.log").read_text() == "mine"


def test_restore_conflict_then_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    created = _create(capsys, _source(tmp_path / "src"), tmp_path / "b")
    target = tmp_path / "t"
    target.mkdir()
    (target / "b.log").write_text("mine")

    code, _, err = run_cli(capsys, "restore", created["path"], str(target))
    assert code == 1
    assert err.count("\n") == 1
    assert "1 entry already exists (b.log)" in err
    assert (target / "b.log").read_text() == "mine"

    code, _, err = run_cli(capsys, "restore", created["path"], str(target), "--overwrite")
    assert code == 0, err
    assert (target / "b.log").read_text() == "beta"


def test_partial_restore_with_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    created = _create(capsys, _source(tmp_path / "src"), tmp_path / "b")

    code, _, err = run_cli(capsys, "restore", created["path"], str(tmp_path / "t"), "--path", "sub")

    assert code == 0, err
    assert sorted(str(p.relative_to(tmp_path / "t")) for p in (tmp_path / "t").rglob("*")) == ["sub", "sub/a.txt"]


def test_verify_names_every_mismatched_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    created = _create(capsys, _source(tmp_path / "src"), tmp_path / "b", "--compression", "none")
    manifest_path = Path(created["manifest_path"])
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["type"] == "file":
            entry["checksum"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))

    code, out, err = run_cli(capsys, "verify", created["path"], "--json")
    report = json.loads(out)

    assert code == 1
    assert sorted(m["path"] for m in report["mismatched"]) == ["b.log", "sub/a.txt"]
    code, out, err = run_cli(capsys, "verify", created["path"])
    assert code == 1
    assert "mismatch: b.log" in err and "mismatch: sub/a.txt" in err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "create", "--compression", "lz4", "a", "b")[0] == 2
    assert run_cli(capsys, "frobnicate")[0] == 2
    assert run_cli(capsys)[0] == 2
    code, _, err = run_cli(capsys, "create", str(_source(tmp_path / "s")), str(tmp_path / "b"), "--prefix", "../evil")
    assert code == 2
    assert "invalid prefix '../evil'" in err


def test_failures_exit_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "create", str(tmp_path / "missing"), str(tmp_path / "b"))
    assert code == 1
    assert err == f"obs-backup: error: {tmp_path / 'missing'}: source directory does not exist\n"

    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"this is not an archive")
    code, _, err = run_cli(capsys, "restore", str(not_tar), str(tmp_path / "t"))
    assert code == 1
    assert "not a valid tar archive" in err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("command", ["create", "restore", "verify", "list"])
def test_help_for_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: obs-backup " + command in capsys.readouterr().out


def test_python_dash_m_and_no_traceback(tmp_path: Path) -> None:
    """Run as a real process: ``python -m backup`` works and errors are one line."""
    run = subprocess.run(
        [sys.executable, "-m", "backup", "verify", str(tmp_path / "missing.tar.gz")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr == f"obs-backup: error: {tmp_path / 'missing.tar.gz'}: archive not found\n"


def test_no_progress_bar_when_not_a_terminal(tmp_path: Path) -> None:
    source = _source(tmp_path / "src")
    run = subprocess.run(
        [sys.executable, "-m", "backup", "create", str(source), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0
    assert run.stderr == ""
    assert run.stdout.startswith("created ")
    assert "\x1b[" not in run.stdout


def test_backup_dir_made_by_the_cli_is_private_whatever_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock is taken before the backup is written, so the lock must not create the
    directory with the umask's mode either."""
    previous = os.umask(0)
    try:
        code, _, err = run_cli(capsys, "create", str(_source(tmp_path / "src")), str(tmp_path / "new" / "backups"))
    finally:
        os.umask(previous)
    assert code == 0, err
    assert (tmp_path / "new" / "backups").stat().st_mode & 0o777 == 0o700


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal (a pseudo-terminal here), create draws a progress bar
    there, and stdout still carries only the result line."""
    import pty

    source = _source(tmp_path / "src")
    (source / "big.bin").write_bytes(os.urandom(4 << 20))
    leader, follower = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "backup", "create", str(source), str(tmp_path / "b")],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            check=False,
            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO once the writer side is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert run.returncode == 0
    assert run.stdout.startswith("created ")
    assert b"backing up" in drawn
    assert b"\r" in drawn and b" / 4.0 MiB" in drawn  # a bar redrawn in place, with the total
