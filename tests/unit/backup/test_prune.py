"""Pruning a real backup directory: plan per prefix, remove archive and manifest together,
dry runs that touch nothing, leftovers, and a removal that fails part-way."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup
from backup.catalog import list_backups
from backup.errors import ConfigError
from backup.prune import execute_prune, plan_prune
from backup.retention import RetentionPolicy

START = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def _fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def make_backups(
    tmp_path: Path, prefix: str, count: int, start: datetime = START, *, include_manifest: bool = True
) -> list[str]:
    """``count`` real backups, one a day from ``start``; return their ids, oldest first."""
    source = tmp_path / "source"
    if not source.exists():
        source.mkdir()
        (source / "file.txt").write_text("content\n")
    ids = []
    for day in range(count):
        moment = start + timedelta(days=day)
        config = BackupConfig(source, tmp_path / "backups", prefix=prefix, include_manifest=include_manifest)
        result = create_backup(config, now=_fixed(moment))
        assert result.success, result.error
        assert result.backup_id is not None
        ids.append(result.backup_id)
    return ids


def names(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def files_of(backup_id: str) -> set[str]:
    return {f"{backup_id}.tar.gz", f"{backup_id}.manifest.json"}


def test_plan_groups_by_prefix_without_a_prefix(tmp_path: Path) -> None:
    db = make_backups(tmp_path, "db", 3)
    web = make_backups(tmp_path, "web", 2, START + timedelta(hours=1))

    plan = plan_prune(tmp_path / "backups", RetentionPolicy(keep_last=1), UTC)

    # keep_last 1 applies to each prefix on its own: one keeper each, not one overall.
    assert {d.backup.backup_id for d in plan.keep} == {db[-1], web[-1]}
    assert {d.backup.backup_id for d in plan.remove} == set(db[:-1]) | set(web[:-1])
    assert plan.ignored == ()


def test_plan_with_a_prefix_ignores_the_others(tmp_path: Path) -> None:
    db = make_backups(tmp_path, "db", 3)
    web = make_backups(tmp_path, "web", 2)

    plan = plan_prune(tmp_path / "backups", RetentionPolicy(keep_last=1), UTC, prefix="db")

    assert [d.backup.backup_id for d in plan.keep] == [db[-1]]
    assert {d.backup.backup_id for d in plan.remove} == set(db[:-1])
    assert {b.backup_id for b in plan.ignored} == set(web)


def test_plan_refuses_an_empty_policy_even_with_no_backups(tmp_path: Path) -> None:
    (tmp_path / "backups").mkdir()
    with pytest.raises(ConfigError):
        plan_prune(tmp_path / "backups", RetentionPolicy(), UTC)


def test_execute_removes_archive_and_manifest_together(tmp_path: Path) -> None:
    ids = make_backups(tmp_path, "db", 4)
    backup_dir = tmp_path / "backups"
    before = names(backup_dir)

    result = execute_prune(backup_dir, plan_prune(backup_dir, RetentionPolicy(keep_last=2), UTC))

    assert result.success and result.errors == []
    assert result.removed == [ids[1], ids[0]]  # newest first, as planned
    assert names(backup_dir) == before - files_of(ids[0]) - files_of(ids[1])
    assert [b.backup_id for b in list_backups(backup_dir)] == ids[2:]
    assert result.to_dict()["removed"] == [ids[1], ids[0]]


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    ids = make_backups(tmp_path, "db", 3)
    backup_dir = tmp_path / "backups"
    (backup_dir / ".dead.tar.gz.partial").write_bytes(b"half")
    (backup_dir / "db_20200101_000000.manifest.json").write_text("{}")
    before = {name: (backup_dir / name).read_bytes() for name in names(backup_dir)}

    result = execute_prune(backup_dir, plan_prune(backup_dir, RetentionPolicy(keep_last=1), UTC), dry_run=True)

    assert result.dry_run and result.success
    assert [d.backup.backup_id for d in result.plan.remove] == [ids[1], ids[0]]
    assert result.removed == [] and result.leftovers == []
    assert {name: (backup_dir / name).read_bytes() for name in names(backup_dir)} == before


def orphan_manifest(backup_dir: Path, model: str, backup_id: str) -> None:
    """Write our manifest of ``backup_id`` (as a run killed before its archive landed
    leaves), made from the manifest of the backup ``model``."""
    data = json.loads((backup_dir / f"{model}.manifest.json").read_text())
    data["backup_id"] = backup_id
    data["archive"]["name"] = f"{backup_id}.tar.gz"
    (backup_dir / f"{backup_id}.manifest.json").write_text(json.dumps(data))


def test_real_run_removes_leftovers(tmp_path: Path) -> None:
    ids = make_backups(tmp_path, "db", 2)
    backup_dir = tmp_path / "backups"
    (backup_dir / ".db_20260101_000000.partial").write_bytes(b"a dead writer's half archive")
    orphan_manifest(backup_dir, ids[0], "db_20260101_000000")  # its archive never landed

    result = execute_prune(backup_dir, plan_prune(backup_dir, RetentionPolicy(keep_last=5), UTC))

    assert result.success
    assert sorted(result.leftovers) == [".db_20260101_000000.partial", "db_20260101_000000.manifest.json"]
    assert result.removed == []
    assert names(backup_dir) == files_of(ids[0]) | files_of(ids[1])


def test_a_removal_failure_is_reported_and_the_rest_proceeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = make_backups(tmp_path, "db", 4)
    backup_dir = tmp_path / "backups"
    stuck = backup_dir / f"{ids[1]}.tar.gz"
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)

    result = execute_prune(backup_dir, plan_prune(backup_dir, RetentionPolicy(keep_last=1), UTC))

    assert not result.success
    assert result.errors == [f"{stuck}: cannot remove: Permission denied"]
    assert result.removed == [ids[2], ids[0]]
    # The stuck backup is still whole (its manifest was not removed without its archive).
    assert names(backup_dir) == files_of(ids[3]) | files_of(ids[1])
    assert [b.backup_id for b in list_backups(backup_dir)] == [ids[1], ids[3]]


def test_plan_sets_aside_backups_dated_in_the_future(tmp_path: Path) -> None:
    """A backup made while the clock was a year ahead is kept and reported; the real
    history is judged against the injected clock's now, from the newest real backup."""
    ids = make_backups(tmp_path, "db", 5)
    ahead = make_backups(tmp_path, "db", 1, START + timedelta(days=365))
    backup_dir = tmp_path / "backups"
    now = START + timedelta(days=4, hours=9)

    plan = plan_prune(backup_dir, RetentionPolicy(keep_within=timedelta(days=2)), UTC, now=_fixed(now))

    assert [d.backup.backup_id for d in plan.keep] == [ahead[0], ids[4], ids[3]]
    assert [d.backup.backup_id for d in plan.remove] == [ids[2], ids[1], ids[0]]
    assert [d.backup.backup_id for d in plan.future] == ahead
    assert plan.future[0].reasons == ("dated in the future: kept; check the clock",)
    assert plan.to_dict()["future"] == [
        {
            "backup_id": ahead[0],
            "created_at": (START + timedelta(days=365)).isoformat(),
            "archive_path": str(backup_dir / f"{ahead[0]}.tar.gz"),
            "reasons": ["dated in the future: kept; check the clock"],
        }
    ]
    result = execute_prune(backup_dir, plan)
    assert [b.backup_id for b in list_backups(backup_dir)] == [ids[3], ids[4], ahead[0]]
    assert result.removed == [ids[2], ids[1], ids[0]]


