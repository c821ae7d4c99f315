"""The handler's view of one incoming event: who sent what where, and how to answer.

A :class:`Context` is created per event and plugin; its methods send through the shared :class:`~bot.api.BotAPI`,
so a reply is encrypted whenever the room is. ``reply`` is a proper Matrix rich reply (and stays in the thread when
the command was sent in one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nio import Event

    from bot.api import BotAPI
    from bot.plugin import Plugin

__all__ = ["Context"]


@dataclass
class Context:
    """One event as a plugin handler sees it, plus the ways to answer it."""

    bot: BotAPI
    room_id: str
    event: Event
    plugin: Plugin
    #: True when the event was sent by a device Ratchet's trust policy accepts (see the E2EE docs).
    trusted: bool = True

    @property
    def sender(self) -> str:
        """User id of the event's sender."""
        return self.event.sender

    @property
    def event_id(self) -> str:
        """Id of the event being handled."""
        return self.event.event_id

    @property
    def body(self) -> str:
        """The message's plain-text body ('' for events without one)."""
        body = getattr(self.event, "body", None)
        if body is None:
            body = self.content.get("body", "")
        return body if isinstance(body, str) else ""

    @property
    def content(self) -> dict[str, Any]:
        """The event's (decrypted) content."""
        content = self.event.source.get("content", {})
        return content if isinstance(content, dict) else {}

    @property
    def thread_root(self) -> str | None:
        """The thread this event belongs to, if any."""
        rel = self.content.get("m.relates_to")
        if isinstance(rel, dict) and rel.get("rel_type") == "m.thread":
            root = rel.get("event_id")
            return root if isinstance(root, str) else None
        return None

    @property
    def encrypted(self) -> bool:
        """True if the event arrived encrypted."""
        return bool(getattr(self.event, "decrypted", False))

    @property
    def power_level(self) -> int:
        """The sender's power level in this room."""
        return self.bot.power_level(self.room_id, self.sender)

    @property
    def is_admin(self) -> bool:
        """True if the sender is one of the bot's admins."""
        return self.bot.is_admin(self.sender)

    async def reply(self, text: str, *, html: str | None = None, notice: bool = False) -> str:
        """Answer with a rich reply to this event (in its thread, if it was in one); returns the event id."""
        return await self.bot.send_text(
            self.room_id,
            text,
            html=html,
            notice=notice,
            reply_to=self.event_id,
            thread_root=self.thread_root,
            mentions=[self.sender],
        )

    async def reply_in_thread(self, text: str, *, html: str | None = None, notice: bool = False) -> str:
        """Answer in a thread: this event's thread, or a new one rooted at this event."""
        return await self.bot.send_text(
            self.room_id,
            text,
            html=html,
            notice=notice,
            reply_to=self.event_id,
            thread_root=self.thread_root or self.event_id,
        )

    async def send(self, text: str, *, html: str | None = None, notice: bool = False) -> str:
        """Send a plain message to the room (not a reply)."""
        return await self.bot.send_text(self.room_id, text, html=html, notice=notice)

    async def notice(self, text: str, *, html: str | None = None) -> str:
        """Send an ``m.notice`` (what bots should use for unprompted output)."""
        return await self.bot.send_text(self.room_id, text, html=html, notice=True)

    async def react(self, key: str, event_id: str | None = None) -> str:
        """React to this event (or ``event_id``) with ``key``."""
        return await self.bot.react(self.room_id, event_id or self.event_id, key)

    async def edit(self, event_id: str, text: str, *, html: str | None = None) -> str:
        """Edit one of the bot's own messages in this room."""
        return await self.bot.edit(self.room_id, event_id, text, html=html)

    async def redact(self, event_id: str | None = None, reason: str | None = None) -> str:
        """Redact this event (or ``event_id``)."""
        return await self.bot.redact(self.room_id, event_id or self.event_id, reason)
