"""Interactive SAS verification (``m.sas.v1``): the sans-I/O state machine of every verification flow.

:class:`VerificationMachine` takes incoming verification messages (to-device, or in-room events related to the
request by ``m.reference``) and operator decisions (``confirm``, ``mismatch``, ``cancel``), and returns *actions*: a
:class:`Send` (this content, this event type, to this device or room) or an :class:`Outcome` (a flow is waiting for
the operator, has succeeded, or was cancelled). It never touches the network or a clock of its own (``now`` is a
constructor argument), so both roles run against each other in unit tests; the async shell
(:mod:`bot.e2ee.verification_service`) delivers the messages and performs the sends.

The flow, as the spec's key verification framework has it::

    request --> ready --> start --> accept --> key <-> key --> (operator compares) --> mac <-> mac --> done <-> done

Either side may send ``start`` after ``ready``; this machine sends it itself when it made the request (so the bot
can drive a verification it started), and answers with ``accept`` when the other side starts. The rules it enforces:

* **Timeouts**: a flow is cancelled with ``m.timeout`` 10 minutes after it began (:data:`FLOW_TIMEOUT`), and when it
  went unused for 10 minutes; an incoming to-device request whose ``timestamp`` is more than 10 minutes old or more
  than 5 minutes in the future is ignored.
* **Order**: a message the current state does not expect cancels with ``m.unexpected_message``; a message for an
  unknown to-device transaction is answered with ``m.unknown_transaction`` (except ``start`` and ``cancel``).
* **Commitment**: the starting side checks the accepting side's key against its ``commitment``
  (``m.mismatched_commitment``).
* **MACs**: a MAC that does not match the keys we know of the other side cancels with ``m.key_mismatch``; only
  ``hkdf-hmac-sha256.v2`` is spoken (``m.unknown_method`` otherwise), as are ``curve25519-hkdf-sha256`` and
  ``sha256``.
* **The operator**: nothing is confirmed by itself. After the keys are exchanged the flow waits in state
  ``"keys"`` (the short codes in :attr:`Verification.emoji` / :attr:`Verification.decimals`) until
  :meth:`VerificationMachine.confirm`, :meth:`~VerificationMachine.mismatch` (``m.mismatched_sas``) or
  :meth:`~VerificationMachine.cancel` (``m.user``).
* **Concurrency**: a second request or start from a device that already has a flow in progress with us cancels all
  of them (the spec: "the recipient should cancel all attempts with that device"); two ``start`` messages that cross
  are resolved by the spec's rule (the start of the lexicographically smaller user id, then device id, wins).
* **Who may ask**: ``accept_from(user_id)`` decides whether an incoming request is answered with ``ready``;
  otherwise it is refused with ``m.user``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.crypto.sas import (
    HASH_SHA256,
    KEY_AGREEMENT,
    MAC_V2,
    METHOD_SAS,
    SUPPORTED_SAS,
    SasError,
    SasKeyPair,
    check_mac_content,
    commitment,
    decimals,
    emoji_for,
    mac_content,
    mac_info,
    sas_bytes,
    sas_info,
)

__all__ = [
    "FLOW_TIMEOUT",
    "KEEP_FINISHED",
    "REQUEST_FUTURE_SKEW",
    "VERIFICATION_EVENT_TYPES",
    "KeyLookup",
    "Outcome",
    "Send",
    "Verification",
    "VerificationMachine",
]

log = logging.getLogger("ratchet.verification")

#: A flow not finished this long after it began (or unused this long) is cancelled with m.timeout (seconds).
FLOW_TIMEOUT = 600.0
#: Finished and cancelled flows are kept this long (``ratchet verification list --all``), then forgotten (seconds).
KEEP_FINISHED = 3600.0
#: A to-device request stamped further than this in the future is ignored (seconds).
REQUEST_FUTURE_SKEW = 300.0

REQUEST = "m.key.verification.request"
READY = "m.key.verification.ready"
START = "m.key.verification.start"
ACCEPT = "m.key.verification.accept"
KEY = "m.key.verification.key"
MAC = "m.key.verification.mac"
DONE = "m.key.verification.done"
CANCEL = "m.key.verification.cancel"
VERIFICATION_EVENT_TYPES = frozenset({REQUEST, READY, START, ACCEPT, KEY, MAC, DONE, CANCEL})

#: Flow states, in order. ``cancelled`` and ``done`` are final.
STATES = ("requested", "ready", "started", "accepted", "keys", "confirmed", "done", "cancelled")
_ACTIVE = frozenset(STATES[:-2])

_REASONS = {
    "m.user": "The user cancelled the verification",
    "m.timeout": "The verification timed out",
    "m.unknown_transaction": "Unknown transaction",
    "m.unknown_method": "Unknown method",
    "m.unexpected_message": "Unexpected message",
    "m.key_mismatch": "Key mismatch",
    "m.user_mismatch": "User mismatch",
    "m.invalid_message": "Invalid message",
    "m.accepted": "Another device accepted the request",
    "m.mismatched_commitment": "Mismatched commitment",
    "m.mismatched_sas": "The short authentication strings do not match",
}


class KeyLookup(Protocol):
    """What the machine needs to know about keys (the shell answers from the device store and ``/keys/query``)."""

    def device_ed25519(self, user_id: str, device_id: str) -> str | None:
        """The ed25519 key of a device, None if unknown."""

    def master_key(self, user_id: str) -> str | None:
        """A user's cross-signing master public key, None if they have none (or it is unknown)."""


