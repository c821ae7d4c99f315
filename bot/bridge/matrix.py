"""The Matrix side of a bridge: how remote messages are posted into Matrix, and what the bridge reads about rooms.

:class:`MatrixSide` is the seam between the bridge core and Matrix. Two implementations:

* :class:`RelayMatrixSide` (relay mode, the default): everything is posted by the bot itself (so it works in
  encrypted rooms, where the bot's device encrypts), and the remote sender is named in the message
  (``**bob**: hello``).
* :class:`GhostMatrixSide` (ghost mode, when the bot runs as an appservice with a ``ghost_prefix``): each remote user
  is a ghost (``@irc_bob:example.org``, registered on first use, display name from the remote name) that posts,
  edits and reacts as itself without a name prefix, joins and leaves the portal room as the remote user joins and
  leaves the channel, and is kicked (or banned) by the bot when the remote side kicks (bans) them, where the bot has
  the power (else the ghost leaves, saying why). Messages that stand for nobody (a flood warning, an anonymous
  webhook) are still posted by the bot.

Puppeting a Matrix user's own remote account would happen on the remote side (a connection per user) and needs nothing
from this interface. The bridge core never assumes which implementation it has: it only calls the methods below.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.bridge.ghosts import GhostIdentity
from bot.bridge.model import BRIDGE_MARKER, RemoteMessage
from bot.bridge.relay_text import check_template, render_matrix_relay
from bot.content.markdown import sanitize_html
from bot.content.text import edit_content, text_content
from bot.errors import MatrixError, MatrixRequestError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bot.appservice import Ghost
    from bot.plugin.api import BotAPI

__all__ = ["GhostMatrixSide", "MatrixSide", "RelayFormat", "RelayMatrixSide"]

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

    @property
    def ghosts(self) -> bool:
        """True in ghost mode (remote users are ghosts: :class:`GhostMatrixSide`). Default: False."""
        return False

    def is_bridge_user(self, user_id: str) -> bool:
        """True for a Matrix user the bridge posts as (the bot; in ghost mode also every ghost): their events are
        never relayed to the remote side."""
        return user_id == self.user_id


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
        return self.api.room_alias(room_id)

    async def ensure_joined(self, room_id: str) -> bool:
        if room_id in self.api.joined_rooms():
            return True
        try:
            await self.api.join(room_id)
        except MatrixError as exc:
            log.warning("cannot join %s for a portal: %s", room_id, exc)
            return False
        return True


class GhostMatrixSide(RelayMatrixSide):
    """Ghost mode: each remote user posts as their own ghost (see the module docstring).

    ``identity`` says which ghost posts a remote message (None: the bot posts it, as the relay does); the bridge's
    :meth:`~bot.bridge.Bridge.ghost_identity`.
    """

    def __init__(
        self,
        api: BotAPI,
        identity: Callable[[RemoteMessage], GhostIdentity | None],
        relay_format: RelayFormat | None = None,
    ) -> None:
        super().__init__(api, relay_format)
        self.identity = identity

    @property
    def ghosts(self) -> bool:
        return True

    def is_bridge_user(self, user_id: str) -> bool:
        appservice = self.api.appservice
        return user_id == self.user_id or (appservice is not None and appservice.ghosts.is_ghost(user_id))

    def ghost_localpart_of(self, user_id: str) -> str | None:
        """The localpart (after the ``ghost_prefix``) of a ghost's user id; None for anyone else."""
        appservice = self.api.appservice
        if appservice is None or not appservice.ghosts.is_ghost(user_id):
            return None
        prefix = appservice.namespaces.ghost_prefix or ""
        return user_id[1:].split(":", 1)[0][len(prefix):]

    def ghost_user_id(self, localpart: str) -> str:
        """The Matrix user id of the ghost ``localpart`` (nothing is sent)."""
        return self.api.ghost(localpart).user_id

    async def ready_ghost(self, identity: GhostIdentity) -> Ghost:
        """The ghost of ``identity``, registered, with its display name and avatar set (only sent when they
        differ from what the homeserver has)."""
        ghost = self.api.ghost(identity.localpart)
        await _as_matrix_error(ghost.set_display_name(identity.display_name))
        if identity.avatar_url:
            await _as_matrix_error(ghost.set_avatar_url(identity.avatar_url))
        return ghost

    def ghost_content(
        self, message: RemoteMessage, identity: GhostIdentity, *, reply_to: str | None = None
    ) -> dict[str, Any]:
        """The content a ghost posts for ``message``: the text as is (no ``**name**:`` prefix unless
        ``identity.relay_name``), with the bridge marker."""
        if identity.relay_name:
            return self.content_for(message, reply_to=reply_to)
        notice = message.msgtype == "m.notice" or message.kind not in ("message", "action")
        html = sanitize_html(message.html) if message.html is not None else None
        content = text_content(
            message.text, html=html, notice=notice, reply_to=reply_to, mentions=list(message.mentions) or None
        )
        if message.kind == "action" and not notice:
            content["msgtype"] = "m.emote"
        content[BRIDGE_MARKER] = _marker(message)
        return content

    async def post(self, room_id: str, message: RemoteMessage, *, reply_to: str | None = None) -> str:
        identity = self.identity(message)
        if identity is None:
            return await super().post(room_id, message, reply_to=reply_to)
        ghost = await self.ready_ghost(identity)
        content = self.ghost_content(message, identity, reply_to=reply_to)
        return await _as_matrix_error(ghost.send_message(room_id, content))

    async def edit(self, room_id: str, event_id: str, message: RemoteMessage) -> str:
        identity = self.identity(message)
        if identity is None:
            return await super().edit(room_id, event_id, message)
        ghost = await self.ready_ghost(identity)
        new = self.ghost_content(message, identity)
        content = edit_content(
            event_id, new["body"], html=new.get("formatted_body"), notice=new["msgtype"] == "m.notice"
        )
        content[BRIDGE_MARKER] = new[BRIDGE_MARKER]
        content["m.new_content"][BRIDGE_MARKER] = new[BRIDGE_MARKER]
        return await _as_matrix_error(ghost.send_message(room_id, content))

    async def react(self, room_id: str, event_id: str, key: str, message: RemoteMessage) -> str:
        identity = self.identity(message)
        if identity is None:
            return await super().react(room_id, event_id, key, message)
        ghost = await self.ready_ghost(identity)
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key},
                   BRIDGE_MARKER: _marker(message)}
        return await _as_matrix_error(ghost.send_message(room_id, content, "m.reaction"))

    # -- memberships -------------------------------------------------------------------------------------------

    def is_member(self, room_id: str, user_id: str) -> bool:
        """True if ``user_id`` is joined to ``room_id`` as far as the bot has seen."""
        return user_id in self.api.members(room_id)

    async def ghost_join(self, room_id: str, identity: GhostIdentity) -> bool:
        """The ghost of ``identity`` joins ``room_id`` (invited by the bot in an invite-only room); False if it was
        there already."""
        ghost = await self.ready_ghost(identity)
        if self.is_member(room_id, ghost.user_id):
            return False
        await _as_matrix_error(ghost.ensure_joined(room_id))
        return True

    async def ghost_leave(self, room_id: str, localpart: str, reason: str | None = None) -> bool:
        """The ghost ``localpart`` leaves ``room_id`` (with ``reason``); False if it was not there."""
        ghost = self.api.ghost(localpart)
        if not self.is_member(room_id, ghost.user_id):
            ghost.note_left(room_id)
            return False
        await _as_matrix_error(ghost.leave(room_id, reason))
        return True

    async def ghost_kick(self, room_id: str, localpart: str, reason: str, *, ban: bool = False) -> str:
        """The bot kicks (or bans) the ghost ``localpart`` from ``room_id``; where it lacks the power, the ghost
        leaves with ``reason`` instead. Returns what happened: ``"kicked"``, ``"banned"``, ``"left"`` or ``""``
        (it was not there)."""
        ghost = self.api.ghost(localpart)
        if not ban and not self.is_member(room_id, ghost.user_id):
            ghost.note_left(room_id)
            return ""
        try:
            if ban:
                await self.api.ban(room_id, ghost.user_id, reason)
            else:
                await self.api.kick(room_id, ghost.user_id, reason)
            ghost.note_left(room_id)
            return "banned" if ban else "kicked"
        except MatrixError as exc:
            log.info("cannot %s %s in %s (%s); it leaves instead", "ban" if ban else "kick", ghost.user_id,
                     room_id, exc)
        if not self.is_member(room_id, ghost.user_id):
            ghost.note_left(room_id)
            return ""
        await _as_matrix_error(ghost.leave(room_id, reason))
        return "left"


async def _as_matrix_error(call: Awaitable[Any]) -> Any:
    """Await ``call``, turning the appservice's request errors into :class:`~bot.errors.MatrixError` (what the
    bridge core retries and reports)."""
    try:
        return await call
    except MatrixRequestError as err:
        raise MatrixError(str(err), err.errcode) from err
