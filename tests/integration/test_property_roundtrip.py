"""Property: any tree of files, directories and relative symlinks round-trips exactly.

Each example gets its own tempfile.TemporaryDirectory (pytest's tmp_path is shared by
every example of one test, so it cannot give each a clean start).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup import BackupConfig, create_backup, restore_backup, verify_backup

from .conftest import BASE_MTIME, snapshot

# Letters from several scripts plus a few punctuation marks; never "/" or NUL.
ALPHABET = "abcXYZ019éüßøΩжд漢字ひ🙂 _-.,+=@"
NAME = st.text(alphabet=ALPHABET, min_size=1, max_size=10).filter(lambda n: n not in (".", ".."))
FILE_MODES = st.sampled_from([0o644, 0o640, 0o600, 0o755, 0o700, 0o444])
DIR_MODES = st.sampled_from([0o755, 0o750, 0o700, 0o775])
MTIMES = st.integers(min_value=BASE_MTIME - 10**8, max_value=BASE_MTIME + 10**8)
CONTENT = st.one_of(st.just(b""), st.binary(min_size=1, max_size=2048))


def _leaf() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("file"), CONTENT, FILE_MODES, MTIMES),
        st.tuples(st.just("link"), st.integers(min_value=0, max_value=50), MTIMES),
    )


def _dir(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.just("dir"), st.dictionaries(NAME, children, max_size=5), DIR_MODES, MTIMES)


# depth <= 3: a root directory whose entries nest at most three levels.
TREE = st.dictionaries(
    NAME,
    st.one_of(_leaf(), _dir(st.one_of(_leaf(), _dir(st.one_of(_leaf(), _dir(_leaf())))))),
    max_size=6,
)


def _build(directory: Path, children: dict) -> None:
    """Create ``children`` under ``directory``; symlinks point to a sibling (any kind)."""
    names = sorted(children)
    for name in names:
        node = children[name]
        path = directory / name
        if node[0] == "file":
            _, content, mode, mtime = node
            path.write_bytes(content)
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        elif node[0] == "dir":
            path.mkdir()
            _build(path, node[1])
    for name in names:
        node = children[name]
        if node[0] == "link":
            _, pick, mtime = node
            siblings = [other for other in names if other != name]
            target = siblings[pick % len(siblings)] if siblings else "missing"
            os.symlink(target, directory / name)
            os.utime(directory / name, (mtime, mtime), follow_symlinks=False)
    for name in names:  # directories last: filling them changed their mtimes
        node = children[name]
        if node[0] == "dir":
            _, _, mode, mtime = node
            os.chmod(directory / name, mode)
            os.utime(directory / name, (mtime, mtime))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=TREE, compression=st.sampled_from(["gz", "zst", "", "bz2", "xz"]))
def test_random_trees_round_trip_exactly(tree: dict, compression: str) -> None:
    with tempfile.TemporaryDirectory(prefix="obs-prop-") as temp:
        root = Path(temp)
        source = root / "source"
        source.mkdir()
        _build(source, tree)
        expected = snapshot(source)

        result = create_backup(BackupConfig(source, root / "backups", compression=compression))
        assert result.success, result.error
        assert result.warnings == []
        assert sorted(entry.path for entry in result.manifest.files) == sorted(expected)
        assert verify_backup(result.backup_path).ok

        target = root / "restored"
        restored = restore_backup(result.backup_path, target)
        assert restored.success, restored.error
        assert restored.verified is True
        assert snapshot(target) == expected
