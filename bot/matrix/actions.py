"""What the bot can do in Matrix: send (text, Markdown, files), reply, react, edit, redact, open DMs, download media,
read members and power levels, kick and ban.

:class:`MatrixActions` is a thin async shell over the nio client; plugins reach it through
:class:`~bot.plugin.api.BotAPI`, which adds what only plugins need. Content building (replies, threads, edits, mentions,
Markdown, media) is done by the pure helpers in :mod:`bot.content.text`, :mod:`bot.content.markdown` and
:mod:`bot.content.media`; finding
and creating DM rooms by :mod:`bot.matrix.direct`. This module only performs the requests and turns error responses into
:class:`MatrixError` so a plugin never has to inspect nio response types.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiofiles
import aiofiles.os
import aiohttp
from nio import (
    Api,
    ContentRepositoryConfigResponse,
    EncryptionError,
    Event,
    MegolmEvent,
    RoomBanResponse,
    RoomGetEventResponse,
    RoomKickResponse,
    RoomRedactResponse,
    RoomSendResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from bot.content import media
from bot.content import text as build
from bot.errors import MatrixError
from bot.matrix.direct import DirectRooms
from bot.matrix.idempotency import next_txn_id
from bot.matrix.power import user_power_level

if TYPE_CHECKING:
    from bot.matrix.client import RatchetClient

__all__ = ["DecryptedEvent", "MatrixActions"]

log = logging.getLogger(__name__)

#: Attachments larger than this are encrypted and decrypted in a worker thread, not on the event loop.
_THREAD_CRYPTO_BYTES = 1 << 20
#: The largest file :meth:`MatrixActions.download` reads unless given another ``max_bytes`` (50 MiB).
MAX_DOWNLOAD_BYTES = 50 << 20
_UNKNOWN = object()


class MatrixActions:
    """The bot's actions in Matrix, shared by the runtime, plugins and bridges."""

    def __init__(self, client: RatchetClient) -> None:
        self._client = client
        #: Each room's creators from its m.room.create event (kept by the runtime; nio does not track them).
        self.creators: dict[str, set[str]] = {}
        self._direct = DirectRooms(client)
        self._upload_limit: Any = _UNKNOWN
        self._upload_limit_lock = asyncio.Lock()

    @property
    def user_id(self) -> str:
        """The bot's own Matrix user id."""
        return self._client.user_id

    @property
    def device_id(self) -> str:
        """The bot's device id (the same across restarts)."""
        return self._client.device_id

    def room_encrypted(self, room_id: str) -> bool:
        """True if the room has encryption enabled (as far as the bot has synced)."""
        room = self._client.rooms.get(room_id)
        return bool(room and room.encrypted)

    def power_level(self, room_id: str, user_id: str) -> int:
        """``user_id``'s power level in ``room_id`` (0 if the room is unknown).

        In room versions 12 and later the room's creators outrank every level (see :mod:`bot.matrix.power`).
        """
        room = self._client.rooms.get(room_id)
        if room is None:
            return 0
        return user_power_level(room, user_id, self.creators.get(room_id, frozenset()))

    async def send(
        self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message", *, txn_id: str | None = None
    ) -> str:
        """Send an event (encrypted if the room is) and return its event id.

        The transaction id is ``txn_id`` if given, else derived from the handling in progress (so that a handler run
        again after a crash does not send twice, see :mod:`bot.matrix.idempotency`), else random.
        """
        client = self._client
        tx_id = txn_id or next_txn_id()
        started = time.perf_counter()
        if event_type == "m.reaction" and self.room_encrypted(room_id) and client.olm:
            # nio sends reactions in the clear; modern clients encrypt them like any other event.
            resp = await client.room_send_encrypted(room_id, event_type, content, tx_id)
        else:
            resp = await client.room_send(
                room_id, event_type, content, tx_id=tx_id, ignore_unverified_devices=True
            )
        metrics = getattr(client, "metrics", None)  # test doubles of the client may not have it
        if metrics is not None:
            if isinstance(resp, RoomSendResponse):
                metrics.send_duration.observe(time.perf_counter() - started)
            else:
                metrics.send_failures.inc()
        if not isinstance(resp, RoomSendResponse):
            raise MatrixError(
                f"sending to {room_id} failed: {getattr(resp, 'message', resp)}",
                getattr(resp, "status_code", None),
            )
        return resp.event_id

    async def send_text(
        self,
        room_id: str,
        text: str,
        *,
        html: str | None = None,
        notice: bool = False,
        reply_to: str | None = None,
        thread_root: str | None = None,
        mentions: list[str] | None = None,
        markdown: bool = False,
    ) -> str:
        """Send a text (or notice) message, optionally as a reply or in a thread; returns the event id.

        ``markdown=True`` renders ``text`` as Markdown into ``formatted_body`` (the body stays the source); an
        explicit ``html`` wins.
        """
        content = build.text_content(
            text,
            html=html,
            notice=notice,
            reply_to=reply_to,
            thread_root=thread_root,
            mentions=mentions,
            markdown=markdown,
        )
        return await self.send(room_id, content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """Annotate ``event_id`` with the reaction ``key`` (an emoji); returns the reaction's event id."""
        return await self.send(room_id, build.reaction_content(event_id, key), "m.reaction")

    async def edit(
        self,
        room_id: str,
        event_id: str,
        text: str,
        *,
        html: str | None = None,
        notice: bool = False,
        markdown: bool = False,
    ) -> str:
        """Replace the text of the bot's own message ``event_id``; returns the edit's event id."""
        content = build.edit_content(event_id, text, html=html, notice=notice, markdown=markdown)
        return await self.send(room_id, content)

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Redact ``event_id`` (needs the power to do so for other users' events).

        Its transaction id is derived like :meth:`send`'s, so a handler run again does not redact twice.
        """
        resp = await self._client.room_redact(room_id, event_id, reason=reason, tx_id=next_txn_id())
        if not isinstance(resp, RoomRedactResponse):
            raise MatrixError(
                f"redacting {event_id} failed: {getattr(resp, 'message', resp)}",
                getattr(resp, "status_code", None),
            )
        return resp.event_id

    # -- direct messages -------------------------------------------------------------------------------------

    async def dm(self, user_id: str) -> str:
        """The room id of the bot's encrypted DM with ``user_id``; created (and the user invited) if there is none.

        A new DM is ready when this returns: a message sent to it right away is readable by the user once they
        accept the invite. Concurrent calls for the same user return the same room.
        """
        return await self._direct.room_for(user_id)

    async def send_dm(
        self, user_id: str, text: str, *, html: str | None = None, notice: bool = False, markdown: bool = False
    ) -> str:
        """Send a text message to the bot's DM with ``user_id`` (see :meth:`dm`); returns the event id."""
        room_id = await self.dm(user_id)
        return await self.send_text(room_id, text, html=html, notice=notice, markdown=markdown)

    # -- media -----------------------------------------------------------------------------------------------

    async def upload_limit(self) -> int | None:
        """The homeserver's maximum upload size in bytes (``m.upload.size``), or None if it does not say.

        Asked once (``/_matrix/client/v1/media/config``) and remembered.
        """
        async with self._upload_limit_lock:
            if self._upload_limit is _UNKNOWN:
                resp = await self._client.content_repository_config()
                if isinstance(resp, ContentRepositoryConfigResponse):
                    self._upload_limit = resp.upload_size
                else:
                    log.warning("could not read the media config: %s", getattr(resp, "message", resp))
                    return None  # ask again next time
            return self._upload_limit

    async def send_file(
        self,
        room_id: str,
        path: str | PathLike[str],
        *,
        mimetype: str | None = None,
        name: str | None = None,
        reply_to: str | None = None,
        thread_root: str | None = None,
        msgtype: str | None = None,
    ) -> str:
        """Upload the file at ``path`` and send it (encrypted if the room is); returns the event id.

        ``msgtype`` defaults by MIME type (guessed from the name): ``m.image``, ``m.audio``, ``m.video`` or
        ``m.file``. Raises :class:`MatrixError` (``M_TOO_LARGE``) for files over the server's upload limit.

        A file over 1 MiB is streamed: read, encrypted and hashed a piece at a time in a worker thread while it is
        uploaded, so it is never whole in memory and the event loop never waits on it.
        """
        file_path = Path(path)
        name = name or file_path.name
        stat = await aiofiles.os.stat(file_path)
        await self._check_size(stat.st_size, name)
        if stat.st_size <= _THREAD_CRYPTO_BYTES:
            async with aiofiles.open(file_path, "rb") as fh:
                data = await fh.read()
            return await self.send_bytes(
                room_id, data, name=name, mimetype=mimetype, reply_to=reply_to, thread_root=thread_root,
                msgtype=msgtype,
            )
        return await self._send_media(room_id, file_path, stat.st_size, name=name, mimetype=mimetype,
                                      reply_to=reply_to, thread_root=thread_root, msgtype=msgtype)

    async def send_image(
        self,
        room_id: str,
        path: str | PathLike[str],
        *,
        mimetype: str | None = None,
        name: str | None = None,
        reply_to: str | None = None,
        thread_root: str | None = None,
    ) -> str:
        """Send the image at ``path`` as ``m.image`` (with its width and height if Pillow is installed)."""
        return await self.send_file(
            room_id, path, mimetype=mimetype, name=name, reply_to=reply_to, thread_root=thread_root, msgtype="m.image"
        )

    async def send_bytes(
        self,
        room_id: str,
        data: bytes,
        *,
        name: str,
        mimetype: str | None = None,
        reply_to: str | None = None,
        thread_root: str | None = None,
        msgtype: str | None = None,
    ) -> str:
        """Like :meth:`send_file` for data in memory, sent as a file called ``name``."""
        return await self._send_media(room_id, data, len(data), name=name, mimetype=mimetype, reply_to=reply_to,
                                      thread_root=thread_root, msgtype=msgtype)

    async def _send_media(
        self,
        room_id: str,
        source: bytes | Path,
        size: int,
        *,
        name: str,
        mimetype: str | None,
        reply_to: str | None,
        thread_root: str | None,
        msgtype: str | None,
    ) -> str:
        if room_id not in self._client.rooms:
            raise MatrixError(f"cannot send a file to {room_id}: the bot is not in that room (or has not synced it)")
        await self._check_size(size, name)
        mimetype = mimetype or media.guess_mimetype(name)
        msgtype = msgtype or media.msgtype_for(mimetype)
        dims = None
        if msgtype in ("m.image", "m.video"):
            dims = (media.image_size(source) if size <= _THREAD_CRYPTO_BYTES
                    else await asyncio.to_thread(media.image_size, source))
        url, file = await self._upload(source, size, mimetype, name, encrypt=self.room_encrypted(room_id))
        content = media.media_content(
            name=name,
            mimetype=mimetype,
            size=size,
            url=url if file is None else None,
            file=file,
            msgtype=msgtype,
            width=dims[0] if dims else None,
            height=dims[1] if dims else None,
            reply_to=reply_to,
            thread_root=thread_root,
        )
        return await self.send(room_id, content)

    async def _check_size(self, size: int, name: str) -> None:
        limit = await self.upload_limit()
        if limit is not None and size > limit:
            raise MatrixError(
                f"{name} is {size} bytes, more than the homeserver accepts ({limit} bytes)", "M_TOO_LARGE"
            )

    async def _upload(
        self, source: bytes | Path, size: int, mimetype: str, name: str, *, encrypt: bool
    ) -> tuple[str, dict | None]:
        """Upload ``source`` (bytes, or a file streamed from disk), encrypted first if asked; returns the mxc URI and
        the ``EncryptedFile`` or None.

        Encryption is :class:`~bot.content.media.AttachmentEncryptor` (nio's format), a piece of
        :data:`~bot.content.media.ATTACHMENT_CHUNK` bytes at a time, in a worker thread for anything over 1 MiB. If
        the upload is retried, the stream starts over with the same key and IV (the same ciphertext).
        """
        if encrypt:
            key, iv = os.urandom(32), os.urandom(8)
            used: list[media.AttachmentEncryptor] = []

            def provider(*_: Any) -> AsyncIterator[bytes]:
                encryptor = media.AttachmentEncryptor(key, iv)
                used.append(encryptor)
                return _encrypted_stream(source, encryptor, threaded=size > _THREAD_CRYPTO_BYTES)

            data_provider: Any = provider
            content_type, filename = "application/octet-stream", None  # the server learns neither type nor name
        else:
            data_provider = lambda *_: source  # noqa: E731 - nio reads a Path itself, a piece at a time
            content_type, filename = mimetype, name
        resp, _ = await self._client.upload(data_provider, content_type=content_type, filename=filename,
                                            filesize=size)
        if not isinstance(resp, UploadResponse):
            raise _failed(f"uploading {name}", resp)
        if not encrypt:
            return resp.content_uri, None
        encryptor = used[-1]
        if encryptor.size != size:
            raise MatrixError(f"{name} changed while it was uploaded ({encryptor.size} bytes read, {size} expected)")
        return resp.content_uri, media.encrypted_file(resp.content_uri, encryptor.keys())

    async def download(self, event: Event | dict[str, Any], *, max_bytes: int | None = None) -> bytes:
        """The bytes of a media event's file (``m.file``/``m.image``/...), decrypted and verified if encrypted.

        ``event`` is a nio event or an event's ``content``. Raises :class:`MatrixError` if the event has no media,
        is still encrypted (no room key yet), cannot be downloaded or fails its integrity check. A file larger than
        ``max_bytes`` (default :data:`MAX_DOWNLOAD_BYTES`) is not read: its declared size (``info.size``), the
        server's ``Content-Length`` and the bytes actually received are each checked against it, the transfer is cut
        as soon as it goes over, and the error's ``errcode`` is ``M_TOO_LARGE``.
        """
        if isinstance(event, MegolmEvent):
            raise MatrixError(f"{event.event_id} is not decrypted (no room key yet): cannot read its media")
        content = event.source.get("content", {}) if isinstance(event, Event) else event
        source = media.media_source(content)
        if source is None:
            raise MatrixError("the event carries no media (no url or file)")
        limit = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes

        def too_large(size: int | str) -> MatrixError:
            return MatrixError(f"{source.mxc} is {size} bytes; at most {limit} are downloaded", "M_TOO_LARGE")

        info = content.get("info") if isinstance(content, dict) else None
        declared = info.get("size") if isinstance(info, dict) else None
        if isinstance(declared, int) and not isinstance(declared, bool) and declared > limit:
            raise too_large(declared)
        server_name, _, media_id = source.mxc.removeprefix("mxc://").partition("/")
        method, path = Api.download(server_name, media_id, access_token=self._client.access_token)
        for attempt in range(4):
            try:
                resp = await self._client.send(method, path, timeout=0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise MatrixError(f"downloading {source.mxc} failed: {exc}") from exc
            try:
                if resp.status != 200:
                    try:
                        error = json.loads(await resp.content.read(65536))
                    except ValueError:
                        error = {}
                    error = error if isinstance(error, dict) else {}
                    if resp.status == 429 and attempt < 3:
                        retry = error.get("retry_after_ms")
                        await asyncio.sleep(min(retry / 1000, 30) if isinstance(retry, int) else 1.0)
                        continue
                    raise MatrixError(
                        f"downloading {source.mxc} failed: {resp.status} {error.get('error') or resp.reason}",
                        error.get("errcode") if isinstance(error.get("errcode"), str) else None,
                    )
                if resp.content_length is not None and resp.content_length > limit:
                    raise too_large(resp.content_length)
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise too_large(f"more than {limit}")
                    chunks.append(chunk)
                # joining 100 MB takes tens of ms: in a thread (bytes.join lets go of the GIL for large results)
                body = b"".join(chunks) if size <= _THREAD_CRYPTO_BYTES else await asyncio.to_thread(b"".join, chunks)
                del chunks  # not three copies of the file at once (pieces, body, plaintext)
            except aiohttp.ClientError as exc:
                resp.close()
                raise MatrixError(f"downloading {source.mxc} failed: {exc}") from exc
            except BaseException:
                resp.close()  # not drained: the connection is dropped
                raise
            resp.release()
            break
        if not source.encrypted:
            return body
        try:
            key, sha256, iv = source.decryption_args()
            if len(body) > _THREAD_CRYPTO_BYTES:
                return await asyncio.to_thread(decrypt_attachment, body, key, sha256, iv)
            return decrypt_attachment(body, key, sha256, iv)
        except (EncryptionError, ValueError) as exc:
            raise MatrixError(f"cannot decrypt {source.mxc}: {exc}") from exc

    def joined_rooms(self) -> list[str]:
        """The rooms the bot is joined to, as far as it has synced."""
        return list(self._client.rooms)

    def room_alias(self, room_id: str) -> str | None:
        """The room's canonical alias as far as the bot has synced (``#name:server``), or None."""
        room = self._client.rooms.get(room_id)
        alias = getattr(room, "canonical_alias", None)
        return alias if isinstance(alias, str) and alias else None

    def members(self, room_id: str) -> dict[str, str]:
        """Joined members of ``room_id`` (invited ones excluded), mapped to their display names."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return {}
        return {
            user_id: user.display_name or _localpart(user_id)
            for user_id, user in room.users.items()
            if user_id not in room.invited_users
        }

    def display_name(self, room_id: str, user_id: str) -> str:
        """How ``user_id`` is called in ``room_id`` (their display name there, else their localpart)."""
        room = self._client.rooms.get(room_id)
        user = room.users.get(user_id) if room is not None else None
        name = getattr(user, "display_name", None)
        return name if name else _localpart(user_id)

    async def join(self, room: str) -> str:
        """Join a room by id or alias (it must allow it: invited, or public); returns the room id."""
        resp = await self._client.join(room)
        room_id = getattr(resp, "room_id", None)
        if not room_id:
            raise _failed(f"joining {room}", resp)
        return room_id

    async def resolve_room(self, room: str) -> str:
        """The room id of ``room`` (a room id is returned as is; an alias is resolved by the homeserver)."""
        if not room.startswith("#"):
            return room
        resp = await self._client.room_resolve_alias(room)
        room_id = getattr(resp, "room_id", None)
        if not room_id:
            raise _failed(f"resolving {room}", resp)
        return room_id

    async def fetch_event(self, room_id: str, event_id: str) -> Event:
        """Fetch one event from the homeserver, decrypted if the bot has its key (else a ``MegolmEvent``)."""
        resp = await self._client.room_get_event(room_id, event_id)
        if not isinstance(resp, RoomGetEventResponse):
            raise _failed(f"fetching {event_id}", resp)
        return resp.event  # nio decrypts it on receipt when it can


    # -- moderation ------------------------------------------------------------------------------------------

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Kick ``user_id`` from ``room_id``; raises :class:`MatrixError` if the server refuses."""
        resp = await self._client.room_kick(room_id, user_id, reason)
        if not isinstance(resp, RoomKickResponse):
            raise _failed("kick", resp)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Ban ``user_id`` from ``room_id``; raises :class:`MatrixError` if the server refuses."""
        resp = await self._client.room_ban(room_id, user_id, reason)
        if not isinstance(resp, RoomBanResponse):
            raise _failed("ban", resp)

    def decrypt_raw_event(self, room_id: str, raw: dict[str, Any]) -> DecryptedEvent | None:
        """Decrypt an event as the homeserver returned it (``/event``, ``/context``); None if it is not encrypted.

        The sending device's keys come from the bot's device store (the session's curve25519 key if the device is
        unknown). Raises :class:`MatrixError` (``M_UNABLE_TO_DECRYPT``) when the bot has no key for it.
        """
        parsed = Event.parse_event(raw)
        if not isinstance(parsed, MegolmEvent):
            return None
        parsed.room_id = room_id
        try:
            clear = self._client.decrypt_event(parsed)
        except EncryptionError as exc:
            raise MatrixError(f"cannot decrypt {raw.get('event_id')}: {exc}", "M_UNABLE_TO_DECRYPT") from exc
        source = getattr(clear, "source", {}) or {}
        olm_device = self._client.device_store[parsed.sender].get(parsed.device_id) if self._client.olm else None
        keys = dict(olm_device.keys) if olm_device is not None else {"curve25519": parsed.sender_key}
        return DecryptedEvent(
            sender=parsed.sender,
            device_id=parsed.device_id,
            device_keys=keys,
            event_type=source.get("type"),
            content=source.get("content"),
        )


async def _encrypted_stream(
    source: bytes | Path, encryptor: media.AttachmentEncryptor, *, threaded: bool
) -> AsyncIterator[bytes]:
    """The ciphertext of ``source``, a piece at a time (read and encrypted in a worker thread if ``threaded``)."""
    chunk = media.ATTACHMENT_CHUNK
    if not isinstance(source, Path):
        view = memoryview(source)
        for start in range(0, len(view), chunk):
            piece = view[start : start + chunk]
            yield await asyncio.to_thread(encryptor.update, piece) if threaded else encryptor.update(piece)
        return

    def next_piece(fh: Any) -> bytes:
        data = fh.read(chunk)
        return encryptor.update(data) if data else b""

    fh = await asyncio.to_thread(open, source, "rb")
    try:
        while True:
            encrypted = await asyncio.to_thread(next_piece, fh) if threaded else next_piece(fh)
            if not encrypted:
                return
            yield encrypted
    finally:
        fh.close()


def _localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id


def _failed(what: str, resp: object) -> MatrixError:
    return MatrixError(f"{what} failed: {getattr(resp, 'message', resp)}", getattr(resp, "status_code", None))


@dataclass(frozen=True)
class DecryptedEvent:
    """What :meth:`MatrixActions.decrypt_raw_event` found: the clear type and content, and the sending device."""

    sender: str
    device_id: str
    device_keys: dict[str, str]
    event_type: Any
    content: Any
