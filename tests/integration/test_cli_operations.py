"""The ``obs-backup`` command line driven end to end on real directories: choosing a
backup (``latest``, an id, a manifest path, the environment), selective restores,
exclude patterns and their warnings, exit codes, monitoring files, verify, list, ls,
diff, check, the schedule's start-up checks, messages and logging.

Commands run in this process through ``backup.cli.main`` (``run_cli``); a real process
only where one is needed (what a hook's child writes to the real stdout).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import backup.cli
from backup.fstree import LOCAL_FILESYSTEM
from backup.monitor import STATE_NAME
from shared.time_helpers import system_zone_name
from support.backups import make_backup
from support.cli import run_cli
from support.clock import fixed_now
from support.sources import RefusingFileSystem

from .conftest import GNU_TAR, SRC, set_mtime

ERROR = "obs-backup: error: "
WARNING = "obs-backup: warning: "
DAY = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
ISO_HOOK_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d INFO backup.hooks: before_backup: hello-from-hook$"
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a backup directory or config file from the environment it runs in."""
    monkeypatch.delenv("OBS_BACKUP_DIR", raising=False)
    monkeypatch.delenv("OBS_BACKUP_CONFIG", raising=False)


# -- helpers ---------------------------------------------------------------------------------


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Given a directory and ``{relative path: text}``, write the files (and their
    directories); return the directory."""
    root.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


TREE = {
    "top.txt": "top\n",
    "docs/a.txt": "a\n",
    "docs/b.log": "b\n",
    "logs/x.log": "x\n",
    "logs/y.txt": "y\n",
    "deep/inner/keep.txt": "keep\n",
}


def made(source: Path, backups: Path, day: int = 0, **config: Any) -> str:
    """Make a backup of ``source`` dated ``day`` days after DAY through the library;
    return its id."""
    result = make_backup(source, backups, now=fixed_now(DAY + timedelta(days=day)), **config)
    assert result.backup_id is not None
    return result.backup_id


def archive_of(backups: Path, backup_id: str) -> Path:
    """Return the archive of a backup (whatever its compression)."""
    (path,) = [backups / name for name in os.listdir(backups) if name.startswith(backup_id + ".tar")]
    return path


def archives_in(backups: Path) -> list[str]:
    return sorted(name for name in os.listdir(backups) if ".tar" in name) if backups.exists() else []


def tree(root: Path) -> dict[str, str | None]:
    """Return ``{relative path: text (None for a directory)}`` of everything under ``root``."""
    found: dict[str, str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = Path(path).read_text()
    return found


def member_names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tf:
        return sorted(name.removeprefix("./") for name in tf.getnames() if name not in (".", "./"))


def lines(text: str) -> list[str]:
    return text.splitlines()


def metrics(path: Path) -> dict[str, float]:
    """Return the Prometheus file's samples by metric name (prefix label dropped)."""
    samples = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name.split("{", 1)[0]] = float(value)
    return samples


def state(backups: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((backups / STATE_NAME).read_text())
    return data


def flip_middle_byte(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def gnu_tar(archive: Path, source: Path) -> Path:
    subprocess.run([GNU_TAR, "-czf", str(archive), "-C", str(source), "."], check=True, capture_output=True)
    return archive


@pytest.fixture
def no_scheduler(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Replace ``asyncio.run`` as the command line sees it: the scheduler never runs;
    return the list of coroutines it was asked to run."""
    started: list[object] = []

    def run(coroutine: Any) -> None:
        started.append(coroutine)
        coroutine.close()

    monkeypatch.setattr(backup.cli.asyncio, "run", run)
    return started


# -- 1. choosing the backup to restore --------------------------------------------------------


@pytest.fixture
def two_backups(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Two backups of one source a day apart, each with different content in the file
    ``which``: return the source, the backup directory and the two ids, oldest first."""
    source = write_files(tmp_path / "source", {"which": "old\n"})
    backups = tmp_path / "backups"
    old = made(source, backups, 0)
    (source / "which").write_text("new\n")
    new = made(source, backups, 1)
    return source, backups, old, new


def test_restore_latest_restores_the_newest_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    _, backups, _, _ = two_backups
    code, out, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "new\n"}
    assert out.startswith(f"restored 1 entry into {tmp_path / 't'} (verified against the manifest), ")


def test_restore_of_a_backup_id_restores_that_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    _, backups, old, _ = two_backups
    code, _, err = run_cli(capsys, "restore", old, str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "old\n"}


def test_restore_of_a_manifest_path_restores_its_archive_without_a_backup_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    _, backups, old, _ = two_backups
    code, _, err = run_cli(capsys, "restore", str(backups / f"{old}.manifest.json"), str(tmp_path / "t"))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "old\n"}


def test_latest_never_picks_a_foreign_file_named_like_a_newer_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    """A GNU tar archive and a file of random bytes, both named as backups of 2099."""
    _, backups, _, _ = two_backups
    gnu_tar(backups / "backup_20990101_000000.tar.gz", write_files(tmp_path / "other", {"which": "foreign\n"}))
    (backups / "backup_20990102_000000.tar.gz").write_bytes(random.Random(1).randbytes(4096))
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "new\n"}


def test_latest_in_a_directory_of_only_foreign_files_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backups = tmp_path / "backups"
    gnu_tar(write_files(backups, {}) / "backup_20990101_000000.tar.gz", write_files(tmp_path / "other", TREE))
    code, out, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(ERROR) and str(backups) in err
    assert not (tmp_path / "t").exists()


def test_latest_in_an_empty_directory_is_one_usage_error_line_naming_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backups = tmp_path / "empty"
    backups.mkdir()
    code, out, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, out) == (2, "")
    assert err == f"{ERROR}{backups}: no complete backups; 'latest' names none\n"
    assert not (tmp_path / "t").exists()


