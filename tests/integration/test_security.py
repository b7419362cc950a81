"""What a restore does with owners and set-id bits, what the backup directory always is
(private, whatever the umask), and what an error never shows (file contents).

We run as root, which is what makes the ownership and set-id tests meaningful: as GNU
tar does for root, a restore gives entries their archived owners and then keeps their
set-id bits; told not to (``same_owner=False``, ``--no-same-owner``) it changes no
owner, and a set-id bit on a file that is now root's would hand root's identity to
whoever made the archive, so it is removed.
"""

from __future__ import annotations

import ast
import grp
import json
import os
import pwd
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from backup import BackupConfig, BackupScheduler, SchedulerConfig, create_backup, restore_backup, verify_backup
from backup.cli import main
from backup.monitor import STATE_NAME
from backup.storage.lock import LOCK_NAME

from . import test_restore_modes
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
from .test_restore_modes import NOBODY, _as_nobody

shared = test_restore_modes.shared  # the same fixture: a directory another user can reach


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- set-user-id, set-group-id and sticky bits ---------------------------------------------

OTHER = 4321  # an owner with no name on this machine
SPECIAL = {"suid": 0o4755, "sgid": 0o2755, "sticky": 0o1777}  # two files and a directory
SET_ID = ("suid", "sgid")
# Without their owners the set-id bits are dropped; the sticky bit of a shared directory
# is kept either way.
STRIPPED = {"suid": 0o755, "sgid": 0o755, "sticky": 0o1777}


def _special_tree(root: Path) -> Path:
    """Real files with the bits set, owned by OTHER (root may do both on anything)."""
    (root / "sticky").mkdir(parents=True)
    (root / "sticky" / "inside.txt").write_bytes(b"inside\n")
    for name in SET_ID:
        (root / name).write_bytes(b"#!/bin/sh\necho " + name.encode() + b"\n")
        os.chown(root / name, OTHER, OTHER)
    for name, mode in SPECIAL.items():
        os.chmod(root / name, mode)  # after the chown, which clears set-id bits
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
        for info, _data in members[:2]:
            info.uid = info.gid = OTHER
        return write_tar(tmp_path / "special.tar.gz", members, mode="w:gz")
    source = _special_tree(tmp_path / "source")
    if how == "gnu-tar":
        archive = tmp_path / "special-gnu.tar"
        subprocess.run([GNU_TAR, "-cf", str(archive), "-C", str(source), "."], check=True, capture_output=True)
        return archive
    return backup(source, tmp_path / "backups", compression="xz").backup_path  # ours, with a manifest


def _owner(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid


@pytest.mark.parametrize("owners", ["restored", "not-restored"])
@pytest.mark.parametrize("how", ["tarfile", "gnu-tar", "obs-backup"])
def test_set_id_bits_are_kept_only_with_their_owners_and_the_sticky_bit_always(
    tmp_path: Path, how: str, owners: str
) -> None:
    """As root, by default, files get their archived owners and keep their set-id bits (the
    owner is set first: a chown after the chmod would clear them). With same_owner=False
    they are root's, and the bits are removed, with one warning naming the entries."""
    archive = _special_archive(tmp_path, how)
    with tarfile.open(archive) as tf:  # the archive really asks for them
        members = {member.name.removeprefix("./"): member for member in tf.getmembers()}
    assert {name: members[name].mode for name in SPECIAL} == SPECIAL
    assert {(members[name].uid, members[name].gid) for name in SET_ID} == {(OTHER, OTHER)}
    target = tmp_path / "restored"
    keep = owners == "restored"
    result = restore_backup(archive, target, **({} if keep else {"same_owner": False}))
    assert result.success, result.error
    assert result.verified is (how == "obs-backup")
    stripped = [warning for warning in result.warnings if "set-user-id and set-group-id bits" in warning]
    if keep:
        assert {name: _mode(target / name) for name in SPECIAL} == SPECIAL
        assert {_owner(target / name) for name in SET_ID} == {(OTHER, OTHER)}
        assert stripped == [], result.warnings
    else:
        assert {name: _mode(target / name) for name in SPECIAL} == STRIPPED
        assert {_owner(target / name) for name in SET_ID} == {(os.getuid(), os.getgid())}
        assert len(stripped) == 1 and "2 entries (" in stripped[0], result.warnings
        assert "suid" in stripped[0] and "sgid" in stripped[0] and "sticky" not in stripped[0]
        assert "\n" not in stripped[0]
    assert (target / "sticky" / "inside.txt").read_bytes() == b"inside\n"
    assert _mode(target / "sticky" / "inside.txt") == 0o644


def test_no_same_owner_on_the_command_line_strips_set_id_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _special_archive(tmp_path, "obs-backup")
    target = tmp_path / "restored"
    assert main(["restore", str(archive), str(target), "--no-same-owner"]) == 0
    err = capsys.readouterr().err
    assert {name: _mode(target / name) for name in SPECIAL} == STRIPPED
    assert {_owner(target / name) for name in SET_ID} == {(os.getuid(), os.getgid())}
    assert err.count("set-user-id and set-group-id bits were not restored on 2 entries (") == 1, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to restore as another user")
def test_a_user_who_is_not_root_gets_set_id_bits_stripped_and_cannot_ask_for_owners(shared: Path) -> None:
    """Not root, every restored file is the restoring user's own: set-id bits are removed,
    with the warning; asking for the archived owners is refused before anything is written."""
    archive = _special_archive(shared, "obs-backup")
    os.chmod(archive.parent, 0o755)
    for name in os.listdir(archive.parent):
        os.chmod(archive.parent / name, 0o644)
    home = shared / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)

    def work() -> str:
        kept = restore_backup(archive, home / "restored")
        refused = restore_backup(archive, home / "refused", same_owner=True)
        warnings = [warning for warning in kept.warnings if "set-user-id" in warning]
        return repr((kept.success, kept.error, warnings, refused.success, refused.error))

    kept, error, warnings, refused, refusal = ast.literal_eval(_as_nobody(work))
    assert (kept, error) == (True, None)
    assert {name: _mode(home / "restored" / name) for name in SPECIAL} == STRIPPED
    assert {_owner(home / "restored" / name) for name in SPECIAL} == {(NOBODY, NOBODY)}
    assert len(warnings) == 1 and "2 entries (" in warnings[0], warnings
    assert refused is False and "only root can give restored files their archived owners" in refusal
    assert not (home / "refused").exists()


