"""Ratchet: a framework for Matrix bots and bridges that live in end-to-end-encrypted rooms.

Everything a plugin or bridge may use is exported here; the rest of the package is internal::

    from bot import Plugin, Context, command, on_message, on_event, every
"""

from bot.api import BotAPI, MatrixError
from bot.commands import Rest, RoomRef, UserId
from bot.context import Context
from bot.plugin import Plugin, command, every, on_event, on_message

__version__ = "0.1.0"

__all__ = [
    "BotAPI",
    "Context",
    "MatrixError",
    "Plugin",
    "Rest",
    "RoomRef",
    "UserId",
    "__version__",
    "command",
    "every",
    "on_event",
    "on_message",
]
