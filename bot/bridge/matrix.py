"""The Matrix side of a bridge: how remote messages are posted into Matrix, and what the bridge reads about rooms.

:class:`MatrixSide` is the seam between the bridge core and Matrix. Today's implementation is
:class:`RelayMatrixSide`: everything is posted by the bot itself (so it works in encrypted rooms, where the bot's
device encrypts), and the remote sender is named in the message (``**bob**: hello``).

Appservice mode (to come, not built): an ``AppserviceMatrixSide`` would implement the same interface with a
registration (``as_token``) and one *ghost* user per remote user (``@irc_bob:example.org``, created on first use
through ``POST /register`` with ``type: m.login.application_service``, display name set from the nick). ``post()``
would send as the ghost (``?user_id=`` on the send request, after inviting and joining the ghost to the portal room)
without a name prefix; ``edit``/``redact``/``react`` likewise as the ghost, so they look native. Puppeting a Matrix
user's own remote account would happen on the remote side (a connection per user) and needs nothing from this
interface. Encrypted rooms need a ghost-capable crypto setup (MSC3202/MSC2409 device lists and to-device events for
appservices, as mautrix does); until then the relay keeps encrypted rooms working. The bridge core never assumes
which implementation it has: it only calls the methods below.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.bridge.model import BRIDGE_MARKER, RemoteMessage
from bot.bridge.relay_text import check_template, render_matrix_relay
from bot.content.markdown import sanitize_html
from bot.content.text import edit_content, text_content
from bot.errors import MatrixError

if TYPE_CHECKING:
    from bot.plugin.api import BotAPI

__all__ = ["MatrixSide", "RelayFormat", "RelayMatrixSide"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayFormat:
    """How the relay shows who wrote a remote message: templates with ``{name}`` and ``{text}``; ``**x**`` is bold."""

    message: str = "**{name}**: {text}"
    action: str = "* **{name}** {text}"

    def __post_init__(self) -> None:
        check_template(self.message, ("name", "text"))
        check_template(self.action, ("name", "text"))


class MatrixSide(ABC):
    """What a bridge does in Matrix. See the module docstring for the relay and appservice implementations."""

    @property
    @abstractmethod
    def user_id(self) -> str:
        """The Matrix user the bridge posts as (the bot, in relay mode)."""

    @abstractmethod
    async def post(self, room_id: str, message: RemoteMessage, *, reply_to: str | None = None) -> str:
        """Post a remote message into ``room_id``; returns the event id."""

    @abstractmethod
    async def edit(self, room_id: str, event_id: str, message: RemoteMessage) -> str:
        """Replace a message posted earlier with the new text of ``message``."""

    @abstractmethod
    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Remove a message posted earlier."""

    @abstractmethod
    async def react(self, room_id: str, event_id: str, key: str, message: RemoteMessage) -> str:
        """React to ``event_id`` on behalf of the remote sender of ``message``."""

    @abstractmethod
    def display_name(self, room_id: str, user_id: str) -> str:
        """How a Matrix user is called in ``room_id`` (for relaying their messages under that name)."""

    @abstractmethod
    def members(self, room_id: str) -> dict[str, str]:
        """Joined members of ``room_id`` and their display names (for turning remote mentions into pills)."""

    @abstractmethod
    async def resolve_room(self, room: str) -> str:
        """The room id of a room id or alias; ValueError if it cannot be resolved."""

    @abstractmethod
    async def ensure_joined(self, room_id: str) -> bool:
        """Make sure the bridge's Matrix user is in ``room_id``; False if it cannot join."""

    def room_alias(self, room_id: str) -> str | None:
        """The room's canonical alias as far as the bridge knows it (for ``!bridge status``); None: unknown or none.
        Default: None."""
        return None


def _marker(message: RemoteMessage) -> dict[str, str]:
    """What a relayed message carries under :data:`BRIDGE_MARKER`: where it came from and who wrote it."""
    return {
        "network": message.network,
        "channel": message.channel,
        "sender": message.sender_id,
        "sender_name": message.sender_name,
    }


class RelayMatrixSide(MatrixSide):
    """Relay mode: the bot posts every remote message itself, naming the remote sender in the text."""

    def __init__(self, api: BotAPI, relay_format: RelayFormat | None = None) -> None:
        self.api = api
        self.format = relay_format or RelayFormat()

    @property
    def user_id(self) -> str:
        return self.api.user_id

    def content_for(self, message: RemoteMessage, *, reply_to: str | None = None) -> dict[str, Any]:
        """The ``m.room.message`` content that shows ``message`` (pure, for tests and edits)."""
        notice = message.msgtype == "m.notice" or message.kind not in ("message", "action")
        text_html = sanitize_html(message.html) if message.html is not None else None  # remote HTML is untrusted
        if message.kind in ("message", "action") and not message.anonymous:
            template = self.format.action if message.kind == "action" else self.format.message
            body, html = render_matrix_relay(template, message.sender_name, message.text, text_html)
        else:
            body, html = message.text, text_html
        content = text_content(
            body, html=html, notice=notice, reply_to=reply_to, mentions=list(message.mentions) or None
        )
        content[BRIDGE_MARKER] = _marker(message)
        return content

    async def post(self, room_id: str, message: RemoteMessage, *, reply_to: str | None = None) -> str:
        return await self.api.send(room_id, self.content_for(message, reply_to=reply_to))

    async def edit(self, room_id: str, event_id: str, message: RemoteMessage) -> str:
        new = self.content_for(message)
        content = edit_content(
            event_id, new["body"], html=new.get("formatted_body"), notice=new["msgtype"] == "m.notice"
        )
        content[BRIDGE_MARKER] = new[BRIDGE_MARKER]
        content["m.new_content"][BRIDGE_MARKER] = new[BRIDGE_MARKER]
        return await self.api.send(room_id, content)

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        return await self.api.redact(room_id, event_id, reason)

    async def react(self, room_id: str, event_id: str, key: str, message: RemoteMessage) -> str:
        # One bot cannot react twice with the same key; in relay mode the reaction is the bot's.
        return await self.api.react(room_id, event_id, key)

    def display_name(self, room_id: str, user_id: str) -> str:
        return self.api.display_name(room_id, user_id)

    def members(self, room_id: str) -> dict[str, str]:
        return self.api.members(room_id)

    async def resolve_room(self, room: str) -> str:
        if not room.startswith(("!", "#")):
            raise ValueError(f"{room!r} is neither a room id (!...) nor an alias (#...)")
        try:
            return await self.api.resolve_room(room)
        except MatrixError as exc:
            raise ValueError(f"cannot resolve {room}: {exc}") from exc

    def room_alias(self, room_id: str) -> str | None:
        # The canonical alias from the room state the bot has synced. MatrixActions has no accessor for it yet, so
        # this reads the client's room the way MatrixActions.members() does; anything unexpected means "unknown".
        rooms = getattr(getattr(self.api, "_client", None), "rooms", None)
        room = rooms.get(room_id) if isinstance(rooms, dict) else None
        alias = getattr(room, "canonical_alias", None)
        return alias if isinstance(alias, str) and alias else None

    async def ensure_joined(self, room_id: str) -> bool:
        if room_id in self.api.joined_rooms():
            return True
        try:
            await self.api.join(room_id)
        except MatrixError as exc:
            log.warning("cannot join %s for a portal: %s", room_id, exc)
            return False
        return True
