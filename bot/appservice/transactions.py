"""Appservice transactions without I/O: parsing, authentication, the record of handled ids, and the sync-shaped body.

The homeserver pushes ``PUT /_matrix/app/v1/transactions/{txnId}`` with ``{"events": [...], ...}`` and repeats the
same ``txnId`` (with backoff) until it gets a 200. Everything that decides what such a request means is here, as plain
functions and classes tested without a network (tests/test_appservice_transactions.py):

* :func:`check_auth`: the ``hs_token`` from ``Authorization: Bearer`` (or the legacy ``access_token`` query
  parameter), compared in constant time: missing -> 401 ``M_UNAUTHORIZED``, wrong -> 403 ``M_FORBIDDEN``;
* :func:`parse_transaction`: malformed JSON -> 400 ``M_NOT_JSON``, JSON of the wrong shape -> 400 ``M_BAD_JSON``;
  the MSC2409/MSC3202 fields are kept as they came for the E2EE work;
* :class:`SeenTransactions`: the ids already handled (bounded, in order), persisted by the source (one row per id in
  ``state.db``) after a transaction's events are handled, so a repeated id is answered 200 without effect, also after
  a restart;
* :func:`sync_body`: the transaction's events as a ``/sync`` response body (joined rooms' timelines and state, the
  bot's invites, rooms the bot left), so nio's parsing and room model and the runtime's routing work unchanged;
* :func:`device_extensions` / :func:`to_device_for`: what the transaction carries for one device (the bridge bot's):
  its to-device messages (MSC2409), its one-time-key counts and unused fallback key types (MSC3202, both spellings
  Synapse sends) and the users whose device lists changed or who left every shared room.
"""

from __future__ import annotations

