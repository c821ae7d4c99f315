"""Moderation actions and evidence, for plugins such as ``report``: the raw and decrypted form of an event, who sent
it from which device, a signed evidence bundle, reports to the homeserver, and kick/ban with permission checks.

Available to plugins as ``self.bot.moderation``. The pure evidence format lives in :mod:`bot.reports.evidence`; this is
the thin async shell that gathers the facts from the homeserver and the crypto store.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import MatrixError, MatrixRequestError
from bot.matrix.requests import api_path, request_json
from bot.reports.evidence import build_bundle, sign_bundle

if TYPE_CHECKING:
    from bot.e2ee.trust import TrustPolicy
    from bot.matrix.actions import MatrixActions
    from bot.matrix.client import RatchetClient

__all__ = ["EventRecord", "Moderation", "member_could_see"]

log = logging.getLogger(__name__)

#: The ``m.room.history_visibility`` values the spec defines; a room without that state counts as ``shared``.
HISTORY_VISIBILITIES = ("world_readable", "shared", "invited", "joined")

#: Only the state that decides who could see an event (``/context`` returns no other state with this filter).
_VISIBILITY_FILTER = json.dumps(
    {"types": ["m.room.member", "m.room.history_visibility"], "lazy_load_members": False}, separators=(",", ":")
)


def member_could_see(*, membership: str | None, visibility: str | None, encrypted: bool) -> bool:
    """Could a user who is a member of the room *now* have seen an event, given their ``membership`` and the room's
    history ``visibility`` at that event (the state at the event, not today's)?

    The spec's rule (Client-Server API, "History visibility", server behaviour), for a current member:
    ``world_readable``: yes; ``membership`` was ``join``: yes; ``shared``: yes (they joined at some point after the
    event); ``invite`` with ``invited``: yes; otherwise no. An unknown visibility counts as ``joined`` (the strictest),
    a missing one as ``shared`` (the spec's default).

    An **encrypted** event is stricter: its sender's devices shared the room key only with the members of the moment,
    so whoever was not joined (or invited, where the visibility lets invitees read) when it was sent could not
    decrypt it, whatever the visibility says about the ciphertext.
    """
    if visibility is None:
        visibility = "shared"
    elif visibility not in HISTORY_VISIBILITIES:
        visibility = "joined"
    if encrypted:
        return membership == "join" or (membership == "invite" and visibility != "joined")
    if visibility == "world_readable" or membership == "join" or visibility == "shared":
        return True
    return membership == "invite" and visibility == "invited"


@dataclass(frozen=True)
class EventRecord:
    """One event as the bot can attest it."""

    room_id: str
    event_id: str
    sender: str
    timestamp: int
    #: The event exactly as the homeserver returned it (ciphertext for an encrypted event).
    raw: dict[str, Any]
    #: The decrypted payload ``{"type", "content", "room_id"}``, or None for an unencrypted event.
    decrypted: dict[str, Any] | None
    #: ``{"device_id", "keys": {"ed25519", "curve25519"}, "cross_signed": bool | None}`` of the sending device
    #: (encrypted events only; ``cross_signed`` is None when the bot cannot tell).
    sender_device: dict[str, Any] | None

    @property
    def encrypted(self) -> bool:
        """True if the event was sent encrypted."""
        return self.raw.get("type") == "m.room.encrypted"

    @property
    def content(self) -> dict[str, Any]:
        """The (decrypted) content."""
        source = self.decrypted if self.decrypted is not None else self.raw
        content = source.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def event_type(self) -> str:
        """The (decrypted) event type."""
        source = self.decrypted if self.decrypted is not None else self.raw
        return str(source.get("type", ""))

    @property
    def body(self) -> str:
        """The message text ('' if the event has none)."""
        body = self.content.get("body")
        return body if isinstance(body, str) else ""


class Moderation:
    """Gathering evidence and acting on it."""

    def __init__(self, client: RatchetClient, actions: MatrixActions, trust: TrustPolicy | None = None) -> None:
        self._client = client
        self._actions = actions
        self._trust = trust

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One homeserver request through the shared JSON helper (retries 429/5xx); errors become MatrixError."""
        try:
            return await request_json(self._client, method, path, body)
        except MatrixRequestError as exc:
            raise MatrixError(f"{method} {exc.path} failed: {exc.body.get('error', exc.status)}", exc.errcode) from exc

    def _record(self, room_id: str, raw: dict[str, Any]) -> EventRecord:
        decrypted = None
        device = None
        clear = self._actions.decrypt_raw_event(room_id, raw)
        if clear is not None:
            decrypted = {"type": clear.event_type, "content": clear.content, "room_id": room_id}
            trust = self._trust
            cross_signed = trust.device_cross_signed(clear.sender, clear.device_id) if trust is not None else None
            device = {"device_id": clear.device_id, "keys": clear.device_keys, "cross_signed": cross_signed}
        return EventRecord(
            room_id=room_id,
            event_id=str(raw.get("event_id")),
            sender=str(raw.get("sender")),
            timestamp=int(raw.get("origin_server_ts") or 0),
            raw=raw,
            decrypted=decrypted,
            sender_device=device,
        )

    async def event_record(self, room_id: str, event_id: str) -> EventRecord:
        """Fetch ``event_id`` from the server and decrypt it; raises MatrixError if it is gone or undecryptable."""
        q = urllib.parse.quote
        raw = await self._request("GET", f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/event/{q(event_id, safe='')}")
        return self._record(room_id, raw)

    async def records_before(
        self, room_id: str, event_id: str, limit: int, *, seen_by: str | None = None
    ) -> list[EventRecord]:
        """Up to ``limit`` message events before ``event_id``, oldest first (undecryptable ones are skipped).

        With ``seen_by`` (a user id), only the run of messages just before ``event_id`` that this user could see
        (:meth:`could_see`): the first earlier message they could not see ends it, and it is never decrypted.
        """
        if limit <= 0:
            return []
        q = urllib.parse.quote
        body = await self._request(
            "GET",
            f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/context/{q(event_id, safe='')}?limit={limit * 2 + 2}"
        )
        records = []
        for raw in body.get("events_before", []):
            if raw.get("type") not in ("m.room.message", "m.room.encrypted") or "state_key" in raw:
                continue
            if seen_by is not None:
                try:
                    visible = await self.could_see(room_id, str(raw.get("event_id")), seen_by)
                except MatrixError:
                    visible = False
                if not visible:
                    break
            try:
                records.append(self._record(room_id, raw))
            except MatrixError:
                continue
            if len(records) == limit:
                break
        return list(reversed(records))

    async def could_see(self, room_id: str, event_id: str, user_id: str) -> bool:
        """Whether ``user_id`` could have seen ``event_id`` (see :func:`member_could_see`), from the room state *at
        that event* as the homeserver resolves it (``/context`` with no surrounding events: the state at the event).

        Nothing is decrypted here. ``user_id`` must also be a member now (:meth:`is_member`), which is not checked
        here. Raises MatrixError if the event cannot be fetched.
        """
        q = urllib.parse.quote
        path = (
            f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/context/{q(event_id, safe='')}"
            f"?limit=0&filter={q(_VISIBILITY_FILTER, safe='')}"
        )
        body = await self._request("GET", path)
        event = body.get("event") if isinstance(body.get("event"), dict) else {}
        membership: str | None = None
        visibility: str | None = None
        for state in body.get("state") or ():
            if not isinstance(state, dict) or not isinstance(state.get("content"), dict):
                continue
            if state.get("type") == "m.room.member" and state.get("state_key") == user_id:
                value = state["content"].get("membership")
                membership = value if isinstance(value, str) else None
            elif state.get("type") == "m.room.history_visibility" and state.get("state_key") == "":
                value = state["content"].get("history_visibility")
                visibility = value if isinstance(value, str) else None
        if event.get("room_id") not in (None, room_id):
            log.debug("%s is not an event of %s", event_id, room_id)
            return False
        encrypted = event.get("type") == "m.room.encrypted"
        seen = member_could_see(membership=membership, visibility=visibility, encrypted=encrypted)
        if not seen:
            log.debug(
                "%s could not see %s in %s (membership %s, history visibility %s, encrypted %s)",
                user_id, event_id, room_id, membership, visibility, encrypted,
            )
        return seen

    def attest(self, reported: EventRecord, context: list[EventRecord] = ()) -> dict[str, Any]:
        """A signed evidence bundle (see :mod:`bot.reports.evidence`) for ``reported`` and the chosen ``context``."""
        olm = self._client.olm
        assert olm is not None, "evidence needs the bot's device keys"
        bundle = build_bundle(
            room_id=reported.room_id,
            event=reported.raw,
            decrypted=reported.decrypted,
            sender_device=reported.sender_device,
            bot_user_id=self._client.user_id,
            bot_device_id=self._client.device_id,
            bot_device_ed25519=olm.account.identity_keys["ed25519"],
            context=[(r.raw, r.decrypted) for r in context],
        )
        return sign_bundle(bundle, lambda data: olm.account.sign(data.decode()))

    async def report_to_homeserver(self, room_id: str, event_id: str, reason: str | None) -> None:
        """``POST /rooms/{roomId}/report/{eventId}``: the homeserver's admins see it (the bot must be joined)."""
        q = urllib.parse.quote
        path = f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/report/{q(event_id, safe='')}"
        await self._request("POST", path, {"reason": reason} if reason else {})

    def is_member(self, room_id: str, user_id: str) -> bool:
        """True if ``user_id`` is joined to ``room_id`` as the bot sees it."""
        room = self._client.rooms.get(room_id)
        return bool(room and user_id in room.users and user_id not in room.invited_users)

    def required_level(self, room_id: str, action: str) -> int:
        """The power level ``action`` (``redact``, ``kick`` or ``ban``) needs in ``room_id``."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return 100
        return int(getattr(room.power_levels.defaults, action, 50))

    def can(self, room_id: str, action: str) -> bool:
        """True if the bot's power level allows ``action`` (``redact``, ``kick``, ``ban``) in ``room_id``."""
        return self._actions.power_level(room_id, self._client.user_id) >= self.required_level(room_id, action)

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Kick ``user_id`` from ``room_id``."""
        await self._actions.kick(room_id, user_id, reason)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Ban ``user_id`` from ``room_id``."""
        await self._actions.ban(room_id, user_id, reason)

    async def unban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Lift ``user_id``'s ban in ``room_id`` (they become ``leave``: they may join again)."""
        await self._request("POST", api_path("rooms", room_id, "unban"), {"user_id": user_id, **_reason(reason)})

    # -- room state (policy lists, power levels, join rules, server ACLs) ------------------------------------------

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        """The room's whole current state as the homeserver holds it (the bot must be able to read the room)."""
        state = await self._request("GET", api_path("rooms", room_id, "state"))
        return [e for e in state if isinstance(e, dict)] if isinstance(state, list) else []

    async def state_event(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """The content of one state event, or None if the room has none."""
        try:
            content = await self._request("GET", api_path("rooms", room_id, "state", event_type, state_key))
        except MatrixError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return content if isinstance(content, dict) else None

    async def put_state(self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]) -> str:
        """Send a state event (always in the clear: state is never encrypted); returns its event id."""
        body = await self._request("PUT", api_path("rooms", room_id, "state", event_type, state_key), content)
        return str(body.get("event_id", "")) if isinstance(body, dict) else ""

    def state_level(self, room_id: str, event_type: str) -> int:
        """The power level sending state ``event_type`` needs in ``room_id``."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return 100
        levels = room.power_levels
        events = getattr(levels, "events", {}) or {}
        if event_type in events:
            return int(events[event_type])
        return int(getattr(levels.defaults, "state_default", 50))

    def can_send_state(self, room_id: str, event_type: str) -> bool:
        """True if the bot's power level allows sending state ``event_type`` in ``room_id``."""
        return self._actions.power_level(room_id, self._client.user_id) >= self.state_level(room_id, event_type)

    async def set_power_level(self, room_id: str, user_id: str, level: int | None) -> int | None:
        """Set ``user_id``'s power level in ``room_id`` (None: remove the entry, back to ``users_default``), read from
        and written to the homeserver's current ``m.room.power_levels``; returns the user's previous entry (None if
        there was none). Raises MatrixError if the homeserver refuses (the bot lacks the power)."""
        content = await self.state_event(room_id, "m.room.power_levels", "") or {}
        users = dict(content.get("users") or {}) if isinstance(content.get("users"), dict) else {}
        previous = users.get(user_id)
        if level is None:
            users.pop(user_id, None)
        else:
            users[user_id] = int(level)
        await self.put_state(room_id, "m.room.power_levels", "", {**content, "users": users})
        return previous if isinstance(previous, int) else None

    def mute_level(self, room_id: str) -> int:
        """A power level that cannot send messages in ``room_id`` (one below what ``m.room.message`` and
        ``m.room.encrypted`` need), for muting through power levels."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return -1
        levels = room.power_levels
        events = getattr(levels, "events", {}) or {}
        default = int(getattr(levels.defaults, "events_default", 0))
        needed = [int(events.get(t, default)) for t in ("m.room.message", "m.room.encrypted")]
        return min(needed) - 1

    def room_mention_level(self, room_id: str) -> int:
        """The power level ``@room`` needs in ``room_id`` (``notifications.room``, 50 by default)."""
        room = self._client.rooms.get(room_id)
        notifications = getattr(getattr(room, "power_levels", None), "defaults", None)
        value = getattr(notifications, "notifications", None) if notifications is not None else None
        if isinstance(value, dict) and isinstance(value.get("room"), int):
            return value["room"]
        return 50


def _reason(reason: str | None) -> dict[str, str]:
    return {"reason": reason} if reason else {}
