"""Ratchet: a framework for Matrix bots and bridges that live in end-to-end-encrypted rooms.

Everything a plugin or bridge may use is exported here; the rest of the package is internal::

    from bot import Plugin, Context, command, on_message, on_event, every
"""

from bot.bridge import (
    BRIDGE_MARKER,
    Backoff,
    Bridge,
    BridgeConfig,
    ConnectionStatus,
    ConnectionSupervisor,
    MappedMessage,
    MatrixMessage,
    MatrixSide,
    MessageMap,
    OutboundQueue,
    PermanentSendError,
    Portal,
    RelayFormat,
    RelayMatrixSide,
    RemoteCapabilities,
    RemoteConnection,
    RemoteMessage,
    RemoteSend,
    TokenBucket,
)
from bot.bridge.formatting import (
    edit_fallback,
    html_to_irc,
    human_size,
    irc_line_budget,
    irc_to_html,
    link_mentions,
    media_text,
    render_matrix_relay,
    render_remote_lines,
    reply_fallback,
    sanitize_name,
    split_irc_text,
    split_utf8,
    strip_irc_formatting,
)
from bot.plugin.api import BotAPI, MatrixError
from bot.plugin.base import Plugin, command, every, on_event, on_message
from bot.plugin.commands import Rest, RoomRef, UserId
from bot.plugin.context import Context

__version__ = "0.1.0"

__all__ = [
    "BRIDGE_MARKER",
    "Backoff",
    "BotAPI",
    "Bridge",
    "BridgeConfig",
    "ConnectionStatus",
    "ConnectionSupervisor",
    "Context",
    "MappedMessage",
    "MatrixError",
    "MatrixMessage",
    "MatrixSide",
    "MessageMap",
    "OutboundQueue",
    "PermanentSendError",
    "Plugin",
    "Portal",
    "RelayFormat",
    "RelayMatrixSide",
    "RemoteCapabilities",
    "RemoteConnection",
    "RemoteMessage",
    "RemoteSend",
    "Rest",
    "RoomRef",
    "TokenBucket",
    "UserId",
    "__version__",
    "command",
    "edit_fallback",
    "every",
    "html_to_irc",
    "human_size",
    "irc_line_budget",
    "irc_to_html",
    "link_mentions",
    "media_text",
    "on_event",
    "on_message",
    "render_matrix_relay",
    "render_remote_lines",
    "reply_fallback",
    "sanitize_name",
    "split_irc_text",
    "split_utf8",
    "strip_irc_formatting",
]
