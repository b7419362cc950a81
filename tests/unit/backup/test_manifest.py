"""Tests for backup.manifest (``model``: the JSON manifest and its versions; ``files``:
loading, reading from storage, naming and creation)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import backup.manifest.files as manifest_files
import backup.manifest.model as manifest_model
from backup.errors import ManifestError, SourceError
from backup.manifest import (
    MANIFEST_VERSION,
    ArchiveInfo,
    BackupManifest,
    ManifestEntry,
    create_manifest,
    load_manifest,
    manifest_name_for,
    read_manifest,
)
from backup.storage import LocalStorage, ObjectRef

FIXED_TIME = 1_700_000_000  # 2023-11-14T22:13:20+00:00
FIXED_ISO = "2023-11-14T22:13:20+00:00"


def _sample_manifest() -> BackupManifest:
    return BackupManifest(
        backup_id="backup_20240102_030405",
        created_at="2024-01-02T12:04:05+09:00",
        source_dir="/data/app",
        files=[
            ManifestEntry("docs", 0, "", "2024-01-01T00:00:00+00:00", "dir", 0o755),
            ManifestEntry("docs/a.txt", 5, "ab" * 32, "2024-01-01T00:00:01+00:00", "file", 0o644),
            ManifestEntry("docs/b.bin", 7, "cd" * 32, "2024-01-01T00:00:02+00:00", "file", 0o600, warning="grew"),
            ManifestEntry("docs/link", 0, "", "2024-01-01T00:00:03+00:00", "symlink", 0o777, "a.txt"),
            ManifestEntry("메모.txt", 3, "ef" * 32, "2024-01-01T00:00:04+00:00", "file", 0o644),
        ],
        metadata={"host": "db1", "tags": ["nightly"], "n": 3},
        archive=ArchiveInfo("backup_20240102_030405.tar.gz", 1234, "12" * 32, "gz"),
        warnings=["something was skipped"],
    )


def _seed_dict() -> dict[str, Any]:
    """A manifest exactly as the seed wrote it: no version/format/type/mode, naive time."""
    return {
        "backup_id": "backup_20240101_120000",
        "created_at": "2024-01-01T12:00:00.123456",
        "source_dir": "/data",
        "files": [
            {"path": "a.txt", "size": 5, "checksum": "aa" * 32, "modified": "2024-01-01T11:00:00"},
            {"path": "sub/b.txt", "size": 10, "checksum": "bb" * 32, "modified": "2024-01-01T11:30:00"},
        ],
        "total_size": 15,
        "file_count": 2,
        "metadata": {"note": "seed"},
    }


def test_round_trip_to_json_from_json() -> None:
    """to_json then from_json gives back an equal manifest (every field, every entry)."""
    manifest = _sample_manifest()
    loaded = BackupManifest.from_json(manifest.to_json())
    assert loaded == manifest
    assert BackupManifest.from_json(manifest.to_json(pretty=False)) == manifest


def test_to_dict_shape() -> None:
    """The JSON carries the format marker, the current version and the regular-file totals."""
    data = json.loads(_sample_manifest().to_json())
    assert data["format"] == "obs-backup-manifest"
    assert data["version"] == MANIFEST_VERSION == 3
    assert data["file_count"] == 3
    assert data["total_size"] == 15
    assert data["files"][3] == {
        "path": "docs/link",
        "size": 0,
        "checksum": "",
        "modified": "2024-01-01T00:00:03+00:00",
        "type": "symlink",
        "mode": 0o777,
        "link_target": "a.txt",
        "warning": None,
    }
    assert data["archive"] == {
        "name": "backup_20240102_030405.tar.gz",
        "size": 1234,
        "checksum": "12" * 32,
        "compression": "gz",
    }


def test_version_3_entry_fields_in_json() -> None:
    """Owners, the exact time, extended attributes (base64), a device's numbers and a
    sparse file's data size are written only when known, and read back the same."""
    entries = [
        ManifestEntry(
            "dev/null", 0, "", FIXED_ISO, "chardev", 0o666, uid=0, gid=0, user="root", group="root", device=(1, 3)
        ),
        ManifestEntry(
            "big.img",
            1 << 30,
            "ab" * 32,
            FIXED_ISO,
            "file",
            0o600,
            mtime_ns=FIXED_TIME * 10**9 + 5,
            xattrs={"user.k": b"\x00v"},
            data_size=4096,
        ),
        ManifestEntry("big.link", 1 << 30, "ab" * 32, FIXED_ISO, "hardlink", 0o600, "big.img", data_size=4096),
    ]
    manifest = BackupManifest("b", "2024-01-02T12:04:05+09:00", "/data", files=entries)
    data = json.loads(manifest.to_json())
    common = {"size": 0, "checksum": "", "modified": FIXED_ISO, "link_target": None, "warning": None}
    assert data["files"][0] == common | {
        "path": "dev/null",
        "type": "chardev",
        "mode": 0o666,
        "uid": 0,
        "gid": 0,
        "user": "root",
        "group": "root",
        "device": [1, 3],
    }
    assert data["files"][1]["xattrs"] == {"user.k": "AHY="}
    assert (data["files"][1]["mtime_ns"], data["files"][1]["data_size"]) == (FIXED_TIME * 10**9 + 5, 4096)
    assert (data["file_count"], data["total_size"]) == (1, 1 << 30)  # a hard link is not a second file
    assert BackupManifest.from_json(manifest.to_json()).files == entries