def test_plan_reads_the_real_clock_by_default(tmp_path: Path) -> None:
    """Without ``now=``, the real UTC clock decides what is in the future."""
    real_now = datetime.now(UTC)
    past = make_backups(tmp_path, "db", 2, real_now - timedelta(days=30))
    ahead = make_backups(tmp_path, "db", 1, real_now + timedelta(days=730))

    plan = plan_prune(tmp_path / "backups", RetentionPolicy(keep_last=1), UTC)

    assert [d.backup.backup_id for d in plan.future] == ahead
    assert [d.backup.backup_id for d in plan.keep] == [ahead[0], past[1]]
    assert [d.backup.backup_id for d in plan.remove] == [past[0]]


def test_plan_refuses_a_naive_clock(tmp_path: Path) -> None:
    make_backups(tmp_path, "db", 1)
    with pytest.raises(ValueError, match="aware"):
        plan_prune(tmp_path / "backups", RetentionPolicy(keep_last=1), UTC, now=lambda: datetime(2026, 5, 1))


def test_archives_made_without_a_manifest_are_pruned_too(tmp_path: Path) -> None:
    """Their mark proves them ours: the policy applies to them like to any other backup."""
    ids = make_backups(tmp_path, "db", 4, include_manifest=False)
    backup_dir = tmp_path / "backups"
    assert names(backup_dir) == {f"{i}.tar.gz" for i in ids}

    result = execute_prune(backup_dir, plan_prune(backup_dir, RetentionPolicy(keep_last=2), UTC))

    assert result.removed == [ids[1], ids[0]]
    assert names(backup_dir) == {f"{ids[2]}.tar.gz", f"{ids[3]}.tar.gz"}


def test_archives_that_only_look_like_backups_are_never_pruned(tmp_path: Path) -> None:
    """An id-named archive without our manifest or our mark is not a backup of ours."""
    ids = make_backups(tmp_path, "db", 2)
    backup_dir = tmp_path / "backups"
    # Our archive's bytes under another id: its mark names the id it was made as.
    copy = backup_dir / "db_20200101_000000.tar.gz"
    copy.write_bytes((backup_dir / f"{ids[0]}.tar.gz").read_bytes())
    copy_bytes = copy.read_bytes()

    plan = plan_prune(backup_dir, RetentionPolicy(keep_last=1), UTC)
    result = execute_prune(backup_dir, plan)

    assert [d.backup.backup_id for d in plan.remove] == [ids[0]]
    assert result.removed == [ids[0]]
    assert copy.read_bytes() == copy_bytes
