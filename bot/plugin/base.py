"""The plugin base class and the decorators that declare a plugin's handlers.

A plugin is a class deriving from :class:`Plugin`; its methods become handlers through decorators::

    from bot import Plugin, command, on_message, on_event, every, Context

    class Greeter(Plugin):
        @command("hello", aliases=["hi"], help="Say hello")
        async def hello(self, ctx: Context, name: str = "world"):
            await ctx.reply(f"Hello, {name}!")

The decorators only attach metadata; the runtime collects it when the plugin is loaded, so a plugin module has no
side effects at import time and can be reloaded.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bot.plugin.commands import CommandSpec

if TYPE_CHECKING:
    from bot.metrics import PluginMetrics
    from bot.plugin.api import BotAPI
    from bot.storage.plugin_storage import BasePluginStorage

__all__ = [
    "Access",
    "CommandHandler",
    "ConfigPatternError",
    "EventHandler",
    "MessageHandler",
    "Plugin",
    "ScheduledTask",
    "check_config_patterns",
    "collect_handlers",
    "command",
    "every",
    "on_event",
    "on_message",
    "patterns_from_config",
]

Handler = Callable[..., Awaitable[Any]]
_ATTR = "__ratchet_handlers__"


class Access(enum.Enum):
    """Who may run a command (see ``command(..., access=...)``)."""

    ANYONE = "anyone"
    ADMIN = "admin"  # the bot's admins from the config


@dataclass(frozen=True)
class CommandHandler:
    """A declared command: its parsed signature and who may run it, and its subcommands (``!karma top``)."""

    spec: CommandSpec
    func: Handler
    access: Access = Access.ANYONE
    power_level: int | None = None
    subcommands: tuple[CommandHandler, ...] = ()

    def subcommand(self, word: str) -> CommandHandler | None:
        """The subcommand called ``word`` (or with that alias), if any."""
        word = word.lower()
        for sub in self.subcommands:
            if word == sub.spec.name or word in sub.spec.aliases:
                return sub
        return None


@dataclass(frozen=True)
class MessageHandler:
    """A passive handler called for text messages whose body (reply fallback stripped) matches one of ``patterns``.

    ``commands``: whether it also sees messages that run a command (off by default).
    """

    patterns: tuple[re.Pattern[str], ...]
    func: Handler
    commands: bool = False

    def search(self, text: str) -> re.Match[str] | None:
        """The first pattern's match in ``text`` (``re.search``), or None."""
        for pattern in self.patterns:
            match = pattern.search(text)
            if match is not None:
                return match
        return None


class ConfigPatternError(ValueError):
    """The patterns an ``on_message(config=OPTION)`` handler reads from the plugin's config are missing or bad.

    ``str(error)`` is ``option 'OPTION': PROBLEM``; ``option`` is the option's name and ``index`` the offending
    pattern's position in its list (None for the option as a whole), so that the error can point at its line.
    """

    def __init__(self, option: str, problem: str, index: int | None = None) -> None:
        super().__init__(f"option {option!r}: {problem}")
        self.option = option
        self.problem = problem
        self.index = index


def patterns_from_config(config: Any, option: str, flags: int = 0) -> tuple[re.Pattern[str], ...]:
    """The regular expressions in the plugin config's ``option`` (a string or a list of strings), compiled.

    Raises :class:`ConfigPatternError` (a ValueError) naming the option for anything else or a pattern that does not
    compile (a config error).
    """
    value = config.get(option) if isinstance(config, Mapping) else getattr(config, option, None)
    if value is None:
        raise ConfigPatternError(option, f"missing (on_message(config={option!r}) reads its patterns from it)")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) for p in items):
        raise ConfigPatternError(option, "expected a regular expression or a list of them")
    listed = not isinstance(value, str)
    compiled = []
    for index, item in enumerate(items):
        at = index if listed else None
        if not item:
            raise ConfigPatternError(option, f"pattern {index + 1} is empty (it would match every message)", at)
        try:
            compiled.append(re.compile(item, flags))
        except re.error as exc:
            raise ConfigPatternError(
                option, f"pattern {item!r} is not a valid regular expression: {exc}", at
            ) from None
    return tuple(compiled)


@dataclass(frozen=True)
class EventHandler:
    """A handler for every event of a type (a nio event class, or a Matrix type string like ``m.reaction``)."""

    event_type: type | str
    func: Handler


