"""Tests for backup.keys: recipients and identity files read as age reads them, and a
one-line error naming the file and line for anything that is not a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup.errors import ConfigError, IdentityError
from backup.keys import load_identities, load_recipients, short_recipient
from support.agekeys import new_key


def test_recipients_from_options_and_files_in_order_each_once(tmp_path: Path) -> None:
    one, two, three = (new_key(tmp_path, name) for name in ("one", "two", "three"))
    listing = tmp_path / "recipients.txt"
    listing.write_text(f"# the off-site keys\n\n  {two.recipient}  \n{one.recipient}\n# {three.recipient}\n")
    found = load_recipients([one.recipient], [listing])
    assert found.keys == (one.recipient, two.recipient)  # the commented one is not read
    assert len(found.parsed) == 2 and bool(found)


def test_no_recipients_is_falsy() -> None:
    assert not load_recipients()


@pytest.mark.parametrize("text", ["age1xyz", "ssh-ed25519 AAAA", "", "hello"])
def test_a_recipient_that_is_not_one_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match=r"not an age recipient \(age1\.\.\.\)") as caught:
        load_recipients([text])
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_line_in_a_recipients_file_is_named_by_file_and_line(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    listing = tmp_path / "recipients.txt"
    listing.write_text(f"{key.recipient}\n# comment\nage1-not-a-key\n")
    with pytest.raises(ConfigError, match=rf"^{listing} line 3: not an age recipient"):
        load_recipients(files=[listing])


def test_a_secret_key_given_as_recipient_is_refused_as_such(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    secret = key.identity_file.read_text().splitlines()[-1]
    with pytest.raises(ConfigError, match="is a secret key") as caught:
        load_recipients(files=[key.identity_file])
    assert secret not in str(caught.value)  # the secret is not echoed


def test_an_empty_or_missing_recipients_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ConfigError, match="holds no recipients"):
        load_recipients(files=[empty])
    with pytest.raises(ConfigError, match="cannot read recipients file"):
        load_recipients(files=[tmp_path / "absent.txt"])


def test_identities_and_their_public_keys(tmp_path: Path) -> None:
    one, two = new_key(tmp_path, "one"), new_key(tmp_path, "two")
    both = tmp_path / "both.txt"
    both.write_text(one.identity_file.read_text() + two.identity_file.read_text())
    identities = load_identities(both)
    assert identities.public == (one.recipient, two.recipient)
    assert identities.source == str(both)
    assert identities.matching([two.recipient]) and not identities.matching([new_key(tmp_path, "x").recipient])


def test_a_recipient_given_as_identity_is_refused_as_such(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    with pytest.raises(IdentityError, match=rf"^{key.recipients_file} line 1: is a recipient"):
        load_identities(key.recipients_file)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"AGE-SECRET-KEY-1NOTVALID\n", "line 1: not an age identity"),
        (b"# only comments\n", "holds no identities"),
        (b"\xff\xfe\x00binary", "not a key file \\(not text\\)"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\n", "line 1: not an age identity"),
    ],
)
def test_an_identity_file_that_is_not_one_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "key.txt"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=message) as caught:
        load_identities(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_identity_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"absent\.txt: cannot read identity file"):
        load_identities(tmp_path / "absent.txt")


def test_short_recipient_keeps_both_ends() -> None:
    key = "age1" + "q" * 54 + "abcdef"
    assert short_recipient(key) == "age1qqqqqq…abcdef"
    assert short_recipient("age1short") == "age1short"


def test_a_secret_key_given_on_the_command_line_is_never_echoed(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    whole = key.identity_file.read_text()  # --encrypt-to "$(cat key.txt)"
    secret = whole.splitlines()[-1]
    for given in (secret, whole, secret.lower()):
        with pytest.raises(ConfigError) as caught:
            load_recipients([given])
        assert secret.lower() not in str(caught.value).lower() and "\n" not in str(caught.value)


def test_a_long_bad_recipient_is_shown_shortened() -> None:
    with pytest.raises(ConfigError) as caught:
        load_recipients(["x" * 500])
    assert len(str(caught.value)) < 200
