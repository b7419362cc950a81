"""A backup directory shared with other programs: obs-backup deletes only what it wrote.

Real backups of ours sit beside realistic files of other tools: a database dump
script's archives made by GNU tar and named like backup ids (one even with our prefix),
other tools' JSON named like our manifests, a manifest of ours that names an archive
elsewhere, a copy of one of our archives under another id, a ``.tgz``, hidden
``.partial`` downloads, a README, subdirectories (one named like an archive) and
symlinks. Through many creates, prunes with and without ``--prefix``, dry runs and
real runs (in process and as ``python -m backup``), and a scheduled run, every foreign
file stays present and byte for byte the same, while our old backups are pruned as
the policy says. Before this was fixed, each of these tests failed: every create
removed the foreign JSON and partial files, and prune removed (or choked on) the
foreign archives.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup import BackupScheduler, SchedulerConfig, list_backups
from support.cli import run_cli

from .conftest import GNU_TAR, SRC, backup, fixed_now, make_corpus, snapshot

State = dict[str, tuple[object, ...]]


@dataclass
class Directory:
    """A backup directory holding foreign files; ``state()`` is their exact state."""

    path: Path
    source: Path
    foreign: list[str]

    def state(self) -> State:
        out: State = {}
        for name in self.foreign:
            path = self.path / name
            info = os.lstat(path)  # raises if it vanished
            if stat.S_ISLNK(info.st_mode):
                out[name] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[name] = ("dir", stat.S_IMODE(info.st_mode), tuple(sorted(snapshot(path).items())))
            else:
                out[name] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
        return out

    def ours(self, prefix: str | None = None) -> list[str]:
        return [b.backup_id for b in list_backups(self.path, prefix=prefix)]


def _inodes(directory: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry of ``directory`` (hidden ones too): inode, mode, size and mtime."""
    out = {}
    for name in os.listdir(directory):
        info = os.lstat(directory / name)
        out[name] = (info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns)
    return out


def _gnu_tar(archive: Path, directory: Path, *flags: str) -> None:
    subprocess.run([GNU_TAR, *flags, "-cf", str(archive), "-C", str(directory), "."], check=True, capture_output=True)


@pytest.fixture
def shared(tmp_path: Path) -> Directory:
    """A backup directory with two old backups of ours and many foreign files."""
    source = tmp_path / "source"
    make_corpus(source)
    backups = tmp_path / "backups"
    # Two old backups of ours, one made without a manifest (its mark proves it ours).
    backup(source, backups, now=fixed_now(datetime(2024, 1, 10, 3, 0, tzinfo=UTC)))
    backup(source, backups, now=fixed_now(datetime(2024, 1, 11, 3, 0, tzinfo=UTC)), include_manifest=False)

    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "db.sql").write_text("CREATE TABLE users (id integer);\nINSERT INTO users VALUES (1);\n")
    foreign: list[str] = []
    # A database dump script's archives, made by GNU tar, named like backup ids.
    for day in (1, 2, 3, 4, 5):
        name = f"db_2024010{day}_000000.tar.gz"
        _gnu_tar(backups / name, dump, "-z")
        foreign.append(name)
    # ... one of them with our prefix, and one spelled .tgz.
    _gnu_tar(backups / "backup_20240102_000000.tar.gz", dump, "-z")
    _gnu_tar(backups / "backup_20240107_000000.tgz", dump, "-z")
    foreign += ["backup_20240102_000000.tar.gz", "backup_20240107_000000.tgz"]
    # Other tools' JSON named like manifests, one with an orphan's name.
    (backups / "notes.manifest.json").write_text(json.dumps({"owner": "ops", "notes": ["rotate keys"]}))
    (backups / "backup_20240101_000000.manifest.json").write_text(
        json.dumps({"backup_id": "backup_20240101_000000", "tables": ["users"], "rows": 1})
    )
    foreign += ["notes.manifest.json", "backup_20240101_000000.manifest.json"]
    # A manifest of ours, for a backup whose archive lives elsewhere (it names it there).
    elsewhere = backup(source, tmp_path / "elsewhere", now=fixed_now(datetime(2024, 1, 3, tzinfo=UTC)))
    assert elsewhere.manifest_path is not None and elsewhere.backup_path is not None
    manifest = json.loads(elsewhere.manifest_path.read_text())
    manifest["archive"]["name"] = str(elsewhere.backup_path)
    (backups / elsewhere.manifest_path.name).write_text(json.dumps(manifest, indent=2))
    foreign.append(elsewhere.manifest_path.name)
    # A copy of one of our archives kept under another id (its mark names the original).
    first = backups / "backup_20240110_030000.tar.gz"
    (backups / "backup_20240106_000000.tar.gz").write_bytes(first.read_bytes())
    foreign.append("backup_20240106_000000.tar.gz")
    # Hidden partial downloads of other programs, a README, directories, symlinks.
    (backups / ".download.partial").write_bytes(b"half of an ISO image")
    (backups / ".foo.partial").write_bytes(b"")
    (backups / "README").write_text("Backups of /srv/app. Ask ops before deleting anything.\n")
    (backups / "old").mkdir()
    (backups / "old" / "backup_20230101_000000.tar.gz").write_bytes(first.read_bytes())
    (backups / "backup_20240104_000000.tar.gz").mkdir()  # a directory named like an archive
    (backups / "backup_20240105_000000.tar.gz").symlink_to(first.name)  # named like an id
    (backups / "latest.tar.gz").symlink_to(first.name)
    foreign += [
        ".download.partial",
        ".foo.partial",
        "README",
        "old",
        "backup_20240104_000000.tar.gz",
        "backup_20240105_000000.tar.gz",
        "latest.tar.gz",
    ]
    return Directory(backups, source, foreign)


