"""Ratchet's bridge framework: relay bridges between Matrix rooms and remote networks, as plugins.

A bridge is a :class:`~bot.plugin.base.Plugin` subclass of :class:`Bridge` that adds one :class:`RemoteConnection` per
remote network; the core keeps the portals (room <-> channel links), the message map, echo and loop prevention,
format conversion, the supervised reconnecting connection with its outgoing queue and rate limit, and the ``!bridge``
admin command. See ``docs/bridges.md``; everything a bridge needs is exported by ``bot``.
"""

from bot.bridge.connection import (
    ConnectionState,
    ConnectionStatus,
    ConnectionSupervisor,
    PermanentSendError,
    RemoteConnection,
)
from bot.bridge.core import Bridge, BridgeConfig
from bot.bridge.flow import Backoff, OutboundQueue, TokenBucket
from bot.bridge.matrix import MatrixSide, RelayFormat, RelayMatrixSide
from bot.bridge.messages import MappedMessage, MessageMap
from bot.bridge.model import (
    BRIDGE_MARKER,
    MatrixMessage,
    Portal,
    RemoteCapabilities,
    RemoteMessage,
    RemoteSend,
    matrix_message_from_event,
)

__all__ = [
    "BRIDGE_MARKER",
    "Backoff",
    "Bridge",
    "BridgeConfig",
    "ConnectionState",
    "ConnectionStatus",
    "ConnectionSupervisor",
    "MappedMessage",
    "MatrixMessage",
    "MatrixSide",
    "MessageMap",
    "OutboundQueue",
    "PermanentSendError",
    "Portal",
    "RelayFormat",
    "RelayMatrixSide",
    "RemoteCapabilities",
    "RemoteConnection",
    "RemoteMessage",
    "RemoteSend",
    "TokenBucket",
    "matrix_message_from_event",
]
