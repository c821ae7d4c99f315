"""The plugin host: loads plugins, routes each event to the handlers that want it, and runs them through the
dispatcher with exactly-once bookkeeping.

Routing is plain code: for a text message it strips the reply fallback, looks for ``<prefix><command>``, checks the
command's access rules and parses its typed arguments; passive ``on_message`` patterns and ``on_event`` types are
matched next. What runs for one event and one plugin becomes one dispatcher job on the lane ``(room, plugin)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import Event, RoomMessageText

from bot.api import BotAPI
from bot.commands import UsageError, parse_invocation, strip_reply_fallback
from bot.context import Context
from bot.dispatch import Dispatcher, JobOutcome
from bot.loader import PluginLoadError, import_plugin
from bot.plugin import Access, CommandHandler, Handlers, Plugin, collect_handlers
from bot.state import StateStore

__all__ = ["LoadedPlugin", "PluginHost"]

log = logging.getLogger(__name__)

#: How long a plugin's start() or stop() may take before it is abandoned.
LIFECYCLE_TIMEOUT = 15.0


@dataclass
class LoadedPlugin:
    """A running plugin instance and what it declared."""

    name: str
    instance: Plugin
    handlers: Handlers
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)


class PluginHost:
    """Owns the loaded plugins and turns events into handler jobs."""

    def __init__(
        self,
        api: BotAPI,
        state: StateStore,
        dispatcher: Dispatcher,
        *,
        prefix: str = "!",
        plugin_dirs: tuple[Path, ...] = (),
    ) -> None:
        self.api = api
        self.state = state
        self.dispatcher = dispatcher
        self.prefix = prefix
        self.plugin_dirs = plugin_dirs
        self.plugins: dict[str, LoadedPlugin] = {}
        self.options: dict[str, dict[str, Any]] = {}
        # (event id, plugin) pairs submitted but not finished: the same event can reach route() twice before its
        # first handling is recorded (a late key and a restart retry, overlapping gap fills).
        self._inflight: set[tuple[str, str]] = set()

    # -- loading ---------------------------------------------------------------------------------------------

    def command_owner(self, name: str) -> tuple[LoadedPlugin, CommandHandler] | None:
        """The plugin and handler answering ``name`` (a command name or alias), if any."""
        for loaded in self.plugins.values():
            for cmd in loaded.handlers.commands:
                if name == cmd.spec.name or name in cmd.spec.aliases:
                    return loaded, cmd
        return None

    async def load(self, name: str, options: dict[str, Any] | None = None) -> LoadedPlugin:
        """Import, instantiate and start plugin ``name``; raises :class:`PluginLoadError` with the reason."""
        if name in self.plugins:
            raise PluginLoadError(f"plugin {name}: already loaded")
        options = dict(options or {})
        try:
            cls = import_plugin(name, self.plugin_dirs)
            instance = cls()
        except PluginLoadError:
            raise
        except Exception as exc:
            log.error("plugin %s: import failed", name, exc_info=exc)
            raise PluginLoadError(f"plugin {name}: import failed: {exc.__class__.__name__}: {exc}") from exc
        instance.name = name
        instance.config = options
        instance.bot = self.api
        instance.log = logging.getLogger(f"ratchet.plugin.{name}")
        handlers = collect_handlers(instance)
        for cmd in handlers.commands:
            for word in (cmd.spec.name, *cmd.spec.aliases):
                clash = self.command_owner(word)
                if clash is not None:
                    raise PluginLoadError(
                        f"plugin {name}: command '{word}' is already provided by plugin {clash[0].name}"
                    )
        try:
            await asyncio.wait_for(instance.start(), LIFECYCLE_TIMEOUT)
        except Exception as exc:
            log.error("plugin %s: start() failed", name, exc_info=exc)
            raise PluginLoadError(f"plugin {name}: start() failed: {exc.__class__.__name__}: {exc}") from exc
        loaded = LoadedPlugin(name, instance, handlers)
        for task in handlers.tasks:
            loaded.tasks.append(asyncio.create_task(self._schedule(loaded, task), name=f"{name} every"))
        self.plugins[name] = loaded
        self.options[name] = options
        log.info("plugin %s loaded (%d commands)", name, len(handlers.commands))
        return loaded

    async def unload(self, name: str) -> None:
        """Stop plugin ``name``: cancel its scheduled tasks and call its ``stop()``."""
        loaded = self.plugins.pop(name, None)
        if loaded is None:
            raise PluginLoadError(f"plugin {name}: not loaded")
        for task in loaded.tasks:
            task.cancel()
        await asyncio.gather(*loaded.tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(loaded.instance.stop(), LIFECYCLE_TIMEOUT)
        except Exception as exc:
            log.error("plugin %s: stop() failed", name, exc_info=exc)
        log.info("plugin %s unloaded", name)

    async def reload(self, name: str) -> LoadedPlugin:
        """Re-import plugin ``name`` from disk and restart it with the same options."""
        options = self.options.get(name, {})
        if name in self.plugins:
            await self.unload(name)
        return await self.load(name, options)

    async def unload_all(self) -> None:
        """Stop every plugin (in reverse load order)."""
        for name in reversed(list(self.plugins)):
            await self.unload(name)

    async def _schedule(self, loaded: LoadedPlugin, task) -> None:
        if not task.run_at_start:
            await asyncio.sleep(task.seconds)
        while True:
            fut = self.dispatcher.submit(("*", loaded.name), task.func, f"scheduled {task.func.__name__}")
            await fut
            await asyncio.sleep(task.seconds)

    # -- routing ---------------------------------------------------------------------------------------------

    def route(self, room_id: str, event: Event, *, trusted: bool = True) -> list[asyncio.Future[JobOutcome]]:
        """Submit the jobs that handle ``event``; returns their futures (empty if nothing wants it)."""
        futures: list[asyncio.Future[JobOutcome]] = []
        invocation = None
        if isinstance(event, RoomMessageText) and event.source.get("content", {}).get("msgtype") == "m.text":
            invocation = parse_invocation(strip_reply_fallback(event.body), self.prefix)
        for loaded in list(self.plugins.values()):
            calls = self._calls_for(loaded, room_id, event, invocation, trusted)
            if not calls:
                continue
            if (event.event_id, loaded.name) in self._inflight or self.state.is_handled(event.event_id, loaded.name):
                log.debug("event %s already handled by %s", event.event_id, loaded.name)
                continue
            futures.append(self._submit(loaded, room_id, event, calls))
        return futures

    def _calls_for(
        self, loaded: LoadedPlugin, room_id: str, event: Event, invocation, trusted: bool
    ) -> list[tuple[str, Callable[[Context], Awaitable[Any]]]]:
        calls: list[tuple[str, Callable[[Context], Awaitable[Any]]]] = []
        h = loaded.handlers
        if invocation is not None:
            for cmd in h.commands:
                if invocation.name == cmd.spec.name or invocation.name in cmd.spec.aliases:
                    calls.append((f"command {cmd.spec.name}", self._command_call(cmd, invocation.args)))
        if isinstance(event, RoomMessageText):
            for handler in h.messages:
                match = handler.pattern.search(event.body)
                if match is not None:
                    calls.append(
                        (f"message handler {handler.func.__name__}", _bind(handler.func, match))
                    )
        event_type = event.source.get("type")
        for handler in h.events:
            wanted = handler.event_type
            if (isinstance(wanted, str) and wanted == event_type) or (
                isinstance(wanted, type) and isinstance(event, wanted)
            ):
                calls.append((f"event handler {handler.func.__name__}", _bind(handler.func)))
        return calls

    def _command_call(self, cmd: CommandHandler, args: str) -> Callable[[Context], Awaitable[Any]]:
        async def call(ctx: Context) -> None:
            if cmd.access is Access.ADMIN and not ctx.is_admin:
                log.info("denied %s%s to %s (admins only)", self.prefix, cmd.spec.name, ctx.sender)
                await ctx.reply(f"⛔ {self.prefix}{cmd.spec.name} is for the bot's admins only.", notice=True)
                return
            if cmd.power_level is not None and ctx.power_level < cmd.power_level:
                log.info("denied %s%s to %s (power level)", self.prefix, cmd.spec.name, ctx.sender)
                await ctx.reply(
                    f"⛔ {self.prefix}{cmd.spec.name} needs power level {cmd.power_level} in this room.",
                    notice=True,
                )
                return
            try:
                kwargs = cmd.spec.parse(args)
            except UsageError as err:
                await ctx.reply(f"{err.message}\nUsage: {err.usage}", notice=True)
                return
            await cmd.func(ctx, **kwargs)

        return call

    def _submit(
        self,
        loaded: LoadedPlugin,
        room_id: str,
        event: Event,
        calls: list[tuple[str, Callable[[Context], Awaitable[Any]]]],
    ) -> asyncio.Future[JobOutcome]:
        ctx = Context(self.api, room_id, event, loaded.instance)

        async def run() -> None:
            for label, call in calls:
                await _isolated(loaded.name, label, call, ctx)

        key = (event.event_id, loaded.name)
        self._inflight.add(key)

        def finished(fut: asyncio.Future[JobOutcome]) -> None:
            # A handler that failed or timed out has had its turn: it is not retried after a restart (a poison
            # message must not hang the bot forever). Only jobs cut short by shutdown are left for redelivery.
            self._inflight.discard(key)
            if fut.result().status != "cancelled":
                self.state.mark_handled(event.event_id, loaded.name)

        label = ", ".join(label for label, _ in calls)
        fut = self.dispatcher.submit((room_id, loaded.name), run, label)
        fut.add_done_callback(finished)
        return fut


def _bind(func: Callable[..., Awaitable[Any]], *extra: Any) -> Callable[[Context], Awaitable[Any]]:
    async def call(ctx: Context) -> Any:
        return await func(ctx, *extra)

    return call


async def _isolated(
    plugin: str, label: str, call: Callable[[Context], Awaitable[Any]], ctx: Context
) -> None:
    """Run one handler; an exception is logged and answered briefly (for commands), never propagated."""
    try:
        await call(ctx)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("plugin %s: %s raised on %s", plugin, label, ctx.event_id, exc_info=exc)
        if label.startswith("command "):
            try:
                await ctx.reply(f"⚠️ {label} failed ({exc.__class__.__name__}); the error was logged.", notice=True)
            except Exception:
                log.warning("plugin %s: could not report the error in %s", plugin, ctx.room_id)
