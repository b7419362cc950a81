"""The tar format itself: building member headers, and parsing a tar stream.

Headers are packed here: a ustar block preceded, when a field does not fit it (a long
or non-ASCII name, a size or time beyond the octal fields, nanoseconds, extended
attributes, a sparse map), by a pax extended header. For names that are valid UTF-8
the output is byte for byte what ``tarfile`` writes in pax format; a name that is not
(an old Latin-1 file name) keeps its raw bytes in its pax record, as GNU tar writes it.

What GNU tar writes, this writes the same way, so that GNU tar restores it:
nanosecond times as pax ``mtime`` records; owners as uid/gid plus user and group names;
extended attributes as ``SCHILY.xattr.<name>`` records and POSIX ACLs also as
``SCHILY.acl.access``/``default`` text; sparse files in GNU's pax sparse format 1.0
(the data map at the start of the member's data, the real name and size in
``GNU.sparse.*`` records).

The reader parses one header block at a time with ``tarfile.TarInfo.frombuf`` (which
checks the header checksum) and handles pax, GNU long-name, GNU volume-label and every
GNU sparse variant (old GNU, pax 0.0, 0.1 and 1.0) itself, with a size cap on each
record, so a hostile archive cannot make it allocate without bound. Numbers in pax
records are parsed as POSIX defines them (digits, a sign, a fraction for times: no
``1_0``, ``inf`` or ``nan``). File data is not read here: the caller reads exactly
``member.size`` bytes, then calls :meth:`TarStreamReader.skip_padding`.
"""

from __future__ import annotations

import re
import struct
import tarfile
from collections.abc import Mapping, Sequence
from typing import BinaryIO

__all__ = [
    "BLOCK",
    "MAX_METADATA_BYTES",
    "Member",
    "TarFormatError",
    "TarStreamReader",
    "backup_id_from_comment",
    "encode_global_header",
    "encode_header",
    "encode_sparse_map",
    "format_pax_time",
    "sparse_member_name",
    "writer_comment",
    "xattr_key",
    "xattr_name_from_key",
]

BLOCK = tarfile.BLOCKSIZE
MAX_METADATA_BYTES = 1 << 20  # a pax or GNU long-name record larger than this is refused
MAX_SPARSE_SEGMENTS = 1 << 20  # a sparse map longer than this is refused
SKIP_CHUNK = 1 << 20  # data skipped unread is read this much at a time, at most
_OCTAL_LIMIT_7 = 8**7
_OCTAL_LIMIT_11 = 8**11
_NS = 1_000_000_000
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_ZERO_BLOCK = bytes(BLOCK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_GNU_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_GNU_VOLUME = b"V"
_DEVICE_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE)
# Types whose size field means nothing: they never carry data.
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?")
_XATTR = "SCHILY.xattr."
# Times as far as a 64-bit time_t reaches; a file system holds less, and says so.
_MAX_TIME_NS = (1 << 63) * 1_000_000_000
_ACL = {"SCHILY.acl.access": "access", "SCHILY.acl.default": "default"}


class TarFormatError(Exception):
    """The stream is not a valid tar archive (message says why)."""


class Member(tarfile.TarInfo):
    """A member as read: ``tarfile``'s fields plus what this reader also keeps.

    ``mtime_ns`` is the exact modification time; ``xattrs`` the extended attributes
    (name -> raw value); ``acls`` POSIX ACLs given as text (``access``/``default``);
    ``sparse_map`` the data segments ``(offset, length)`` of a sparse file (None for
    others) and ``realsize`` its logical size. ``size`` is what is left to read of the
    member's data in the stream (for a sparse file: the segments, the map already read).
    """

    __slots__ = ("acls", "mtime_ns", "realsize", "sparse_map", "xattrs")

    def _init_extras(self) -> None:
        self.mtime_ns = int(self.mtime) * _NS
        self.xattrs: dict[str, bytes] = {}
        self.acls: dict[str, str] = {}
        self.sparse_map: list[tuple[int, int]] | None = None
        self.realsize = self.size


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def format_pax_time(ns: int) -> str:
    """Given nanoseconds since the epoch, return a pax time: ``-1.5``, ``1700000000.123``."""
    sign = "-" if ns < 0 else ""
    whole, fraction = divmod(abs(ns), _NS)
    return f"{sign}{whole}.{fraction:09d}".rstrip("0").rstrip(".")


def encode_header(
    name: str,
    kind: bytes,
    *,
    size: int = 0,
    mode: int = 0o644,
    mtime: int = 0,
    mtime_ns: int | None = None,
    uid: int = 0,
    gid: int = 0,
    uname: str = "",
    gname: str = "",
    linkname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    records: Mapping[str, str | bytes] | None = None,
) -> bytes:
    """Given a member's fields, return its header block(s) in pax format.

    ``mtime_ns``, when given, wins over ``mtime`` and keeps its nanoseconds (in a pax
    record, as GNU tar writes them). ``records`` are further pax records (extended
    attributes, a sparse file's ``GNU.sparse.*``), written after the standard ones.
    """
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if mtime_ns is not None:
        mtime, fraction = divmod(mtime_ns, _NS)
    else:
        fraction = 0
    if (
        not records
        and len(name) <= 100
        and len(linkname) <= 100
        and name.isascii()
        and linkname.isascii()
        and len(uname) <= 32
        and len(gname) <= 32
        and uname.isascii()
        and gname.isascii()
        and 0 <= size < _OCTAL_LIMIT_11
        and 0 <= mtime < _OCTAL_LIMIT_11
        and 0 <= uid < _OCTAL_LIMIT_7
        and 0 <= gid < _OCTAL_LIMIT_7
        and 0 <= devmajor < _OCTAL_LIMIT_7
        and 0 <= devminor < _OCTAL_LIMIT_7
    ):
        # The common case, packed at once: it is most of the cost of a tree of small files.
        block = _ustar_block(name, kind, mode, uid, gid, size, mtime, linkname, uname, gname, devmajor, devminor)
        return _mtime_block(mtime, fraction) + block if fraction else block
    pax: dict[str, str | bytes] = {}
    if len(name) > 100 or not name.isascii():
        pax["path"] = name
    if len(linkname) > 100 or not linkname.isascii():
        pax["linkpath"] = linkname
    if len(uname) > 32 or not uname.isascii():
        pax["uname"] = uname
    if len(gname) > 32 or not gname.isascii():
        pax["gname"] = gname
    if not 0 <= uid < _OCTAL_LIMIT_7:
        pax["uid"], uid = str(uid), 0
    if not 0 <= gid < _OCTAL_LIMIT_7:
        pax["gid"], gid = str(gid), 0
    if not 0 <= size < _OCTAL_LIMIT_11:
        pax["size"], size = str(size), 0
    if fraction or not 0 <= mtime < _OCTAL_LIMIT_11:
        pax["mtime"] = format_pax_time(mtime_ns if mtime_ns is not None else mtime * _NS)
        if not 0 <= mtime < _OCTAL_LIMIT_11:
            mtime = 0
    if not (0 <= devmajor < _OCTAL_LIMIT_7 and 0 <= devminor < _OCTAL_LIMIT_7):
        raise ValueError(f"{name}: device numbers {devmajor},{devminor} do not fit a tar header")
    if records:
        pax.update(records)
    return _pax_block(pax, tarfile.XHDTYPE) + _ustar_block(
        name, kind, mode, uid, gid, size, mtime, linkname, uname, gname, devmajor, devminor
    )


def _field(text: str, width: int) -> bytes:
    # As tarfile does: the ustar field holds an ASCII rendering, the pax record the truth.
    if len(text) <= width and text.isascii():
        return text.encode("ascii")
    return text.encode("ascii", "replace")[:width]


