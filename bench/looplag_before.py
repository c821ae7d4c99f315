"""The code paths issue 20 (target 2) changed, as they were before (commit 4a41779), for
``python -m bench.looplag run before``: the methods below are verbatim copies of the old ones, patched over the new
ones in the benchmark's process only (as ``bench/bots/ratchet_before.py`` does for issue 8).

* ``MatrixActions.send_file`` / ``send_bytes`` / ``_upload``: the whole file read into memory, encrypted in one
  ``encrypt_attachment`` call in a worker thread, uploaded as one bytes object;
* ``MatrixActions.download``: the pieces joined on the event loop, then decrypted in a worker thread;
* ``KeyBackup.restore``: one pass on the event loop (``json.loads`` of the answer, every key decrypted and stored,
  each store write committed on its own);
* ``KeyBackup.upload_new`` and ``UploadTracker``: the tracker's table read when it is made, the first scan after
  start-up in one pass;
* ``bot.timeslice.TimeSlice``: never due, so nio's timeline loop, the routing of a sync batch and the dispatcher's
  lanes run without a pause; ``freeze_long_lived``: a no-op, so full garbage collections walk everything start-up
  built (the burst; the per-event savings of target 1 stay in both variants).
"""

# ruff: noqa

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import aiohttp
from nio import Api, EncryptionError, Event, MegolmEvent, UploadResponse
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from bot.content import media
from bot.e2ee import key_backup
from bot.e2ee.key_backup import (
    RESTORE_PROGRESS_EVERY,
    UPLOAD_BATCH,
    BackupError,
    KeyBackupError,
    MatrixRequestError,
    RestoreResult,
    _keys_path,
    backup_entry,
    import_session,
    log,
    merge_key_backup_bodies,
    request_json,
    store_session,
)
from bot.errors import MatrixError
from bot.matrix import actions
from bot.matrix.actions import MAX_DOWNLOAD_BYTES, _THREAD_CRYPTO_BYTES, _failed


