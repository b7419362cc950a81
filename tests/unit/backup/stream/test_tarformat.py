"""The tar header encoder and the stream parser, checked against tarfile and GNU tar."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from backup.stream.tarformat import BLOCK, MAX_METADATA_BYTES, TarFormatError, TarStreamReader, encode_header


def _tarfile_header(name: str, kind: bytes, **fields: object) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = int(fields.get("size", 0))  # type: ignore[call-overload]
    info.mode = int(fields.get("mode", 0o644))  # type: ignore[call-overload]
    info.mtime = int(fields.get("mtime", 0))  # type: ignore[call-overload]
    info.uid = int(fields.get("uid", 0))  # type: ignore[call-overload]
    info.gid = int(fields.get("gid", 0))  # type: ignore[call-overload]
    info.uname = info.gname = ""
    info.linkname = str(fields.get("linkname", ""))
    info.devmajor = int(fields.get("devmajor", 0))  # type: ignore[call-overload]
    info.devminor = int(fields.get("devminor", 0))  # type: ignore[call-overload]
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("name", "kind", "fields"),
    [
        ("a/b.txt", tarfile.REGTYPE, {"size": 5, "mode": 0o640, "mtime": 1_700_000_000, "uid": 1000, "gid": 100}),
        ("dir", tarfile.DIRTYPE, {"mode": 0o755, "mtime": 5}),
        ("dir/", tarfile.DIRTYPE, {"mode": 0o700}),
        ("link", tarfile.SYMTYPE, {"linkname": "x/y", "mode": 0o777}),
        ("x" * 100, tarfile.REGTYPE, {"size": 8**11 - 1}),
        ("long/" + "n" * 120, tarfile.REGTYPE, {"size": 1}),
        ("한국어.txt", tarfile.REGTYPE, {"size": 3}),
        ("big", tarfile.REGTYPE, {"size": 8**11, "uid": 8**7, "mtime": 8**11}),
        ("l2", tarfile.SYMTYPE, {"linkname": "t" * 150}),
        # Each field at its ustar limit (still in the header) and one past it (a pax record).
        ("y" * 99, tarfile.REGTYPE, {}),
        ("y" * 101, tarfile.REGTYPE, {}),
        ("l3", tarfile.SYMTYPE, {"linkname": "t" * 100}),
        ("l4", tarfile.SYMTYPE, {"linkname": "t" * 101}),
        ("ids", tarfile.REGTYPE, {"uid": 8**7 - 1, "gid": 8**7 - 1, "mode": 8**7 - 1}),
        ("gid", tarfile.REGTYPE, {"gid": 8**7}),
        ("times", tarfile.REGTYPE, {"mtime": 8**11 - 1, "size": 8**11 - 1}),
        ("null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
        ("sda", tarfile.BLKTYPE, {"devmajor": 8**7 - 1, "devminor": 0}),
    ],
)
def test_encode_header_is_byte_identical_to_tarfile_pax(name: str, kind: bytes, fields: dict[str, object]) -> None:
    ours = encode_header(name, kind, **fields)  # type: ignore[arg-type]
    assert ours == _tarfile_header(name, kind, **fields)
    assert len(ours) % BLOCK == 0


def _read_all(data: bytes) -> list[tuple[str, bytes, int, str, bytes]]:
    reader = TarStreamReader(io.BytesIO(data))
    members = []
    while (member := reader.next()) is not None:
        body = b""
        if member.isreg():
            body = reader._stream.read(member.size)  # type: ignore[attr-defined]
            reader.skip_padding()
        members.append((member.name, member.type, member.size, member.linkname, body))
    return members


def _archive(fmt: int, members: list[tuple[str, bytes, bytes | str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = str(payload)
                tar.addfile(info)
            elif kind == tarfile.DIRTYPE:
                tar.addfile(info)
            else:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


LONG = "deep/" * 30 + "file.txt"
MEMBERS = [
    ("top", tarfile.DIRTYPE, b""),
    ("top/a.txt", tarfile.REGTYPE, b"alpha\n"),
    ("top/empty", tarfile.REGTYPE, b""),
    (LONG, tarfile.REGTYPE, b"x" * 1000),
    ("top/link", tarfile.SYMTYPE, "a.txt"),
    ("top/longlink", tarfile.SYMTYPE, "t/" * 80 + "target"),
    ("top/ünïcode.txt", tarfile.REGTYPE, b"u"),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reader_reads_what_tarfile_writes(fmt: int) -> None:
    data = _archive(fmt, MEMBERS)

    members = _read_all(data)

    assert [(m[0], m[4]) for m in members] == [
        (name, payload if kind == tarfile.REGTYPE else b"") for name, kind, payload in MEMBERS
    ]
    assert [m[3] for m in members if m[1] == tarfile.SYMTYPE] == ["a.txt", "t/" * 80 + "target"]


def test_reader_reads_ustar_with_prefix_field() -> None:
    name = "p" * 60 + "/" + "q" * 60
    members = _read_all(_archive(tarfile.USTAR_FORMAT, [(name, tarfile.REGTYPE, b"data")]))
    assert members == [(name, tarfile.REGTYPE, 4, "", b"data")]


def test_pax_global_header_applies_to_later_members() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "1234"}) as tar:
        info = tarfile.TarInfo("a")
        info.mtime = 99
        tar.addfile(info, io.BytesIO(b""))
    reader = TarStreamReader(io.BytesIO(buffer.getvalue()))
    member = reader.next()
    assert member is not None
    assert member.name == "a"
    # Pax records, global ones included, override the fields of the ustar header.
    assert member.mtime == 1234.0


def _pax_member(records: bytes) -> bytes:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(records)
    block = header.tobuf(tarfile.USTAR_FORMAT)
    body = records + bytes(-len(records) % BLOCK)
    member = tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT)
    return block + body + member + bytes(2 * BLOCK)


def test_oversized_pax_record_is_refused_without_reading_it() -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = MAX_METADATA_BYTES + 1
    reader = TarStreamReader(io.BytesIO(header.tobuf(tarfile.USTAR_FORMAT)))
    with pytest.raises(TarFormatError, match="exceeds the"):
        reader.next()


@pytest.mark.parametrize(
    "records",
    [b"abc path=x\n", b"20 path=x\n", b"9 pathx\n\n", b"0 x=\n"],
)
def test_malformed_pax_records_are_refused(records: bytes) -> None:
    with pytest.raises(TarFormatError, match="malformed pax record"):
        TarStreamReader(io.BytesIO(_pax_member(records))).next()


def _pax_record(key: str, value: str) -> bytes:
    """One well-formed pax record (its length counts its own digits)."""
    payload = f" {key}={value}\n".encode()
    length = len(payload) + len(str(len(payload)))
    length += len(str(length)) - len(str(len(payload)))
    return str(length).encode() + payload


@pytest.mark.parametrize("value", ["ab", "1_0", "+1", " 1", "1 ", "0x10", "1e3", "\uff11"])
def test_pax_size_that_is_not_a_number_is_refused(value: str) -> None:
    """Numbers in pax records are digits, as POSIX defines them: not whatever int() takes."""
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(_pax_member(_pax_record("size", value)))).next()
    assert str(caught.value) == f"malformed number {value!r} in pax record 'size'"


def test_a_negative_pax_size_is_a_malformed_header() -> None:
    with pytest.raises(TarFormatError, match="malformed header: member 'f' has a negative size"):
        TarStreamReader(io.BytesIO(_pax_member(_pax_record("size", "-1")))).next()


def test_bad_header_checksum_is_refused() -> None:
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[0] ^= 1
    with pytest.raises(TarFormatError, match="invalid header"):
        TarStreamReader(io.BytesIO(bytes(block))).next()


def test_empty_stream_and_zero_blocks() -> None:
    with pytest.raises(TarFormatError, match="empty file"):
        TarStreamReader(io.BytesIO(b"")).next()
    assert TarStreamReader(io.BytesIO(bytes(2 * BLOCK))).next() is None


def test_truncated_header_and_data() -> None:
    whole = _archive(tarfile.PAX_FORMAT, [("f", tarfile.REGTYPE, b"z" * 3000)])
    with pytest.raises(TarFormatError, match="unexpected end of data in header"):
        TarStreamReader(io.BytesIO(whole[:100])).next()
    reader = TarStreamReader(io.BytesIO(whole[: BLOCK + 1000]))
    member = reader.next()
    assert member is not None
    with pytest.raises(TarFormatError, match="unexpected end of data"):
        reader.skip_data(member)


@pytest.mark.parametrize("kind", ["pax", "gnu long name", "gnu long link"])
def test_an_archive_that_ends_after_an_extended_header_is_cut_short(kind: str) -> None:
    """The member an extended header was for is lost: at the end of the data, and at
    end-of-archive blocks, the archive is damaged, not complete."""
    first = _archive(tarfile.PAX_FORMAT, [("a", tarfile.REGTYPE, b"1")])[: 2 * BLOCK]
    if kind == "pax":
        extended = encode_header("x" * 150, tarfile.REGTYPE, size=3)[:-BLOCK]  # header and records
    else:
        fmt = [("n" * 150, tarfile.REGTYPE, b"")] if kind == "gnu long name" else [("l", tarfile.SYMTYPE, "t" * 150)]
        extended = _archive(tarfile.GNU_FORMAT, fmt)[: 2 * BLOCK]
        assert extended[156:157] in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
    for tail, message in ((b"", "unexpected end of data after an extended header"), (bytes(2 * BLOCK), "between")):
        reader = TarStreamReader(io.BytesIO(first + extended + tail))
        member = reader.next()
        assert member is not None and member.name == "a"
        reader.skip_data(member)
        with pytest.raises(TarFormatError, match=message):
            reader.next()


def test_member_data_cut_at_a_skip_chunks_edge_is_cut_short() -> None:
    """Data skipped unread is read in 1 MiB chunks: a cut exactly at a chunk's edge,
    and one byte either side of it, is found, not taken for the archive's end."""
    size = 3 << 20
    whole = _archive(tarfile.PAX_FORMAT, [("big", tarfile.REGTYPE, b"q" * size), ("after", tarfile.REGTYPE, b"")])
    start = whole.index(b"q" * 64)
    for cut in (start + (1 << 20) - 1, start + (1 << 20), start + (1 << 20) + 1, start + size - 1):
        reader = TarStreamReader(io.BytesIO(whole[:cut]))
        member = reader.next()
        assert member is not None
        with pytest.raises(TarFormatError, match="unexpected end of data"):
            reader.skip_data(member)
            reader.next()


