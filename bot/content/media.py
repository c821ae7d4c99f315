"""Media messages: the pure part of sending and receiving files, images, audio and video.

:class:`~bot.plugin.api.BotAPI` reads, encrypts, uploads and downloads; everything that decides *what* is sent or how a
received event is read lives here and is unit-tested without a network:

* :func:`msgtype_for` picks ``m.image``/``m.audio``/``m.video``/``m.file`` from the MIME type;
* :func:`encrypted_file` turns nio's attachment keys into the spec's ``EncryptedFile`` object (``v2``);
* :func:`media_content` builds the ``m.room.message`` content: ``url`` for unencrypted rooms, ``file`` for encrypted
  ones, ``info`` with ``mimetype``/``size`` (and ``w``/``h`` for images), replies and threads like text messages;
* :func:`media_source` finds what to download in a received event's content;
* :class:`AttachmentEncryptor` encrypts an attachment piece by piece (AES-256-CTR, SHA-256 of the ciphertext), so a
  100 MB file is never in memory twice and each piece can be encrypted in a worker thread.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Util import Counter

from bot.content.text import relates_to

__all__ = [
    "ATTACHMENT_CHUNK",
    "MEDIA_MSGTYPES",
    "AttachmentEncryptor",
    "MediaSource",
    "encrypted_file",
    "guess_mimetype",
    "image_size",
    "media_content",
    "media_source",
    "msgtype_for",
]

#: Message types that carry media.
MEDIA_MSGTYPES = frozenset({"m.file", "m.image", "m.audio", "m.video"})

#: Image types clients render inline; other ``image/*`` types (SVG, TIFF...) are sent as files.
_INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"})


def guess_mimetype(name: str) -> str:
    """The MIME type for a file name (``application/octet-stream`` when unknown)."""
    mimetype, _ = mimetypes.guess_type(name, strict=False)
    return mimetype or "application/octet-stream"


def msgtype_for(mimetype: str) -> str:
    """The ``msgtype`` for content of ``mimetype``: ``m.image``, ``m.audio``, ``m.video`` or ``m.file``."""
    base = mimetype.split(";", 1)[0].strip().lower()
    if base in _INLINE_IMAGES:
        return "m.image"
    if base.startswith("audio/"):
        return "m.audio"
    if base.startswith("video/"):
        return "m.video"
    return "m.file"


#: The size of the pieces an attachment is read and encrypted in.
ATTACHMENT_CHUNK = 1 << 20


def _b64(data: bytes, *, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.decode("ascii").rstrip("=")


class AttachmentEncryptor:
    """An attachment's encryption, one piece at a time, in the format of nio's ``encrypt_attachment``.

    A random 256-bit key and 64-bit IV (or the given ones), AES-CTR with a 64-bit counter from 0 after the IV, and the
    SHA-256 of the ciphertext: for the same key and IV the ciphertext and :meth:`keys` are byte for byte what
    ``nio.crypto.attachments.encrypt_attachment`` returns for the whole file. Both pycryptodome calls release the GIL,
    so :meth:`update` can run in a worker thread without holding up the event loop.
    """

    def __init__(self, key: bytes | None = None, iv: bytes | None = None) -> None:
        self.key = os.urandom(32) if key is None else key
        self.iv = os.urandom(8) if iv is None else iv
        if len(self.key) != 32 or len(self.iv) != 8:
            raise ValueError("an attachment key is 32 bytes and its IV 8")
        self._cipher = AES.new(self.key, AES.MODE_CTR, counter=Counter.new(64, prefix=self.iv, initial_value=0))
        self._sha256 = SHA256.new()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """The ciphertext of the next ``chunk`` of the file."""
        encrypted = self._cipher.encrypt(chunk)
        self._sha256.update(encrypted)
        self.size += len(encrypted)
        return encrypted

    def keys(self) -> dict[str, Any]:
        """What :func:`encrypted_file` needs (``key``, ``iv``, ``hashes``), once every piece went through
        :meth:`update`."""
        return {
            "v": "v2",
            "key": {"kty": "oct", "alg": "A256CTR", "ext": True, "k": _b64(self.key, urlsafe=True),
                    "key_ops": ["encrypt", "decrypt"]},
            "iv": _b64(self.iv + b"\x00" * 8),
            "hashes": {"sha256": _b64(self._sha256.digest())},
        }


def encrypted_file(url: str, keys: dict[str, Any]) -> dict[str, Any]:
    """The spec's ``EncryptedFile`` for the ciphertext at ``url`` and the keys from ``encrypt_attachment``."""
    for required in ("key", "iv", "hashes"):
        if required not in keys:
            raise ValueError(f"attachment keys lack {required!r}")
    return {
        "url": url,
        "key": dict(keys["key"]),
        "iv": keys["iv"],
        "hashes": dict(keys["hashes"]),
        "v": "v2",
    }


