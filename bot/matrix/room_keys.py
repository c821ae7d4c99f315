"""Megolm room keys in nio's crypto store, as key backup exports and imports them.

The backup's wire format is :mod:`bot.crypto.megolm_backup` (pure); :mod:`bot.e2ee.key_backup` talks to the
homeserver. This module is the part that knows nio's inbound session objects and store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import vodozemac
from nio.crypto.sessions import InboundGroupSession

from bot.crypto.withheld import MEGOLM_ALGORITHM
from bot.errors import KeyBackupError

if TYPE_CHECKING:
    from bot.matrix.olm import RatchetOlm

__all__ = ["InboundGroupSession", "export_session", "import_session", "sessions_by_room", "store_session"]


def export_session(session: InboundGroupSession) -> dict[str, Any]:
    """The ``BackedUpSessionData`` of one inbound session, at its first known index."""
    return {
        "algorithm": MEGOLM_ALGORITHM,
        "sender_key": session.sender_key,
        "session_key": session.export_session(session.first_known_index),
        "sender_claimed_keys": {"ed25519": session.ed25519},
        "forwarding_curve25519_key_chain": list(session.forwarding_chain or []),
    }


def import_session(
    room_id: str, session_id: str, data: dict[str, Any], *, via: str | None = None
) -> InboundGroupSession:
    """Build a nio inbound session from decrypted ``BackedUpSessionData``; raises :class:`KeyBackupError`.

    ``via``: the curve25519 key of whoever handed the session over (the bot's own, for a key backup). It is added to
    the forwarding chain, so the session does not count as received from its sender's device: anyone can add entries
    to a key backup (its key is public), so who sent what in such a session is not proven.
    """
    if data.get("algorithm", MEGOLM_ALGORITHM) != MEGOLM_ALGORITHM:
        raise KeyBackupError(f"unsupported session algorithm {data.get('algorithm')!r}")
    sender_key = data.get("sender_key")
    session_key = data.get("session_key")
    claimed = data.get("sender_claimed_keys")
    ed25519 = claimed.get("ed25519") if isinstance(claimed, dict) else None
    chain = data.get("forwarding_curve25519_key_chain") or []
    if via is not None and isinstance(chain, list):
        chain = [*chain, via]
    if not isinstance(sender_key, str) or not isinstance(session_key, str) or not isinstance(ed25519, str):
        raise KeyBackupError("backed-up session lacks sender_key, session_key or sender_claimed_keys.ed25519")
    if not isinstance(chain, list) or not all(isinstance(k, str) for k in chain):
        raise KeyBackupError("backed-up session has a malformed forwarding chain")
    try:
        session = InboundGroupSession.import_session(session_key, ed25519, sender_key, room_id, list(chain))
    except (vodozemac.SessionKeyDecodeException, ValueError, TypeError) as exc:
        raise KeyBackupError(f"cannot import session {session_id}: {exc}") from exc
    if session.id != session_id:
        raise KeyBackupError(f"backed-up session {session_id} holds the key of session {session.id}")
    return session


def sessions_by_room(olm: RatchetOlm) -> Iterator[tuple[str, dict[str, dict[str, InboundGroupSession]]]]:
    """Every inbound session in the store, grouped by room, then sender key, then session id."""
    store = olm.inbound_group_store
    entries = getattr(store, "_entries", None)  # nio's GroupSessionStore keeps them grouped already
    if isinstance(entries, dict):
        yield from list(entries.items())
        return
    grouped: dict[str, dict[str, dict[str, InboundGroupSession]]] = {}
    for session in store:  # fallback: a full scan
        grouped.setdefault(session.room_id, {}).setdefault(session.sender_key, {})[session.id] = session
    yield from grouped.items()


def store_session(olm: RatchetOlm, room_id: str, session: InboundGroupSession) -> bool:
    """Keep ``session`` unless the store holds the same session from an earlier index; True if it was stored."""
    existing = olm.inbound_group_store.get(room_id, session.sender_key, session.id)
    if existing is not None and existing.first_known_index <= session.first_known_index:
        return False
    if existing is not None:
        store = olm.inbound_group_store
        discard = getattr(store, "discard", None)  # the lazy store: without reading the room's other sessions
        if discard is not None:
            discard(room_id, session.sender_key, session.id)
        else:
            store[room_id][session.sender_key].pop(session.id, None)
    olm.inbound_group_store.add(session)
    olm.save_inbound_group_session(session)
    return True
