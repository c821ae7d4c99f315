"""The nio client Ratchet drives, with the retry policy of a well-behaved bot and the E2EE hooks nio lacks.

nio already retries a request on connection errors and timeouts, and honours ``retry_after_ms`` on
``M_LIMIT_EXCEEDED``. Its wait between connection retries is a plain exponential without jitter, so every bot that
lost the same homeserver would come back in lock-step; we add full jitter and a floor, so a down homeserver sees a
handful of requests per minute from us, never a storm.

E2EE hooks (see :mod:`bot.e2ee.trust` and :mod:`bot.matrix.fallback_keys`):

* the raw ``/keys/query`` body (cross-signing keys nio ignores) goes to the attached
  :class:`~bot.e2ee.trust.TrustPolicy`; outbound sessions of rooms whose members' keys or signatures changed are
  rotated;
* :meth:`RatchetClient.share_group_session` (used by ``room_send`` and ``BotAPI``) gives room keys only to the
  devices the trust policy accepts and sends the others ``m.room_key.withheld``; ``ignore_unverified_devices`` is
  then moot (nio's own verification flags are not used);
* a fallback key is kept on the server (``fallback_keys`` in ``/keys/upload``), rotated when a sync reports it used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from uuid import uuid4

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    BadEvent,
    ErrorResponse,
    Event,
    KeysQueryResponse,
    KeysUploadResponse,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    Response,
    RoomEncryptionEvent,
    RoomMemberEvent,
    RoomSendResponse,
    ShareGroupSessionError,
    ShareGroupSessionResponse,
    SyncResponse,
    ToDeviceEvent,
    UnknownBadEvent,
    UnknownToDeviceEvent,
)
from nio.api import Api
from nio.responses import EmptyResponse, RoomInfo, Timeline
from nio.store import SqliteMemoryStore

from bot.crypto.withheld import CODE_NO_OLM, WITHHELD_EVENT, Verdict, no_olm_content, withheld_content
from bot.matrix.events import is_state_shaped
from bot.matrix.fallback_keys import FallbackKeys
from bot.matrix.olm import RatchetOlm
from bot.timeslice import TimeSlice

if TYPE_CHECKING:
    from bot.metrics import Metrics

__all__ = ["KeySharePolicy", "RatchetClient", "SendOnlyOlm", "make_appservice_client", "make_client"]

log = logging.getLogger(__name__)

#: First wait after a failed request, in seconds; doubles with each further failure.
BACKOFF_BASE = 0.5
#: Longest wait between two attempts, in seconds.
BACKOFF_CAP = 60.0
#: Recipients per ``m.room_key.withheld`` to-device request.
WITHHELD_BATCH = 100


def backoff_delay(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, capped, with jitter.

    The delay is drawn from ``[d/2, d]`` where ``d = min(cap, base * 2**(attempt-1))``, so the mean still grows
    exponentially but clients that failed together spread out.
    """
    ceiling = min(cap, base * (2 ** min(max(attempt, 1) - 1, 30)))
    return random.uniform(ceiling / 2, ceiling)


# -- responses that keep what nio's parsers drop ------------------------------------------------------------


class _KeysQueryWithCrossSigning(KeysQueryResponse):
    """Parses like nio's KeysQueryResponse and keeps the cross-signing keys as ``ratchet_body``."""

    @classmethod
    def from_dict(cls, parsed_dict: dict[Any, Any]):  # type: ignore[override]
        resp = KeysQueryResponse.from_dict(parsed_dict)
        if isinstance(resp, KeysQueryResponse):
            resp.ratchet_body = {  # type: ignore[attr-defined]
                key: parsed_dict.get(key)
                for key in ("device_keys", "master_keys", "self_signing_keys", "user_signing_keys")
                if isinstance(parsed_dict.get(key), dict)
            }
        return resp


class _SyncWithKeyCounts(SyncResponse):
    """Parses like nio's SyncResponse and keeps the raw key counts (fallback key types) as ``ratchet_keys``."""

    @classmethod
    def from_dict(cls, parsed_dict: dict[Any, Any]):  # type: ignore[override]
        resp = SyncResponse.from_dict(parsed_dict)
        if isinstance(resp, SyncResponse):
            resp.ratchet_keys = {  # type: ignore[attr-defined]
                key: parsed_dict[key]
                for key in (
                    "device_one_time_keys_count",
                    "device_unused_fallback_key_types",
                    "org.matrix.msc2732.device_unused_fallback_key_types",
                )
                if key in parsed_dict
            }
        return resp


