"""The trust policy (``e2ee.trust``): which devices get the bot's room keys, and whose messages count as trusted.

Other users' cross-signing chains come from ``/keys/query``: a device is *cross-signed* when its device keys carry a
valid signature by the user's self-signing key, and that key a valid signature by the user's master key
(device <- self-signing key <- master key). nio ignores the ``master_keys``/``self_signing_keys`` of that response;
:class:`~bot.matrix.client.RatchetClient` hands the raw body to :meth:`TrustPolicy.observe_keys_query`.

The modes:

``tofu`` (the default)
    Each user's master key is pinned the first time it is seen (pins live in ``state.db``). A device is trusted when
    it is cross-signed by the *pinned* master key; all devices of a user without cross-signing keys are trusted.
``cross-signed``
    A device is trusted only when it is cross-signed by its owner's current master key (what Element's "exclude
    insecure devices" does); users without cross-signing keys are not trusted.
``verified``
    A device is trusted only when it is cross-signed by its owner's master key *and* the bot has verified that
    owner interactively (emoji, :mod:`bot.e2ee.verification_service`): the master key carries a valid signature by
    the bot's user-signing key, which the bot uploads after a successful verification. The bot's own devices count
    when cross-signed by its own master key. Everyone else is untrusted and gets no room keys.
``all``
    Every device is trusted (also unencrypted events).

Both directions follow the verdict:

* **Outgoing**: when the bot shares a Megolm session, only devices whose verdict allows it get the room key; the
  others get an ``m.room_key.withheld`` to-device notice (``m.unverified``, or ``m.blacklisted`` for devices
  blacklisted in nio's store) so their clients show *why* they cannot read the bot.
* **Incoming**: each decrypted event is traced to the device whose Megolm session encrypted it (the session's
  ``sender_key``, checked against the device's keys; sessions that were forwarded are not attributable). The
  result is ``Context.trusted``. Untrusted messages are **not** dropped: handlers decide. A command that acts with
  authority (admin actions, anything that changes state for the sender) should check ``ctx.trusted`` and refuse
  when it is False. Events that arrived unencrypted are trusted only under ``all`` (no device vouches for them).

**Identity changes** (a user's master key differs from the pinned one, e.g. after a cross-signing reset) are
logged at WARNING (user id, old and new key, nothing else), kept in :meth:`TrustPolicy.identity_changes` and passed
to the async callbacks registered with :meth:`TrustPolicy.on_identity_change` (plugins reach the policy as
``self.bot.trust``). They are detected in every mode; under ``tofu`` the change stays *unresolved* until the
identity is re-pinned with :meth:`TrustPolicy.pin`. Until then, and this is the chosen policy:

* the bot **keeps sharing room keys** with the user's devices cross-signed by the *new* identity (what Element
  does: warn and keep sending; a user who reset their keys, by far the common cause, is not cut off from the bot),
  unless the policy was built with ``share_with_changed_identities=False``;
* their messages are **not trusted** (``ctx.trusted`` is False), so commands that need trust refuse them until an
  admin (or a plugin's own rule) accepts the new identity with ``pin(user_id)``. Authority, unlike readability,
  is not granted to an identity nobody has looked at.

Incoming ``m.room_key.withheld`` notices are remembered per session (:meth:`TrustPolicy.withheld_reason`); when an
event the runtime is waiting a key for belongs to such a session, the code and reason are logged once at INFO.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from bot.crypto.canonical import canonical_json, signable
from bot.crypto.cross_signing import (
    master_public,
    verify_device_self_signed,
    verify_device_signed,
    verify_self_signing_key,
    verify_user_signed,
    verify_user_signing_key,
)
from bot.crypto.withheld import (
    CODE_BLACKLISTED,
    CODE_UNVERIFIED,
    WITHHELD_EVENT_TYPES,
    Verdict,
    Withheld,
    parse_withheld,
)

if TYPE_CHECKING:
    from bot.matrix.client import RatchetClient
    from bot.storage.state import StateStore

__all__ = [
    "TRUST_MODES",
    "IdentityChanged",
    "MemoryPinStore",
    "PinStore",
    "SenderCheck",
    "StatePinStore",
    "TrustPolicy",
    "UserKeys",
    "install_trust",
]

log = logging.getLogger(__name__)

TRUST_MODES = ("tofu", "cross-signed", "verified", "all")
#: How many withheld notices are remembered (oldest forgotten first).
WITHHELD_MEMORY = 1000
#: A message from a device the bot does not know makes it query the sender's keys at most this often.
REQUERY_SECONDS = 30.0


# ------------------------------------------------------------------------------------------------ value types


@dataclass(frozen=True)
class SenderCheck:
    """The verdict on one incoming event's sender (see :meth:`TrustPolicy.check_sender`).

    ``owned``: True when the claimed sender owns the sending device (or the event was not encrypted), False for a
    forged sender (the event must not be handled), None when the sender's keys cannot be fetched yet (retry later).
    ``trusted``: the device counts as trusted under the policy (``Context.trusted``).
    """

    owned: bool | None
    trusted: bool


@dataclass(frozen=True)
class IdentityChanged:
    """A user's cross-signing master key is not the one pinned for them.

    ``new_master`` is None when the user no longer has cross-signing keys at all. The event type string
    ``ratchet.identity_changed`` names it in docs and logs.
    """

    TYPE: ClassVar[str] = "ratchet.identity_changed"

    user_id: str
    old_master: str
    new_master: str | None
    detected_at: float = field(default_factory=time.time, compare=False)

    @property
    def type(self) -> str:
        """``ratchet.identity_changed``."""
        return self.TYPE


# ------------------------------------------------------------------------------------------------ one user's keys


@dataclass(frozen=True)
class UserKeys:
    """One user's keys as ``/keys/query`` returned them: master, self-signing key and device keys (raw JSON)."""

    user_id: str
    master: Mapping[str, Any] | None
    self_signing: Mapping[str, Any] | None
    devices: Mapping[str, Mapping[str, Any]]
    #: Signature checks already done (the object never changes, so neither do their results).
    _checked: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, repr=False)
    #: Values derived from the keys, computed once (the tofu verdict asks for them with every message; issue 20):
    #: ``"master"`` the master public key, ``"curve25519"`` the devices by identity key.
    _derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _memo(self, what: str, device_id: str, check: Callable[[], bool]) -> bool:
        key = (what, device_id)
        if key not in self._checked:
            self._checked[key] = bool(check())
        return self._checked[key]

    @classmethod
    def from_keys_query(cls, body: Mapping[str, Any], user_id: str) -> UserKeys | None:
        """``user_id``'s part of a ``/keys/query`` response body, or None if the body does not list the user."""
        device_keys = body.get("device_keys")
        if not isinstance(device_keys, Mapping) or user_id not in device_keys:
            return None
        devices = device_keys.get(user_id)
        devices = devices if isinstance(devices, Mapping) else {}

        def obj(section: str) -> Mapping[str, Any] | None:
            part = body.get(section)
            value = part.get(user_id) if isinstance(part, Mapping) else None
            return value if isinstance(value, Mapping) else None

        return cls(
            user_id=user_id,
            master=obj("master_keys"),
            self_signing=obj("self_signing_keys"),
            devices={k: v for k, v in devices.items() if isinstance(k, str) and isinstance(v, Mapping)},
        )

    @property
    def master_public(self) -> str:
        """The master key's public key (unpadded base64), ``""`` if the user has no (well-formed) master key."""
        found = self._derived.get("master")
        if found is None:
            found = master_public(self.master, self.user_id) if self.master is not None else ""
            self._derived["master"] = found
        return found

    @property
    def self_signing_valid(self) -> bool:
        """The self-signing key exists and is signed by the master key."""
        if self.master is None or self.self_signing is None:
            return False
        master, ssk = self.master, self.self_signing
        return self._memo("ssk", "", lambda: verify_self_signing_key(master, ssk, self.user_id))

    def device_valid(self, device_id: str) -> bool:
        """The device is listed and its keys are signed by its own ed25519 key."""
        known = self._checked.get(("self", device_id))
        if known is not None:
            return known
        keys = self.devices.get(device_id)
        if keys is None or keys.get("device_id") != device_id:
            return False
        return self._memo("self", device_id, lambda: verify_device_self_signed(keys, self.user_id))

    def device_cross_signed(self, device_id: str) -> bool:
        """The full chain holds: device <- self-signing key <- master key."""
        known = self._checked.get(("chain", device_id))
        if known is not None:
            return known
        result = self._device_chain(device_id)
        self._checked["chain", device_id] = result
        return result

    def _device_chain(self, device_id: str) -> bool:
        keys = self.devices.get(device_id)
        if keys is None or not self.device_valid(device_id) or not self.self_signing_valid:
            return False
        ssk = self.self_signing
        return self._memo("ssk-signed", device_id, lambda: verify_device_signed(keys, ssk, self.user_id))

    def device_key(self, device_id: str, algorithm: str) -> str | None:
        """The device's ``ed25519`` or ``curve25519`` key."""
        keys = self.devices.get(device_id, {}).get("keys")
        value = keys.get(f"{algorithm}:{device_id}") if isinstance(keys, Mapping) else None
        return value if isinstance(value, str) else None

    def device_by_curve25519(self, curve25519: str) -> str | None:
        """The id of the device whose identity (curve25519) key is ``curve25519`` (the first listed, if several)."""
        index = self._derived.get("curve25519")
        if index is None:
            index = {}
            for device_id in self.devices:
                key = self.device_key(device_id, "curve25519")
                if key is not None:
                    index.setdefault(key, device_id)
            self._derived["curve25519"] = index
        return index.get(curve25519)

    def digest(self) -> str:
        """A fingerprint of everything trust depends on (changes when keys or signatures change)."""
        data = {
            "master": signable(self.master) if self.master else None,
            "master_sigs": (self.master or {}).get("signatures"),
            "ssk": self.self_signing,
            "devices": {k: signable(v) | {"signatures": v.get("signatures")} for k, v in self.devices.items()},
        }
        try:
            raw = canonical_json(data)
        except (TypeError, ValueError):
            raw = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()