def test_seed_shaped_manifest_loads_as_version_1() -> None:
    """A seed manifest (no version, no types, naive created_at) still loads."""
    manifest = BackupManifest.from_json(json.dumps(_seed_dict()))
    assert manifest.version == 1
    assert manifest.created_at == "2024-01-01T12:00:00.123456"
    assert manifest.archive is None
    assert manifest.warnings == []
    assert manifest.checksum_algorithm == "sha256"
    assert (manifest.file_count, manifest.total_size) == (2, 15)
    assert manifest.metadata == {"note": "seed"}
    assert manifest.files == [
        ManifestEntry("a.txt", 5, "aa" * 32, "2024-01-01T11:00:00"),
        ManifestEntry("sub/b.txt", 10, "bb" * 32, "2024-01-01T11:30:00"),
    ]
    assert [entry.type for entry in manifest.files] == ["file", "file"]
    assert [entry.mode for entry in manifest.files] == [None, None]


@pytest.mark.parametrize("version", [99, 0, 4, "2", "3", True])
def test_unknown_version_raises_naming_it(version: object) -> None:
    """A version this reader does not know is refused, naming it."""
    data = _seed_dict() | {"version": version}
    with pytest.raises(ManifestError) as info:
        BackupManifest.from_json(json.dumps(data))
    assert f"unsupported manifest version {version!r}" in str(info.value)


def test_invalid_json_reports_line_and_column() -> None:
    """Malformed JSON is a ManifestError with the decoder's position."""
    with pytest.raises(ManifestError) as info:
        BackupManifest.from_json('{\n  "backup_id": ,\n}')
    assert str(info.value) == "manifest is not valid JSON: Expecting value at line 2 column 16"


@pytest.mark.parametrize("text", ["[]", '"a string"', "42", "null"])
def test_non_object_json_raises(text: str) -> None:
    """Valid JSON that is not an object is not a manifest."""
    with pytest.raises(ManifestError, match="manifest is not a JSON object"):
        BackupManifest.from_json(text)


@pytest.mark.parametrize("field", ["backup_id", "created_at", "source_dir"])
def test_missing_required_top_level_field(field: str) -> None:
    """Each required top-level string is named when missing."""
    data = _seed_dict()
    del data[field]
    with pytest.raises(ManifestError) as info:
        BackupManifest.from_dict(data)
    assert str(info.value) == f"manifest field {field!r} is missing or not a string"


@pytest.mark.parametrize("field", ["path", "size", "checksum", "modified"])
def test_missing_required_entry_field(field: str) -> None:
    """Each required entry field is named when missing."""
    data = _seed_dict()
    del data["files"][0][field]
    with pytest.raises(ManifestError) as info:
        BackupManifest.from_dict(data)
    assert f"field {field!r} missing or not" in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backup_id": 5}, "field 'backup_id' is missing or not a string"),
        ({"created_at": None}, "field 'created_at' is missing or not a string"),
        ({"files": {"a": 1}}, "field 'files' is not a list"),
        ({"total_size": "15"}, "field 'total_size' is not a non-negative integer"),
        ({"total_size": -1}, "field 'total_size' is not a non-negative integer"),
        ({"file_count": True}, "field 'file_count' is not a non-negative integer"),
        ({"metadata": []}, "'metadata' or 'warnings' have the wrong type"),
        ({"warnings": "oops"}, "'metadata' or 'warnings' have the wrong type"),
        ({"archive": {"name": "x.tar"}}, "field 'archive' is malformed"),
        ({"archive": {"name": "x.tar", "size": "big", "checksum": "c"}}, "field 'archive' is malformed"),
        ({"archive": ["x.tar", 1, "c"]}, "field 'archive' is malformed"),
        ({"archive": "x.tar"}, "field 'archive' is malformed"),
    ],
)
def test_wrong_top_level_types(change: dict[str, Any], message: str) -> None:
    """Top-level fields of the wrong type are ManifestErrors naming the field."""
    with pytest.raises(ManifestError) as info:
        BackupManifest.from_dict(_seed_dict() | change)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": "5"}, "field 'size' missing or not int"),
        ({"size": True}, "field 'size' missing or not int"),
        ({"size": 5.0}, "field 'size' missing or not int"),
        ({"path": 7}, "field 'path' missing or not str"),
        ({"checksum": None}, "field 'checksum' missing or not str"),
        ({"modified": 1700000000}, "field 'modified' missing or not str"),
        ({"type": "socket"}, "unknown type 'socket'"),
        ({"type": 5}, "field 'type' is not str"),
        ({"type": ["file"]}, "field 'type' is not str"),
        ({"mode": "0644"}, "field 'mode' is not int"),
        ({"mode": True}, "field 'mode' is not int"),
        ({"link_target": 3}, "field 'link_target' is not str"),
        ({"warning": ["w"]}, "field 'warning' is not str"),
    ],
)
def test_wrong_entry_types(change: dict[str, Any], message: str) -> None:
    """Entry fields of the wrong type are ManifestErrors (never TypeError) naming the field."""
    data = _seed_dict()
    data["files"][0].update(change)
    with pytest.raises(ManifestError) as info:
        BackupManifest.from_dict(data)
    assert message in str(info.value)


def test_entry_not_an_object() -> None:
    """A files item that is not an object is refused."""
    data = _seed_dict()
    data["files"].append("a.txt")
    with pytest.raises(ManifestError, match="manifest entry is not an object"):
        BackupManifest.from_dict(data)


@pytest.mark.parametrize("version", [2, 3])
def test_unknown_extra_keys_are_ignored(version: int) -> None:
    """Keys a newer writer may add are ignored, at the top level and in entries."""
    data = _seed_dict() | {"version": version, "future_field": {"x": 1}, "format": "obs-backup-manifest"}
    data["files"][0]["acl_text"] = {"access": "user::rw-"}
    manifest = BackupManifest.from_dict(data)
    assert manifest.version == version
    assert manifest.files[0] == ManifestEntry("a.txt", 5, "aa" * 32, "2024-01-01T11:00:00")
    assert not hasattr(manifest, "future_field")


def test_load_manifest_missing_file_names_path(tmp_path: Path) -> None:
    """A missing manifest file is a ManifestError naming the path."""
    path = tmp_path / "x.manifest.json"
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value) == f"{path}: manifest not found"
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "manifest is not valid JSON"),
        (b'{"version": 99}', "unsupported manifest version 99"),
        (b"\xff\xfe\x00garbage", "cannot read manifest"),
    ],
)
def test_load_manifest_invalid_file_names_path(tmp_path: Path, content: bytes, detail: str) -> None:
    """An unreadable or invalid manifest file is a ManifestError that starts with the path."""
    path = tmp_path / "bad.manifest.json"
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: ")
    assert detail in str(info.value)
    assert info.value.path == str(path)


def test_load_manifest_directory_names_path(tmp_path: Path) -> None:
    """A directory in place of the manifest is reported against its path."""
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert info.value.path == str(tmp_path)


def test_save_then_load(tmp_path: Path) -> None:
    """A saved manifest loads back equal."""
    path = tmp_path / "m.manifest.json"
    manifest = _sample_manifest()
    manifest.save(path)
    assert load_manifest(path) == manifest


def test_save_is_private_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    """save() writes mode 0600 whatever the umask."""
    path = tmp_path / "m.manifest.json"
    _sample_manifest().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_replaces_atomically_and_leaves_no_partial(tmp_path: Path, umask_zero: None) -> None:
    """Saving over an older (world-readable) manifest replaces it and leaves only the manifest."""
    path = tmp_path / "m.manifest.json"
    path.write_text("old")
    path.chmod(0o644)
    manifest = _sample_manifest()
    manifest.save(path)
    assert sorted(os.listdir(tmp_path)) == ["m.manifest.json"]
    assert path.read_text(encoding="utf-8") == manifest.to_json()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_into_missing_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    """A save that cannot happen raises OSError and writes nothing."""
    with pytest.raises(FileNotFoundError):
        _sample_manifest().save(tmp_path / "missing" / "m.manifest.json")
    assert os.listdir(tmp_path) == []