def media_content(
    *,
    name: str,
    mimetype: str,
    size: int,
    url: str | None = None,
    file: dict[str, Any] | None = None,
    msgtype: str | None = None,
    width: int | None = None,
    height: int | None = None,
    reply_to: str | None = None,
    thread_root: str | None = None,
    mentions: list[str] | None = None,
) -> dict[str, Any]:
    """Content of an ``m.file``/``m.image``/``m.audio``/``m.video`` message.

    Exactly one of ``url`` (an ``mxc://`` URI, unencrypted rooms) and ``file`` (an :func:`encrypted_file`, encrypted
    rooms) must be given. ``msgtype`` defaults to :func:`msgtype_for` of ``mimetype``.
    """
    if (url is None) == (file is None):
        raise ValueError("media_content needs exactly one of url (unencrypted) and file (encrypted)")
    msgtype = msgtype or msgtype_for(mimetype)
    if msgtype not in MEDIA_MSGTYPES:
        raise ValueError(f"not a media msgtype: {msgtype}")
    info: dict[str, Any] = {"mimetype": mimetype, "size": size}
    if msgtype in ("m.image", "m.video") and width and height:
        info["w"] = width
        info["h"] = height
    content: dict[str, Any] = {"msgtype": msgtype, "body": name, "filename": name, "info": info}
    if file is not None:
        content["file"] = file
    else:
        content["url"] = url
    relates = relates_to(reply_to=reply_to, thread_root=thread_root)
    if relates is not None:
        content["m.relates_to"] = relates
    content["m.mentions"] = {"user_ids": sorted(set(mentions))} if mentions else {}
    return content


@dataclass(frozen=True)
class MediaSource:
    """Where a media event's bytes are: the ``mxc://`` URI, and the decryption info if they are encrypted."""

    mxc: str
    file: dict[str, Any] | None = None
    name: str | None = None
    mimetype: str | None = None

    @property
    def encrypted(self) -> bool:
        """True if the bytes at ``mxc`` are ciphertext."""
        return self.file is not None

    def decryption_args(self) -> tuple[str, str, str]:
        """``(key, sha256, iv)`` as nio's ``decrypt_attachment`` takes them (after the ciphertext)."""
        if self.file is None:
            raise ValueError("the media is not encrypted")
        try:
            return self.file["key"]["k"], self.file["hashes"]["sha256"], self.file["iv"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed encrypted file info (missing {exc})") from None


def media_source(content: dict[str, Any]) -> MediaSource | None:
    """The media of a message's ``content`` (``file`` for encrypted, ``url`` for plain), or None if it has none."""
    if not isinstance(content, dict):
        return None
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    name = content.get("filename") or content.get("body")
    mimetype = info.get("mimetype")
    file = content.get("file")
    if isinstance(file, dict) and isinstance(file.get("url"), str) and file["url"].startswith("mxc://"):
        return MediaSource(file["url"], file, name if isinstance(name, str) else None, mimetype)
    url = content.get("url")
    if isinstance(url, str) and url.startswith("mxc://"):
        return MediaSource(url, None, name if isinstance(name, str) else None, mimetype)
    return None


def image_size(data: bytes | Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image (its bytes, or a file, of which only the header is read) if Pillow is
    installed and can read it, else None (Pillow is optional)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:
        return None
    return (int(width), int(height)) if width and height else None
