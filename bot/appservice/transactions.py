"""Appservice transactions without I/O: parsing, authentication, the record of handled ids, and the sync-shaped body.

The homeserver pushes ``PUT /_matrix/app/v1/transactions/{txnId}`` with ``{"events": [...], ...}`` and repeats the
same ``txnId`` (with backoff) until it gets a 200. Everything that decides what such a request means is here, as plain
functions and classes tested without a network (tests/test_appservice_transactions.py):

* :func:`check_auth`: the ``hs_token`` from ``Authorization: Bearer`` (or the legacy ``access_token`` query
  parameter), compared in constant time: missing -> 401 ``M_UNAUTHORIZED``, wrong -> 403 ``M_FORBIDDEN``;
* :func:`parse_transaction`: malformed JSON -> 400 ``M_NOT_JSON``, JSON of the wrong shape -> 400 ``M_BAD_JSON``;
  the MSC2409/MSC3202 fields are kept as they came for the E2EE work;
* :class:`SeenTransactions`: the ids already handled (bounded, in order), persisted by the source after a
  transaction's events are handled, so a repeated id is answered 200 without effect, also after a restart;
* :func:`sync_body`: the transaction's events as a ``/sync`` response body (joined rooms' timelines and state, the
  bot's invites, rooms the bot left), so nio's parsing and room model and the runtime's routing work unchanged.
"""

from __future__ import annotations

import hmac
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GhostInvite",
    "SeenTransactions",
    "Transaction",
    "TransactionError",
    "check_auth",
    "ghost_invites",
    "own_joins",
    "parse_transaction",
    "rooms_of",
    "sync_body",
]

#: Transaction ids remembered as handled (the homeserver sends them in order, one at a time, so only the latest few
#: can come again; this many survive any realistic reordering).
SEEN_LIMIT = 512


class TransactionError(Exception):
    """A request the appservice refuses: the HTTP ``status``, the Matrix ``errcode`` and a message for both sides."""

    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"errcode": self.errcode, "error": self.message}


def check_auth(authorization: str | None, query_token: str | None, hs_token: str) -> None:
    """Check the homeserver's token; raises :class:`TransactionError` (401 missing, 403 wrong).

    ``authorization`` is the ``Authorization`` header, ``query_token`` the legacy ``access_token`` query parameter
    (Synapse sends it only with ``use_appservice_legacy_authorization``). The comparison takes the same time wherever
    the tokens differ.
    """
    presented: str | None = None
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            presented = value.strip()
    if presented is None and query_token:
        presented = query_token
    if presented is None:
        raise TransactionError(401, "M_UNAUTHORIZED", "missing the homeserver token (Authorization: Bearer)")
    if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), hs_token.encode("utf-8")):
        raise TransactionError(403, "M_FORBIDDEN", "wrong homeserver token")


@dataclass
class Transaction:
    """One pushed transaction: its id, its room events (PDUs), ephemeral events and to-device messages, and the
    extension fields (MSC3202 device lists and key counts) as they came."""

    txn_id: str
    events: list[dict[str, Any]]
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    to_device: list[dict[str, Any]] = field(default_factory=list)
    extensions: dict[str, Any] = field(default_factory=dict)


_EPHEMERAL_KEYS = ("ephemeral", "de.sorunome.msc2409.ephemeral")
_TO_DEVICE_KEYS = ("to_device", "de.sorunome.msc2409.to_device")