def test_pax_uid_and_gid_records_are_read() -> None:
    """Ids too large for the header's octal field travel in pax records (the header
    holds 0): they are what the member gets."""
    header = encode_header("big-ids", tarfile.REGTYPE, uid=8**7, gid=2**31 + 5, mode=0o600)
    member = TarStreamReader(io.BytesIO(header + bytes(2 * BLOCK))).next()
    assert member is not None and (member.uid, member.gid) == (8**7, 2**31 + 5)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is installed by make setup")
def test_gnu_tar_reads_every_field_at_and_past_its_limit(tmp_path: Path) -> None:
    rows = [
        ("n" * 100, {"uid": 8**7 - 1, "gid": 8**7 - 1, "size": 0}),
        ("m" * 101, {"uid": 8**7, "gid": 8**7, "size": 0}),
        ("t1", {"mtime": 8**11 - 1}),
        ("t2", {"mtime": 8**11}),
    ]
    data = b"".join(encode_header(name, tarfile.REGTYPE, **fields) for name, fields in rows) + bytes(2 * BLOCK)  # type: ignore[arg-type]
    archive = tmp_path / "limits.tar"
    archive.write_bytes(data)
    listing = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", "-tvf", str(archive)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == [name for name, _ in rows]
    assert listing[0].split()[1] == f"{8**7 - 1}/{8**7 - 1}" and listing[1].split()[1] == f"{8**7}/{8**7}"
    ours = TarStreamReader(io.BytesIO(data))
    read = [ours.next() for _ in rows]
    assert [(m.name, m.uid, m.mtime) for m in read if m is not None] == [
        (name, fields.get("uid", 0), fields.get("mtime", 0)) for name, fields in rows
    ]


