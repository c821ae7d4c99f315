"""Verifiable evidence bundles for abuse reports.

A bot that is a member of an encrypted room can attest what a message said: it holds the Megolm key, it knows which
device shared that key with it, and it has its own (cross-signed) device key to sign with. An evidence bundle is
canonical JSON holding the event exactly as the homeserver returned it (ciphertext included), the decrypted content,
the sending device and its keys, the Megolm session id, and when it was collected; the bot signs it with its device's
ed25519 key (the same signing scheme as Matrix device keys).

Anyone can then check (:func:`verify_bundle`) that the bundle is intact and its parts are consistent, and, given
the bot's device key from *outside* the bundle (the homeserver's device list of the bot's account, or by hand), that
the bot signed it: the key and names inside a bundle are the forger's to choose, so on their own they prove nothing
about who signed. ``ratchet verify-report`` also checks, online, that the event still is what the server holds and
that the bot's device is cross-signed. The Megolm key itself is never included: it would also decrypt the sender's
later messages in the same session.

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
    """What :func:`verify_bundle` found.

    ``consistent``: the bundle is intact (its signature matches a key) and its parts agree. ``signer_verified``: the
    key that signed it is the one the verifier trusts (given from outside the bundle) and the names match. ``ok``
    needs both: a bundle that is only consistent proves nothing about who made it, since anyone can sign a bundle
    with a fresh key and name the bot's device in it.
    """

    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    #: True when the signature verified under a key given from outside the bundle (``trusted_device_key``).
    signer_verified: bool = False
    #: Why the signer is not verified (empty when it is, or when the signature failed outright).
    unverified: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when the signature matches a key and the parts agree (it says nothing about who signed)."""
        return not self.problems

    @property
    def ok(self) -> bool:
        """True when every check passed and the signer is the trusted key."""
        return not self.problems and self.signer_verified


def _check_event(summary: Any, room_id: Any, what: str, result: VerifyResult) -> None:
    """One ``{"event", "decrypted"}`` summary: it belongs to the bundle's room, and its parts agree."""
    if not isinstance(summary, dict) or not isinstance(summary.get("event"), dict):
        result.problems.append(f"{what}: not an event summary")
        return
    event, decrypted = summary["event"], summary.get("decrypted")
    if event.get("room_id") not in (None, room_id):
        result.problems.append(f"{what}: the event belongs to another room")
    encrypted = event.get("type") == "m.room.encrypted"
    if encrypted and (not isinstance(decrypted, dict) or decrypted.get("room_id") not in (None, room_id)):
        result.problems.append(f"{what}: the decrypted payload is missing or belongs to another room")
    if not encrypted and decrypted is not None:
        result.problems.append(f"{what}: an unencrypted event with a decrypted payload")


def verify_bundle(
    bundle: Any,
    *,
    trusted_device_key: str | None = None,
    expected_user_id: str | None = None,
    expected_device_id: str | None = None,
) -> VerifyResult:
    """Offline checks: the format, the signature of the attesting device, and the consistency of the parts.

    ``trusted_device_key`` is the bot device's ed25519 key (unpadded base64) as the verifier knows it from outside
    the bundle (the homeserver's device list of the bot's account, or given by hand); the signature must verify
    under that key. ``expected_user_id`` and ``expected_device_id`` are the bot's user and device: the bundle must
    be attested in their name. Without ``trusted_device_key`` the key named inside the bundle is used: that proves
    the bundle was not altered since someone signed it, but not *who* signed it, so ``signer_verified`` stays False.
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
    who = bundle.get("attested_by")
    if not isinstance(who, dict) or not all(isinstance(who.get(k), str) for k in ("user_id", "device_id", "ed25519")):
        result.problems.append("the bundle does not say who attested it (attested_by)")
        return result
    user_id, device_id, named_key = who["user_id"], who["device_id"], who["ed25519"]
    key_id = f"ed25519:{device_id}"
    names_ok = True
    if expected_user_id is not None and user_id != expected_user_id:
        names_ok = False
        result.problems.append(f"signed in the name of {user_id}, not of the bot {expected_user_id}")
    if expected_device_id is not None and device_id != expected_device_id:
        names_ok = False
        result.problems.append(
            f"signed in the name of device {device_id}, not of the bot's device {expected_device_id}"
        )
    if trusted_device_key is not None:
        if named_key != trusted_device_key:
            result.problems.append(
                f"the bundle names the signing key {named_key}, not the trusted key {trusted_device_key}"
            )
        if verify_json(bundle, user_id, key_id, trusted_device_key):
            result.checks.append(f"signed by the trusted key {trusted_device_key} ({user_id} device {device_id})")
            result.signer_verified = names_ok and named_key == trusted_device_key
        else:
            result.problems.append(
                f"the signature does not verify with the trusted key {trusted_device_key}: the bundle was altered "
                "or signed by another key"
            )
    elif verify_json(bundle, user_id, key_id, named_key):
        result.checks.append(f"the signature matches the key the bundle itself names ({named_key})")
        result.unverified.append(
            f"the signer is NOT verified: the bundle only claims to come from {user_id} device {device_id}; "
            "anyone can sign a bundle with a fresh key and name any device (check it with the bot's key: "
            "--key ED25519, or -c CONFIG)"
        )
    else:
        result.problems.append("the signature does not verify: the bundle was altered or signed by another key")
    room_id = bundle.get("room_id")
    reported = bundle.get("reported") or {}
    event = reported.get("event") if isinstance(reported, dict) else None
    event = event if isinstance(event, dict) else {}
    decrypted = reported.get("decrypted") if isinstance(reported, dict) else None
    if event.get("event_id") != bundle.get("event_id") or event.get("sender") != bundle.get("sender"):
        result.problems.append("the summary does not match the event")
    if bundle.get("encrypted") != (event.get("type") == "m.room.encrypted"):
        result.problems.append("the 'encrypted' field does not match the event")
    _check_event(reported, room_id, "the reported event", result)
    context = bundle.get("context")
    if not isinstance(context, list):
        result.problems.append("the context is not a list")
    else:
        for i, summary in enumerate(context):
            _check_event(summary, room_id, f"context message {i + 1}", result)
    if bundle.get("encrypted"):
        content = event.get("content") or {}
        if content.get("session_id") != bundle.get("megolm_session_id"):
            result.problems.append("the Megolm session id does not match the ciphertext")
        if not isinstance(decrypted, dict) or decrypted.get("room_id") not in (None, room_id):
            result.problems.append("the decrypted payload belongs to another room")
        device = bundle.get("sender_device") or {}
        if content.get("device_id") and device.get("device_id") not in (None, content.get("device_id")):
            result.problems.append("the sender device does not match the ciphertext's device")
        else:
            result.checks.append("ciphertext, session and device are consistent")
    return result
