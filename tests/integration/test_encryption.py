"""Encrypted backups, end to end: made to age recipients, listed, pruned, copied and
checked without the identity, restored with it by obs-backup and by plain
``age -d | zstd -d | tar -x``, and refused (with nothing written) when the identity is
missing or wrong, or the ciphertext is cut short or altered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup import BackupConfig, create_backup, restore_backup, verify_backup
from backup.errors import IdentityError
from backup.keys import load_identities
from backup.listing import clean_leftovers, list_backups
from backup.storage import LocalStorage, open_storage
from support.agekeys import AgeKey, new_key
from support.cli import run_cli
from support.clock import fixed_now, utc
from support.s3servers import S3Server
from support.storage import Fault, FaultyStorage

from .conftest import COMPRESSIONS, GNU_TAR, SUFFIXES, snapshot

MARKER = b"TOP-SECRET-CONTENT-7f3a"
SECRET_NAME = "payroll-2026-q3.csv"
Env = Callable[[S3Server], dict[str, str]]
DECOMPRESS = {"gz": ["gzip", "-d"], "bz2": ["bzip2", "-d"], "xz": ["xz", "-d"], "zst": ["zstd", "-d"], "": ["cat"]}


@pytest.fixture
def key(tmp_path: Path) -> AgeKey:
    return new_key(tmp_path / "keys")


def make_source(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / SECRET_NAME).write_bytes(MARKER * 100)
    (root / "sub" / "random.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    os.symlink("../" + SECRET_NAME, root / "sub" / "link")
    os.link(root / SECRET_NAME, root / "sub" / "hardlink.csv")
    return root


def _create(capsys: pytest.CaptureFixture[str], source: Path, backups: Path | str, *extra: str) -> dict:
    code, out, err = run_cli(capsys, "create", str(source), str(backups), "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def _objects(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_encrypted_round_trip_by_obs_backup_and_by_plain_age_and_tar(
    compression: str, key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    created = _create(capsys, source, backups, "--compression", compression or "none", "--encrypt-to", key.recipient)
    backup_id = created["backup_id"]
    assert _objects(backups) == sorted(
        [f"{backup_id}{SUFFIXES[compression]}.age", f"{backup_id}.manifest.json.age", f"{backup_id}.sidecar.json"]
    )
    expected = snapshot(source)

    code, _, err = run_cli(capsys, "restore", backup_id, str(tmp_path / "ours"), "--backup-dir", str(backups),
                           "--identity", str(key.identity_file))  # fmt: skip
    assert code == 0, err
    assert snapshot(tmp_path / "ours") == expected

    # Without obs-backup: age, the format's own decompressor, GNU tar.
    plain = tmp_path / "plain"
    plain.mkdir()
    archive = backups / f"{backup_id}{SUFFIXES[compression]}.age"
    pipeline = (
        f"age -d -i {key.identity_file} {archive} | {' '.join(DECOMPRESS[compression])} | {GNU_TAR} -x -C {plain}"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
    assert snapshot(plain) == expected
    manifest = subprocess.run(
        ["age", "-d", "-i", str(key.identity_file), str(backups / f"{backup_id}.manifest.json.age")],
        check=True,
        capture_output=True,
    ).stdout
    assert json.loads(manifest)["backup_id"] == backup_id


def test_nothing_of_the_data_or_the_names_is_stored_in_plaintext(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    _create(capsys, source, backups, "--compression", "none", "--encrypt-to", key.recipient)
    for name in os.listdir(backups):
        data = (backups / name).read_bytes()
        assert MARKER not in data and SECRET_NAME.encode() not in data, name
        assert b"random.bin" not in data and b"deeper" not in data, name
    sidecar = json.loads(next(backups.glob("*.sidecar.json")).read_text())
    assert set(sidecar) == {
        "format",
        "version",
        "backup_id",
        "created_at",
        "kind",
        "source_size",
        "checksum_algorithm",
        "archive",
        "manifest",
        "encryption",
    }
    assert sidecar["encryption"]["recipients"] == [key.recipient]
    assert sidecar["kind"] == "manual"


def test_without_the_identity_list_verify_and_check_see_the_ciphertext(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    created = _create(capsys, source, backups, "--compression", "zst", "--recipients-file", str(key.recipients_file))
    code, out, _ = run_cli(capsys, "list", str(backups), "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert listed["backup_id"] == created["backup_id"] and listed["encrypted_to"] == [key.recipient]
    assert listed["file_count"] is None and listed["sidecar_path"].endswith(".sidecar.json")

    code, out, err = run_cli(capsys, "verify", "latest", "--backup-dir", str(backups))
    assert code == 0, err
    assert "ciphertext intact" in out and "give --identity" in out
    code, out, err = run_cli(capsys, "verify", "latest", "--backup-dir", str(backups), "--identity",
                             str(key.identity_file))  # fmt: skip
    assert code == 0, err
    assert ("ciphertext" not in out and "5 entries" in out) or "verified" in out

    code, out, _ = run_cli(capsys, "check", str(backups), "--read-data")
    assert code == 0 and "ok, ciphertext" in out
    code, out, _ = run_cli(capsys, "check", str(backups), "--read-data", "--identity", str(key.identity_file))
    assert code == 0 and "1 OK" in out and "ciphertext" not in out


def test_a_missing_or_wrong_identity_is_one_line_naming_the_recipients(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = new_key(tmp_path / "keys", "offsite")
    stranger = new_key(tmp_path / "keys", "stranger")
    backups = tmp_path / "backups"
    _create(capsys, make_source(tmp_path / "src"), backups, "--encrypt-to", key.recipient,
            "--encrypt-to", second.recipient)  # fmt: skip
    target = tmp_path / "target"
    for extra, wanted in (
        ((), "give the identity file that decrypts it"),
        (("--identity", str(stranger.identity_file)), f"no identity in {stranger.identity_file} is one of them"),
    ):
        for command in (["restore", "latest", str(target)], ["ls", "latest"], ["verify", "latest"]):
            if command[0] == "verify" and not extra:
                continue  # verify without an identity checks the ciphertext
            code, _, err = run_cli(capsys, *command, "--backup-dir", str(backups), *extra)
            assert code != 0
            assert err.count("\n") == 1, err
            assert wanted in err and key.recipient in err and second.recipient in err, err
    assert not target.exists()
    # The second recipient, kept elsewhere, restores as well as the first.
    code, _, err = run_cli(capsys, "restore", "latest", str(target), "--backup-dir", str(backups), "--identity",
                           str(second.identity_file))  # fmt: skip
    assert code == 0, err


def test_the_identity_comes_from_the_environment(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backups = tmp_path / "backups"
    _create(capsys, make_source(tmp_path / "src"), backups, "--encrypt-to", key.recipient)
    monkeypatch.setenv("OBS_BACKUP_IDENTITY_FILE", str(key.identity_file))
    code, out, err = run_cli(capsys, "ls", "latest", "--backup-dir", str(backups))
    assert code == 0, err
    assert SECRET_NAME in out


@pytest.mark.parametrize("damage", ["truncated", "cut at a chunk", "bit flipped", "bit flipped in the header"])
@pytest.mark.parametrize("verify", [True, False])
def test_damaged_ciphertext_restores_nothing(
    damage: str, verify: bool, key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    (source / "small.txt").write_text("small\n")
    backups = tmp_path / "backups"
    created = _create(capsys, source, backups, "--compression", "none", "--encrypt-to", key.recipient)
    archive = Path(created["path"])
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        del data[-1000:]
    elif damage == "cut at a chunk":
        header = data.index(b"\n---") + 1
        header = data.index(b"\n", header) + 1 + 16
        del data[header + 20 * (65536 + 16) :]
    elif damage == "bit flipped":
        data[len(data) // 2] ^= 0x01
    else:
        data[40] ^= 0x01
    archive.write_bytes(bytes(data))
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("untouched\n")
    before = snapshot(target)
    args = ["restore", created["backup_id"], str(target), "--backup-dir", str(backups), "--identity",
            str(key.identity_file), "--overwrite"]  # fmt: skip
    code, _, err = run_cli(capsys, *args, *([] if verify else ["--no-verify"]))
    assert code != 0
    assert err.count("\n") == 1 and str(archive) in err, err
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["backups", "keys", "src", "target"]  # no staging left beside it
    # Checked without the identity, the damage shows as well.
    code, _, err = run_cli(capsys, "verify", created["backup_id"], "--backup-dir", str(backups))
    assert code != 0 and "sidecar says" in err


def test_a_damaged_encrypted_manifest_is_named(key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backups = tmp_path / "backups"
    created = _create(capsys, make_source(tmp_path / "src"), backups, "--encrypt-to", key.recipient)
    manifest = backups / f"{created['backup_id']}.manifest.json.age"
    data = bytearray(manifest.read_bytes())
    data[-5] ^= 0x10
    manifest.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups),
                           "--identity", str(key.identity_file))  # fmt: skip
    assert code != 0 and f"{manifest}: cannot decrypt manifest" in err
    assert not (tmp_path / "t").exists()
    code, _, err = run_cli(capsys, "verify", "latest", "--backup-dir", str(backups))
    assert code != 0 and "manifest checksum" in err


def test_prune_and_copy_need_no_identity(key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    config = BackupConfig(source, backups, compression="zst", encrypt_to=[key.recipient])
    ids = []
    for day in range(1, 4):
        result = create_backup(config, now=fixed_now(utc(2026, 3, day, 3)))
        assert result.success, result.error
        ids.append(result.backup_id)
    mirror = tmp_path / "mirror"
    code, out, err = run_cli(capsys, "copy", str(backups), str(mirror), "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == ids
    assert _objects(mirror) == _objects(backups)
    for name in _objects(mirror):
        assert (mirror / name).read_bytes() == (backups / name).read_bytes()
    code, out, err = run_cli(capsys, "verify", ids[0], "--backup-dir", str(mirror))
    assert code == 0 and "ciphertext intact" in out

    code, _, err = run_cli(capsys, "prune", str(backups), "--keep-last", "1")
    assert code == 0, err
    assert _objects(backups) == sorted(
        [f"{ids[2]}.tar.zst.age", f"{ids[2]}.manifest.json.age", f"{ids[2]}.sidecar.json"]
    )
    restored = restore_backup(mirror / f"{ids[0]}.tar.zst.age", tmp_path / "from-mirror", identity=key.identity_file)
    assert restored.success, restored.error
    assert snapshot(tmp_path / "from-mirror") == snapshot(source)


def test_copy_refuses_a_damaged_encrypted_source(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backups = tmp_path / "backups"
    created = _create(capsys, make_source(tmp_path / "src"), backups, "--encrypt-to", key.recipient)
    archive = Path(created["path"])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    mirror = tmp_path / "mirror"
    code, _, err = run_cli(capsys, "copy", str(backups), str(mirror))
    assert code != 0 and "the source copy is damaged" in err
    assert not mirror.exists() or _objects(mirror) == []


@pytest.mark.parametrize("failing", ["archive", "manifest", "sidecar"])
def test_a_failed_commit_leaves_no_part_of_an_encrypted_backup(key: AgeKey, tmp_path: Path, failing: str) -> None:
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    backups.mkdir()
    suffix = {"archive": ".tar.gz.age", "manifest": ".manifest.json.age", "sidecar": ".sidecar.json"}[failing]
    storage = FaultyStorage(LocalStorage(backups), Fault("commit", 28, names=f"*{suffix}"))
    result = create_backup(BackupConfig(source, backups, encrypt_to=[key.recipient]), storage=storage)
    assert not result.success
    assert _objects(backups) == []


def test_leftovers_of_a_cut_off_encrypted_backup_are_removed_and_only_they(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run cut off between its commits (in a directory: sidecar, manifest, archive)
    leaves a sidecar, or a sidecar and a manifest; the next run removes them. Files that
    only look like ours stay."""
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    created = _create(capsys, source, backups, "--encrypt-to", key.recipient)
    backup_id = created["backup_id"]
    Path(created["path"]).unlink()  # as if killed before the archive was linked into place
    foreign = {
        "db_20240101_000000.tar.gz.age": b"age-encryption.org/v1\nsomeone else's",
        "notes.sidecar.json": b'{"format": "obs-backup-sidecar"}',
        "backup_20240101_000000.sidecar.json": (backups / f"{backup_id}.sidecar.json").read_bytes(),
    }
    for name, data in foreign.items():
        (backups / name).write_bytes(data)
    assert list_backups(backups) == []
    removed = clean_leftovers(backups)
    assert sorted(removed) == sorted([f"{backup_id}.manifest.json.age", f"{backup_id}.sidecar.json"])
    assert _objects(backups) == sorted(foreign)