@dataclass(frozen=True)
class ScheduledTask:
    """A coroutine method run every ``seconds`` (or every ``config.<name>`` seconds) while the plugin is loaded."""

    seconds: float | str
    func: Handler
    run_at_start: bool = False

    def interval(self, config: Any) -> float:
        """The period in seconds; a string names an option of the plugin's config that holds it."""
        if isinstance(self.seconds, str):
            value = config.get(self.seconds) if isinstance(config, Mapping) else getattr(config, self.seconds, None)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"every({self.seconds!r}): the plugin's config has no number '{self.seconds}'")
            return float(value)
        return self.seconds


def _attach(func: Handler, info: object) -> Handler:
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"{func.__qualname__}: Ratchet handlers must be `async def`")
    getattr(func, _ATTR, None) or setattr(func, _ATTR, [])
    getattr(func, _ATTR).append(info)
    return func


def command(
    name: str | None = None,
    *,
    aliases: list[str] | tuple[str, ...] = (),
    help: str | None = None,
    admin: bool = False,
    power_level: int | None = None,
) -> Callable[[Handler], Handler]:
    """Declare a command handler ``async def f(self, ctx, arg: type, ...)``.

    Arguments are parsed from the handler's annotations (see :mod:`bot.plugin.commands` for the supported types);
    wrong or missing arguments are answered with the command's usage. ``admin=True`` restricts it to the bot's admins;
    ``power_level=N`` to users with at least that power level in the room.
    """

    def decorate(func: Handler) -> Handler:
        spec, access = _declared(func, name, aliases, help, admin)
        _attach(func, ("command", spec, access, power_level))
        func.subcommand = _subcommand_decorator(spec.name)  # type: ignore[attr-defined]
        return func

    return decorate


def _declared(
    func: Handler, name: str | None, aliases: Sequence[str], help: str | None, admin: bool
) -> tuple[CommandSpec, Access]:
    """The parsed signature and access rule of a command or subcommand handler."""
    spec = CommandSpec.from_function(func, name=name or func.__name__, aliases=aliases, help=help)
    return spec, Access.ADMIN if admin else Access.ANYONE


