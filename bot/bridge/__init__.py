"""Ratchet's bridge framework: bridges between Matrix rooms and remote networks, as plugins: relay bridges (the bot
posts for everyone), or, when the bot runs as an appservice, ghost bridges (each remote user is a Matrix user).

A bridge is a :class:`~bot.plugin.base.Plugin` subclass of :class:`Bridge` that adds one :class:`RemoteConnection` per
remote network; the core keeps the portals (room <-> channel links), the message map, echo and loop prevention,
degrading what a network lacks, the supervised reconnecting connection with its outgoing queue and rate limit, and the
``!bridge`` admin command. A network's own markup (IRC control codes, say) is the bridge's business: it overrides
:meth:`Bridge.format_outgoing` / :meth:`Bridge.prepare_inbound`, with the text helpers exported here.

Everything a bridge needs is exported here (``from bot.bridge import Bridge, ...``); see ``docs/bridges.md``. The
submodules are internal.
"""

from bot.appservice.ghosts import Ghost
from bot.bridge.connection import ConnectionSupervisor, InboundRefused, RemoteConnection
from bot.bridge.core import Bridge, BridgeConfig
from bot.bridge.ghosts import GhostIdentity, escape_localpart
from bot.bridge.matrix import GhostMatrixSide, MatrixSide, RelayMatrixSide
from bot.bridge.model import MatrixMessage, Portal, RemoteCapabilities, RemoteMessage, RemoteSend
from bot.bridge.relay_text import MentionLinker, check_template, link_mentions, sanitize_name, split_utf8
from bot.bridge.rich_text import TextStyle, html_to_lines, html_to_plain, runs_to_html
from bot.errors import PermanentSendError

__all__ = [
    "Bridge",
    "BridgeConfig",
    "ConnectionSupervisor",
    "Ghost",
    "GhostIdentity",
    "GhostMatrixSide",
    "InboundRefused",
    "MatrixMessage",
    "MatrixSide",
    "MentionLinker",
    "PermanentSendError",
    "Portal",
    "RelayMatrixSide",
    "RemoteCapabilities",
    "RemoteConnection",
    "RemoteMessage",
    "RemoteSend",
    "TextStyle",
    "check_template",
    "escape_localpart",
    "html_to_lines",
    "html_to_plain",
    "link_mentions",
    "runs_to_html",
    "sanitize_name",
    "split_utf8",
]
