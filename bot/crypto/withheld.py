"""``m.room_key.withheld``: telling a device why it gets no room key (pure).

Spec: client-server API, "Reporting that decryption keys are withheld". The bot sends these notices when its trust
policy excludes a device (:class:`Verdict` with ``share=False``) or when it has no Olm channel to a device
(``m.no_olm``), and reads the notices other senders send it, so a waiting event's log line can say why its key is
missing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CODE_BLACKLISTED",
    "CODE_NO_OLM",
    "CODE_UNAUTHORISED",
    "CODE_UNAVAILABLE",
    "CODE_UNVERIFIED",
    "MEGOLM_ALGORITHM",
    "WITHHELD_EVENT",
    "WITHHELD_EVENT_TYPES",
    "WITHHELD_REASONS",
    "Verdict",
    "Withheld",
    "no_olm_content",
    "parse_withheld",
    "withheld_content",
]

MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"

#: The to-device type of a withheld notice (and the unstable name older clients still send).
WITHHELD_EVENT = "m.room_key.withheld"
WITHHELD_EVENT_TYPES = (WITHHELD_EVENT, "org.matrix.room_key.withheld")

# The spec's withheld codes (client-server API, "Reporting that decryption keys are withheld").
CODE_BLACKLISTED = "m.blacklisted"
CODE_UNVERIFIED = "m.unverified"
CODE_UNAUTHORISED = "m.unauthorised"
CODE_UNAVAILABLE = "m.unavailable"
CODE_NO_OLM = "m.no_olm"

#: Human-readable reasons sent along with each code (clients show their own text for known codes).
WITHHELD_REASONS = {
    CODE_BLACKLISTED: "The sender has blocked this device.",
    CODE_UNVERIFIED: "This device is not trusted by the sender's trust policy (not cross-signed by its owner).",
    CODE_UNAUTHORISED: "This device is not authorised to read this session.",
    CODE_UNAVAILABLE: "The requested key was not found.",
    CODE_NO_OLM: "Unable to establish a secure channel (no one-time key for this device).",
}


@dataclass(frozen=True)
class Verdict:
    """What the policy says about one device.

    Attributes:
        trusted: messages from this device count as trusted (``Context.trusted``).
        share: the device gets the bot's room keys.
        code: the ``m.room_key.withheld`` code to send when ``share`` is False.
        reason: why, in words (for logs; never message content).
    """

    trusted: bool
    share: bool
    code: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Withheld:
    """An ``m.room_key.withheld`` notice the bot received."""

    sender: str
    code: str
    reason: str
    session_id: str | None
    room_id: str | None
    sender_key: str | None
    received_at: float = field(default_factory=time.time, compare=False)


def withheld_content(
    *,
    room_id: str,
    session_id: str,
    sender_key: str,
    code: str,
    reason: str | None = None,
    algorithm: str = MEGOLM_ALGORITHM,
) -> dict[str, Any]:
    """The content of an ``m.room_key.withheld`` to-device message (sent unencrypted)."""
    return {
        "algorithm": algorithm,
        "code": code,
        "reason": reason if reason is not None else WITHHELD_REASONS.get(code, "The key was withheld."),
        "room_id": room_id,
        "session_id": session_id,
        "sender_key": sender_key,
    }


def no_olm_content(*, sender_key: str, reason: str | None = None, algorithm: str = MEGOLM_ALGORITHM) -> dict[str, Any]:
    """An ``m.no_olm`` notice: not tied to one session (sent once per device)."""
    return {
        "algorithm": algorithm,
        "code": CODE_NO_OLM,
        "reason": reason if reason is not None else WITHHELD_REASONS[CODE_NO_OLM],
        "sender_key": sender_key,
    }


def parse_withheld(sender: str, content: Any) -> Withheld | None:
    """A :class:`Withheld` from a notice's content, or None if it is malformed."""
    if not isinstance(content, Mapping):
        return None
    code = content.get("code")
    if not isinstance(code, str) or not code:
        return None

    def text(key: str) -> str | None:
        value = content.get(key)
        return value if isinstance(value, str) and value else None

    return Withheld(
        sender=sender,
        code=code,
        reason=(text("reason") or "")[:300],
        session_id=text("session_id"),
        room_id=text("room_id"),
        sender_key=text("sender_key"),
    )
