"""The plugin host: loads, starts, schedules, reloads and stops plugins; :class:`PluginManager` is the view plugins
get of it (``self.bot.plugins``). Routing events to the loaded plugins is :mod:`bot.plugin.routing`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config, reread_plugin_options
from bot.errors import ConfigError, PluginConfigError, PluginLoadError, StorageError, plugin_option_path
from bot.metrics import Metrics, PluginMetrics
from bot.plugin.api import BotAPI
from bot.plugin.base import (
    Access,
    CommandHandler,
    ConfigPatternError,
    Plugin,
    check_config_patterns,
    collect_handlers,
)
from bot.plugin.dispatch import Dispatcher
from bot.plugin.info import CommandInfo, PluginInfo
from bot.plugin.loader import import_plugin
from bot.plugin.options import RoomFilter, find_schema, split_options, validate_options
from bot.plugin.routing import LoadedPlugin, Router, command_owner
from bot.storage.state import StateStore

if TYPE_CHECKING:
    from bot.appservice import Appservice
    from bot.e2ee.identity import Identity
    from bot.e2ee.trust import TrustPolicy
    from bot.e2ee.verification_service import VerificationService
    from bot.http_listener import HttpListener
    from bot.matrix.client import RatchetClient
    from bot.stats import BotStats
    from bot.storage.backend import Storage

__all__ = ["LoadedPlugin", "PluginHost", "PluginManager", "check_plugin_options"]

log = logging.getLogger(__name__)

#: How long a plugin's start() or stop() may take before it is abandoned.
LIFECYCLE_TIMEOUT = 15.0


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
    try:
        check_config_patterns(cls, config)
    except ConfigPatternError as exc:
        parts = (exc.option,) if exc.index is None else (exc.option, exc.index)
        key = exc.option if exc.index is None else f"{exc.option}[{exc.index}]"
        error = PluginConfigError(f"{plugin_option_path(name, key)}: {exc.problem}", plugin=name, key=key, parts=parts)
        raise PluginLoadError(str(error)) from error
    except ValueError as exc:
        raise PluginLoadError(f"plugin {name}: {exc}") from exc
    return cls, rooms, config


def check_plugin_options(config: Config) -> list[ConfigError]:
    """Import every configured plugin and validate its options without starting it; returns the errors.

    Each is a :class:`ConfigError` pointing at the config file's line of the offending option (or of the plugin's
    own key, for a missing option, a check of the plugin's own or an import error): ``FILE:LINE: plugins.NAME.KEY:
    what is wrong``, like the errors about the bot's own keys.
    """
    errors = []
    for name, options in config.plugins.items():
        try:
            _prepare(name, options, config.plugin_dirs)
        except PluginLoadError as exc:
            cause = exc.__cause__
            if isinstance(cause, PluginConfigError):
                line = config.plugin_line(name, *cause.parts)
                errors.append(ConfigError(cause.message, key=cause.path, file=config.source, line=line))
            else:
                line = config.plugin_line(name)
                errors.append(ConfigError(str(exc), key=f"plugins.{name}", file=config.source, line=line))
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
        metrics: Metrics | None = None,
        http: HttpListener | None = None,
        verifications: VerificationService | None = None,
        appservice: Appservice | None = None,
    ) -> None:
        self.state = state
        self.storage = storage
        self.dispatcher = dispatcher
        #: Where plugins' own metrics are registered (``self.metrics`` in a plugin).
        self.metrics = metrics if metrics is not None else Metrics()
        self.prefix = config.command_prefix
        self.plugin_dirs = config.plugin_dirs
        #: The configured plugins as plugins see them (``self.bot.plugins``).
        self.manager = PluginManager(self, config)
        #: What every plugin gets as ``self.bot``.
        self.api = BotAPI(
            client,
            admins=config.admins,
            plugins=self.manager,
            stats=stats,
            trust=trust,
            identity=identity,
            http=http,
            verifications=verifications,
            appservice=appservice,
        )
        self.plugins: dict[str, LoadedPlugin] = {}
        self.options: dict[str, dict[str, Any]] = {}
        #: Why a configured plugin is not running (load error), by name.
        self.errors: dict[str, str] = {}
        #: Hands events to the loaded plugins' handlers.
        self.router = Router(
            self.plugins,
            self.api,
            state,
            dispatcher,
            prefix=self.prefix,
            plaintext_commands=config.e2ee.plaintext_commands,
            metrics=self.metrics,
        )

    # -- loading ---------------------------------------------------------------------------------------------

    def command_owner(self, name: str) -> tuple[LoadedPlugin, CommandHandler] | None:
        """The plugin and handler answering ``name`` (a command name or alias), if any."""
        return command_owner(self.plugins, name)

    async def load(self, name: str, options: dict[str, Any] | None = None) -> LoadedPlugin:
        """Import, configure and start plugin ``name``; raises :class:`PluginLoadError` with the reason.

        The failure is also remembered in :attr:`errors` (shown by ``!plugins``).
        """
        options = dict(options or {})
        self.options[name] = options
        if name in self.plugins:
            raise PluginLoadError(f"plugin {name}: already loaded")
        try:
            loaded, intervals = await self._start_new(name, options)
        except PluginLoadError as exc:
            self.errors[name] = str(exc)
            raise
        self._activate(loaded, intervals)
        self.errors.pop(name, None)
        log.info("plugin %s loaded (%d commands)", name, len(loaded.handlers.commands))
        return loaded

    async def _start_new(self, name: str, options: dict[str, Any]) -> tuple[LoadedPlugin, list[float]]:
        """A started instance of plugin ``name`` (freshly imported) that is not routed to yet, with its task periods.

        A running version of the same plugin keeps running meanwhile; its commands do not count as a clash. Every
        failure is a :class:`PluginLoadError` and leaves nothing open.
        """
        cls, rooms, config = _prepare(name, options, self.plugin_dirs)
        return await self._start_instance(name, cls, rooms, config)

    async def _start_instance(
        self, name: str, cls: type[Plugin], rooms: Any, config: Any
    ) -> tuple[LoadedPlugin, list[float]]:
        instance, handlers, intervals = self._build(name, cls, config)
        await self._open_and_start(name, instance)
        return LoadedPlugin(name, instance, handlers, rooms), intervals

    def _build(self, name: str, cls: type[Plugin], config: Any) -> tuple[Plugin, Any, list[float]]:
        """An instance of ``cls`` with its handlers checked (no clash with another plugin's command), not started."""
        try:
            instance = cls()
        except Exception as exc:
            log.error("plugin %s: constructor failed", name, exc_info=exc)
            raise PluginLoadError(f"plugin {name}: constructor failed: {exc.__class__.__name__}: {exc}") from exc
        instance.name = name
        instance.config = config
        instance.bot = self.api
        instance.log = logging.getLogger(f"ratchet.plugin.{name}")
        instance.metrics = PluginMetrics(self.metrics, name)
        try:
            handlers = collect_handlers(instance)
        except ValueError as exc:
            raise PluginLoadError(f"plugin {name}: {exc}") from exc
        for cmd in handlers.commands:
            for word in (cmd.spec.name, *cmd.spec.aliases):
                clash = self.command_owner(word)
                if clash is not None and clash[0].name != name:
                    raise PluginLoadError(
                        f"plugin {name}: command '{word}' is already provided by plugin {clash[0].name}"
                    )
        intervals = []
        for task in handlers.tasks:
            try:
                intervals.append(task.interval(config))
            except TypeError as exc:
                raise PluginLoadError(f"plugin {name}: {exc}") from exc
        return instance, handlers, intervals

    async def _open_and_start(self, name: str, instance: Plugin) -> None:
        try:
            instance.storage = await self.storage.open_plugin_storage(name, type(instance).migrations)
        except StorageError as exc:
            raise PluginLoadError(str(exc)) from exc
        try:
            await asyncio.wait_for(instance.start(), LIFECYCLE_TIMEOUT)
        except Exception as exc:
            await instance.storage.close()
            log.error("plugin %s: start() failed", name, exc_info=exc)
            raise PluginLoadError(f"plugin {name}: start() failed: {exc.__class__.__name__}: {exc}") from exc

    def _activate(self, loaded: LoadedPlugin, intervals: list[float]) -> None:
        """Route events to ``loaded`` from now on and start its scheduled tasks."""
        self.plugins[loaded.name] = loaded
        for task, seconds in zip(loaded.handlers.tasks, intervals, strict=True):
            if seconds > 0:
                loaded.tasks.append(
                    asyncio.create_task(self._schedule(loaded, task, seconds), name=f"{loaded.name} every")
                )

    async def unload(self, name: str) -> None:
        """Stop plugin ``name``: no new events reach it, its running handlers finish (within the handler timeout),
        then its ``stop()`` runs and its storage closes."""
        loaded = self.plugins.pop(name, None)
        if loaded is None:
            raise PluginLoadError(f"plugin {name}: not loaded")
        await self._retire(loaded)
        log.info("plugin %s unloaded", name)

    async def _retire(self, loaded: LoadedPlugin) -> None:
        """Stop an instance no longer routed to: cancel its schedules, drain its jobs, ``stop()``, close storage."""
        for task in loaded.tasks:
            task.cancel()
        await asyncio.gather(*loaded.tasks, return_exceptions=True)
        if loaded.jobs:
            # Bounded: the dispatcher cancels every job after the handler timeout.
            await asyncio.wait(set(loaded.jobs), timeout=self.dispatcher.timeout + 1)
        try:
            await asyncio.wait_for(loaded.instance.stop(), LIFECYCLE_TIMEOUT)
        except Exception as exc:
            log.error("plugin %s: stop() failed", loaded.name, exc_info=exc)
        await loaded.instance.storage.close()

    async def reload(self, name: str, options: dict[str, Any] | None = None) -> LoadedPlugin:
        """Re-import plugin ``name`` from disk and restart it (with new ``options`` if given).

        The new version is started beside the running one, which keeps handling events meanwhile; only when the new
        ``start()`` has succeeded are events routed to it (each event goes to exactly one version; a room's events
        stay in order, since both versions share the room's lane). The old version then finishes its running handlers
        and stops. A plugin that must never run twice at once (``reload_side_by_side = False``: a bridge holds one
        connection per network) is stopped first instead, the events that arrive meanwhile are held and handed to the
        new version. If anything fails (import, options, a command clash, ``start()``), the old version keeps running
        (or runs again) and the error is raised and remembered in :attr:`errors`.
        """
        options = dict(self.options.get(name, {}) if options is None else options)
        old = self.plugins.get(name)
        if old is None:
            return await self.load(name, options)
        try:
            if getattr(type(old.instance), "reload_side_by_side", True):
                new, intervals = await self._start_new(name, options)
                for task in old.tasks:  # the old schedules stop before the new ones start
                    task.cancel()
                self._activate(new, intervals)
                await self._retire(old)
            else:
                new = await self._restart_in_place(name, options, old)
        except PluginLoadError as exc:
            self.errors[name] = f"{exc} (the previous version keeps running)"
            raise
        self.options[name] = options
        self.errors.pop(name, None)
        log.info("plugin %s reloaded (%d commands)", name, len(new.handlers.commands))
        return new

    async def _restart_in_place(self, name: str, options: dict[str, Any], old: LoadedPlugin) -> LoadedPlugin:
        """Stop ``old``, then start the new version; events arriving in between are held for whichever runs next."""
        cls, rooms, config = _prepare(name, options, self.plugin_dirs)
        instance, handlers, intervals = self._build(name, cls, config)  # clashes are found before anything stops
        self.router.hold(name)
        try:
            self.plugins.pop(name, None)
            await self._retire(old)
            try:
                await self._open_and_start(name, instance)
            except PluginLoadError:
                again, old_intervals = await self._start_instance(
                    name, type(old.instance), old.rooms, old.instance.config
                )
                self._activate(again, old_intervals)
                raise
            new = LoadedPlugin(name, instance, handlers, rooms)
            self._activate(new, intervals)
            return new
        finally:
            self.router.release(name)

    async def unload_all(self) -> None:
        """Stop every plugin (in reverse load order)."""
        for name in reversed(list(self.plugins)):
            await self.unload(name)

    async def _schedule(self, loaded: LoadedPlugin, task, seconds: float) -> None:
        if not task.run_at_start:
            await asyncio.sleep(seconds)
        while True:
            fut = loaded.track(self.dispatcher.submit(("*", loaded.name), task.func, f"scheduled {task.func.__name__}"))
            await fut
            await asyncio.sleep(seconds)


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
        out = []
        for loaded in self._host.plugins.values():
            if room_id is not None and not loaded.rooms.permits(room_id):
                continue
            for cmd in loaded.handlers.commands:
                if user_id is not None and not self._may_run(cmd, room_id, user_id):
                    continue
                subs = [
                    sub for sub in cmd.subcommands if user_id is None or self._may_run(sub, room_id, user_id)
                ]
                sub_prefix = f"{self.prefix}{cmd.spec.name} "
                out.append(
                    CommandInfo(
                        loaded.name,
                        cmd.spec.name,
                        cmd.spec.aliases,
                        cmd.spec.help,
                        cmd.spec.usage(self.prefix),
                        cmd.access is Access.ADMIN,
                        cmd.power_level,
                        tuple(sub.spec.usage(sub_prefix) for sub in subs),
                    )
                )
                for sub in subs:
                    levels = [lvl for lvl in (cmd.power_level, sub.power_level) if lvl is not None]
                    out.append(
                        CommandInfo(
                            loaded.name,
                            f"{cmd.spec.name} {sub.spec.name}",
                            tuple(f"{cmd.spec.name} {alias}" for alias in sub.spec.aliases),
                            sub.spec.help,
                            sub.spec.usage(sub_prefix),
                            Access.ADMIN in (cmd.access, sub.access),
                            max(levels) if levels else None,
                        )
                    )
        return out

    def _may_run(self, cmd: CommandHandler, room_id: str | None, user_id: str) -> bool:
        api = self._host.api
        if cmd.access is Access.ADMIN and not api.is_admin(user_id):
            return False
        return cmd.power_level is None or (room_id is not None and api.power_level(room_id, user_id) >= cmd.power_level)

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
        """The plugin's options from the config file as it is now (None if the config has no file)."""
        try:
            return reread_plugin_options(self._config, name)
        except ConfigError as exc:
            raise PluginLoadError(f"plugin {name}: the config file has an error: {exc}") from exc

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
