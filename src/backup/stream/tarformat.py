"""The tar format itself: building member headers fast, and parsing a tar stream.

Headers are packed here, a ustar block preceded, when a field does not fit it (a long
or non-ASCII name, a size or time beyond the octal fields), by a pax extended header.
For names that are valid UTF-8 the output is byte for byte what ``tarfile`` writes in
pax format; a name that is not (an old Latin-1 file name) keeps its raw bytes in its
pax record, as GNU tar writes it.

The reader parses one header block at a time with ``tarfile.TarInfo.frombuf`` (which
checks the header checksum) and handles pax and GNU long-name records itself, with a
size cap on each, so a hostile archive cannot make it allocate without bound. File
data is not read here: the caller reads exactly ``member.size`` bytes, then calls
:meth:`TarStreamReader.skip_padding`.
"""

from __future__ import annotations

import struct
import tarfile
from typing import BinaryIO

__all__ = [
    "BLOCK",
    "MAX_METADATA_BYTES",
    "TarFormatError",
    "TarStreamReader",
    "backup_id_from_comment",
    "encode_global_header",
    "encode_header",
    "writer_comment",
]

BLOCK = tarfile.BLOCKSIZE
MAX_METADATA_BYTES = 1 << 20  # a pax or GNU long-name record larger than this is refused
_OCTAL_LIMIT_7 = 8**7
_OCTAL_LIMIT_11 = 8**11
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_ZERO_BLOCK = bytes(BLOCK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_GNU_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class TarFormatError(Exception):
    """The stream is not a valid tar archive (message says why)."""


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def encode_header(
    name: str,
    kind: bytes,
    *,
    size: int = 0,
    mode: int = 0o644,
    mtime: int = 0,
    uid: int = 0,
    gid: int = 0,
    linkname: str = "",
) -> bytes:
    """Given a member's fields, return its header block(s) in pax format."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if (
        len(name) <= 100
        and len(linkname) <= 100
        and name.isascii()
        and linkname.isascii()
        and 0 <= size < _OCTAL_LIMIT_11
        and 0 <= mtime < _OCTAL_LIMIT_11
        and 0 <= uid < _OCTAL_LIMIT_7
        and 0 <= gid < _OCTAL_LIMIT_7
    ):
        # The common case, packed at once: it is most of the cost of a tree of small files.
        return _ustar_block(name, kind, mode, uid, gid, size, mtime, linkname)
    records: dict[str, str] = {}
    if len(name) > 100 or not name.isascii():
        records["path"] = name
    if len(linkname) > 100 or not linkname.isascii():
        records["linkpath"] = linkname
    numbers = {"uid": uid, "gid": gid, "size": size, "mtime": mtime}
    for key, value in numbers.items():
        if not 0 <= value < (_OCTAL_LIMIT_7 if key in ("uid", "gid") else _OCTAL_LIMIT_11):
            records[key] = str(value)
            numbers[key] = 0
    return _pax_block(records, tarfile.XHDTYPE) + _ustar_block(
        name, kind, mode, numbers["uid"], numbers["gid"], numbers["size"], numbers["mtime"], linkname
    )


def _field(text: str, width: int) -> bytes:
    # As tarfile does: the ustar field holds an ASCII rendering, the pax record the truth.
    if len(text) <= width and text.isascii():
        return text.encode("ascii")
    return text.encode("ascii", "replace")[:width]


def _ustar_block(name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, linkname: str) -> bytes:
    block = _HEADER.pack(
        _field(name, 100),
        _octal(mode & 0o7777, 8),
        _octal(uid, 8),
        _octal(gid, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        b"        ",
        kind,
        _field(linkname, 100),
        tarfile.POSIX_MAGIC,
        b"",  # uname: numeric ids only, no name look-ups
        b"",  # gname
        b"",  # devmajor: only for device members, which are never written
        b"",  # devminor
        b"",  # prefix: long names take the pax path instead
        b"",
    )
    checksum = sum(block)
    return block[:148] + b"%06o\x00 " % checksum + block[156:]


def _pax_record(key: str, value: str) -> bytes:
    """One ``"<length> <key>=<value>\\n"`` record; the length counts its own digits."""
    # A name that is not UTF-8 keeps its original bytes (surrogate escapes undone), as
    # GNU tar writes them; no hdrcharset record, which GNU tar 1.34 warns about.
    payload = b" " + key.encode("utf-8") + b"=" + value.encode("utf-8", "surrogateescape") + b"\n"
    length = len(payload)
    total = length + len(str(length))
    if len(str(total)) > len(str(length)):
        total += 1
    return str(total).encode("ascii") + payload


def _pax_block(records: dict[str, str], kind: bytes) -> bytes:
    if not records:
        return b""
    payload = b"".join(_pax_record(key, value) for key, value in records.items())
    header = _ustar_block("././@PaxHeader", kind, 0, 0, 0, len(payload), 0, "")
    return header + payload + bytes(-len(payload) % BLOCK)


_MARKER_PREFIX = "obs-backup "


def writer_comment(backup_id: str) -> str:
    """Given a backup id, return the pax ``comment`` that marks an archive as ours."""
    return _MARKER_PREFIX + backup_id


def backup_id_from_comment(comment: str | None) -> str | None:
    """Given an archive's global pax ``comment``, return the backup id it names, if ours."""
    if comment is None or not comment.startswith(_MARKER_PREFIX):
        return None
    return comment[len(_MARKER_PREFIX) :] or None


def encode_global_header(records: dict[str, str]) -> bytes:
    """Given pax records, return a pax global extended header carrying them.

    Readers apply its records to every later member; ``comment`` is a keyword every
    pax reader knows and ignores, which is how an archive says who wrote it.
    """
    return _pax_block(records, tarfile.XGLTYPE)


class TarStreamReader:
    """Yields the members of a tar stream, front to back, reading only what it needs.

    Supports ustar, GNU and pax archives (long names and link targets, pax ``path``,
    ``linkpath``, ``size``, ``mtime``, ``uid``, ``gid``). Refuses sparse members, which
    this tool never writes and could not restore byte for byte without expanding them.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._block = bytearray(BLOCK)
        self._global: dict[str, str] = {}
        self.count = 0
        self._pending_padding = 0

    @property
    def global_records(self) -> dict[str, str]:
        """The pax global records read so far."""
        return dict(self._global)

    def _read_exact(self, buffer: bytearray | memoryview, what: str) -> bool:
        """Fill ``buffer``; return False on a clean EOF before any byte; raise if cut short."""
        view = memoryview(buffer)
        filled = 0
        while filled < len(view):
            count = self._stream.readinto(view[filled:])  # type: ignore[attr-defined]
            if not count:
                if filled == 0:
                    return False
                raise TarFormatError(f"unexpected end of data in {what}")
            filled += count
        return True

    def _read_record(self, size: int, what: str) -> bytes:
        if size > MAX_METADATA_BYTES:
            raise TarFormatError(f"{what} of {size} bytes exceeds the {MAX_METADATA_BYTES}-byte limit")
        data = bytearray(size + (-size % BLOCK))
        if data and not self._read_exact(data, what):
            raise TarFormatError(f"unexpected end of data in {what}")
        return bytes(data[:size])

    def skip_padding(self) -> None:
        """After a member's data has been read, consume its padding to the block boundary."""
        if self._pending_padding:
            pad = bytearray(self._pending_padding)
            self._pending_padding = 0
            if not self._read_exact(pad, "member padding"):
                raise TarFormatError("unexpected end of data in member padding")

    def skip_data(self, member: tarfile.TarInfo) -> None:
        """Consume a member's data without using it."""
        remaining = member.size if member.type in tarfile.REGULAR_TYPES else 0
        chunk = bytearray(min(remaining, 1 << 20) or 1)
        while remaining:
            piece = memoryview(chunk)[: min(len(chunk), remaining)]
            if not self._read_exact(piece, f"data of {member.name!r}"):
                raise TarFormatError(f"unexpected end of data in {member.name!r}")
            remaining -= len(piece)
        self.skip_padding()

    def next(self) -> tarfile.TarInfo | None:
        """Return the next member, or None at the end of the archive; raise TarFormatError."""
        self.skip_padding()
        local: dict[str, str] = {}
        long_name = long_link = None
        while True:
            if not self._read_exact(self._block, "header"):
                if self.count == 0 and not (local or long_name or long_link):
                    raise TarFormatError("empty file")
                return None  # EOF without end-of-archive blocks: tolerated, as tar does
            if self._block == _ZERO_BLOCK:
                if local or long_name or long_link:
                    raise TarFormatError("archive ends between an extended header and its member")
                return None  # end of archive (an archive of no members is just this)
            try:
                member = tarfile.TarInfo.frombuf(bytes(self._block), "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise TarFormatError(f"invalid header ({exc})") from None
            if member.type in _PAX_TYPES:
                records = _parse_pax(self._read_record(member.size, "pax header"))
                (self._global if member.type == tarfile.XGLTYPE else local).update(records)
                continue
            if member.type in _GNU_LONG:
                value = self._read_record(member.size, "GNU long name").rstrip(b"\x00")
                text = value.decode("utf-8", "surrogateescape")
                if member.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            break
        if member.type == tarfile.GNUTYPE_SPARSE or any(key.startswith("GNU.sparse") for key in local):
            raise TarFormatError(f"member {member.name!r} is a sparse file, which is not supported")
        if long_name is not None:
            member.name = long_name
        if long_link is not None:
            member.linkname = long_link
        self._apply_pax(member, {**self._global, **local})
        if member.type == tarfile.AREGTYPE and member.name.endswith("/"):
            member.type = tarfile.DIRTYPE
        if member.isdir():
            member.name = member.name.rstrip("/")
        data = member.size if member.type in tarfile.REGULAR_TYPES else 0
        if member.type not in tarfile.REGULAR_TYPES:
            member.size = 0
        self._pending_padding = -data % BLOCK
        self.count += 1
        return member

    @staticmethod
    def _apply_pax(member: tarfile.TarInfo, records: dict[str, str]) -> None:
        if not records:
            return
        try:
            if "path" in records:
                member.name = records["path"]
            if "linkpath" in records:
                member.linkname = records["linkpath"]
            if "size" in records:
                member.size = int(records["size"])
            if "mtime" in records:
                member.mtime = float(records["mtime"])
            for key in ("uid", "gid"):
                if key in records:
                    setattr(member, key, int(records[key]))
        except ValueError as exc:
            raise TarFormatError(f"invalid pax record for {member.name!r}: {exc}") from None
        if member.size < 0:
            raise TarFormatError(f"member {member.name!r} has a negative size")


def _parse_pax(data: bytes) -> dict[str, str]:
    """Given a pax extended header's payload, return its records."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        if data[position] == 0:
            break
        space = data.find(b" ", position)
        if space == -1:
            raise TarFormatError("malformed pax record (no length)")
        try:
            length = int(data[position:space])
        except ValueError:
            raise TarFormatError("malformed pax record length") from None
        end = position + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarFormatError("malformed pax record")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise TarFormatError("malformed pax record (no '=')")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position = end
    return records