def test_an_id_that_is_not_in_the_backup_dir_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    _, backups, _, _ = two_backups
    code, out, err = run_cli(
        capsys, "restore", "backup_20200101_000000", str(tmp_path / "t"), "--backup-dir", str(backups)
    )
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(f"{ERROR}backup_20200101_000000: ")
    assert not (tmp_path / "t").exists()


def test_latest_without_a_backup_dir_is_a_usage_error_that_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "restore", "latest", "t")
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(ERROR) and "--backup-dir" in err
    assert not (tmp_path / "t").exists()


def test_obs_backup_dir_in_the_environment_stands_for_backup_dir(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    two_backups: tuple[Path, Path, str, str],
) -> None:
    _, backups, old, _ = two_backups
    monkeypatch.setenv("OBS_BACKUP_DIR", str(backups))
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "new\n"}
    code, _, err = run_cli(capsys, "restore", old, str(tmp_path / "t2"))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t2") == {"which": "old\n"}


def test_obs_backup_config_names_the_config_file_and_config_wins_over_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_files(tmp_path / "source", {"f.txt": "f\n"})
    from_env = tmp_path / "env-backups"
    from_flag = tmp_path / "flag-backups"
    env_file = tmp_path / "env.toml"
    env_file.write_text(f'source = "{source}"\nbackup_dir = "{from_env}"\n')
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text(f'source = "{source}"\nbackup_dir = "{from_flag}"\n')
    monkeypatch.setenv("OBS_BACKUP_CONFIG", str(env_file))

    code, _, err = run_cli(capsys, "create")
    assert (code, err) == (0, "")
    assert len(archives_in(from_env)) == 1 and not from_flag.exists()

    code, _, err = run_cli(capsys, "--config", str(flag_file), "create")
    assert (code, err) == (0, "")
    assert len(archives_in(from_env)) == 1 and len(archives_in(from_flag)) == 1

    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"))  # backup_dir from $OBS_BACKUP_CONFIG
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"f.txt": "f\n"}


# -- 2. restore --include / --exclude -----------------------------------------------------------


@pytest.fixture
def patterned(tmp_path: Path) -> tuple[Path, str]:
    """A backup (with its manifest) of TREE; return the backup directory and its id."""
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    return backups, made(source, backups)


def restore_selected(
    capsys: pytest.CaptureFixture[str], backups: Path, backup_id: str, target: Path, *patterns: str
) -> tuple[int, str, str]:
    return run_cli(capsys, "restore", backup_id, str(target), "--backup-dir", str(backups), *patterns)


def test_restore_include_restores_only_matching_files_and_creates_their_ancestors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    code, out, err = restore_selected(capsys, *patterned, tmp_path / "t", "--include", "*.txt")
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {
        "top.txt": "top\n",
        "docs": None,
        "docs/a.txt": "a\n",
        "logs": None,
        "logs/y.txt": "y\n",
        "deep": None,
        "deep/inner": None,
        "deep/inner/keep.txt": "keep\n",
    }
    assert out.startswith(f"restored 4 entries into {tmp_path / 't'} (verified against the manifest), ")


def test_restore_include_of_a_directory_restores_everything_under_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    code, out, err = restore_selected(capsys, *patterned, tmp_path / "t", "--include", "docs/")
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"docs": None, "docs/a.txt": "a\n", "docs/b.log": "b\n"}
    assert "(verified against the manifest)" in out


def test_restore_exclude_of_a_directory_leaves_out_it_and_its_contents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    code, out, err = restore_selected(capsys, *patterned, tmp_path / "t", "--exclude", "logs/")
    assert (code, err) == (0, "")
    restored = tree(tmp_path / "t")
    assert not any(path == "logs" or path.startswith("logs/") for path in restored)
    assert restored == {
        "top.txt": "top\n",
        "docs": None,
        "docs/a.txt": "a\n",
        "docs/b.log": "b\n",
        "deep": None,
        "deep/inner": None,
        "deep/inner/keep.txt": "keep\n",
    }
    assert "(verified against the manifest)" in out


def test_restore_include_and_exclude_are_repeatable_and_combine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    code, _, err = restore_selected(
        capsys,
        *patterned,
        tmp_path / "t",
        "--include",
        "docs/",
        "--include",
        "/top.txt",
        "--exclude",
        "*.log",
        "--exclude",
        "deep/",
    )
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"top.txt": "top\n", "docs": None, "docs/a.txt": "a\n"}


@pytest.mark.parametrize(
    "patterns", [("--include", "nothing-here/"), ("--include", "*.log", "--exclude", "*.log")], ids=["include", "both"]
)
def test_restore_patterns_matching_nothing_in_a_backup_with_a_manifest_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str], patterns: tuple[str, ...]
) -> None:
    code, out, err = restore_selected(capsys, *patterned, tmp_path / "t", *patterns)
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(ERROR) and "--include" in err
    assert not (tmp_path / "t").exists()


def test_restore_include_works_on_a_backup_without_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    backup_id = made(source, backups, include_manifest=False)
    code, out, err = run_cli(
        capsys, "restore", str(archive_of(backups, backup_id)), str(tmp_path / "t"), "--include", "docs/"
    )
    assert code == 0
    assert tree(tmp_path / "t") == {"docs": None, "docs/a.txt": "a\n", "docs/b.log": "b\n"}
    assert "no manifest; restored without checksum verification" in err
    assert out.startswith(f"restored 3 entries into {tmp_path / 't'} (not verified), ")


def test_restore_exclude_works_on_a_gnu_tar_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = gnu_tar(tmp_path / "theirs.tar.gz", write_files(tmp_path / "source", TREE))
    code, out, _ = run_cli(
        capsys, "restore", str(archive), str(tmp_path / "t"), "--exclude", "*.log", "--exclude", "deep/"
    )
    assert code == 0
    assert tree(tmp_path / "t") == {
        "top.txt": "top\n",
        "docs": None,
        "docs/a.txt": "a\n",
        "logs": None,
        "logs/y.txt": "y\n",
    }
    assert "(not verified)" in out


