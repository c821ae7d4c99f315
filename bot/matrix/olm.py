"""The Olm machine Ratchet's client uses: nio's, with the fixes that belong to it (see :class:`RatchetOlm`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from nio.crypto import Olm

__all__ = ["RatchetOlm"]


class RatchetOlm(Olm):
    """nio's Olm machine with two fixes, made per client by :meth:`RatchetClient.load_store`.

    * One-time keys are saved as soon as they are generated, before they are uploaded. nio's ``share_keys()`` saves
      the account only once the server answered; a crash in between left the server with keys whose private halves
      were lost, and the next start generated *different* keys under the same key ids: every upload then failed with
      "One time key ... already exists" and Olm sessions started on the lost keys could never be decrypted. Saved
      first, a retry uploads the very same keys, which the server accepts.
    * Outbound Megolm sessions rotate as each room's ``m.room.encryption`` asks (``rotation_period_msgs``,
      ``rotation_period_ms``); nio gives every session its defaults (100 messages, a week).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Each encrypted room's rotation period from its m.room.encryption state: (messages, milliseconds).
        self.rotation_periods: dict[str, tuple[int | None, int | None]] = {}

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