def parse_transaction(txn_id: str, body: bytes) -> Transaction:
    """Parse a transaction's body; raises :class:`TransactionError` (400) for anything malformed.

    A body that is not JSON is ``M_NOT_JSON``; JSON that is not an object, or whose ``events`` (required), ephemeral
    or to-device lists are not lists of objects, is ``M_BAD_JSON``.
    """
    if not txn_id or len(txn_id) > 255:
        raise TransactionError(400, "M_INVALID_PARAM", "the transaction id must be 1 to 255 characters")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TransactionError(400, "M_NOT_JSON", f"the body is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise TransactionError(400, "M_BAD_JSON", "the body must be a JSON object")
    events = _objects(data, ("events",), required=True)
    ephemeral = _objects(data, _EPHEMERAL_KEYS)
    to_device = _objects(data, _TO_DEVICE_KEYS)
    known = {"events", *_EPHEMERAL_KEYS, *_TO_DEVICE_KEYS}
    extensions = {key: value for key, value in data.items() if key not in known}
    return Transaction(txn_id, events, ephemeral, to_device, extensions)


def _objects(data: Mapping[str, Any], keys: Iterable[str], *, required: bool = False) -> list[dict[str, Any]]:
    """The list of objects under the first of ``keys`` present (the stable name first, then the unstable one)."""
    for key in keys:
        if key in data:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise TransactionError(400, "M_BAD_JSON", f"'{key}' must be a list of objects")
            return value
    if required:
        raise TransactionError(400, "M_BAD_JSON", "missing 'events'")
    return []


class SeenTransactions:
    """The ids of the latest handled transactions, in the order they were handled (at most ``limit``)."""

    def __init__(self, ids: Iterable[str] = (), limit: int = SEEN_LIMIT) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        for txn_id in ids:
            self.add(txn_id)

    def __contains__(self, txn_id: object) -> bool:
        return txn_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, txn_id: str) -> None:
        """Remember ``txn_id`` as handled (the oldest is forgotten beyond the limit)."""
        self._ids[txn_id] = None
        self._ids.move_to_end(txn_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def dump(self) -> str:
        """The ids as JSON, to persist."""
        return json.dumps(list(self._ids))

    @classmethod
    def load(cls, text: str | None, limit: int = SEEN_LIMIT) -> SeenTransactions:
        """Read what :meth:`dump` wrote (None or damaged text: nothing seen yet)."""
        try:
            ids = json.loads(text) if text else []
        except ValueError:
            ids = []
        if not isinstance(ids, list):
            ids = []
        return cls((i for i in ids if isinstance(i, str)), limit)


# -- the events as a /sync body ----------------------------------------------------------------------------------


def _membership(event: Mapping[str, Any]) -> str | None:
    if event.get("type") != "m.room.member" or not isinstance(event.get("state_key"), str):
        return None
    content = event.get("content")
    value = content.get("membership") if isinstance(content, dict) else None
    return value if isinstance(value, str) else None


def rooms_of(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The rooms the events are in, in order of first appearance (events without a room id are left out)."""
    seen: dict[str, None] = {}
    for event in events:
        room_id = event.get("room_id")
        if isinstance(room_id, str) and room_id:
            seen.setdefault(room_id, None)
    return list(seen)


def own_joins(events: Iterable[Mapping[str, Any]], own_user_id: str) -> set[str]:
    """Rooms the bot joined in these events (their state is fetched: nothing before the join was pushed)."""
    return {
        event["room_id"]
        for event in events
        if _membership(event) == "join"
        and event.get("state_key") == own_user_id
        and isinstance(event.get("room_id"), str)
    }


@dataclass(frozen=True)
class GhostInvite:
    """A ghost invited to a room, by whom."""

    room_id: str
    user_id: str
    inviter: str


def ghost_invites(events: Iterable[Mapping[str, Any]], is_ghost: Callable[[str], bool]) -> list[GhostInvite]:
    """The invites of ghosts among the events, in order."""
    found = []
    for event in events:
        target, room_id, sender = event.get("state_key"), event.get("room_id"), event.get("sender")
        if (
            _membership(event) == "invite"
            and isinstance(target, str)
            and isinstance(room_id, str)
            and isinstance(sender, str)
            and is_ghost(target)
        ):
            found.append(GhostInvite(room_id, target, sender))
    return found


def sync_body(
    events: Iterable[Mapping[str, Any]],
    *,
    own_user_id: str,
    next_batch: str,
    state: Mapping[str, list[dict[str, Any]]] | None = None,
    to_device: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``/sync`` response body with these events: what nio parses and the runtime routes, as for ``/sync``.

    Each room's events become its timeline (in order); ``state`` (room id -> state events, e.g. fetched when the bot
    joined) its state. An invite of the bot goes to ``rooms.invite`` (with the invite as its invite state) and not
    into a timeline; a room whose last membership change of the bot here is a leave, kick or ban goes to
    ``rooms.leave``. Events without a string ``room_id`` are left out.
    """
    state = state or {}
    timelines: dict[str, list[dict[str, Any]]] = {}
    invites: dict[str, list[dict[str, Any]]] = {}
    last_own: dict[str, str] = {}
    for event in events:
        room_id = event.get("room_id")
        if not isinstance(room_id, str) or not room_id:
            continue
        membership = _membership(event)
        if membership is not None and event.get("state_key") == own_user_id:
            last_own[room_id] = membership
            if membership == "invite":
                invites.setdefault(room_id, []).append(dict(event))
                continue
        timelines.setdefault(room_id, []).append(dict(event))
    join: dict[str, Any] = {}
    leave: dict[str, Any] = {}
    for room_id in dict.fromkeys([*timelines, *state]):
        room = {
            "timeline": {"events": timelines.get(room_id, []), "limited": False, "prev_batch": next_batch},
            "state": {"events": list(state.get(room_id, []))},
        }
        if last_own.get(room_id) == "invite":
            continue  # invited, not joined: nothing of the room is the bot's yet
        if last_own.get(room_id) in ("leave", "ban"):
            leave[room_id] = room
        else:
            join[room_id] = {**room, "ephemeral": {"events": []}, "account_data": {"events": []}}
    invite = {
        room_id: {"invite_state": {"events": found}}
        for room_id, found in invites.items()
        if last_own.get(room_id) == "invite"
    }
    return {
        "next_batch": next_batch,
        "rooms": {"join": join, "invite": invite, "leave": leave},
        "to_device": {"events": list(to_device or [])},
        "presence": {"events": []},
        "account_data": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }
