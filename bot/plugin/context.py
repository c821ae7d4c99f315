"""The handler's view of one incoming event: who sent what where, and how to answer.

A :class:`Context` is created per event and plugin; its methods send through the shared :class:`~bot.plugin.api.BotAPI`,
so a reply is encrypted whenever the room is. ``reply`` is a proper Matrix rich reply (and stays in the thread when
the command was sent in one). Every text method takes ``markdown=True``; ``reply_privately`` answers in the bot's
encrypted DM with the sender; ``send_file``/``send_image`` send media and ``download`` reads the media a user sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

from bot.content.media import MediaSource, media_source
from bot.errors import MatrixError

if TYPE_CHECKING:
    from bot.matrix.events import Event
    from bot.plugin.api import BotAPI
    from bot.plugin.base import Plugin

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
    def idempotency_key(self) -> str:
        """A key that is the same every time this plugin handles this event, and different for any other event or
        plugin: send it with a side effect outside Matrix (an HTTP ``Idempotency-Key`` header, the primary key of a
        row) so the receiver can tell a repeat. A handler runs again when the bot crashed after the handler began and
        before its handling was recorded; its Matrix sends are then deduplicated by the homeserver, other side effects
        only if they use this key (at least once, see docs/plugins.md)."""
        from bot.matrix.idempotency import idempotency_key  # here: `import bot` loads nothing of bot.matrix

        return idempotency_key(self.event_id, getattr(self.plugin, "name", None) or type(self.plugin).__name__)

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
    def replied_to(self) -> str | None:
        """The event this one is a rich reply to, if any (also inside a thread)."""
        rel = self.content.get("m.relates_to")
        if not isinstance(rel, dict) or rel.get("is_falling_back") is True:
            return None  # a thread message's fallback reply is not a real reply
        in_reply_to = rel.get("m.in_reply_to")
        target = in_reply_to.get("event_id") if isinstance(in_reply_to, dict) else None
        return target if isinstance(target, str) else None

    @property
    def media(self) -> MediaSource | None:
        """The file this event carries (``m.file``/``m.image``/``m.audio``/``m.video``), if any."""
        return media_source(self.content)

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

    async def reply(
        self,
        text: str,
        *,
        html: str | None = None,
        notice: bool = False,
        markdown: bool = False,
        mentions: Iterable[str] = (),
    ) -> str:
        """Answer with a rich reply to this event (in its thread, if it was in one); returns the event id.

        The sender is mentioned (``m.mentions``), and so is every user id in ``mentions``: name the users the
        answer is about so their clients notify them (``ctx.reply(f"{who} now has 3 points", mentions=[who])``).
        """
        return await self.bot.send_text(
            self.room_id,
            text,
            html=html,
            notice=notice,
            reply_to=self.event_id,
            thread_root=self.thread_root,
            mentions=[self.sender, *mentions],
            markdown=markdown,
        )

    async def reply_in_thread(
        self,
        text: str,
        *,
        html: str | None = None,
        notice: bool = False,
        markdown: bool = False,
        mentions: Iterable[str] = (),
    ) -> str:
        """Answer in a thread: this event's thread, or a new one rooted at this event (``mentions`` as for
        :meth:`reply`, without the sender)."""
        return await self.bot.send_text(
            self.room_id,
            text,
            html=html,
            notice=notice,
            reply_to=self.event_id,
            thread_root=self.thread_root or self.event_id,
            mentions=list(mentions) or None,
            markdown=markdown,
        )

    async def send(
        self,
        text: str,
        *,
        html: str | None = None,
        notice: bool = False,
        markdown: bool = False,
        mentions: Iterable[str] = (),
    ) -> str:
        """Send a plain message to the room (not a reply), mentioning the users in ``mentions``."""
        return await self.bot.send_text(
            self.room_id, text, html=html, notice=notice, markdown=markdown, mentions=list(mentions) or None
        )

    async def notice(
        self, text: str, *, html: str | None = None, markdown: bool = False, mentions: Iterable[str] = ()
    ) -> str:
        """Send an ``m.notice`` (what bots should use for unprompted output), mentioning ``mentions``."""
        return await self.bot.send_text(
            self.room_id, text, html=html, notice=True, markdown=markdown, mentions=list(mentions) or None
        )

    async def react(self, key: str, event_id: str | None = None) -> str:
        """React to this event (or ``event_id``) with ``key``."""
        return await self.bot.react(self.room_id, event_id or self.event_id, key)

    async def edit(self, event_id: str, text: str, *, html: str | None = None, markdown: bool = False) -> str:
        """Edit one of the bot's own messages in this room."""
        return await self.bot.edit(self.room_id, event_id, text, html=html, markdown=markdown)

    async def redact(self, event_id: str | None = None, reason: str | None = None) -> str:
        """Redact this event (or ``event_id``)."""
        return await self.bot.redact(self.room_id, event_id or self.event_id, reason)

    # -- private answers ---------------------------------------------------------------------------------------

    async def dm(self) -> str:
        """The room id of the bot's encrypted DM with the sender (created and the sender invited if needed)."""
        return await self.bot.dm(self.sender)

    async def reply_privately(
        self, text: str, *, html: str | None = None, notice: bool = False, markdown: bool = False
    ) -> str:
        """Answer in the bot's DM with the sender instead of this room; returns the event id."""
        return await self.bot.send_dm(self.sender, text, html=html, notice=notice, markdown=markdown)

    # -- media -------------------------------------------------------------------------------------------------

    async def send_file(
        self,
        path: str | PathLike[str],
        *,
        mimetype: str | None = None,
        name: str | None = None,
        msgtype: str | None = None,
        reply: bool = False,
    ) -> str:
        """Send the file at ``path`` to this room (as a reply to this event, in its thread, if ``reply``)."""
        return await self.bot.send_file(
            self.room_id,
            path,
            mimetype=mimetype,
            name=name,
            msgtype=msgtype,
            reply_to=self.event_id if reply else None,
            thread_root=self.thread_root if reply else None,
        )

    async def send_image(
        self, path: str | PathLike[str], *, mimetype: str | None = None, name: str | None = None, reply: bool = False
    ) -> str:
        """Send the image at ``path`` as ``m.image`` to this room (as a reply if ``reply``)."""
        return await self.send_file(path, mimetype=mimetype, name=name, msgtype="m.image", reply=reply)

    async def download(self) -> bytes:
        """The file of this event, or else of the event it replies to, decrypted and verified.

        So a command sent as a reply to a file (``!convert`` answering someone's upload) can read that file. Raises
        :class:`~bot.plugin.api.MatrixError` if neither has media.
        """
        if self.media is not None:
            return await self.bot.download(self.event)
        target = self.replied_to
        if target is None:
            raise MatrixError(f"{self.event_id} has no file and replies to none")
        return await self.bot.download(await self.bot.fetch_event(self.room_id, target))