# -- 3. create --exclude and the config file's exclude --------------------------------------------


def test_create_exclude_adds_to_the_config_files_exclude(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    config = tmp_path / "c.toml"
    config.write_text('exclude = ["*.log"]\n')
    code, _, err = run_cli(capsys, "--config", str(config), "create", str(source), str(backups), "--exclude", "deep/")
    assert (code, err) == (0, "")
    (archive,) = archives_in(backups)
    assert member_names(backups / archive) == ["docs", "docs/a.txt", "logs", "logs/y.txt", "top.txt"]


def test_an_exclude_pattern_that_matches_nothing_is_a_one_line_warning_and_exit_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--exclude", "no-such-thing")
    assert code == 0
    assert err == f"{WARNING}exclude pattern 'no-such-thing' matched nothing in {source.resolve()}\n"
    assert out.startswith("created ")


def test_an_absolute_exclude_pattern_inside_the_source_gets_a_warning_suggesting_the_relative_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE).resolve()
    code, _, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--exclude", f"{source}/logs")
    assert code == 0
    (line,) = lines(err)
    assert line.startswith(f"{WARNING}exclude pattern '{source}/logs' matched nothing")
    assert line.endswith("so write '/logs'")


def test_dry_run_shows_the_exclude_pattern_warnings_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_files(tmp_path / "source", TREE).resolve()
    backups = tmp_path / "b"
    code, out, err = run_cli(
        capsys, "create", str(source), str(backups), "--dry-run", "--exclude", "nope", "--exclude", f"{source}/logs"
    )
    assert code == 0
    shown = out + err
    assert f"exclude pattern 'nope' matched nothing in {source}" in shown
    assert "so write '/logs'" in shown
    assert not backups.exists()


# -- 4. exit code 3: a backup that completed with warnings ------------------------------------------


def test_a_clean_backup_exits_zero_without_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_files(tmp_path / "source", TREE)
    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"))
    assert (code, err) == (0, "")
    assert "warning" not in out


def test_a_socket_in_the_source_is_left_out_with_a_warning_and_exit_three(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "s", {"f.txt": "f\n"})
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "sock"))
        code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"))
    assert code == 3
    assert lines(err) == [
        f"{WARNING}{source.resolve() / 'sock'}: is a socket; not archived (sockets cannot be restored)"
    ]
    assert out.rstrip("\n").endswith("; completed with 1 warning (above)")
    (archive,) = archives_in(tmp_path / "b")
    assert member_names(tmp_path / "b" / archive) == ["f.txt"]


