"""Age keys for tests: fresh identities written as ``age-keygen`` writes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyrage import x25519

__all__ = ["AgeKey", "new_key"]


@dataclass(frozen=True)
class AgeKey:
    """An identity file and a recipients file of one fresh key pair."""

    identity_file: Path
    recipients_file: Path
    recipient: str


def new_key(directory: Path, name: str = "key") -> AgeKey:
    """Given a directory, write a new identity (``NAME.txt``, as ``age-keygen -o`` does)
    and its recipient (``NAME.pub``); return them."""
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    directory.mkdir(parents=True, exist_ok=True)
    identity_file = directory / f"{name}.txt"
    identity_file.write_text(f"# created: for a test\n# public key: {recipient}\n{identity}\n")
    recipients_file = directory / f"{name}.pub"
    recipients_file.write_text(recipient + "\n")
    return AgeKey(identity_file, recipients_file, recipient)