import hmac
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DeviceExtensions",
    "GhostInvite",
    "SeenTransactions",
    "Transaction",
    "TransactionError",
    "check_auth",
    "device_extensions",
    "devices_mentioned",
    "ghost_invites",
    "own_joins",
    "parse_transaction",
    "rooms_of",
    "sync_body",
    "to_device_for",
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

    def __iter__(self) -> Iterator[str]:
        """The ids, oldest first."""
        return iter(self._ids)

    def add(self, txn_id: str) -> None:
        """Remember ``txn_id`` as handled (the oldest is forgotten beyond the limit)."""
        self._ids[txn_id] = None
        self._ids.move_to_end(txn_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    @classmethod
    def load(cls, text: str | None, limit: int = SEEN_LIMIT) -> SeenTransactions:
        """Read the JSON list of ids earlier versions persisted as one value (None or damaged text: nothing seen
        yet); the source moves them to one row per id once (:meth:`~bot.storage.state.StateStore.import_transactions`).
        """
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
    device: DeviceExtensions | None = None,
) -> dict[str, Any]:
    """A ``/sync`` response body with these events: what nio parses and the runtime routes, as for ``/sync``.

    Each room's events become its timeline (in order); ``state`` (room id -> state events, e.g. fetched when the bot
    joined) its state. An invite of the bot goes to ``rooms.invite`` (with the invite as its invite state) and not
    into a timeline; a room whose last membership change of the bot here is a leave, kick or ban goes to
    ``rooms.leave``. Events without a string ``room_id`` are left out. ``to_device`` (the bot device's messages) and
    ``device`` (its key counts, the device list changes) go where ``/sync`` puts them.
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
    body: dict[str, Any] = {
        "next_batch": next_batch,
        "rooms": {"join": join, "invite": invite, "leave": leave},
        "to_device": {"events": list(to_device or [])},
        "presence": {"events": []},
        "account_data": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }
    if device is not None:
        body["device_lists"] = {"changed": list(device.changed), "left": list(device.left)}
        if device.one_time_key_counts is not None:
            body["device_one_time_keys_count"] = dict(device.one_time_key_counts)
        if device.unused_fallback_key_types is not None:
            body["device_unused_fallback_key_types"] = list(device.unused_fallback_key_types)
    return body


# -- encryption: what a transaction carries for one device (MSC2409, MSC3202) ------------------------------------

#: Where the one-time-key counts are (``{user_id: {device_id: {algorithm: count}}}``): the stable name first, then
#: the two unstable spellings Synapse sends (both, with the same value).
_OTK_COUNT_KEYS = (
    "device_one_time_keys_count",
    "org.matrix.msc3202.device_one_time_keys_count",
    "org.matrix.msc3202.device_one_time_key_counts",
)
#: Unused fallback key types (``{user_id: {device_id: [algorithm, ...]}}``).
_FALLBACK_KEYS = ("device_unused_fallback_key_types", "org.matrix.msc3202.device_unused_fallback_key_types")
#: Device list changes (``{"changed": [user_id...], "left": [user_id...]}``).
_DEVICE_LIST_KEYS = ("device_lists", "org.matrix.msc3202.device_lists")


@dataclass
class DeviceExtensions:
    """What one transaction says about one device's keys and the device lists it tracks.

    ``one_time_key_counts`` (algorithm -> count on the server) and ``unused_fallback_key_types`` are None when the
    transaction does not mention the device (the homeserver only reports the users a transaction concerns):
    nothing is known then, which is not the same as zero.
    """

    one_time_key_counts: dict[str, int] | None = None
    unused_fallback_key_types: list[str] | None = None
    #: Users whose devices changed (their keys are queried again before the next room key goes out).
    changed: list[str] = field(default_factory=list)
    #: Users who no longer share an encrypted room with the appservice's users.
    left: list[str] = field(default_factory=list)


def _first(extensions: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in extensions:
            return extensions[key]
    return None


def _user_ids(value: Any) -> list[str]:
    return [u for u in value if isinstance(u, str)] if isinstance(value, list) else []


def device_extensions(extensions: Mapping[str, Any], user_id: str, device_id: str) -> DeviceExtensions:
    """The MSC3202 fields of a transaction (``Transaction.extensions``) for ``user_id``'s ``device_id``.

    Malformed parts are ignored (a homeserver bug must not stop the bridge); counts that are not non-negative
    integers are left out.
    """
    found = DeviceExtensions()
    counts = _first(extensions, _OTK_COUNT_KEYS)
    mine = counts.get(user_id, {}).get(device_id) if isinstance(counts, dict) and isinstance(
        counts.get(user_id), dict) else None
    if isinstance(mine, dict):
        found.one_time_key_counts = {
            alg: n for alg, n in mine.items()
            if isinstance(alg, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
        }
    fallback = _first(extensions, _FALLBACK_KEYS)
    types = fallback.get(user_id, {}).get(device_id) if isinstance(fallback, dict) and isinstance(
        fallback.get(user_id), dict) else None
    if isinstance(types, list):
        found.unused_fallback_key_types = [t for t in types if isinstance(t, str)]
    lists = _first(extensions, _DEVICE_LIST_KEYS)
    if isinstance(lists, dict):
        found.changed = _user_ids(lists.get("changed"))
        found.left = _user_ids(lists.get("left"))
    return found


def devices_mentioned(extensions: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(user_id, device_id)`` pairs a transaction's MSC3202 key counts or fallback key types mention, in order
    (each once): the appservice's devices whose key state it reports."""
    found: dict[tuple[str, str], None] = {}
    for keys in (_OTK_COUNT_KEYS, _FALLBACK_KEYS):
        value = _first(extensions, keys)
        if not isinstance(value, dict):
            continue
        for user_id, devices in value.items():
            if isinstance(user_id, str) and isinstance(devices, dict):
                for device_id in devices:
                    if isinstance(device_id, str):
                        found.setdefault((user_id, device_id), None)
    return list(found)


def to_device_for(messages: Iterable[Mapping[str, Any]], user_id: str, device_id: str) -> list[dict[str, Any]]:
    """The to-device messages addressed to ``user_id``'s ``device_id`` (MSC2409 adds ``to_user_id`` and
    ``to_device_id`` to each), without those two fields: what ``/sync`` would give that device."""
    found = []
    for message in messages:
        if message.get("to_user_id") == user_id and message.get("to_device_id") == device_id:
            found.append({k: v for k, v in message.items() if k not in ("to_user_id", "to_device_id")})
    return found