def test_post_init_totals_count_regular_files_only() -> None:
    """file_count and total_size ignore directories and symlinks."""
    manifest = BackupManifest(
        backup_id="b",
        created_at="2024-01-01T00:00:00+00:00",
        source_dir="/s",
        files=[
            ManifestEntry("d", 4096, "", "t", "dir"),
            ManifestEntry("d/a", 10, "x", "t", "file"),
            ManifestEntry("d/l", 7, "", "t", "symlink", link_target="a"),
            ManifestEntry("b", 5, "y", "t"),
        ],
    )
    assert (manifest.file_count, manifest.total_size) == (2, 15)


def test_post_init_keeps_explicit_totals() -> None:
    """Totals given explicitly are kept, not recomputed."""
    manifest = BackupManifest("b", "t", "/s", files=[ManifestEntry("a", 10, "x", "t")], total_size=99, file_count=7)
    assert (manifest.file_count, manifest.total_size) == (7, 99)


def _make_tree(root: Path, outside: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01" * 1000)
    (root / "empty").mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    os.symlink("a.txt", root / "link_to_file")
    os.symlink(str(outside), root / "link_to_dir")
    os.symlink("does-not-exist", root / "dangling")
    for path in [root / "a.txt", root / "sub" / "b.bin", root / "sub", root / "empty"]:
        os.utime(path, (FIXED_TIME, FIXED_TIME))
    for link in ["link_to_file", "link_to_dir", "dangling"]:
        os.utime(root / link, (FIXED_TIME, FIXED_TIME), follow_symlinks=False)


def test_create_manifest_hashes_files_and_records_symlinks(tmp_path: Path) -> None:
    """Files are hashed; symlinks (to files, dirs, nowhere) are recorded, never followed."""
    root = tmp_path / "src"
    _make_tree(root, tmp_path / "outside")
    manifest = create_manifest("id1", root, metadata={"k": "v"})
    by_path = manifest.entry_map()
    assert sorted(by_path) == [
        "a.txt",
        "dangling",
        "empty",
        "link_to_dir",
        "link_to_file",
        "sub",
        "sub/b.bin",
    ]
    assert by_path["a.txt"].checksum == hashlib.sha256(b"alpha").hexdigest()
    assert by_path["a.txt"].size == 5
    assert by_path["sub/b.bin"].checksum == hashlib.sha256(b"\x00\x01" * 1000).hexdigest()
    for name, target in [
        ("link_to_file", "a.txt"),
        ("link_to_dir", str(tmp_path / "outside")),
        ("dangling", "does-not-exist"),
    ]:
        entry = by_path[name]
        assert (entry.type, entry.size, entry.checksum, entry.link_target) == ("symlink", 0, "", target)
    assert (by_path["empty"].type, by_path["empty"].checksum) == ("dir", "")
    assert manifest.file_count == 2
    assert manifest.total_size == 5 + 2000
    assert manifest.metadata == {"k": "v"}
    assert manifest.backup_id == "id1"
    assert manifest.source_dir == str(root)


def test_create_manifest_timestamps_carry_offsets(tmp_path: Path) -> None:
    """Entry times are ISO 8601 in UTC with "+00:00"; created_at is aware and current."""
    root = tmp_path / "src"
    _make_tree(root, tmp_path / "outside")
    before = datetime.now(UTC)
    manifest = create_manifest("id1", root)
    after = datetime.now(UTC)
    for name in ["a.txt", "sub", "sub/b.bin", "empty", "link_to_file"]:
        assert manifest.entry_map()[name].modified == FIXED_ISO
    created = datetime.fromisoformat(manifest.created_at)
    assert created.utcoffset() == datetime.now().astimezone().utcoffset()
    assert before - timedelta(seconds=1) <= created <= after + timedelta(seconds=1)


def test_create_manifest_with_files_subset(tmp_path: Path) -> None:
    """files= restricts the manifest to those paths."""
    root = tmp_path / "src"
    _make_tree(root, tmp_path / "outside")
    manifest = create_manifest("id1", root, files=[Path("sub")])
    assert [entry.path for entry in manifest.files] == ["sub", "sub/b.bin"]


def test_create_manifest_missing_source_raises(tmp_path: Path) -> None:
    """A missing source is a SourceError."""
    with pytest.raises(SourceError):
        create_manifest("id1", tmp_path / "nope")


def test_create_manifest_describes_a_file_a_directory_and_a_symlink(tmp_path: Path) -> None:
    """Each entry is relative to the source: a file with its size and digest, a
    directory, and a symlink with its target (not followed, no digest)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"xyz")
    os.chmod(tmp_path / "d" / "f", 0o640)
    os.symlink("f", tmp_path / "d" / "l")
    os.utime(tmp_path / "d" / "f", (FIXED_TIME, FIXED_TIME))
    by_path = create_manifest("id1", tmp_path, files=[Path("d")]).entry_map()
    assert sorted(by_path) == ["d", "d/f", "d/l"]
    entry = by_path["d/f"]
    assert (entry.path, entry.size, entry.checksum, entry.type, entry.mode, entry.modified) == (
        "d/f",
        3,
        hashlib.sha256(b"xyz").hexdigest(),
        "file",
        0o640,
        FIXED_ISO,
    )
    link = by_path["d/l"]
    assert (link.path, link.type, link.link_target, link.checksum) == ("d/l", "symlink", "f", "")
    assert (by_path["d"].type, by_path["d"].checksum) == ("dir", "")


@pytest.mark.parametrize(
    ("archive", "manifest"),
    [
        ("b_20240101_000000.tar.gz", "b_20240101_000000.manifest.json"),
        ("b_20240101_000000-2.tar.zst", "b_20240101_000000-2.manifest.json"),
        ("b.tgz", "b.manifest.json"),
        ("b.tar", "b.manifest.json"),
        ("notes.txt", "notes.txt.manifest.json"),
    ],
)
def test_manifest_name_for(archive: str, manifest: str) -> None:
    """The sidecar manifest's name is the archive's stem plus ".manifest.json"."""
    assert manifest_name_for(archive) == manifest


def test_read_manifest_from_storage_names_the_object_by_its_label(tmp_path: Path) -> None:
    """read_manifest reads through the object's storage, and its errors name the
    object's label (what the user gave), not a path it made up."""
    storage = LocalStorage(tmp_path)
    _sample_manifest().save(tmp_path / "good.manifest.json")
    good = read_manifest(ObjectRef(storage, "good.manifest.json", "remote://good"))
    assert good.to_dict() == _sample_manifest().to_dict()
    (tmp_path / "bad.manifest.json").write_bytes(b"{not json")
    with pytest.raises(ManifestError) as info:
        read_manifest(ObjectRef(storage, "bad.manifest.json", "remote://bad"))
    assert str(info.value).startswith("remote://bad: manifest is not valid JSON")
    assert info.value.path == "remote://bad"
    with pytest.raises(ManifestError) as info:
        read_manifest(ObjectRef(storage, "gone.manifest.json", "remote://gone"))
    assert str(info.value) == "remote://gone: manifest not found"


def test_read_manifest_refuses_one_larger_than_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest larger than MAX_MANIFEST_BYTES is refused, not read into memory (the
    limit is lowered here: writing a gigabyte would prove nothing more)."""
    path = tmp_path / "big.manifest.json"
    _sample_manifest().save(path)
    monkeypatch.setattr(manifest_files, "MAX_MANIFEST_BYTES", path.stat().st_size - 1)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value) == f"{path}: manifest is larger than {path.stat().st_size - 1} bytes"


def test_the_package_reexports_its_modules_names() -> None:
    """backup.manifest is model (data) plus files (I/O); every name is the same object
    from the package as from its module."""
    import backup.manifest as package

    for name in package.__all__:
        module = manifest_model if name in manifest_model.__all__ else manifest_files
        assert getattr(package, name) is getattr(module, name), name
    assert set(package.__all__) == set(manifest_model.__all__) | set(manifest_files.__all__)


def test_the_model_does_no_io() -> None:
    """The model knows nothing of storage, scanning or streams: it imports only the
    errors and the hash names from the package."""
    tree = ast.parse(Path(manifest_model.__file__).read_text())
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert relative <= {"errors", "hashing"}


def test_an_empty_backup_has_a_manifest_of_no_files_and_zero_totals() -> None:
    """A backup of an empty directory (or of nothing but excluded files) is still a
    backup: its manifest, pretty or compact, is valid JSON listing no files, with
    totals of zero, and reads back equal."""
    manifest = BackupManifest(backup_id="b_20240101_000000", created_at="2024-01-01T00:00:00+00:00", source_dir="/s")
    assert (manifest.file_count, manifest.total_size) == (0, 0)
    for pretty in (True, False):
        text = manifest.to_json(pretty=pretty)
        data = json.loads(text)
        assert data["files"] == [] and data["file_count"] == 0 and data["total_size"] == 0
        assert BackupManifest.from_json(text) == manifest
    assert "".join(manifest.iter_json()) == manifest.to_json()


def test_totals_count_regular_files_once_and_given_totals_stand() -> None:
    files = [
        ManifestEntry(path="a", size=3, checksum="0" * 64, modified="2024-01-01T00:00:00+00:00", type="file"),
        ManifestEntry(path="b", size=5, checksum="1" * 64, modified="2024-01-01T00:00:00+00:00", type="file"),
        ManifestEntry(
            path="c", size=3, checksum="", modified="2024-01-01T00:00:00+00:00", type="hardlink", link_target="a"
        ),
        ManifestEntry(path="d", size=0, checksum="", modified="2024-01-01T00:00:00+00:00", type="dir"),
    ]
    computed = BackupManifest(backup_id="b", created_at="x", source_dir="/s", files=files)
    assert (computed.file_count, computed.total_size) == (2, 8)
    recorded = BackupManifest(backup_id="b", created_at="x", source_dir="/s", files=files, total_size=9, file_count=7)
    assert (recorded.file_count, recorded.total_size) == (7, 9)  # as the manifest recorded them
    assert BackupManifest.from_json(recorded.to_json()) == recorded


_ENTRY = {"path": "f", "size": 1, "checksum": "0" * 64, "modified": "2024-01-01T00:00:00+00:00", "type": "file"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"path_bytes": "ZmlsZQ==!!"}, "path_bytes is not base64"),  # a strict decoder refuses the junk
        ({"link_target_bytes": "a b c"}, "link_target_bytes is not base64"),
        ({"xattrs": ["user.a"]}, "field 'xattrs' is not an object"),
        ({"xattrs": {"user.a": "not base64 at all"}}, "an xattr value is not base64"),
        ({"xattrs": {"user.a": "AAEC!!"}}, "an xattr value is not base64"),  # base64 once the junk is dropped
        ({"device": [8]}, "field 'device' is not [major, minor]"),
        ({"device": [8, True]}, "field 'device' is not [major, minor]"),
    ],
)
def test_an_entry_with_a_malformed_encoded_field_is_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        ManifestEntry.from_dict({**_ENTRY, **extra})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_encoded_fields_read_back_exactly() -> None:
    entry = ManifestEntry.from_dict(
        {**_ENTRY, "path_bytes": "ZmlsZf8=", "xattrs": {"user.k": "AAEC"}, "device": [8, 1]}
    )
    assert entry.path == "file\udcff" and entry.xattrs == {"user.k": b"\x00\x01\x02"} and entry.device == (8, 1)


def test_to_json_is_pretty_unless_asked_for_compact() -> None:
    manifest = BackupManifest(backup_id="b", created_at="x", source_dir="/s", files=[ManifestEntry.from_dict(_ENTRY)])
    pretty, compact = manifest.to_json(), manifest.to_json(pretty=False)
    assert pretty.startswith('{\n  "') and "\n" not in compact
    assert json.loads(pretty) == json.loads(compact)


def test_save_that_cannot_rename_leaves_no_temporary_file_and_raises(tmp_path: Path) -> None:
    """(The rename is made to fail by a directory where the manifest should go: the
    tests run as root, so permissions cannot.)"""
    target = tmp_path / "m.manifest.json"
    target.mkdir()
    (target / "inside").write_text("x")
    manifest = BackupManifest(backup_id="b", created_at="x", source_dir="/s")
    with pytest.raises(OSError):
        manifest.save(target)
    assert sorted(os.listdir(tmp_path)) == ["m.manifest.json"]


def test_an_empty_manifests_pretty_text_is_what_json_writes_non_ascii_kept() -> None:
    """With no files, the streamed text is exactly json.dumps(indent=2) of the whole,
    and names outside ASCII are written as they are, not as escapes."""
    manifest = BackupManifest(backup_id="b_20240101_000000", created_at="2024-01-01T00:00:00Z", source_dir="/데이터")
    text = manifest.to_json()
    assert text == json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False)
    assert "/데이터" in text


def test_totals_missing_from_a_manifest_read_as_zero() -> None:
    data = BackupManifest(backup_id="b_20240101_000000", created_at="2024-01-01T00:00:00Z", source_dir="/s").to_dict()
    del data["total_size"], data["file_count"]
    manifest = BackupManifest.from_dict(data)
    assert (manifest.total_size, manifest.file_count) == (0, 0)