def test_an_unreadable_file_skipped_with_skip_unreadable_exits_three(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the file system the command line reads through refuses to open
    one file (as root, permission bits would not)."""
    source = write_files(tmp_path / "source", TREE)
    victim = source / "docs" / "a.txt"
    monkeypatch.setattr(LOCAL_FILESYSTEM, "open_file", RefusingFileSystem(victim).open_file)
    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--skip-unreadable")
    assert code == 3
    (warning,) = lines(err)
    assert warning.startswith(WARNING) and str(victim.resolve()) in warning
    assert out.rstrip("\n").endswith("; completed with 1 warning (above)")
    (archive,) = archives_in(tmp_path / "b")
    assert "docs/a.txt" not in member_names(tmp_path / "b" / archive)


def test_two_warnings_are_counted_in_the_plural(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_files(tmp_path / "source", TREE)
    monkeypatch.setattr(LOCAL_FILESYSTEM, "open_file", RefusingFileSystem(source / "top.txt").open_file)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "sock"))
        code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--skip-unreadable")
    assert code == 3
    assert len(lines(err)) == 2
    assert out.rstrip("\n").endswith("; completed with 2 warnings (above)")


def test_an_unreadable_file_without_skip_unreadable_fails_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_files(tmp_path / "source", TREE)
    monkeypatch.setattr(LOCAL_FILESYSTEM, "open_file", RefusingFileSystem(source / "top.txt").open_file)
    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"))
    assert (code, out) == (1, "")
    assert err.startswith(ERROR) and len(lines(err)) == 1
    assert archives_in(tmp_path / "b") == []


# -- 5. monitoring from create and prune ---------------------------------------------------------


def test_create_writes_the_metrics_file_and_the_state_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    metrics_file = tmp_path / "m" / "obs.prom"
    metrics_file.parent.mkdir()
    code, _, err = run_cli(capsys, "create", str(source), str(backups), "--metrics-file", str(metrics_file))
    assert (code, err) == (0, "")
    assert stat.S_IMODE(metrics_file.stat().st_mode) == 0o644
    samples = metrics(metrics_file)
    assert samples["obs_backup_last_run_success"] == 1.0
    assert samples["obs_backup_last_run_warnings"] == 0.0
    assert samples["obs_backup_last_files"] == 6.0
    assert 'prefix="backup"' in metrics_file.read_text()
    last_run = state(backups)["backup"]["last_run"]
    (archive,) = archives_in(backups)
    assert last_run["success"] is True
    assert last_run["backup_id"] == archive.removesuffix(".tar.gz")
    assert last_run["file_count"] == 6


def test_create_with_warnings_records_them_in_the_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_files(tmp_path / "source", {"f.txt": "f\n"})
    metrics_file = tmp_path / "obs.prom"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "sock"))
        code, _, _ = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--metrics-file", str(metrics_file))
    assert code == 3
    samples = metrics(metrics_file)
    assert (samples["obs_backup_last_run_success"], samples["obs_backup_last_run_warnings"]) == (1.0, 1.0)
    assert samples["obs_backup_last_files"] == 1.0


def test_a_failing_create_records_its_failure_when_the_backup_dir_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    metrics_file = tmp_path / "obs.prom"
    code, _, err = run_cli(
        capsys, "create", str(tmp_path / "missing"), str(backups), "--metrics-file", str(metrics_file)
    )
    assert code == 1 and err.startswith(ERROR)
    last_run = state(backups)["backup"]["last_run"]
    assert last_run["success"] is False and last_run["error"]
    assert "last_success" not in state(backups)["backup"]
    assert metrics(metrics_file)["obs_backup_last_run_success"] == 0.0


def test_prune_records_the_prune_in_the_state_and_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    old, new = made(source, backups, 0), made(source, backups, 1)
    metrics_file = tmp_path / "obs.prom"
    code, out, err = run_cli(capsys, "prune", str(backups), "--keep-last", "1", "--metrics-file", str(metrics_file))
    assert (code, err) == (0, "")
    assert f"remove {old}" in out
    assert [name for name in archives_in(backups)] == [f"{new}.tar.gz"]
    last_prune = state(backups)["backup"]["last_prune"]
    assert (last_prune["success"], last_prune["removed"], last_prune["kept"]) == (True, 1, 1)
    assert metrics(metrics_file)["obs_backup_last_prune_removed"] == 1.0


def test_prune_dry_run_writes_no_state_and_no_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    made(source, backups, 0), made(source, backups, 1)
    before = {name: (backups / name).read_bytes() for name in os.listdir(backups)}
    metrics_file = tmp_path / "obs.prom"
    code, out, err = run_cli(
        capsys, "prune", str(backups), "--keep-last", "1", "--dry-run", "--metrics-file", str(metrics_file)
    )
    assert (code, err) == (0, "")
    assert "would remove 1 backup" in out
    assert {name: (backups / name).read_bytes() for name in os.listdir(backups)} == before
    assert not metrics_file.exists()


# -- 6. verify --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["id", "latest", "manifest"])
def test_verify_of_a_good_backup_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str], how: str
) -> None:
    backups, backup_id = patterned
    argv = {
        "id": [backup_id, "--backup-dir", str(backups)],
        "latest": ["latest", "--backup-dir", str(backups)],
        "manifest": [str(backups / f"{backup_id}.manifest.json")],
    }[how]
    code, out, err = run_cli(capsys, "verify", *argv)
    assert (code, err) == (0, "")
    assert lines(out) == [f"{archive_of(backups, backup_id)}: OK, 10 entries, 17 bytes verified"]


@pytest.mark.parametrize("compression", ["none", "gz"])
def test_verify_of_a_truncated_archive_gives_the_root_cause_then_one_line_for_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compression: str
) -> None:
    rng = random.Random(7)
    source = tmp_path / "source"
    source.mkdir()
    for number in range(50):
        (source / f"f{number:02}.bin").write_bytes(rng.randbytes(2000))
    backups = tmp_path / "backups"
    backup_id = made(source, backups, compression="" if compression == "none" else compression)
    archive = archive_of(backups, backup_id)
    os.truncate(archive, archive.stat().st_size // 2)

    code, out, err = run_cli(capsys, "verify", backup_id, "--backup-dir", str(backups))
    assert (code, out) == (1, "")
    cause, rest, summary = lines(err)
    assert "truncated at byte" in cause
    match = re.fullmatch(r"(\d+) files and directories of the manifest not found before that point", rest)
    assert match is not None, rest
    missing = int(match[1])
    assert 1 < missing < 50
    assert summary.startswith(f"{archive}: FAILED, unreadable after ")
    assert summary.endswith(f", {missing} missing")


def test_verify_of_a_backup_without_a_manifest_says_no_checksums(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    backup_id = made(source, backups, include_manifest=False)
    code, out, err = run_cli(capsys, "verify", backup_id, "--backup-dir", str(backups))
    assert (code, err) == (0, "")
    assert "OK, no checksums" in out


def test_verify_of_a_manifest_whose_archive_is_missing_says_archive_not_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    backups, backup_id = patterned
    archive_of(backups, backup_id).unlink()
    code, out, err = run_cli(capsys, "verify", str(backups / f"{backup_id}.manifest.json"))
    assert (code, out) == (1, "")
    assert len(lines(err)) == 1 and err.startswith(ERROR) and "archive not found" in err


# -- 7. list, and failures with --json ---------------------------------------------------------


def test_list_of_a_missing_directory_is_one_line_naming_its_absolute_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "list", "nowhere")
    assert (code, out) == (1, "")
    assert err == f"{ERROR}{tmp_path / 'nowhere'}: backup directory does not exist\n"


JSON_FAILURES: dict[str, tuple[list[str], int]] = {
    "create of a missing source": (["create", "missing-source", "backups"], 1),
    "restore of a missing archive": (["restore", "missing.tar.gz", "target"], 1),
    "verify of a missing backup": (["verify", "backup_20200101_000000", "--backup-dir", "backups"], 2),
    "verify of a missing archive path": (["verify", "missing.tar.gz"], 1),
    "list of a missing dir": (["list", "missing-dir"], 1),
    "prune without policy": (["prune", "backups"], 2),
    "an unknown option": (["list", "backups", "--no-such-option"], 2),
}


@pytest.mark.parametrize("case", list(JSON_FAILURES))
def test_a_failure_with_json_prints_a_json_object_with_the_error_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    argv, expected = JSON_FAILURES[case]
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path / "backups", {})
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == expected
    reported = json.loads(out)
    assert {"success", "error", "exit_code"} <= set(reported)
    assert (reported["success"], reported["exit_code"]) == (False, expected)
    assert f"{ERROR}{reported['error']}" in lines(err)


@pytest.fixture
def relative_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, with a source ``src`` there; return tmp_path."""
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path / "src", TREE)
    return tmp_path


def test_create_json_paths_are_absolute_when_relative_ones_were_given(
    relative_backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "create", "src", "bk", "--json")
    assert code == 0
    result = json.loads(out)
    (archive,) = archives_in(relative_backup / "bk")
    assert result["path"] == str(relative_backup / "bk" / archive)
    assert result["manifest_path"] == str(relative_backup / "bk" / archive.replace(".tar.gz", ".manifest.json"))