_CAPTURING = {KeysQueryResponse: _KeysQueryWithCrossSigning, SyncResponse: _SyncWithKeyCounts}


class _AccountDataPut(EmptyResponse):
    """Answer of ``PUT /user/{userId}/account_data/{type}`` (an empty object)."""


@dataclass
class _ToDeviceSent(Response):
    """A ``/sendToDevice`` answer for messages nio does not track."""

    @classmethod
    def from_dict(cls, parsed_dict: dict[Any, Any]) -> Response:
        if isinstance(parsed_dict, dict) and "errcode" in parsed_dict:
            return ErrorResponse.from_dict(parsed_dict)
        return cls()


def _chunks(messages: dict[str, dict[str, Any]], size: int) -> Iterator[dict[str, dict[str, Any]]]:
    chunk: dict[str, dict[str, Any]] = {}
    count = 0
    for user_id, devices in messages.items():
        for device_id, content in devices.items():
            chunk.setdefault(user_id, {})[device_id] = content
            count += 1
            if count >= size:
                yield chunk
                chunk, count = {}, 0
    if chunk:
        yield chunk


class KeySharePolicy(Protocol):
    """Who gets the bot's room keys: what :class:`RatchetClient` asks its trust policy (see :mod:`bot.e2ee.trust`)."""

    def wants_query(self, user_id: str) -> bool:
        """True when ``user_id``'s keys should be (re)queried before sharing."""

    def note_queried(self, users: Iterable[str]) -> None:
        """``users``' keys are being queried now."""

    def device_verdict(self, user_id: str, device_id: str, *, blacklisted: bool = False) -> Verdict:
        """Whether this device gets room keys (``share``), and the withheld code when it does not."""

    def observe_keys_query(self, body: Mapping[str, Any]) -> tuple[list[Any], set[str]]:
        """Take a raw ``/keys/query`` answer; returns the identity changes and the users whose keys changed."""

    def notify(self, changes: Iterable[Any]) -> None:
        """Tell the policy's listeners about identity changes."""


class SendOnlyOlm(RatchetOlm):
    """The Olm machine of a device that only writes (an appservice ghost's, bot/appservice/ghost_devices.py): room
    keys other devices send it are dropped instead of stored. Members share their room keys with every device in the
    room, ghosts' too; the bridge bot's device is the one that reads, so a ghost's store keeps only its own sessions
    (and, on PostgreSQL, never takes over a Megolm row the bot's device holds: the table is keyed by session id)."""

    def _handle_room_key_event(self, sender: str, sender_key: str, payload: dict[Any, Any]) -> None:
        log.debug("%s %s: dropped a room key from %s (this device does not read)", self.user_id, self.device_id, sender)
        return None

    def _handle_forwarded_room_key_event(self, sender: str, sender_key: str, payload: dict[Any, Any]) -> None:
        return None


