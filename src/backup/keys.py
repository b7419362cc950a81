"""The keys of encrypted backups: age recipients (public keys, ``age1...``), which a
backing-up machine holds, and age identities (``AGE-SECRET-KEY-1...``), which decrypt
and should stay off it.

Files are read as ``age`` and ``age-keygen`` write them: one key per line, ``#``
comments and blank lines ignored, so ``age-keygen -o key.txt`` makes an identity file
and ``age-keygen -y key.txt > recipients.txt`` a recipients file both tools read.
A recipient's fingerprint, as a backup records it, is the recipient itself: it is a
public key, and ``age-keygen -y`` prints it from the identity, so a person holding an
identity can see at once whether a backup was made for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyrage import x25519

from .errors import ConfigError, IdentityError

__all__ = [
    "IDENTITY_ENV",
    "Identities",
    "Recipients",
    "load_identities",
    "load_recipients",
    "short_recipient",
]

# Read when a command that decrypts is not given --identity.
IDENTITY_ENV = "OBS_BACKUP_IDENTITY_FILE"

_RECIPIENT_PREFIX = "age1"
_IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
# A key file is a few lines; anything larger is not one (and is not read whole).
_MAX_KEY_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Recipients:
    """The public keys a backup is encrypted to, as given and as pyrage objects."""

    keys: tuple[str, ...]
    parsed: tuple[x25519.Recipient, ...]

    def __bool__(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True)
class Identities:
    """The secret keys read from one identity file, with the public key of each."""

    source: str
    parsed: tuple[x25519.Identity, ...]
    public: tuple[str, ...]

    def matching(self, recipients: Iterable[str]) -> bool:
        """Return whether any of these identities is one of ``recipients``."""
        return not set(self.public).isdisjoint(recipients)


def short_recipient(key: str) -> str:
    """Given a recipient, return it shortened for a message (``age1abcd…wxyz``)."""
    return key if len(key) <= 20 else f"{key[:10]}…{key[-6:]}"


def load_recipients(keys: Sequence[str] = (), files: Sequence[str | os.PathLike[str]] = ()) -> Recipients:
    """Given recipients (``age1...``) and recipients files, return them all, each once,
    in the order given; raise ConfigError naming the key or the file and line that is
    not a recipient (an identity given by mistake is named as such)."""
    found: list[tuple[str, str]] = [(key.strip(), _shown(key.strip())) for key in keys]
    for file in files:
        lines = _key_lines(Path(file), "recipients")
        if not lines:
            raise ConfigError(f"{file}: recipients file holds no recipients", str(file))
        found += [(text, f"{file} line {number}") for number, text in lines]
    keys_seen: dict[str, x25519.Recipient] = {}
    for text, where in found:
        if _IDENTITY_PREFIX in text.upper():
            raise ConfigError(
                f"{where}: is a secret key (an identity), not a recipient; give its public key, "
                "which 'age-keygen -y KEYFILE' prints; the secret key should not be on this machine"
            )
        try:
            parsed = x25519.Recipient.from_str(text)
        except Exception as exc:  # pyrage's RecipientError
            raise ConfigError(f"{where}: not an age recipient (age1...): {exc}") from None
        keys_seen.setdefault(str(parsed), parsed)
    return Recipients(tuple(keys_seen), tuple(keys_seen.values()))


def load_identities(file: str | os.PathLike[str]) -> Identities:
    """Given an age identity file, return its identities; raise IdentityError naming the
    file (and line) if it cannot be read, holds a line that is not an identity, or holds
    none."""
    path = Path(file)
    lines = _key_lines(path, "identity", IdentityError)
    if not lines:
        raise IdentityError(f"{path}: identity file holds no identities (AGE-SECRET-KEY-1...)", str(path))
    parsed = []
    for number, text in lines:
        if text.startswith(_RECIPIENT_PREFIX):
            raise IdentityError(
                f"{path} line {number}: is a recipient (a public key); decrypting needs the secret key "
                "(AGE-SECRET-KEY-1...) it was made from",
                str(path),
            )
        try:
            parsed.append(x25519.Identity.from_str(text))
        except Exception:  # pyrage's IdentityError; its text would repeat the key
            raise IdentityError(
                f"{path} line {number}: not an age identity (AGE-SECRET-KEY-1...); "
                "passphrase-protected and SSH identity files are not read",
                str(path),
            ) from None
    return Identities(str(path), tuple(parsed), tuple(str(identity.to_public()) for identity in parsed))


def _shown(text: str) -> str:
    """A value from the command line as an error may show it: never a secret key, never
    more than one short line."""
    if _IDENTITY_PREFIX in text.upper():
        return "a value given"
    return repr(text) if len(text) <= 80 else repr(text[:40]) + "…"


def _key_lines(
    path: Path, what: str, error: type[ConfigError] | type[IdentityError] = ConfigError
) -> list[tuple[int, str]]:
    """Return the numbered lines of a key file that are not blank or comments."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} file: {exc.strerror or exc}", str(path)) from exc
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise error(f"{path}: too large to be a key file", str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not a key file (not text)", str(path)) from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((number, line))
    return lines