def test_refusals_before_anything_is_written(key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    cases = [
        (["--encrypt-to", key.recipient, "--no-manifest"], "an encrypted backup has a manifest"),
        (["--encrypt-to", "age1nope"], "'age1nope': not an age recipient"),
        (["--recipients-file", str(key.identity_file)], "is a secret key"),
        (["--recipients-file", str(tmp_path / "absent")], "cannot read recipients file"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "create", str(source), str(backups), *extra)
        assert code != 0 and message in err, err
        assert err.count("\n") == 1
    assert not backups.exists() or _objects(backups) == []
    _create(capsys, source, backups, "--encrypt-to", key.recipient)
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", str(backups),
                           "--identity", str(key.recipients_file))  # fmt: skip
    assert code != 0 and "is a recipient (a public key)" in err


def test_toml_settings_and_a_scheduled_encrypted_run(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backup.config import SchedulerConfig
    from backup.scheduler import BackupScheduler

    source = make_source(tmp_path / "src")
    other = new_key(tmp_path / "keys", "other")
    shutil.copy(other.recipients_file, tmp_path / "recipients.txt")
    config = tmp_path / "obs-backup.toml"
    config.write_text(
        f'source = "src"\nbackup_dir = "backups"\ncompression = "zst"\n'
        f'encrypt_to = ["{key.recipient}"]\nrecipients_file = "recipients.txt"\n'
    )
    code, _, err = run_cli(capsys, "--config", str(config), "create")
    assert code == 0, err
    [backup] = list_backups(tmp_path / "backups")
    assert backup.recipients == (key.recipient, other.recipient)

    scheduled = SchedulerConfig(
        source, tmp_path / "scheduled", encrypt_to=[key.recipient], compression="zst", check_after=True
    )
    outcome = BackupScheduler(scheduled).run_once()
    assert outcome.result.success, outcome.result.error
    [made] = list_backups(tmp_path / "scheduled")
    assert made.encrypted and made.archive.name.endswith(".tar.zst.age")
    sidecar = json.loads((tmp_path / "scheduled" / f"{made.backup_id}.sidecar.json").read_text())
    assert sidecar["kind"] == "scheduled"


def test_library_restore_takes_the_identity_file_or_identities(key: AgeKey, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    result = create_backup(BackupConfig(source, tmp_path / "b", encrypt_to=[key.recipient]))
    assert result.success, result.error
    assert result.backup_path is not None
    missing = restore_backup(result.backup_path, tmp_path / "none")
    assert not missing.success and "give the identity file" in (missing.error or "")
    for identity in (key.identity_file, load_identities(key.identity_file)):
        target = tmp_path / f"t{id(identity)}"
        restored = restore_backup(result.backup_path, target, identity=identity)
        assert restored.success and restored.verified, restored.error
    report = verify_backup(result.backup_path, identities=load_identities(key.identity_file))
    assert report.ok and not report.ciphertext_only
    with pytest.raises(IdentityError):
        verify_backup(result.backup_path, identities=load_identities(new_key(tmp_path, "x").identity_file))


def test_a_lone_encrypted_archive_restores_with_its_identity(key: AgeKey, tmp_path: Path) -> None:
    """The sidecar and manifest lost: the archive alone still restores, decrypted and
    read through (with nothing to check its files against)."""
    source = make_source(tmp_path / "src")
    backups = tmp_path / "b"
    result = create_backup(BackupConfig(source, backups, compression="xz", encrypt_to=[key.recipient]))
    assert result.success and result.backup_path is not None
    lone = tmp_path / "lone.bin"  # renamed too: recognised by its first bytes
    shutil.copy(result.backup_path, lone)
    missing = restore_backup(lone, tmp_path / "none")
    assert not missing.success and "age-encrypted" in (missing.error or "")
    restored = restore_backup(lone, tmp_path / "t", identity=key.identity_file)
    assert restored.success, restored.error
    assert snapshot(tmp_path / "t") == snapshot(source)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.text(alphabet="abcxyz漢ü-_. ", min_size=1, max_size=12).filter(lambda n: n not in (".", "..")),
        st.binary(max_size=200_000),
        max_size=6,
    ),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_property_encrypted_trees_round_trip(key: AgeKey, files: dict[str, bytes], compression: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="obs-age-") as temp:
        root = Path(temp)
        source = root / "src"
        source.mkdir()
        for name, data in files.items():
            (source / name).write_bytes(data)
        result = create_backup(BackupConfig(source, root / "b", compression=compression, encrypt_to=[key.recipient]))
        assert result.success, result.error
        assert result.backup_path is not None
        restored = restore_backup(result.backup_path, root / "t", identity=key.identity_file)
        assert restored.success and restored.verified, restored.error
        assert snapshot(root / "t") == snapshot(source)


def test_an_old_backup_made_before_the_clock_jumped_is_still_listed(key: AgeKey, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    config = BackupConfig(source, tmp_path / "b", encrypt_to=[key.recipient])
    moment = utc(2030, 1, 1)
    assert create_backup(config, now=fixed_now(moment)).success
    assert create_backup(config, now=fixed_now(moment - timedelta(days=3000))).success
    assert [b.created_at.year for b in list_backups(tmp_path / "b") if b.created_at] == [2021, 2030]


def test_in_object_storage_with_marks_for_what_is_cut_off(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str], moto_bucket: tuple[S3Server, str], s3_env: Env
) -> None:
    """In a bucket the sidecar, created last, is the commit point. An archive and a
    manifest left without one (a run cut off) carry the backup id as object metadata,
    which is what proves them ours: the next run removes them, and leaves a foreign
    encrypted object, which has no such mark, alone."""
    server, bucket = moto_bucket
    s3_env(server)
    url = f"s3://{bucket}/host?grace=0"
    source = make_source(tmp_path / "src")
    created = _create(capsys, source, url, "--compression", "zst", "--encrypt-to", key.recipient)
    backup_id = created["backup_id"]
    client = server.client()
    names = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"] if "/." not in item["Key"])
    assert names == sorted(
        f"host/{backup_id}{suffix}" for suffix in (".tar.zst.age", ".manifest.json.age", ".sidecar.json")
    )
    for name in names:
        assert client.head_object(Bucket=bucket, Key=name)["Metadata"] == {"obs-backup-id": backup_id}
        assert MARKER not in client.get_object(Bucket=bucket, Key=name)["Body"].read()

    code, out, err = run_cli(capsys, "verify", "latest", "--backup-dir", url)
    assert code == 0 and "ciphertext intact" in out, err
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "t"), "--backup-dir", url, "--identity",
                           str(key.identity_file))  # fmt: skip
    assert code == 0, err
    assert snapshot(tmp_path / "t") == snapshot(source)

    # Copied to a directory and back to another prefix, still without the identity.
    code, _, err = run_cli(capsys, "copy", url, str(tmp_path / "local"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "copy", str(tmp_path / "local"), f"s3://{bucket}/again?grace=0")
    assert code == 0, err
    code, out, err = run_cli(capsys, "verify", "latest", "--backup-dir", f"s3://{bucket}/again")
    assert code == 0 and "ciphertext intact" in out, err

    client.delete_object(Bucket=bucket, Key=f"host/{backup_id}.sidecar.json")  # cut before the commit point
    client.put_object(Bucket=bucket, Key="host/other_20240101_000000.tar.zst.age", Body=b"age-encryption.org/v1\n")
    assert list_backups(url) == []
    removed = clean_leftovers(url)
    assert sorted(removed) == sorted([f"{backup_id}.tar.zst.age", f"{backup_id}.manifest.json.age"])
    left = sorted(
        item["Key"]
        for item in client.list_objects_v2(Bucket=bucket, Prefix="host/")["Contents"]
        if "/." not in item["Key"]
    )
    assert left == ["host/other_20240101_000000.tar.zst.age"]


def test_a_real_store_keeps_the_mark_of_a_multipart_upload(
    key: AgeKey, tmp_path: Path, seaweedfs_bucket: tuple[S3Server, str], s3_env: Env
) -> None:
    """The mark is set when an upload starts; a store that dropped it on completing a
    multipart upload would leave cut-off encrypted archives that nothing can clean."""
    server, bucket = seaweedfs_bucket
    s3_env(server)
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(9 << 20))  # more than one 8 MiB part
    url = f"s3://{bucket}/marks?grace=0"
    result = create_backup(BackupConfig(source, url, compression="", encrypt_to=[key.recipient]))
    assert result.success, result.error
    storage = open_storage(url)
    [backup] = list_backups(storage)
    assert backup.size_bytes > 8 << 20
    for ref in backup.objects():
        assert storage.marked(ref.name) == backup.backup_id, ref.name
    restored = restore_backup(backup.archive, tmp_path / "t", identity=key.identity_file)
    assert restored.success, restored.error
    assert snapshot(tmp_path / "t") == snapshot(source)