class RatchetClient(AsyncClient):
    """nio's AsyncClient with jittered exponential backoff, trust-aware key sharing and fallback keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The trust policy deciding who gets room keys (set by :meth:`TrustPolicy.attach`); None: nio's default.
        self.trust: KeySharePolicy | None = None
        self.olm: RatchetOlm | None = None
        #: Keeps a fallback key on the server.
        self.fallback = FallbackKeys(self)
        self._no_olm_sent: set[tuple[str, str]] = set()
        self._share_locks: dict[str, asyncio.Lock] = {}
        #: Where rate-limit waits are counted (set by the runtime); None: not counted.
        self.metrics: Metrics | None = None
        #: The callbacks of :meth:`on_room_event` (also handed events decrypted late, :meth:`late_room_event`).
        self._room_event_taps: list[tuple[frozenset[str], Callable[[str, dict[str, Any]], None]]] = []
        #: Appservice mode: the bot's device, named on every request that does not assert another user (Synapse's
        #: ``?device_id=``: the as_token alone has no device, and ``/keys/upload`` needs one). None otherwise.
        self.appservice_device_id: str | None = None
        #: Appservice mode: loads a room the client has not seen yet (no ``/sync`` brought it: nothing was pushed
        #: since the start), so that sending into it knows whether it is encrypted and who is in it.
        self.room_loader: Callable[[str], Awaitable[None]] | None = None
        #: Users whose membership changes need no new Megolm session (an appservice's ghosts: they never get the
        #: bot's room keys, see :attr:`key_share_skip`).
        self.deviceless_user: Callable[[str], bool] | None = None
        #: Appservice mode: users whose devices never get this device's room keys (the appservice's own users: the
        #: bot reads, the ghosts only write). None: everyone in the room.
        self.key_share_skip: Callable[[str], bool] | None = None
        #: Called with ``(room_id, user_id)`` for each membership change seen in a timeline (appservice mode: the
        #: ghosts' devices rotate their Megolm sessions as the bot's does).
        self.membership_listeners: list[Callable[[str, str], None]] = []
        #: False for a device that only writes (an appservice ghost's): room keys sent to it are dropped, not stored.
        self.reads_room_keys = True
        #: nio decrypts and parses a sync's timeline events one by one in one call; every few ms it pauses.
        self._event_turn = TimeSlice()

    async def get_timeout_retry_wait_time(self, got_timeouts: int) -> float:
        return backoff_delay(got_timeouts, cap=self.config.max_timeout_retry_wait_time)

    async def send(
        self,
        method: str,
        path: str,
        data: Any = None,
        headers: dict[str, str] | None = None,
        trace_context: Any = None,
        timeout: float | None = None,
    ):
        """nio's transport send, retrying 5xx answers of requests that are safe to repeat.

        nio retries connection errors and 429s but returns a 500/502/503/504 as a final error, so one bad gateway
        answer would drop a reply or a room-key share. Repeating is safe for GET, for PUTs (they carry a transaction
        id: the server applies them once) and for the idempotent key endpoints; other requests are not repeated.
        """
        if self.appservice_device_id is not None:
            path = _with_device(path, self.user_id, self.appservice_device_id)
        attempt = 0
        metrics = self.metrics
        while True:
            try:
                resp = await super().send(method, path, data, headers, trace_context, timeout)
            except (aiohttp.ClientError, TimeoutError):  # nio retries these: the homeserver is not answering
                if metrics is not None:
                    metrics.homeserver_failed()
                raise
            if metrics is not None:
                if resp.status >= 500:
                    metrics.homeserver_failed()
                else:
                    metrics.homeserver_answered()
                    if resp.status == 429:
                        await self._count_rate_limit(resp)
            if resp.status < 500 or attempt >= RETRY_5XX or not _repeatable(method, path, data):
                return resp
            attempt += 1
            delay = backoff_delay(attempt, cap=8.0)
            log.warning(
                "%s %s answered %d; retrying in %.1fs (%d/%d)",
                method, path.split("?")[0], resp.status, delay, attempt, RETRY_5XX,
            )
            resp.release()
            await asyncio.sleep(delay)

    async def _count_rate_limit(self, resp: Any) -> None:
        """Count a 429 and the wait it asks for (nio then waits ``retry_after_ms``; aiohttp keeps the body read)."""
        wait = 0.0
        with contextlib.suppress(Exception):
            body = await resp.json(content_type=None)
            if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), int | float):
                wait = float(body["retry_after_ms"]) / 1000
        assert self.metrics is not None
        self.metrics.rate_limit_waits.inc()
        self.metrics.rate_limit_wait_seconds.inc(wait)

    # -- room state only from real state events --------------------------------------------------------------

    def _handle_timeline_event(self, event: Any, room_id: str, room: Any, encrypted_rooms: set[str]) -> Any:
        """nio's timeline handling, except that only real state events change the room's state.

        nio applies every timeline event whose *type* is a state type to its room model, decrypted ones included: a
        member could send a Megolm-encrypted "m.room.power_levels" with a state_key (or an ordinary message event of
        that type) and become admin, or the room's creator, in the bot's eyes. State is never encrypted and always
        carries a ``state_key``: a decrypted event, or one without a ``state_key``, is handed on as an event and
        changes nothing. Returns the decrypted event, as nio does.
        """
        decrypted = None
        if isinstance(event, MegolmEvent) and self.olm:
            event.room_id = room_id
            decrypted = self.olm._decrypt_megolm_no_error(event)
            if decrypted:
                if is_state_shaped(decrypted):
                    log.warning(
                        "%s in %s is an encrypted event of state type %s from %s: state is never encrypted, so it "
                        "changes nothing and is not handled",
                        getattr(event, "event_id", "?"), room_id, decrypted.source.get("type"), event.sender,
                    )
                return decrypted
        if isinstance(event, RoomEncryptionEvent) and is_state_shaped(event):
            encrypted_rooms.add(room_id)
        if isinstance(event, (UnknownBadEvent, BadEvent)) or not is_state_shaped(event):
            return decrypted
        if isinstance(event, RoomMemberEvent):
            if room.handle_membership(event):
                for listener in self.membership_listeners:
                    listener(room_id, event.state_key)
                if not (self.deviceless_user is not None and self.deviceless_user(event.state_key)):
                    self._invalidate_session_for_member_event(room_id)
        else:
            room.handle_event(event)
        return decrypted

    def restore_rooms(
        self,
        rooms: Iterable[tuple[str, list[Event]]],
        on_room: Callable[[str, list[Event]], None] | None = None,
    ) -> None:
        """Rebuild joined rooms from saved state events (``(room_id, events)`` pairs) as a full sync's
        ``state`` sections would build them: members, power levels, encryption and the rest, and the encrypted rooms'
        members tracked for their device keys. A room whose state does not have the bot in it is dropped.

        Rooms are built one at a time, ``on_room`` called with each one kept: given pairs read lazily, only one room's
        events need to be in memory at once. (Thousands of rooms' events parsed at once leave what the rooms keep
        scattered through all of their memory, which the allocator then cannot give back: bench/memrooms.py.)"""
        encrypted: set[str] = set()
        for room_id, state in rooms:
            self._handle_joined_state(room_id, RoomInfo(Timeline([], False, None), state, [], []), encrypted)
            room = self.rooms[room_id]
            if self.user_id not in room.users:
                del self.rooms[room_id]
                encrypted.discard(room_id)
                continue
            if self.olm is not None and room.encrypted:
                self.olm.update_tracked_users(room)
            if on_room is not None:
                on_room(room_id, state)
        self.encrypted_rooms.update(encrypted)
        if self.store is not None and encrypted:
            self.store.save_encrypted_rooms(encrypted)

    # -- raw bodies --------------------------------------------------------------------------------------------

    async def _send(self, response_class: type, *args: Any, **kwargs: Any):
        return await super()._send(_CAPTURING.get(response_class, response_class), *args, **kwargs)

    def load_store(self) -> None:
        """nio's ``load_store``, with :class:`RatchetOlm` as the Olm machine."""
        if self.store or not self.config.encryption_enabled or self.config.store is SqliteMemoryStore:
            super().load_store()
            return
        if not self.user_id:
            raise LocalProtocolError("User id is not set")
        if not self.device_id:
            raise LocalProtocolError("Device id is not set")
        if not self.store_path:
            return
        self.store = self.config.store(
            self.user_id, self.device_id, self.store_path, self.config.pickle_key, self.config.store_name
        )
        olm_class = RatchetOlm if self.reads_room_keys else SendOnlyOlm
        self.olm = olm_class(self.user_id, self.device_id, self.store)
        self.encrypted_rooms = self.store.load_encrypted_rooms()
        if self.config.store_sync_tokens:
            self.loaded_sync_token = self.store.load_sync_token()

    async def _on_event(self, event: Any, room: Any) -> None:
        """nio's per-event callbacks, and a turn of the event loop every few milliseconds.

        nio handles a sync's timeline (decryption, parsing, room state) in one call that awaits only this per event:
        a burst of 500 encrypted messages would hold the loop for tens of milliseconds (issue 20). nio already lets
        its event callbacks suspend here (they commonly send), so pausing here is within its contract."""
        await super()._on_event(event, room)
        if self._event_turn.due():
            await self._event_turn.pause()

    async def receive_response(self, response: Response) -> None:
        """nio's handling, a guard against misparsed soft logouts, and the E2EE hooks.

        nio 0.26 builds ``ShareGroupSessionError`` with its arguments shifted: the set of devices the key went to
        lands in ``soft_logout``, and nio wipes the access token on a truthy ``soft_logout``. One 5xx with a JSON body
        on ``/sendToDevice`` while sharing a room key then logged the bot out for good ("Not logged in" on every
        request). A real soft logout is a JSON boolean; anything else is not one.
        """
        if isinstance(response, ErrorResponse) and not isinstance(response.soft_logout, bool):
            response.soft_logout = False
        await super().receive_response(response)
        if self.olm is None:
            return
        try:
            if isinstance(response, SyncResponse):
                keys = getattr(response, "ratchet_keys", None)
                if keys is not None:
                    self.fallback.observe_sync(keys)
            elif isinstance(response, KeysQueryResponse) and self.trust is not None:
                body = getattr(response, "ratchet_body", None)
                if body:
                    self._observe_keys(body)
        except Exception as exc:  # a hook must never break nio's own handling
            log.warning("E2EE hook failed on %s: %s", type(response).__name__, exc, exc_info=exc)

    def _observe_keys(self, body: dict[str, Any]) -> None:
        assert self.trust is not None
        changes, changed_users = self.trust.observe_keys_query(body)
        for change in changes:
            if change.new_master is not None:
                changed_users.add(change.user_id)
        if changed_users:
            for room in self.rooms.values():
                if room.encrypted and not changed_users.isdisjoint(room.users):
                    self.invalidate_outbound_session(room.room_id)  # excluded/admitted devices change: new session
        if changes:
            self.trust.notify(changes)

    async def query_user_keys(self, users: Iterable[str]) -> None:
        """Query the keys of ``users`` now (with any other pending key queries)."""
        if self.olm is None:
            return
        self.olm.users_for_key_query.update(users)
        try:
            await self.keys_query()
        except LocalProtocolError:
            pass  # nothing left to query (a concurrent query did it)

    # -- fallback keys -----------------------------------------------------------------------------------------

    @property
    def should_upload_keys(self) -> bool:
        """nio's rule (identity and one-time keys), or a fallback key waiting for upload."""
        if self.olm is None:
            return False
        return self.olm.should_upload_keys or (self.olm.account.shared and self.fallback.pending)

    async def keys_upload(self):
        """Upload identity/one-time keys as nio does, plus a pending fallback key."""
        fallback = self.fallback.upload_content() if self.olm is not None and self.olm.account.shared else {}
        if not fallback:
            return await super().keys_upload()
        assert self.olm is not None
        content = self.olm.share_keys() if self.olm.should_upload_keys else {}
        content["fallback_keys"] = fallback
        method, path, data = Api.keys_upload(self.access_token, content)
        resp = await self._send(KeysUploadResponse, method, path, data)
        if isinstance(resp, KeysUploadResponse):  # nio marked the keys published and saved the account
            log.info("uploaded a fallback key (%s)", ", ".join(fallback))
        else:
            log.warning("fallback key upload failed: %s", getattr(resp, "message", resp))
        return resp

    def on_unknown_to_device(self, types: Iterable[str], callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(sender, content)`` for each to-device event of one of ``types`` that nio does not parse
        (``m.room_key.withheld`` among them)."""
        wanted = frozenset(types)

        async def deliver(event: UnknownToDeviceEvent) -> None:
            if event.type in wanted:
                callback(event.sender, event.source.get("content"))

        self.add_to_device_callback(deliver, (UnknownToDeviceEvent,))

    def on_to_device(self, types: Iterable[str], callback: Callable[[str, str, Any], None]) -> None:
        """Call ``callback(sender, type, content)`` for each to-device event of one of ``types``, whether nio parses
        it or not (Olm-encrypted ones after decryption): the ``m.key.verification.*`` messages, which nio's own
        (legacy) SAS would otherwise be the only one to see."""
        wanted = frozenset(types)

        async def deliver(event: ToDeviceEvent) -> None:
            source = getattr(event, "source", None)
            if isinstance(source, dict) and source.get("type") in wanted:
                callback(event.sender, source["type"], source.get("content"))

        self.add_to_device_callback(deliver, (ToDeviceEvent,))

    def on_room_event(self, types: Iterable[str], callback: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``callback(room_id, event source)`` for each timeline event of one of ``types`` as it syncs (decrypted
        events with their plaintext type and content, ``m.relates_to`` included). For machinery that lives beside
        the plugins (in-room verification), not instead of the runtime's handling."""
        wanted = frozenset(types)
        self._room_event_taps.append((wanted, callback))

        async def deliver(room: MatrixRoom, event: Event) -> None:
            source = getattr(event, "source", None)
            if isinstance(source, dict) and source.get("type") in wanted:
                callback(room.room_id, source)

        self.add_event_callback(deliver, (Event,))

    def late_room_event(self, room_id: str, event: Any) -> None:
        """An event decrypted after its sync (its room key came late): the :meth:`on_room_event` callbacks see it
        now. Callbacks must tolerate seeing an event twice."""
        source = getattr(event, "source", None)
        if not isinstance(source, dict):
            return
        for wanted, callback in self._room_event_taps:
            if source.get("type") in wanted:
                try:
                    callback(room_id, source)
                except Exception as exc:  # a tap must never break the late-key path
                    log.warning("room event callback failed on a late event: %s", exc)

    # -- requests nio has no method for ------------------------------------------------------------------------

    async def room_send_encrypted(
        self, room_id: str, event_type: str, content: dict[str, Any], tx_id: str | None = None
    ) -> Response:
        """Encrypt and send an event of any type, reactions included.

        nio's ``room_send`` sends ``m.reaction`` in the clear; modern clients encrypt reactions like any other event.
        The room's Megolm session is shared first, as ``room_send`` would do. ``tx_id`` is the transaction id (random
        if not given).
        """
        enc_type, enc_content = await self.encrypt_for_room(room_id, event_type, content)
        # Not room_send: it would encrypt the m.room.encrypted payload a second time (it only spares m.reaction).
        method, path, data = Api.room_send(self.access_token, room_id, enc_type, enc_content, tx_id or uuid4())
        return await self._send(RoomSendResponse, method, path, data, (room_id,))

    async def encrypt_for_room(
        self, room_id: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """``(m.room.encrypted, encrypted content)`` of an event for ``room_id``, with this device's Megolm session
        (shared first with the devices the trust policy accepts, as ``room_send`` does). Appservice ghosts' messages
        are encrypted so too (bot/appservice/ghosts.py)."""
        await self.ensure_room(room_id)
        room = self.rooms.get(room_id)
        if room is not None and not room.members_synced:
            await self.joined_members(room_id)
            if self.should_query_keys:
                await self.keys_query()
        assert self.olm is not None
        if self.olm.should_share_group_session(room_id):
            sharing = self.sharing_session.get(room_id)
            if sharing is not None:
                await sharing.wait()  # another send is sharing the session right now
            else:
                await self.share_group_session(room_id, ignore_unverified_devices=True)
        return self.encrypt(room_id, event_type, content)

    async def ensure_room(self, room_id: str) -> None:
        """Appservice mode: load ``room_id`` through :attr:`room_loader` if the client has not seen it yet."""
        if room_id not in self.rooms and self.room_loader is not None:
            await self.room_loader(room_id)

    async def room_send(self, room_id: str, *args: Any, **kwargs: Any):  # type: ignore[override]
        """nio's ``room_send``, after loading a room an appservice has not seen since its start (nio needs to know
        whether it is encrypted)."""
        await self.ensure_room(room_id)
        return await super().room_send(room_id, *args, **kwargs)

    async def set_account_data(self, event_type: str, content: dict[str, Any]) -> Response:
        """``PUT /user/{userId}/account_data/{type}`` (nio 0.26 only writes room account data)."""
        path = Api._build_path(["user", self.user_id, "account_data", event_type], {"access_token": self.access_token})
        return await self._send(_AccountDataPut, "PUT", path, Api.to_json(content))

    # -- trust-aware key sharing -------------------------------------------------------------------------------

    def get_missing_sessions(self, room_id: str) -> dict[str, list[str]]:
        """nio's list of devices lacking an Olm session, without those the trust policy excludes from the
        session being shared (no one-time key of theirs is claimed for nothing)."""
        missing = super().get_missing_sessions(room_id)
        session = self.olm.outbound_group_sessions.get(room_id) if self.olm is not None else None
        if session is None or session.shared:
            return missing
        filtered = {u: [d for d in devs if (u, d) not in session.users_ignored] for u, devs in missing.items()}
        return {u: devs for u, devs in filtered.items() if devs}

    async def share_group_session(
        self, room_id: str, ignore_unverified_devices: bool = False
    ) -> ShareGroupSessionResponse | ShareGroupSessionError:
        """Share the room's outbound Megolm session, with only the devices the trust policy accepts.

        Excluded devices get an ``m.room_key.withheld`` notice; devices nio could not open an Olm session with
        get ``m.no_olm`` (once per device). Without a trust policy this is nio's method unchanged.
        """
        olm, trust = self.olm, self.trust
        room = self.rooms.get(room_id)
        if olm is not None and room is not None and room.encrypted and room_id not in self.sharing_session:
            self._skip_own_users(room_id, room, olm)
        if trust is None or olm is None or room is None or not room.encrypted or room_id in self.sharing_session:
            return await super().share_group_session(room_id, ignore_unverified_devices=ignore_unverified_devices)
        lock = self._share_locks.setdefault(room_id, asyncio.Lock())
        contended = lock.locked()
        async with lock:
            if contended and not olm.should_share_group_session(room_id):
                return ShareGroupSessionResponse(room_id, set())  # a concurrent call just shared it
            return await self._share_by_policy(room_id, room, olm, trust)

    def _skip_own_users(self, room_id: str, room: MatrixRoom, olm: RatchetOlm) -> None:
        """Appservice mode: the session about to be shared is marked as not for the devices of
        :attr:`key_share_skip`'s users (no one-time key claimed, no room key, no withheld notice for them)."""
        skip = self.key_share_skip
        if skip is None:
            return
        skipped = [u for u in room.users if skip(u)]
        if not skipped:
            return
        session = olm.outbound_group_sessions.get(room_id)
        if session is None or session.shared:
            olm.create_outbound_group_session(room_id)
            session = olm.outbound_group_sessions[room_id]
        for user_id in skipped:
            for device in olm.device_store.active_user_devices(user_id):
                session.users_ignored.add((user_id, device.id))

    async def _share_by_policy(self, room_id: str, room, olm: RatchetOlm, trust: KeySharePolicy):
        unknown = [u for u in room.users if trust.wants_query(u)]
        if unknown or self.should_query_keys:
            trust.note_queried(unknown)
            await self.query_user_keys(unknown)
        session = olm.outbound_group_sessions.get(room_id)
        if session is None or session.shared:
            olm.create_outbound_group_session(room_id)
            session = olm.outbound_group_sessions[room_id]
        excluded: list[tuple[str, str, Verdict]] = []
        for user_id in list(room.users):
            for device in olm.device_store.active_user_devices(user_id):
                pair = (user_id, device.id)
                if (user_id == self.user_id and device.id == self.device_id) or pair in session.users_shared_with:
                    continue
                if pair in session.users_ignored:
                    continue
                verdict = trust.device_verdict(user_id, device.id, blacklisted=olm.is_device_blacklisted(device))
                if not verdict.share:
                    session.users_ignored.add(pair)
                    excluded.append((user_id, device.id, verdict))
        if excluded:
            log.info(
                "room key for %s withheld from %d device(s): %s",
                room_id,
                len(excluded),
                "; ".join(f"{u} {d}: {v.reason}" for u, d, v in excluded[:10]) + (" ..." if len(excluded) > 10 else ""),
            )
        session_id = session.id
        resp = await super().share_group_session(room_id, ignore_unverified_devices=True)
        sender_key = olm.account.identity_keys["curve25519"]
        messages: dict[str, dict[str, Any]] = {}
        for user_id, device_id, verdict in excluded:
            messages.setdefault(user_id, {})[device_id] = withheld_content(
                room_id=room_id, session_id=session_id, sender_key=sender_key, code=verdict.code or "m.unverified"
            )
        shared = getattr(resp, "users_shared_with", set()) | session.users_shared_with
        for user_id in list(room.users):
            for device in olm.device_store.active_user_devices(user_id):
                pair = (user_id, device.id)
                if pair in shared or pair in session.users_ignored or pair in self._no_olm_sent:
                    continue
                if user_id == self.user_id and device.id == self.device_id:
                    continue
                if olm.session_store.get(device.curve25519):
                    continue  # has a session: the share request itself failed, nio will retry
                self._no_olm_sent.add(pair)
                messages.setdefault(user_id, {})[device.id] = no_olm_content(sender_key=sender_key) | {
                    "room_id": room_id,
                    "session_id": session_id,
                }
                log.info("no Olm session with %s %s (%s): room key not sent", user_id, device.id, CODE_NO_OLM)
        if messages:
            await self._send_withheld(messages)
        return resp

    async def _send_withheld(self, messages: dict[str, dict[str, Any]]) -> None:
        for chunk in _chunks(messages, WITHHELD_BATCH):
            method, path, data = Api.to_device(self.access_token, WITHHELD_EVENT, {"messages": chunk}, uuid4())
            try:
                resp = await self._send(_ToDeviceSent, method, path, data)
            except Exception as exc:
                log.warning("could not send m.room_key.withheld notices: %s", exc)
                continue
            if isinstance(resp, ErrorResponse):
                log.warning("could not send m.room_key.withheld notices: %s", resp)


#: How often a 5xx answer to a repeatable request is retried before it is returned as an error.
RETRY_5XX = 4
_REPEATABLE_POSTS = ("/keys/query", "/keys/claim", "/keys/upload")


def _with_device(path: str, user_id: str, device_id: str) -> str:
    """``path`` with ``user_id=`` and ``device_id=`` added, unless it asserts a user already (a ghost's request names
    no device of the bot) or names a device.

    The bot's own user id is named too: Synapse 1.163 fails a ``device_id=`` without ``user_id=`` with a 500 (it looks
    the device up with the registration's sender as a ``UserID`` object, which its database layer cannot bind).
    """
    query = path.partition("?")[2]
    names = {part.partition("=")[0] for part in query.split("&") if part}
    if "user_id" in names or "device_id" in names:
        return path
    extra = urllib.parse.urlencode({"user_id": user_id, "device_id": device_id})
    return f"{path}{'&' if query else '?'}{extra}"


def _repeatable(method: str, path: str, data: Any) -> bool:
    if data is not None and not isinstance(data, str | bytes):
        return False  # a streamed body (an upload) cannot be sent twice
    if path.split("?")[0].endswith("/sync"):
        return False  # the sync loop has its own backoff (and logs each failure)
    if method in ("GET", "PUT", "DELETE"):
        return True
    return method == "POST" and path.split("?")[0].endswith(_REPEATABLE_POSTS)


def make_client(
    homeserver: str,
    user_id: str,
    store_dir: Path,
    pickle_key: str,
    device_id: str | None = None,
    *,
    store: type[Any] | None = None,
) -> RatchetClient:
    """Build a client with E2EE on and nio's SQLite crypto store under ``store_dir``, or the crypto store class
    ``store`` (PostgreSQL: :func:`bot.matrix.pg_store.postgres_crypto_store`)."""
    from bot.matrix import schemas as fastpath  # issue 8: nio's schema checks, compiled once (same results)
    from bot.matrix.store import LazySqliteStore  # issue 8: room keys read from the store when first needed

    fastpath.install()
    store_class: type[Any] = store if store is not None else LazySqliteStore  # nio's SqliteStore and file format
    config = AsyncClientConfig(
        store=store_class,
        encryption_enabled=True,
        pickle_key=pickle_key,
        store_sync_tokens=False,  # the runtime persists the token itself, after handling
        max_limit_exceeded=None,  # always honour retry_after_ms
        max_timeouts=None,
        max_timeout_retry_wait_time=BACKOFF_CAP,
        request_timeout=60,
    )
    return RatchetClient(
        homeserver, user_id, device_id=device_id or "", store_path=str(store_dir), config=config
    )


def make_appservice_client(
    homeserver: str,
    user_id: str,
    as_token: str,
    *,
    store_dir: Path | None = None,
    pickle_key: str | None = None,
    store: type[Any] | None = None,
) -> RatchetClient:
    """A client for an appservice's bot (``user_id``, the registration's sender) acting with ``as_token``, without
    login; the same retries as :func:`make_client`. Ghosts act through it too, with ``?user_id=``
    (bot/appservice/ghosts.py).

    With ``store_dir`` and ``pickle_key``, E2EE is on as in :func:`make_client` (the crypto store class ``store``, or
    nio's SQLite file): bot/appservice/device.py then creates the bot's device (MSC4190) and loads its store. Without,
    the client has no device and no encryption.
    """
    from bot.matrix import schemas as fastpath

    fastpath.install()
    if store_dir is not None and pickle_key is not None:
        client = make_client(homeserver, user_id, store_dir, pickle_key, store=store)
    else:
        config = AsyncClientConfig(
            encryption_enabled=False,
            store_sync_tokens=False,
            max_limit_exceeded=None,
            max_timeouts=None,
            max_timeout_retry_wait_time=BACKOFF_CAP,
            request_timeout=60,
        )
        client = RatchetClient(homeserver, user_id, device_id="", config=config)
    client.access_token = as_token
    client.user_id = user_id
    return client
