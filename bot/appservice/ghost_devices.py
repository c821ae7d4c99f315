"""Per-ghost devices: each ghost that posts into an encrypted room gets a device of its own, so its messages are
encrypted by a device the ghost owns and clients show them as any cross-signed user's (docs/appservice.md,
"Encryption"). Encrypted by the bridge bot's device instead, a ghost's message is a "mismatched sender" to
matrix-rust-sdk (Element): a red shield, or nothing at all with "exclude insecure devices" (MSC4153).

A ghost's device is made the way the bot's is (bot/appservice/device.py), lazily at its first send into an encrypted
room:

* **created through MSC4190**: ``PUT /devices/{id}?user_id=<ghost>`` with the as_token; every request of the ghost's
  Olm machine then names ``user_id=<ghost>&device_id=<id>`` (:attr:`RatchetClient.appservice_device_id`);
* **its own Olm account and crypto store**, through the storage seam: SQLite, one nio store file per ghost device in
  ``data_dir/crypto`` (``<ghost>_<device>.db``); PostgreSQL, rows of that account in the crypto schema. The device id
  is kept in the runtime state (``appservice.ghost_device:<ghost>``), so a restart reopens the same device with the
  same identity keys. A store that went missing gives the ghost a new device (the old one is deleted);
* **keys published**: identity keys, one-time keys and a fallback key at creation; later, what the transactions say
  (MSC3202 counts per device) is topped up after each transaction;
* **cross-signed by the ghost**: master and self-signing keys uploaded without user-interactive auth (as for the
  bot) and the device signed with them. The ghosts' seeds are derived from one secret (HMAC-SHA-256 of the ghost's
  user id under :data:`GHOST_KEYS_FILE`, a private file or row), so nothing per ghost but its device id is stored.
  Whoever holds the as_token can replace a ghost's cross-signing keys anyway; the secret adds no new power.

The ghost's Olm machine is a :class:`~bot.matrix.client.RatchetClient` of its own that shares the bot's room model
(the transactions keep it current: members, encryption), claims one-time keys of the room's devices and shares its
Megolm session with them, except the appservice's own users (the bot reads, the ghosts only write:
:attr:`RatchetClient.key_share_skip`). It drops the room keys others send it (:class:`~bot.matrix.client.SendOnlyOlm`).
Its session rotates when someone joins or leaves the room (the bot's membership listener) or a member's devices
change (MSC3202 device lists, then a key query before the next send).

Bounded: at most ``appservice.ghost_device_cache`` machines are open at once; beyond that the least recently used
one (not in the middle of a send) is closed, and reopened from its store when needed (a new Megolm session then:
nio does not keep outbound sessions). Transactions' to-device messages for a ghost's device (MSC2409
``to_user_id``/``to_device_id``) go to its machine when it is open. For a closed machine they are dropped: they are
the room keys every member shares with every device in the room, which a ghost does not keep, and opening every
ghost's store at each member's session rotation would cost one store load per ghost in the room. A ghost's
one-time-key count below half, or its fallback key used, opens its machine to publish more.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bot.appservice.device import _republish_if_missing, create_device, cross_sign, new_device_id
from bot.appservice.transactions import DeviceExtensions, device_extensions, devices_mentioned, sync_body
from bot.crypto.cross_signing import CrossSigningSeeds
from bot.errors import MatrixError, MatrixRequestError, SessionError
from bot.matrix.client import RatchetClient, make_appservice_client
from bot.matrix.requests import api_path, request_json
from bot.matrix.session import crypto_store_class, restore_device, upload_device_keys
from bot.matrix.sync import SyncSource, batch_from_body, describe
from bot.storage.backend import Storage
from bot.storage.credentials import Credentials
from bot.storage.state import StateStore

__all__ = ["GHOST_DEVICE_PREFIX", "GHOST_KEYS_FILE", "GhostDevices", "ghost_seeds"]

log = logging.getLogger("ratchet.appservice")

#: Prefix of the ghosts' device ids.
GHOST_DEVICE_PREFIX = "RATCHETGH"
#: The private file (or PostgreSQL row) holding the secret the ghosts' cross-signing seeds are derived from.
GHOST_KEYS_FILE = "appservice-ghost-keys.json"
#: The runtime state key of a ghost's device id (followed by the ghost's user id).
STATE_PREFIX = "appservice.ghost_device:"
#: Below this many one-time keys on the server a ghost's closed machine is opened to publish more (an open one tops
#: up at every count below half of the 50 nio keeps, as the bot's device does; the fallback key covers the rest).
LOW_ONE_TIME_KEYS = 10


def ghost_seeds(secret: bytes, user_id: str) -> CrossSigningSeeds:
    """The cross-signing seeds of ghost ``user_id``: HMAC-SHA-256 of the user id and the key's name under
    ``secret`` (the same ghost always gets the same keys; two ghosts never share one)."""

    def derive(name: str) -> bytes:
        message = f"ratchet ghost cross-signing\x1e{user_id}\x1e{name}".encode()
        return hmac.new(secret, message, hashlib.sha256).digest()

    return CrossSigningSeeds(derive("master"), derive("self_signing"), derive("user_signing"))


class GhostDevices:
    """The ghosts' devices and their Olm machines (at most ``limit`` open), for one appservice whose bot acts
    through ``bot``."""

    def __init__(
        self,
        bot: RatchetClient,
        storage: Storage,
        *,
        as_token: str,
        pickle_key: str,
        device_name: str,
        is_ghost: Callable[[str], bool],
        is_ours: Callable[[str], bool],
        limit: int = 100,
    ) -> None:
        self.bot = bot
        self.storage = storage
        self._as_token = as_token
        self._pickle_key = pickle_key
        self.device_name = device_name
        self.is_ghost = is_ghost
        self.is_ours = is_ours
        self.limit = max(1, limit)
        self.state: StateStore | None = None
        self._machines: OrderedDict[str, RatchetClient] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: dict[str, int] = {}
        self._devices: dict[str, str] = {}
        #: Ghosts whose device was checked with the homeserver in this process (upserted, keys and signature).
        self._checked: set[str] = set()
        #: Ghosts whose machines got something from the last transaction (their keys are maintained after it).
        self._touched: set[str] = set()
        self._secret: bytes | None = None
        #: Devices created, machines opened (created or reopened) and closed to stay within ``limit``, this process.
        self.created = 0
        self.opened = 0
        self.evicted = 0
        bot.membership_listeners.append(self._membership_changed)

    def bind(self, state: StateStore) -> None:
        """Keep the ghosts' device ids in the runtime's ``state``."""
        self.state = state

    def __len__(self) -> int:
        return len(self._machines)

    def loaded(self) -> list[str]:
        """The ghosts whose machines are open, least recently used first."""
        return list(self._machines)

    # -- the device of a ghost --------------------------------------------------------------------------------

    def device_id(self, user_id: str) -> str | None:
        """The device id ghost ``user_id`` has (kept in the state), or None before its first encrypted send."""
        found = self._devices.get(user_id)
        if found is None and self.state is not None:
            found = self.state.get(STATE_PREFIX + user_id) or None
            if found is not None:
                self._devices[user_id] = found
        return found

    def _save_device_id(self, user_id: str, device_id: str) -> None:
        if self.state is None:
            raise SessionError("the ghosts' devices are not bound to the runtime state")
        self.state.set(STATE_PREFIX + user_id, device_id)
        self._devices[user_id] = device_id

    def _seeds(self, user_id: str) -> CrossSigningSeeds:
        if self._secret is None:
            keys_file = self.storage.private_file(GHOST_KEYS_FILE)
            text = keys_file.read_text()
            if text:
                self._secret = base64.b64decode(json.loads(text)["secret"])
            else:
                self._secret = secrets.token_bytes(32)
                keys_file.write_text(json.dumps({"secret": base64.b64encode(self._secret).decode()}))
        return ghost_seeds(self._secret, user_id)

    async def machine(self, user_id: str) -> RatchetClient:
        """Ghost ``user_id``'s Olm machine: open already, reopened from its store, or a new device created.

        Raises :class:`~bot.errors.SessionError` or :class:`~bot.errors.MatrixRequestError` when the homeserver
        refuses the device (the registration lacks ``io.element.msc4190``) or its keys.
        """
        machine = self._machines.get(user_id)
        if machine is None:
            async with self._locks.setdefault(user_id, asyncio.Lock()):
                machine = self._machines.get(user_id)
                if machine is None:
                    machine = await self._open(user_id)
                    self._machines[user_id] = machine
                    self._evict()
        self._machines.move_to_end(user_id)
        return machine

    async def _open(self, user_id: str) -> RatchetClient:
        started = time.monotonic()
        device_id = self.device_id(user_id)
        fresh = device_id is None
        if device_id is not None and not self.storage.has_crypto_store(user_id, device_id):
            log.warning(
                "appservice: the crypto store of %s's device %s is missing; the ghost gets a new device", user_id,
                device_id,
            )
            await self._delete_device(user_id, device_id)
            fresh = True
        if fresh:
            device_id = new_device_id(GHOST_DEVICE_PREFIX)
        assert device_id is not None
        client = make_appservice_client(
            self.bot.homeserver, user_id, self._as_token, store_dir=self.storage.crypto_path,
            pickle_key=self._pickle_key, store=crypto_store_class(self.storage),
        )
        client.reads_room_keys = False
        try:
            check = fresh or user_id not in self._checked
            if check:
                await create_device(client, device_id, self.device_name, user_id=user_id)
            restore_device(client, Credentials(self.bot.homeserver, user_id, device_id, self._as_token))
            client.appservice_device_id = device_id
            if fresh:
                self._save_device_id(user_id, device_id)
            self._wire(client)
            if check:
                if not fresh:
                    await _republish_if_missing(client, user_id, device_id)
                await upload_device_keys(client)
                if fresh:
                    client.fallback.generate()
                    await upload_device_keys(client)
                try:
                    await cross_sign(client, self._seeds(user_id), user_id, device_id)
                except (MatrixRequestError, ValueError, KeyError) as exc:
                    log.error("appservice: could not cross-sign %s's device %s: %s", user_id, device_id, exc)
                self._checked.add(user_id)
        except BaseException:
            self._close(client)
            raise
        assert client.olm is not None
        # Device lists may have changed while the machine was closed: ask again before the next room key goes out.
        client.olm.users_for_key_query.update(client.olm.tracked_users)
        self.opened += 1
        if fresh:
            self.created += 1
            log.info(
                "appservice: created %s's device %s (MSC4190, cross-signed) in %.0f ms", user_id, device_id,
                (time.monotonic() - started) * 1000,
            )
        else:
            log.info("appservice: opened %s's device %s", user_id, device_id)
        return client

    def _wire(self, client: RatchetClient) -> None:
        """Let a ghost's machine see the bot's rooms (members, encryption) and share the bot's connections."""
        bot = self.bot
        client.rooms = bot.rooms
        client.room_loader = bot.room_loader
        client.key_share_skip = self.is_ours
        if bot.olm is not None and client.olm is not None:
            client.olm.rotation_periods = bot.olm.rotation_periods
        if bot.client_session is not None:
            client.client_session = bot.client_session

    async def _delete_device(self, user_id: str, device_id: str) -> None:
        """Delete a ghost's device whose store is gone (MSC4190 lets the appservice do it without auth); failures
        are logged."""
        path = api_path("devices", device_id) + "?" + urllib.parse.urlencode({"user_id": user_id})
        try:
            await request_json(self.bot, "DELETE", path, {})
        except MatrixRequestError as err:
            log.warning("appservice: could not delete %s's device %s: %s", user_id, device_id, err)

    def _close(self, client: RatchetClient) -> None:
        """Close a machine's store (the HTTP session is the bot's and stays open)."""
        if client.client_session is self.bot.client_session:
            client.client_session = None
        store = getattr(client, "store", None)
        database = getattr(store, "database", None)
        if database is not None:
            try:
                database.close()
            except Exception as exc:  # a store that cannot close is dropped all the same
                log.debug("closing a ghost's crypto store failed: %s", exc)

    def _evict(self) -> None:
        """Close the least recently used machines not in the middle of a send, down to ``limit``."""
        while len(self._machines) > self.limit:
            victim = next((u for u in self._machines if not self._busy.get(u)), None)
            if victim is None:
                return
            self._close(self._machines.pop(victim))
            self._touched.discard(victim)
            self.evicted += 1
            log.debug("appservice: closed %s's Olm machine (%d open at most)", victim, self.limit)

    async def close(self) -> None:
        """Close every open machine."""
        while self._machines:
            self._close(self._machines.popitem()[1])

    # -- sending ------------------------------------------------------------------------------------------------

    async def encrypt(
        self, user_id: str, room_id: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """``(m.room.encrypted, content)`` of an event ghost ``user_id`` sends into the encrypted ``room_id``,
        encrypted by the ghost's own device (created first if needed).

        Raises SessionError / MatrixRequestError when the device cannot be made (see :meth:`machine`).
        """
        machine = await self.machine(user_id)
        self._busy[user_id] = self._busy.get(user_id, 0) + 1
        try:
            async with self._locks.setdefault(user_id, asyncio.Lock()):
                room = self.bot.rooms.get(room_id)
                if room is not None and not room.members_synced:
                    await self.bot.joined_members(room_id)
                assert machine.olm is not None
                if room is not None:
                    machine.olm.update_tracked_users(room)
                if machine.should_query_keys:
                    await machine.keys_query()
                return await machine.encrypt_for_room(room_id, event_type, content)
        finally:
            self._busy[user_id] -= 1
            if not self._busy[user_id]:
                del self._busy[user_id]

    def _membership_changed(self, room_id: str, user_id: str) -> None:
        """Someone joined or left ``room_id``: the ghosts' sessions there are not shared again (a leaver must not
        read on; a newcomer gets a new session). The appservice's own users never get those sessions."""
        if self.is_ours(user_id):
            return
        for machine in self._machines.values():
            if machine.olm is not None and room_id in machine.olm.outbound_group_sessions:
                machine.invalidate_outbound_session(room_id)

    # -- what the transactions bring ----------------------------------------------------------------------------

    async def feed(self, to_device: Iterable[Mapping[str, Any]], extensions: Mapping[str, Any]) -> None:
        """Give each ghost's machine what a transaction carries for its device: its to-device messages (MSC2409),
        its one-time-key count and fallback key state (MSC3202; a closed machine is opened only when its keys run
        low), and the device list changes (users marked outdated in every open machine tracking them).
        Failures are logged, never raised (the transaction goes on)."""
        messages: dict[str, list[dict[str, Any]]] = {}
        for message in to_device:
            user_id, device_id = message.get("to_user_id"), message.get("to_device_id")
            if not isinstance(user_id, str) or not self.is_ghost(user_id):
                continue
            if device_id != self.device_id(user_id):
                log.debug("a to-device message for %s's unknown device %s dropped", user_id, device_id)
                continue
            stripped = {k: v for k, v in message.items() if k not in ("to_user_id", "to_device_id")}
            messages.setdefault(user_id, []).append(stripped)
        keys: dict[str, DeviceExtensions] = {}
        for user_id, device_id in devices_mentioned(extensions):
            if not self.is_ghost(user_id) or device_id != self.device_id(user_id):
                continue
            found = device_extensions(extensions, user_id, device_id)
            if user_id in self._machines:
                keys[user_id] = found
            elif _runs_low(found):
                log.info(
                    "appservice: %s's closed device %s reports one-time keys %s, unused fallback keys %s; opening it",
                    user_id, device_id, found.one_time_key_counts, found.unused_fallback_key_types,
                )
                keys[user_id] = found
        lists = device_extensions(extensions, "", "")
        changed = set(lists.changed) | set(lists.left)
        closed = [u for u in messages if u not in self._machines and u not in keys]
        if closed:  # room keys members share with a ghost it would drop anyway: not worth opening its machine
            log.debug("to-device messages for %d closed ghost machine(s) dropped", len(closed))
            for user_id in closed:
                del messages[user_id]
        for user_id in dict.fromkeys([*messages, *keys]):
            try:
                machine = await self.machine(user_id)
                device = keys.get(user_id) or DeviceExtensions()
                device.changed, device.left = lists.changed, lists.left
                body = sync_body(
                    [], own_user_id=user_id, next_batch=f"ghost-{uuid.uuid4().hex[:12]}",
                    to_device=messages.get(user_id, []), device=device,
                )
                await batch_from_body(machine, body)
                machine.fallback.observe_sync(body)
                if device.one_time_key_counts is not None and machine.olm is not None:
                    machine.olm.uploaded_key_count = device.one_time_key_counts.get("signed_curve25519", 0)
                self._touched.add(user_id)
            except (SessionError, MatrixError, MatrixRequestError) as exc:
                log.warning("appservice: could not hand %s's device its transaction data: %s", user_id, exc)
            except Exception as exc:
                log.warning("appservice: %s's device failed on its transaction data: %s", user_id, describe(exc))
        if changed:
            for user_id, machine in self._machines.items():
                if user_id not in messages and user_id not in keys and machine.olm is not None:
                    machine.olm.add_changed_users(changed & machine.olm.tracked_users)

    async def maintain(self) -> None:
        """After a transaction: the machines it touched upload keys, query changed users' keys, claim keys for
        wedged sessions and send queued to-device messages (failures logged)."""
        touched, self._touched = self._touched, set()
        for user_id in touched:
            machine = self._machines.get(user_id)
            if machine is not None:
                await SyncSource(machine).maintain_keys()


def _runs_low(found: DeviceExtensions) -> bool:
    """True when a device's one-time keys run low or its fallback key was used (its machine must act)."""
    counts = found.one_time_key_counts
    if counts is not None and counts.get("signed_curve25519", 0) < LOW_ONE_TIME_KEYS:
        return True
    types = found.unused_fallback_key_types
    return types is not None and "signed_curve25519" not in types