def test_restore_json_paths_are_absolute_when_relative_ones_were_given(
    relative_backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_id = made(relative_backup / "src", relative_backup / "bk")
    code, out, _ = run_cli(capsys, "restore", "latest", "t", "--backup-dir", "bk", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["path"] == str(relative_backup / "t")
    assert result["manifest_path"] == str(relative_backup / "bk" / f"{backup_id}.manifest.json")


def test_list_json_paths_are_absolute_when_a_relative_dir_was_given(
    relative_backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_id = made(relative_backup / "src", relative_backup / "bk")
    code, out, _ = run_cli(capsys, "list", "bk", "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["archive_path"] == str(relative_backup / "bk" / f"{backup_id}.tar.gz")
    assert listed["manifest_path"] == str(relative_backup / "bk" / f"{backup_id}.manifest.json")


# -- 8. ls ------------------------------------------------------------------------------------------


LS_NAMES = [
    "deep/",
    "deep/inner/",
    "deep/inner/keep.txt",
    "docs/",
    "docs/a.txt",
    "docs/b.log",
    "logs/",
    "logs/x.log",
    "logs/y.txt",
    "top.txt",
]


@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
@pytest.mark.parametrize("how", ["id", "manifest path"])
def test_ls_lists_the_manifests_entries_without_reading_the_archive(
    capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str], damage: str, how: str
) -> None:
    backups, backup_id = patterned
    archive = archive_of(backups, backup_id)
    if damage == "corrupted":
        archive.write_bytes(b"not an archive any more")
    else:
        archive.unlink()
    if how == "id":
        argv = [backup_id, "--backup-dir", str(backups)]
    else:
        argv = [str(backups / f"{backup_id}.manifest.json")]
    code, out, err = run_cli(capsys, "ls", *argv)
    assert (code, err) == (0, "")
    *entries, summary = lines(out)
    assert [line.split("  ")[-1] for line in entries] == LS_NAMES
    assert summary == f"{backup_id}: 6 files, 10 entries, 17 B"


def test_ls_json_gives_the_entries(capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]) -> None:
    backups, backup_id = patterned
    code, out, _ = run_cli(capsys, "ls", "latest", "--backup-dir", str(backups), "--json")
    assert code == 0
    listed = json.loads(out)
    assert (listed["success"], listed["backup_id"]) == (True, backup_id)
    by_path = {entry["path"]: entry for entry in listed["entries"]}
    assert len(by_path) == 10
    assert (by_path["docs/a.txt"]["type"], by_path["docs/a.txt"]["size"]) == ("file", 2)
    assert by_path["deep/inner"]["type"] == "dir"


def test_ls_of_a_backup_without_a_manifest_is_one_error_line_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    backup_id = made(source, backups, include_manifest=False)
    code, out, err = run_cli(capsys, "ls", backup_id, "--backup-dir", str(backups))
    assert code in (1, 2) and out == ""
    assert len(lines(err)) == 1 and err.startswith(ERROR) and "has no manifest" in err


# -- 9. diff --------------------------------------------------------------------------------------


@pytest.fixture
def changed_backups(tmp_path: Path) -> tuple[Path, str, str]:
    """Two backups between which one file was added, one removed, one's content changed
    and one's mode: return the backup directory and their ids."""
    source = write_files(
        tmp_path / "source", {"same.txt": "same\n", "gone.txt": "gone\n", "edit.txt": "one\n", "mode.txt": "mode\n"}
    )
    for name in os.listdir(source):
        set_mtime(source / name, 1_600_000_000)
    os.chmod(source / "mode.txt", 0o644)
    backups = tmp_path / "backups"
    first = made(source, backups, 0)
    (source / "new.txt").write_text("new\n")
    (source / "gone.txt").unlink()
    (source / "edit.txt").write_text("two\n")
    set_mtime(source / "edit.txt", 1_600_000_000)
    os.chmod(source / "mode.txt", 0o600)
    second = made(source, backups, 1)
    return backups, first, second


def test_diff_shows_added_removed_and_changed_entries_with_a_summary(
    capsys: pytest.CaptureFixture[str], changed_backups: tuple[Path, str, str]
) -> None:
    backups, first, second = changed_backups
    code, out, err = run_cli(capsys, "diff", first, second, "--backup-dir", str(backups))
    assert (code, err) == (0, "")
    assert lines(out) == [
        "M edit.txt (content)",
        "- gone.txt",
        "M mode.txt (mode)",
        "+ new.txt",
        f"{first} -> {second}: 1 added, 1 removed, 2 changed",
    ]


@pytest.mark.parametrize("how", ["ids", "manifest paths"])
def test_diff_reads_only_the_manifests(
    capsys: pytest.CaptureFixture[str], changed_backups: tuple[Path, str, str], how: str
) -> None:
    """Both archives deleted: the manifests say everything diff shows."""
    backups, first, second = changed_backups
    archive_of(backups, first).unlink()
    archive_of(backups, second).unlink()
    if how == "ids":
        argv = [first, second, "--backup-dir", str(backups)]
    else:
        argv = [str(backups / f"{first}.manifest.json"), str(backups / f"{second}.manifest.json")]
    code, out, err = run_cli(capsys, "diff", *argv)
    assert (code, err) == (0, "")
    assert lines(out)[-1] == f"{first} -> {second}: 1 added, 1 removed, 2 changed"


def test_diff_json_gives_added_removed_and_changed(
    capsys: pytest.CaptureFixture[str], changed_backups: tuple[Path, str, str]
) -> None:
    backups, first, second = changed_backups
    code, out, _ = run_cli(capsys, "diff", first, second, "--backup-dir", str(backups), "--json")
    assert code == 0
    found = json.loads(out)
    found["changed"] = sorted(found["changed"], key=lambda item: item["path"])
    assert found == {
        "success": True,
        "from": first,
        "to": second,
        "added": ["new.txt"],
        "removed": ["gone.txt"],
        "changed": [{"path": "edit.txt", "what": ["content"]}, {"path": "mode.txt", "what": ["mode"]}],
    }


# -- 10. check --------------------------------------------------------------------------------------


@pytest.fixture
def checked(tmp_path: Path) -> tuple[Path, str, str]:
    """Two uncompressed backups of a 200 kB file; return the directory and their ids."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.bin").write_bytes(random.Random(3).randbytes(200_000))
    backups = tmp_path / "backups"
    return backups, made(source, backups, 0, compression=""), made(source, backups, 1, compression="")


def test_check_of_good_backups_exits_zero_with_a_summary(
    capsys: pytest.CaptureFixture[str], checked: tuple[Path, str, str]
) -> None:
    backups, first, second = checked
    code, out, err = run_cli(capsys, "check", str(backups))
    assert (code, err) == (0, "")
    assert lines(out)[-1] == f"{backups}: 2 backups checked: 2 OK; data not read"
    assert first in out and second in out


def test_check_names_a_truncated_archive_and_exits_one(
    capsys: pytest.CaptureFixture[str], checked: tuple[Path, str, str]
) -> None:
    backups, first, _ = checked
    archive = archive_of(backups, first)
    os.truncate(archive, archive.stat().st_size // 2)
    code, out, err = run_cli(capsys, "check", str(backups))
    assert (code, out) == (1, "")
    (damaged,) = [line for line in lines(err) if line.startswith(first)]
    assert "ok" not in damaged.split()
    assert "1 damaged" in lines(err)[-1]


def test_check_read_data_finds_a_flipped_byte_the_structural_check_does_not(
    capsys: pytest.CaptureFixture[str], checked: tuple[Path, str, str]
) -> None:
    backups, first, _ = checked
    flip_middle_byte(archive_of(backups, first))
    code, _, err = run_cli(capsys, "check", str(backups))
    assert (code, err) == (0, "")
    code, out, err = run_cli(capsys, "check", str(backups), "--read-data")
    assert (code, out) == (1, "")
    assert any(line.startswith(first) for line in lines(err))
    assert "1 damaged" in lines(err)[-1]


def test_check_read_data_subset_zero_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], checked: tuple[Path, str, str]
) -> None:
    code, out, err = run_cli(capsys, "check", str(checked[0]), "--read-data-subset", "0/7")
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(ERROR) and "0/7" in err


def test_check_of_a_missing_directory_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check", str(tmp_path / "nowhere"))
    assert (code, out) == (1, "")
    assert err == f"{ERROR}{tmp_path / 'nowhere'}: backup directory does not exist\n"


# -- 11. schedule's start-up checks, and --help ------------------------------------------------------


@pytest.fixture
def short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that paths given are short; return it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_schedule_starts_the_scheduler_when_every_check_passes(
    short: Path, capsys: pytest.CaptureFixture[str], no_scheduler: list[object]
) -> None:
    """The control for the refusals below: the same command with good paths starts."""
    write_files(short / "s", {"f": "f\n"})
    code, out, err = run_cli(capsys, "schedule", "s", "b", "--metrics-file", "m.prom", "--tz", "UTC")
    assert (code, out) == (0, "")
    assert len(no_scheduler) == 1
    assert err.startswith(f"obs-backup: scheduling {short / 's'} -> {short / 'b'} daily at 03:00 UTC")


def test_schedule_refuses_a_missing_source_and_makes_no_backup_dir(
    short: Path, capsys: pytest.CaptureFixture[str], no_scheduler: list[object]
) -> None:
    code, out, err = run_cli(capsys, "schedule", "s", "b")
    assert (code, out) == (2, "")
    assert err == f"{ERROR}{short / 's'}: source directory does not exist\n"
    assert not (short / "b").exists()
    assert no_scheduler == []


def test_schedule_refuses_a_backup_dir_whose_parent_is_a_file(
    short: Path, capsys: pytest.CaptureFixture[str], no_scheduler: list[object]
) -> None:
    write_files(short, {"s/f": "f\n", "file": "x\n"})
    code, out, err = run_cli(capsys, "schedule", "s", "file/b")
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(f"{ERROR}{short / 'file'}")
    assert no_scheduler == []


def test_schedule_refuses_a_metrics_file_in_a_missing_directory(
    short: Path, capsys: pytest.CaptureFixture[str], no_scheduler: list[object]
) -> None:
    write_files(short, {"s/f": "f\n"})
    code, out, err = run_cli(capsys, "schedule", "s", "b", "--metrics-file", "nodir/m.prom")
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and err.startswith(ERROR) and "metrics" in err
    assert not (short / "nodir").exists()
    assert no_scheduler == []


@pytest.mark.parametrize("command", ["schedule", "prune"])
def test_help_shows_the_system_zone_as_the_default_of_tz(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run_cli(capsys, command, "--help")
    assert (code, err) == (0, "")
    collapsed = " ".join(out.split())
    tz_help = collapsed[collapsed.index("--tz ZONE IANA") :].split(" --", 2)[0]
    assert tz_help.endswith(f"(default: {system_zone_name()})"), tz_help


# -- 12. messages ----------------------------------------------------------------------------------


def test_a_backup_and_a_restore_of_one_file_say_so_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", {"only.txt": "only\n"})
    backups = tmp_path / "b"
    code, out, _ = run_cli(capsys, "create", str(source), str(backups))
    assert code == 0
    assert re.match(r"^created \S+: 1 file, 5 B read, ", out), out
    code, out, _ = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert code == 0
    assert out.startswith(f"restored 1 entry into {tmp_path / 't'} ")


def test_a_dry_run_restore_into_a_directory_with_conflicts_ends_telling_to_give_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    backups, backup_id = patterned
    write_files(tmp_path / "t", {"top.txt": "mine\n", "docs/a.txt": "mine\n"})
    code, out, err = run_cli(
        capsys, "restore", backup_id, str(tmp_path / "t"), "--backup-dir", str(backups), "--dry-run"
    )
    assert (code, err) == (0, "")
    assert "2 entries already exist" in lines(out)[-1]
    assert "give --overwrite" in lines(out)[-1]
    assert (tmp_path / "t" / "top.txt").read_text() == "mine\n"


def staging_words(text: str) -> list[str]:
    return re.findall(r"\.obs-(?:restore|replaced|held|old)\S*", text)


def test_a_refused_external_symlink_names_the_option_and_no_staging_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", {"f.txt": "f\n"})
    os.symlink("/etc/passwd", source / "outside")
    backups = tmp_path / "b"
    made(source, backups)
    code, out, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, out) == (1, "")
    assert "--allow-external-links" in err
    assert staging_words(err) == []
    assert sorted(os.listdir(tmp_path)) == ["b", "source"]


def test_a_restore_that_fails_verification_names_no_staging_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checked: tuple[Path, str, str]
) -> None:
    backups, first, _ = checked
    flip_middle_byte(archive_of(backups, first))
    code, out, err = run_cli(capsys, "restore", first, str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, out) == (1, "")
    assert err.startswith(ERROR) and "does not match its manifest" in err
    assert staging_words(err) == []
    assert not (tmp_path / "t").exists()
    assert [name for name in os.listdir(tmp_path) if ".obs-" in name] == []


def test_a_restore_refused_for_conflicts_names_the_option_and_no_staging_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patterned: tuple[Path, str]
) -> None:
    backups, backup_id = patterned
    write_files(tmp_path / "t", {"top.txt": "mine\n"})
    code, out, err = run_cli(capsys, "restore", backup_id, str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, out) == (1, "")
    (line,) = lines(err)
    assert line.startswith(f"{ERROR}{tmp_path / 't'}: 1 entry already exists (top.txt); nothing was restored")
    assert "--overwrite" in line and staging_words(line) == []
    assert tree(tmp_path / "t") == {"top.txt": "mine\n"}
    assert sorted(os.listdir(tmp_path)) == ["backups", "source", "t"]


def test_a_failure_found_while_running_with_json_is_an_error_line_and_a_json_failure_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checked: tuple[Path, str, str]
) -> None:
    """Not only failures found before the run (a missing archive) but one found during
    it (a damaged archive) follow the --json contract."""
    backups, first, _ = checked
    flip_middle_byte(archive_of(backups, first))
    code, out, err = run_cli(capsys, "restore", first, str(tmp_path / "t"), "--backup-dir", str(backups), "--json")
    assert code == 1
    reported = json.loads(out)
    assert (reported["success"], reported.get("exit_code")) == (False, 1)
    assert lines(err) == [f"{ERROR}{reported['error']}"]


# -- 13. logging -------------------------------------------------------------------------------------


@pytest.fixture
def everything(tmp_path: Path) -> Iterator[Callable[[str], list[str]]]:
    """A source and a backup of it; yield a function giving a command's arguments (each
    call a fresh restore target)."""
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "backups"
    made(source, backups)
    targets = iter(range(1000))

    def argv(command: str) -> list[str]:
        return {
            "create": [str(source), str(backups)],
            "restore": ["latest", str(tmp_path / f"t{next(targets)}"), "--backup-dir", str(backups)],
            "verify": ["latest", "--backup-dir", str(backups)],
            "list": [str(backups)],
            "ls": ["latest", "--backup-dir", str(backups)],
            "diff": ["latest", "latest", "--backup-dir", str(backups)],
            "check": [str(backups)],
            "schedule": [str(source), str(backups), "--tz", "UTC"],
            "prune": [str(backups), "--keep-last", "100"],
            "copy": [str(backups), str(tmp_path / "copied")],
        }[command]

    yield argv


@pytest.mark.parametrize("command", backup.cli.COMMANDS)
def test_verbose_and_every_log_level_are_accepted_by_every_command(
    capsys: pytest.CaptureFixture[str],
    no_scheduler: list[object],
    everything: Callable[[str], list[str]],
    command: str,
) -> None:
    for flags in (["-v"], ["--verbose"], *(["--log-level", level] for level in ("debug", "info", "warning", "error"))):
        code, _, err = run_cli(capsys, command, *everything(command), *flags)
        assert code == 0, (flags, err)
    code, _, err = run_cli(capsys, command, *everything(command), "--log-level", "loud")
    assert code == 2 and "--log-level" in err


def hook_config(tmp_path: Path, command: str) -> Path:
    config = tmp_path / "hooks.toml"
    config.write_text(f"before_backup = [{json.dumps(command)}]\n")
    return config


def test_hook_output_is_logged_on_stderr_with_an_iso_time_and_offset_not_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    config = hook_config(tmp_path, "echo hello-from-hook")
    code, out, err = run_cli(capsys, "--config", str(config), "create", str(source), str(tmp_path / "b"))
    assert code == 0
    assert any(ISO_HOOK_LINE.match(line) for line in lines(err)), err
    assert "hello-from-hook" not in out


def test_hook_output_reaches_a_real_processs_stderr_only(tmp_path: Path) -> None:
    """A real process: a hook's child writing to the inherited stdout would not show in capsys."""
    source = write_files(tmp_path / "source", TREE)
    config = hook_config(tmp_path, "echo hello-from-hook")
    done = subprocess.run(
        [sys.executable, "-m", "backup", "--config", str(config), "create", str(source), str(tmp_path / "b")],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "hello-from-hook" not in done.stdout
    assert lines(done.stdout)[0].startswith("created ")
    assert any(ISO_HOOK_LINE.match(line) for line in lines(done.stderr)), done.stderr


def test_log_level_warning_hides_the_hooks_info_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_files(tmp_path / "source", TREE)
    config = hook_config(tmp_path, "echo hello-from-hook")
    code, out, err = run_cli(
        capsys, "--config", str(config), "create", str(source), str(tmp_path / "b"), "--log-level", "warning"
    )
    assert (code, err) == (0, "")
    assert "hello-from-hook" not in out


def test_a_failing_before_backup_hook_fails_create_naming_the_hook_and_writes_no_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", TREE)
    backups = tmp_path / "b"
    config = hook_config(tmp_path, "exit 3")
    code, out, err = run_cli(capsys, "--config", str(config), "create", str(source), str(backups))
    assert (code, out) == (1, "")
    (error,) = [line for line in lines(err) if line.startswith(ERROR)]
    assert "before_backup" in error and "exit 3" in error
    assert archives_in(backups) == []


# -- what a review found: each failed before its fix ----------------------------------------------


def test_the_config_files_backup_dir_wins_over_the_environment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    two_backups: tuple[Path, Path, str, str],
) -> None:
    """A hook gets OBS_BACKUP_DIR; an obs-backup it runs with another config file must
    use that file's backup_dir."""
    _, backups, _, _ = two_backups
    config = tmp_path / "other.toml"
    config.write_text(f'backup_dir = "{backups}"\n')
    monkeypatch.setenv("OBS_BACKUP_DIR", str(tmp_path / "elsewhere"))
    code, out, err = run_cli(capsys, "--config", str(config), "list")
    assert (code, err) == (0, "") and "2 backups" in out


@pytest.mark.parametrize("name", ["latest", "id"])
def test_latest_or_an_id_in_the_config_file_is_not_taken_for_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str], name: str
) -> None:
    _, backups, old, _ = two_backups
    config = tmp_path / "conf" / "restore.toml"
    config.parent.mkdir()
    archive = "latest" if name == "latest" else old
    config.write_text(f'backup_dir = "{backups}"\n[restore]\narchive = "{archive}"\ntarget = "{tmp_path / "t"}"\n')
    code, _, err = run_cli(capsys, "--config", str(config), "restore")
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "new\n" if name == "latest" else "old\n"}