async def _old_send_file(
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
    """
    file_path = Path(path)
    name = name or file_path.name
    stat = await aiofiles.os.stat(file_path)
    await self._check_size(stat.st_size, name)
    async with aiofiles.open(file_path, "rb") as fh:
        data = await fh.read()
    return await self.send_bytes(
        room_id, data, name=name, mimetype=mimetype, reply_to=reply_to, thread_root=thread_root, msgtype=msgtype
    )


async def _old_send_bytes(
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
    if room_id not in self._client.rooms:
        raise MatrixError(f"cannot send a file to {room_id}: the bot is not in that room (or has not synced it)")
    await self._check_size(len(data), name)
    mimetype = mimetype or media.guess_mimetype(name)
    msgtype = msgtype or media.msgtype_for(mimetype)
    size = media.image_size(data) if msgtype in ("m.image", "m.video") else None
    url, file = await self._upload(data, mimetype, name, encrypt=self.room_encrypted(room_id))
    content = media.media_content(
        name=name,
        mimetype=mimetype,
        size=len(data),
        url=url if file is None else None,
        file=file,
        msgtype=msgtype,
        width=size[0] if size else None,
        height=size[1] if size else None,
        reply_to=reply_to,
        thread_root=thread_root,
    )
    return await self.send(room_id, content)


async def _old__upload(self, data: bytes, mimetype: str, name: str, *, encrypt: bool) -> tuple[str, dict | None]:
    """Upload ``data`` (encrypted first if asked); returns the mxc URI and the ``EncryptedFile`` or None."""
    keys = None
    if encrypt:
        if len(data) > _THREAD_CRYPTO_BYTES:
            payload, keys = await asyncio.to_thread(encrypt_attachment, data)
        else:
            payload, keys = encrypt_attachment(data)
        content_type, filename = "application/octet-stream", None  # the server learns neither type nor name
    else:
        payload, content_type, filename = data, mimetype, name
    resp, _ = await self._client.upload(
        lambda *_: payload, content_type=content_type, filename=filename, filesize=len(payload)
    )
    if not isinstance(resp, UploadResponse):
        raise _failed(f"uploading {name}", resp)
    return resp.content_uri, (media.encrypted_file(resp.content_uri, keys) if keys is not None else None)


async def _old_download(self, event: Event | dict[str, Any], *, max_bytes: int | None = None) -> bytes:
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
            body = b"".join(chunks)
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


async def _old_restore(self, *, progress_every: int = RESTORE_PROGRESS_EVERY) -> RestoreResult:
    """Download every key of this version and import the new ones into nio's store (and memory)."""
    olm = self.client.olm
    if olm is None:
        raise KeyBackupError("the client has no crypto store loaded")
    own_key = olm.account.identity_keys["curve25519"]  # restored sessions count as forwarded by the bot itself
    resp = await request_json(self.client, "GET", _keys_path(self.version))
    rooms = resp.get("rooms") if isinstance(resp, dict) else None
    if not isinstance(rooms, dict):
        raise KeyBackupError("the homeserver's key backup answer has no 'rooms'")
    total = sum(len((r or {}).get("sessions") or {}) for r in rooms.values() if isinstance(r, dict))
    log.info("restoring %d room keys from key backup version %s", total, self.version)
    imported = failed = seen = 0
    restored: list[tuple[str, str]] = []
    for room_id, room in rooms.items():
        sessions = room.get("sessions") if isinstance(room, dict) else None
        if not isinstance(sessions, dict):
            continue
        for session_id, entry in sessions.items():
            seen += 1
            try:
                data = self.backup_key.decrypt_session((entry or {}).get("session_data") or {})
                session = import_session(room_id, session_id, data, via=own_key)
            except (BackupError, KeyBackupError) as exc:
                failed += 1
                log.debug("skipping backed-up session %s: %s", session_id, exc)
                continue
            if store_session(olm, room_id, session):
                imported += 1
            restored.append((room_id, session_id))
            if progress_every and seen % progress_every == 0:
                log.info("key backup restore: %d of %d keys processed", seen, total)
    self.tracker.add_many(restored)
    if failed:
        log.warning("%d of %d backed-up keys could not be decrypted with this backup key", failed, total)
    log.info("key backup restore done: %d new keys imported of %d", imported, total)
    return RestoreResult(self.version, total, imported, failed)


def _old_pending(self) -> tuple[list[Any], Any]:
    """The old ``KeyBackup.pending``: every session not yet backed up, found in one pass, and what to call after."""
    steps = self._unbacked_steps()
    found: list[Any] = []
    while True:
        try:
            batch = next(steps)
        except StopIteration as stop:
            return found, stop.value
        if batch:
            found.extend(batch)


async def _old_upload_new(self) -> int:
    """Upload the inbound sessions that are not in the backup yet; returns how many were uploaded."""
    if self.disabled_reason:
        return 0
    sessions, done = _old_pending(self)
    uploaded = 0
    for start in range(0, len(sessions), UPLOAD_BATCH):
        batch = sessions[start : start + UPLOAD_BATCH]
        bodies = []
        keys = []
        for session in batch:
            try:
                data = backup_entry(session, self.backup_key)
            except Exception as exc:  # a session vodozemac cannot export: skip it, do not block the rest
                log.warning("cannot back up session %s in %s: %s", session.id, session.room_id, exc)
                keys.append((session.room_id, session.id))
                continue
            bodies.append({"rooms": {session.room_id: {"sessions": {session.id: data}}}})
            keys.append((session.room_id, session.id))
        if bodies:
            try:
                await request_json(self.client, "PUT", _keys_path(self.version), merge_key_backup_bodies(bodies))
            except MatrixRequestError as err:
                if err.errcode == "M_WRONG_ROOM_KEYS_VERSION" or err.status == 404:
                    self.disabled_reason = (
                        f"backup version {self.version} is no longer the current one ({err.errcode or err.status})"
                    )
                    log.warning("key backup stopped: %s; restart the bot to pick up the new backup",
                                self.disabled_reason)
                    return uploaded
                raise
        self.tracker.add_many(keys)
        uploaded += len(bodies)
    done()
    if uploaded:
        log.info("backed up %d room key%s (version %s)", uploaded, "" if uploaded == 1 else "s", self.version)
    return uploaded



def _old_tracker_init(self: Any, db: Any, version: str) -> None:
    _new_tracker_init(self, db, version)
    # the whole table read into a set on the event loop when the tracker is made, as before (the tracker no longer
    # keeps it since issue 20 target 5: this emulates the old read, the set is not used)
    with self.connection() as conn:
        self._old_rows = {
            (r[0], r[1]) for r in conn.execute("SELECT room_id, session_id FROM uploaded WHERE version = ?", (version,))
        }


_new_tracker_init = key_backup.UploadTracker.__init__


def install() -> None:
    """Patch the old code paths in (this process only)."""
    cls = actions.MatrixActions
    cls.send_file = _old_send_file
    cls.send_bytes = _old_send_bytes
    cls._upload = _old__upload
    cls.download = _old_download
    key_backup.KeyBackup.restore = _old_restore
    key_backup.KeyBackup.upload_new = _old_upload_new
    key_backup.UploadTracker.__init__ = _old_tracker_init
    from bot import timeslice

    timeslice.TimeSlice.due = lambda self: False  # no pauses in long loops, as before
    from bot.runtime import runtime

    runtime.freeze_long_lived = lambda: None  # nothing frozen after start-up, as before