def _dated_backups(tmp_path: Path, key: AgeKey, count: int, size: int = 10) -> Path:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "a.bin").write_bytes(os.urandom(size))
    backups = tmp_path / "b"
    config = BackupConfig(source, backups, compression="zst", encrypt_to=[key.recipient])
    for day in range(1, count + 1):
        result = create_backup(config, now=fixed_now(utc(2026, 3, day)))
        assert result.success, result.error
    return backups


def test_a_foreign_age_file_named_like_an_archive_breaks_nothing(key: AgeKey, tmp_path: Path) -> None:
    """Another program's encrypted dump under one of our archive names (or one of our
    encrypted archives renamed) is not ours, and listing, pruning and cleaning go on."""
    backups = _dated_backups(tmp_path, key, 1)
    foreign = backups / "db_20240101_000000.tar.gz"
    subprocess.run(["age", "-r", key.recipient, "-o", str(foreign)], input=b"a dump", check=True)
    assert [b.backup_id for b in list_backups(backups)] == ["backup_20260301_000000"]
    assert clean_leftovers(backups) == []
    assert foreign.exists()
    report = verify_backup(foreign)
    assert not report.ok and "age-encrypted" in (report.cause or "")  # one line, not an internal error


def test_copy_of_an_encrypted_backup_missing_its_manifest_is_one_line_and_the_others_go_on(
    key: AgeKey, tmp_path: Path
) -> None:
    from backup.copy import copy_backups

    backups = _dated_backups(tmp_path, key, 2)
    (backups / "backup_20260301_000000.manifest.json.age").unlink()
    result = copy_backups(backups, tmp_path / "dst")
    assert result.copied == ["backup_20260302_000000"]
    [error] = result.errors
    assert "encrypted manifest not found" in error and "not copied" in error and "\n" not in error