# --- ownership ---------------------------------------------------------------------------------


def _owned_archive(tmp_path: Path, how: str) -> Path:
    if how == "tarfile":
        members = [tar_dir("dir"), tar_file("dir/file.txt", b"owned\n"), tar_link("link", "dir/file.txt")]
        members.append(tar_link("hard", "dir/file.txt", tarfile.LNKTYPE))
        for info, _data in members:
            info.uid = info.gid = OTHER
            info.uname = info.gname = "someone"  # a name nobody has here: the number is used
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


def _owned_paths(target: Path, how: str) -> list[Path]:
    restored = [target / "dir", target / "dir" / "file.txt", target / "link"]
    if how == "tarfile":
        restored.append(target / "hard")
    return restored


@pytest.mark.parametrize("how", ["tarfile", "gnu-tar", "obs-backup"])
def test_as_root_a_restore_gives_entries_their_archived_owners(tmp_path: Path, how: str) -> None:
    """As GNU tar does for root: every entry, the symlink itself included, gets the owner
    the archive names (here by number: no user or group here is called "someone")."""
    for lookup in (pwd.getpwnam, grp.getgrnam):
        with pytest.raises(KeyError):
            lookup("someone")
    archive = _owned_archive(tmp_path, how)
    with tarfile.open(archive) as tf:  # the archive really names another owner
        owners = {(m.uid, m.gid) for m in tf.getmembers() if m.name not in (".", "./")}
    assert owners == {(OTHER, OTHER)}
    target = tmp_path / "restored"
    result = restore_backup(archive, target)
    assert result.success, result.error
    for path in _owned_paths(target, how):
        assert _owner(path) == (OTHER, OTHER), path
    assert (target / "link").read_bytes() == b"owned\n"


@pytest.mark.parametrize("how", ["tarfile", "gnu-tar", "obs-backup"])
def test_with_no_same_owner_a_restore_never_changes_ownership(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """same_owner=False, or --no-same-owner: every entry belongs to the restoring user."""
    archive = _owned_archive(tmp_path, how)
    me = (os.getuid(), os.getgid())
    result = restore_backup(archive, tmp_path / "restored", same_owner=False)
    assert result.success, result.error
    assert main(["restore", str(archive), str(tmp_path / "cli"), "--no-same-owner"]) == 0, capsys.readouterr().err
    for target in (tmp_path / "restored", tmp_path / "cli"):
        for path in _owned_paths(target, how):
            assert _owner(path) == me, path
        assert (target / "link").read_bytes() == b"owned\n"


def test_owners_are_found_by_name_unless_numeric_owner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user or group name that exists here wins over the archived number (the same
    user may have another id on another machine), as in GNU tar; a name unknown here
    falls back to the number; numeric_owner (--numeric-owner) uses the numbers only."""
    daemon = (pwd.getpwnam("daemon").pw_uid, grp.getgrnam("daemon").gr_gid)
    assert daemon != (OTHER, OTHER)
    named, data = tar_file("named.txt", b"named\n")
    named.uid = named.gid = OTHER
    named.uname = named.gname = "daemon"
    unknown, other_data = tar_file("unknown.txt", b"unknown\n")
    unknown.uid = unknown.gid = OTHER + 1
    unknown.uname, unknown.gname = "no-such-user-here", "no-such-group-here"
    archive = write_tar(tmp_path / "names.tar", [(named, data), (unknown, other_data)])

    by_name = tmp_path / "by-name"
    assert restore_backup(archive, by_name).success
    assert _owner(by_name / "named.txt") == daemon
    assert _owner(by_name / "unknown.txt") == (OTHER + 1, OTHER + 1)

    numeric, cli = tmp_path / "numeric", tmp_path / "cli"
    assert restore_backup(archive, numeric, numeric_owner=True).success
    assert main(["restore", str(archive), str(cli), "--numeric-owner"]) == 0, capsys.readouterr().err
    for target in (numeric, cli):
        assert _owner(target / "named.txt") == (OTHER, OTHER)
        assert _owner(target / "unknown.txt") == (OTHER + 1, OTHER + 1)


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
    assert {LOCK_NAME, STATE_NAME} <= set(os.listdir(cli)) and len(os.listdir(cli)) == 4  # create records its run too
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
