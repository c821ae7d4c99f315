"""How events come in for a bot that is an ordinary account: one device's ``/sync``.

:class:`SyncSource` is the runtime's view of the Matrix side: it fetches the next batch (the long poll, its filter,
nio's parsing and decryption), fills timeline gaps, decrypts events that waited for their keys, asks for missing keys,
answers invites and keeps the device's keys published. Each batch reaches the runtime as a plain :class:`SyncBatch`;
the runtime decides what to hand to plugins and when the batch's token may be committed. An appservice transaction
source produces the same batches from ``PUT /transactions``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nio import (
    BadEvent,
    EncryptionError,
    Event,
    InviteMemberEvent,
    LocalProtocolError,
    MegolmEvent,
    MessageDirection,
    RoomKeyEvent,
    RoomMessagesResponse,
    SyncResponse,
    UnknownBadEvent,
)

from bot.errors import StateError
from bot.matrix.events import is_room_state

if TYPE_CHECKING:
    from bot.matrix.client import RatchetClient
    from bot.storage.state import StateStore

__all__ = [
    "EventSource",
    "Invite",
    "RoomTimeline",
    "SyncBatch",
    "SyncFailed",
    "SyncSource",
    "batch_from_body",
    "describe",
    "is_storage_error",
    "is_undecrypted",
    "room_state_rows",
]

log = logging.getLogger(__name__)

#: The sync filter: enough timeline per room that a short outage leaves no gap.
SYNC_FILTER: dict[str, Any] = {"room": {"timeline": {"limit": 100}}}
#: The filter of an initial sync (no token: a new bot or a new login). Its timeline is history the runtime skips
#: (:func:`bot.runtime.timeline.select_events`), so none is asked for; every room's current state still comes in full
#: (the ``state`` section). Synapse answers it about 2.5 times faster (2,000 rooms: ~6 s instead of ~15 s,
#: bench/scale.py) and it is a third smaller, so the bot parses less and is ready sooner.
INITIAL_SYNC_FILTER: dict[str, Any] = {"room": {"timeline": {"limit": 0}}}


@dataclass
class RoomTimeline:
    """One joined room's part of a batch: new timeline events (oldest first) and state."""

    room_id: str
    events: list[Event]
    state: list[Event] = field(default_factory=list)
    #: The server left events out (a gap since the last batch); ``prev_batch`` fills it.
    limited: bool = False
    prev_batch: str | None = None


@dataclass(frozen=True)
class Invite:
    """An invite of the bot to a room, with who sent it (None if the invite state does not say)."""

    room_id: str
    inviter: str | None


@dataclass
class SyncBatch:
    """What one sync brought, as the runtime handles it; ``token`` is committed once all of it is handled."""

    token: str
    rooms: list[RoomTimeline]
    invites: list[Invite] = field(default_factory=list)
    #: Session ids of the room keys that arrived with this batch (waiting events of these sessions may decrypt now).
    room_keys: set[str] = field(default_factory=set)

    @classmethod
    def from_response(cls, resp: SyncResponse, own_user_id: str) -> SyncBatch:
        """The batch of a nio ``SyncResponse`` (already handled by the client: decrypted, state applied)."""
        rooms = [
            RoomTimeline(
                room_id,
                list(info.timeline.events),
                list(info.state),
                bool(info.timeline.limited),
                info.timeline.prev_batch,
            )
            for room_id, info in resp.rooms.join.items()
        ]
        invites = []
        for room_id, info in resp.rooms.invite.items():
            inviter = None
            for event in info.invite_state:
                if isinstance(event, InviteMemberEvent) and event.state_key == own_user_id:
                    inviter = event.sender
            invites.append(Invite(room_id, inviter))
        keys = {e.session_id for e in resp.to_device_events if isinstance(e, RoomKeyEvent)}
        return cls(resp.next_batch, rooms, invites, keys)


async def batch_from_body(client: RatchetClient, body: dict[str, Any]) -> SyncBatch:
    """The batch of a ``/sync``-shaped body that came another way (an appservice transaction, bot/appservice):
    parsed by nio and handled by the client (room state, memberships, invites) exactly as a ``/sync`` answer is.

    Raises :class:`SyncFailed` if nio cannot parse it.
    """
    resp = SyncResponse.from_dict(body)
    if not isinstance(resp, SyncResponse):
        raise SyncFailed(describe(resp))
    await client.receive_response(resp)
    return SyncBatch.from_response(resp, client.user_id)


