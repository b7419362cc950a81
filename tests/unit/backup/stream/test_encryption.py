"""Tests for backup.stream.encryption: the age layer.

What goes out is age v1 that the ``age`` command decrypts, and what ``age`` writes comes
back; everything cut short or altered fails before the stream's end is reported, at
whichever boundary it is cut (in the header, at a 64 KiB chunk's edge, inside one);
the layer's threads never outlive it, and the original error of the stream below
(a full disk) reaches the caller.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.errors import IdentityError
from backup.keys import Identities, Recipients, load_identities, load_recipients
from backup.stream.encryption import AGE_MAGIC, AgeLayer, DecryptionError
from backup.stream.pipeline import ArchiveInput, ArchiveOutput, archive_layers
from support.agekeys import AgeKey, new_key

CHUNK = 64 * 1024  # age's plaintext chunk
TAG = 16  # each chunk's Poly1305 tag


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return new_key(tmp_path_factory.mktemp("keys"))


def _recipients(key: AgeKey) -> Recipients:
    return load_recipients([key.recipient])


def _identities(key: AgeKey) -> Identities:
    return load_identities(key.identity_file)


def _encrypt(data: bytes, recipients: Recipients, piece: int = 100_000) -> bytes:
    out = io.BytesIO()
    writer = AgeLayer(recipients).wrap_writer(out)  # type: ignore[arg-type]
    for start in range(0, len(data), piece):
        writer.write(data[start : start + piece])
    writer.close()
    assert not out.closed  # the layer below is its owner's
    return out.getvalue()


def _decrypt(blob: bytes, identities: Identities) -> tuple[bytes, BaseException | None]:
    """Return what came out before the end (or an error), and the error."""
    reader = AgeLayer(identities=identities).wrap_reader(io.BytesIO(blob))  # type: ignore[arg-type]
    out = bytearray()
    buffer = bytearray(CHUNK // 3)
    try:
        while count := reader.readinto(buffer):  # type: ignore[attr-defined]
            out += buffer[:count]
    except (DecryptionError, IdentityError) as exc:
        return bytes(out), exc
    finally:
        reader.close()
    return bytes(out), None


def _age_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("age-")]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_at_chunk_boundaries(key: AgeKey, size: int) -> None:
    data = os.urandom(size)
    blob = _encrypt(data, _recipients(key))
    assert blob.startswith(AGE_MAGIC)
    assert _decrypt(blob, _identities(key)) == (data, None)
    assert not _age_threads()


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=3 * CHUNK + 100), piece=st.integers(1, 70_000))
def test_round_trip_whatever_the_writes(key: AgeKey, data: bytes, piece: int) -> None:
    assert _decrypt(_encrypt(data, _recipients(key), piece), _identities(key)) == (data, None)


def test_any_one_recipient_decrypts(tmp_path: Path, key: AgeKey) -> None:
    other = new_key(tmp_path, "other")
    blob = _encrypt(b"for both", load_recipients([key.recipient, other.recipient]))
    assert _decrypt(blob, _identities(key))[0] == b"for both"
    assert _decrypt(blob, load_identities(other.identity_file))[0] == b"for both"


def test_age_decrypts_what_the_layer_writes(tmp_path: Path, key: AgeKey) -> None:
    age = shutil.which("age")
    assert age is not None, "age is installed by scripts/install-system-tools.sh"
    data = os.urandom(5 * CHUNK + 123)
    encrypted = tmp_path / "data.age"
    encrypted.write_bytes(_encrypt(data, _recipients(key)))
    plain = subprocess.run([age, "-d", "-i", str(key.identity_file), str(encrypted)], capture_output=True, check=True)
    assert plain.stdout == data


def test_the_layer_decrypts_what_age_writes(tmp_path: Path, key: AgeKey) -> None:
    age = shutil.which("age")
    assert age is not None
    data = os.urandom(2 * CHUNK + 5)
    blob = subprocess.run([age, "-r", key.recipient], input=data, capture_output=True, check=True).stdout
    assert _decrypt(blob, _identities(key)) == (data, None)


def _cut_points(blob: bytes) -> list[int]:
    """Cuts at every structural boundary: inside the header, just after it, after the
    payload nonce, at a chunk's edge, inside a chunk, one byte short of the end."""
    header_end = blob.index(b"\n---") + 1
    header_end = blob.index(b"\n", header_end) + 1
    payload = header_end + 16  # the stream nonce
    sealed = CHUNK + TAG
    return sorted(
        {
            len(AGE_MAGIC) - 3,
            len(AGE_MAGIC),
            header_end - 5,
            header_end,
            payload,
            payload + 1,
            payload + sealed,  # exactly one whole chunk: the last one is missing
            payload + sealed + 1,
            payload + 2 * sealed - 1,
            len(blob) - 1,
        }
    )