def test_latest_passes_over_a_backup_dated_in_the_future(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    """One made while the clock ran years ahead is not the latest: the backups made
    since the clock was put right are."""
    source, backups, _, _ = two_backups
    (source / "which").write_text("from the future\n")
    made(source, backups, 365 * 30)
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups))
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "new\n"}


def test_latest_with_a_prefix_is_the_newest_of_that_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_backups: tuple[Path, Path, str, str]
) -> None:
    source, backups, _, _ = two_backups
    (source / "which").write_text("nightly\n")
    made(source, backups, 0, prefix="nightly")  # older than both others
    argv = ("restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups), "--prefix", "nightly")
    code, _, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    assert tree(tmp_path / "t") == {"which": "nightly\n"}


def test_a_patterned_restore_leaves_existing_directories_it_did_not_restore_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--exclude home/ must not give the target's own home/ the archived owner and mode
    (into /, that would be the live /home)."""
    source = write_files(tmp_path / "source", {"home/alice/notes": "n\n", "etc/app.conf": "c\n"})
    os.chown(source / "home", 4321, 4321)
    os.chmod(source / "home", 0o700)
    backups = tmp_path / "backups"
    made(source, backups)
    target = tmp_path / "target"
    (target / "home" / "bob").mkdir(parents=True)
    os.chmod(target / "home", 0o755)
    before = os.stat(target / "home")
    argv = ("restore", "latest", str(target), "--backup-dir", str(backups), "--exclude", "home/")
    code, _, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    after = os.stat(target / "home")
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (
        before.st_uid,
        before.st_gid,
        0o755,
        before.st_mtime_ns,
    )
    assert (target / "etc" / "app.conf").read_text() == "c\n" and not (target / "home" / "alice").exists()


@pytest.mark.parametrize("manifest", [True, False], ids=["with-manifest", "without-manifest"])
def test_a_hard_link_restored_without_its_first_name_gets_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest: bool
) -> None:
    source = write_files(tmp_path / "source", {"a/first": "shared\n"})
    (source / "etc").mkdir()
    os.link(source / "a" / "first", source / "etc" / "second")
    backups = tmp_path / "backups"
    made(source, backups, include_manifest=manifest)
    argv = ("restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups), "--exclude", "a/")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert tree(tmp_path / "t") == {"etc": None, "etc/second": "shared\n"}


def test_prune_metrics_over_several_prefixes_name_each_metric_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text format refuses a second HELP line for a name: node_exporter would drop
    the whole file."""
    source = write_files(tmp_path / "source", {"f": "f\n"})
    backups = tmp_path / "backups"
    for day in range(3):
        made(source, backups, day, prefix="db")
        made(source, backups, day, prefix="web")
    metrics_file = tmp_path / "m" / "prune.prom"
    metrics_file.parent.mkdir()
    code, _, err = run_cli(capsys, "prune", str(backups), "--keep-last", "1", "--metrics-file", str(metrics_file))
    assert (code, err) == (0, "")
    text = metrics_file.read_text()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps)) and "obs_backup_last_prune_removed" in helps
    assert 'obs_backup_last_prune_removed{prefix="db"} 2.0' in text
    assert 'obs_backup_last_prune_removed{prefix="web"} 2.0' in text


def test_a_bad_log_level_in_the_config_file_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('log_level = "trace"\n')
    (tmp_path / "b").mkdir()
    code, out, err = run_cli(capsys, "--config", str(config), "list", str(tmp_path / "b"), "--json")
    assert code == 2
    assert err == f"{ERROR}{config}:1: log-level must be one of debug, info, warning, error, not 'trace'\n"
    assert json.loads(out)["exit_code"] == 2


def test_an_exclude_pattern_overridden_by_a_later_one_is_not_said_to_match_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_files(tmp_path / "source", {"debug.log": "d\n", "app.log": "a\n", "keep.txt": "k\n"})
    argv = ("create", str(source), str(tmp_path / "b"), "--exclude", "debug.log", "--exclude", "*.log")
    code, _, err = run_cli(capsys, *argv, "--exclude", "nothing-*")
    assert code == 0
    assert lines(err) == [f"{WARNING}exclude pattern 'nothing-*' matched nothing in {source}"]