def room_state_rows(resp: SyncResponse) -> list[tuple[str, str, str, str]]:
    """``(room_id, type, state_key, event JSON)`` of every state event of ``resp``'s joined rooms that changed the
    room's state, in the order they apply: each room's ``state`` section, then the state events of its timeline that
    arrived in the clear. Decrypted events (state is never encrypted: a forgery, see
    :meth:`~bot.matrix.client.RatchetClient._handle_timeline_event`) and events nio could not parse (nio ignores them)
    are left out, as the client leaves them out of its rooms."""
    rows: list[tuple[str, str, str, str]] = []
    for room_id, info in resp.rooms.join.items():
        for event in (*info.state, *info.timeline.events):
            if isinstance(event, (BadEvent, UnknownBadEvent)) or not is_room_state(event):
                continue
            source = event.source
            kind = source.get("type")
            if isinstance(kind, str):
                rows.append((room_id, kind, source["state_key"], json.dumps(source, separators=(",", ":"))))
    return rows


class SyncFailed(Exception):
    """A sync request failed (the message says how); the runtime backs off and tries again."""


def is_undecrypted(event: Event) -> bool:
    """True for an event still encrypted (its Megolm key has not arrived)."""
    return isinstance(event, MegolmEvent)


def is_storage_error(exc: BaseException) -> bool:
    """A failed write to a store (state.db or PostgreSQL, nio's crypto store through peewee)."""
    if isinstance(exc, (sqlite3.Error, StateError)):
        return True
    return any(cls.__module__ == "peewee" or cls.__module__.startswith("psycopg") for cls in type(exc).__mro__)


def describe(obj: object) -> str:
    """A short, secret-free description of an error response or exception, for logs."""
    if hasattr(obj, "status_code"):
        return f"{getattr(obj, 'status_code', '')} {getattr(obj, 'message', '')}".strip()
    if isinstance(obj, BaseException):
        return f"{obj.__class__.__name__}: {obj}"[:200]
    return obj.__class__.__name__


class EventSource(Protocol):
    """How events reach the runtime: what :class:`SyncSource` does for one account's ``/sync``, and what an
    appservice's transaction source does for a bridge's bot and ghosts."""

    @property
    def own_user_id(self) -> str:
        """The bot's user id (its own events are not handed to plugins)."""

    def room_count(self) -> int:
        """How many rooms the bot is in."""

    def restore_rooms(self, on_room: Callable[[str, list[Event]], None] | None = None) -> int | None:
        """Load the rooms saved by the last run before the first :meth:`fetch` after a restart, calling ``on_room``
        with each room's id and state events (as a full sync's ``state`` section, no timeline); how many rooms, or None
        if nothing complete was saved (the first fetch then asks for ``full_state``)."""

    async def fetch(self, since: str | None, *, timeout_ms: int, full_state: bool | None = None) -> SyncBatch:
        """The next batch after ``since``; :class:`SyncFailed` to back off and retry."""

    async def backfill(self, room_id: str, prev_batch: str, stop_ms: int, max_pages: int) -> list[Event]:
        """Events a gap left out, oldest first."""

    def decrypt(self, room_id: str, source: dict[str, Any]) -> Event | None:
        """A waiting event decrypted now, or None."""

    async def request_key(self, room_id: str, event: Event) -> None:
        """Ask for the key of an undecryptable event."""

    async def join(self, room_id: str) -> str | None:
        """Accept an invite; None on success, else why not."""

    async def leave(self, room_id: str) -> None:
        """Reject an invite."""

    async def maintain_keys(self) -> None:
        """Keep the device's keys published and other devices' keys fresh."""


