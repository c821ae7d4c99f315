"""Media content, without a network: msgtypes, encrypted and plain shapes, reading received media."""

import base64
import hashlib
import struct
import zlib

import pytest
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from bot.content.media import (
    encrypted_file,
    guess_mimetype,
    image_size,
    media_content,
    media_source,
    msgtype_for,
)


def png_1x1() -> bytes:
    """A valid 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("mimetype", "msgtype"),
    [
        ("image/png", "m.image"),
        ("image/jpeg", "m.image"),
        ("IMAGE/GIF", "m.image"),
        ("image/svg+xml", "m.file"),  # not rendered inline by clients
        ("audio/ogg; codecs=opus", "m.audio"),
        ("video/mp4", "m.video"),
        ("text/plain", "m.file"),
        ("application/octet-stream", "m.file"),
    ],
)
def test_msgtype_by_mimetype(mimetype, msgtype):
    assert msgtype_for(mimetype) == msgtype


def test_guess_mimetype():
    assert guess_mimetype("a.png") == "image/png"
    assert guess_mimetype("notes.txt") == "text/plain"
    assert guess_mimetype("blob") == "application/octet-stream"


def test_unencrypted_content_shape():
    c = media_content(name="a.png", mimetype="image/png", size=67, url="mxc://hs/abc", width=1, height=1)
    assert c == {
        "msgtype": "m.image",
        "body": "a.png",
        "filename": "a.png",
        "info": {"mimetype": "image/png", "size": 67, "w": 1, "h": 1},
        "url": "mxc://hs/abc",
        "m.mentions": {},
    }


def test_encrypted_content_shape_and_relations():
    ciphertext, keys = encrypt_attachment(b"hello")
    file = encrypted_file("mxc://hs/enc", keys)
    assert file["v"] == "v2" and file["url"] == "mxc://hs/enc"
    assert set(file) == {"url", "key", "iv", "hashes", "v"}
    assert file["key"]["alg"] == "A256CTR" and "sha256" in file["hashes"]
    c = media_content(
        name="notes.txt", mimetype="text/plain", size=5, file=file, reply_to="$r", thread_root="$t", width=3, height=4
    )
    assert c["msgtype"] == "m.file" and "url" not in c and c["file"] is file
    assert c["info"] == {"mimetype": "text/plain", "size": 5}  # no w/h for files
    assert c["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": "$t",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": "$r"},
    }
    # what a receiver reads back out of it
    src = media_source(c)
    assert src.mxc == "mxc://hs/enc" and src.encrypted and src.name == "notes.txt" and src.mimetype == "text/plain"
    assert decrypt_attachment(ciphertext, *src.decryption_args()) == b"hello"


def test_media_content_validation():
    with pytest.raises(ValueError):
        media_content(name="x", mimetype="text/plain", size=1)
    with pytest.raises(ValueError):
        media_content(name="x", mimetype="text/plain", size=1, url="mxc://a/b", file={"url": "mxc://a/b"})
    with pytest.raises(ValueError):
        media_content(name="x", mimetype="text/plain", size=1, url="mxc://a/b", msgtype="m.text")
    with pytest.raises(ValueError):
        encrypted_file("mxc://a/b", {"iv": "x"})
    assert media_content(name="x", mimetype="text/plain", size=1, url="mxc://a/b", msgtype="m.image")["msgtype"] == (
        "m.image"
    )


def test_media_source_of_received_content():
    assert media_source({"msgtype": "m.text", "body": "hi"}) is None
    assert media_source({"msgtype": "m.file", "url": "https://not-mxc"}) is None
    plain = media_source({"msgtype": "m.file", "body": "f", "url": "mxc://a/b"})
    assert plain.mxc == "mxc://a/b" and not plain.encrypted and plain.name == "f"
    with pytest.raises(ValueError):
        plain.decryption_args()
    broken = media_source({"msgtype": "m.file", "file": {"url": "mxc://a/b"}})
    assert broken.encrypted
    with pytest.raises(ValueError):
        broken.decryption_args()


def test_tampered_ciphertext_fails_the_hash_check():
    from nio.exceptions import EncryptionError

    ciphertext, keys = encrypt_attachment(b"payload")
    src = media_source({"msgtype": "m.file", "file": encrypted_file("mxc://a/b", keys)})
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(EncryptionError):
        decrypt_attachment(tampered, *src.decryption_args())
    digest = base64.b64encode(hashlib.sha256(ciphertext).digest()).decode().rstrip("=")
    assert keys["hashes"]["sha256"] == digest


def test_image_size_when_pillow_is_there():
    pytest.importorskip("PIL")
    assert image_size(png_1x1()) == (1, 1)
    assert image_size(b"not an image") is None
