"""Verifiable evidence bundles for abuse reports.

A bot that is a member of an encrypted room can attest what a message said: it holds the Megolm key, it knows which
device shared that key with it, and it has its own (cross-signed) device key to sign with. An evidence bundle is
canonical JSON holding the event exactly as the homeserver returned it (ciphertext included), the decrypted content,
the sending device and its keys, the Megolm session id, and when it was collected; the bot signs it with its device's
ed25519 key (the same signing scheme as Matrix device keys).

Anyone can then check, offline, that the bundle was signed by that device and that its parts are consistent
(:func:`verify_bundle`), and, online, that the event still is what the server holds and the signing device belongs to
the bot and is cross-signed (``ratchet verify-report``). The Megolm key itself is never included: it would also
decrypt the sender's later messages in the same session.

Pure code: no I/O here.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.crypto.canonical import canonical_json, sign_json, verify_json
from bot.errors import EvidenceError

__all__ = ["EVIDENCE_FORMAT", "EvidenceError", "VerifyResult", "build_bundle", "sign_bundle", "verify_bundle"]

#: The ``format`` field of every bundle; bumped if the layout ever changes.
EVIDENCE_FORMAT = "ratchet.evidence.v1"


def _event_summary(raw: dict[str, Any], decrypted: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("event_id"), str):
        raise EvidenceError("the event must be the server's JSON with an event_id")
    return {"event": copy.deepcopy(raw), "decrypted": copy.deepcopy(decrypted) if decrypted is not None else None}


def build_bundle(
    *,
    room_id: str,
    event: dict[str, Any],
    decrypted: dict[str, Any] | None,
    sender_device: dict[str, Any] | None,
    bot_user_id: str,
    bot_device_id: str,
    bot_device_ed25519: str,
    context: list[tuple[dict[str, Any], dict[str, Any] | None]] = (),
    collected_at_ms: int | None = None,
) -> dict[str, Any]:
    """Assemble an unsigned bundle.

    ``event`` is the event as the server returned it (for an encrypted event, ``m.room.encrypted`` with its
    ciphertext); ``decrypted`` the decrypted payload (``{"type", "content", "room_id"}``) or None for an unencrypted
    event; ``sender_device`` ``{"device_id", "keys": {...}, "cross_signed": bool | None}`` as the bot knows it.
    ``context`` holds (event, decrypted) pairs of earlier messages, only when the reporter chose to include them.
    """
    content = event.get("content") if isinstance(event.get("content"), dict) else {}
    encrypted = event.get("type") == "m.room.encrypted"
    if encrypted and decrypted is None:
        raise EvidenceError("an encrypted event needs its decrypted payload")
    return {
        "format": EVIDENCE_FORMAT,
        "room_id": room_id,
        "event_id": event["event_id"],
        "sender": event.get("sender"),
        "origin_server_ts": event.get("origin_server_ts"),
        "encrypted": encrypted,
        "megolm_session_id": content.get("session_id") if encrypted else None,
        "sender_device": copy.deepcopy(sender_device),
        "reported": _event_summary(event, decrypted),
        "context": [_event_summary(ev, dec) for ev, dec in context],
        "collected_at": collected_at_ms if collected_at_ms is not None else int(time.time() * 1000),
        "attested_by": {"user_id": bot_user_id, "device_id": bot_device_id, "ed25519": bot_device_ed25519},
    }


def sign_bundle(bundle: dict[str, Any], sign: Callable[[bytes], str]) -> dict[str, Any]:
    """Sign ``bundle`` with the bot's device key (``sign`` takes canonical JSON bytes, returns base64)."""
    who = bundle["attested_by"]
    return sign_json(bundle, who["user_id"], f"ed25519:{who['device_id']}", sign)


@dataclass
class VerifyResult:
    """What :func:`verify_bundle` found: ``ok`` only if there are no problems."""

    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems


def verify_bundle(bundle: Any, *, trusted_device_key: str | None = None) -> VerifyResult:
    """Offline checks: the format, the signature of the attesting device, and the consistency of the parts.

    ``trusted_device_key`` is the bot device's ed25519 key as the verifier knows it from elsewhere (the server's
    device list); without it the key inside the bundle is used, which proves integrity but not who signed.
    """
    result = VerifyResult()
    if not isinstance(bundle, dict) or bundle.get("format") != EVIDENCE_FORMAT:
        result.problems.append(f"not a {EVIDENCE_FORMAT} bundle")
        return result
    try:
        canonical_json({k: v for k, v in bundle.items() if k != "signatures"})
    except (TypeError, ValueError) as exc:
        result.problems.append(f"not canonical JSON: {exc}")
        return result
    who = bundle.get("attested_by") or {}
    key = trusted_device_key or who.get("ed25519")
    if trusted_device_key and who.get("ed25519") != trusted_device_key:
        result.problems.append("the bundle names a different device key than the trusted one")
    if not isinstance(key, str) or not verify_json(
        bundle, str(who.get("user_id")), f"ed25519:{who.get('device_id')}", key
    ):
        result.problems.append("the signature does not verify: the bundle was altered or signed by another key")
    else:
        result.checks.append(f"signed by {who.get('user_id')} device {who.get('device_id')}")
    reported = bundle.get("reported") or {}
    event = reported.get("event") or {}
    decrypted = reported.get("decrypted")
    if event.get("event_id") != bundle.get("event_id") or event.get("sender") != bundle.get("sender"):
        result.problems.append("the summary does not match the event")
    if bundle.get("encrypted"):
        content = event.get("content") or {}
        if content.get("session_id") != bundle.get("megolm_session_id"):
            result.problems.append("the Megolm session id does not match the ciphertext")
        if not isinstance(decrypted, dict) or decrypted.get("room_id") not in (None, bundle.get("room_id")):
            result.problems.append("the decrypted payload belongs to another room")
        device = bundle.get("sender_device") or {}
        if content.get("device_id") and device.get("device_id") not in (None, content.get("device_id")):
            result.problems.append("the sender device does not match the ciphertext's device")
        else:
            result.checks.append("ciphertext, session and device are consistent")
    return result
