"""POSIX ACLs, between the kernel's binary form and the text form tar archives use.

The kernel keeps a file's ACLs in the extended attributes ``system.posix_acl_access``
and ``system.posix_acl_default``: a little-endian version (2), then one entry per
(tag, permissions, id). GNU tar's ``--acls`` stores them as text instead
(``SCHILY.acl.access``), one entry a line: ``user::rw-``, ``user:1000:r--``,
``group::r-x``, ``mask::r-x``, ``other::---``. An archive made by obs-backup holds
both (the binary form in ``SCHILY.xattr.*``, as GNU tar's ``--xattrs`` writes it, and
the text), so that either tar option restores them; an archive that holds only the
text is restored by converting it back here. Pure: names are resolved by the caller.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["ACL_XATTRS", "AclError", "acl_from_text", "acl_to_text"]

ACL_XATTRS = {"access": "system.posix_acl_access", "default": "system.posix_acl_default"}
_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_UNDEFINED = 0xFFFFFFFF
_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_QUALIFIED = {0x02, 0x08}  # named user, named group
_ORDER = {"user": (0x01, 0x02), "group": (0x04, 0x08), "mask": (0x10, 0x10), "other": (0x20, 0x20)}


class AclError(ValueError):
    """An ACL that is not well formed (message says why)."""


def _perms(bits: int) -> str:
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def acl_to_text(raw: bytes) -> str:
    """Given an ACL xattr's value, return GNU tar's text form (numeric ids)."""
    if len(raw) < _HEADER.size or (len(raw) - _HEADER.size) % _ENTRY.size:
        raise AclError("ACL has a wrong length")
    (version,) = _HEADER.unpack_from(raw)
    if version != _VERSION:
        raise AclError(f"ACL version {version} is not 2")
    lines = []
    for offset in range(_HEADER.size, len(raw), _ENTRY.size):
        tag, perm, ident = _ENTRY.unpack_from(raw, offset)
        if tag not in _TAGS:
            raise AclError(f"ACL entry tag {tag:#x} is unknown")
        qualifier = str(ident) if tag in _QUALIFIED else ""
        lines.append(f"{_TAGS[tag]}:{qualifier}:{_perms(perm)}\n")
    return "".join(lines)


def acl_from_text(text: str, resolve: Callable[[str, str], int]) -> bytes:
    """Given an ACL in text form, return the xattr value. ``resolve(kind, name)``
    turns a user or group name (``kind`` "user" or "group") into its id; numeric
    qualifiers are taken as they are. Raise AclError if the text is not an ACL."""
    entries = []
    for line in text.replace(",", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise AclError(f"ACL entry {line!r} is not tag:qualifier:permissions")
        kind, qualifier, perms = parts
        kind = {"u": "user", "g": "group", "m": "mask", "o": "other"}.get(kind, kind)
        letters = perms.replace("-", "")
        if (
            kind not in _ORDER
            or not 1 <= len(perms) <= 3
            or len(set(letters)) != len(letters)
            or set(letters) - set("rwx")
        ):
            raise AclError(f"ACL entry {line!r} is not tag:qualifier:permissions")
        # As libacl reads them: each letter at most once, in any order, "-" for nothing.
        bits = (4 if "r" in perms else 0) | (2 if "w" in perms else 0) | (1 if "x" in perms else 0)
        if qualifier:
            if kind not in ("user", "group"):
                raise AclError(f"ACL entry {line!r}: only user and group entries name someone")
            numeric = qualifier.isascii() and qualifier.isdigit()
            ident = int(qualifier) if numeric else resolve(kind, qualifier)
            if not 0 <= ident < _UNDEFINED:
                raise AclError(f"ACL entry {line!r}: id {ident} is out of range")
            entries.append((_ORDER[kind][1], bits, ident))
        else:
            entries.append((_ORDER[kind][0], bits, _UNDEFINED))
    # The kernel wants entries sorted by tag, then by id.
    entries.sort(key=lambda entry: (entry[0], entry[2]))
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(*entry) for entry in entries)
