"""What plugins may learn about the other plugins: :class:`PluginInfo`, :class:`CommandInfo`, and the
:class:`PluginDirectory` that answers (the ``help`` and ``admin`` plugins use it as ``self.bot.plugins``).

The directory is implemented by :class:`bot.plugin.host.PluginManager`; :class:`~bot.plugin.api.BotAPI` only knows
this interface, so the facade plugins hold does not depend on the host that loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["CommandInfo", "PluginDirectory", "PluginInfo"]


@dataclass(frozen=True)
class CommandInfo:
    """A command as ``!help`` shows it."""

    plugin: str
    name: str
    aliases: tuple[str, ...]
    help: str
    usage: str
    admin_only: bool
    power_level: int | None
    #: The usage lines of its subcommands (``!karma top [n]``), for ``!help karma``.
    subcommands: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginInfo:
    """A configured plugin and its state."""

    name: str
    state: str  # "running", "disabled" or "failed"
    commands: tuple[str, ...] = ()
    error: str | None = None
    loaded_at: float | None = None


class PluginDirectory(Protocol):
    """The configured plugins and their commands; reload, enable and disable them (admin actions)."""

    @property
    def prefix(self) -> str:
        """The command prefix (``!``)."""

    def configured(self) -> list[str]:
        """Names of the plugins in the config, in order."""

    @property
    def disabled(self) -> set[str]:
        """Plugins an admin disabled (kept across restarts)."""

    def info(self) -> list[PluginInfo]:
        """Every configured plugin with its state."""

    def commands(self, *, room_id: str | None = None, user_id: str | None = None) -> list[CommandInfo]:
        """The running plugins' commands; only those ``user_id`` may run in ``room_id`` if they are given."""

    def command(self, name: str) -> CommandInfo | None:
        """The command called ``name`` (or with that alias), if a running plugin has it."""

    async def reload(self, name: str) -> None:
        """Re-import ``name`` from disk with fresh options; the old version keeps running if that fails."""

    async def enable(self, name: str) -> None:
        """Start a disabled plugin and remember that it is enabled."""

    async def disable(self, name: str) -> None:
        """Stop a plugin and keep it stopped across restarts until enabled."""
