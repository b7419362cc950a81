"""Pruning: plan per prefix, remove archive and manifest together, dry runs that touch
nothing, leftovers, and a removal that fails part-way.

Backups are real ones, made by ``create_backup``, in a real directory (named by its path
or given as its storage) and, to show pruning needs nothing but the storage interface,
in the in-memory storage. Faults are injected through the storage (``FaultyStorage``):
we run as root, so no permission bit can make a removal fail."""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.errors import ConfigError
from backup.listing import list_backups
from backup.prune import execute_prune, plan_prune
from backup.retention import RetentionPolicy
from backup.storage import LocalStorage, Location
from backup.storage.local import partial_name
from support.backups import START, make_backups
from support.clock import fixed_now
from support.storage import Fault, FaultyStorage, MemoryStorage, put_object, read_object


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


@pytest.mark.parametrize("given_as", ["path", "storage"])
def test_execute_removes_archive_and_manifest_together(tmp_path: Path, given_as: str) -> None:
    ids = make_backups(tmp_path, "db", 4)
    backup_dir = tmp_path / "backups"
    location: Location = backup_dir if given_as == "path" else LocalStorage(backup_dir)
    before = names(backup_dir)

    result = execute_prune(location, plan_prune(location, RetentionPolicy(keep_last=2), UTC))

    assert result.success and result.errors == []
    assert result.removed == [ids[1], ids[0]]  # newest first, as planned
    assert names(backup_dir) == before - files_of(ids[0]) - files_of(ids[1])
    assert [b.backup_id for b in list_backups(backup_dir)] == ids[2:]
    assert result.to_dict()["removed"] == [ids[1], ids[0]]


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    ids = make_backups(tmp_path, "db", 3)
    backup_dir = tmp_path / "backups"
    (backup_dir / partial_name("dead.tar.gz")).write_bytes(b"half")  # a dead writer's
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
    (backup_dir / partial_name("db_20260101_000000")).write_bytes(b"a dead writer's half archive")
    orphan_manifest(backup_dir, ids[0], "db_20260101_000000")  # its archive never landed

    result = execute_prune(backup_dir, plan_prune(backup_dir, RetentionPolicy(keep_last=5), UTC))

    assert result.success
    assert sorted(result.leftovers) == [partial_name("db_20260101_000000"), "db_20260101_000000.manifest.json"]
    assert result.removed == []
    assert names(backup_dir) == files_of(ids[0]) | files_of(ids[1])


def test_a_removal_failure_is_reported_and_the_rest_proceeds(tmp_path: Path) -> None:
    ids = make_backups(tmp_path, "db", 4)
    backup_dir = tmp_path / "backups"
    stuck = backup_dir / f"{ids[1]}.tar.gz"
    # Through the storage seam: as root, no permission bit would stop the removal.
    storage = FaultyStorage(LocalStorage(backup_dir), Fault("delete", errno.EACCES, names=stuck.name))

    result = execute_prune(storage, plan_prune(storage, RetentionPolicy(keep_last=1), UTC))

    assert not result.success
    assert result.errors == [f"{stuck}: cannot remove: Permission denied"]
    assert result.removed == [ids[2], ids[0]]
    # The stuck backup is still whole (its manifest was not removed without its archive).
    assert names(backup_dir) == files_of(ids[3]) | files_of(ids[1])
    assert [b.backup_id for b in list_backups(backup_dir)] == [ids[1], ids[3]]
    assert storage.called("delete") == [
        f"{ids[2]}.tar.gz",
        f"{ids[2]}.manifest.json",
        stuck.name,
        f"{ids[0]}.tar.gz",
        f"{ids[0]}.manifest.json",
    ]


def test_plan_sets_aside_backups_dated_in_the_future(tmp_path: Path) -> None:
    """A backup made while the clock was a year ahead is kept and reported; the real
    history is judged against the injected clock's now, from the newest real backup."""
    ids = make_backups(tmp_path, "db", 5)
    ahead = make_backups(tmp_path, "db", 1, START + timedelta(days=365))
    backup_dir = tmp_path / "backups"
    now = START + timedelta(days=4, hours=9)

    plan = plan_prune(backup_dir, RetentionPolicy(keep_within=timedelta(days=2)), UTC, now=fixed_now(now))

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


# --- a location that is not a directory -----------------------------------------------------


def memory_names(storage: MemoryStorage) -> set[str]:
    return {info.name for info in storage.list_objects()}


def test_prune_needs_nothing_but_the_storage(tmp_path: Path) -> None:
    """Planned, dry-run and carried out in the in-memory storage: per prefix, archive and
    manifest together, leftovers too; nothing goes near the configured directory."""
    storage = MemoryStorage("memory://backups")
    ids = make_backups(tmp_path, "db", 4, storage=storage)
    web = make_backups(tmp_path, "web", 2, START + timedelta(hours=1), storage=storage, include_manifest=False)
    assert not (tmp_path / "backups").exists()
    dead = storage.begin("db_20260101_000000.tar.gz", claim="db_20260101_000000")
    dead.write(b"a dead writer's half archive")
    dead.abandon()
    orphan = json.loads(read_object(storage, f"{ids[0]}.manifest.json"))
    orphan["backup_id"] = "db_20260101_000000"
    orphan["archive"]["name"] = "db_20260101_000000.tar.gz"
    put_object(storage, "db_20260101_000000.manifest.json", json.dumps(orphan).encode())
    before = {name: read_object(storage, name) for name in memory_names(storage)}

    plan = plan_prune(storage, RetentionPolicy(keep_last=2), UTC)
    dry = execute_prune(storage, plan, dry_run=True)

    assert [d.backup.backup_id for d in plan.remove] == [ids[1], ids[0]]
    assert {d.backup.backup_id for d in plan.keep} == {ids[2], ids[3], *web}
    assert dry.removed == [] and dry.leftovers == []
    assert {name: read_object(storage, name) for name in memory_names(storage)} == before
    assert storage.claimed("db_20260101_000000") is True

    result = execute_prune(storage, plan)

    assert result.success and result.removed == [ids[1], ids[0]]
    assert result.leftovers == [partial_name("db_20260101_000000"), "db_20260101_000000.manifest.json"]
    assert memory_names(storage) == files_of(ids[2]) | files_of(ids[3]) | {f"{i}.tar.gz" for i in web}
    assert [b.backup_id for b in list_backups(storage)] == [*web, ids[2], ids[3]]
    assert storage.claimed("db_20260101_000000") is False


def test_a_removal_failure_in_any_storage(tmp_path: Path) -> None:
    memory = MemoryStorage("memory://backups")
    ids = make_backups(tmp_path, "db", 3, storage=memory)
    storage = FaultyStorage(memory, Fault("delete", errno.EIO, names=f"{ids[0]}.tar.gz"))

    result = execute_prune(storage, plan_prune(storage, RetentionPolicy(keep_last=1), UTC))

    assert result.errors == [f"memory://backups/{ids[0]}.tar.gz: cannot remove: Input/output error"]
    assert result.removed == [ids[1]]
    assert memory_names(memory) == files_of(ids[0]) | files_of(ids[2])


def test_a_plan_names_archives_elsewhere_by_their_labels(tmp_path: Path) -> None:
    """A URL stays a URL (a Path would collapse its '//')."""
    storage = MemoryStorage("memory://backups")
    ids = make_backups(tmp_path, "db", 2, storage=storage)
    plan = plan_prune(storage, RetentionPolicy(keep_last=1), UTC)
    assert [row["archive_path"] for row in plan.to_dict()["remove"]] == [f"memory://backups/{ids[0]}.tar.gz"]
