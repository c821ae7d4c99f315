"""The bridge core: a :class:`Bridge` is a :class:`~bot.plugin.base.Plugin` that relays between Matrix rooms and the
channels of a remote network.

A bridge subclass adds its connections in ``start()`` (after ``await super().start()``) and may override a few
hooks; the core does the rest:

* **portals**: room <-> remote channel links, from the config (:meth:`Bridge.sync_config_portals`) or made by admins
  with ``!bridge link`` / ``!bridge unlink``, kept in the plugin's own storage;
* **Matrix -> remote**: every message (text, emote, notice, media, edit, reply), reaction and redaction in a portal
  room is turned into :class:`~bot.bridge.model.RemoteSend` items (:meth:`Bridge.format_outgoing`) and queued on the
  network's :class:`~bot.bridge.connection.ConnectionSupervisor`; what the network lacks is degraded (an edit becomes
  ``s/old/new/`` or ``* corrected: ...``, a reply quotes the original's first words with its author's name, a file
  becomes ``sent a file: name (size)``);
* **remote -> Matrix**: connections :meth:`~bot.bridge.connection.RemoteConnection.deliver` messages; they are posted
  one at a time, in order, through the :class:`~bot.bridge.matrix.MatrixSide` (the relay: as the bot, with the remote
  sender's name), with mentions turned into pills and remote replies/edits/redactions mapped to Matrix events;
* **ghost mode** (the bot runs as an appservice with a ``ghost_prefix``, and ``ghosts`` is on): each remote user posts
  as their own ghost (:class:`~bot.bridge.matrix.GhostMatrixSide`, :mod:`bot.bridge.ghosts`); remote joins, parts,
  quits, kicks, bans and renames become the ghost's memberships and display name; a Matrix reply to a ghost reaches
  the remote side addressed to the ghost's current name (``ghost_reply_template``); a Matrix kick or ban of a ghost
  is handed to :meth:`Bridge.on_ghost_removed`;
* **no echoes, no loops**: the bot's own Matrix messages never reach plugins; messages other bridges posted carry a
  marker and are not relayed; the connection's :meth:`~bot.bridge.connection.RemoteConnection.is_own` drops the
  bridge's own remote messages;
* **the message map** (Matrix event id <-> remote id) in memory, its ids also in storage for ``retention_days``;
* **the outgoing queue kept on disk**: each Matrix message is stored (encrypted under the bot's ``pickle_key``)
  before its handler returns, with how many of its lines were sent, until the network took its last line; after a
  restart what is left is sent first, once, in order (kept at most ``retention_days``);
* ``!bridge status|link|unlink`` for the bot's admins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal
from uuid import uuid4

from bot.bridge.connection import SENDER_GONE, ConnectionSupervisor, InboundRefused, Outgoing, RemoteConnection
from bot.bridge.flow import Backoff, SenderLimiter, TokenBucket
from bot.bridge.ghosts import GhostIdentity, GhostNames, escape_localpart, ghost_display_name, membership_action
from bot.bridge.matrix import GhostMatrixSide, MatrixSide, RelayFormat, RelayMatrixSide
from bot.bridge.messages import MappedMessage, MessageMap
from bot.bridge.model import (
    BRIDGE_MARKER,
    MatrixMessage,
    Portal,
    RemoteMessage,
    RemoteSend,
    matrix_message_from_event,
)
from bot.bridge.relay_text import (
    apply_sed,
    check_template,
    edit_fallback,
    link_mentions,
    media_text,
    parse_sed,
    reaction_fallback,
    reply_fallback,
    sanitize_name,
)
from bot.bridge.rich_text import html_to_plain
from bot.errors import MatrixError, StorageError
from bot.matrix.idempotency import send_scope
from bot.plugin.base import Plugin, command, every, on_event
from bot.plugin.commands import Rest, parse_invocation
from bot.plugin.context import Context

__all__ = ["Bridge", "BridgeConfig"]

#: How long after a message a remote ``s/old/new/`` may still correct it (seconds).
SED_WINDOW = 3600.0
#: Attempts (with 1, 2, 4... s between them) to post a remote message into Matrix before giving up on it.
MATRIX_ATTEMPTS = 4

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ratchet_bridge_portal (
        network TEXT NOT NULL,
        channel TEXT NOT NULL,
        room_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        created_by TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (network, channel)
    )""",
    "CREATE INDEX IF NOT EXISTS ratchet_bridge_portal_room ON ratchet_bridge_portal (room_id)",
    """CREATE TABLE IF NOT EXISTS ratchet_bridge_message (
        event_id TEXT PRIMARY KEY,
        room_id TEXT NOT NULL,
        network TEXT NOT NULL,
        channel TEXT NOT NULL,
        remote_id TEXT,
        sender TEXT NOT NULL,
        sender_name TEXT NOT NULL,
        direction TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ratchet_bridge_message_remote ON ratchet_bridge_message (network, channel, remote_id)",
    "CREATE INDEX IF NOT EXISTS ratchet_bridge_message_time ON ratchet_bridge_message (created_at)",
    # The outgoing queue: one row per message (its items encrypted at rest) until the network took all of them; then
    # only its event id and channel (``relayed``, as the message map keeps them), so a replayed handler sends nothing.
    """CREATE TABLE IF NOT EXISTS ratchet_bridge_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        network TEXT NOT NULL,
        relayed TEXT,
        created_at REAL NOT NULL,
        sent INTEGER NOT NULL DEFAULT 0,
        done INTEGER NOT NULL DEFAULT 0,
        items TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ratchet_bridge_outbox_relayed ON ratchet_bridge_outbox (network, relayed)",
    # Ghost mode: which remote user (folded name) has which ghost, kept across restarts (a renamed user keeps theirs).
    """CREATE TABLE IF NOT EXISTS ratchet_bridge_ghost (
        network TEXT NOT NULL,
        name TEXT NOT NULL,
        localpart TEXT NOT NULL,
        PRIMARY KEY (network, name)
    )""",
)


#: The bridges running now, by storage (its file or schema: ``storage.location``). A reload starts the new version
#: while the old one still runs: the new one takes over the stored queue only once the old one has stopped (and saved
#: how far it got).
_RUNNING: dict[str, list[Bridge]] = {}


@dataclass(frozen=True)
class BridgeConfig:
    """Options every bridge has; a bridge's ``Config`` derives from it (``class Config(BridgeConfig): ...``).

    Templates: ``{name}`` is who wrote the message, ``{text}`` the text; in Matrix templates ``**...**`` is bold. The
    reply template (for networks without replies) also has ``{nick}`` (the original's author) and ``{quote}`` (its
    first words).
    """

    #: How a remote message shows in Matrix (posted by the bot).
    matrix_template: str = "**{name}**: {text}"
    #: How a remote action (``/me waves``) shows in Matrix.
    matrix_action_template: str = "* **{name}** {text}"
    #: How a Matrix message shows on the remote network (each line, on line-based networks).
    remote_template: str = "<{name}> {text}"
    #: How a Matrix emote shows on the remote network.
    remote_action_template: str = "* {name} {text}"
    #: A Matrix reply, on networks without replies.
    reply_template: str = "{text} (re @{nick}: {quote})"
    #: Relay Matrix reactions as a short line on networks without reactions.
    relay_reactions: bool = True
    #: Relay Matrix messages that are commands of the bot's plugins (``!bridge status``...).
    relay_commands: bool = False
    #: A remote ``s/old/new/`` (on networks without edits) edits the sender's last relayed message instead.
    sed_edits: bool = True
    #: Room members one remote message may mention (pills and ``m.mentions``); further names stay plain text.
    max_mentions: int = 10
    #: Outgoing messages kept per network while it is unreachable (the oldest are dropped beyond it).
    queue_size: int = 1000
    #: Messages per second sent to a network (0: no limit), and how many may go at once after a pause.
    rate_limit: float = 1.0
    rate_burst: int = 5
    #: Messages per second one remote sender may have posted into Matrix (0: no limit), and how many at once after a
    #: pause; beyond it their messages are dropped, with one notice in the room and one warning logged per flood.
    sender_rate_limit: float = 1.0
    sender_rate_burst: int = 10
    #: Remote messages waiting to be posted into Matrix; beyond it new ones are refused (and logged).
    inbound_queue_size: int = 1000
    #: Reconnection delays (exponential with jitter between the two).
    reconnect_min_delay: float = 1.0
    reconnect_max_delay: float = 120.0
    #: How long the message map's ids are kept in storage (days).
    retention_days: float = 30.0
    #: Ghost mode: when the bot runs as an appservice with a ``ghost_prefix``, remote users post as their own ghosts
    #: (false: relay as the bot even then).
    ghosts: bool = True
    #: Ghost mode: a ghost's display name (``{name}``: the remote name; ``"{name} (IRC)"``...).
    ghost_display_template: str = "{name}"
    #: Ghost mode: a Matrix reply to a ghost's message, on networks without replies (``{nick}``: the ghost's current
    #: remote name).
    ghost_reply_template: str = "{nick}: {text}"
    #: Ghost mode: at most this many ghosts join (or leave) a room when a channel's member list arrives (IRC NAMES);
    #: the others join when they speak or join (no flood of joins on the homeserver).
    ghost_sync_limit: int = 50

    def __post_init__(self) -> None:
        for name in ("matrix_template", "matrix_action_template", "remote_template", "remote_action_template"):
            check_template(getattr(self, name), ("name", "text"))
        check_template(self.reply_template, ("text", "nick", "quote"), required=("text",))
        check_template(self.ghost_display_template, ("name",), required=("name",))
        check_template(self.ghost_reply_template, ("text", "nick"), required=("text",))
        if self.ghost_sync_limit < 0:
            raise ValueError("ghost_sync_limit must be 0 or more")
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if self.rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if self.max_mentions < 0:
            raise ValueError("max_mentions must be 0 or more")
        if self.sender_rate_burst < 1:
            raise ValueError("sender_rate_burst must be at least 1")
        if self.inbound_queue_size < 1:
            raise ValueError("inbound_queue_size must be at least 1")
        if not 0 < self.reconnect_min_delay <= self.reconnect_max_delay:
            raise ValueError("need 0 < reconnect_min_delay <= reconnect_max_delay")


