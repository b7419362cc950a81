"""Damaged archives of every shape: whatever bytes an archive holds, restore and verify
end in a result (success, or one line naming the problem), never in an exception or
an "internal error", and never write outside the target."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup import restore_backup, verify_backup
from support.trees import make_sparse

from .conftest import BASE_MTIME, GNU_TAR

_SEEDS: dict[str, bytes] = {}


def _seed_archives(work: Path) -> dict[str, bytes]:
    """A few small archives whose headers cover the formats read: GNU long names, pax
    records, sparse maps (old GNU and pax 1.0), links; and one of our own backups."""
    if _SEEDS:
        return _SEEDS
    source = work / "seed-src"
    deep = source / "d" / ("long" * 20) / ("name" * 20)  # a GNU long name; ustar splits it
    deep.mkdir(parents=True)
    (source / "d" / "f.txt").write_bytes(b"data\n" * 30)
    (deep / "g").write_bytes(b"g\n")
    (source / "link").symlink_to("d/f.txt")
    os.link(source / "d" / "f.txt", source / "hard")
    make_sparse(source / "sparse", 1 << 20, [(0, b"a"), (600_000, b"b" * 700)])
    for path in source.rglob("*"):
        os.utime(path, (BASE_MTIME, BASE_MTIME), follow_symlinks=False)
    for name, options in (
        ("gnu", ["--format=gnu", "--sparse"]),
        ("posix", ["--format=posix", "--sparse", "--sparse-version=1.0"]),
        ("ustar", ["--format=ustar"]),
    ):
        archive = work / f"{name}.tar"
        subprocess.run([GNU_TAR, *options, "-cf", str(archive), "-C", str(source), "."], check=True)
        _SEEDS[name] = archive.read_bytes()
    return _SEEDS


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(["gnu", "posix", "ustar"]),
    edits=st.lists(st.tuples(st.integers(0, 16 * 512 - 1), st.binary(min_size=1, max_size=12)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 20_000)),
)
def test_a_damaged_archive_is_a_result_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, seed: str, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    work = tmp_path_factory.mktemp("fuzz")
    data = bytearray(_seed_archives(tmp_path_factory.getbasetemp())[seed])
    for offset, patch in edits:
        data[offset : offset + len(patch)] = patch
    if cut is not None:
        del data[cut:]
    archive = work / "damaged.tar"
    archive.write_bytes(bytes(data))
    outside = work / "outside"
    outside.mkdir()

    result = restore_backup(archive, work / "target" / "into")
    texts = [result.error or "", *result.warnings]
    assert not any("internal error" in text for text in texts), texts
    if not result.success:
        assert result.error and "\n" not in result.error
        assert not (work / "target" / "into").exists()
    report = verify_backup(archive)
    assert not any("internal error" in line for line in report.lines()), report.lines()
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["damaged.tar", "outside", *(["target"] if (work / "target").exists() else [])]
    )
    shutil.rmtree(work)
