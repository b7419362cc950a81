"""What a restore never does (set-id bits, ownership), what the backup directory always
is (private, whatever the umask), and what an error never shows (file contents).

We run as root, which is what makes the ownership and set-id tests meaningful: root
could chown a file to uid 4321 or keep a set-user-id bit, so only the tool's own
choice stops it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from backup import BackupConfig, BackupScheduler, SchedulerConfig, create_backup, restore_backup, verify_backup
from backup.cli import main
from backup.monitor import STATE_NAME
from backup.storage.lock import LOCK_NAME

from .conftest import (
    BASE_MTIME,
    GNU_TAR,
    backup,
    decompressed_tar_bytes,
    fixed_now,
    make_corpus,
    set_mtime,
    snapshot,
    tar_dir,
    tar_file,
    tar_link,
    write_tar,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- set-user-id, set-group-id and sticky bits ---------------------------------------------

SPECIAL = {"suid": 0o4755, "sgid": 0o2755, "sticky": 0o1777}  # two files and a directory
# Set-id bits are dropped (ownership is not restored, so they would grant the restoring
# user's identity); the sticky bit of a shared directory is kept.
RESTORED = {"suid": 0o755, "sgid": 0o755, "sticky": 0o1777}


def _special_tree(root: Path) -> Path:
    """Real files with the bits set (root may set them on anything)."""
    (root / "sticky").mkdir(parents=True)
    (root / "sticky" / "inside.txt").write_bytes(b"inside\n")
    for name in ("suid", "sgid"):
        (root / name).write_bytes(b"#!/bin/sh\necho " + name.encode() + b"\n")
    for name, mode in SPECIAL.items():
        os.chmod(root / name, mode)
    assert {name: _mode(root / name) for name in SPECIAL} == SPECIAL
    return root


def _special_archive(tmp_path: Path, how: str) -> Path:
    if how == "tarfile":
        members = [
            tar_file("suid", b"#!/bin/sh\necho suid\n", SPECIAL["suid"]),
            tar_file("sgid", b"#!/bin/sh\necho sgid\n", SPECIAL["sgid"]),
            tar_dir("sticky", SPECIAL["sticky"]),
            tar_file("sticky/inside.txt", b"inside\n"),
        ]
        return write_tar(tmp_path / "special.tar.gz", members, mode="w:gz")
    source = _special_tree(tmp_path / "source")
    if how == "gnu-tar":
        archive = tmp_path / "special-gnu.tar"
        subprocess.run([GNU_TAR, "-cf", str(archive), "-C", str(source), "."], check=True, capture_output=True)
        return archive
    return backup(source, tmp_path / "backups", compression="xz").backup_path  # ours, with a manifest


@pytest.mark.parametrize("how", ["tarfile", "gnu-tar", "obs-backup"])
def test_restore_never_sets_set_id_bits_and_keeps_the_sticky_bit(tmp_path: Path, how: str) -> None:
    archive = _special_archive(tmp_path, how)
    with tarfile.open(archive) as tf:  # the archive really asks for them
        modes = {member.name.removeprefix("./"): member.mode for member in tf.getmembers()}
    assert {name: modes[name] for name in SPECIAL} == SPECIAL
    target = tmp_path / "restored"
    result = restore_backup(archive, target)
    assert result.success, result.error
    assert result.verified is (how == "obs-backup")
    assert {name: _mode(target / name) for name in SPECIAL} == RESTORED
    stripped = [warning for warning in result.warnings if "set-user-id and set-group-id bits" in warning]
    assert len(stripped) == 1 and "2 entries (" in stripped[0], result.warnings
    assert "suid" in stripped[0] and "sgid" in stripped[0] and "sticky" not in stripped[0]
    assert (target / "sticky" / "inside.txt").read_bytes() == b"inside\n"
    assert _mode(target / "sticky" / "inside.txt") == 0o644


# --- ownership ---------------------------------------------------------------------------------

OTHER = 4321


def _owned_archive(tmp_path: Path, how: str) -> Path:
    if how == "tarfile":
        members = [tar_dir("dir"), tar_file("dir/file.txt", b"owned\n"), tar_link("link", "dir/file.txt")]
        members.append(tar_link("hard", "dir/file.txt", tarfile.LNKTYPE))
        for info, _data in members:
            info.uid = info.gid = OTHER
            info.uname = info.gname = "someone"
        return write_tar(tmp_path / "owned.tar", members)
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "file.txt").write_bytes(b"owned\n")
    os.symlink("dir/file.txt", source / "link")
    for path in (source / "dir", source / "dir" / "file.txt", source / "link"):
        os.lchown(path, OTHER, OTHER)
    if how == "gnu-tar":
        archive = tmp_path / "owned-gnu.tar.gz"
        subprocess.run([GNU_TAR, "-czf", str(archive), "-C", str(source), "."], check=True, capture_output=True)
        return archive
    return backup(source, tmp_path / "backups").backup_path


@pytest.mark.parametrize("how", ["tarfile", "gnu-tar", "obs-backup"])
def test_restore_never_changes_ownership(tmp_path: Path, how: str) -> None:
    archive = _owned_archive(tmp_path, how)
    with tarfile.open(archive) as tf:  # the archive really names another owner
        owners = {(m.uid, m.gid) for m in tf.getmembers() if m.name not in (".", "./")}
    assert owners == {(OTHER, OTHER)}
    target = tmp_path / "restored"
    result = restore_backup(archive, target)
    assert result.success, result.error
    me = (os.getuid(), os.getgid())
    restored = [target / "dir", target / "dir" / "file.txt", target / "link"]
    if how == "tarfile":
        restored.append(target / "hard")
    for path in restored:
        info = os.lstat(path)
        assert (info.st_uid, info.st_gid) == me, path
    assert (target / "link").read_bytes() == b"owned\n"


# --- private files and directories, whatever the umask ------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_backups_state_and_lock_are_0600_and_the_directory_0700(
    tmp_path: Path, umask: int, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    make_corpus(source)
    library, cli, scheduled = (tmp_path / "out" / name for name in ("library", "cli", "scheduled"))
    old = os.umask(umask)
    try:
        made = create_backup(BackupConfig(source, library))  # the directory made by the storage
        code = main(["create", str(source), str(cli), "--json"])  # made by the lock, first
        outcome = BackupScheduler(SchedulerConfig(source, scheduled)).run_once()  # lock, backup, state file
    finally:
        os.umask(old)
    assert made.success, made.error
    assert code == 0, capsys.readouterr().err
    assert outcome.result.success, outcome.result.error

    for directory in (library, cli, scheduled):
        assert _mode(directory) == 0o700, (directory, oct(_mode(directory)))
        files = sorted(os.listdir(directory))
        assert files, directory
        for name in files:
            assert _mode(directory / name) == 0o600, (directory / name, oct(_mode(directory / name)))
    assert len(os.listdir(library)) == 2  # archive and manifest
    assert LOCK_NAME in os.listdir(cli) and len(os.listdir(cli)) == 3
    assert {LOCK_NAME, STATE_NAME} <= set(os.listdir(scheduled)) and len(os.listdir(scheduled)) == 4
    state = json.loads((scheduled / STATE_NAME).read_text())
    assert state["scheduled_backup"]["last_success"]["archive_path"] == str(outcome.result.backup_path)


# --- errors never show file contents ---------------------------------------------------------

SECRET = "SECRET-TOKEN-9f2c"
SECRET_BLOCK = (SECRET.encode() + b"\n") * 28 + b"." * (512 - 18 * 28)  # one tar block


def _secret_source(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "config" / "credentials.env").write_bytes(f"API_TOKEN={SECRET}\n".encode())
    (root / "secret.txt").write_bytes((f"line with {SECRET} in it\n" * 300).encode())
    (root / "zblock.bin").write_bytes(SECRET_BLOCK * 2)  # the secret starts a tar block
    for path in (root / "config" / "credentials.env", root / "secret.txt", root / "zblock.bin", root / "config"):
        set_mtime(path, BASE_MTIME)
    return root


def _data_offset(archive: Path, name: str) -> tuple[int, int]:
    with tarfile.open(archive) as tf:
        member = tf.getmember(name)
        return member.offset, member.offset_data


def _damage(case: str, archive: Path, manifest: Path, target: Path) -> None:
    raw = bytearray(archive.read_bytes())
    if case == "manifest-checksum-edited":
        data = json.loads(manifest.read_text())
        entry = next(e for e in data["files"] if e["path"] == "secret.txt")
        entry["checksum"] = "0" * 64
        manifest.write_text(json.dumps(data))
    elif case == "truncated-inside-the-secret":
        _header, start = _data_offset(archive, "secret.txt")
        archive.write_bytes(bytes(raw[: start + 1000]))
    elif case == "flipped-byte-in-the-secret":
        _header, start = _data_offset(archive, "secret.txt")
        raw[start + 10] ^= 0x20
        archive.write_bytes(bytes(raw))
    elif case == "header-rewritten-so-data-reads-as-a-header":
        # zblock.bin's header says size 0, with a valid header checksum: its data, which
        # starts with the secret, is then read as the next header.
        header, _start = _data_offset(archive, "zblock.bin")
        block = raw[header : header + 512]
        block[124:136] = b"%011o\x00" % 0
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\x00 " % sum(block)
        raw[header : header + 512] = block
        archive.write_bytes(bytes(raw))
    elif case == "truncated-gzip":
        # (the gz archive made for this case) cut in the middle of the compressed stream
        archive.write_bytes(bytes(raw[: len(raw) // 2]))
    elif case == "restore-conflict":
        (target / "config").mkdir(parents=True)
        (target / "secret.txt").write_bytes(f"the user's own {SECRET}\n".encode())
        (target / "config" / "credentials.env").write_bytes(f"OLD={SECRET}\n".encode())
    else:
        raise AssertionError(case)


SECRET_CASES = [
    "manifest-checksum-edited",
    "truncated-inside-the-secret",
    "flipped-byte-in-the-secret",
    "header-rewritten-so-data-reads-as-a-header",
    "truncated-gzip",
    "restore-conflict",
]


@pytest.mark.parametrize("case", SECRET_CASES)
def test_errors_never_show_file_contents(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = _secret_source(tmp_path / "source")
    compression = "gz" if case == "truncated-gzip" else ""
    made = backup(source, tmp_path / "backups", compression=compression, now=fixed_now())
    archive, manifest = made.backup_path, made.manifest_path
    assert SECRET.encode() in decompressed_tar_bytes(archive)  # the archive holds the secret
    target = tmp_path / "target"
    _damage(case, archive, manifest, target)
    before = snapshot(target)
    if case != "truncated-gzip":
        assert SECRET.encode() in archive.read_bytes()  # and still does, damaged

    outputs: list[str] = []
    result = restore_backup(archive, target)
    assert result.success is False
    outputs += [result.error or "", *result.warnings]
    report = verify_backup(archive)
    assert report.ok is (case == "restore-conflict")
    outputs += [*report.lines(), report.summary(), json.dumps(report.to_dict())]
    for argv in (
        ["restore", str(archive), str(target)],
        ["restore", str(archive), str(target), "--json"],
        ["verify", str(archive)],
        ["verify", str(archive), "--json"],
    ):
        code = main(argv)
        captured = capsys.readouterr()
        expected_code = 0 if (argv[0] == "verify" and case == "restore-conflict") else 1
        assert code == expected_code, (argv, captured.err)
        outputs += [captured.out, captured.err]
    text = "\n".join(outputs)

    assert SECRET not in text, text
    assert "API_TOKEN" not in text and "line with" not in text
    assert snapshot(target) == before
    if case == "restore-conflict":  # names the conflicts, never their contents
        assert "secret.txt" in (result.error or "") and "config/credentials.env" in (result.error or "")
    else:
        assert not target.exists()


def test_the_secret_check_can_fail(tmp_path: Path) -> None:
    """The probe is not vacuous: a message that quoted the data would contain the secret."""
    source = _secret_source(tmp_path / "source")
    made = backup(source, tmp_path / "backups", compression="")
    _header, start = _data_offset(made.backup_path, "zblock.bin")
    shown = made.backup_path.read_bytes()[start : start + 100].decode()
    assert SECRET in shown


def _private_tree(root: Path) -> Path:
    (root / "private").mkdir(parents=True)
    (root / "private" / "key.pem").write_text("not for other users")
    (root / "private" / "key.pem").chmod(0o644)
    (root / "private").chmod(0o700)
    (root / "public.txt").write_text("hello")
    return root


@pytest.mark.parametrize("target_exists", [False, True], ids=["new-target", "existing-target"])
def test_restoring_never_exposes_a_private_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target_exists: bool
) -> None:
    """While a restore runs, its staging directory is 0700; a directory archived 0700 has
    that mode at the moment it appears under the target, not only afterwards."""
    import backup.restore as restore_module

    result = create_backup(BackupConfig(_private_tree(tmp_path / "src"), tmp_path / "backups"))
    target = tmp_path / "target"
    if target_exists:
        target.mkdir()
        (target / "mine.txt").write_text("keep")
    seen: list[tuple[str, int]] = []
    real_move = restore_module.rename_noreplace

    def watching_move(source_fd: int, source: str, target_fd: int, destination: str) -> None:
        info = os.stat(source, dir_fd=source_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            # Whatever is about to become visible: the staging root or one of its directories.
            seen.append((source, stat.S_IMODE(info.st_mode)))
            if source.startswith(".target.obs-restore-"):
                private = os.stat(os.path.join(source, "private"), dir_fd=source_fd)
                seen.append(("private-inside-staging", stat.S_IMODE(private.st_mode)))
        real_move(source_fd, source, target_fd, destination)

    monkeypatch.setattr(restore_module, "rename_noreplace", watching_move)
    previous = os.umask(0o022)
    try:
        restored = restore_backup(result.backup_path, target)
    finally:
        os.umask(previous)
    monkeypatch.undo()

    assert restored.success, restored.error
    if target_exists:
        assert seen == [("private", 0o700)]
        assert (target / "mine.txt").read_text() == "keep"
    else:
        assert [mode for _, mode in seen] == [0o700, 0o700]  # staging root, and private/ in it
        assert stat.S_IMODE(target.stat().st_mode) == 0o755  # then the target gets the umask's mode
    assert stat.S_IMODE((target / "private").stat().st_mode) == 0o700
    assert (target / "private" / "key.pem").read_text() == "not for other users"
