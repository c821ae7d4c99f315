"""What the bot can do in Matrix, as plugins and bridges see it: send, reply, react, edit, redact.

:class:`BotAPI` is a thin async shell over the nio client. Content building (replies, threads, edits, mentions) is
done by the pure helpers in :mod:`bot.content`; this module only performs the requests and turns error responses into
:class:`MatrixError` so a plugin never has to inspect nio response types.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nio import RoomRedactResponse, RoomSendResponse

from bot import content as build

if TYPE_CHECKING:
    from bot.client import RatchetClient

__all__ = ["BotAPI", "MatrixError"]

log = logging.getLogger(__name__)


class MatrixError(Exception):
    """A request to the homeserver failed; ``errcode`` is the Matrix error code if there was one."""

    def __init__(self, message: str, errcode: str | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


class BotAPI:
    """The bot's Matrix actions, shared by all plugins."""

    def __init__(self, client: RatchetClient, *, admins: tuple[str, ...] = ()) -> None:
        self._client = client
        self.admins = admins

    @property
    def user_id(self) -> str:
        """The bot's own Matrix user id."""
        return self._client.user_id

    @property
    def device_id(self) -> str:
        """The bot's device id (the same across restarts)."""
        return self._client.device_id

    def is_admin(self, user_id: str) -> bool:
        """True if ``user_id`` is one of the bot's admins from the config."""
        return user_id in self.admins

    def room_encrypted(self, room_id: str) -> bool:
        """True if the room has encryption enabled (as far as the bot has synced)."""
        room = self._client.rooms.get(room_id)
        return bool(room and room.encrypted)

    def power_level(self, room_id: str, user_id: str) -> int:
        """``user_id``'s power level in ``room_id`` (0 if the room is unknown)."""
        room = self._client.rooms.get(room_id)
        return room.power_levels.get_user_level(user_id) if room else 0

    async def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        """Send an event (encrypted if the room is) and return its event id."""
        client = self._client
        if event_type == "m.reaction" and self.room_encrypted(room_id) and client.olm:
            # nio sends reactions in the clear; modern clients encrypt them like any other event.
            resp = await self._send_encrypted_raw(room_id, event_type, content)
        else:
            resp = await client.room_send(
                room_id, event_type, content, ignore_unverified_devices=True
            )
        if not isinstance(resp, RoomSendResponse):
            raise MatrixError(
                f"sending to {room_id} failed: {getattr(resp, 'message', resp)}",
                getattr(resp, "status_code", None),
            )
        return resp.event_id

    async def _send_encrypted_raw(self, room_id: str, event_type: str, content: dict[str, Any]):
        client = self._client
        # Make sure a group session is shared, as room_send would, then encrypt ourselves.
        room = client.rooms.get(room_id)
        if room is not None and not room.members_synced:
            await client.joined_members(room_id)
            if client.should_query_keys:
                await client.keys_query()
        if client.olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
        enc_type, enc_content = client.encrypt(room_id, event_type, content)
        return await client.room_send(room_id, enc_type, enc_content, ignore_unverified_devices=True)

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
    ) -> str:
        """Send a text (or notice) message, optionally as a reply or in a thread; returns the event id."""
        content = build.text_content(
            text,
            html=html,
            notice=notice,
            reply_to=reply_to,
            thread_root=thread_root,
            mentions=mentions,
        )
        return await self.send(room_id, content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """Annotate ``event_id`` with the reaction ``key`` (an emoji); returns the reaction's event id."""
        return await self.send(room_id, build.reaction_content(event_id, key), "m.reaction")

    async def edit(
        self, room_id: str, event_id: str, text: str, *, html: str | None = None, notice: bool = False
    ) -> str:
        """Replace the text of the bot's own message ``event_id``; returns the edit's event id."""
        return await self.send(room_id, build.edit_content(event_id, text, html=html, notice=notice))

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Redact ``event_id`` (needs the power to do so for other users' events)."""
        resp = await self._client.room_redact(room_id, event_id, reason=reason)
        if not isinstance(resp, RoomRedactResponse):
            raise MatrixError(
                f"redacting {event_id} failed: {getattr(resp, 'message', resp)}",
                getattr(resp, "status_code", None),
            )
        return resp.event_id