@dataclass(eq=False)
class PendingLink:
    """A config link whose room does not resolve (or cannot be joined) yet: retried until it does."""

    network: str
    channel: str
    #: The room as the config names it (an alias, or a room id).
    room: str
    #: Why the last attempt failed.
    problem: str
    attempts: int = 0
    #: When the next attempt starts (a timestamp).
    next_attempt: float | None = None

    def describe(self, now: float | None = None) -> str:
        """``retrying (3 attempts, next in 40s): cannot resolve ...``"""
        now = time.time() if now is None else now
        parts = [f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"] if self.attempts else []
        if self.next_attempt is not None:
            parts.append(f"next in {max(0, int(self.next_attempt - now))}s")
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"retrying{detail}: {self.problem}"


class Bridge(Plugin):
    """Base class of relay bridges (see the module docstring). Subclass it like a plugin.

    Class attributes a bridge may set: ``command_name`` (default ``bridge``; two bridges on one bot need different
    ones) and ``command_aliases``.
    """

    #: A bridge holds one connection per network (one nick on IRC, one listening port for webhooks): on reload the
    #: old version stops first and the events that arrive meanwhile are held for the new one.
    reload_side_by_side = False

    command_name: ClassVar[str] = "bridge"
    command_aliases: ClassVar[tuple[str, ...]] = ()
    #: How many recent messages the in-memory message map keeps.
    message_map_size: ClassVar[int] = 5000

    config: BridgeConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

        async def bridge_command(
            self: Bridge,
            ctx: Context,
            action: Literal["status", "link", "unlink"] = "status",
            target: Rest | None = None,
        ) -> None:
            await self.handle_bridge_command(ctx, action, str(target or "").strip())

        bridge_command.__qualname__ = f"{cls.__qualname__}.bridge_command"
        cls.bridge_command = command(  # type: ignore[attr-defined]
            cls.command_name,
            aliases=list(cls.command_aliases),
            admin=True,
            help=f"Bridge: {cls.command_name} status | link [network] <channel> | unlink [channel] (admins)",
        )(bridge_command)

    def __init__(self) -> None:
        self.portals: dict[tuple[str, str], Portal] = {}
        self.supervisors: dict[str, ConnectionSupervisor] = {}
        self.messages = MessageMap(self.message_map_size)
        self.matrix: MatrixSide | None = None
        self._inbound: asyncio.Queue[tuple[RemoteMessage, asyncio.Future[str | None]]] = asyncio.Queue()
        self._inbound_task: asyncio.Task[None] | None = None
        self._senders: SenderLimiter[tuple[str, str]] = SenderLimiter(0, 1)
        #: Remote messages not posted because the inbound queue was full (the sender floods: ``_senders.dropped``).
        self.inbound_refused = 0
        self._inbound_full = False
        #: Outgoing messages kept from before the restart, by network, until their connection is added.
        self._restored: dict[str, list[Outgoing]] = {}
        self._outbox_lock = asyncio.Lock()
        self._outbox_plain_warned = False
        self._handover: asyncio.Task[None] | None = None
        self._stopped = False
        #: The room (id or alias, as written) of each config link, by (network, channel): what status shows.
        self._config_rooms: dict[tuple[str, str], str] = {}
        #: Config links whose room does not resolve (or cannot be joined) yet, retried in the background.
        self.pending_links: dict[tuple[str, str], PendingLink] = {}
        self._link_retries: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Ghost mode: remote user -> ghost, per network.
        self.ghost_names: dict[str, GhostNames] = {}
        self._ghosts_unsaved: list[tuple[str, str, str]] = []

    # ============================================================================================ life cycle

    async def start(self) -> None:
        """Create the bridge's tables, load the portals, start posting remote messages. Subclasses call this first,
        then add their connections (:meth:`add_connection`) and config portals (:meth:`sync_config_portals`)."""

        def schema(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                conn.execute(statement)

        await self.storage.transaction(schema)
        self.matrix = self.make_matrix_side()
        rows = await self.storage.fetchall(
            "SELECT network, channel, room_id, origin, created_by, created_at FROM ratchet_bridge_portal"
        )
        self.portals = {(r[0], r[1]): Portal(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}
        if self.matrix.ghosts:
            for network, name, localpart in await self.storage.fetchall(
                "SELECT network, name, localpart FROM ratchet_bridge_ghost"
            ):
                self._ghost_names(network).load([(name, localpart)])
        running = _RUNNING.setdefault(self.storage.location, [])
        running[:] = [b for b in running if not b._retired()]
        previous = list(running)
        running.append(self)
        if previous:  # a reload: the old version still sends its queue
            self._handover = asyncio.create_task(self._take_over(previous), name=f"{self.name} outbox handover")
        else:
            self._restored = await self._load_outbox()
        self._senders = SenderLimiter(self.config.sender_rate_limit, self.config.sender_rate_burst)
        self._inbound_task = asyncio.create_task(self._inbound_loop(), name=f"{self.name} inbound")

    async def stop(self) -> None:
        """Stop every connection and the posting of remote messages. Subclasses call this last."""
        retries = list(self._link_retries.values())
        self._link_retries.clear()
        for task in retries:
            task.cancel()
        for task in retries:
            with contextlib.suppress(BaseException):
                await task
        if self._handover is not None:
            self._handover.cancel()
            with contextlib.suppress(BaseException):
                await self._handover
        for supervisor in list(self.supervisors.values()):
            await supervisor.stop()
        self._stopped = True
        running = _RUNNING.get(self.storage.location, [])
        if self in running:
            running.remove(self)
        if self._inbound_task is not None:
            self._inbound_task.cancel()
            with contextlib.suppress(BaseException):
                await self._inbound_task
        while not self._inbound.empty():
            _, fut = self._inbound.get_nowait()
            if not fut.done():
                fut.set_result(None)

    def make_matrix_side(self) -> MatrixSide:
        """The :class:`~bot.bridge.matrix.MatrixSide` to post with: ghosts (:class:`GhostMatrixSide`) when
        :meth:`ghost_mode` says so, else the relay."""
        relay_format = RelayFormat(self.config.matrix_template, self.config.matrix_action_template)
        if self.ghost_mode():
            self.log.info("ghost mode: remote users post as the appservice's ghosts")
            return GhostMatrixSide(self.bot, self.ghost_identity, relay_format)
        return RelayMatrixSide(self.bot, relay_format)

    def ghost_mode(self) -> bool:
        """True when remote users become ghosts: the ``ghosts`` option is on and the bot runs as an appservice with
        a ``ghost_prefix`` (docs/appservice.md). Otherwise the bridge relays as the bot."""
        appservice = getattr(self.bot, "appservice", None)
        namespaces = getattr(appservice, "namespaces", None)
        return bool(self.config.ghosts and getattr(namespaces, "ghost_prefix", None))

    # ============================================================================================ ghosts

    def sender_key(self, network: str, sender_id: str) -> str:
        """The identity of a remote name, for telling users apart (IRC: case-insensitive). Default: casefolded."""
        return sender_id.casefold()

    def ghost_localpart(self, network: str, name: str) -> str:
        """The localpart (after the appservice's ``ghost_prefix``) of the ghost for the remote user ``name``
        (folded by :meth:`sender_key`). Default: the name escaped (:func:`~bot.bridge.ghosts.escape_localpart`)."""
        return escape_localpart(name)

    def ghost_identity(self, message: RemoteMessage) -> GhostIdentity | None:
        """Which ghost posts ``message`` in ghost mode (None: the bot posts it, as the relay does). Default: the
        remote sender's ghost, with the display name from ``ghost_display_template``; anonymous messages and those
        without a sender are posted by the bot. A bridge overrides it for ghosts of its own (a webhook per hook)."""
        if message.anonymous or not message.sender_id:
            return None
        localpart, new = self._ghost_names(message.network).ghost_for(message.sender_id)
        if new:
            self._ghosts_unsaved.append((message.network, self.sender_key(message.network, message.sender_id),
                                         localpart))
        return GhostIdentity(localpart, ghost_display_name(self.config.ghost_display_template, message.sender_name))

    def _ghost_names(self, network: str) -> GhostNames:
        names = self.ghost_names.get(network)
        if names is None:
            names = self.ghost_names[network] = GhostNames(
                derive=lambda folded: self.ghost_localpart(network, folded),
                key=lambda name: self.sender_key(network, name),
            )
        return names

    async def _ghost_assign(self, network: str, name: str) -> str:
        """The localpart of ``name``'s ghost, stored when new."""
        localpart, new = self._ghost_names(network).ghost_for(name)
        if new:
            self._ghosts_unsaved.append((network, self.sender_key(network, name), localpart))
        await self._ghost_save()
        return localpart

    async def _ghost_save(self) -> None:
        """Store the ghosts given out since the last call."""
        rows, self._ghosts_unsaved = self._ghosts_unsaved, []
        if rows:
            await self.storage.executemany(
                "INSERT INTO ratchet_bridge_ghost (network, name, localpart) VALUES (?, ?, ?) ON CONFLICT"
                " (network, name) DO UPDATE SET localpart = excluded.localpart",
                rows,
            )

    async def _ghost_forget(self, network: str, name: str) -> None:
        if self._ghost_names(network).forget(name) is not None:
            await self.storage.execute("DELETE FROM ratchet_bridge_ghost WHERE network = ? AND name = ?",
                                       (network, self.sender_key(network, name)))

    async def _ghost_membership(self, portal: Portal, message: RemoteMessage) -> str | None:
        """A remote membership change in ghost mode: the sender's ghost joins, leaves, is kicked or banned, or is
        renamed; a channel's member list joins (and removes) ghosts, at most ``ghost_sync_limit`` at a time."""
        side = self.matrix
        assert isinstance(side, GhostMatrixSide)
        network, room_id = portal.network, portal.room_id
        action = membership_action(message.kind, ban=bool(message.extra.get("ban")))
        reason = message.extra.get("reason") if isinstance(message.extra.get("reason"), str) else None
        try:
            if action == "sync":
                members = message.extra.get("members")
                await self._ghost_sync(portal, [m for m in members or () if isinstance(m, str)])
                return None
            if action == "rename":
                new = message.extra.get("new_name")
                if not isinstance(new, str) or not new:
                    return None
                localpart = self._ghost_names(network).rename(message.sender_id, new)
                if localpart is None:
                    return None
                await self.storage.execute("DELETE FROM ratchet_bridge_ghost WHERE network = ? AND name = ?",
                                           (network, self.sender_key(network, message.sender_id)))
                await self.storage.execute(
                    "INSERT INTO ratchet_bridge_ghost (network, name, localpart) VALUES (?, ?, ?) ON CONFLICT"
                    " (network, name) DO UPDATE SET localpart = excluded.localpart",
                    (network, self.sender_key(network, new), localpart),
                )
                display = ghost_display_name(self.config.ghost_display_template, new)
                await side.ready_ghost(GhostIdentity(localpart, display))
                self.log.info("%s: %s is now %s; their ghost %s is renamed", network, message.sender_id, new,
                              localpart)
                return None
            if action == "join":
                await self._ghost_assign(network, message.sender_id)
                identity = self.ghost_identity(message)
                if identity is not None:
                    await side.ghost_join(room_id, identity)
                return None
            localpart = self._ghost_names(network).lookup(message.sender_id)
            if localpart is None:
                return None  # never had a ghost: nothing to remove
            if action == "leave":
                await side.ghost_leave(room_id, localpart, reason)
                if message.kind == "quit" and message.extra.get("last", True):
                    await self._ghost_forget(network, message.sender_id)
            elif action in ("kick", "ban"):
                by = message.extra.get("by") or "someone"
                verb = "banned" if action == "ban" else "kicked"
                text = f"{verb} on {network} by {by}" + (f": {reason}" if reason else "")
                await side.ghost_kick(room_id, localpart, text, ban=action == "ban")
        except MatrixError as exc:
            self.log.warning("%s %s: the ghost of %s could not %s: %s", network, portal.channel, message.sender_id,
                             action, exc)
        return None

    async def _ghost_sync(self, portal: Portal, members: list[str]) -> None:
        """A channel's member list (IRC NAMES): ghosts of members not in the room join, and ghosts of this network
        in the room that are no longer in the channel leave; at most ``ghost_sync_limit`` changes."""
        side = self.matrix
        assert isinstance(side, GhostMatrixSide)
        network, room_id = portal.network, portal.room_id
        limit, changes, skipped = self.config.ghost_sync_limit, 0, 0
        present: set[str] = set()
        for name in members:
            localpart = self._ghost_names(network).lookup(name)
            if localpart is not None:
                present.add(localpart)
            if changes >= limit:
                skipped += 1
                continue
            localpart = await self._ghost_assign(network, name)
            present.add(localpart)
            if side.is_member(room_id, side.ghost_user_id(localpart)):
                continue
            identity = GhostIdentity(localpart, ghost_display_name(self.config.ghost_display_template, name))
            try:
                if await side.ghost_join(room_id, identity):
                    changes += 1
            except MatrixError as exc:  # banned from the room, say: the others still join
                self.log.info("%s %s: the ghost of %s cannot join %s: %s", network, portal.channel, name, room_id, exc)
        if len(self.portals_for_room(room_id)) == 1:  # a room with one channel: its ghosts are that channel's
            names = self._ghost_names(network)
            for user_id in list(side.members(room_id)):
                localpart = side.ghost_localpart_of(user_id)
                if localpart is None or localpart in present or names.holder(localpart) is None:
                    continue
                if changes >= limit:
                    skipped += 1
                    continue
                try:
                    if await side.ghost_leave(room_id, localpart, f"not in {portal.channel} any more"):
                        changes += 1
                except MatrixError as exc:
                    self.log.info("%s %s: the ghost %s cannot leave %s: %s", network, portal.channel, localpart,
                                  room_id, exc)
        if skipped:
            self.log.info("%s %s: %d member changes left for later (ghost_sync_limit %d): those ghosts join when "
                          "their users speak or join", network, portal.channel, skipped, limit)

    async def on_ghost_removed(self, portal: Portal, sender_id: str, by: str, reason: str | None,
                               *, ban: bool) -> None:
        """A Matrix member kicked (``ban``: banned) the ghost of the remote user ``sender_id`` from ``portal``'s room.
        Default: nothing; a bridge maps it where it can (IRC: KICK, or a notice when the bridge is not an operator)."""

    def add_connection(
        self,
        connection: RemoteConnection,
        *,
        rate_limit: float | None = None,
        rate_burst: int | None = None,
        max_attempts: int | None = None,
        connect_timeout: float = 30.0,
    ) -> ConnectionSupervisor:
        """Supervise ``connection`` (one per network name) and start connecting; returns its supervisor."""
        if connection.network in self.supervisors:
            raise ValueError(f"{self.name}: a connection named {connection.network!r} already exists")
        cfg = self.config
        connection.attach(self._submit_inbound)
        supervisor = ConnectionSupervisor(
            connection,
            backoff=Backoff(cfg.reconnect_min_delay, cfg.reconnect_max_delay),
            bucket=TokenBucket(cfg.rate_limit if rate_limit is None else rate_limit,
                               cfg.rate_burst if rate_burst is None else rate_burst),
            queue_size=cfg.queue_size,
            connect_timeout=connect_timeout,
            max_attempts=max_attempts,
            on_sent=self._sent,
            on_progress=self._outbox_progress,
            cut_notice=self.cut_notice,
        )
        self.supervisors[connection.network] = supervisor
        if self._handover is not None and not self._handover.done():
            supervisor.hold()  # until the previous version has stopped and its queue is known
        kept = self._restored.pop(connection.network, [])
        if kept:
            self.log.info("%s: %d messages queued before the restart are sent first", connection.network, len(kept))
            supervisor.restore(kept)
        supervisor.start()
        return supervisor

    # ============================================================================================ outgoing queue

    @property
    def _outbox_purpose(self) -> str:
        return f"{self.name}.outbox"

    def _retired(self) -> bool:
        return self._stopped or self.storage.closed

    async def _take_over(self, previous: list[Bridge]) -> None:
        """After a reload: once the previous versions have stopped, send what they left in the queue first."""
        kept: dict[str, list[Outgoing]] = {}
        try:
            # Polled: a version whose start() failed is retired by closing its storage, which sets no event.
            while not all(b._retired() for b in previous):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            async with self._outbox_lock:
                own = {m.key for s in self.supervisors.values() for m in s.queue if m.key is not None}
                kept = await self._load_outbox(exclude=own)
        finally:
            for network, supervisor in self.supervisors.items():
                restored = kept.pop(network, [])
                if restored:
                    self.log.info("%s: %d messages the previous version queued are sent first", network,
                                  len(restored))
                supervisor.restore(restored)
            self._restored = kept

    async def _load_outbox(self, exclude: frozenset[int] | set[int] = frozenset()) -> dict[str, list[Outgoing]]:
        """The stored outgoing messages by network, in order. Those older than the retention period are dropped; one
        of them that was cut short (its first lines sent) leaves its :meth:`cut_notice` in its place."""
        cutoff = time.time() - self.config.retention_days * 86400
        await self.storage.execute("DELETE FROM ratchet_bridge_outbox WHERE created_at < ? AND done = 1", (cutoff,))
        rows = await self.storage.fetchall(
            "SELECT id, network, created_at, sent, items FROM ratchet_bridge_outbox WHERE done = 0 ORDER BY id"
        )
        kept: dict[str, list[Outgoing]] = {}
        unreadable, expired = [], []
        for key, network, created_at, sent, data in rows:
            if key in exclude:
                continue
            try:
                items = tuple(RemoteSend(**fields) for fields in json.loads(self._outbox_open(data)))
            except (StorageError, ValueError, TypeError) as exc:
                self.log.debug("queued message %s does not load: %s", key, exc)
                unreadable.append((key,))
                continue
            message = Outgoing(items, int(sent), key, float(created_at))
            if message.created_at < cutoff:
                expired.append((key,))
                notice = self.cut_notice(message) if 0 < message.sent < len(items) else None
                if notice is not None:
                    kept.setdefault(network, []).append(Outgoing((notice,)))
                continue
            kept.setdefault(network, []).append(message)
        if expired:
            self.log.warning("%d queued outgoing messages older than %g days were dropped unsent",
                             len(expired), self.config.retention_days)
            await self.storage.executemany("DELETE FROM ratchet_bridge_outbox WHERE id = ?", expired)
        if unreadable:
            self.log.error("%d queued outgoing messages cannot be read (was pickle_key changed?); they are dropped",
                           len(unreadable))
            await self.storage.executemany("DELETE FROM ratchet_bridge_outbox WHERE id = ?", unreadable)
        return kept

    def _outbox_seal(self, items: list[RemoteSend]) -> str | None:
        plain = json.dumps([dataclasses.asdict(item) for item in items], ensure_ascii=False, separators=(",", ":"))
        try:
            return "enc:" + self.bot.encrypt_at_rest(self._outbox_purpose, plain)
        except (StorageError, AttributeError) as exc:
            if not self._outbox_plain_warned:
                self._outbox_plain_warned = True
                self.log.warning("the outgoing queue is kept in memory only: %s", exc)
            return None

    def _outbox_open(self, data: str) -> str:
        if not data.startswith("enc:"):
            raise StorageError("not an encrypted queue entry")
        return self.bot.decrypt_at_rest(self._outbox_purpose, data[4:])

    async def queue_remote(self, supervisor: ConnectionSupervisor, items: list[RemoteSend]) -> Outgoing | None:
        """Queue one message (``items``, sent in order) on ``supervisor``: stored first (encrypted), so that it is
        sent after a restart if the network has not taken it by then. A Matrix event already queued or relayed to
        that channel (a handler run again after a crash) is not queued again: returns None."""
        if not items:
            return None
        sealed = self._outbox_seal(items)
        first = items[0]
        relayed = f"{first.event_id}\n{first.channel}" if first.event_id else None
        async with self._outbox_lock:  # rows in the order of the queue
            key = None
            if sealed is not None:
                network, now = supervisor.network, time.time()

                def insert(conn: sqlite3.Connection) -> int | None:
                    if relayed is not None and conn.execute(
                        "SELECT 1 FROM ratchet_bridge_outbox WHERE network = ? AND relayed = ?", (network, relayed)
                    ).fetchone():
                        return None
                    row = conn.execute(
                        "INSERT INTO ratchet_bridge_outbox (network, relayed, created_at, sent, items)"
                        " VALUES (?, ?, ?, 0, ?) RETURNING id",
                        (network, relayed, now, sealed),
                    ).fetchone()
                    return int(row[0])

                key = await self.storage.transaction(insert)
                if key is None:
                    self.log.info("%s: %s was already relayed; not sending it again", network, first.event_id)
                    return None
            return supervisor.submit_message(items, key=key)

    async def _outbox_progress(self, message: Outgoing) -> None:
        if message.key is None or self.storage.closed:
            return
        if message.done:  # forget the text; keep the event id (until the retention period) against replays
            await self.storage.execute(
                "UPDATE ratchet_bridge_outbox SET done = 1, sent = ?, items = '' WHERE id = ?",
                (message.sent, message.key),
            )
        else:
            await self.storage.execute(
                "UPDATE ratchet_bridge_outbox SET sent = ? WHERE id = ?", (message.sent, message.key)
            )

    def cut_notice(self, message: Outgoing) -> RemoteSend | None:
        """What to send in place of a message cut short (its first items were sent, the rest dropped): by default
        ``<name> […] (N more lines not sent)`` with ``remote_template``. Return None to send nothing."""
        first = message.items[0]
        left = message.left
        text = f"[…] ({left} more line{'s' if left != 1 else ''} not sent)"
        return RemoteSend(
            first.channel, self.config.remote_template.format(name=first.sender_name or "", text=text),
            room_id=first.room_id, sender=first.sender, sender_name=first.sender_name, first=False,
        )

    # ============================================================================================ portals

    def portals_for_room(self, room_id: str) -> list[Portal]:
        """The portals of a room (a room may be linked to several channels)."""
        return [p for p in self.portals.values() if p.room_id == room_id]

    def portals_for_network(self, network: str) -> list[Portal]:
        return [p for p in self.portals.values() if p.network == network]

    async def add_portal(self, portal: Portal) -> Portal:
        """Store a portal (replacing one for the same channel) and tell the subclass (:meth:`on_portal_linked`)."""
        await self.storage.execute(
            "INSERT INTO ratchet_bridge_portal (network, channel, room_id, origin, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (network, channel) DO UPDATE SET room_id = excluded.room_id,"
            " origin = excluded.origin, created_by = excluded.created_by, created_at = excluded.created_at",
            (portal.network, portal.channel, portal.room_id, portal.origin, portal.created_by, portal.created_at),
        )
        self.portals[portal.key] = portal
        await self.on_portal_linked(portal)
        return portal

    async def remove_portal(self, portal: Portal) -> None:
        await self.storage.execute(
            "DELETE FROM ratchet_bridge_portal WHERE network = ? AND channel = ?", (portal.network, portal.channel)
        )
        self.portals.pop(portal.key, None)
        await self.on_portal_unlinked(portal)

    async def sync_config_portals(self, network: str, links: dict[str, str]) -> list[Portal]:
        """Make the config's links (remote channel -> room id or alias) the ``config`` portals of ``network``.

        Aliases are resolved and the rooms joined if needed; config portals no longer in the config are removed.
        A link whose room cannot be resolved or joined yet (an alias not created yet, a room the bot is not invited
        to yet, the homeserver unreachable) is logged and retried in the background with the reconnection backoff
        (``reconnect_min_delay`` .. ``reconnect_max_delay``) until it works; meanwhile a portal stored for that
        channel before is kept, never dropped because of the failure. Returns the portals made now.
        """
        assert self.matrix is not None
        wanted: dict[str, str] = {}
        waiting: dict[str, tuple[str, str]] = {}
        listed = {self.normalize_channel(network, channel) for channel in links}
        for key in [k for k in {*self._config_rooms, *self._link_retries} if k[0] == network and k[1] not in listed]:
            self._cancel_link_retry(key)  # a link gone from the config is not retried any more
            self._config_rooms.pop(key, None)
        for channel, room in links.items():
            key = self.normalize_channel(network, channel)
            self._config_rooms[(network, key)] = room
            self._cancel_link_retry((network, key))
            if not room.startswith(("!", "#")):
                self.log.error("%s %s: %r is neither a room id (!...) nor an alias (#...); this link is skipped",
                               network, channel, room)
                continue
            room_id, problem = await self._resolve_link(room)
            if room_id is None:
                waiting[key] = (room, problem)
                continue
            wanted[key] = room_id
        for portal in self.portals_for_network(network):
            if portal.origin != "config" or portal.channel in waiting:  # a link not resolved yet keeps its portal
                continue
            if wanted.get(portal.channel) != portal.room_id:
                await self.remove_portal(portal)
        made = []
        for channel, room_id in wanted.items():
            existing = self.portals.get((network, channel))
            if existing is None or existing.room_id != room_id or existing.origin != "config":
                existing = await self.add_portal(Portal(network, channel, room_id, "config"))
            made.append(existing)
        for channel, (room, problem) in waiting.items():
            kept = self.portals.get((network, channel))
            meanwhile = f"; kept linked to {kept.room_id} meanwhile" if kept is not None else ""
            self.log.warning("%s %s: %s; retrying in the background%s", network, channel, problem, meanwhile)
            self._start_link_retry(network, channel, room, problem)
        return made

    async def _resolve_link(self, room: str) -> tuple[str | None, str]:
        """The room id of a config link's ``room``, the bot joined to it; or None and why not (for now)."""
        assert self.matrix is not None
        try:
            room_id = await self.matrix.resolve_room(room)
        except (ValueError, MatrixError) as exc:
            return None, str(exc)
        if not await self.matrix.ensure_joined(room_id):
            return None, f"the bot is not in {room} and cannot join it (invite it)"
        return room_id, ""

    def _start_link_retry(self, network: str, channel: str, room: str, problem: str) -> None:
        key = (network, channel)
        self._cancel_link_retry(key)
        backoff = Backoff(self.config.reconnect_min_delay, self.config.reconnect_max_delay)
        pending = PendingLink(network, channel, room, problem)
        self.pending_links[key] = pending
        self._link_retries[key] = asyncio.create_task(
            self._retry_link(pending, backoff), name=f"{self.name} link {network} {channel}"
        )

    def _cancel_link_retry(self, key: tuple[str, str]) -> None:
        task = self._link_retries.pop(key, None)
        if task is not None:
            task.cancel()
        self.pending_links.pop(key, None)

    async def _retry_link(self, pending: PendingLink, backoff: Backoff) -> None:
        """Retry a config link until its room resolves and the bot is in it; then make (or update) its portal."""
        key = (pending.network, pending.channel)
        while True:
            delay = backoff.next()
            pending.attempts = backoff.attempts
            pending.next_attempt = time.time() + delay
            await asyncio.sleep(delay)
            try:
                room_id, problem = await self._resolve_link(pending.room)
                if room_id is None:
                    if problem != pending.problem:
                        self.log.warning("%s %s: %s; still retrying", pending.network, pending.channel, problem)
                    pending.problem = problem
                    continue
                existing = self.portals.get(key)
                if existing is None or existing.room_id != room_id or existing.origin != "config":
                    await self.add_portal(Portal(pending.network, pending.channel, room_id, "config"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage closing under a stop, a hook failing: try again later
                pending.problem = f"{type(exc).__name__}: {exc}"
                self.log.warning("%s %s: linking failed: %s", pending.network, pending.channel, pending.problem)
                continue
            self.log.info("%s %s: %s resolved; linked to %s after %d attempt%s", pending.network, pending.channel,
                          pending.room, room_id, pending.attempts, "s" if pending.attempts != 1 else "")
            if self.pending_links.get(key) is pending:
                del self.pending_links[key]
                self._link_retries.pop(key, None)
            return

    # -- hooks a bridge may override ------------------------------------------------------------------------------

    def normalize_channel(self, network: str, channel: str) -> str:
        """The canonical form of a channel name (IRC: lower case). Default: unchanged."""
        return channel

    async def validate_link(self, network: str, channel: str) -> str | None:
        """Why ``channel`` on ``network`` cannot be linked (an error shown to the admin), or None if it can."""
        return None

    async def on_portal_linked(self, portal: Portal) -> None:
        """Called after a portal is added (IRC: join the channel)."""

    async def on_portal_unlinked(self, portal: Portal) -> None:
        """Called after a portal is removed (IRC: leave the channel)."""

    def parse_remote_channel(self, text: str) -> tuple[str, str]:
        """``[network] <channel>`` from ``!bridge link``; the network may be left out when there is only one."""
        words = text.split()
        networks = sorted(self.supervisors)
        if len(words) == 2:
            network, channel = words
            if network not in self.supervisors and words[1] in self.supervisors:
                channel, network = words
        elif len(words) == 1 and len(networks) == 1:
            network, channel = networks[0], words[0]
        elif len(words) == 1:
            raise ValueError(f"which network? say `{self.command_name} link <network> {words[0]}` "
                             f"(networks: {', '.join(networks) or 'none'})")
        else:
            raise ValueError(f"usage: {self.command_name} link [network] <channel>")
        if network not in self.supervisors:
            raise ValueError(f"unknown network {network!r} (networks: {', '.join(networks) or 'none'})")
        return network, self.normalize_channel(network, channel)

    def format_outgoing(self, portal: Portal, message: MatrixMessage, text: str, html: str | None,
                        kind: Literal["message", "action", "notice"]) -> list[RemoteSend]:
        """The items to send for a Matrix message (already degraded to ``text``/``html`` for this network).

        Default: one item with the sender's name put in by ``remote_template``. Line-based networks override this
        (IRC converts the HTML to control codes and splits long text into lines).
        """
        template = self.config.remote_action_template if kind == "action" else self.config.remote_template
        name = sanitize_name(message.sender_name)
        return [
            RemoteSend(
                channel=portal.channel,
                text=template.format(name=name, text=text),
                kind=kind,
                event_id=message.event_id,
                room_id=message.room_id,
                sender=message.sender,
                sender_name=name,
                html=html,
            )
        ]

    def prepare_inbound(self, portal: Portal, message: RemoteMessage) -> RemoteMessage:
        """Adjust a remote message before posting (default: link mentions of room members as pills)."""
        if message.html is not None or message.kind not in ("message", "action") or self.matrix is None:
            return message
        members = self.matrix.members(portal.room_id)
        html, mentioned = link_mentions(
            message.text, members, exclude={self.matrix.user_id}, max_mentions=self.config.max_mentions
        )
        if html is None:
            return message
        return replace(message, html=html, mentions=tuple(mentioned))

    def plain_text(self, message: MatrixMessage) -> str:
        """A Matrix message as plain text, for edit fallbacks (``s/old/new/``) and the quotes of later replies.

        Default: its HTML laid out as lines without markup (:func:`~bot.bridge.rich_text.html_to_plain`), else its
        body.
        """
        if message.html:
            rendered = html_to_plain(message.html)
            if rendered.strip():
                return rendered
        return message.body

    async def on_unlinked_message(self, message: RemoteMessage) -> str | None:
        """A remote message for a channel without a portal (a private message, say). Default: ignored."""
        return None

    # ============================================================================================ Matrix -> remote

    def _is_command(self, body: str) -> bool:
        manager = getattr(self.bot, "plugins", None)
        if manager is None:
            return False
        invocation = parse_invocation(body, manager.prefix)
        return invocation is not None and manager.command(invocation.name) is not None

    def _outgoing_supervisors(self, room_id: str) -> list[tuple[Portal, ConnectionSupervisor]]:
        out = []
        for portal in self.portals_for_room(room_id):
            supervisor = self.supervisors.get(portal.network)
            if supervisor is not None and supervisor.connection.capabilities.outgoing:
                out.append((portal, supervisor))
        return out

    @on_event("m.room.message")
    async def _bridge_matrix_message(self, ctx: Context) -> None:
        targets = self._outgoing_supervisors(ctx.room_id)
        if not targets or self.matrix is None:
            return
        if self.matrix.is_bridge_user(ctx.sender):
            return  # one of our ghosts (the runtime does not hand their events to plugins either)
        name = self.matrix.display_name(ctx.room_id, ctx.sender)
        message = matrix_message_from_event(ctx.room_id, ctx.event.source, name)
        if message is None:
            return
        if not self.config.relay_commands and self._is_command(message.body):
            return
        await self.relay_to_remote(message, targets)

    async def relay_to_remote(
        self, message: MatrixMessage, targets: list[tuple[Portal, ConnectionSupervisor]] | None = None
    ) -> None:
        """Queue ``message`` for every portal of its room (or ``targets``), degraded to what each network supports."""
        if targets is None:
            targets = self._outgoing_supervisors(message.room_id)
        kind: Literal["message", "action", "notice"] = "action" if message.is_emote else "message"
        plain = self.plain_text(message)
        for portal, supervisor in targets:
            caps = supervisor.connection.capabilities
            text, html = message.body, message.html
            reply_remote = edit_remote = None
            if message.is_media:
                text, html = media_text(message.media_name, message.media_size, message.msgtype), None
            if message.edit_of is not None:
                original = await self._lookup_event(message.edit_of)
                if caps.edits and original is not None and original.remote_id is not None:
                    edit_remote = original.remote_id
                else:
                    old = original.text if original is not None else None
                    if old is None:
                        old = await self._fetch_text(message.room_id, message.edit_of)
                    text, html = edit_fallback(old, plain), None
                self.messages.set_text(message.edit_of, plain)
            elif message.reply_to is not None:
                original = await self._lookup_event(message.reply_to)
                if caps.replies and original is not None and original.remote_id is not None:
                    reply_remote = original.remote_id
                elif self.matrix is not None and self.matrix.ghosts and original is not None \
                        and original.direction == "in" and original.network == portal.network:
                    nick = await self._ghost_current_name(message.room_id, original)
                    text, html = self.config.ghost_reply_template.format(nick=nick, text=text), None
                else:
                    nick, quoted = await self._describe_event(message.room_id, message.reply_to, original)
                    if nick is not None:
                        text, html = reply_fallback(self.config.reply_template, text, nick, quoted), None
            items = self.format_outgoing(portal, message, text, html, kind)
            if not items:
                continue
            items = [replace(item, reply_to=reply_remote, edit_of=edit_remote, first=(i == 0))
                     for i, item in enumerate(items)]
            if message.edit_of is None:
                await self._remember(MappedMessage(
                    message.room_id, message.event_id, portal.network, portal.channel, None, message.sender,
                    sanitize_name(message.sender_name), "out", plain,
                ))
            await self.queue_remote(supervisor, items)

    @on_event("m.reaction")
    async def _bridge_matrix_reaction(self, ctx: Context) -> None:
        targets = self._outgoing_supervisors(ctx.room_id)
        relates = ctx.content.get("m.relates_to")
        if not targets or self.matrix is None or not isinstance(relates, dict) or BRIDGE_MARKER in ctx.content:
            return
        if self.matrix.is_bridge_user(ctx.sender):
            return
        key, target = relates.get("key"), relates.get("event_id")
        if not isinstance(key, str) or not isinstance(target, str):
            return
        name = self.matrix.display_name(ctx.room_id, ctx.sender)
        original = await self._lookup_event(target)
        for portal, supervisor in targets:
            caps = supervisor.connection.capabilities
            if caps.reactions and original is not None and original.remote_id is not None:
                await self.queue_remote(supervisor, [RemoteSend(
                    portal.channel, key, event_id=ctx.event_id, room_id=ctx.room_id, sender=ctx.sender,
                    sender_name=name, reply_to=original.remote_id, payload={"reaction": key},
                )])
                continue
            if not self.config.relay_reactions:
                continue
            nick, quoted = await self._describe_event(ctx.room_id, target, original)
            if nick is None:
                continue
            fake = MatrixMessage(ctx.room_id, ctx.event_id, ctx.sender, name, "m.emote", "")
            await self.queue_remote(
                supervisor, self.format_outgoing(portal, fake, reaction_fallback(key, nick, quoted), None, "action")
            )

    @on_event("m.room.redaction")
    async def _bridge_matrix_redaction(self, ctx: Context) -> None:
        redacts = ctx.event.source.get("redacts") or ctx.content.get("redacts")
        if not isinstance(redacts, str):
            return
        original = await self._lookup_event(redacts)
        if original is None:
            return
        self.messages.forget(redacts)
        supervisor = self.supervisors.get(original.network)
        if supervisor is None or not supervisor.connection.capabilities.redactions or original.remote_id is None:
            return  # networks without deletion: nothing to do (the text was already seen there)
        await self.queue_remote(supervisor, [RemoteSend(
            original.channel, "", event_id=ctx.event_id, room_id=ctx.room_id, sender=ctx.sender,
            payload={"redacts": original.remote_id},
        )])

    async def _ghost_current_name(self, room_id: str, original: MappedMessage) -> str:
        """The remote name the author of ``original`` (a remote message a ghost posted) has now: its ghost is read
        from the event's sender and looked up (a renamed user keeps their ghost); else the name it was posted under."""
        assert isinstance(self.matrix, GhostMatrixSide)
        try:
            event = await self.bot.fetch_event(room_id, original.event_id)
        except MatrixError:
            return original.sender_name
        localpart = self.matrix.ghost_localpart_of(getattr(event, "sender", "") or "")
        current = self._ghost_names(original.network).holder(localpart) if localpart else None
        return current or original.sender_name

    @on_event("m.room.member")
    async def _bridge_matrix_member(self, ctx: Context) -> None:
        """A Matrix member kicked or banned one of our ghosts: tell the bridge (:meth:`on_ghost_removed`)."""
        side = self.matrix
        if not isinstance(side, GhostMatrixSide) or not self.portals_for_room(ctx.room_id):
            return
        target = ctx.event.source.get("state_key")
        membership = ctx.content.get("membership")
        if not isinstance(target, str) or membership not in ("leave", "ban") or side.is_bridge_user(ctx.sender):
            return
        localpart = side.ghost_localpart_of(target)
        if localpart is None:
            return
        self.bot.ghost(localpart).note_left(ctx.room_id)
        reason = ctx.content.get("reason") if isinstance(ctx.content.get("reason"), str) else None
        by = sanitize_name(side.display_name(ctx.room_id, ctx.sender))
        for portal in self.portals_for_room(ctx.room_id):
            sender_id = self._ghost_names(portal.network).holder(localpart)
            if sender_id is not None:
                await self.on_ghost_removed(portal, sender_id, by, reason, ban=membership == "ban")

    async def _sent(self, item: RemoteSend, remote_id: str | None) -> None:
        if remote_id is None or not item.first or item.event_id is None:
            return
        self.messages.set_remote_id(item.event_id, remote_id)
        await self.storage.execute(
            "UPDATE ratchet_bridge_message SET remote_id = ? WHERE event_id = ?", (remote_id, item.event_id)
        )

    # ============================================================================================ remote -> Matrix

    def _submit_inbound(self, message: RemoteMessage) -> asyncio.Future[str | None]:
        """Queue a remote message for posting, unless its sender floods or the queue is full (the future then holds
        :class:`~bot.bridge.connection.InboundRefused`)."""
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if message.extra.get(SENDER_GONE):
            self._inbound.put_nowait((message, fut))  # not a message: never refused, kept in order
            return fut
        supervisor = self.supervisors.get(message.network)
        if supervisor is not None and supervisor.connection.is_own(message.sender_id):
            self._inbound.put_nowait((message, fut))  # our own echo: dropped in order by handle_remote
            return fut
        verdict = self._senders.admit((message.network, message.sender_id.casefold()))
        if self._senders.ended is not None:
            (network, sender), dropped = self._senders.ended
            self.log.info("%s %s stopped flooding: %d of their messages were not relayed", network, sender, dropped)
        if verdict != "ok":
            if verdict == "flood":
                self._flood_started(message)
            return _refused(fut, "flood", f"{message.sender_name} is sending too fast")
        if self._inbound.qsize() >= self.config.inbound_queue_size:
            self.inbound_refused += 1
            if not self._inbound_full:
                self._inbound_full = True
                self.log.warning(
                    "%s: %d remote messages are waiting to be posted into Matrix; refusing new ones until it catches "
                    "up", message.network, self._inbound.qsize(),
                )
            return _refused(fut, "full", "too many messages are waiting to be posted into Matrix")
        if self._inbound_full and self._inbound.qsize() < self.config.inbound_queue_size // 2:
            self._inbound_full = False
            self.log.info("%s: the inbound queue is taking messages again (%d were refused so far)",
                          message.network, self.inbound_refused)
        self._inbound.put_nowait((message, fut))
        return fut

    def _flood_started(self, message: RemoteMessage) -> None:
        """The first message of a flood was dropped: log it once, and say it once in the room (a notice)."""
        self.log.warning(
            "%s %s: %s is sending faster than %g messages per second; their messages are dropped until they pause",
            message.network, message.channel, message.sender_id, self.config.sender_rate_limit,
        )
        notice = RemoteMessage(
            message.network, message.channel, "", message.sender_name,
            f"⚠️ {sanitize_name(message.sender_name)} is sending too fast: their messages are not relayed until "
            "they slow down.",
            kind="notice", msgtype="m.notice", anonymous=True,
        )
        self._inbound.put_nowait((notice, asyncio.get_running_loop().create_future()))

    async def _inbound_loop(self) -> None:
        while True:
            message, fut = await self._inbound.get()
            try:
                result = await self.handle_remote(message)
            except asyncio.CancelledError:
                if not fut.done():
                    fut.set_result(None)
                raise
            except Exception as exc:
                self.log.error("relaying a %s message from %s failed", message.network, message.channel, exc_info=exc)
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: nobody has to await it
                continue
            if not fut.done():
                fut.set_result(result)

    async def handle_remote(self, message: RemoteMessage) -> str | None:
        """Post one remote message into its portal room; returns the Matrix event id (None if not posted)."""
        assert self.matrix is not None
        if message.extra.get(SENDER_GONE):
            channel = self.normalize_channel(message.network, message.channel) if message.channel else None
            self.messages.forget_sender(message.network, message.sender_id, channel)
            return None
        supervisor = self.supervisors.get(message.network)
        if supervisor is not None and supervisor.connection.is_own(message.sender_id):
            return None  # our own message, echoed back by the network
        portal = self.portals.get((message.network, self.normalize_channel(message.network, message.channel)))
        if portal is None:
            return await self.on_unlinked_message(message)
        if self.matrix.ghosts:
            if membership_action(message.kind) is not None:
                return await self._ghost_membership(portal, message)
            try:
                return await self._handle_in_portal(portal, message)
            finally:
                await self._ghost_save()
        if message.kind == "members":
            return None  # a member list means nothing to the relay
        return await self._handle_in_portal(portal, message)

    async def _handle_in_portal(self, portal: Portal, message: RemoteMessage) -> str | None:
        assert self.matrix is not None
        supervisor = self.supervisors.get(message.network)
        room_id = portal.room_id
        if message.redacts is not None:
            target = await self._lookup_remote(portal, message.redacts)
            if target is None:
                return None
            self.messages.forget(target.event_id)
            return await self._to_matrix(
                lambda: self.matrix.redact(room_id, target.event_id), _txn_key(message, "redact")
            )
        if message.reaction is not None and message.reacts_to is not None:
            target = await self._lookup_remote(portal, message.reacts_to)
            if target is None:
                return None
            return await self._to_matrix(
                lambda: self.matrix.react(room_id, target.event_id, message.reaction, message),
                _txn_key(message, "react"),
            )
        message = self.prepare_inbound(portal, message)
        if message.kind not in ("message", "action"):
            return await self._to_matrix(lambda: self.matrix.post(room_id, message), _txn_key(message, "post"))
        if message.edit_of is not None:
            target = await self._lookup_remote(portal, message.edit_of)
            if target is not None:
                return await self._edit_in_matrix(portal, target, message)
        caps = supervisor.connection.capabilities if supervisor is not None else None
        if caps is not None and not caps.edits and self.config.sed_edits:
            sed = parse_sed(message.text)
            if sed is not None:
                last = self.messages.last_from(portal.network, portal.channel, message.sender_id, "in")
                if last is not None and last.text is not None and time.time() - last.at < SED_WINDOW:
                    corrected = apply_sed(last.text, *sed)
                    if corrected is not None:
                        return await self._edit_in_matrix(portal, last, replace(message, text=corrected, html=None))
        reply_event = None
        if message.reply_to is not None:
            target = await self._lookup_remote(portal, message.reply_to)
            reply_event = target.event_id if target is not None else None
        event_id = await self._to_matrix(
            lambda: self.matrix.post(room_id, message, reply_to=reply_event), _txn_key(message, "post")
        )
        await self._remember(MappedMessage(
            room_id, event_id, portal.network, portal.channel, message.remote_id, message.sender_id,
            message.sender_name, "in", message.text,
        ))
        return event_id

    async def _edit_in_matrix(self, portal: Portal, target: MappedMessage, message: RemoteMessage) -> str:
        assert self.matrix is not None
        event_id = await self._to_matrix(
            lambda: self.matrix.edit(portal.room_id, target.event_id, message), _txn_key(message, "edit")
        )
        self.messages.set_text(target.event_id, message.text)
        return event_id

    async def _to_matrix(self, call, key: str | None = None) -> str:
        """Run a Matrix request, retrying a few times with growing pauses (the homeserver may be restarting).

        Every attempt sends with the transaction ids of ``key`` (see :func:`_txn_key`), so an attempt that reached the
        homeserver although its answer was lost is not posted a second time by the next one.
        """
        key = key or f"bridge\x1f{uuid4().hex}"
        delay = 1.0
        for attempt in range(1, MATRIX_ATTEMPTS + 1):
            try:
                with send_scope(key):
                    return await call()
            except MatrixError as exc:
                if attempt == MATRIX_ATTEMPTS or exc.errcode == "M_FORBIDDEN":  # (a banned ghost, say: final)
                    raise
                self.log.warning("posting into Matrix failed (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # ============================================================================================ message map

    async def _remember(self, message: MappedMessage) -> None:
        self.messages.add(message)
        await self.storage.execute(
            "INSERT INTO ratchet_bridge_message (event_id, room_id, network, channel, remote_id, sender,"
            " sender_name, direction, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE"
            " SET room_id = excluded.room_id, network = excluded.network, channel = excluded.channel,"
            " remote_id = excluded.remote_id, sender = excluded.sender, sender_name = excluded.sender_name,"
            " direction = excluded.direction, created_at = excluded.created_at",
            (message.event_id, message.room_id, message.network, message.channel, message.remote_id, message.sender,
             message.sender_name, message.direction, message.at),
        )

    async def _lookup_event(self, event_id: str) -> MappedMessage | None:
        found = self.messages.by_event(event_id)
        if found is not None:
            return found
        row = await self.storage.fetchone(
            "SELECT room_id, event_id, network, channel, remote_id, sender, sender_name, direction, created_at"
            " FROM ratchet_bridge_message WHERE event_id = ?", (event_id,),
        )
        return _row_to_mapped(row)

    async def _lookup_remote(self, portal: Portal, remote_id: str) -> MappedMessage | None:
        found = self.messages.by_remote(portal.network, portal.channel, remote_id)
        if found is not None:
            return found
        row = await self.storage.fetchone(
            "SELECT room_id, event_id, network, channel, remote_id, sender, sender_name, direction, created_at"
            " FROM ratchet_bridge_message WHERE network = ? AND channel = ? AND remote_id = ?",
            (portal.network, portal.channel, remote_id),
        )
        return _row_to_mapped(row)

    async def _fetch_text(self, room_id: str, event_id: str) -> str | None:
        try:
            event = await self.bot.fetch_event(room_id, event_id)
        except MatrixError:
            return None
        message = _content_body(event.source.get("content"))
        return message

    async def _describe_event(
        self, room_id: str, event_id: str, mapped: MappedMessage | None
    ) -> tuple[str | None, str]:
        """Who wrote ``event_id`` and its text, for quoting: from the message map, else fetched from the server."""
        if mapped is not None and mapped.text is not None:
            return mapped.sender_name, mapped.text
        try:
            event = await self.bot.fetch_event(room_id, event_id)
        except MatrixError:
            return (mapped.sender_name if mapped else None), ""
        content = event.source.get("content") if isinstance(event.source.get("content"), dict) else {}
        marker = content.get(BRIDGE_MARKER)
        text = _content_body(content) or ""
        if isinstance(marker, dict) and isinstance(marker.get("sender_name"), str):
            nick = marker["sender_name"]
            prefix = self.config.matrix_template.replace("**", "").split("{text}")[0].format(name=nick)
            text = text.removeprefix(prefix)
        elif mapped is not None:
            nick = mapped.sender_name
        else:
            assert self.matrix is not None
            nick = sanitize_name(self.matrix.display_name(room_id, getattr(event, "sender", "")))
        return nick, text

    @every(3600)
    async def _bridge_prune(self) -> None:
        """Forget message-map ids older than the retention period."""
        cutoff = time.time() - self.config.retention_days * 86400
        removed = await self.storage.execute("DELETE FROM ratchet_bridge_message WHERE created_at < ?", (cutoff,))
        if removed:
            self.log.info("forgot %d bridged message ids older than %g days", removed, self.config.retention_days)
        expired = sum(supervisor.expire(cutoff) for supervisor in self.supervisors.values())
        expired += await self.storage.execute("DELETE FROM ratchet_bridge_outbox WHERE created_at < ?", (cutoff,))
        if expired:
            self.log.warning("dropped %d queued outgoing messages older than %g days unsent",
                             expired, self.config.retention_days)

    # ============================================================================================ !bridge

    async def handle_bridge_command(self, ctx: Context, action: str, target: str) -> None:
        """``!bridge status`` / ``link [network] <channel>`` / ``unlink [channel]`` (admins only)."""
        if action == "status":
            await ctx.reply(self.status_text(ctx.room_id), notice=True, markdown=True)
        elif action == "link":
            await ctx.reply(await self._link(ctx, target), notice=True)
        else:
            await ctx.reply(await self._unlink(ctx, target), notice=True)

    @property
    def inbound_dropped(self) -> int:
        """Remote messages dropped because their sender went over ``sender_rate_limit``."""
        return self._senders.dropped

    def status_text(self, room_id: str | None = None, *, now: float | None = None) -> str:
        """The text of ``!bridge status``: per network its connection (state, since when, server and nick as the
        connection describes itself, queue, last error while down), then its links with each room's alias when it
        has one (else its id), and the config links still waiting for their room."""
        now = time.time() if now is None else now
        lines = [f"**{self.name}**"]
        networks = list(self.supervisors)
        networks += sorted({p.network for p in self.portals.values()} - set(networks))
        networks += sorted({n for n, _ in self.pending_links} - set(networks))
        if not self.supervisors:
            lines.append("- no connections")
        for network in networks:
            supervisor = self.supervisors.get(network)
            lines.append(f"- {supervisor.status().line(now)}" if supervisor is not None
                         else f"- {network}: no connection")
            portals = sorted(self.portals_for_network(network), key=lambda p: p.channel)
            pending = {c: p for (n, c), p in self.pending_links.items() if n == network}
            if not portals and not pending:
                lines.append("  - no links")
            for portal in portals:
                here = " (this room)" if portal.room_id == room_id else ""
                line = f"  - {portal.channel} ↔ {self.portal_room_label(portal)}{here} [{portal.origin}]"
                waiting = pending.pop(portal.channel, None)
                if waiting is not None:
                    line += f"; {waiting.room}: {waiting.describe(now)}"
                lines.append(line)
            for channel, waiting in sorted(pending.items()):
                lines.append(f"  - {channel} ↔ {waiting.room}: not linked yet, {waiting.describe(now)} [config]")
        if self.matrix is not None and self.matrix.ghosts:
            known = sum(len(names) for names in self.ghost_names.values())
            lines.append(f"- ghost mode: remote users post as the appservice's ghosts ({known} known)")
        if self._senders.dropped or self.inbound_refused:
            lines.append(f"- incoming: {self._senders.dropped} dropped (senders over the rate limit), "
                         f"{self.inbound_refused} refused (queue full)")
        return "\n".join(lines)

    def portal_room_label(self, portal: Portal) -> str:
        """How ``!bridge status`` names a portal's room: its alias (the config's, else the room's canonical alias)
        when it has one, else its room id."""
        configured = self._config_rooms.get(portal.key) if portal.origin == "config" else None
        if configured and configured.startswith("#"):
            return configured
        alias = self.matrix.room_alias(portal.room_id) if self.matrix is not None else None
        return alias or portal.room_id

    async def _link(self, ctx: Context, target: str) -> str:
        try:
            network, channel = self.parse_remote_channel(target)
        except ValueError as exc:
            return f"⚠️ {exc}"
        problem = await self.validate_link(network, channel)
        if problem:
            return f"⚠️ {problem}"
        existing = self.portals.get((network, channel))
        if existing is not None:
            if existing.room_id == ctx.room_id:
                return f"{network} {channel} is already linked to this room."
            return f"⚠️ {network} {channel} is already linked to {existing.room_id}; unlink it there first."
        await self.add_portal(Portal(network, channel, ctx.room_id, "command", ctx.sender))
        self.log.info("%s linked %s %s to %s", ctx.sender, network, channel, ctx.room_id)
        return f"✅ Linked this room to {network} {channel}."

    async def _unlink(self, ctx: Context, target: str) -> str:
        here = self.portals_for_room(ctx.room_id)
        if target:
            try:
                network, channel = self.parse_remote_channel(target)
            except ValueError:
                channel = self.normalize_channel(here[0].network, target) if here else target
                network = here[0].network if here else ""
            here = [p for p in here if p.channel == channel and (not network or p.network == network)]
        if not here:
            return "⚠️ This room is not linked" + (f" to {target}." if target else ".")
        if len(here) > 1:
            return "⚠️ This room has several links; say which: " + ", ".join(p.describe() for p in here)
        portal = here[0]
        if portal.origin == "config":
            return f"⚠️ {portal.describe()} is linked in the config file; remove it there (and reload the plugin)."
        await self.remove_portal(portal)
        self.log.info("%s unlinked %s from %s", ctx.sender, portal.describe(), ctx.room_id)
        return f"✅ Unlinked this room from {portal.describe()}."


def _txn_key(message: RemoteMessage, action: str) -> str:
    """The send-scope key of posting ``message`` into Matrix: derived from its remote identity when the network gives
    one (so the same remote message delivered again, after a reconnect, shows once), else random (the same for every
    retry of this post only)."""
    if message.remote_id is None:
        return f"bridge\x1f{uuid4().hex}"
    return "\x1f".join(("bridge", message.network, message.channel, message.remote_id, message.kind, action))


def _refused(
    fut: asyncio.Future[str | None], reason: Literal["flood", "full"], text: str
) -> asyncio.Future[str | None]:
    fut.set_exception(InboundRefused(reason, text))
    fut.exception()  # retrieved: a connection that does not answer its sender (IRC) never awaits it
    return fut


def _row_to_mapped(row: tuple[Any, ...] | None) -> MappedMessage | None:
    if row is None:
        return None
    return MappedMessage(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], None, row[8])


def _content_body(content: Any) -> str | None:
    if not isinstance(content, dict):
        return None
    new = content.get("m.new_content")
    if isinstance(new, dict) and isinstance(new.get("body"), str):
        return new["body"]
    body = content.get("body")
    return body if isinstance(body, str) else None
