"""A room member driven from tests (and the demo): a real nio client with its own E2EE device.

It logs in as a fresh device, syncs in the background, records every timeline event it sees (decrypted where it
could, :class:`nio.MegolmEvent` where it could not) and offers the few actions a test needs: create an encrypted room,
invite, send (optionally as a reply or in a thread), send a file, change its display name, and wait for the bot's
answer. Plugin tests usually drive it through :class:`bot.testing.kit.TestRoom`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    JoinedMembersResponse,
    LoginResponse,
    MegolmEvent,
    ProfileSetDisplayNameResponse,
    RoomCreateResponse,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)
from nio.api import Api
from nio.crypto.sessions import OutboundGroupSession
from nio.exceptions import EncryptionError
from nio.store import SqliteStore

from bot.matrix.olm import PAYLOAD_PARSE_ERRORS

__all__ = ["Member", "MemberError"]

EventPredicate = Callable[[str, Event], bool]


class MemberError(AssertionError):
    """A member action failed or an expected event did not come (an assertion failure in tests)."""


def _survive_unparsable_payloads(client: AsyncClient) -> None:
    """Make ``client`` show a Megolm payload that decrypts but is not an event as undecryptable, as the clients people
    use do (Element's crypto parses with serde_json), instead of raising out of its sync as plain nio does, which
    would stall the member for the rest of a test that sends one (see ``RatchetOlm.decrypt_megolm_event``)."""
    olm = client.olm
    if olm is None:
        return
    decrypt = olm.decrypt_megolm_event

    def decrypt_or_fail(event: Any, room_id: str | None = None) -> Any:
        try:
            return decrypt(event, room_id)
        except PAYLOAD_PARSE_ERRORS as exc:
            raise EncryptionError(f"the payload is not an event ({type(exc).__name__})") from None

    olm.decrypt_megolm_event = decrypt_or_fail  # type: ignore[method-assign]


class Member:
    """A Matrix user with an encrypted-capable nio client, for end-to-end tests."""

    def __init__(self, homeserver: str, user_id: str, password: str, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.user_id = user_id
        self.password = password
        self.client = AsyncClient(
            homeserver,
            user_id,
            store_path=str(store_dir),
            config=AsyncClientConfig(
                store=SqliteStore, encryption_enabled=True, pickle_key="test-member-pickle-key"
            ),
        )
        #: The display name this member was given through the kit (None: the homeserver's default).
        self.display_name: str | None = None
        self.events: list[tuple[str, Event]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    @classmethod
    async def login(cls, homeserver: str, user: Any, store_dir: Path) -> Member:
        """Log ``user`` (a :class:`~bot.testing.synapse.RegisteredUser`: ``user_id`` and ``password``) in at
        ``homeserver`` (a base URL) on a new device whose store is ``store_dir``, and start syncing."""
        return await cls(homeserver, user.user_id, user.password, store_dir).start()

    @property
    def device_id(self) -> str:
        """This member's device id."""
        return self.client.device_id

    async def start(self) -> Member:
        """Log in as a new device, upload keys and start syncing in the background."""
        resp = await self.client.login(self.password, device_name="ratchet-test-member")
        if not isinstance(resp, LoginResponse):
            raise MemberError(f"login as {self.user_id} failed: {resp}")
        _survive_unparsable_payloads(self.client)
        self.client.add_event_callback(self._on_event, (Event,))
        self.client.add_response_callback(self._on_sync, SyncResponse)
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self._task = asyncio.create_task(self.client.sync_forever(timeout=30_000, full_state=True))
        await asyncio.wait_for(self._synced.wait(), 30)
        return self

    async def close(self) -> None:
        """Stop syncing and close the client (the device stays)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.client.close()

    async def _on_event(self, room, event: Event) -> None:
        async with self._changed:
            self.events.append((room.room_id, event))
            self._changed.notify_all()

    async def _on_sync(self, _resp: SyncResponse) -> None:
        self._synced.set()
        async with self._changed:
            self._changed.notify_all()

    async def wait_synced(self) -> None:
        """Wait for the next completed sync."""
        self._synced.clear()
        await asyncio.wait_for(self._synced.wait(), 40)

    # -- actions ---------------------------------------------------------------------------------------------

    async def create_room(
        self, *, invite: list[str] = (), encrypted: bool = True, name: str | None = None, direct: bool = False
    ) -> str:
        """Create a private room (encrypted by default) inviting ``invite``; returns its id."""
        initial_state = []
        if encrypted:
            initial_state.append(
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            )
        resp = await self.client.room_create(
            name=name, invite=list(invite), initial_state=initial_state, is_direct=direct
        )
        if not isinstance(resp, RoomCreateResponse):
            raise MemberError(f"room creation failed: {resp}")
        await self.wait_for(lambda: resp.room_id in self.client.rooms, 30, "the new room to sync")
        return resp.room_id

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 30) -> None:
        """Wait until ``user_id`` is joined to ``room_id`` (as this member's sync sees it)."""

        def joined() -> bool:
            room = self.client.rooms.get(room_id)
            # nio's ``users`` holds invited members too
            return bool(room and user_id in room.users and user_id not in room.invited_users)

        await self.wait_for(joined, timeout, f"{user_id} to join {room_id}")

    async def send(
        self,
        room_id: str,
        text: str,
        *,
        reply_to: str | None = None,
        thread_root: str | None = None,
        content: dict[str, Any] | None = None,
        event_type: str = "m.room.message",
    ) -> str:
        """Send a text message (encrypted if the room is); returns its event id."""
        if content is None:
            content = {"msgtype": "m.text", "body": text}
            if thread_root:
                content["m.relates_to"] = {
                    "rel_type": "m.thread",
                    "event_id": thread_root,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": reply_to or thread_root},
                }
            elif reply_to:
                content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        await self.wait_for(lambda: room_id in self.client.rooms, 30, f"{room_id} to sync")
        room = self.client.rooms.get(room_id)
        if room is not None and not room.members_synced:
            members = await self.client.joined_members(room_id)
            if not isinstance(members, JoinedMembersResponse):
                raise MemberError(f"cannot list members of {room_id}: {members}")
        if self.client.should_query_keys:
            # Devices that joined since the last query (the bot's, typically) must get the room key too.
            await self.client.keys_query()
        resp = await self.client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
        if not isinstance(resp, RoomSendResponse):
            raise MemberError(f"send failed: {resp}")
        return resp.event_id

    async def send_with_late_key(self, room_id: str, text: str) -> tuple[str, Callable[[], Awaitable[None]]]:
        """Send an encrypted message whose room key nobody gets until the returned ``release()`` is awaited.

        This is how tests make a real "unable to decrypt" that a late key resolves: the message is encrypted with a
        fresh Megolm session that is not shared; ``release()`` shares that session, from message index 0, with every
        device in the room.
        """
        client = self.client
        olm = client.olm
        assert olm is not None
        if client.should_query_keys:
            await client.keys_query()
        olm.create_outbound_group_session(room_id)
        session = olm.outbound_group_sessions[room_id]
        snapshot = session.pickle()
        session.shared = True
        payload = olm.group_encrypt(room_id, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": text}})
        method, path, data = Api.room_send(client.access_token, room_id, "m.room.encrypted", payload, str(uuid.uuid4()))
        resp = await client._send(RoomSendResponse, method, path, data, (room_id,))
        if not isinstance(resp, RoomSendResponse):
            raise MemberError(f"send failed: {resp}")
        # The next normal send must not reuse the withheld session.
        olm.outbound_group_sessions.pop(room_id, None)

        async def release() -> None:
            olm.outbound_group_sessions[room_id] = OutboundGroupSession.from_pickle(snapshot)
            await client.share_group_session(room_id, ignore_unverified_devices=True)
            olm.outbound_group_sessions.pop(room_id, None)

        return resp.event_id, release

    async def download_media(self, content: dict[str, Any]) -> bytes:
        """Download the media of a message's ``content``, decrypting (and checking) it if it is encrypted."""
        from nio.crypto.attachments import decrypt_attachment

        encrypted = content.get("file")
        url = encrypted["url"] if isinstance(encrypted, dict) else content.get("url")
        resp = await self.client.download(mxc=url)
        body = getattr(resp, "body", None)
        if not isinstance(body, bytes):
            raise MemberError(f"download of {url} failed: {resp}")
        if isinstance(encrypted, dict):
            return decrypt_attachment(body, encrypted["key"]["k"], encrypted["hashes"]["sha256"], encrypted["iv"])
        return body

    async def set_display_name(self, name: str, timeout: float = 30) -> None:
        """Set this member's display name, and wait until its own sync shows it in every room it is joined to.

        (The homeserver rewrites the member's membership event in each room; other clients, the bot's included, see
        it when they next sync: :meth:`bot.testing.kit.TestRoom.wait_bot_sees_members` waits for the bot.)
        """
        resp = await self.client.set_displayname(name)
        if not isinstance(resp, ProfileSetDisplayNameResponse):
            raise MemberError(f"setting the display name of {self.user_id} failed: {resp}")
        self.display_name = name

        def everywhere() -> bool:
            return all(
                getattr(room.users.get(self.user_id), "display_name", None) == name
                for room in self.client.rooms.values()
                if self.user_id in room.users and self.user_id not in room.invited_users
            )

        await self.wait_for(everywhere, timeout, f"the display name {name!r} to show in {self.user_id}'s rooms")

    async def send_file(
        self, room_id: str, data: bytes | str | Path, *, name: str | None = None, mimetype: str | None = None
    ) -> str:
        """Upload ``data`` (bytes, or a file's path) and send it as ``m.image`` (for ``image/*``) or ``m.file``.

        In an encrypted room the file is encrypted before the upload (``file`` in the content holds the key, as
        clients do); otherwise the content has a plain ``url``. ``name`` defaults to the file's name ("file" for
        bytes), ``mimetype`` to a guess from ``name``. Returns the event id.
        """
        if isinstance(data, (str, Path)):
            path = Path(data)
            payload = await asyncio.to_thread(path.read_bytes)
            name = name or path.name
        else:
            payload = bytes(data)
            name = name or "file"
        mimetype = mimetype or mimetypes.guess_type(name)[0] or "application/octet-stream"
        await self.wait_for(lambda: room_id in self.client.rooms, 30, f"{room_id} to sync")
        encrypted = self.client.rooms[room_id].encrypted
        resp, keys = await self.client.upload(
            io.BytesIO(payload), content_type=mimetype, filename=name, encrypt=encrypted, filesize=len(payload)
        )
        if not isinstance(resp, UploadResponse):
            raise MemberError(f"upload of {name} failed: {resp}")
        content: dict[str, Any] = {
            "msgtype": "m.image" if mimetype.startswith("image/") else "m.file",
            "body": name,
            "filename": name,
            "info": {"mimetype": mimetype, "size": len(payload)},
        }
        if encrypted:
            content["file"] = {"url": resp.content_uri, **(keys or {})}
        else:
            content["url"] = resp.content_uri
        return await self.send(room_id, name, content=content)

    def find_event(self, event_id: str) -> Event | None:
        """The recorded event with id ``event_id`` (decrypted if it could be), if this member has seen it."""
        for _room_id, event in self.events:
            if event.event_id == event_id:
                return event
        return None

    async def accept_invite(self, timeout: float = 30) -> str:
        """Wait for a room invite (e.g. the bot opening a DM), join it and return its room id."""
        await self.wait_for(lambda: bool(self.client.invited_rooms), timeout, "an invite")
        room_id = next(iter(self.client.invited_rooms))
        resp = await self.client.join(room_id)
        if not hasattr(resp, "room_id"):
            raise MemberError(f"joining {room_id} failed: {resp}")
        await self.wait_joined(room_id, self.user_id, timeout)
        return room_id

    # -- expectations ----------------------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` is true, re-checking after each sync and event."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MemberError(f"timed out after {timeout}s waiting for {what}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    async def expect(self, predicate: EventPredicate, timeout: float = 30, what: str = "an event") -> Event:
        """Return the first recorded event (past or future) for which ``predicate(room_id, event)`` holds."""
        found: list[Event] = []

        def check() -> bool:
            for room_id, event in self.events:
                if predicate(room_id, event):
                    found.append(event)
                    return True
            return False

        await self.wait_for(check, timeout, what)
        return found[0]

    async def expect_reply(
        self, room_id: str, to_event: str, *, sender: str | None = None, timeout: float = 30
    ) -> Event:
        """Wait for a message in ``room_id`` that is a rich reply to ``to_event`` (decrypted); return it."""

        def is_reply(rid: str, event: Event) -> bool:
            if rid != room_id or (sender and event.sender != sender):
                return False
            rel = event.source.get("content", {}).get("m.relates_to") or {}
            return isinstance(rel, dict) and (rel.get("m.in_reply_to") or {}).get("event_id") == to_event

        return await self.expect(is_reply, timeout, f"a reply to {to_event}")

    def undecryptable(self, room_id: str | None = None) -> list[MegolmEvent]:
        """Events this member could not decrypt (in ``room_id`` if given)."""
        return [e for r, e in self.events if isinstance(e, MegolmEvent) and (room_id is None or r == room_id)]

    def messages(self, room_id: str, sender: str | None = None) -> list[Event]:
        """Recorded ``m.room.message`` events in ``room_id`` (decrypted), optionally from one sender."""
        return [
            e
            for r, e in self.events
            if r == room_id
            and e.source.get("type") == "m.room.message"
            and (sender is None or e.sender == sender)
        ]
