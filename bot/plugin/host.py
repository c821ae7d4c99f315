"""The plugin host: loads plugins, routes each event to the handlers that want it, and runs them through the
dispatcher with exactly-once bookkeeping.

Routing is plain code: for a text message it strips the reply fallback, looks for ``<prefix><command>``, checks the
command's access rules and parses its typed arguments; passive ``on_message`` patterns and ``on_event`` types are
matched next. What runs for one event and one plugin becomes one dispatcher job on the lane ``(room, plugin)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import ConfigError, PluginConfigError, PluginLoadError, StateError, StorageError, UsageError
from bot.matrix.events import Event, is_text_message
from bot.plugin.api import BotAPI
from bot.plugin.base import Access, CommandHandler, Handlers, Plugin, collect_handlers
from bot.plugin.commands import parse_invocation, strip_reply_fallback
from bot.plugin.context import Context
from bot.plugin.dispatch import Dispatcher, JobOutcome
from bot.plugin.info import CommandInfo, PluginInfo
from bot.plugin.loader import import_plugin
from bot.plugin.options import RoomFilter, find_schema, split_options, validate_options
from bot.storage.state import StateStore

if TYPE_CHECKING:
    from bot.config import Config
    from bot.e2ee.identity import Identity
    from bot.e2ee.trust import TrustPolicy
    from bot.matrix.client import RatchetClient
    from bot.stats import BotStats
    from bot.storage.backend import Storage

__all__ = ["LoadedPlugin", "PluginHost", "PluginManager", "check_plugin_options"]

log = logging.getLogger(__name__)

#: How long a plugin's start() or stop() may take before it is abandoned.
LIFECYCLE_TIMEOUT = 15.0


@dataclass
class LoadedPlugin:
    """A running plugin instance and what it declared."""

    name: str
    instance: Plugin
    handlers: Handlers
    rooms: RoomFilter = field(default_factory=RoomFilter)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)


def _prepare(name: str, options: dict[str, Any], plugin_dirs: tuple[Path, ...]) -> tuple[type[Plugin], RoomFilter, Any]:
    """Import plugin ``name`` and validate its options; every failure is a :class:`PluginLoadError`."""
    try:
        cls = import_plugin(name, plugin_dirs)
    except PluginLoadError:
        raise
    except Exception as exc:
        log.error("plugin %s: import failed", name, exc_info=exc)
        raise PluginLoadError(f"plugin {name}: import failed: {exc.__class__.__name__}: {exc}") from exc
    try:
        rooms, rest = split_options(name, options)
        config = validate_options(name, find_schema(cls), rest)
    except (PluginConfigError, TypeError) as exc:
        raise PluginLoadError(str(exc)) from exc
    return cls, rooms, config


def check_plugin_options(config: Config) -> list[str]:
    """Import every configured plugin and validate its options without starting it; returns the errors."""
    errors = []
    for name, options in config.plugins.items():
        try:
            _prepare(name, options, config.plugin_dirs)
        except PluginLoadError as exc:
            errors.append(str(exc))
    return errors

class PluginHost:
    """Owns the loaded plugins and turns events into handler jobs."""

    def __init__(
        self,
        client: RatchetClient,
        state: StateStore,
        storage: Storage,
        dispatcher: Dispatcher,
        config: Config,
        *,
        stats: BotStats,
        trust: TrustPolicy,
        identity: Identity | None,
    ) -> None:
        self.state = state
        self.storage = storage
        self.dispatcher = dispatcher
        self.prefix = config.command_prefix
        self.plugin_dirs = config.plugin_dirs
        #: The configured plugins as plugins see them (``self.bot.plugins``).
        self.manager = PluginManager(self, config)
        #: What every plugin gets as ``self.bot``.
        self.api = BotAPI(
            client, admins=config.admins, plugins=self.manager, stats=stats, trust=trust, identity=identity
        )
        self.plugins: dict[str, LoadedPlugin] = {}
        self.options: dict[str, dict[str, Any]] = {}
        #: Why a configured plugin is not running (load error), by name.
        self.errors: dict[str, str] = {}
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
        """Import, configure and start plugin ``name``; raises :class:`PluginLoadError` with the reason.

        The failure is also remembered in :attr:`errors` (shown by ``!plugins``).
        """
        options = dict(options or {})
        self.options[name] = options
        try:
            loaded = await self._load(name, options)
        except PluginLoadError as exc:
            self.errors[name] = str(exc)
            raise
        self.errors.pop(name, None)
        return loaded

    async def _load(self, name: str, options: dict[str, Any]) -> LoadedPlugin:
        if name in self.plugins:
            raise PluginLoadError(f"plugin {name}: already loaded")
        cls, rooms, config = _prepare(name, options, self.plugin_dirs)
        try:
            instance = cls()
        except Exception as exc:
            log.error("plugin %s: constructor failed", name, exc_info=exc)
            raise PluginLoadError(f"plugin {name}: constructor failed: {exc.__class__.__name__}: {exc}") from exc
        instance.name = name
        instance.config = config
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
        intervals = []
        for task in handlers.tasks:
            try:
                intervals.append(task.interval(config))
            except TypeError as exc:
                raise PluginLoadError(f"plugin {name}: {exc}") from exc
        try:
            instance.storage = await self.storage.open_plugin_storage(name, cls.migrations)
        except StorageError as exc:
            raise PluginLoadError(str(exc)) from exc
        try:
            await asyncio.wait_for(instance.start(), LIFECYCLE_TIMEOUT)
        except Exception as exc:
            await instance.storage.close()
            log.error("plugin %s: start() failed", name, exc_info=exc)
            raise PluginLoadError(f"plugin {name}: start() failed: {exc.__class__.__name__}: {exc}") from exc
        loaded = LoadedPlugin(name, instance, handlers, rooms)
        for task, seconds in zip(handlers.tasks, intervals, strict=True):
            if seconds > 0:
                loaded.tasks.append(
                    asyncio.create_task(self._schedule(loaded, task, seconds), name=f"{name} every")
                )
        self.plugins[name] = loaded
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
        await loaded.instance.storage.close()
        log.info("plugin %s unloaded", name)

    async def reload(self, name: str, options: dict[str, Any] | None = None) -> LoadedPlugin:
        """Re-import plugin ``name`` from disk and restart it (with new ``options`` if given).

        The new code and options are checked before the running instance is stopped, so a reload that would fail
        (syntax error, invalid option) leaves the old version running.
        """
        options = dict(self.options.get(name, {}) if options is None else options)
        _prepare(name, options, self.plugin_dirs)
        if name in self.plugins:
            await self.unload(name)
        return await self.load(name, options)

    async def unload_all(self) -> None:
        """Stop every plugin (in reverse load order)."""
        for name in reversed(list(self.plugins)):
            await self.unload(name)

    async def _schedule(self, loaded: LoadedPlugin, task, seconds: float) -> None:
        if not task.run_at_start:
            await asyncio.sleep(seconds)
        while True:
            fut = self.dispatcher.submit(("*", loaded.name), task.func, f"scheduled {task.func.__name__}")
            await fut
            await asyncio.sleep(seconds)

    # -- routing ---------------------------------------------------------------------------------------------

    def route(self, room_id: str, event: Event, *, trusted: bool = True) -> list[asyncio.Future[JobOutcome]]:
        """Submit the jobs that handle ``event``; returns their futures (empty if nothing wants it)."""
        futures: list[asyncio.Future[JobOutcome]] = []
        invocation = None
        if is_text_message(event) and event.source.get("content", {}).get("msgtype") == "m.text":
            invocation = parse_invocation(strip_reply_fallback(event.body), self.prefix)
        for loaded in list(self.plugins.values()):
            if not loaded.rooms.permits(room_id):
                continue
            calls = self._calls_for(loaded, room_id, event, invocation, trusted)
            if not calls:
                continue
            if (event.event_id, loaded.name) in self._inflight or self.state.is_handled(event.event_id, loaded.name):
                log.debug("event %s already handled by %s", event.event_id, loaded.name)
                continue
            futures.append(self._submit(loaded, room_id, event, calls, trusted=trusted))
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
        if is_text_message(event):
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
        *,
        trusted: bool = True,
    ) -> asyncio.Future[JobOutcome]:
        ctx = Context(self.api, room_id, event, loaded.instance, trusted=trusted)

        async def run() -> None:
            for label, call in calls:
                await _isolated(loaded.name, label, call, ctx)
            # Recorded in the same step as the handler's return, with no await in between: a crash (kill -9) can
            # no longer fall between "the plugin finished" and "the framework knows" while the loop runs other work.
            with contextlib.suppress(StateError):  # the disk is full or read-only: the runtime stops the bot
                self.state.mark_handled(event.event_id, loaded.name)

        key = (event.event_id, loaded.name)
        self._inflight.add(key)

        def finished(fut: asyncio.Future[JobOutcome]) -> None:
            # A handler that failed or timed out has had its turn: it is not retried after a restart (a poison
            # message must not hang the bot forever). Only jobs cut short by shutdown are left for redelivery.
            self._inflight.discard(key)
            if fut.result().status not in ("cancelled", "ok"):
                with contextlib.suppress(StateError):
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


# -- the manager plugins use --------------------------------------------------------------------------------------


class PluginManager:
    """The plugin host as plugins may see it (the ``help`` and ``admin`` plugins use it): list, reload, enable
    and disable plugins, and the commands a user may run in a room."""

    _DISABLED_KEY = "disabled_plugins"

    def __init__(self, host: PluginHost, config: Config) -> None:
        self._host = host
        self._config = config

    @property
    def prefix(self) -> str:
        """The command prefix."""
        return self._host.prefix

    def configured(self) -> list[str]:
        """Names of the plugins in the config, in order."""
        return list(self._config.plugins)

    @property
    def disabled(self) -> set[str]:
        """Plugins an admin disabled (kept across restarts)."""
        raw = self._host.state.get(self._DISABLED_KEY)
        return set(json.loads(raw)) if raw else set()

    def _set_disabled(self, names: set[str]) -> None:
        self._host.state.set(self._DISABLED_KEY, json.dumps(sorted(names)))

    def info(self) -> list[PluginInfo]:
        """Every configured plugin with its state."""
        out = []
        for name in self.configured():
            loaded = self._host.plugins.get(name)
            if loaded is not None:
                cmds = tuple(c.spec.name for c in loaded.handlers.commands)
                out.append(PluginInfo(name, "running", cmds, loaded_at=loaded.loaded_at))
            elif name in self.disabled:
                out.append(PluginInfo(name, "disabled"))
            else:
                out.append(PluginInfo(name, "failed", error=self._host.errors.get(name)))
        return out

    def commands(self, *, room_id: str | None = None, user_id: str | None = None) -> list[CommandInfo]:
        """The running plugins' commands; only those ``user_id`` may run in ``room_id`` if they are given."""
        api = self._host.api
        out = []
        for loaded in self._host.plugins.values():
            if room_id is not None and not loaded.rooms.permits(room_id):
                continue
            for cmd in loaded.handlers.commands:
                if user_id is not None:
                    if cmd.access is Access.ADMIN and not api.is_admin(user_id):
                        continue
                    if cmd.power_level is not None and (
                        room_id is None or api.power_level(room_id, user_id) < cmd.power_level
                    ):
                        continue
                out.append(
                    CommandInfo(
                        loaded.name,
                        cmd.spec.name,
                        cmd.spec.aliases,
                        cmd.spec.help,
                        cmd.spec.usage(self.prefix),
                        cmd.access is Access.ADMIN,
                        cmd.power_level,
                    )
                )
        return out

    def command(self, name: str) -> CommandInfo | None:
        """The command called ``name`` (or with that alias), if a running plugin has it."""
        name = name.lower().removeprefix(self.prefix)
        for info in self.commands():
            if name == info.name or name in info.aliases:
                return info
        return None

    def _require_configured(self, name: str) -> None:
        if name not in self._config.plugins:
            raise PluginLoadError(f"plugin {name}: not in the config (configured: {', '.join(self.configured())})")

    def _fresh_options(self, name: str) -> dict[str, Any] | None:
        """The plugin's options from the config file as it is now (None if the file cannot be read)."""
        from bot.config import load_config

        if not self._config.source:
            return None
        try:
            fresh = load_config(self._config.source)
        except ConfigError as exc:
            raise PluginLoadError(f"plugin {name}: the config file has an error: {exc}") from exc
        return fresh.plugins.get(name)

    async def reload(self, name: str) -> None:
        """Re-import ``name`` from disk with its options re-read from the config file; the old version keeps
        running if the new one cannot be loaded."""
        self._require_configured(name)
        if name in self.disabled:
            raise PluginLoadError(f"plugin {name}: disabled; enable it first")
        await self._host.reload(name, self._fresh_options(name))

    async def enable(self, name: str) -> None:
        """Start a disabled plugin and remember that it is enabled."""
        self._require_configured(name)
        self._set_disabled(self.disabled - {name})
        if name not in self._host.plugins:
            options = self._fresh_options(name)
            await self._host.load(name, self._host.options.get(name, {}) if options is None else options)

    async def disable(self, name: str) -> None:
        """Stop a plugin and keep it stopped across restarts until enabled."""
        self._require_configured(name)
        self._set_disabled(self.disabled | {name})
        if name in self._host.plugins:
            await self._host.unload(name)

    async def start_all(self) -> None:
        """Load every configured plugin that is not disabled; failures are logged and the others still load."""
        disabled = self.disabled
        for name, options in self._config.plugins.items():
            if name in disabled:
                log.info("plugin %s is disabled", name)
                continue
            try:
                await self._host.load(name, options)
            except PluginLoadError as exc:
                log.error("%s; the bot runs without it", exc)

    async def reload_all(self) -> None:
        """Reload every running plugin (SIGHUP)."""
        for name in list(self._host.plugins):
            try:
                await self.reload(name)
            except PluginLoadError as exc:
                log.error("%s (the previous version keeps running)", exc)
