"""Tests for backup.stream.tarreader: ArchiveReader, sniff_compression and
read_archive_marker, over archives in a LocalStorage under ``tmp_path``.

Archives are addressed as ``ObjectRef``s with a label unlike their path, to show that
every message names the archive by its label (what the user gave), whatever storage
it lives in.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from backup.errors import ArchiveError
from backup.scan import scan_source
from backup.storage import LocalStorage, ObjectRef, locate
from backup.stream.compression import COMPRESSIONS, Compression
from backup.stream.tarreader import ArchiveReader, read_archive_marker, sniff_compression
from backup.stream.tarwriter import write_entries

ROWS = list(COMPRESSIONS.values())
LABEL = "remote://backups/the-archive"
A_DATA = os.urandom(5000)
B_DATA = b"b" * 3000


def _ids(row: Compression) -> str:
    return row.cli_name


def _tar_bytes() -> bytes:
    """A directory, two files and a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("d")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in (("d/a.bin", A_DATA), ("b.txt", B_DATA)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("l")
        link.type = tarfile.SYMTYPE
        link.linkname = "b.txt"
        tar.addfile(link)
    return buffer.getvalue()


def _compress(compression: str, data: bytes) -> bytes:
    row = COMPRESSIONS[compression]
    raw = io.BytesIO()
    writer = row.writer(raw, row.default_level, None)
    writer.write(data)
    writer.close()
    return raw.getvalue()


def _store(tmp_path: Path, name: str, blob: bytes) -> ObjectRef:
    (tmp_path / name).write_bytes(blob)
    return ObjectRef(LocalStorage(tmp_path), name, LABEL)


def _read_all(reader: ArchiveReader) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for member in reader.members():
        found[member.name] = b"".join(bytes(chunk) for chunk in reader.chunks(member)) if member.isfile() else None
    return found


def _error(ref: ObjectRef, *, read: bool = True, compression: str | None = None) -> str:
    with pytest.raises(ArchiveError) as info:
        with ArchiveReader(ref, compression=compression) as reader:
            for member in reader.members():
                if read:
                    for _ in reader.chunks(member):
                        pass
            reader.finish()
    assert info.value.path == LABEL
    return str(info.value)


# --- reading -----------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_members_and_chunks_of_every_compression(tmp_path: Path, row: Compression) -> None:
    """Members in archive order with their data; the format is recognised by its first bytes."""
    ref = _store(tmp_path, "x" + row.suffix, _compress(row.name, _tar_bytes()))
    with ArchiveReader(ref) as reader:
        assert reader.compression == row.name
        assert reader.label == LABEL
        assert _read_all(reader) == {"d": None, "d/a.bin": A_DATA, "b.txt": B_DATA, "l": None}


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_finish_gives_the_stored_file_s_size_and_sha256(tmp_path: Path, row: Compression) -> None:
    """The digest is of the bytes as stored (what a manifest records), taken in the same
    pass that read the members."""
    blob = _compress(row.name, _tar_bytes())
    ref = _store(tmp_path, "x" + row.suffix, blob)
    with ArchiveReader(ref) as reader:
        _read_all(reader)
        assert reader.finish() == (len(blob), hashlib.sha256(blob).hexdigest())


def test_finish_uses_the_algorithm_given(tmp_path: Path) -> None:
    blob = _compress("xz", _tar_bytes())
    with ArchiveReader(_store(tmp_path, "x.tar.xz", blob), "sha512") as reader:
        assert reader.finish() == (len(blob), hashlib.sha512(blob).hexdigest())


@pytest.mark.parametrize("compression", ["", "gz"])
def test_data_not_read_is_skipped(tmp_path: Path, compression: str) -> None:
    """A caller may take the members only: each one's data is read through, unseen, and
    the digest still covers the whole archive."""
    blob = _compress(compression, _tar_bytes())
    ref = _store(tmp_path, "x" + COMPRESSIONS[compression].suffix, blob)
    with ArchiveReader(ref) as reader:
        assert [(m.name, m.size) for m in reader.members()] == [
            ("d", 0),
            ("d/a.bin", len(A_DATA)),
            ("b.txt", len(B_DATA)),
            ("l", 0),
        ]
        assert reader.finish() == (len(blob), hashlib.sha256(blob).hexdigest())


def test_one_member_read_and_the_next_skipped(tmp_path: Path) -> None:
    ref = _store(tmp_path, "x.tar", _tar_bytes())
    with ArchiveReader(ref) as reader:
        members = reader.members()
        assert next(members).name == "d"
        first = next(members)
        assert b"".join(bytes(c) for c in reader.chunks(first)) == A_DATA
        assert next(members).name == "b.txt"  # not read
        assert next(members).name == "l"
        assert next(members, None) is None


def test_chunks_are_views_of_one_reused_buffer(tmp_path: Path) -> None:
    """Each chunk must be used before the next is asked for (it is the same buffer)."""
    big = os.urandom(3 * (1 << 20) + 5)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("big")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
    with ArchiveReader(_store(tmp_path, "big.tar", buffer.getvalue())) as reader:
        member = next(reader.members())
        chunks = reader.chunks(member)
        first = next(chunks)
        copy = bytes(first)
        second = next(chunks)
        assert isinstance(first, memoryview)
        assert first.obj is second.obj
        assert copy == big[: len(copy)]


def test_a_located_path_reads_the_same(tmp_path: Path) -> None:
    """locate() turns a path into the object: the label is then the path."""
    path = tmp_path / "x.tar.bz2"
    path.write_bytes(_compress("bz2", _tar_bytes()))
    with ArchiveReader(locate(path)) as reader:
        assert reader.label == str(path)
        assert _read_all(reader)["b.txt"] == B_DATA


# --- compression given or sniffed --------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_sniff_compression_goes_by_content_not_name(tmp_path: Path, row: Compression) -> None:
    """Every format is recognised from its first bytes, under a name that says nothing."""
    assert sniff_compression(_store(tmp_path, "archive", _compress(row.name, _tar_bytes()))) == row.name


def test_sniffing_a_short_or_empty_file(tmp_path: Path) -> None:
    assert sniff_compression(_store(tmp_path, "short", b"\x1f\x8b")) == "gz"
    assert sniff_compression(_store(tmp_path, "empty", b"")) == ""


def test_an_archive_of_unknown_origin_is_sniffed_whatever_its_name(tmp_path: Path) -> None:
    """A gzip stream under a ".tar" name is read as gzip."""
    ref = _store(tmp_path, "mislabelled.tar", _compress("gz", _tar_bytes()))
    with ArchiveReader(ref) as reader:
        assert reader.compression == "gz"
        assert _read_all(reader)["d/a.bin"] == A_DATA


def test_a_given_compression_is_used_not_guessed(tmp_path: Path) -> None:
    """Our own archives take their format from the manifest, never from their bytes: told
    "uncompressed", a gzip stream is not a valid tar archive."""
    ref = _store(tmp_path, "x.tar.gz", _compress("gz", _tar_bytes()))
    with ArchiveReader(ref, compression="") as reader:
        assert reader.compression == ""
    assert _error(ref, compression="").startswith(f"{LABEL}: not a valid tar archive (")
    with ArchiveReader(ref, compression="gz") as reader:
        assert _read_all(reader)["b.txt"] == B_DATA


# --- damage ------------------------------------------------------------------------------


def test_a_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as info:
        ArchiveReader(ObjectRef(LocalStorage(tmp_path), "gone.tar", LABEL))
    assert str(info.value) == f"{LABEL}: archive not found"
    assert info.value.path == LABEL


def test_a_directory_in_place_of_an_archive(tmp_path: Path) -> None:
    (tmp_path / "folder.tar").mkdir()
    with pytest.raises(ArchiveError) as info:
        ArchiveReader(ObjectRef(LocalStorage(tmp_path), "folder.tar", LABEL))
    assert str(info.value) == f"{LABEL}: is a directory, not an archive"


@pytest.mark.parametrize(
    ("blob", "detail"),
    [(b"", "empty file"), (os.urandom(2000), "invalid header"), (b"x" * 100, "unexpected end of data in header")],
    ids=["empty", "random", "short"],
)
def test_what_is_not_a_tar_archive_says_so(tmp_path: Path, blob: bytes, detail: str) -> None:
    message = _error(_store(tmp_path, "x.tar", blob))
    assert message.startswith(f"{LABEL}: not a valid tar archive (")
    assert detail in message


def test_an_archive_cut_inside_a_member_s_data(tmp_path: Path) -> None:
    tar = _tar_bytes()
    ref = _store(tmp_path, "x.tar", tar[: 3 * 512 + 2000])  # inside d/a.bin
    assert _error(ref) == f"{LABEL}: archive is truncated at byte {3 * 512 + 2000}, inside 'd/a.bin'"


def test_an_archive_cut_inside_data_that_is_skipped(tmp_path: Path) -> None:
    """Skipped data is read through too, so the cut is found however large the member claims to be."""
    tar = _tar_bytes()
    ref = _store(tmp_path, "x.tar", tar[: 3 * 512 + 2000])
    message = _error(ref, read=False)
    assert message.startswith(f"{LABEL}: archive is truncated at byte {3 * 512 + 2000} (")
    assert "'d/a.bin'" in message


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_compressed_archive_cut_short(tmp_path: Path, compression: str) -> None:
    blob = _compress(compression, _tar_bytes() + os.urandom(30000))
    ref = _store(tmp_path, "x" + COMPRESSIONS[compression].suffix, blob[: len(blob) // 2])
    assert _error(ref).startswith(f"{LABEL}: archive is truncated at byte {len(blob) // 2} (")


def test_a_compressed_archive_with_damaged_data(tmp_path: Path) -> None:
    blob = bytearray(_compress("gz", _tar_bytes()))
    blob[len(blob) // 2] ^= 0xFF
    message = _error(_store(tmp_path, "x.tar.gz", bytes(blob)))
    assert message.startswith(f"{LABEL}: archive is damaged (")


def test_damage_in_a_compressed_trailer_is_found_by_finish(tmp_path: Path) -> None:
    """Every member reads; the gzip CRC after them is checked when the stream is drained."""
    blob = bytearray(_compress("gz", _tar_bytes()))
    blob[-8] ^= 0xFF
    ref = _store(tmp_path, "x.tar.gz", bytes(blob))
    with ArchiveReader(ref) as reader:
        with pytest.raises(ArchiveError) as info:
            _read_all(reader)
            reader.finish()
    assert str(info.value).startswith(f"{LABEL}: archive is damaged (CRC check failed")


def test_an_archive_without_end_of_archive_blocks_is_tolerated(tmp_path: Path) -> None:
    """As GNU tar does: a stream that ends cleanly after a member is not damage (a
    manifest's archive checksum is what catches a cut there)."""
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes())) as tar:
        last = tar.getmembers()[-1]
    ref = _store(tmp_path, "x.tar", _tar_bytes()[: last.offset_data])
    with ArchiveReader(ref) as reader:
        assert list(_read_all(reader)) == ["d", "d/a.bin", "b.txt", "l"]


# --- the writer's mark -------------------------------------------------------------------


def test_read_archive_marker_names_the_backup_that_wrote_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"f")
    out = io.BytesIO()
    entries = scan_source(source).entries
    write_entries(out, entries, root=str(source), algorithm="sha256", backup_id="b_20240506_070809-3")
    backups = tmp_path / "backups"
    backups.mkdir()
    assert read_archive_marker(_store(backups, "b.tar.zst", _compress("zst", out.getvalue()))) == "b_20240506_070809-3"
    with ArchiveReader(_store(backups, "plain.tar", out.getvalue())) as reader:
        next(reader.members())
        assert reader.global_records == {"comment": "obs-backup b_20240506_070809-3"}


def test_read_archive_marker_survives_damage_just_after_the_mark(tmp_path: Path) -> None:
    """An archive cut right after its mark is still known as ours, so that it is listed
    and a check reports it damaged, instead of its vanishing from every listing."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(3000))
    out = io.BytesIO()
    write_entries(out, scan_source(source).entries, root=str(source), algorithm="sha256", backup_id="b_20240506_070809")
    cut = out.getvalue()[:3000]  # the mark (a pax global header), then part of a member
    ref = _store(tmp_path, "b.tar", cut)
    with pytest.raises(ArchiveError), ArchiveReader(ref) as reader:
        list(reader.members())
    assert read_archive_marker(ref) == "b_20240506_070809"


@pytest.mark.parametrize(
    "blob",
    [_tar_bytes(), _compress("gz", _tar_bytes()), b"not an archive at all", b""],
    ids=["foreign-tar", "foreign-tar-gz", "garbage", "empty"],
)
def test_read_archive_marker_of_anything_else_is_none(tmp_path: Path, blob: bytes) -> None:
    """Another program's archive, or something unreadable, carries no mark: None, never an error."""
    assert read_archive_marker(_store(tmp_path, "x.tar", blob)) is None


def test_read_archive_marker_of_a_missing_object_is_none(tmp_path: Path) -> None:
    assert read_archive_marker(ObjectRef(LocalStorage(tmp_path), "gone.tar", LABEL)) is None


def test_a_mark_from_another_tool_is_not_ours(tmp_path: Path) -> None:
    """A global header with some other comment names no backup."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "made by hand"}):
        pass
    assert read_archive_marker(_store(tmp_path, "x.tar", buffer.getvalue())) is None
