"""The transaction-fed event source: appservice transactions become the runtime's :class:`~bot.matrix.sync.SyncBatch`
es, so the same runtime (routing, plugins, handled records, exactly-once) runs without a ``/sync`` loop.

The HTTP side (:mod:`bot.appservice.server`) hands each authenticated, parsed transaction to :meth:`submit`, which
waits until the runtime has handled it. The runtime's transaction pump takes them one by one from :meth:`fetch`
(the homeserver sends an appservice's transactions one at a time, in order) and, once every event's handling has
ended, calls :meth:`acknowledge` (the id is appended to ``state.db``, then the homeserver gets its 200) or
:meth:`reject` (the runtime is stopping: 503, the homeserver sends the transaction again later).

Exactly once, across restarts: a transaction id is recorded only after its events are handled, so a crash or kill
before that means the homeserver sends it again; its events that a plugin already handled are skipped by the
per-plugin handled records, and those handled halfway re-send with the same transaction ids (the homeserver returns
the first event). A transaction id already recorded is answered 200 at once. The same id arriving again while it is
being handled (the homeserver timed out and retried) waits for the first delivery's outcome instead of running twice.

For each transaction, before its events reach nio: invites of ghosts are answered (:meth:`Ghosts.on_invite`), and a
room the bot joined (or has not seen in this process) gets its current state fetched, since nothing before the
appservice's interest in the room was pushed. Events sent by the ghosts themselves update the room model but are not
handed to plugins (a bridge does not see its own ghosts' messages come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.appservice.ghosts import Ghosts
from bot.appservice.transactions import (
    SEEN_LIMIT,
    DeviceExtensions,
    SeenTransactions,
    Transaction,
    device_extensions,
    ghost_invites,
    own_joins,
    rooms_of,
    sync_body,
    to_device_for,
)
from bot.errors import MatrixRequestError, StateError
from bot.matrix.client import RatchetClient
from bot.matrix.events import Event
from bot.matrix.requests import api_path, request_json
from bot.matrix.sync import SyncBatch, SyncFailed, SyncSource, batch_from_body, describe
from bot.storage.state import StateStore

__all__ = ["TransactionSource"]

log = logging.getLogger("ratchet.appservice")

#: The ``kv`` key under which earlier versions kept the latest handled transaction ids, as one JSON list rewritten per
#: transaction (about 50 µs of JSON and a 4 KiB write each time); moved to one row per id when the source opens.
LEGACY_SEEN_KEY = "appservice.transactions"


@dataclass
class _Delivery:
    """A transaction waiting for, or in, the runtime; ``done`` resolves True (handled) or False (try again)."""

    txn: Transaction
    done: asyncio.Future[bool]


class TransactionSource:
    """An :class:`~bot.matrix.sync.EventSource` fed by appservice transactions instead of ``/sync``."""

    def __init__(
        self,
        client: RatchetClient,
        state: StateStore,
        ghosts: Ghosts,
        *,
        invite_allowed: Callable[[str], bool],
    ) -> None:
        self.client = client
        self.state = state
        self.ghosts = ghosts
        self._invite_allowed = invite_allowed
        legacy = state.get(LEGACY_SEEN_KEY)
        if legacy is not None:  # an earlier version's list: moved to rows once, in one transaction
            state.import_transactions(SeenTransactions.load(legacy), drop_key=LEGACY_SEEN_KEY)
        #: Handled transaction ids (persisted one row each, :meth:`StateStore.record_transaction`).
        self.seen = SeenTransactions(state.recent_transactions(SEEN_LIMIT))
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._inflight: dict[str, _Delivery] = {}
        self._state_loaded: set[str] = set()
        self._closed = False
        #: Numbers the batches handed to nio (their ``next_batch``); a counter, not a uuid4 (a getrandom per batch).
        self._deliveries = itertools.count(1)
        #: Decryption, key requests and key upkeep work as for ``/sync`` (the same nio machine, fed differently).
        self._keys = SyncSource(client)

    # -- the HTTP side ----------------------------------------------------------------------------------------

    async def submit(self, txn: Transaction) -> bool:
        """Hand ``txn`` to the runtime and wait for the outcome: True once handled (or handled before), False if it
        must be sent again (the runtime is stopping, or storage failed)."""
        if txn.txn_id in self.seen:
            log.info("transaction %s was handled already; answering 200", txn.txn_id)
            return True
        delivery = self._inflight.get(txn.txn_id)
        if delivery is None:
            if self._closed:
                return False
            loop = asyncio.get_running_loop()
            delivery = _Delivery(txn, loop.create_future())
            self._inflight[txn.txn_id] = delivery
            delivery.done.add_done_callback(lambda _: self._inflight.pop(txn.txn_id, None))
            self._queue.put_nowait(delivery)
        else:
            log.info("transaction %s came again while being handled; waiting for the first delivery", txn.txn_id)
        return await asyncio.shield(delivery.done)  # the homeserver hanging up does not cancel the handling

    def close(self) -> None:
        """Stop taking transactions: those waiting or running are answered "try again" (503)."""
        self._closed = True
        for delivery in list(self._inflight.values()):
            if not delivery.done.done():
                delivery.done.set_result(False)

    # -- the runtime side ---------------------------------------------------------------------------------------

    @property
    def own_user_id(self) -> str:
        """The bridge bot's user id (the registration's sender)."""
        return self.client.user_id

    def room_count(self) -> int:
        """How many rooms the appservice has seen events of in this process."""
        return len(self.client.rooms)

    def restore_rooms(self, on_room: Callable[[str, list[Event]], None] | None = None) -> None:
        """None: an appservice loads each room's state when it first needs it (:meth:`ensure_room`)."""
        return None

    async def fetch(self, since: str | None, *, timeout_ms: int, full_state: bool | None = None) -> SyncBatch:
        """The next transaction as a batch whose ``token`` is the transaction id; an empty batch (token ``""``) if
        none came within ``timeout_ms``. ``since`` and ``full_state`` mean nothing here.

        Raises :class:`~bot.matrix.sync.SyncFailed` when nio cannot parse it (the transaction is answered 500).
        """
        try:
            delivery = self._queue.get_nowait()  # came while the last one was handled: no timer, no task
        except asyncio.QueueEmpty:
            try:
                async with asyncio.timeout(timeout_ms / 1000):  # unlike wait_for, no task around the get
                    delivery = await self._queue.get()
            except TimeoutError:
                return SyncBatch("", [])
        if delivery.done.done():  # answered meanwhile (the source was closed)
            return SyncBatch("", [])
        txn = delivery.txn
        try:
            return await self._batch(txn)
        except Exception as exc:
            if not delivery.done.done():
                delivery.done.set_result(False)
            if isinstance(exc, SyncFailed):
                raise
            raise SyncFailed(f"transaction {txn.txn_id}: {describe(exc)}") from exc

    async def _batch(self, txn: Transaction) -> SyncBatch:
        own = self.own_user_id
        for invite in ghost_invites(txn.events, self.ghosts.is_ghost):
            allowed = invite.inviter == own or self._invite_allowed(invite.inviter)
            await self.ghosts.on_invite(invite.room_id, invite.user_id, invite.inviter, allowed)
        joined_now = own_joins(txn.events, own)
        states: dict[str, list[dict[str, Any]]] = {}
        for room_id in rooms_of(txn.events):
            if room_id in joined_now or room_id not in self._state_loaded:
                fetched = await self._room_state(room_id)
                if fetched is not None:
                    states[room_id] = fetched
        device_id = self.client.appservice_device_id
        if device_id is not None:  # encryption: what the transaction carries for the bot's device
            to_device = to_device_for(txn.to_device, own, device_id)
            device = device_extensions(txn.extensions, own, device_id)
        else:
            to_device, device = [], None
        # a token of its own per delivery: nio ignores a body whose next_batch is its current one (a transaction
        # rejected and sent again must still be handled)
        body = sync_body(
            txn.events, own_user_id=own, next_batch=f"as-{txn.txn_id}-{next(self._deliveries)}", state=states,
            to_device=to_device, device=device,
        )
        batch = await batch_from_body(self.client, body)
        if device is not None:
            self._note_key_counts(body, device)
        if self.ghosts.devices is not None:  # the ghosts' own devices: their to-device messages and key counts
            await self.ghosts.devices.feed(txn.to_device, txn.extensions)
        for room in batch.rooms:
            room.events = [e for e in room.events if not self.ghosts.is_ghost(getattr(e, "sender", ""))]
        batch.token = txn.txn_id
        return batch

    def _note_key_counts(self, body: dict[str, Any], device: DeviceExtensions) -> None:
        """The bot device's one-time-key count (zero included: nio ignores a zero) and fallback key state, so that
        :meth:`maintain_keys` uploads more keys when they run low and a used fallback key is replaced."""
        olm = self.client.olm
        if olm is None:
            return
        if device.one_time_key_counts is not None:
            count = device.one_time_key_counts.get("signed_curve25519", 0)
            target = olm.account.max_one_time_keys // 2
            if count < target and olm.uploaded_key_count != count:
                log.info("the bot's device has %d one-time keys left on the server; uploading more", count)
            olm.uploaded_key_count = count
        self.client.fallback.observe_sync(body)

    async def ensure_room(self, room_id: str) -> None:
        """Load a room the bot has not seen in this process (its state through nio, as if synced): sending into it
        then knows its encryption and members. Rooms the bot cannot see stay unknown."""
        if room_id not in self.client.rooms:
            await self._load_room(room_id)

    async def _load_room(self, room_id: str) -> None:
        state = await self._room_state(room_id)
        if not state:
            return
        body = sync_body([], own_user_id=self.own_user_id, next_batch="as-load", state={room_id: state})
        await batch_from_body(self.client, body)

    async def _room_state(self, room_id: str) -> list[dict[str, Any]] | None:
        """The room's current state as the bot sees it; None if the bot cannot see it (not in the room)."""
        try:
            answer = await request_json(self.client, "GET", api_path("rooms", room_id, "state"))
        except MatrixRequestError as err:
            if err.status in (403, 404):
                self._state_loaded.add(room_id)  # not the bot's room (a ghost's): its join will load it
                return None
            raise
        self._state_loaded.add(room_id)
        if not isinstance(answer, list):
            return None
        return [dict(e, room_id=room_id) for e in answer if isinstance(e, dict)]

    def acknowledge(self, token: str) -> None:
        """Every event of transaction ``token`` is handled: record its id, then answer the homeserver 200.

        Raises :class:`~bot.errors.StateError` if the id cannot be recorded (the transaction is answered 500 and comes
        again; its events are skipped then by their handled records).
        """
        delivery = self._inflight.get(token)
        self.seen.add(token)
        try:
            self.state.record_transaction(token, keep=SEEN_LIMIT)
        except StateError:
            if delivery is not None and not delivery.done.done():
                delivery.done.set_result(False)
            raise
        if delivery is not None and not delivery.done.done():
            delivery.done.set_result(True)

    def reject(self, token: str, reason: str) -> None:
        """Transaction ``token`` was not handled completely: answer "try again" (503)."""
        delivery = self._inflight.get(token)
        if delivery is not None and not delivery.done.done():
            log.warning("transaction %s not completely handled (%s); the homeserver will send it again", token, reason)
            delivery.done.set_result(False)

    # -- the rest of the EventSource protocol ------------------------------------------------------------------

    async def backfill(self, room_id: str, prev_batch: str, stop_ms: int, max_pages: int) -> list[Event]:
        """Nothing: transactions have no gaps (the homeserver keeps what it could not deliver)."""
        return []

    def decrypt(self, room_id: str, source: dict[str, Any]) -> Event | None:
        """A waiting event decrypted now (its room key came in a later transaction), or None; as for ``/sync``.

        Raises ValueError if ``source`` is not an encrypted event at all.
        """
        return self._keys.decrypt(room_id, source)

    async def request_key(self, room_id: str, event: Event) -> None:
        """Ask the sender's devices for the key of an undecryptable event (from the bot's device; once)."""
        if self.client.olm is not None:
            await self._keys.request_key(room_id, event)

    async def join(self, room_id: str) -> str | None:
        """The bot joins ``room_id``; None on success, else why it failed. The room's state is loaded at once (its
        encryption above all: the bot's first message there may go out before the transaction with its join)."""
        resp = await self.client.join(room_id)
        if not hasattr(resp, "room_id"):
            return describe(resp)
        await self._load_room(room_id)
        return None

    async def leave(self, room_id: str) -> None:
        """The bot leaves (or declines the invite to) ``room_id``."""
        with contextlib.suppress(Exception):
            await self.client.room_leave(room_id)

    async def maintain_keys(self) -> None:
        """After each transaction, as after each sync: upload one-time keys when the transactions' counts say they
        run low (and a new fallback key), query the keys of users whose devices changed, claim keys for missing Olm
        sessions and send queued to-device messages. Failures are logged."""
        if self.client.olm is not None:
            await self._keys.maintain_keys()
        if self.ghosts.devices is not None:
            await self.ghosts.devices.maintain()