def test_a_stream_cut_anywhere_fails_and_never_ends_cleanly(key: AgeKey) -> None:
    data = os.urandom(3 * CHUNK + 999)
    blob = _encrypt(data, _recipients(key))
    for cut in _cut_points(blob):
        out, error = _decrypt(blob[:cut], _identities(key))
        assert error is not None, f"cut at {cut} of {len(blob)} ended cleanly"
        assert len(out) < len(data) and data.startswith(out)  # what came out is authentic


def test_a_flipped_bit_anywhere_fails(key: AgeKey) -> None:
    data = os.urandom(2 * CHUNK + 10)
    blob = _encrypt(data, _recipients(key))
    for position in range(0, len(blob), max(1, len(blob) // 40)):
        altered = bytearray(blob)
        altered[position] ^= 0x04
        out, error = _decrypt(bytes(altered), _identities(key))
        assert error is not None, f"a bit flipped at byte {position} went unnoticed"
        assert data.startswith(out)


def test_trailing_bytes_after_the_last_chunk_fail(key: AgeKey) -> None:
    blob = _encrypt(b"x" * 1000, _recipients(key))
    assert _decrypt(blob + b"\0", _identities(key))[1] is not None


def test_a_wrong_identity_is_an_identity_error(tmp_path: Path, key: AgeKey) -> None:
    blob = _encrypt(b"secret", _recipients(key))
    stranger = new_key(tmp_path, "stranger")
    out, error = _decrypt(blob, load_identities(stranger.identity_file))
    assert out == b"" and isinstance(error, IdentityError)
    assert str(stranger.identity_file) in str(error)


def test_plaintext_is_not_taken_for_ciphertext(key: AgeKey) -> None:
    out, error = _decrypt(b"just some bytes, not age at all\n" * 10, _identities(key))
    assert out == b"" and isinstance(error, DecryptionError)


class _Full(io.RawIOBase):
    """A stream below that fails like a full disk after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/backups/x.tar.zst.age")
        self.room -= len(data)
        return len(data)


def test_the_error_below_reaches_the_writer_as_it_was(key: AgeKey) -> None:
    writer = AgeLayer(_recipients(key)).wrap_writer(_Full(200_000))  # type: ignore[arg-type]
    with pytest.raises(OSError) as caught:
        for _ in range(100):
            writer.write(os.urandom(CHUNK))
        writer.close()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/backups/x.tar.zst.age"
    with pytest.raises(OSError):
        writer.close()  # a stream that failed never finishes cleanly, however often closed
    assert not _age_threads()


def test_a_reader_closed_early_stops_its_thread(key: AgeKey) -> None:
    blob = _encrypt(os.urandom(40 * CHUNK), _recipients(key))  # more than the pipe holds
    reader = AgeLayer(identities=_identities(key)).wrap_reader(io.BytesIO(blob))  # type: ignore[arg-type]
    assert reader.readinto(bytearray(10)) == 10  # type: ignore[attr-defined]
    reader.close()
    assert not _age_threads()


def test_a_layer_without_its_keys_refuses(key: AgeKey) -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        AgeLayer().wrap_writer(io.BytesIO())
    with pytest.raises(IdentityError, match="needs an identity"):
        AgeLayer(_recipients(key)).wrap_reader(io.BytesIO())


def test_below_compression_in_the_pipeline_the_digest_is_the_ciphertexts(key: AgeKey) -> None:
    """Ciphertext does not compress: the layer goes below compression, and the size and
    digest the pipeline reports are those of the stored (encrypted) bytes."""
    import hashlib

    data = b"compressible " * 50_000
    upload = io.BytesIO()
    output = ArchiveOutput(upload, archive_layers("zst", 3, encryption=AgeLayer(_recipients(key))), "sha256")
    output.stream.write(data)
    size, digest = output.finish()
    stored = upload.getvalue()
    assert stored.startswith(AGE_MAGIC) and size == len(stored) < len(data) // 10
    assert digest == hashlib.sha256(stored).hexdigest()
    back = ArchiveInput(
        io.BytesIO(stored), archive_layers("zst", encryption=AgeLayer(identities=_identities(key))), "sha256"
    )
    assert back.stream.read() == data  # type: ignore[attr-defined]
    assert back.drain(bytearray(CHUNK)) == (size, digest)