def create(capsys: pytest.CaptureFixture[str], shared: Directory, *extra: str) -> str:
    """A backup through the command line (so made now, by the real clock)."""
    code, out, err = run_cli(capsys, "create", str(shared.source), str(shared.path), "--json", *extra)
    assert code == 0, err
    result = json.loads(out)
    assert result["success"] is True
    return str(result["backup_id"])


# Backups made through the library at distinct, known times (the command line's clock
# would put several in one second, and an archive without a manifest is timed by its id,
# to the second only), from a day ago, an hour apart.
RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def create_at(shared: Directory, hour: int, **kwargs: object) -> str:
    moment = RECENT + timedelta(hours=hour)
    result = backup(shared.source, shared.path, now=fixed_now(moment), **kwargs)
    assert result.backup_id is not None
    return result.backup_id


def test_many_creates_leave_foreign_files_alone(shared: Directory, capsys: pytest.CaptureFixture[str]) -> None:
    before = shared.state()
    made = []
    for extra in [(), ("--no-manifest",), ("--compression", "zst"), (), ("--no-manifest", "--compression", "none")]:
        made.append(create(capsys, shared, *extra))
        assert shared.state() == before

    ours = shared.ours()
    assert ours[:2] == ["backup_20240110_030000", "backup_20240111_030000"]
    assert sorted(ours[2:]) == sorted(made)


def test_list_shows_only_our_backups(shared: Directory, capsys: pytest.CaptureFixture[str]) -> None:
    made = create_at(shared, 0, include_manifest=False)

    code, out, err = run_cli(capsys, "list", str(shared.path), "--json")

    assert code == 0, err
    listed = json.loads(out)
    assert [row["backup_id"] for row in listed] == ["backup_20240110_030000", "backup_20240111_030000", made]
    assert [row["manifest_path"] is None for row in listed] == [False, True, True]
    code, out, _ = run_cli(capsys, "list", str(shared.path))
    assert code == 0
    for name in ("db_2024010", "backup_20240102", "backup_20240104", "backup_20240105", "backup_20240106", "latest"):
        assert name not in out