def _subcommand_decorator(parent: str) -> Callable[..., Callable[[Handler], Handler]]:
    def subcommand(
        name: str | None = None,
        *,
        aliases: list[str] | tuple[str, ...] = (),
        help: str | None = None,
        admin: bool = False,
        power_level: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare a subcommand of this command: ``!parent name args...``, with its own typed arguments and rules.

        The parent's ``admin``/``power_level`` apply to its subcommands too; a subcommand may add its own
        (``admin=True`` on ``!karma reset`` only). ``!parent`` with no matching subcommand runs the parent's handler.
        """

        def decorate(func: Handler) -> Handler:
            spec, access = _declared(func, name, aliases, help, admin)
            return _attach(func, ("subcommand", parent, spec, access, power_level))

        return decorate

    return subcommand


def on_message(
    pattern: str | re.Pattern[str] | None = None,
    flags: int = 0,
    *,
    config: str | None = None,
    commands: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare a passive handler ``async def f(self, ctx, match)`` for text messages matching ``pattern``.

    The pattern is searched (``re.search``) in the message as its author wrote it: the quoted reply fallback
    (``> <@bob:example.org> ...``) is stripped first, so quoting a message never triggers a handler.

    ``config="patterns"`` takes the patterns from the plugin's config option of that name instead (a regular
    expression or a list of them, checked when the config is loaded; the first that matches is passed as ``match``).

    Messages that run a command (``!karma top``) are not seen by passive handlers unless ``commands=True``.
    """
    if (pattern is None) == (config is None):
        raise TypeError("on_message(): give a pattern or config='<option>', not both or neither")
    compiled = re.compile(pattern, flags) if isinstance(pattern, str) else pattern

    def decorate(func: Handler) -> Handler:
        return _attach(func, ("message", compiled, config, flags, commands))

    return decorate


def on_event(event_type: type | str) -> Callable[[Handler], Handler]:
    """Declare a handler ``async def f(self, ctx)`` for every room event of ``event_type``.

    ``event_type`` is a nio event class (``nio.ReactionEvent``, ``nio.RoomMemberEvent``...) or a Matrix event type
    string (``"m.reaction"``); strings also match event types nio does not know.
    """

    def decorate(func: Handler) -> Handler:
        return _attach(func, ("event", event_type))

    return decorate


def every(seconds: float | str, *, run_at_start: bool = False) -> Callable[[Handler], Handler]:
    """Declare a scheduled task ``async def f(self)`` run every ``seconds`` while the plugin is loaded.

    ``seconds`` may name an option of the plugin's config instead (``@every("poll_interval")``), so operators can
    tune it; a period of 0 or less from the config disables the task.
    """
    if not isinstance(seconds, str) and seconds <= 0:
        raise ValueError("every(): seconds must be positive")

    def decorate(func: Handler) -> Handler:
        return _attach(func, ("every", seconds, run_at_start))

    return decorate


@dataclass
class Handlers:
    """Everything one plugin instance declared, bound to the instance."""

    commands: list[CommandHandler] = field(default_factory=list)
    messages: list[MessageHandler] = field(default_factory=list)
    events: list[EventHandler] = field(default_factory=list)
    tasks: list[ScheduledTask] = field(default_factory=list)


def check_config_patterns(cls: type[Plugin], config: Any) -> None:
    """Raise :class:`ConfigPatternError` if a passive handler of ``cls`` reads patterns from ``config`` and they are
    bad."""
    for attr in dir(cls):
        for info in getattr(getattr(cls, attr, None), _ATTR, None) or ():
            if info[0] == "message" and info[2] is not None:
                patterns_from_config(config, info[2], info[3])


def collect_handlers(plugin: Plugin) -> Handlers:
    """Bind and gather the decorated methods of ``plugin`` (its ``config`` must be set: patterns may come from it).

    Raises ValueError for patterns taken from the config that are missing or malformed.
    """
    found = Handlers()
    subs: dict[str, list[CommandHandler]] = {}
    for attr in dir(type(plugin)):
        func = getattr(type(plugin), attr, None)
        infos = getattr(func, _ATTR, None)
        if not infos:
            continue
        bound = getattr(plugin, attr)
        for info in infos:
            kind = info[0]
            if kind == "command":
                _, spec, access, level = info
                found.commands.append(CommandHandler(spec, bound, access, level))
            elif kind == "subcommand":
                _, parent, spec, access, level = info
                subs.setdefault(parent, []).append(CommandHandler(spec, bound, access, level))
            elif kind == "message":
                _, compiled, option, flags, commands = info
                patterns = (compiled,) if option is None else patterns_from_config(plugin.config, option, flags)
                found.messages.append(MessageHandler(patterns, bound, commands))
            elif kind == "event":
                found.events.append(EventHandler(info[1], bound))
            elif kind == "every":
                found.tasks.append(ScheduledTask(info[1], bound, info[2]))
    for index, cmd in enumerate(found.commands):
        children = subs.pop(cmd.spec.name, None)
        if children:
            children.sort(key=lambda c: c.spec.name)
            found.commands[index] = dataclasses.replace(cmd, subcommands=tuple(children))
    if subs:
        raise ValueError(f"subcommands of a command that does not exist: {', '.join(sorted(subs))}")
    return found


class Plugin:
    """Base class of every Ratchet plugin.

    Attributes set by the runtime before :meth:`start`:

    * ``name``: the plugin's name (its key under ``plugins:`` in the config);
    * ``config``: its options: an instance of the plugin's nested ``Config`` dataclass if it declares one
      (validated, defaults applied), else a read-only mapping;
    * ``storage``: its own database (:class:`~bot.storage.plugin_storage.BasePluginStorage`: key-value API, SQL,
      migrations), a SQLite file or a PostgreSQL schema depending on the bot's ``database``;
    * ``bot``: the :class:`~bot.plugin.api.BotAPI` facade (send messages, find DMs, who am I, the plugin manager);
    * ``log``: a logger named ``ratchet.plugin.<name>``;
    * ``metrics``: its own Prometheus metrics (:class:`~bot.metrics.PluginMetrics`), served at ``/metrics`` as
      ``ratchet_<name>_<metric>`` when the ``http`` listener is on.

    Class attributes a plugin may set:

    * ``migrations``: SQL scripts (or callables taking a ``sqlite3.Connection``) applied in order to its storage,
      each once; append new ones, never edit old ones.
    * ``reload_side_by_side``: see below (False for bridges).
    """

    name: str
    config: Any
    storage: BasePluginStorage
    bot: BotAPI
    log: logging.Logger
    metrics: PluginMetrics
    migrations: Sequence[str | Callable[..., None]] = ()
    #: On reload, start the new version beside the running one (no pause; both run for a moment). A plugin that
    #: must never run twice at once (one network connection, one listening port) sets False: it is stopped first and
    #: the events that arrive meanwhile are held for the new version.
    reload_side_by_side: ClassVar[bool] = True

    async def start(self) -> None:
        """Called once after loading; open resources here. An exception here unloads the plugin."""

    async def stop(self) -> None:
        """Called before unloading (shutdown or reload); release resources here."""
