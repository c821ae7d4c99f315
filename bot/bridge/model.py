"""The values a bridge passes around: portals, messages in each direction, what a remote network can do.

All plain frozen dataclasses, built and read by pure code (and by the tests) without a network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.content.media import MEDIA_MSGTYPES, media_source
from bot.plugin.commands import strip_reply_fallback

__all__ = [
    "BRIDGE_MARKER",
    "MatrixMessage",
    "Portal",
    "RemoteCapabilities",
    "RemoteKind",
    "RemoteMessage",
    "RemoteSend",
    "matrix_message_from_event",
]

#: Key added to the content of every message a Ratchet bridge posts into Matrix. Bridges never relay a message that
#: carries it, so two bridges (or two bots) in the same room cannot loop a message back and forth.
BRIDGE_MARKER = "io.ratchet.bridge"

RemoteKind = Literal["message", "action", "notice", "join", "part", "quit", "nick", "kick", "topic", "members"]


@dataclass(frozen=True)
class Portal:
    """A Matrix room linked to a remote channel (``network`` names the remote connection, e.g. an IRC network).

    ``origin`` is ``"config"`` for links from the config file (restored at every start) or ``"command"`` for links
    made with ``!bridge link`` (kept in the bridge's storage).
    """

    network: str
    channel: str
    room_id: str
    origin: Literal["config", "command"] = "command"
    created_by: str | None = None
    created_at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return (self.network, self.channel)

    def describe(self) -> str:
        """``libera #chan`` style name of the remote side."""
        return f"{self.network} {self.channel}"


@dataclass(frozen=True)
class RemoteCapabilities:
    """What a remote network supports natively; the bridge degrades the rest (see :mod:`bot.bridge.relay_text`).

    * ``edits``/``replies``/``reactions``/``redactions``: the network has them (else an edit becomes ``s/old/new/``
      or ``* corrected: ...``, a reply quotes the original's first words, a reaction becomes a short line, a
      redaction is dropped);
    * ``html``: it takes Matrix HTML as is (else the bridge converts it, e.g. to IRC codes);
    * ``outgoing``: Matrix messages are sent to it at all (an inbound-only webhook endpoint says False);
    * ``ids``: its messages have ids (IRC's do not).
    """

    edits: bool = False
    replies: bool = False
    reactions: bool = False
    redactions: bool = False
    html: bool = False
    outgoing: bool = True
    ids: bool = False


@dataclass(frozen=True)
class RemoteMessage:
    """Something that happened on the remote side of a portal, to show in Matrix.

    ``kind`` is a message, an action (``/me``), a notice, or a membership change (join, part, quit, nick, kick) or
    topic shown as a notice by the relay; in ghost mode membership changes move the sender's ghost instead (``extra``:
    ``reason``, ``by`` and ``ban`` for a kick, ``new_name`` for a nick change, ``last`` on the last channel of a
    quit), and ``members`` (``extra["members"]``: the channel's names, IRC NAMES) joins their ghosts.
    ``text`` is plain text; ``html`` is Matrix HTML if the bridge converted formatting.
    ``reply_to``/``edit_of``/``redacts``/``reacts_to`` name other remote messages by remote id (on networks with
    ids); ``reaction`` is the key of a reaction.
    """

    network: str
    channel: str
    sender_id: str
    sender_name: str
    text: str = ""
    html: str | None = None
    kind: RemoteKind = "message"
    remote_id: str | None = None
    reply_to: str | None = None
    edit_of: str | None = None
    redacts: str | None = None
    reacts_to: str | None = None
    reaction: str | None = None
    mentions: tuple[str, ...] = ()
    #: Post without the ``**name**:`` prefix (a webhook whose text already says who did what).
    anonymous: bool = False
    msgtype: Literal["m.text", "m.notice"] = "m.text"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteSend:
    """One item the bridge sends to a remote network (for IRC: one line), queued until the connection takes it.

    ``event_id``/``room_id``/``sender`` say which Matrix event it relays; ``first`` marks the first item of that event
    (its remote id is the one remembered). ``payload`` carries network-specific data (a webhook's JSON).
    """

    channel: str
    text: str
    kind: Literal["message", "action", "notice"] = "message"
    event_id: str | None = None
    room_id: str | None = None
    sender: str | None = None
    sender_name: str | None = None
    html: str | None = None
    first: bool = True
    reply_to: str | None = None
    edit_of: str | None = None
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class MatrixMessage:
    """A Matrix event as a bridge relays it: who, what, and how it relates to other events."""

    room_id: str
    event_id: str
    sender: str
    sender_name: str
    msgtype: str
    body: str
    html: str | None = None
    reply_to: str | None = None
    edit_of: str | None = None
    media_name: str | None = None
    media_size: int | None = None
    media_mimetype: str | None = None
    mentions: tuple[str, ...] = ()
    timestamp: int = 0

    @property
    def is_media(self) -> bool:
        return self.msgtype in MEDIA_MSGTYPES

    @property
    def is_emote(self) -> bool:
        return self.msgtype == "m.emote"


_MX_REPLY_END = "</mx-reply>"


def matrix_message_from_event(
    room_id: str, source: dict[str, Any], sender_name: str
) -> MatrixMessage | None:
    """Read an ``m.room.message`` event (its decrypted ``source``) into a :class:`MatrixMessage`.

    Returns None for what a bridge must not relay: events another bridge posted (they carry :data:`BRIDGE_MARKER`),
    events without a usable body. For an edit (``m.replace``) the new content is read and ``edit_of`` set; reply
    fallbacks are removed from the body and the HTML.
    """
    content = source.get("content")
    if not isinstance(content, dict) or BRIDGE_MARKER in content:
        return None
    relates = content.get("m.relates_to") if isinstance(content.get("m.relates_to"), dict) else {}
    edit_of = None
    if relates.get("rel_type") == "m.replace" and isinstance(relates.get("event_id"), str):
        edit_of = relates["event_id"]
        new = content.get("m.new_content")
        if isinstance(new, dict):
            if BRIDGE_MARKER in new:
                return None
            content = new
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(msgtype, str) or not isinstance(body, str):
        return None
    html = None
    if content.get("format") == "org.matrix.custom.html" and isinstance(content.get("formatted_body"), str):
        html = content["formatted_body"]
        if _MX_REPLY_END in html:
            html = html.split(_MX_REPLY_END, 1)[1]
    reply_to = None
    in_reply = relates.get("m.in_reply_to")
    if isinstance(in_reply, dict) and relates.get("is_falling_back") is not True:
        target = in_reply.get("event_id")
        reply_to = target if isinstance(target, str) else None
    if reply_to is not None:
        body = strip_reply_fallback(body)
    mentions: tuple[str, ...] = ()
    mm = content.get("m.mentions")
    if isinstance(mm, dict) and isinstance(mm.get("user_ids"), list):
        mentions = tuple(u for u in mm["user_ids"] if isinstance(u, str))
    media_name = media_size = media_mimetype = None
    if msgtype in MEDIA_MSGTYPES:
        src = media_source(content)
        info = content.get("info") if isinstance(content.get("info"), dict) else {}
        media_name = (src.name if src else None) or content.get("filename") or body
        size = info.get("size")
        media_size = size if isinstance(size, int) else None
        media_mimetype = info.get("mimetype") if isinstance(info.get("mimetype"), str) else None
    return MatrixMessage(
        room_id=room_id,
        event_id=str(source.get("event_id", "")),
        sender=str(source.get("sender", "")),
        sender_name=sender_name,
        msgtype=msgtype,
        body=body,
        html=html,
        reply_to=reply_to,
        edit_of=edit_of,
        media_name=media_name,
        media_size=media_size,
        media_mimetype=media_mimetype,
        mentions=mentions,
        timestamp=int(source.get("origin_server_ts", 0) or 0),
    )