def test_skip_data_then_next_member() -> None:
    reader = TarStreamReader(
        io.BytesIO(_archive(tarfile.PAX_FORMAT, [("a", tarfile.REGTYPE, b"1" * 700), ("b", tarfile.REGTYPE, b"2")]))
    )
    first = reader.next()
    assert first is not None
    reader.skip_data(first)
    second = reader.next()
    assert second is not None and second.name == "b"
    assert reader.next() is None


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is installed by make setup")
@pytest.mark.parametrize(
    "options",
    [
        ["--format=gnu"],
        ["--format=pax", "--sparse-version=0.0"],
        ["--format=pax", "--sparse-version=0.1"],
        ["--format=pax"],
    ],
    ids=["gnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)
def test_sparse_members_are_read_with_their_map(tmp_path: Path, options: list[str]) -> None:
    """Every sparse format GNU tar writes gives the real name and size, the data runs
    and, from the stream, only the bytes of those runs (holes are not stored)."""
    sparse = tmp_path / "src" / "holes.bin"
    sparse.parent.mkdir()
    with open(sparse, "wb") as handle:
        handle.write(b"start")
        handle.seek(5 << 20)
        handle.write(b"middle")
        handle.truncate(10 << 20)  # and a hole at the end
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", *options, "--sparse", "-cf", str(archive), "-C", str(sparse.parent), "holes.bin"], check=True
    )
    reader = TarStreamReader(io.BytesIO(archive.read_bytes()))
    member = reader.next()
    assert member is not None
    assert (member.name, member.type, member.realsize) == ("holes.bin", tarfile.REGTYPE, 10 << 20)
    assert member.sparse_map is not None and len(member.sparse_map) == 2
    assert member.size == sum(length for _, length in member.sparse_map) < 1 << 20
    data = reader._stream.read(member.size)  # type: ignore[attr-defined]
    reader.skip_padding()
    rebuilt = bytearray(member.realsize)
    position = 0
    for offset, length in member.sparse_map:
        rebuilt[offset : offset + length] = data[position : position + length]
        position += length
    assert rebuilt == sparse.read_bytes()
    assert reader.next() is None


def _with_checksum(block: bytearray) -> bytes:
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _one_member(block: bytes) -> tarfile.TarInfo:
    member = TarStreamReader(io.BytesIO(block + bytes(2 * BLOCK))).next()
    assert member is not None
    return member


@pytest.mark.parametrize(("field", "start"), [("size", 124), ("mtime", 136), ("uid", 108), ("mode", 100)])
@pytest.mark.parametrize("value", [b"1_0", b"+17", b"0x10", b"9", b"1 2"])
def test_a_header_number_that_is_not_octal_is_a_malformed_header(field: str, start: int, value: bytes) -> None:
    """As GNU tar reads them: octal digits between spaces and NULs, nothing int() also takes."""
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[start : start + len(value) + 1] = value + b"\x00"
    with pytest.raises(TarFormatError) as caught:
        _one_member(_with_checksum(block))
    assert str(caught.value) == f"malformed header: the header of 'f' holds {value.decode()!r} where a number belongs"


def test_base_256_numbers_are_read() -> None:
    """GNU tar writes numbers too large for octal in base-256 (first byte 0x80; 0xff for
    a negative time)."""
    info = tarfile.TarInfo("big")
    info.uid, info.gid, info.mtime = 2**40, 2**33, -(2**40)
    member = _one_member(info.tobuf(tarfile.GNU_FORMAT))
    assert (member.uid, member.gid, member.mtime) == (2**40, 2**33, -(2**40))


def test_a_signed_checksum_is_accepted() -> None:
    """Some old tars summed the header as signed bytes: for a name with bytes over 127
    the two sums differ, and either is a valid header."""
    block = bytearray(tarfile.TarInfo("caf\xe9").tobuf(tarfile.USTAR_FORMAT, "latin-1"))
    block[148:156] = b"        "
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\x00 " % signed
    assert _one_member(bytes(block)).name == "caf\udce9"


def test_the_prefix_field_is_a_name_only_in_a_posix_header() -> None:
    """In a GNU header the bytes after the user fields are times, not a name prefix; in
    a star header the prefix is 131 bytes, then the times."""
    gnu = bytearray(tarfile.TarInfo("name").tobuf(tarfile.GNU_FORMAT))
    gnu[345:357] = b"14000000000\x00"  # an access time, as tar --format=gnu -G writes it
    assert _one_member(_with_checksum(gnu)).name == "name"
    posix = bytearray(tarfile.TarInfo("name").tobuf(tarfile.USTAR_FORMAT))
    posix[345:351] = b"prefix"
    assert _one_member(_with_checksum(posix)).name == "prefix/name"
    star = bytearray(posix)
    star[476:500] = b"14000000000 14000000000 "
    assert _one_member(_with_checksum(star)).name == "prefix/name"


def test_device_numbers_are_read_only_for_devices() -> None:
    """A regular file's device fields mean nothing: garbage there is ignored, as GNU tar does."""
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[329:337] = b"garbage\x00"
    member = _one_member(_with_checksum(block))
    assert (member.name, member.devmajor) == ("f", 0)
    device = tarfile.TarInfo("null")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    member = _one_member(device.tobuf(tarfile.USTAR_FORMAT))
    assert (member.devmajor, member.devminor) == (1, 3)


def test_a_checksum_field_that_is_not_a_number_is_a_bad_checksum() -> None:
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[148:156] = b"zzzzzz\x00 "
    with pytest.raises(TarFormatError, match=r"^invalid header \(bad checksum\)$"):
        _one_member(bytes(block))


@pytest.mark.parametrize(
    ("sparse_map", "stored", "problem"),
    [
        ("0,10,100,10", 20, None),
        ("100,10,50,10", 20, "overlaps or goes backwards"),  # backwards, every length positive
        ("0,20,10,5", 25, "overlaps or goes backwards"),
        ("0,-5,10,5", 0, "overlaps or goes backwards"),  # a negative length, in order
        ("0,10,990,20", 30, "runs past its real size"),
        ("0,10,100,10", 25, "holds 20 bytes of data, the member 25"),
    ],
)
def test_a_pax_sparse_map_is_checked_against_itself_and_the_data(
    sparse_map: str, stored: int, problem: str | None
) -> None:
    records = {
        "GNU.sparse.size": "1000",
        "GNU.sparse.numblocks": str(sparse_map.count(",") // 2 + 1),
        "GNU.sparse.map": sparse_map,
    }
    data = encode_header("s", tarfile.REGTYPE, size=stored, records=records) + bytes(-(-stored // BLOCK) * BLOCK)
    reader = TarStreamReader(io.BytesIO(data + bytes(2 * BLOCK)))
    if problem is None:
        member = reader.next()
        assert member is not None and member.sparse_map == [(0, 10), (100, 10)]
        return
    with pytest.raises(TarFormatError, match=problem):
        reader.next()


def test_a_star_prefix_of_130_bytes_is_read_whole() -> None:
    """A star header's prefix is 131 bytes ending in a NUL, then two times: its name is
    the prefix up to that NUL, never the times after it. A POSIX prefix that fills all
    155 bytes is read whole."""
    star = bytearray(tarfile.TarInfo("name").tobuf(tarfile.USTAR_FORMAT))
    star[345:475] = b"p" * 130
    star[476:500] = b"14000000000 14000000000 "
    assert _one_member(_with_checksum(star)).name == "p" * 130 + "/name"
    full = bytearray(tarfile.TarInfo("name").tobuf(tarfile.USTAR_FORMAT))
    full[345:500] = b"q" * 155
    assert _one_member(_with_checksum(full)).name == "q" * 155 + "/name"


def test_a_gnu_volume_label_and_its_data_are_skipped(tmp_path: Path) -> None:
    """A volume label (tar -V) names the archive, it is not a member. One that carries
    data has the data skipped with it, as GNU tar does (checked below)."""
    label = tarfile.TarInfo("LABEL")
    label.type, label.size = b"V", 5
    after = tarfile.TarInfo("f")
    after.size = 3
    data = (
        label.tobuf(tarfile.GNU_FORMAT)
        + b"hello".ljust(BLOCK, b"\0")
        + after.tobuf(tarfile.GNU_FORMAT)
        + b"abc".ljust(BLOCK, b"\0")
        + bytes(2 * BLOCK)
    )
    assert _read_all(data) == [("f", tarfile.REGTYPE, 3, "", b"abc")]
    if shutil.which("tar"):
        (tmp_path / "a.tar").write_bytes(data)
        (tmp_path / "out").mkdir()
        subprocess.run(["tar", "-xf", tmp_path / "a.tar", "-C", tmp_path / "out"], check=True)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f"]
        assert (tmp_path / "out" / "f").read_bytes() == b"abc"


@pytest.mark.parametrize("base_256", [False, True], ids=["space-terminated", "base-256"])
def test_a_pax_header_size_is_read_from_its_whole_field(base_256: bool) -> None:
    """Old tars end a size field with a space, not a NUL, and a size may be base-256:
    the field is all twelve bytes, neither more nor fewer."""
    records = _pax_record("path", "named")
    member = bytearray(_pax_member(records))
    member[124:136] = b"\x80" + len(records).to_bytes(11, "big") if base_256 else b"%011o " % len(records)
    member[136:148] = b"%011o " % 0o1234  # a time right after, which must not be read as size
    member[:BLOCK] = _with_checksum(bytearray(member[:BLOCK]))
    assert _one_member(bytes(member)).name == "named"


def test_a_number_field_of_nuls_reads_as_zero() -> None:
    """Some writers leave fields they have no value for as NULs: GNU tar reads them as 0."""
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    for start, width in ((100, 8), (108, 8), (116, 8), (136, 12)):
        block[start : start + width] = bytes(width)
    member = _one_member(_with_checksum(block))
    assert (member.mode, member.uid, member.gid, member.mtime) == (0, 0, 0, 0)


def test_a_pax_record_without_a_length_says_so() -> None:
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(_pax_member(b"path=x\n"))).next()
    assert str(caught.value) == "malformed pax record (no length)"


def _sparse_1_0(count_line: bytes) -> bytes:
    """A pax sparse 1.0 member whose map, at the start of its one block of data, begins
    with the given count."""
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
    return encode_header("s", tarfile.REGTYPE, size=BLOCK, records=records) + (count_line + b"\n").ljust(BLOCK, b"\0")


def test_a_sparse_map_longer_than_the_limit_is_refused_before_it_is_read() -> None:
    """The count is checked as soon as it is read: one past the limit is refused by
    name; one at the limit is read on (here it then runs past the member's data)."""
    from backup.stream.tarformat import MAX_SPARSE_SEGMENTS

    assert MAX_SPARSE_SEGMENTS == 1 << 20
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(_sparse_1_0(b"%d" % (MAX_SPARSE_SEGMENTS + 1)))).next()
    assert str(caught.value) == f"sparse member 's': a map of {MAX_SPARSE_SEGMENTS + 1} entries is refused"
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(_sparse_1_0(b"%d" % MAX_SPARSE_SEGMENTS))).next()
    assert str(caught.value) == "sparse member 's': its map runs past its data"


def _old_gnu_sparse(entries: int) -> bytes:
    """An old GNU sparse member of ``entries`` one-byte runs: 4 in its header, 21 in
    each extension block after it."""
    runs = [(2 * index, 1) for index in range(entries)]

    def slots(chunk: list[tuple[int, int]], width: int) -> bytes:
        return b"".join(b"%011o\0%011o\0" % run for run in chunk).ljust(width * 24, b"\0")

    header = bytearray(tarfile.TarInfo("s").tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[124:136] = b"%011o\0" % entries
    header[386:482] = slots(runs[:4], 4)
    header[482] = 1 if entries > 4 else 0
    header[483:495] = b"%011o\0" % (2 * entries)
    blocks = [_with_checksum(header)]
    rest = runs[4:]
    while rest:
        chunk, rest = rest[:21], rest[21:]
        blocks.append(slots(chunk, 21) + bytes([1 if rest else 0]) + bytes(7))
    return b"".join(blocks) + bytes(-(-entries // BLOCK) * BLOCK) + bytes(2 * BLOCK)


def test_an_old_gnu_sparse_map_is_read_across_extension_blocks_up_to_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the limit lowered to 25 entries (the real one takes 25 MB of headers to
    reach): 25 entries, four in the header and 21 in an extension block, are read; 26
    are refused."""
    monkeypatch.setattr("backup.stream.tarformat.MAX_SPARSE_SEGMENTS", 25)
    member = _one_member(_old_gnu_sparse(25)[: -2 * BLOCK])
    assert member.sparse_map == [(2 * index, 1) for index in range(25)]
    assert (member.realsize, member.size, member.type) == (50, 25, tarfile.REGTYPE)
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(_old_gnu_sparse(26))).next()
    assert str(caught.value) == "sparse member 's': its map is too long"


def test_a_sparse_members_header_carries_a_stand_in_name() -> None:
    """A tar that does not know the sparse format extracts the member, map and all, under
    the name its ustar header gives: a stand-in in a directory of its own, never the real
    file's name (which only the pax records give)."""
    from backup.stream.tarformat import sparse_member_name

    assert sparse_member_name("data/db/file.bin") == "data/db/GNUSparseFile.0/file.bin"
    assert sparse_member_name("file.bin") == "./GNUSparseFile.0/file.bin"


def test_a_sparse_map_of_no_entries_is_a_file_that_is_all_hole() -> None:
    member = _one_member(_sparse_1_0(b"0"))
    assert (member.name, member.realsize, member.size, member.sparse_map) == ("s", 10, 0, [])


def test_a_pax_sparse_member_without_its_real_size_is_refused() -> None:
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    data = encode_header("s", tarfile.REGTYPE, size=BLOCK, records=records) + b"0\n".ljust(BLOCK, b"\0")
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(data + bytes(2 * BLOCK))).next()
    assert str(caught.value) == "sparse member 's' does not give its real size"


def test_pax_records_padded_with_nuls_within_their_size_are_read(tmp_path: Path) -> None:
    """Some writers count NUL padding in an extended header's size: the records end at
    the first NUL, as GNU tar reads them (checked below)."""
    data = _pax_member(_pax_record("path", "named") + bytes(10))
    assert _one_member(data).name == "named"
    if shutil.which("tar"):
        (tmp_path / "p.tar").write_bytes(data)
        listed = subprocess.run(["tar", "-tf", tmp_path / "p.tar"], check=True, capture_output=True, text=True)
        assert listed.stdout == "named\n"


class _CountingReads(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.asked.append(memoryview(buffer).nbytes)
        return super().readinto(buffer)


def test_data_skipped_unread_is_read_in_chunks_of_at_most_a_mebibyte() -> None:
    """Memory stays flat however large a skipped member is, and the skip is a few large
    reads, not many small ones: 3 MiB and a byte take four reads."""
    mebibyte = 1 << 20
    size = 3 * mebibyte + 1
    stream = _CountingReads(_archive(tarfile.PAX_FORMAT, [("big", tarfile.REGTYPE, b"q" * size)]))
    reader = TarStreamReader(stream)
    member = reader.next()
    assert member is not None
    stream.asked.clear()
    reader.skip_data(member)
    assert stream.asked[:4] == [mebibyte, mebibyte, mebibyte, 1]
    assert reader.next() is None


def test_a_device_number_that_does_not_fit_is_refused_either_one() -> None:
    for major, minor in ((8**7, 0), (0, 8**7), (-1, 0), (0, -1)):
        with pytest.raises(ValueError, match=f"device numbers {major},{minor} do not fit a tar header"):
            encode_header("dev", tarfile.CHRTYPE, devmajor=major, devminor=minor, uname="\u00e9")


def test_a_pax_mtime_past_a_64_bit_clock_is_warned_of_and_the_header_time_kept() -> None:
    """2**63 - 1 seconds is the last time a 64-bit time_t holds; 2**63 is past any clock."""
    for seconds, problem in ((2**63 - 1, None), (2**63, "is beyond any clock")):
        data = _pax_member(_pax_record("mtime", str(seconds)))
        reader = TarStreamReader(io.BytesIO(data))
        member = reader.next()
        assert member is not None
        if problem is None:
            assert member.mtime == seconds and reader.warnings == []
        else:
            assert member.mtime == 0 and problem in reader.warnings[0]


def test_a_pax_number_of_more_than_40_digits_is_refused() -> None:
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(_pax_member(_pax_record("uid", "1" * 41)))).next()
    assert str(caught.value) == "number of 41 digits in pax record 'uid' is out of range"
    member = _one_member(_pax_member(_pax_record("uid", "0" * 39 + "7"))[: -2 * BLOCK])
    assert member.uid == 7


def test_a_pax_header_is_checked_like_any_header() -> None:
    """Its checksum, its size (a negative one, in base-256, is refused; an empty one is
    a header of no records)."""
    damaged = bytearray(_pax_member(_pax_record("path", "named")))
    damaged[10] ^= 1  # in the pax header's own name
    with pytest.raises(TarFormatError, match=r"^invalid header \(bad checksum\)$"):
        TarStreamReader(io.BytesIO(bytes(damaged))).next()
    negative = bytearray(_pax_member(b""))
    negative[124:136] = b"\xff" * 12
    with pytest.raises(TarFormatError, match=r"^malformed header: a pax header has a negative size$"):
        TarStreamReader(io.BytesIO(_with_checksum(negative[:BLOCK]) + bytes(negative[BLOCK:]))).next()
    empty = _pax_member(b"")
    assert _one_member(empty[: -2 * BLOCK]).name == "f"


def test_an_archive_cut_in_a_members_padding_is_cut_short() -> None:
    """Right after the member's data (no padding byte at all) and inside the padding:
    neither is taken for an archive that simply ends."""
    whole = _archive(tarfile.PAX_FORMAT, [("f", tarfile.REGTYPE, b"abc")])
    start = whole.index(b"abc")
    for cut in (start + 3, start + 100):
        reader = TarStreamReader(io.BytesIO(whole[:cut]))
        member = reader.next()
        assert member is not None
        reader._stream.read(3)  # type: ignore[attr-defined]
        with pytest.raises(TarFormatError, match=r"^unexpected end of data in member padding$"):
            reader.next()


def test_an_archive_cut_in_a_sparse_map_is_cut_short() -> None:
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
    header = encode_header("s", tarfile.REGTYPE, size=2 * BLOCK, records=records)
    with pytest.raises(TarFormatError) as caught:
        TarStreamReader(io.BytesIO(header)).next()
    assert str(caught.value) == "unexpected end of data in the sparse map of 's'"


def test_a_sparse_map_whose_last_number_crosses_a_block_is_read_whole() -> None:
    """A map is read a block at a time: a number cut by the block's end is not a number
    yet. Here the last length (1, written with 30 digits) starts before byte 512 and
    ends after it."""
    entries = [(10 * index, 1) for index in range(12)]
    lines = [b"12"] + [b"%020d\n%020d" % entry for entry in entries[:-1]]
    last = b"%020d\n%030d" % entries[-1]
    text = b"\n".join([*lines, last]) + b"\n"
    start = text.rindex(b"\n", 0, len(text) - 1) + 1
    assert start < BLOCK < len(text) - 1  # the last number crosses the block's end
    stored = len(entries)
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "120"}
    data = encode_header("s", tarfile.REGTYPE, size=2 * BLOCK + stored, records=records)
    data += text.ljust(2 * BLOCK, b"\0") + b"x" * stored + bytes(BLOCK - stored)
    member = _one_member(data)
    assert member.sparse_map == entries and member.size == stored


def test_old_gnu_sparse_slots_of_twelve_digits_each_are_read() -> None:
    """A slot's two numbers may fill their twelve bytes with no NUL between them."""
    header = bytearray(_old_gnu_sparse(2)[:BLOCK])
    header[386:434] = b"%012o%012o%012o%012o" % (0, 1, 2, 1)
    member = _one_member(_with_checksum(header) + bytes(BLOCK))
    assert member.sparse_map == [(0, 1), (2, 1)]


def test_a_fractional_mtime_alone_takes_the_short_way_once_its_header_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The most common extended header, a member's nanoseconds, is made from a cached
    block once one of its size exists: the same bytes, without the general path."""
    import backup.stream.tarformat as tarformat

    first = encode_header("f", tarfile.REGTYPE, mtime_ns=1_700_000_000_123_456_789)
    general = []
    real = tarformat._pax_block
    monkeypatch.setattr(tarformat, "_pax_block", lambda *args: general.append(args) or real(*args))
    again = encode_header("f", tarfile.REGTYPE, mtime_ns=1_700_000_000_123_456_789)
    assert again == first and general == []
    member = _one_member(again + bytes(BLOCK))
    assert member.mtime_ns == 1_700_000_000_123_456_789