def test_a_damaged_manifest_header_is_damage_for_check_and_verify_not_an_abort(key: AgeKey, tmp_path: Path) -> None:
    from backup.check import check_backups

    backups = _dated_backups(tmp_path, key, 2)
    manifest = backups / "backup_20260301_000000.manifest.json.age"
    data = bytearray(manifest.read_bytes())
    at = data.index(b"X25519 ") + 10
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    manifest.write_bytes(bytes(data))
    identities = load_identities(key.identity_file)
    for read_data in (False, True):
        report = check_backups(backups, identities=identities, read_data=read_data)
        assert [(row.backup_id, row.status) for row in report.rows] == [
            ("backup_20260301_000000", "bad manifest"),
            ("backup_20260302_000000", "ok"),
        ]
    report = verify_backup(backups / "backup_20260301_000000.tar.zst.age", identities=identities)
    assert not report.ok and "cannot decrypt manifest" in " ".join(report.problems)


def test_an_archive_reader_closed_early_stops_its_decrypt_thread(key: AgeKey, tmp_path: Path) -> None:
    import threading

    from backup.storage import locate
    from backup.stream.tarreader import ArchiveReader

    backups = _dated_backups(tmp_path, key, 1, size=8_000_000)
    archive = backups / "backup_20260301_000000.tar.zst.age"
    with ArchiveReader(locate(archive), identities=load_identities(key.identity_file)) as reader:
        next(iter(reader.members()))  # the thread goes on filling the pipe, then waits
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("age-")]