def _ustar_block(
    name: str,
    kind: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: str,
    uname: str = "",
    gname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    devices = kind in _DEVICE_TYPES
    fields = (
        _field(name, 100),
        _octal(mode & 0o7777, 8),
        _octal(uid, 8),
        _octal(gid, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        kind,
        _field(linkname, 100),
        _field(uname, 32),
        _field(gname, 32),
        _octal(devmajor, 8) if devices else b"",  # only device members carry device numbers
        _octal(devminor, 8) if devices else b"",
    )
    block = _HEADER.pack(*fields[:6], b"        ", *fields[6:8], tarfile.POSIX_MAGIC, *fields[8:], b"", b"")
    # The checksum is the sum of the header's bytes, the checksum field counted as
    # spaces; summing the few short fields is much cheaper than summing 512 bytes.
    checksum = _CHECKSUM_BASE + sum(b"".join(fields))
    return block[:148] + b"%06o\x00 " % checksum + block[156:]


_CHECKSUM_BASE = 8 * 0x20 + sum(tarfile.POSIX_MAGIC)


def _mtime_block(mtime: int, fraction: int) -> bytes:
    """The extended header of a member whose only pax record is a fractional mtime:
    the most common one, made without the general record machinery."""
    digits = b"%09d" % fraction
    payload = b" mtime=%d.%s\n" % (mtime, digits.rstrip(b"0"))
    length = len(payload) + 2  # a record this short has a two-digit length
    payload = b"%d" % length + payload
    header = _PAX_HEADERS.get((tarfile.XHDTYPE, length))
    if header is None:
        return _pax_block({"mtime": payload[payload.index(b"=") + 1 : -1].decode()}, tarfile.XHDTYPE)
    return header + payload + bytes(BLOCK - length)


def _pax_record(key: str, value: str | bytes) -> bytes:
    """One ``"<length> <key>=<value>\\n"`` record; the length counts its own digits."""
    # A name that is not UTF-8 keeps its original bytes (surrogate escapes undone), as
    # GNU tar writes them; no hdrcharset record, which GNU tar 1.34 warns about.
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    payload = b" " + key.encode("utf-8", "surrogateescape") + b"=" + raw + b"\n"
    length = len(payload)
    total = length + len(str(length))
    if len(str(total)) > len(str(length)):
        total += 1
    return str(total).encode("ascii") + payload


_PAX_HEADERS: dict[tuple[bytes, int], bytes] = {}


def _pax_block(records: Mapping[str, str | bytes], kind: bytes) -> bytes:
    if not records:
        return b""
    payload = b"".join(_pax_record(key, value) for key, value in records.items())
    # The extended header's own block depends only on its type and size: made once each.
    header = _PAX_HEADERS.get((kind, len(payload)))
    if header is None:
        header = _ustar_block("././@PaxHeader", kind, 0, 0, 0, len(payload), 0, "")
        if len(_PAX_HEADERS) < 4096:
            _PAX_HEADERS[(kind, len(payload))] = header
    return header + payload + bytes(-len(payload) % BLOCK)


def xattr_key(name: str) -> str:
    """Given an extended attribute's name, return its pax record's key: as GNU tar
    writes it, with "%" and "=" (which would end the key) written ``%25`` and ``%3D``."""
    return "SCHILY.xattr." + name.replace("%", "%25").replace("=", "%3D")


def xattr_name_from_key(encoded: str) -> str:
    """Given what follows ``SCHILY.xattr.`` in a key, return the attribute's name."""
    return re.sub(r"%(25|3D)", lambda match: "%" if match.group(1) == "25" else "=", encoded)


def sparse_member_name(name: str) -> str:
    """Given a sparse file's name, return the stand-in name its ustar header carries
    (GNU's ``%d/GNUSparseFile.%p/%f``; a tar that does not know the format extracts the
    member there, map and all, instead of over the real file)."""
    head, _, tail = name.rpartition("/")
    return f"{head or '.'}/GNUSparseFile.0/{tail}"


def encode_sparse_map(segments: Sequence[tuple[int, int]]) -> bytes:
    """Given a sparse file's data segments, return the map that starts its member data
    (pax sparse 1.0: the count, then offset and length, one number a line, padded)."""
    text = f"{len(segments)}\n" + "".join(f"{offset}\n{length}\n" for offset, length in segments)
    data = text.encode("ascii")
    return data + bytes(-len(data) % BLOCK)


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


# Longer than any size or id a file system holds (and than Python parses by default).
_MAX_DIGITS = 40


def _pax_integer(text: str, what: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise TarFormatError(f"malformed number {text[:_MAX_DIGITS]!r} in pax record {what!r}")
    if len(text) > _MAX_DIGITS:
        raise TarFormatError(f"number of {len(text)} digits in pax record {what!r} is out of range")
    return int(text)


def _pax_time_ns(text: str, what: str) -> int:
    """Given a pax time (``1700000000.5``, ``-1.25``), return nanoseconds, exactly."""
    match = _DECIMAL.fullmatch(text)
    if not match:
        raise TarFormatError(f"malformed time {text[:_MAX_DIGITS]!r} in pax record {what!r}")
    sign, whole, fraction = match.groups()
    if len(whole) > _MAX_DIGITS:
        return -_MAX_TIME_NS if sign else _MAX_TIME_NS  # beyond any clock; not worth parsing
    value = int(whole) * _NS + int((fraction or "")[:9].ljust(9, "0"))
    return -value if sign else value


_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_POSIX_MAGIC = b"ustar\x00"


def _check_checksum(block: bytes | bytearray) -> None:
    """Refuse a header whose checksum field disagrees with its bytes (summed as
    unsigned or, as some old tars did, as signed bytes; the field itself as spaces)."""
    try:
        stored = _octal_number(bytes(block[148:156]), "header checksum")
    except TarFormatError:
        raise TarFormatError("invalid header (bad checksum)") from None
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored != unsigned and stored != sum(struct.unpack_from("148b8x356b", block)) + 8 * 0x20:
        raise TarFormatError("invalid header (bad checksum)")


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_header(block: bytes) -> Member:
    """Given a member's header block (ustar, GNU or v7), return its member, reading the
    fields as GNU tar does: numbers in octal or base-256, a name's ustar prefix only
    in a POSIX header (a GNU header keeps other things there)."""
    _check_checksum(block)
    (name, mode, uid, gid, size, mtime, _, kind, linkname, magic, _, uname, gname, major, minor, prefix) = (
        _FIELDS.unpack(block)
    )
    member = Member(_text(name))
    if magic == _POSIX_MAGIC and prefix[0]:
        # A star header keeps times after a 131-byte prefix whose last byte is a NUL (that
        # NUL is how GNU tar tells it apart): read up to the NUL, its prefix is the same.
        member.name = _text(prefix) + "/" + member.name
    what = f"header of {member.name!r}"
    member.mode = _octal_number(mode, what)
    member.uid = _octal_number(uid, what)
    member.gid = _octal_number(gid, what)
    member.size = _octal_number(size, what)
    member.mtime = _octal_number(mtime, what)
    member.type = kind
    member.linkname = _text(linkname)
    member.uname = _text(uname)
    member.gname = _text(gname)
    if kind in _DEVICE_TYPES:  # elsewhere these fields mean nothing, and GNU tar ignores them
        member.devmajor = _octal_number(major, what)
        member.devminor = _octal_number(minor, what)
    return member


def _apply_mtime(member: Member, value: str) -> str | None:
    """Set a member's exact time from its pax mtime. One that is not a time, or is
    beyond any clock, is a problem to warn of (returned): the member keeps its
    header's time, as GNU tar and bsdtar read on."""
    try:
        exact = _pax_time_ns(value, "mtime")
    except TarFormatError:
        problem = "is not a time"
    else:
        if abs(exact) < _MAX_TIME_NS:
            member.mtime_ns, member.mtime = exact, exact // _NS
            return None
        problem = "is beyond any clock"
    shown = value if len(value) <= _MAX_DIGITS else value[:_MAX_DIGITS] + "..."
    return f"its pax mtime {shown!r} {problem}; the time in its header was used"


def _extended_size(block: bytearray) -> int:
    """Given a pax extended header's block, check its checksum and return its size."""
    _check_checksum(block)
    size = _octal_number(bytes(block[124:136]), "size of a pax header")
    if size < 0:
        raise TarFormatError("malformed header: a pax header has a negative size")
    return size


class TarStreamReader:
    """Yields the members of a tar stream, front to back, reading only what it needs.

    Supports ustar, GNU and pax archives: long names and link targets, pax ``path``,
    ``linkpath``, ``size``, ``mtime`` (nanoseconds), ``uid``, ``gid``, ``uname``,
    ``gname``, extended attributes and ACLs, GNU volume labels (skipped, as tar does)
    and GNU sparse members in every format GNU tar writes.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._block = bytearray(BLOCK)
        self._global: dict[str, str] = {}
        self.count = 0
        self._pending_padding = 0
        # What was read past rather than refused (a member's malformed time, say).
        self.warnings: list[str] = []

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
            raise TarFormatError(
                f"{what} of {size} bytes exceeds the {MAX_METADATA_BYTES}-byte limit on metadata records"
            )
        data = bytearray(size + (-size % BLOCK))
        if data and not self._read_exact(data, what):
            raise TarFormatError(f"unexpected end of data in {what}")
        return bytes(data[:size])

    def _skip(self, size: int, what: str) -> None:
        """Consume ``size`` bytes unread, in reads of at most ``SKIP_CHUNK`` bytes."""
        chunk = bytearray(min(size, SKIP_CHUNK))
        while size:
            piece = memoryview(chunk)[: min(len(chunk), size)]
            if not self._read_exact(piece, what):
                raise TarFormatError(f"unexpected end of data in {what}")
            size -= len(piece)

    def skip_padding(self) -> None:
        """After a member's data has been read, consume its padding to the block boundary."""
        if self._pending_padding:
            pad = bytearray(self._pending_padding)
            self._pending_padding = 0
            if not self._read_exact(pad, "member padding"):
                raise TarFormatError("unexpected end of data in member padding")

    def skip_data(self, member: tarfile.TarInfo) -> None:
        """Consume a member's data without using it."""
        self._skip(member.size, repr(member.name))
        self.skip_padding()

    def next(self) -> Member | None:
        """Return the next member, or None at the end of the archive; raise TarFormatError."""
        self.skip_padding()
        local: list[tuple[str, str]] = []
        long_name = long_link = None
        while True:
            if not self._read_exact(self._block, "header"):
                if local or long_name or long_link:
                    # GNU tar 1.34 lists such an archive without a word; the member the
                    # extended header was for is lost, so it is damage.
                    raise TarFormatError("unexpected end of data after an extended header")
                if self.count == 0:
                    raise TarFormatError("empty file")
                return None  # EOF without end-of-archive blocks: tolerated, as tar does
            if self._block == _ZERO_BLOCK:
                if local or long_name or long_link:
                    raise TarFormatError("archive ends between an extended header and its member")
                return None  # end of archive (an archive of no members is just this)
            kind = bytes(self._block[156:157])
            if kind in _PAX_TYPES:
                # An extended header needs only its size: most members have one, and a
                # full header parse of each would be a third of the cost of reading.
                records = _parse_pax(self._read_record(_extended_size(self._block), "pax header"))
                if kind == tarfile.XGLTYPE:
                    self._global.update(records)
                else:
                    local += records
                continue
            member = _parse_header(bytes(self._block))
            if member.size < 0:
                raise TarFormatError(f"malformed header: member {member.name!r} has a negative size")
            if member.type in _GNU_LONG:
                value = self._read_record(member.size, "GNU long name").rstrip(b"\x00")
                text = value.decode("utf-8", "surrogateescape")
                if member.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            if member.type == _GNU_VOLUME:
                # A label, not a member (tar -V): skipped with its data, as GNU tar does.
                self._skip(member.size + -member.size % BLOCK, "GNU volume label")
                continue
            break
        member._init_extras()
        header = bytes(self._block)
        if long_name is not None:
            member.name = long_name
        if long_link is not None:
            member.linkname = long_link
        merged = {**self._global, **dict(local)}
        problem = self._apply_pax(member, merged)
        if member.type == tarfile.AREGTYPE and member.name.endswith("/"):
            member.type = tarfile.DIRTYPE
        if member.isdir():
            member.name = member.name.rstrip("/")
        if problem is not None:
            self.warnings.append(f"member {member.name!r}: {problem}")
        if member.type in _NO_DATA:
            member.size = 0
        data = member.size
        if member.type == tarfile.GNUTYPE_SPARSE:
            self._old_gnu_sparse(member, header)
        elif any(key.startswith("GNU.sparse.") for key in merged):
            self._pax_sparse(member, merged, local)
        member.realsize = member.realsize if member.sparse_map is not None else member.size
        self._pending_padding = -data % BLOCK
        self.count += 1
        return member

    @staticmethod
    def _apply_pax(member: Member, records: dict[str, str]) -> str | None:
        """Apply a member's pax records; return a problem to warn of, if any."""
        problem = None
        if not records:
            return None
        if "path" in records:
            member.name = records["path"]
        if "linkpath" in records:
            member.linkname = records["linkpath"]
        if "size" in records:
            member.size = _pax_integer(records["size"], "size")
        if "mtime" in records:
            problem = _apply_mtime(member, records["mtime"])
        for key in ("uid", "gid"):
            if key in records:
                setattr(member, key, _pax_integer(records[key], key))
        for key in ("uname", "gname"):
            if key in records:
                setattr(member, key, records[key])
        for key, value in records.items():
            if key.startswith(_XATTR):
                member.xattrs[xattr_name_from_key(key[len(_XATTR) :])] = value.encode("utf-8", "surrogateescape")
            elif key in _ACL:
                member.acls[_ACL[key]] = value
        if member.size < 0:
            raise TarFormatError(f"malformed header: member {member.name!r} has a negative size")
        return problem

    def _pax_sparse(self, member: Member, records: dict[str, str], ordered: list[tuple[str, str]]) -> None:
        """Read a pax sparse member's map (versions 0.0, 0.1 and 1.0; 1.0 keeps it at the
        start of the member's data, which is then what is left to read)."""
        name = records.get("GNU.sparse.name")
        if name is not None:
            member.name = name
        size_key = "GNU.sparse.realsize" if "GNU.sparse.realsize" in records else "GNU.sparse.size"
        if size_key not in records:
            raise TarFormatError(f"sparse member {member.name!r} does not give its real size")
        member.realsize = _pax_integer(records[size_key], size_key)
        major, minor = records.get("GNU.sparse.major"), records.get("GNU.sparse.minor")
        consumed = 0
        if (major, minor) == ("1", "0"):
            segments, consumed = self._read_sparse_map(member)
        elif "GNU.sparse.map" in records:  # 0.1
            numbers = [_pax_integer(part, "GNU.sparse.map") for part in records["GNU.sparse.map"].split(",") if part]
            if len(numbers) % 2:
                raise TarFormatError(f"sparse member {member.name!r} has an odd number of map entries")
            segments = list(zip(numbers[::2], numbers[1::2], strict=True))
        else:  # 0.0: offset and numbytes records repeat, in order
            offsets = [_pax_integer(v, k) for k, v in ordered if k == "GNU.sparse.offset"]
            lengths = [_pax_integer(v, k) for k, v in ordered if k == "GNU.sparse.numbytes"]
            if len(offsets) != len(lengths):
                raise TarFormatError(f"sparse member {member.name!r} has a malformed map")
            segments = list(zip(offsets, lengths, strict=True))
        self._set_sparse(member, segments, member.size - consumed)
        member.size -= consumed

    def _read_sparse_map(self, member: Member) -> tuple[list[tuple[int, int]], int]:
        """Read a sparse 1.0 map from the start of the member's data; return it and the
        bytes it took (whole blocks)."""
        text = b""
        consumed = 0
        while True:
            if consumed + BLOCK > member.size:
                raise TarFormatError(f"sparse member {member.name!r}: its map runs past its data")
            block = bytearray(BLOCK)
            if not self._read_exact(block, f"sparse map of {member.name!r}"):
                raise TarFormatError(f"unexpected end of data in the sparse map of {member.name!r}")
            consumed += BLOCK
            text += bytes(block)
            lines = text.split(b"\n")
            if lines and lines[0].strip(b"\x00"):
                count = _pax_integer(lines[0].decode("ascii", "replace"), "sparse map")
                if count > MAX_SPARSE_SEGMENTS:  # a count of digits only: never negative
                    raise TarFormatError(f"sparse member {member.name!r}: a map of {count} entries is refused")
                if len(lines) > 2 * count + 1:
                    numbers = [
                        _pax_integer(line.decode("ascii", "replace"), "sparse map") for line in lines[1 : 2 * count + 1]
                    ]
                    return list(zip(numbers[::2], numbers[1::2], strict=True)), consumed
            if len(text) > MAX_METADATA_BYTES:
                raise TarFormatError(f"sparse map of {member.name!r} exceeds the {MAX_METADATA_BYTES}-byte limit")

    def _old_gnu_sparse(self, member: Member, header: bytes) -> None:
        """Read an old GNU sparse member's map: in its header, then in extension blocks."""
        segments = _old_gnu_entries(header[386:482])
        extended = header[482]
        realsize = _octal_number(header[483:495], "sparse real size")
        while extended:
            block = bytearray(BLOCK)
            if not self._read_exact(block, f"sparse header of {member.name!r}"):
                raise TarFormatError(f"unexpected end of data in the sparse header of {member.name!r}")
            segments += _old_gnu_entries(bytes(block[:504]))
            extended = block[504]
            if len(segments) > MAX_SPARSE_SEGMENTS:
                raise TarFormatError(f"sparse member {member.name!r}: its map is too long")
        member.type = tarfile.REGTYPE
        member.realsize = realsize
        self._set_sparse(member, segments, member.size)

    @staticmethod
    def _set_sparse(member: Member, segments: list[tuple[int, int]], stored: int) -> None:
        """Check a sparse map against the data and the real size, and keep it."""
        total = 0
        end = 0
        for offset, length in segments:
            if offset < end or length < 0:
                raise TarFormatError(f"sparse member {member.name!r}: its map overlaps or goes backwards")
            end = offset + length
            total += length
        if end > member.realsize:
            raise TarFormatError(f"sparse member {member.name!r}: its map runs past its real size")
        if total != stored:
            raise TarFormatError(
                f"sparse member {member.name!r}: its map holds {total} bytes of data, the member {stored}"
            )
        member.sparse_map = [(offset, length) for offset, length in segments if length]
        member.type = tarfile.REGTYPE if member.type == tarfile.GNUTYPE_SPARSE else member.type


def _octal_number(field: bytes, what: str) -> int:
    """A header's number field: octal digits between spaces and NULs, or base-256 (a
    first byte of 0x80, or 0xff for a negative number), as GNU tar writes them."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        shown = text.decode("ascii", "backslashreplace")
        raise TarFormatError(f"malformed header: the {what} holds {shown!r} where a number belongs")
    return int(text, 8)


def _old_gnu_entries(data: bytes) -> list[tuple[int, int]]:
    """Given an old GNU sparse map's slots (24 bytes each: offset, then length), return
    the entries up to the first empty slot."""
    entries = []
    for start in range(0, len(data), 24):
        field = data[start : start + 24]
        if not field.strip(b"\x00"):
            break
        entries.append((_octal_number(field[:12], "sparse map"), _octal_number(field[12:], "sparse map")))
    return entries


def _parse_pax(data: bytes) -> list[tuple[str, str]]:
    """Given a pax extended header's payload, return its records, in order (sparse
    format 0.0 repeats keys)."""
    records: list[tuple[str, str]] = []
    position = 0
    while position < len(data):
        if data[position] == 0:
            break
        space = data.find(b" ", position)
        if space == -1:
            raise TarFormatError("malformed pax record (no length)")
        digits = data[position:space]
        if not digits.isdigit():
            raise TarFormatError("malformed pax record length")
        length = int(digits)
        end = position + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarFormatError("malformed pax record")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise TarFormatError("malformed pax record (no '=')")
        records.append((key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
        position = end
    return records