@pytest.mark.parametrize("prefix", [(), ("--prefix", "backup"), ("--prefix", "db")], ids=["no-prefix", "ours", "db"])
def test_prune_dry_runs_plan_only_our_backups_and_change_nothing(
    shared: Directory, capsys: pytest.CaptureFixture[str], prefix: tuple[str, ...]
) -> None:
    everything = _inodes(shared.path)
    before = shared.state()

    code, out, err = run_cli(capsys, "prune", str(shared.path), "--keep-last", "1", "--dry-run", "--json", *prefix)

    assert code == 0, err
    plan = json.loads(out)
    planned = [row["backup_id"] for row in plan["keep"] + plan["remove"]]
    if prefix == ("--prefix", "db"):
        assert planned == []  # the dump script's archives are not backups of ours
    else:
        assert [row["backup_id"] for row in plan["keep"]] == ["backup_20240111_030000"]
        assert [row["backup_id"] for row in plan["remove"]] == ["backup_20240110_030000"]
    assert shared.state() == before
    assert _inodes(shared.path) == everything
    code, out, err = run_cli(capsys, "prune", str(shared.path), "--keep-last", "1", "--dry-run", *prefix)
    assert code == 0, err
    assert "db_2024010" not in out and "backup_20240102" not in out and "backup_20240106" not in out
    assert _inodes(shared.path) == everything


@pytest.mark.parametrize("prefix", [(), ("--prefix", "backup")], ids=["no-prefix", "with-prefix"])
def test_prunes_remove_our_old_backups_and_nothing_else(
    shared: Directory, capsys: pytest.CaptureFixture[str], prefix: tuple[str, ...]
) -> None:
    before = shared.state()
    made = [
        create_at(shared, 0),
        create_at(shared, 1, include_manifest=False),
        create_at(shared, 2, compression="xz"),
        create_at(shared, 3),
    ]

    code, out, err = run_cli(capsys, "prune", str(shared.path), "--keep-last", "3", *prefix)

    assert code == 0, err
    assert shared.state() == before
    assert shared.ours() == made[1:]
    for gone in ["backup_20240110_030000", "backup_20240111_030000", made[0]]:
        assert f"remove {gone}" in out
        assert not [name for name in os.listdir(shared.path) if name.startswith(gone + ".")]
    assert "db_2024010" not in out and "leftover" not in out

    # More runs, a time-based policy, and another prefix beside ours.
    other = create_at(shared, 4, prefix="app")
    made.append(create_at(shared, 5, include_manifest=False))
    code, out, err = run_cli(capsys, "prune", str(shared.path), "--keep-within", "3h", *prefix)
    assert code == 0, err
    assert shared.state() == before
    assert shared.ours("backup") == made[3:]  # within 3 hours of the newest, strictly: hours 3 and 5
    assert shared.ours("app") == [other]

    code, out, err = run_cli(capsys, "prune", str(shared.path), "--keep-last", "1", *prefix)
    assert code == 0, err
    assert shared.state() == before
    # Without --prefix each prefix keeps its newest; with it, "app" is not considered.
    assert shared.ours() == [other, made[-1]]


def test_prune_as_a_process_removes_only_ours(shared: Directory) -> None:
    before = shared.state()
    made = create_at(shared, 0, include_manifest=False)
    env = dict(os.environ, PYTHONPATH=str(SRC))

    for argv in (["--keep-last", "1", "--dry-run"], ["--keep-last", "1"], ["--keep-last", "1", "--prefix", "backup"]):
        proc = subprocess.run(
            [sys.executable, "-m", "backup", "prune", str(shared.path), *argv],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert shared.state() == before

    assert shared.ours() == [made]


def test_a_scheduled_run_leaves_foreign_files_alone(shared: Directory) -> None:
    before = shared.state()
    config = SchedulerConfig(shared.source, shared.path, prefix="backup", retention_days=1)
    scheduler = BackupScheduler(config)

    outcomes = [scheduler.run_once() for _ in range(2)]

    assert all(outcome.result.success for outcome in outcomes)
    assert shared.state() == before
    assert shared.ours() == [outcome.result.backup_id for outcome in outcomes]