def test_a_lost_sidecar_does_not_stop_a_verified_restore_with_the_identity(key: AgeKey, tmp_path: Path) -> None:
    backups = _dated_backups(tmp_path, key, 1)
    (backups / "backup_20260301_000000.sidecar.json").unlink()
    archive = backups / "backup_20260301_000000.tar.zst.age"
    without = restore_backup(archive, tmp_path / "none")
    assert not without.success and "no sidecar says to whom" in (without.error or "")
    result = restore_backup(archive, tmp_path / "out", identity=key.identity_file)
    assert result.success and result.verified, result.error
    assert any("sidecar not found" in warning for warning in result.warnings), result.warnings


def test_a_lost_encrypted_manifest_is_refused_unless_no_verify(key: AgeKey, tmp_path: Path) -> None:
    backups = _dated_backups(tmp_path, key, 1)
    (backups / "backup_20260301_000000.manifest.json.age").unlink()
    archive = backups / "backup_20260301_000000.tar.zst.age"
    refused = restore_backup(archive, tmp_path / "t", identity=key.identity_file)
    assert not refused.success and "encrypted manifest not found" in (refused.error or "")
    assert not (tmp_path / "t").exists()
    unchecked = restore_backup(archive, tmp_path / "t", verify_checksums=False, identity=key.identity_file)
    assert unchecked.success and not unchecked.verified


def test_a_failed_encrypted_run_keeps_no_source_name_in_the_backup_location(
    key: AgeKey, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file lives in the backup location: for encrypted backups it records
    that a run failed, not the error, which names a source file. (An unreadable file is
    simulated by failing its open: the tests run as root.)"""
    from backup import fstree

    source = make_source(tmp_path / "src")
    backups = tmp_path / "backups"
    real_open = fstree.LOCAL_FILESYSTEM.open_file

    def refuse(path: object, *args: object, **kwargs: object) -> object:
        if SECRET_NAME in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fstree.LOCAL_FILESYSTEM, "open_file", refuse)
    code, _, err = run_cli(capsys, "create", str(source), str(backups), "--encrypt-to", key.recipient)
    assert code != 0 and SECRET_NAME in err  # the person running it is told
    state = json.loads((backups / ".obs-backup-state.json").read_text())
    assert "encrypted backup location" in json.dumps(state)
    for name in os.listdir(backups):
        assert SECRET_NAME.encode() not in (backups / name).read_bytes(), name
