"""The running bot's interactive verification: the async shell around the sans-I/O :mod:`bot.e2ee.verification`.

:class:`VerificationService` receives ``m.key.verification.*`` to-device messages through
:meth:`RatchetClient.on_to_device <bot.matrix.client.RatchetClient.on_to_device>` (nio's legacy SAS is switched off
in :class:`~bot.matrix.olm.RatchetOlm`), feeds them to the machine one at a time, sends what it answers
(``PUT /sendToDevice``), and keeps every flow for the operator: :meth:`~VerificationService.pending`,
:meth:`~VerificationService.confirm`, :meth:`~VerificationService.mismatch`, :meth:`~VerificationService.cancel`.
Nothing is confirmed by itself.

After a successful verification of another user whose master key the other side MAC-ed, the bot signs that master
key with its user-signing key and uploads the signature (``POST /keys/signatures/upload``), so the other user is
cross-signing-verified by the bot; a verified device of the bot's own account is signed with the self-signing key.
Both need the bot's cross-signing private keys (``e2ee.cross_signing``); without them the verification still
succeeds and the log says nothing was signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.crypto.cross_signing import master_public, signatures_upload_body
from bot.crypto.fingerprint import safety_number
from bot.e2ee.control import ControlError, ControlServer, verification_commands
from bot.e2ee.verification import (
    VERIFICATION_EVENT_TYPES,
    Outcome,
    Send,
    Verification,
    VerificationMachine,
)
from bot.matrix.requests import api_path, request_json

if TYPE_CHECKING:
    from bot.e2ee.identity import Identity
    from bot.e2ee.trust import TrustPolicy

__all__ = ["QUEUE_LIMIT", "TICK_SECONDS", "VerificationService", "accept_from_config"]

log = logging.getLogger("ratchet.verification")

#: How often flows are checked for timeouts (seconds).
TICK_SECONDS = 5.0
#: Verification messages waiting to be handled at most; beyond, new ones are dropped (a flood from the network must
#: not grow memory; a dropped message of a real flow makes it time out).
QUEUE_LIMIT = 1000
#: How many room event ids are remembered to hand each event to the machine once.
SEEN_EVENTS = 2000


def accept_from_config(admins: Iterable[str], patterns: Iterable[str]) -> Callable[[str], bool]:
    """Who may ask for a verification: the ``admins`` and users matching ``patterns`` (``fnmatch``, case-sensitive)."""
    allowed, globs = frozenset(admins), tuple(patterns)
    return lambda user_id: user_id in allowed or any(fnmatchcase(user_id, p) for p in globs)


class VerificationService:
    """Every interactive verification of the running bot (see the module docs)."""

    def __init__(
        self,
        client: Any,
        *,
        trust: TrustPolicy | None = None,
        identity: Identity | None = None,
        accept_from: Callable[[str], bool] | None = None,
        auto_confirm: frozenset[str] = frozenset(),
    ) -> None:
        self.client = client
        #: Users whose verifications are confirmed without the operator (``e2ee.verification.auto_confirm``).
        self.auto_confirm = auto_confirm
        self.trust = trust
        self.identity = identity
        allowed = accept_from or (lambda user_id: False)
        #: Requests are answered from ``accept_from`` users and from the bot's own account (another session of the
        #: bot's user, e.g. the operator's Element: verifying it signs that device with the self-signing key).
        self.machine = VerificationMachine(
            client.user_id,
            client.device_id,
            self,
            accept_from=lambda user_id: user_id == client.user_id or allowed(user_id),
        )
        #: Signature uploads done after successful verifications: (user id, key id).
        self.signed: list[tuple[str, str]] = []
        self._queue: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._dropped = 0
        self._seen_events: OrderedDict[Any, None] = OrderedDict()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[Outcome], Any]] = []
        self._listening = False
        self._listening_event = asyncio.Event()

    # -- wiring ---------------------------------------------------------------------------------------------------

    def _listen(self) -> None:
        if not self._listening:
            self._listening = True
            self.client.on_to_device(VERIFICATION_EVENT_TYPES, self._enqueue)
            self.client.on_room_event(VERIFICATION_EVENT_TYPES | {"m.room.message"}, self._enqueue_room)
            self._listening_event.set()

    async def wait_listening(self, timeout: float = 10) -> None:
        """Wait until the service receives the client's verification messages (the runtime starts it in a task)."""
        await asyncio.wait_for(self._listening_event.wait(), timeout)

    def attach(self) -> VerificationService:
        """Receive the client's verification messages and start the worker in a task (needs a running loop)."""
        self._listen()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ratchet-verification")
        return self

    async def serve(self, control_path: Path | None = None) -> None:
        """The runtime's way: receive verification messages, serve the operator's control channel at
        ``control_path`` (see :mod:`bot.e2ee.control`), and handle both until cancelled."""
        self._listen()
        await self._refresh_keys(self.client.user_id)  # our own user-signing key, for e2ee.trust: verified
        server: ControlServer | None = None
        if control_path is not None:
            try:
                server = await ControlServer(control_path, verification_commands(self)).start()
            except (OSError, ControlError) as exc:
                log.warning("no control channel (ratchet verification ... will not reach this bot): %s", exc)
        try:
            await self._run()
        finally:
            if server is not None:
                await server.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def on_outcome(self, listener: Callable[[Outcome], Any]) -> None:
        """Call ``listener(outcome)`` for every :class:`Outcome` (new request, short codes, verified, cancelled)."""
        self._listeners.append(listener)

    def _enqueue(self, sender: str, event_type: str, content: Any) -> None:
        self._put((sender, event_type, content))

    def _put(self, item: tuple[str, str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("verification messages arrive faster than handled: %d dropped", self._dropped)

    def _enqueue_room(self, room_id: str, source: dict[str, Any]) -> None:
        content = source.get("content")
        if source.get("type") == "m.room.message" and not (
            isinstance(content, dict) and content.get("msgtype") == "m.key.verification.request"
        ):
            return
        if source.get("sender") == self.client.user_id:
            return  # our own echo
        event_id = source.get("event_id")
        if event_id in self._seen_events:
            return  # seen at its sync already (an event decrypted late is handed over again)
        self._seen_events[event_id] = None
        while len(self._seen_events) > SEEN_EVENTS:
            self._seen_events.popitem(last=False)
        self._put((room_id, "room", source))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_tick = loop.time()
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), TICK_SECONDS)
            except TimeoutError:
                item = None
            try:
                if item is not None:
                    await self._incoming(*item)
                if loop.time() - last_tick >= TICK_SECONDS:
                    last_tick = loop.time()
                    async with self._lock:
                        await self._perform(self.machine.tick())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("verification message handling failed: %s", exc, exc_info=exc)

    async def _incoming(self, sender: str, event_type: str, content: Any) -> None:
        if event_type == "room":
            room_id, source = sender, content
            sender = str(source.get("sender"))
            if source.get("type") == "m.room.message" and self.machine.get(str(source.get("event_id"))) is None:
                await self._refresh_keys(sender)
            async with self._lock:
                await self._perform(
                    self.machine.receive_room_event(
                        room_id,
                        sender,
                        str(source.get("type")),
                        source.get("content") or {},
                        str(source.get("event_id")),
                        source.get("origin_server_ts"),
                    )
                )
            return
        if event_type in ("m.key.verification.request", "m.key.verification.start") and isinstance(content, dict):
            flow = self.machine.get(str(content.get("transaction_id")))
            if flow is None:
                await self._refresh_keys(sender)  # the other device's key must be known before its MAC arrives
        async with self._lock:
            await self._perform(self.machine.receive_to_device(sender, event_type, content))

    # -- KeyLookup --------------------------------------------------------------------------------------------------

    def device_ed25519(self, user_id: str, device_id: str) -> str | None:
        olm = getattr(self.client, "olm", None)
        if user_id == self.client.user_id and device_id == self.client.device_id and olm is not None:
            return olm.account.identity_keys["ed25519"]
        try:
            return olm.device_store[user_id][device_id].ed25519  # type: ignore[union-attr]
        except (KeyError, AttributeError, TypeError):
            pass
        keys = self.trust.user_keys(user_id) if self.trust is not None else None
        return keys.device_key(device_id, "ed25519") if keys is not None else None

    def master_key(self, user_id: str) -> str | None:
        if user_id == self.client.user_id:
            own = self.identity.keys if self.identity is not None else None
            return own.master_public if own is not None else None
        keys = self.trust.user_keys(user_id) if self.trust is not None else None
        return (keys.master_public or None) if keys is not None else None

    async def _refresh_keys(self, *user_ids: str) -> None:
        try:
            await self.client.query_user_keys(list(user_ids))
        except Exception as exc:
            log.warning("could not query the keys of %s: %s", ", ".join(user_ids), exc)

    # -- the operator's API -----------------------------------------------------------------------------------------

    def get(self, flow_id: str) -> Verification | None:
        return self.machine.get(flow_id)

    def pending(self) -> list[Verification]:
        """Flows in progress, oldest first."""
        return self.machine.pending()

    def all(self) -> list[Verification]:
        return sorted(self.machine.flows.values(), key=lambda v: v.started_at)

    async def request(self, user_id: str, devices: Iterable[str] | None = None) -> Verification:
        """Ask ``user_id`` (``devices``, else all their known devices) to verify with the bot, to-device."""
        await self._refresh_keys(user_id)
        if devices is None:
            olm = self.client.olm
            devices = [d.id for d in olm.device_store.active_user_devices(user_id)] if olm is not None else []
            if user_id == self.client.user_id:
                devices = [d for d in devices if d != self.client.device_id]
        async with self._lock:
            flow, actions = self.machine.request_to_device(user_id, list(devices))
            await self._perform(actions)
        return flow

    async def fingerprints(self, user_id: str | None = None) -> dict[str, Any]:
        """The bot's device and master keys (and ``user_id``'s master key with the safety number of the two), for
        comparing out of band (``ratchet fingerprint``)."""
        own = self.client.user_id
        result: dict[str, Any] = {
            "user_id": own,
            "device_id": self.client.device_id,
            "device_ed25519": self.device_ed25519(own, self.client.device_id),
            "master_key": self.master_key(own),
        }
        if user_id:
            await self._refresh_keys(user_id)
            theirs = self.master_key(user_id)
            result["other"] = {"user_id": user_id, "master_key": theirs}
            if theirs and result["master_key"]:
                result["other"]["safety_number"] = safety_number(result["master_key"], own, theirs, user_id)
        return result

    async def trust_user(self, user_id: str, fingerprint: str) -> dict[str, Any]:
        """Accept ``user_id``'s identity on an out-of-band fingerprint (``ratchet trust-user``): their master key
        (any spacing) or the safety number of the bot's and their master keys. On a match the key is pinned and
        signed with the bot's user-signing key, as after an emoji verification; otherwise :class:`ValueError` and
        nothing changes."""
        if user_id == self.client.user_id:
            raise ValueError("the bot's own account is not trusted by fingerprint")
        await self._refresh_keys(user_id)
        master = self.master_key(user_id)
        if not master:
            raise ValueError(f"{user_id} has no cross-signing master key")
        given = "".join(fingerprint.split())
        own = self.master_key(self.client.user_id)
        number = safety_number(own, self.client.user_id, master, user_id) if own else None
        if given not in (master, number):
            log.warning("trust-user: the fingerprint given for %s does not match their master key %s", user_id, master)
            raise ValueError(f"the fingerprint does not match {user_id}'s current master key; nothing changed")
        flow = Verification(
            flow_id=f"fingerprint:{user_id}",
            own_user=self.client.user_id,
            own_device=self.client.device_id,
            other_user=user_id,
            other_device=None,
            we_requested=True,
            started_at=0.0,
            state="done",
            verified_keys={f"ed25519:{master}": master},
        )
        self._pin(flow)
        before = len(self.signed)
        await self._sign(flow)
        log.info("trust-user: %s's master key %s accepted on its fingerprint", user_id, master)
        return {"user_id": user_id, "master_key": master, "signed": len(self.signed) > before}

    async def request_in_room(self, room_id: str, user_id: str) -> Verification:
        """Ask ``user_id`` to verify with the bot in ``room_id`` (their DM with the bot): user verification."""
        await self._refresh_keys(user_id)
        content = VerificationMachine.room_request_content(self.client.device_id, user_id)
        async with self._lock:
            event_id = await self._room_send(room_id, "m.room.message", content, user_id, None)
            if not event_id:
                raise RuntimeError("could not send the verification request")
            flow = self.machine.room_request_sent(room_id, event_id, user_id)
            self._changed.set()
        return flow

    async def confirm(self, flow_id: str) -> Verification:
        """The operator compared the short codes and they match."""
        async with self._lock:
            await self._perform(self.machine.confirm(flow_id))
        return self.machine.flows[flow_id]

    async def mismatch(self, flow_id: str) -> Verification:
        """The operator compared the short codes and they differ (``m.mismatched_sas``)."""
        async with self._lock:
            await self._perform(self.machine.mismatch(flow_id))
        return self.machine.flows[flow_id]

    async def cancel(self, flow_id: str) -> Verification:
        """The operator cancels (``m.user``)."""
        async with self._lock:
            await self._perform(self.machine.cancel(flow_id))
        return self.machine.flows[flow_id]

    async def wait(self, flow_id: str | None, states: Iterable[str], timeout: float = 30) -> Verification:
        """Wait until flow ``flow_id`` (or, if None, any flow) is in one of ``states``; for tests and tools."""
        wanted = set(states)

        def find() -> Verification | None:
            flows = [self.machine.get(flow_id)] if flow_id else list(self.machine.flows.values())
            return next((f for f in flows if f is not None and f.state in wanted), None)

        async with asyncio.timeout(timeout):
            while (found := find()) is None:
                self._changed.clear()
                await self._changed.wait()
        return found

    # -- effects ----------------------------------------------------------------------------------------------------

    async def _perform(self, actions: list[Send | Outcome]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self._send(action)
                continue
            if action.kind == "verified":
                self._pin(action.verification)
                await self._sign(action.verification)
            if action.kind == "sas" and action.verification.other_user in self.auto_confirm:
                flow = action.verification
                log.warning(
                    "verification %s with %s confirmed without comparing the emoji (e2ee.verification.auto_confirm)",
                    flow.flow_id, flow.other_user,
                )
                await self._perform(self.machine.confirm(flow.flow_id))
            for listener in list(self._listeners):
                try:
                    result = listener(action)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception as exc:
                    log.warning("verification listener failed: %s", exc)
        self._changed.set()

    async def _send(self, action: Send) -> None:
        try:
            if action.room_id is not None:
                a = action
                await self._room_send(a.room_id, a.event_type, a.content, a.to_user, a.to_device)
                return
            body = {"messages": {action.to_user: {action.to_device: action.content}}}
            path = api_path("sendToDevice", action.event_type, secrets.token_hex(16))
            await request_json(self.client, "PUT", path, body)
        except Exception as exc:
            log.warning("could not send %s: %s", action.event_type, exc)

    def _readable_by(self, user_id: str | None, device_id: str | None) -> bool:
        """Whether the trust policy gives ``user_id``'s device (any of their devices if None) the room keys."""
        if self.trust is None or user_id is None:
            return True
        keys = self.trust.user_keys(user_id)
        devices = [device_id] if device_id else list(keys.devices) if keys is not None else []
        return any(self.trust.device_verdict(user_id, d).share for d in devices)

    async def _room_send(
        self, room_id: str, event_type: str, content: dict[str, Any], user_id: str | None, device_id: str | None
    ) -> str | None:
        """Send a verification event into the room: encrypted when the other party's device gets the bot's room keys,
        else in the clear (the spec's choice for a device the room's encryption would leave out: the verification
        must not depend on trust it is meant to establish; its messages carry only ephemeral public keys and MACs)."""
        if self._readable_by(user_id, device_id):
            resp = await self.client.room_send_encrypted(room_id, event_type, content)
            return getattr(resp, "event_id", None)
        path = api_path("rooms", room_id, "send", event_type, secrets.token_hex(16))
        answer = await request_json(self.client, "PUT", path, content)
        return answer.get("event_id") if isinstance(answer, dict) else None

    def _pin(self, flow: Verification) -> None:
        """The verification proved the other user's current master key: pin it (resolving an identity change the
        trust policy holds under ``tofu``, as ``!identity accept`` would)."""
        if self.trust is None or flow.other_user == self.client.user_id:
            return
        masters = [key for key_id, key in flow.verified_keys.items() if key_id == f"ed25519:{key}"]
        master = self.master_key(flow.other_user)
        if master and master in masters and self.trust.pinned(flow.other_user) != master:
            self.trust.pin(flow.other_user, master)

    async def _sign(self, flow: Verification) -> None:
        """Cross-sign what the verification proved: the other user's master key (user-signing key), or a device of
        our own account (self-signing key)."""
        keys = self.identity.keys if self.identity is not None else None
        if keys is None:
            log.info("verification %s: no cross-signing keys held, nothing signed", flow.flow_id)
            return
        await self._refresh_keys(flow.other_user)
        user_keys = self.trust.user_keys(flow.other_user) if self.trust is not None else None
        signed: dict[str, Any] | None = None
        key_id = ""
        if flow.other_user != self.client.user_id:
            master = user_keys.master if user_keys is not None else None
            public = master_public(master, flow.other_user) if master is not None else ""
            if not public or flow.verified_keys.get(f"ed25519:{public}") != public:
                log.info("verification %s: %s's master key was not verified, nothing signed", flow.flow_id,
                         flow.other_user)
                return
            signed, key_id = keys.sign_user(master), f"ed25519:{public}"  # type: ignore[arg-type]
        elif flow.other_device and f"ed25519:{flow.other_device}" in flow.verified_keys:
            device = user_keys.devices.get(flow.other_device) if user_keys is not None else None
            if device is None:
                return
            signed, key_id = keys.sign_device(device), f"ed25519:{flow.other_device}"
        if signed is None:
            return
        try:
            answer = await request_json(
                self.client, "POST", api_path("keys", "signatures", "upload"), signatures_upload_body([signed])
            )
        except Exception as exc:
            log.warning("verification %s: signature upload failed: %s", flow.flow_id, exc)
            return
        failures = answer.get("failures") if isinstance(answer, dict) else None
        if failures:
            log.warning("verification %s: the server refused the signature: %s", flow.flow_id, failures)
            return
        self.signed.append((flow.other_user, key_id))
        # The trust policy (e2ee.trust: verified) sees the new signature, and our own user-signing key, from here on.
        await self._refresh_keys(flow.other_user, self.client.user_id)
        log.info("verification %s: signed %s's %s and uploaded the signature", flow.flow_id, flow.other_user, key_id)