# ------------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Send:
    """Send ``content`` as ``event_type``: to-device to ``to_user``/``to_device``, or into ``room_id`` (then
    ``to_user``/``to_device`` name the other party, for the shell to decide how to encrypt)."""

    event_type: str
    content: dict[str, Any]
    to_user: str | None = None
    to_device: str | None = None
    room_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """Something the operator (or the shell) should know: ``kind`` is ``"requested"`` (a new incoming flow),
    ``"sas"`` (short codes to compare), ``"verified"`` or ``"cancelled"``."""

    kind: str
    verification: Verification


Action = Send | Outcome


# ------------------------------------------------------------------------------------------------ one flow


@dataclass
class Verification:
    """One verification flow and everything known about it."""

    flow_id: str
    own_user: str
    own_device: str
    other_user: str
    #: The other device (None for an outgoing to-device request until one device answers ``ready``).
    other_device: str | None
    we_requested: bool
    started_at: float
    #: In-room flows: the room; None for to-device.
    room_id: str | None = None
    state: str = "requested"
    updated_at: float = 0.0
    #: Devices an outgoing to-device request went to (the others get ``m.accepted`` once one answers).
    requested_devices: tuple[str, ...] = ()
    their_methods: tuple[str, ...] = ()
    #: Who sent the ``start`` that counts: True for us.
    we_started: bool = False
    start_content: dict[str, Any] | None = None
    their_commitment: str | None = None
    short_codes: tuple[str, ...] = ()
    keypair: SasKeyPair | None = field(default=None, repr=False)
    their_key: str | None = None
    shared_secret: bytes | None = field(default=None, repr=False)
    emoji: list[tuple[str, str]] | None = None
    decimals: tuple[int, int, int] | None = None
    #: The other side's MAC content, kept (and already checked) until the operator confirms.
    their_mac: dict[str, Any] | None = None
    our_mac_sent: bool = False
    done_sent: bool = False
    #: Key id -> public key the other side proved (its device key, its master key), after success.
    verified_keys: dict[str, str] = field(default_factory=dict)
    cancel_code: str | None = None
    cancel_reason: str | None = None
    cancelled_by_us: bool | None = None

    @property
    def active(self) -> bool:
        return self.state in _ACTIVE

    @property
    def transport(self) -> str:
        return "room" if self.room_id else "to-device"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``ratchet verification show`` prints)."""
        return {
            "id": self.flow_id,
            "state": self.state,
            "transport": self.transport,
            "room_id": self.room_id,
            "other_user": self.other_user,
            "other_device": self.other_device,
            "we_requested": self.we_requested,
            "started_at": self.started_at,
            "emoji": [list(e) for e in self.emoji] if self.emoji else None,
            "decimals": list(self.decimals) if self.decimals else None,
            "verified_keys": dict(self.verified_keys),
            "cancel_code": self.cancel_code,
            "cancel_reason": self.cancel_reason,
            "cancelled_by_us": self.cancelled_by_us,
        }


class _Cancel(Exception):
    def __init__(self, code: str, reason: str | None = None) -> None:
        super().__init__(reason or _REASONS.get(code, code))
        self.code = code
        self.reason = reason or _REASONS.get(code, code)


# ------------------------------------------------------------------------------------------------ the machine


class VerificationMachine:
    """Every verification flow of one device (see the module docs)."""

    def __init__(
        self,
        own_user: str,
        own_device: str,
        keys: KeyLookup,
        *,
        accept_from: Callable[[str], bool] = lambda user_id: True,
        now: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> None:
        self.own_user = own_user
        self.own_device = own_device
        self.keys = keys
        self.accept_from = accept_from
        self.now = now
        self.new_id = new_id
        self.flows: dict[str, Verification] = {}

    # -- queries ------------------------------------------------------------------------------------------------

    def get(self, flow_id: str) -> Verification | None:
        return self.flows.get(flow_id)

    def pending(self) -> list[Verification]:
        """Flows in progress, oldest first."""
        return sorted((v for v in self.flows.values() if v.active), key=lambda v: v.started_at)

    # -- starting -------------------------------------------------------------------------------------------------

    def request_to_device(self, other_user: str, devices: list[str]) -> tuple[Verification, list[Action]]:
        """Ask ``other_user``'s ``devices`` to verify with us (to-device); the first to answer ``ready`` is used."""
        if not devices:
            raise ValueError(f"no devices of {other_user} to ask")
        now = self.now()
        flow = Verification(
            flow_id=self.new_id(),
            own_user=self.own_user,
            own_device=self.own_device,
            other_user=other_user,
            other_device=devices[0] if len(devices) == 1 else None,
            we_requested=True,
            started_at=now,
            updated_at=now,
            requested_devices=tuple(devices),
        )
        self.flows[flow.flow_id] = flow
        content = {
            "from_device": self.own_device,
            "methods": [METHOD_SAS],
            "timestamp": int(now * 1000),
            "transaction_id": flow.flow_id,
        }
        return flow, [Send(REQUEST, dict(content), other_user, device) for device in devices]

    @staticmethod
    def room_request_content(own_device: str, other_user: str) -> dict[str, Any]:
        """The ``m.room.message`` content of an in-room request (send it, then call :meth:`room_request_sent`)."""
        return {
            "msgtype": REQUEST,
            "body": "is requesting to verify your key, but your client does not support in-chat key verification.",
            "from_device": own_device,
            "methods": [METHOD_SAS],
            "to": other_user,
        }

    def room_request_sent(self, room_id: str, event_id: str, other_user: str) -> Verification:
        """Record the in-room request we sent as ``event_id`` (the flow id)."""
        now = self.now()
        flow = Verification(
            flow_id=event_id,
            own_user=self.own_user,
            own_device=self.own_device,
            other_user=other_user,
            other_device=None,
            we_requested=True,
            started_at=now,
            updated_at=now,
            room_id=room_id,
        )
        self.flows[event_id] = flow
        return flow

    # -- operator decisions ---------------------------------------------------------------------------------------

    def confirm(self, flow_id: str) -> list[Action]:
        """The operator says the short codes match: send our MAC (and finish if theirs is in)."""
        flow = self._require(flow_id)
        if flow.state != "keys":
            raise ValueError(f"verification {flow_id} is {flow.state}, not waiting for a confirmation")
        assert flow.shared_secret is not None and flow.other_device is not None
        info = mac_info(self.own_user, self.own_device, flow.other_user, flow.other_device, flow.flow_id)
        own_keys = self._own_keys()
        flow.state = "confirmed"
        flow.our_mac_sent = True
        actions: list[Action] = [self._send(flow, MAC, mac_content(flow.shared_secret, info, own_keys))]
        if flow.their_mac is not None:
            actions += self._finish(flow)
        return actions

    def mismatch(self, flow_id: str) -> list[Action]:
        """The operator says the short codes differ: cancel with ``m.mismatched_sas``."""
        return self._cancel(self._require(flow_id), "m.mismatched_sas")

    def cancel(self, flow_id: str, code: str = "m.user", reason: str | None = None) -> list[Action]:
        """Cancel a flow (the operator's ``cancel``: ``m.user``)."""
        flow = self._require(flow_id)
        if not flow.active:
            return []
        return self._cancel(flow, code, reason)

    def tick(self) -> list[Action]:
        """Cancel flows that took too long (``m.timeout``) and forget finished ones after :data:`KEEP_FINISHED`;
        call it every few seconds."""
        now = self.now()
        actions: list[Action] = []
        for flow in list(self.flows.values()):
            if flow.active and (now - flow.started_at > FLOW_TIMEOUT or now - flow.updated_at > FLOW_TIMEOUT):
                actions += self._cancel(flow, "m.timeout")
            elif not flow.active and now - flow.updated_at > KEEP_FINISHED:
                del self.flows[flow.flow_id]
        return actions

    # -- incoming -------------------------------------------------------------------------------------------------

    def receive_to_device(self, sender: str, event_type: str, content: Mapping[str, Any]) -> list[Action]:
        """Handle one to-device verification message from ``sender``."""
        if event_type not in VERIFICATION_EVENT_TYPES or not isinstance(content, Mapping):
            return []
        content = dict(content)
        flow_id = content.get("transaction_id")
        if not isinstance(flow_id, str) or not flow_id:
            log.info("ignoring %s from %s without a transaction_id", event_type, sender)
            return []
        flow = self.flows.get(flow_id)
        if event_type == REQUEST:
            return self._incoming_request(sender, flow_id, content, None, _ms(content.get("timestamp")))
        if flow is None:
            if event_type == START:
                # A start without a request (deprecated, still to be handled): the flow begins at "ready".
                return self._incoming_request(sender, flow_id, content, None, None, start=True)
            if event_type == CANCEL:
                return []
            return [
                Send(
                    CANCEL,
                    {"transaction_id": flow_id, "code": "m.unknown_transaction", "reason": "Unknown transaction"},
                    sender,
                    _str(content.get("from_device")) or "*",
                )
            ]
        return self._receive(flow, sender, event_type, content)

    def receive_room_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        event_id: str,
        origin_server_ts: int | None = None,
    ) -> list[Action]:
        """Handle one room event that may belong to an in-room verification (others are ignored).

        ``origin_server_ts`` (milliseconds) dates a request: one older than 10 minutes is ignored.
        """
        if sender == self.own_user or not isinstance(content, Mapping):
            return []
        content = dict(content)
        if event_type == "m.room.message" and content.get("msgtype") == REQUEST:
            if content.get("to") != self.own_user:
                return []
            return self._incoming_request(sender, event_id, content, room_id, _ms(origin_server_ts))
        if event_type not in VERIFICATION_EVENT_TYPES:
            return []
        relates = content.get("m.relates_to")
        flow_id = relates.get("event_id") if isinstance(relates, Mapping) else None
        flow = self.flows.get(flow_id) if isinstance(flow_id, str) else None
        if flow is None or flow.room_id != room_id:
            return []  # someone else's verification, or one we never knew
        return self._receive(flow, sender, event_type, content)

    # -- the steps ------------------------------------------------------------------------------------------------

    def _incoming_request(
        self,
        sender: str,
        flow_id: str,
        content: dict[str, Any],
        room_id: str | None,
        timestamp: float | None,
        *,
        start: bool = False,
    ) -> list[Action]:
        now = self.now()
        device = _str(content.get("from_device"))
        if not device:
            log.info("ignoring a verification request from %s without from_device", sender)
            return []
        if timestamp is not None and (now - timestamp > FLOW_TIMEOUT or timestamp - now > REQUEST_FUTURE_SKEW):
            log.info("ignoring a stale verification request %s from %s %s", flow_id, sender, device)
            return []
        if flow_id in self.flows:
            log.info("ignoring a repeated verification request %s from %s", flow_id, sender)
            return []
        flow = Verification(
            flow_id=flow_id,
            own_user=self.own_user,
            own_device=self.own_device,
            other_user=sender,
            other_device=device,
            we_requested=False,
            started_at=now,
            updated_at=now,
            room_id=room_id,
        )
        methods = content.get("methods")
        flow.their_methods = tuple(m for m in methods if isinstance(m, str)) if isinstance(methods, list) else ()
        self.flows[flow_id] = flow
        actions: list[Action] = []
        # The same device starting again while a flow with it is in progress: cancel them all.
        others = [
            v
            for v in self.flows.values()
            if v is not flow and v.active and v.other_user == sender and v.other_device == device
        ]
        if others:
            for other in others:
                actions += self._cancel(other, "m.unexpected_message", "A new verification began from this device")
            return actions + self._cancel(flow, "m.unexpected_message", "Another verification is in progress")
        if not self.accept_from(sender):
            log.info("refusing a verification request from %s (not in e2ee.verification.accept_from)", sender)
            return self._cancel(flow, "m.user", "This bot does not verify with you")
        if start:
            flow.state = "ready"
            actions.append(Outcome("requested", flow))
            return actions + self._receive(flow, sender, START, content)
        if METHOD_SAS not in flow.their_methods:
            return self._cancel(flow, "m.unknown_method", "Only m.sas.v1 is supported")
        flow.state = "ready"
        actions.append(self._send(flow, READY, {"from_device": self.own_device, "methods": [METHOD_SAS]}))
        actions.append(Outcome("requested", flow))
        log.info("verification %s: %s %s asked to verify; answered ready", flow_id, sender, device)
        return actions

    def _receive(self, flow: Verification, sender: str, event_type: str, content: dict[str, Any]) -> list[Action]:
        if sender != flow.other_user:
            return []  # not the other party of this flow (in rooms: a third member); ignore
        if not flow.active:
            return []
        device = _str(content.get("from_device"))
        if device and flow.other_device and device != flow.other_device and event_type != START:
            # Another device of the same user (in a room, one that did not take the request): not ours to answer.
            log.info("verification %s: ignoring %s from %s's other device %s", flow.flow_id, event_type, sender, device)
            return []
        try:
            flow.updated_at = self.now()
            handler = {
                READY: self._on_ready,
                START: self._on_start,
                ACCEPT: self._on_accept,
                KEY: self._on_key,
                MAC: self._on_mac,
                DONE: self._on_done,
            }.get(event_type)
            if event_type == CANCEL:
                return self._on_cancel(flow, content)
            if handler is None:  # a second request with the same id
                raise _Cancel("m.unexpected_message")
            return handler(flow, content, device)
        except _Cancel as exc:
            log.info("verification %s: cancelling (%s: %s)", flow.flow_id, exc.code, exc.reason)
            return self._cancel(flow, exc.code, exc.reason)

    def _on_ready(self, flow: Verification, content: dict[str, Any], device: str | None) -> list[Action]:
        if flow.state != "requested" or not flow.we_requested or not device:
            raise _Cancel("m.unexpected_message")
        methods = content.get("methods")
        if not isinstance(methods, list) or METHOD_SAS not in methods:
            raise _Cancel("m.unknown_method", "Only m.sas.v1 is supported")
        if flow.room_id is None and flow.requested_devices and device not in flow.requested_devices:
            raise _Cancel("m.unexpected_message", "Ready from a device that was not asked")
        flow.other_device = device
        actions: list[Action] = [
            Send(CANCEL, {"transaction_id": flow.flow_id, "code": "m.accepted", "reason": _REASONS["m.accepted"]},
                 flow.other_user, other)
            for other in flow.requested_devices
            if other != device
        ]
        flow.state = "ready"
        start = {
            "from_device": self.own_device,
            "method": METHOD_SAS,
            "key_agreement_protocols": [KEY_AGREEMENT],
            "hashes": [HASH_SHA256],
            "message_authentication_codes": [MAC_V2],
            "short_authentication_string": list(SUPPORTED_SAS),
        }
        send = self._send(flow, START, start)
        flow.start_content = dict(send.content)
        flow.we_started = True
        flow.state = "started"
        return [*actions, send]

    def _on_start(self, flow: Verification, content: dict[str, Any], device: str | None) -> list[Action]:
        if device != flow.other_device:
            raise _Cancel("m.unexpected_message", "start from another device")
        if content.get("method") != METHOD_SAS:
            raise _Cancel("m.unknown_method", "Only m.sas.v1 is supported")
        if flow.state == "started" and flow.we_started:
            # Both sides started: the start of the smaller user id (then device id) counts.
            ours = (self.own_user, self.own_device)
            theirs = (flow.other_user, device)
            if ours < theirs:
                log.info("verification %s: both sides started; ours wins", flow.flow_id)
                return []
            flow.we_started = False
            flow.start_content = None
        elif flow.state != "ready":
            raise _Cancel("m.unexpected_message")
        if _choose(content.get("key_agreement_protocols"), [KEY_AGREEMENT]) is None:
            raise _Cancel("m.unknown_method", "no common key agreement protocol")
        if _choose(content.get("hashes"), [HASH_SHA256]) is None:
            raise _Cancel("m.unknown_method", "no common hash")
        if _choose(content.get("message_authentication_codes"), [MAC_V2]) is None:
            raise _Cancel("m.unknown_method", "no common MAC method (hkdf-hmac-sha256.v2 is required)")
        offered = content.get("short_authentication_string")
        codes = [c for c in SUPPORTED_SAS if isinstance(offered, list) and c in offered]
        if "decimal" not in codes:
            raise _Cancel("m.unknown_method", "no common short authentication string method")
        flow.start_content = content
        flow.we_started = False
        flow.short_codes = tuple(codes)
        flow.keypair = SasKeyPair()
        accept = {
            "method": METHOD_SAS,
            "key_agreement_protocol": KEY_AGREEMENT,
            "hash": HASH_SHA256,
            "message_authentication_code": MAC_V2,
            "short_authentication_string": codes,
            "commitment": commitment(flow.keypair.public_key, content),
        }
        flow.state = "accepted"
        return [self._send(flow, ACCEPT, accept)]

    def _on_accept(self, flow: Verification, content: dict[str, Any], device: str | None) -> list[Action]:
        if flow.state != "started" or not flow.we_started:
            raise _Cancel("m.unexpected_message")
        if content.get("key_agreement_protocol") != KEY_AGREEMENT or content.get("hash") != HASH_SHA256:
            raise _Cancel("m.unknown_method")
        if content.get("message_authentication_code") != MAC_V2:
            raise _Cancel("m.unknown_method", "hkdf-hmac-sha256.v2 is required")
        codes = content.get("short_authentication_string")
        if not isinstance(codes, list) or not [c for c in codes if c in SUPPORTED_SAS]:
            raise _Cancel("m.unknown_method")
        their_commitment = content.get("commitment")
        if not isinstance(their_commitment, str) or not their_commitment:
            raise _Cancel("m.invalid_message", "accept without a commitment")
        flow.their_commitment = their_commitment
        flow.short_codes = tuple(c for c in SUPPORTED_SAS if c in codes)
        flow.keypair = SasKeyPair()
        flow.state = "accepted"
        return [self._send(flow, KEY, {"key": flow.keypair.public_key})]

    def _on_key(self, flow: Verification, content: dict[str, Any], device: str | None) -> list[Action]:
        if flow.state != "accepted" or flow.their_key is not None or flow.keypair is None:
            raise _Cancel("m.unexpected_message")
        key = content.get("key")
        if not isinstance(key, str) or not key:
            raise _Cancel("m.invalid_message", "key message without a key")
        actions: list[Action] = []
        if flow.we_started:
            assert flow.start_content is not None
            if commitment(key, flow.start_content) != flow.their_commitment:
                raise _Cancel("m.mismatched_commitment")
        else:
            actions.append(self._send(flow, KEY, {"key": flow.keypair.public_key}))
        try:
            flow.shared_secret = flow.keypair.shared_secret(key)
        except SasError as exc:
            raise _Cancel(exc.code, str(exc)) from None
        flow.their_key = key
        assert flow.other_device is not None
        ours = (self.own_user, self.own_device, flow.keypair.public_key)
        theirs = (flow.other_user, flow.other_device, key)
        first, second = (ours, theirs) if flow.we_started else (theirs, ours)
        data = sas_bytes(flow.shared_secret, sas_info(*first, *second, flow.flow_id))
        flow.emoji = emoji_for(data) if "emoji" in flow.short_codes else None
        flow.decimals = decimals(data)
        flow.state = "keys"
        log.info(
            "verification %s with %s %s: compare the short codes (%s), then confirm or cancel",
            flow.flow_id,
            flow.other_user,
            flow.other_device,
            " ".join(name for _, name in flow.emoji) if flow.emoji else "-".join(map(str, flow.decimals)),
        )
        return [*actions, Outcome("sas", flow)]

    def _on_mac(self, flow: Verification, content: dict[str, Any], device: str | None) -> list[Action]:
        if flow.state not in ("keys", "confirmed") or flow.their_mac is not None:
            raise _Cancel("m.unexpected_message")
        assert flow.shared_secret is not None and flow.other_device is not None
        info = mac_info(flow.other_user, flow.other_device, self.own_user, self.own_device, flow.flow_id)
        known: dict[str, str] = {}
        device_key = self.keys.device_ed25519(flow.other_user, flow.other_device)
        if device_key:
            known[f"ed25519:{flow.other_device}"] = device_key
        master = self.keys.master_key(flow.other_user)
        if master:
            known[f"ed25519:{master}"] = master
        try:
            checked = check_mac_content(flow.shared_secret, info, content, known)
        except SasError as exc:
            raise _Cancel(exc.code, str(exc)) from None
        flow.their_mac = content
        flow.verified_keys = dict(checked.verified)
        if flow.state == "confirmed":
            return self._finish(flow)
        return []

    def _on_done(self, flow: Verification, content: dict[str, Any], device: str | None) -> list[Action]:
        # Both MACs in means the flow is already done (and no longer active): a done now is out of order.
        raise _Cancel("m.unexpected_message")

    def _on_cancel(self, flow: Verification, content: dict[str, Any]) -> list[Action]:
        actions: list[Action] = []
        if flow.room_id is None and flow.other_device is None:
            # One of the devices we asked declined: tell the others the request is over (the spec's m.user).
            actions = [
                Send(CANCEL, {"transaction_id": flow.flow_id, "code": "m.user", "reason": _REASONS["m.user"]},
                     flow.other_user, d)
                for d in flow.requested_devices
            ]
        flow.state = "cancelled"
        flow.cancel_code = _str(content.get("code")) or "m.user"
        flow.cancel_reason = _str(content.get("reason")) or _REASONS.get(flow.cancel_code, "")
        flow.cancelled_by_us = False
        flow.shared_secret = None
        log.info(
            "verification %s cancelled by %s: %s (%s)",
            flow.flow_id,
            flow.other_user,
            flow.cancel_code,
            flow.cancel_reason,
        )
        return [*actions, Outcome("cancelled", flow)]

    # -- helpers --------------------------------------------------------------------------------------------------

    def _finish(self, flow: Verification) -> list[Action]:
        """Both MACs are in and ours was confirmed by the operator: send done; verified at their done."""
        flow.done_sent = True
        flow.updated_at = self.now()
        actions: list[Action] = [self._send(flow, DONE, {})]
        # Element sends done right after its MAC: it may already be here. Otherwise the flow is verified now anyway
        # (both MACs matched); their done only closes it.
        flow.state = "done"
        log.info(
            "verification %s with %s %s succeeded: verified %s",
            flow.flow_id,
            flow.other_user,
            flow.other_device,
            ", ".join(sorted(flow.verified_keys)),
        )
        actions.append(Outcome("verified", flow))
        return actions

    def _own_keys(self) -> dict[str, str]:
        own: dict[str, str] = {}
        device_key = self.keys.device_ed25519(self.own_user, self.own_device)
        if device_key:
            own[f"ed25519:{self.own_device}"] = device_key
        master = self.keys.master_key(self.own_user)
        if master:
            own[f"ed25519:{master}"] = master
        if not own:
            raise ValueError("our own device key is unknown")
        return own

    def _cancel(self, flow: Verification, code: str, reason: str | None = None) -> list[Action]:
        reason = reason or _REASONS.get(code, code)
        flow.updated_at = self.now()
        flow.state = "cancelled"
        flow.cancel_code = code
        flow.cancel_reason = reason
        flow.cancelled_by_us = True
        flow.shared_secret = None
        log.info("verification %s with %s cancelled: %s (%s)", flow.flow_id, flow.other_user, code, reason)
        actions: list[Action] = []
        if flow.room_id is None and flow.other_device is None:
            actions += [
                Send(CANCEL, {"transaction_id": flow.flow_id, "code": code, "reason": reason}, flow.other_user, d)
                for d in flow.requested_devices
            ]
        else:
            actions.append(self._send(flow, CANCEL, {"code": code, "reason": reason}))
        actions.append(Outcome("cancelled", flow))
        return actions

    def _send(self, flow: Verification, event_type: str, content: dict[str, Any]) -> Send:
        content = dict(content)
        if flow.room_id is not None:
            content["m.relates_to"] = {"rel_type": "m.reference", "event_id": flow.flow_id}
            return Send(event_type, content, flow.other_user, flow.other_device, room_id=flow.room_id)
        content["transaction_id"] = flow.flow_id
        return Send(event_type, content, flow.other_user, flow.other_device)

    def _require(self, flow_id: str) -> Verification:
        flow = self.flows.get(flow_id)
        if flow is None:
            raise KeyError(f"no verification {flow_id!r}")
        return flow


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _ms(value: Any) -> float | None:
    return value / 1000 if isinstance(value, int | float) and not isinstance(value, bool) else None


def _choose(offered: Any, ours: list[str]) -> str | None:
    if not isinstance(offered, list):
        return None
    return next((m for m in ours if m in offered), None)
