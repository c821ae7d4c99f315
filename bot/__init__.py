"""Ratchet: a framework for Matrix bots and bridges that live in end-to-end-encrypted rooms.

Everything a plugin may use is exported here; the rest of the package is internal::

    from bot import Plugin, Context, command, on_message, on_event, every

Bridges import from :mod:`bot.bridge` (``from bot.bridge import Bridge, BridgeConfig, ...``). Importing ``bot`` loads
only the plugin API below, not the runtime, the bridge framework or the encryption code.
"""

from bot.errors import MatrixError
from bot.log import add_secret as mask_secret
from bot.plugin.base import Plugin, command, every, on_event, on_message
from bot.plugin.commands import Rest, RoomRef, UserId
from bot.plugin.context import Context

__version__ = "0.1.0"

__all__ = [
    "Context",
    "MatrixError",
    "Plugin",
    "Rest",
    "RoomRef",
    "UserId",
    "__version__",
    "command",
    "every",
    "mask_secret",
    "on_event",
    "on_message",
]