# ------------------------------------------------------------------------------------------------ pins


class PinStore(Protocol):
    """Where pinned master keys live (user id -> master public key)."""

    def get(self, user_id: str) -> str | None: ...

    def set(self, user_id: str, master: str) -> None: ...


class MemoryPinStore:
    """Pins in a dict (tests, tools)."""

    def __init__(self, pins: Mapping[str, str] | None = None) -> None:
        self.pins: dict[str, str] = dict(pins or {})

    def get(self, user_id: str) -> str | None:
        return self.pins.get(user_id)

    def set(self, user_id: str, master: str) -> None:
        self.pins[user_id] = master


class StatePinStore:
    """Pins in the runtime's ``state.db`` (mode 0600), key ``trust.pin:<user id>``, value JSON.

    The tofu verdict reads the sender's pin for every decrypted message; pins only change through :meth:`set` (the
    running bot is the only writer of its state.db), so each user's pin is read from the database once and cached.
    """

    PREFIX = "trust.pin:"

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._cache: dict[str, str | None] = {}

    def get(self, user_id: str) -> str | None:
        try:
            return self._cache[user_id]
        except KeyError:
            pass
        value = self._read(user_id)
        self._cache[user_id] = value
        return value

    def _read(self, user_id: str) -> str | None:
        raw = self._state.get(self.PREFIX + user_id)
        if not raw:
            return None
        try:
            value = json.loads(raw).get("master")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def set(self, user_id: str, master: str) -> None:
        self._cache.pop(user_id, None)  # a failed write must not leave a pin that is not in the database
        self._state.set(self.PREFIX + user_id, json.dumps({"master": master, "pinned_at": int(time.time())}))
        self._cache[user_id] = master


