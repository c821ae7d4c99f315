"""Routing: which loaded plugins' handlers want an event, run through the dispatcher with exactly-once bookkeeping.

Plain code: for a text message it strips the reply fallback, looks for ``<prefix><command>``, checks the command's
access rules and parses its typed arguments; passive ``on_message`` patterns and ``on_event`` types are matched next.
What runs for one event and one plugin becomes one dispatcher job on the lane ``(room, plugin)``, recorded as handled
in the runtime state in the same step as the handlers return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.content.mentions import UserResolver, mentioned_user_ids, pills, substitute_pills
from bot.errors import StateError, UsageError
from bot.matrix.events import Event, is_text_message
from bot.matrix.idempotency import scope_key, send_scope
from bot.plugin.base import Access, CommandHandler, Handlers, Plugin
from bot.plugin.commands import parse_invocation, strip_reply_fallback
from bot.plugin.context import Context
from bot.plugin.dispatch import Dispatcher, JobOutcome
from bot.plugin.options import RoomFilter

if TYPE_CHECKING:
    from bot.metrics import Metrics
    from bot.plugin.api import BotAPI
    from bot.storage.state import StateStore

__all__ = ["LoadedPlugin", "Router", "command_owner"]

log = logging.getLogger(__name__)

_UNPARSED: Any = object()


@dataclass
class LoadedPlugin:
    """A running plugin instance and what it declared."""

    name: str
    instance: Plugin
    handlers: Handlers
    rooms: RoomFilter = field(default_factory=RoomFilter)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)
    #: Dispatcher jobs of this instance not finished yet (drained before its storage is closed).
    jobs: set[asyncio.Future[JobOutcome]] = field(default_factory=set)

    def track(self, job: asyncio.Future[JobOutcome]) -> asyncio.Future[JobOutcome]:
        """Remember ``job`` until it finishes; returns it."""
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)
        return job


class Router:
    """Turns events into handler jobs for the loaded plugins (the host's ``plugins`` mapping, shared)."""

    def __init__(
        self,
        plugins: dict[str, LoadedPlugin],
        api: BotAPI,
        state: StateStore,
        dispatcher: Dispatcher,
        *,
        prefix: str,
        plaintext_commands: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.plugins = plugins
        #: Handler latency, failures and handled events are recorded here (served at ``/metrics``).
        self.metrics = metrics
        #: Whether commands sent unencrypted into an encrypted room run (``e2ee.plaintext_commands``).
        self.plaintext_commands = plaintext_commands
        self.api = api
        self.state = state
        self.dispatcher = dispatcher
        self.prefix = prefix
        # (event id, plugin) pairs submitted but not finished: the same event can reach route() twice before its
        # first handling is recorded (a late key and a restart retry, overlapping gap fills).
        self._inflight: set[tuple[str, str]] = set()
        #: Plugins being restarted (no version running): the events that arrive meanwhile, with the futures the
        #: runtime waits on before it commits their sync token.
        self._held: dict[str, list[tuple[str, Event, bool, asyncio.Future[JobOutcome]]]] = {}

    def hold(self, plugin: str) -> None:
        """Keep the events that arrive for ``plugin`` from now on until :meth:`release` (it is being restarted)."""
        self._held.setdefault(plugin, [])

    def release(self, plugin: str) -> None:
        """Route the events held for ``plugin`` to its loaded version (or drop them if it is not loaded)."""
        held = self._held.pop(plugin, [])
        loaded = self.plugins.get(plugin)
        for room_id, event, trusted, waiter in held:
            jobs = self._route_to(loaded, room_id, event, trusted) if loaded is not None else []
            if not jobs:
                waiter.set_result(JobOutcome("ok"))
                continue
            jobs[0].add_done_callback(lambda job, w=waiter: w.done() or w.set_result(job.result()))

    def route(self, room_id: str, event: Event, *, trusted: bool = True) -> list[asyncio.Future[JobOutcome]]:
        """Submit the jobs that handle ``event``; returns their futures (empty if nothing wants it)."""
        futures: list[asyncio.Future[JobOutcome]] = []
        invocation = self._invocation(room_id, event)
        for loaded in list(self.plugins.values()):
            futures += self._route_to(loaded, room_id, event, trusted, invocation)
        for plugin, held in self._held.items():
            if plugin not in self.plugins and not self.state.is_handled(event.event_id, plugin):
                waiter: asyncio.Future[JobOutcome] = asyncio.get_running_loop().create_future()
                held.append((room_id, event, trusted, waiter))
                futures.append(waiter)
        return futures

    def _route_to(
        self, loaded: LoadedPlugin, room_id: str, event: Event, trusted: bool, invocation: Any = _UNPARSED
    ) -> list[asyncio.Future[JobOutcome]]:
        """The job (at most one) that hands ``event`` to ``loaded``."""
        if invocation is _UNPARSED:
            invocation = self._invocation(room_id, event)
        if not loaded.rooms.permits(room_id):
            return []
        calls = self._calls_for(loaded, room_id, event, invocation, trusted)
        if not calls:
            return []
        if (event.event_id, loaded.name) in self._inflight or self.state.is_handled(event.event_id, loaded.name):
            log.debug("event %s already handled by %s", event.event_id, loaded.name)
            return []
        return [self._submit(loaded, room_id, event, calls, trusted=trusted)]

    def _invocation(self, room_id: str, event: Event) -> Any:
        """The command ``event`` invokes, if any."""
        invocation = None
        if is_text_message(event) and event.source.get("content", {}).get("msgtype") == "m.text":
            invocation = parse_invocation(strip_reply_fallback(event.body), self.prefix)
            if (
                invocation is not None
                and not self.plaintext_commands
                and not getattr(event, "decrypted", False)
                and self.api.room_encrypted(room_id)
            ):
                log.info(
                    "ignoring %s%s from %s in %s: sent unencrypted into an encrypted room (e2ee.plaintext_commands)",
                    self.prefix, invocation.name, event.sender, room_id,
                )
                invocation = None
        return invocation

    def _calls_for(
        self, loaded: LoadedPlugin, room_id: str, event: Event, invocation, trusted: bool
    ) -> list[tuple[str, Callable[[Context], Awaitable[Any]]]]:
        calls: list[tuple[str, Callable[[Context], Awaitable[Any]]]] = []
        h = loaded.handlers
        if invocation is not None:
            for cmd in h.commands:
                if invocation.name == cmd.spec.name or invocation.name in cmd.spec.aliases:
                    calls.append(self._command_or_subcommand(cmd, invocation.args))
        if h.messages and is_text_message(event) and not _is_edit(event):
            text = strip_reply_fallback(event.body)
            runs_command = invocation is not None and command_owner(self.plugins, invocation.name) is not None
            for handler in h.messages:
                if runs_command and not handler.commands:
                    continue
                match = handler.search(text)
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

    def _command_or_subcommand(
        self, cmd: CommandHandler, args: str
    ) -> tuple[str, Callable[[Context], Awaitable[Any]]]:
        """The call for ``!cmd args``: a subcommand if the first word names one, else the command itself."""
        if cmd.subcommands:
            word, _, rest = args.strip().partition(" ")
            sub = cmd.subcommand(word) if word else None
            if sub is not None:
                full = f"{cmd.spec.name} {sub.spec.name}"
                return f"command {full}", self._command_call(sub, rest, name=full, parents=(cmd,))
        return f"command {cmd.spec.name}", self._command_call(cmd, args, name=cmd.spec.name)

    async def _allowed(self, ctx: Context, cmd: CommandHandler, name: str) -> bool:
        """Check who may run ``cmd`` (shown as ``name``); answer and log a refusal."""
        if cmd.access is Access.ADMIN and not ctx.is_admin:
            log.info("denied %s%s to %s (admins only)", self.prefix, name, ctx.sender)
            await ctx.reply(f"⛔ {self.prefix}{name} is for the bot's admins only.", notice=True)
            return False
        if cmd.power_level is not None and ctx.power_level < cmd.power_level:
            log.info("denied %s%s to %s (power level)", self.prefix, name, ctx.sender)
            await ctx.reply(
                f"⛔ {self.prefix}{name} needs power level {cmd.power_level} in this room.",
                notice=True,
            )
            return False
        if (cmd.access is Access.ADMIN or cmd.power_level is not None) and not ctx.trusted:
            log.warning(
                "denied %s%s to %s: sent from a device the trust policy does not trust", self.prefix, name, ctx.sender
            )
            await ctx.reply(
                f"⛔ {self.prefix}{name} acts with authority, so it must come from one of your devices "
                "the bot trusts, in an encrypted room (verify this device with your other sessions).",
                notice=True,
            )
            return False
        return True

    def _mentions(self, ctx: Context, args: str) -> tuple[str, Callable[[str], str | None]]:
        """``args`` with pills replaced by user ids, and a resolver for display names and ``@localpart``."""
        content = ctx.content
        html = content.get("formatted_body") if content.get("format") == "org.matrix.custom.html" else None
        text = substitute_pills(args, pills(html)) if isinstance(html, str) else args
        mentioned = mentioned_user_ids(content)

        def resolve(name: str) -> str | None:
            return UserResolver(self.api.members(ctx.room_id), mentioned).resolve(name)

        return text, resolve

    def _command_call(
        self, cmd: CommandHandler, args: str, *, name: str, parents: tuple[CommandHandler, ...] = ()
    ) -> Callable[[Context], Awaitable[Any]]:
        async def call(ctx: Context) -> None:
            for rule in (*parents, cmd):
                if not await self._allowed(ctx, rule, name):
                    return
            # A subcommand's usage reads "!karma top [n]": its parents' names are part of its prefix.
            prefix = self.prefix + "".join(f"{parent.spec.name} " for parent in parents)
            text, resolve = args, None
            if any(p.kind == "user" for p in cmd.spec.params):
                text, resolve = self._mentions(ctx, args)
            try:
                kwargs = cmd.spec.parse(text, prefix, resolve_user=resolve)
            except UsageError as err:
                text = f"{err.message}\nUsage: {err.usage}"
                if cmd.subcommands:
                    text += "\nSubcommands: " + ", ".join(
                        f"{self.prefix}{cmd.spec.name} {sub.spec.usage('')}" for sub in cmd.subcommands
                    )
                await ctx.reply(text, notice=True)
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
            # Each send of this handling gets a transaction id derived from (event, plugin, n-th send): if a crash
            # comes before the handled-record below, the handlers run again and the homeserver dedupes their sends.
            with send_scope(scope_key(event.event_id, loaded.name)):
                for label, call in calls:
                    started = time.perf_counter()
                    status = await _isolated(loaded.name, label, call, ctx)
                    if metrics is not None:
                        metrics.handler_finished(loaded.name, label, status, time.perf_counter() - started)
                    if status == "error":
                        self.api.stats.handler_failed(loaded.name, label)
            # Recorded in the same step as the handler's return, with no await in between: a crash (kill -9) can
            # no longer fall between "the plugin finished" and "the framework knows" while the loop runs other work.
            with contextlib.suppress(StateError):  # the disk is full or read-only: the runtime stops the bot
                self.state.mark_handled(event.event_id, loaded.name)

        key = (event.event_id, loaded.name)
        self._inflight.add(key)
        metrics = self.metrics
        fut: asyncio.Future[JobOutcome] | None = None

        def finished(outcome: JobOutcome) -> None:
            # A handler that failed or timed out has had its turn: it is not retried after a restart (a poison
            # message must not hang the bot forever). Only jobs cut short by shutdown are left for redelivery.
            self._inflight.discard(key)
            if fut is not None:
                loaded.jobs.discard(fut)
            status = outcome.status
            if status not in ("cancelled", "ok"):
                with contextlib.suppress(StateError):
                    self.state.mark_handled(event.event_id, loaded.name)
                if status == "timeout":
                    if metrics is not None:
                        metrics.handler_finished(loaded.name, label, "timeout", outcome.seconds)
                    self.api.stats.handler_failed(loaded.name, label, "timeout")
            if status != "cancelled" and metrics is not None:
                metrics.handled(loaded.name)

        label = ", ".join(label for label, _ in calls)
        fut = self.dispatcher.submit((room_id, loaded.name), run, label, on_done=finished)
        if not fut.done():  # (a closed dispatcher answers at once)
            loaded.jobs.add(fut)
        return fut


def command_owner(
    plugins: Mapping[str, LoadedPlugin], name: str
) -> tuple[LoadedPlugin, CommandHandler] | None:
    """The loaded plugin and handler answering command ``name`` (a name or an alias), if any."""
    for loaded in plugins.values():
        for cmd in loaded.handlers.commands:
            if name == cmd.spec.name or name in cmd.spec.aliases:
                return loaded, cmd
    return None


def _is_edit(event: Event) -> bool:
    """An ``m.replace`` edit ("* new text"): passive handlers saw the original; ``@on_event`` handlers see edits."""
    relates = event.source.get("content", {}).get("m.relates_to")
    return isinstance(relates, dict) and relates.get("rel_type") == "m.replace"


def _bind(func: Callable[..., Awaitable[Any]], *extra: Any) -> Callable[[Context], Awaitable[Any]]:
    async def call(ctx: Context) -> Any:
        return await func(ctx, *extra)

    return call


async def _isolated(
    plugin: str, label: str, call: Callable[[Context], Awaitable[Any]], ctx: Context
) -> str:
    """Run one handler; an exception is logged and answered briefly (for commands), never propagated.

    Returns ``ok`` or ``error``.
    """
    try:
        await call(ctx)
        return "ok"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("plugin %s: %s raised on %s", plugin, label, ctx.event_id, exc_info=exc)
        if label.startswith("command "):
            try:
                await ctx.reply(f"⚠️ {label} failed ({exc.__class__.__name__}); the error was logged.", notice=True)
            except Exception:
                log.warning("plugin %s: could not report the error in %s", plugin, ctx.room_id)
        return "error"