class SyncSource:
    """One account's ``/sync`` through :class:`~bot.matrix.client.RatchetClient` (an :class:`EventSource`).

    With a ``state`` store, every joined room's state is saved as each sync brings it (before the runtime sees the
    batch, so the saved state is never older than the committed sync token), and a restart loads the rooms from there
    (:meth:`restore_rooms`) instead of asking the server for every room's full state: with thousands of rooms that
    full-state sync is most of a restart (5,000 rooms: 11 s of Synapse's time, bench/startup.py)."""

    def __init__(self, client: RatchetClient, state: StateStore | None = None) -> None:
        self.client = client
        self.state = state

    @property
    def own_user_id(self) -> str:
        """The bot's user id."""
        return self.client.user_id

    def room_count(self) -> int:
        """How many rooms the bot is in (as far as it has synced)."""
        return len(self.client.rooms)

    async def fetch(self, since: str | None, *, timeout_ms: int, full_state: bool | None = None) -> SyncBatch:
        """Long-poll the next batch after ``since`` (``None``: an initial sync, without timelines).

        Raises :class:`SyncFailed` for an error answer or a transport or parse error nio did not retry; a storage
        error (the crypto store, or the rooms' saved state, could not be written) propagates as is, see
        :func:`is_storage_error`.
        """
        try:
            resp = await self.client.sync(
                timeout=timeout_ms,
                sync_filter=SYNC_FILTER if since is not None else INITIAL_SYNC_FILTER,
                since=since,
                full_state=full_state,
            )
        except Exception as exc:  # malformed responses, transport errors nio did not retry
            if is_storage_error(exc):
                raise
            raise SyncFailed(describe(exc)) from exc
        if not isinstance(resp, SyncResponse):
            raise SyncFailed(describe(resp))
        # rooms the bot left or was removed from: nio keeps them until they are forgotten (a full-state sync would
        # not bring them back either), so they are dropped here, from the saved state first
        left = [room_id for room_id in resp.rooms.leave if room_id not in resp.rooms.join]
        if self.state is not None:
            self.state.save_room_state(room_state_rows(resp), left=left, replace_all=since is None or bool(full_state))
        for room_id in left:
            self.client.rooms.pop(room_id, None)
        return SyncBatch.from_response(resp, self.client.user_id)

    def restore_rooms(self, on_room: Callable[[str, list[Event]], None] | None = None) -> int | None:
        """Load every joined room from the state saved by earlier runs into the client, as a full sync would, calling
        ``on_room`` with each room's id and state events (no timeline) once it is built; returns how many rooms were
        loaded, or None if no complete state was saved (the first sync after a restart then asks for every room's full
        state). A storage error propagates (:func:`is_storage_error`).

        One room is read, parsed and built at a time (:meth:`StateStore.iter_room_state`): parsing every room's events
        first and building the rooms after leaves what the rooms keep scattered through the memory of the whole parse,
        which CPython's allocator then cannot give back (10,000 rooms: bench/memrooms.py)."""
        if self.state is None or not self.state.room_state_complete:
            return None
        started = time.monotonic()
        parse = Event.parse_event
        loads = json.loads
        self.client.restore_rooms(
            ((room_id, [parse(loads(text)) for text in texts]) for room_id, texts in self.state.iter_room_state()),
            on_room,
        )
        log.info(
            "loaded %d rooms as the last run left them (%.1fs); resuming with an incremental sync",
            len(self.client.rooms), time.monotonic() - started,
        )
        return len(self.client.rooms)

    async def backfill(self, room_id: str, prev_batch: str, stop_ms: int, max_pages: int) -> list[Event]:
        """Events of ``room_id`` before ``prev_batch`` back to ``stop_ms`` (server time), oldest first."""
        collected: list[Event] = []
        token = prev_batch
        for _ in range(max_pages):
            resp = await self.client.room_messages(room_id, start=token, direction=MessageDirection.back, limit=100)
            if not isinstance(resp, RoomMessagesResponse):
                log.warning("could not fill the timeline gap in %s: %s", room_id, describe(resp))
                break
            reached = False
            for event in resp.chunk:
                if (getattr(event, "server_timestamp", 0) or 0) < stop_ms:
                    reached = True
                    break
                collected.append(event)
            if reached or not resp.chunk or not resp.end or resp.end == token:
                break
            token = resp.end
        else:
            log.warning("timeline gap in %s is longer than %d pages; older events skipped", room_id, max_pages)
        collected.reverse()
        return collected

    def decrypt(self, room_id: str, source: dict[str, Any]) -> Event | None:
        """A waiting event decrypted now; None if it still cannot be (logged at DEBUG).

        Raises ValueError if ``source`` is not an encrypted event at all.
        """
        event = Event.parse_event(source)
        if not isinstance(event, MegolmEvent):
            raise ValueError("not an encrypted event")
        event.room_id = room_id
        try:
            decrypted = self.client.decrypt_event(event)
        except (EncryptionError, Exception) as exc:
            log.debug("still cannot decrypt %s: %s", source.get("event_id"), exc)
            return None
        late = getattr(self.client, "late_room_event", None)
        if late is not None:
            late(room_id, decrypted)  # in-room verification events, among others (bot/e2ee/verification_service.py)
        return decrypted

    async def request_key(self, room_id: str, event: Event) -> None:
        """Ask the sender's devices for the key of an undecryptable event (once); failures are logged."""
        event.room_id = room_id
        try:
            await self.client.request_room_key(event)
        except LocalProtocolError:
            pass  # already requested
        except Exception as exc:
            log.warning("room key request for %s failed: %s", event.event_id, describe(exc))

    async def join(self, room_id: str) -> str | None:
        """Join ``room_id``; None on success, else why it failed."""
        resp = await self.client.join(room_id)
        return None if hasattr(resp, "room_id") else describe(resp)

    async def leave(self, room_id: str) -> None:
        """Leave (or reject the invite to) ``room_id``."""
        await self.client.room_leave(room_id)

    async def maintain_keys(self) -> None:
        """Upload, query and claim keys as nio asks, and send queued to-device messages; failures are logged."""
        client = self.client
        try:
            if client.should_upload_keys:
                await client.keys_upload()
            if client.should_query_keys:
                await client.keys_query()
            if client.should_claim_keys:
                await client.keys_claim(client.get_users_for_key_claiming())
            await client.send_to_device_messages()
        except Exception as exc:
            log.warning("key maintenance failed (%s); will retry after the next sync", describe(exc))