# ------------------------------------------------------------------------------------------------ the policy

IdentityCallback = Callable[[IdentityChanged], Awaitable[Any]]


class TrustPolicy:
    """Decides, per device, whether it is trusted and whether it gets room keys (see the module docs).

    The pure part (``observe_keys_query``, ``device_verdict``, ``sender_verdict``, pins, withheld bookkeeping)
    needs no network; :meth:`attach` connects it to a :class:`~bot.matrix.client.RatchetClient` for the runtime
    (:meth:`check_sender` may query keys it lacks).
    """

    def __init__(
        self,
        mode: str = "tofu",
        *,
        pins: PinStore | None = None,
        share_with_changed_identities: bool = True,
        own_user_id: str | None = None,
    ) -> None:
        if mode not in TRUST_MODES:
            raise ValueError(f"unknown trust mode {mode!r} (one of {', '.join(TRUST_MODES)})")
        self.mode = mode
        self.pins: PinStore = pins if pins is not None else MemoryPinStore()
        #: Under tofu, keep sharing room keys with devices cross-signed by a changed, not yet re-pinned identity.
        self.share_with_changed_identities = share_with_changed_identities
        #: The bot's own user: its identity is managed by bot/e2ee/identity.py, so a change is followed, not flagged.
        self.own_user_id = own_user_id
        self._users: dict[str, UserKeys] = {}
        self._digests: dict[str, str] = {}
        self._changes: dict[str, IdentityChanged] = {}
        self._reported: dict[str, tuple[str, str | None]] = {}
        self._callbacks: list[IdentityCallback] = []
        self._withheld: OrderedDict[str, Withheld] = OrderedDict()
        self._withheld_logged: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: RatchetClient | None = None
        self._queried_at: dict[str, float] = {}
        #: The bot's own user-signing key as last published (``verified`` mode checks other users against it).
        self._own_usk: Mapping[str, Any] | None = None

    # -- feeding -----------------------------------------------------------------------------------------------

    def knows(self, user_id: str) -> bool:
        """True once a ``/keys/query`` answer about ``user_id`` was observed."""
        return user_id in self._users

    def wants_query(self, user_id: str) -> bool:
        """True when ``user_id``'s keys were never observed and not asked for in the last ``REQUERY_SECONDS``
        (a user the server cannot answer for is not asked again at every message or key share)."""
        return user_id not in self._users and time.monotonic() - self._queried_at.get(user_id, -1e9) > REQUERY_SECONDS

    def note_queried(self, users: Iterable[str]) -> None:
        """Record that the keys of ``users`` were just asked for."""
        now = time.monotonic()
        for user_id in users:
            self._queried_at[user_id] = now

    def user_keys(self, user_id: str) -> UserKeys | None:
        """The last observed keys of ``user_id``."""
        return self._users.get(user_id)

    def observe_keys_query(self, body: Mapping[str, Any]) -> tuple[list[IdentityChanged], set[str]]:
        """Take in a ``/keys/query`` response body.

        Pins first-seen identities (tofu), detects identity changes (logged at WARNING, each distinct change
        once) and returns ``(new identity changes, users whose keys or signatures changed since last time)``.
        Callbacks are not run here (see :meth:`notify`).
        """
        new_changes: list[IdentityChanged] = []
        changed_users: set[str] = set()
        device_keys = body.get("device_keys")
        if not isinstance(device_keys, Mapping):
            return new_changes, changed_users
        usks = body.get("user_signing_keys")
        own_usk_changed = False
        if self.own_user_id is not None and isinstance(usks, Mapping):
            own_usk = usks.get(self.own_user_id)
            if isinstance(own_usk, Mapping) and own_usk != self._own_usk:
                self._own_usk = own_usk
                own_usk_changed = True
                changed_users.update(u for u in self._users if u != self.own_user_id)  # verdicts may change
        for user_id in device_keys:
            if not isinstance(user_id, str):
                continue
            keys = UserKeys.from_keys_query(body, user_id)
            if keys is None:
                continue
            digest = keys.digest()
            previous = self._digests.get(user_id)
            if previous is not None and previous != digest:
                changed_users.add(user_id)
            elif previous == digest and not own_usk_changed and user_id in self._users:
                # the same keys and signatures (nio asks again whenever any device list in a shared room changes):
                # keep the object that has checked their signatures already, instead of checking them all again
                keys = self._users[user_id]
            self._users[user_id] = keys
            self._digests[user_id] = digest
            change = self._check_identity(keys)
            if change is not None:
                new_changes.append(change)
        return new_changes, changed_users

    def _check_identity(self, keys: UserKeys) -> IdentityChanged | None:
        user_id = keys.user_id
        current = keys.master_public or None
        pinned = self.pins.get(user_id)
        if pinned is None:
            if current is not None:
                self.pins.set(user_id, current)
                log.info("pinned the cross-signing identity of %s: master key %s", user_id, current)
            return None
        if current == pinned:
            self._changes.pop(user_id, None)
            self._reported.pop(user_id, None)
            return None
        if self._reported.get(user_id) == (pinned, current):
            return None  # already reported this very change
        if user_id == self.own_user_id and current is not None:
            self.pins.set(user_id, current)
            log.info("the bot's own cross-signing identity changed (was %s, now %s); following it", pinned, current)
            return None
        self._reported[user_id] = (pinned, current)
        change = IdentityChanged(user_id, pinned, current)
        log.warning(
            "identity change: %s has a new cross-signing master key (pinned %s, now %s)%s",
            user_id,
            pinned,
            current or "none",
            " - their messages are untrusted until the identity is re-pinned" if self.mode == "tofu" else "",
        )
        if self.mode == "tofu":
            self._changes[user_id] = change
        elif current is not None:
            self.pins.set(user_id, current)  # trust follows the current identity: remember it for the next change
            self._reported.pop(user_id, None)
        return change

    # -- identities --------------------------------------------------------------------------------------------

    def pinned(self, user_id: str) -> str | None:
        """The master key pinned for ``user_id`` (None if none)."""
        return self.pins.get(user_id)

    def pin(self, user_id: str, master: str | None = None) -> str:
        """Accept ``user_id``'s current identity (or ``master``): pins it and resolves a pending identity change.

        Returns the pinned key. Raises :class:`ValueError` if the user has no known master key and none is given.
        """
        if master is None:
            keys = self._users.get(user_id)
            master = keys.master_public if keys is not None else ""
        if not master:
            raise ValueError(f"no cross-signing master key known for {user_id}")
        self.pins.set(user_id, master)
        self._changes.pop(user_id, None)
        self._reported.pop(user_id, None)
        log.info("re-pinned the cross-signing identity of %s: master key %s", user_id, master)
        return master

    def identity_changes(self) -> list[IdentityChanged]:
        """Unresolved identity changes (tofu): users whose master key is not the pinned one, oldest first."""
        return sorted(self._changes.values(), key=lambda c: c.detected_at)

    def on_identity_change(self, callback: IdentityCallback) -> Callable[[], None]:
        """Call ``async callback(change: IdentityChanged)`` for every identity change detected from now on.

        Returns a function that unregisters it (call it from the plugin's ``stop()``). Callbacks run as tasks;
        their exceptions are logged.
        """
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def notify(self, changes: Iterable[IdentityChanged]) -> None:
        """Run the registered callbacks for ``changes`` in background tasks (needs a running loop)."""
        for change in changes:
            for callback in list(self._callbacks):
                task = asyncio.get_running_loop().create_task(self._run_callback(callback, change))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run_callback(callback: IdentityCallback, change: IdentityChanged) -> None:
        try:
            await callback(change)
        except Exception as exc:
            log.error("identity change callback %r failed for %s", callback, change.user_id, exc_info=exc)

    # -- decisions ---------------------------------------------------------------------------------------------

    def device_verdict(self, user_id: str, device_id: str, *, blacklisted: bool = False) -> Verdict:
        """Is ``user_id``'s device ``device_id`` trusted, and does it get room keys?"""
        if blacklisted:
            return Verdict(False, False, CODE_BLACKLISTED, "device is blacklisted")
        if self.mode == "all":
            return Verdict(True, True, None, "trust: all")
        keys = self._users.get(user_id)
        if keys is None or not keys.device_valid(device_id):
            return Verdict(False, False, CODE_UNVERIFIED, "device keys unknown or not self-signed")
        current = keys.master_public
        if self.mode == "verified":
            if not current:
                return Verdict(False, False, CODE_UNVERIFIED, "user has no cross-signing keys")
            if not keys.device_cross_signed(device_id):
                return Verdict(False, False, CODE_UNVERIFIED, "device not cross-signed by its owner")
            if user_id == self.own_user_id:
                return Verdict(True, True, None, "the bot's own account, cross-signed")
            if self.user_verified(user_id):
                return Verdict(True, True, None, "owner verified by the bot")
            return Verdict(False, False, CODE_UNVERIFIED, "owner not verified by the bot")
        if self.mode == "cross-signed":
            if not current:
                return Verdict(False, False, CODE_UNVERIFIED, "user has no cross-signing keys")
            if keys.device_cross_signed(device_id):
                return Verdict(True, True, None, "cross-signed by its owner")
            return Verdict(False, False, CODE_UNVERIFIED, "device not cross-signed by its owner")
        # tofu
        pinned = self.pins.get(user_id)
        if pinned is None and not current:
            return Verdict(True, True, None, "user has no cross-signing keys (tofu)")
        if pinned is None:
            # Not observed through observe_keys_query (which pins): judge against the current identity.
            pinned = current
        if current == pinned:
            if keys.device_cross_signed(device_id):
                return Verdict(True, True, None, "cross-signed by the pinned identity")
            return Verdict(False, False, CODE_UNVERIFIED, "device not cross-signed by the pinned identity")
        # An identity change that is not resolved yet.
        share = bool(current) and self.share_with_changed_identities and keys.device_cross_signed(device_id)
        return Verdict(
            False,
            share,
            None if share else CODE_UNVERIFIED,
            "identity changed since it was pinned; not re-pinned yet",
        )

    def user_verified(self, user_id: str) -> bool:
        """Whether the bot has verified ``user_id`` interactively: their current master key carries a valid signature
        by the bot's user-signing key, itself signed by the bot's master key (as ``/keys/query`` last showed them)."""
        own = self.own_user_id
        keys = self._users.get(user_id)
        own_keys = self._users.get(own) if own is not None else None
        if own is None or keys is None or keys.master is None or own_keys is None or self._own_usk is None:
            return False
        if not verify_user_signing_key(own_keys.master, self._own_usk, own):
            return False
        return verify_user_signed(keys.master, self._own_usk, own)

    def is_device_trusted(self, user_id: str, device_id: str) -> bool:
        """Shorthand for ``device_verdict(user_id, device_id).trusted``."""
        return self.device_verdict(user_id, device_id).trusted

    def device_cross_signed(self, user_id: str, device_id: str) -> bool | None:
        """Whether ``device_id`` is cross-signed by ``user_id``'s current master key; None if their keys are unknown.

        What a report's evidence records about the sending device (the moderators see it next to the case).
        """
        keys = self._users.get(user_id)
        return None if keys is None else keys.device_cross_signed(device_id)

    def sender_verdict(
        self,
        user_id: str,
        sender_key: str | None,
        *,
        claimed_ed25519: str | None = None,
        forwarded: bool = False,
    ) -> Verdict:
        """The verdict for a message encrypted by the Megolm session of ``sender_key`` (a curve25519 key).

        ``claimed_ed25519`` is the signing key the session claims (checked against the device);
        ``forwarded`` sessions (received from a third device) cannot be attributed and are untrusted.
        """
        if self.mode == "all":
            return Verdict(True, True, None, "trust: all")
        if forwarded:
            return Verdict(False, False, CODE_UNVERIFIED, "the message key was forwarded, sender device unproven")
        keys = self._users.get(user_id)
        device_id = keys.device_by_curve25519(sender_key) if keys is not None and sender_key else None
        if keys is None or device_id is None:
            return Verdict(False, False, CODE_UNVERIFIED, "sending device unknown")
        if claimed_ed25519 is not None and keys.device_key(device_id, "ed25519") != claimed_ed25519:
            return Verdict(False, False, CODE_UNVERIFIED, "session signing key does not match the device")
        return self.device_verdict(user_id, device_id)

    # -- withheld notices --------------------------------------------------------------------------------------

    def record_withheld(self, sender: str, content: Any) -> Withheld | None:
        """Remember an incoming ``m.room_key.withheld`` notice (by session id)."""
        notice = parse_withheld(sender, content)
        if notice is None:
            return None
        log.debug("withheld notice from %s: %s (session %s)", sender, notice.code, notice.session_id)
        if notice.session_id:
            self._withheld[notice.session_id] = notice
            self._withheld.move_to_end(notice.session_id)
            while len(self._withheld) > WITHHELD_MEMORY:
                old, _ = self._withheld.popitem(last=False)
                self._withheld_logged.discard(old)
        return notice

    def withheld_reason(self, session_id: str) -> Withheld | None:
        """The withheld notice received for ``session_id``, if any."""
        return self._withheld.get(session_id)

    def log_withheld_for(self, waiting: Mapping[str, Iterable[str]]) -> int:
        """Log at INFO, once per session, why the key of waiting events was withheld.

        ``waiting`` maps session id -> ids of events waiting for that session's key. Returns how many were logged.
        """
        count = 0
        for session_id, event_ids in waiting.items():
            notice = self._withheld.get(session_id)
            if notice is None or session_id in self._withheld_logged:
                continue
            self._withheld_logged.add(session_id)
            count += 1
            log.info(
                "the key for %s (session %s) was withheld by %s: %s%s",
                ", ".join(sorted(event_ids)) or "events",
                session_id,
                notice.sender,
                notice.code,
                f" ({notice.reason})" if notice.reason else "",
            )
        return count

    # -- runtime glue ------------------------------------------------------------------------------------------

    def attach(self, client: RatchetClient) -> None:
        """Make ``client`` share keys by this policy and report keys queries and withheld notices to it."""
        self._client = client
        client.trust = self
        client.on_unknown_to_device(WITHHELD_EVENT_TYPES, self.record_withheld)

    async def check_sender(self, room_id: str, event: Any) -> SenderCheck:
        """Who really sent ``event`` and whether that counts as trusted: the one verdict the runtime routes by.

        A decrypted event is traced to the device whose Megolm session encrypted it; the sender's keys are queried
        (once) when that device is unknown and, unless the mode is ``all`` (which needs no cross-signing facts), when
        nio marked them outdated or the policy has not seen the device (at most every ``REQUERY_SECONDS``). Forged
        senders are logged and come back with ``owned=False``. Events that arrived unencrypted carry no device claim:
        they are trusted only under ``all``. Never raises.
        """
        if not getattr(event, "decrypted", False):
            return SenderCheck(True, self.mode == "all")
        client = self._client
        olm = client.olm if client is not None else None
        if olm is None:
            return SenderCheck(True, self.mode == "all")
        sender = event.sender
        try:
            device = olm.trace_sender(room_id, event, queried=False)
            keys = self._users.get(sender)
            unknown = keys is None or (device.sender_key and keys.device_by_curve25519(device.sender_key) is None)
            requery = unknown and time.monotonic() - self._queried_at.get(sender, -1e9) > REQUERY_SECONDS
            stale = sender in olm.users_for_key_query  # nio knows their device list changed
            if device.owned is None or (self.mode != "all" and (stale or requery)):
                self.note_queried([sender])
                try:
                    await client.query_user_keys([sender])
                except Exception as exc:
                    log.debug("key query for %s failed: %s", sender, exc)
                device = olm.trace_sender(room_id, event, queried=True)
        except Exception as exc:
            log.warning("could not check the sender of %s: %s", getattr(event, "event_id", "?"), exc)
            return SenderCheck(None, False)
        if device.owned is False:
            log.warning(
                "refusing %s in %s: it claims to come from %s, but the device that encrypted it is not theirs "
                "(sender key %s)",
                getattr(event, "event_id", "?"),
                room_id,
                sender,
                device.sender_key,
            )
            return SenderCheck(False, False)
        if device.owned is None:
            return SenderCheck(None, False)
        if self.mode == "all":
            return SenderCheck(True, True)
        verdict = self.sender_verdict(
            sender, device.sender_key, claimed_ed25519=device.claimed_ed25519, forwarded=device.forwarded
        )
        if not verdict.trusted:
            log.debug("%s from %s is untrusted: %s", getattr(event, "event_id", "?"), sender, verdict.reason)
        return SenderCheck(True, verdict.trusted)

    async def after_sync(self, state: StateStore | None) -> None:
        """Per-sync work for the runtime: explain withheld keys of waiting events. Never raises."""
        try:
            if state is None or not self._withheld or set(self._withheld) <= self._withheld_logged:
                return
            waiting: dict[str, list[str]] = {}
            for pending in state.pending(set(self._withheld) - self._withheld_logged):
                notice = self._withheld.get(pending.session_id)
                if notice is not None and notice.sender != pending.source.get("sender"):
                    continue  # only the event's sender can say why it withheld the key
                waiting.setdefault(pending.session_id, []).append(pending.event_id)
            self.log_withheld_for(waiting)
        except Exception as exc:
            log.warning("withheld-key bookkeeping failed: %s", exc)


def install_trust(client: RatchetClient, state: StateStore, mode: str) -> TrustPolicy:
    """The runtime's trust set-up: a policy in ``mode`` with pins in ``state``, attached to ``client``."""
    policy = TrustPolicy(mode, pins=StatePinStore(state), own_user_id=client.user_id)
    policy.attach(client)
    return policy
