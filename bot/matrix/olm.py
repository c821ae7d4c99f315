"""The Olm machine Ratchet's client uses: nio's, with the fixes that belong to it (see :class:`RatchetOlm`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nio.crypto import Olm
from nio.exceptions import EncryptionError

__all__ = ["PAYLOAD_PARSE_ERRORS", "RatchetOlm", "SenderDevice"]

log = logging.getLogger(__name__)

#: What nio's decryption raises for a payload that decrypts but is not an event (not UTF-8 is a ``ValueError``; see
#: :meth:`RatchetOlm.decrypt_megolm_event`); none of them is a storage error, which must still propagate.
PAYLOAD_PARSE_ERRORS = (RecursionError, TypeError, AttributeError, KeyError, IndexError, ValueError)


@dataclass(frozen=True)
class SenderDevice:
    """The device whose Megolm session encrypted a decrypted event, as the bot's stores know it.

    ``owned``: True when the claimed sender owns that device (its signed device keys hold the session's curve25519
    key, and the session's claimed ed25519 key is the device's); False when it is someone else's device or the keys
    disagree (a forged ``sender``); None when the device is unknown until the sender's keys are fetched.
    """

    owned: bool | None
    sender_key: str | None = None
    #: The ed25519 signing key the Megolm session claims.
    claimed_ed25519: str | None = None
    #: The session reached the bot through a third device (``m.forwarded_room_key``): its sender is not provable.
    forwarded: bool = False


class RatchetOlm(Olm):
    """nio's Olm machine with four fixes, made per client by :meth:`RatchetClient.load_store`.

    * One-time keys are saved as soon as they are generated, before they are uploaded. nio's ``share_keys()`` saves
      the account only once the server answered; a crash in between left the server with keys whose private halves
      were lost, and the next start generated *different* keys under the same key ids: every upload then failed with
      "One time key ... already exists" and Olm sessions started on the lost keys could never be decrypted. Saved
      first, a retry uploads the very same keys, which the server accepts.
    * Outbound Megolm sessions rotate as each room's ``m.room.encryption`` asks (``rotation_period_msgs``,
      ``rotation_period_ms``); nio gives every session its defaults (100 messages, a week).
    * nio's own (legacy) SAS verification is switched off: see :meth:`handle_key_verification`.
    * A payload that decrypts but cannot be parsed is an undecryptable event, not an exception: see
      :meth:`decrypt_megolm_event` and :meth:`decrypt`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Each encrypted room's rotation period from its m.room.encryption state: (messages, milliseconds).
        self.rotation_periods: dict[str, tuple[int | None, int | None]] = {}

    def handle_key_verification(self, event: Any) -> None:
        """Leave ``m.key.verification.*`` alone: nio's SAS is the legacy one (no request/ready, no v2 MAC) and would
        answer a modern flow with its own key or cancel messages. :mod:`bot.e2ee.verification_service` handles them
        (delivered through :meth:`RatchetClient.on_to_device`)."""
        return None

    # -- payloads that decrypt but do not parse -------------------------------------------------------------------

    def decrypt_megolm_event(self, event: Any, room_id: str | None = None) -> Any:
        """nio's Megolm decryption of a room event, where a payload that decrypts but is not an event raises
        :class:`EncryptionError` like any other undecryptable event.

        Only the room's Megolm session protects the payload, so any member can put any bytes in it, and nio lets
        several of them raise out of its decryption: bytes that are not UTF-8 (it decodes strictly), JSON nested deeper
        than Python's parser goes (``RecursionError``), JSON that is not an object (``null``, a list: its fallback
        builds a ``BadEvent`` from it) and objects its event parsers index blindly (``"unsigned": []``). Raised out of
        the client's handling of the whole sync, each failed the batch, and failed it again on every retry (the token
        never committed): one message from any member stalled the bot for good. Such an event now waits for a key like
        any other it cannot decrypt (and is dropped after the catch-up window). The log line names the event and the
        reason, never what the payload holds.
        """
        try:
            return super().decrypt_megolm_event(event, room_id)
        except PAYLOAD_PARSE_ERRORS as exc:
            if isinstance(exc, UnicodeDecodeError):
                what = "not UTF-8"
            elif isinstance(exc, RecursionError):
                what = "JSON nested too deeply to parse"
            else:
                what = f"not an event ({type(exc).__name__} while parsing it)"
            log.warning(
                "could not decrypt %s from %s in %s: its payload is %s",
                getattr(event, "event_id", "?"), getattr(event, "sender", "?"), room_id or event.room_id, what,
            )
            raise EncryptionError(f"the payload is {what}") from None

    def decrypt(self, sender: str, sender_key: str, message: Any) -> Any:
        """nio's Olm decryption of a to-device message, where a payload that decrypts but is not a well-formed Olm
        event is dropped (None, as nio drops one that is not JSON) instead of raising out of the sync.

        Anyone who can claim one of the bot's one-time keys can send it an Olm message: no room is needed for this.
        nio raises for JSON nested too deeply (``RecursionError``) and for payloads its checks index blindly
        (``"keys": {}`` is a ``KeyError`` in ``_verify_olm_payload``); the sync batch carrying the message failed
        (the retry then drops it, its message key being used up). nio decodes Olm plaintexts with ``errors="replace"``.
        """
        try:
            return super().decrypt(sender, sender_key, message)
        except PAYLOAD_PARSE_ERRORS as exc:
            log.warning(
                "dropped an Olm message from %s: its payload is not an Olm event (%s while parsing it)",
                sender, type(exc).__name__,
            )
            return None

    def share_keys(self) -> dict[str, Any]:
        content = super().share_keys()
        self.save_account()
        return content

    def create_outbound_group_session(self, room_id: str) -> None:
        super().create_outbound_group_session(room_id)
        self.apply_rotation_period(room_id)

    def set_rotation_period(self, room_id: str, messages: int | None, milliseconds: int | None) -> None:
        """Remember the room's rotation period and tighten its current outbound session to it."""
        if self.rotation_periods.get(room_id) != (messages, milliseconds):
            self.rotation_periods[room_id] = (messages, milliseconds)
            self.apply_rotation_period(room_id)

    def apply_rotation_period(self, room_id: str) -> None:
        """Limit the room's outbound session to the room's rotation period (never loosen nio's defaults)."""
        session = self.outbound_group_sessions.get(room_id)
        msgs, ms = self.rotation_periods.get(room_id, (None, None))
        if session is None:
            return
        if msgs is not None:
            session.max_messages = min(session.max_messages, msgs)
        if ms is not None:
            session.max_age = min(session.max_age, timedelta(milliseconds=ms))

    # -- fallback keys (nio's OlmAccount wraps a vodozemac Account and exposes no fallback key API) --------------

    def unpublished_fallback_keys(self) -> dict[str, str]:
        """Fallback keys generated but not uploaded yet (key id -> public key)."""
        return {key_id: key.to_base64() for key_id, key in self.account._account.fallback_key.items()}

    def generate_fallback_key(self) -> str | None:
        """Generate a fallback key unless one waits for upload, save the account; returns the waiting key's id."""
        account = self.account._account
        if not account.fallback_key:
            account.generate_fallback_key()
            self.save_account()
        return next(iter(account.fallback_key), None)

    # -- who sent a decrypted event ---------------------------------------------------------------------------

    def trace_sender(self, room_id: str, event: Any, *, queried: bool) -> SenderDevice:
        """Trace a decrypted event to the device whose Megolm session encrypted it (see :class:`SenderDevice`).

        The ``sender`` field of a room event is not covered by Megolm: a homeserver (or anyone between it and the
        bot) can rewrite it, and nio decrypts such an event as if it came from the forged sender. ``queried``: the
        sender's keys were just fetched, so a device still unknown is not theirs.
        """
        sender = getattr(event, "sender", None)
        sender_key = getattr(event, "sender_key", None)
        if not isinstance(sender, str) or not isinstance(sender_key, str):
            return SenderDevice(False)
        session_id = getattr(event, "session_id", None)
        session = self.inbound_group_store.get(room_id, sender_key, session_id) if session_id else None
        claimed = session.ed25519 if session is not None else None
        forwarded = bool(session.forwarding_chain) if session is not None else False
        # Only the sender's own devices are looked at: a device anyone publishes with a copy of Alice's curve25519
        # key must not make Alice's messages look forged.
        owner = next((d for d in self.device_store.active_user_devices(sender) if d.curve25519 == sender_key), None)
        if owner is None:
            owned = False if queried and sender not in self.users_for_key_query else None
            return SenderDevice(owned, sender_key, claimed, forwarded)
        if session is not None and session.ed25519 != owner.ed25519:
            return SenderDevice(False, sender_key, claimed, forwarded)  # the session claims another signing key
        return SenderDevice(True, sender_key, claimed, forwarded)
