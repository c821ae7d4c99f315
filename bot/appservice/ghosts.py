"""Ghosts: the appservice's users that stand for remote people (``@irc_alice:example.org``), acting through the
appservice's token with ``?user_id=`` (identity assertion).

``ghosts.get("alice")`` (or ``"irc_alice"``, or the full user id) gives a :class:`Ghost`. Ghosts are registered on
first use (``POST /register`` with ``m.login.application_service`` and ``inhibit_login``: an ``M_USER_IN_USE`` answer
means it exists already), join a room before their first message there (invited by the bot where the room is
invite-only), and set their display name and avatar only
when they differ from what the homeserver has (read once per ghost, then cached). Messages go out with transaction ids
derived from the handling in progress and the ghost (:mod:`bot.matrix.idempotency`), so a handler replayed after a
crash or a retried appservice transaction does not post twice. Invites of ghosts are answered by the transaction
source (:meth:`Ghosts.on_invite`): a ghost joins when the bot, an admin or someone ``invites.accept_from`` allows
invited it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from bot.appservice.registration import Namespaces
from bot.content.text import text_content
from bot.errors import MatrixError, MatrixRequestError, SessionError
from bot.matrix.idempotency import next_txn_id
from bot.matrix.requests import api_path, request_json

if TYPE_CHECKING:
    from bot.appservice.ghost_devices import GhostDevices

__all__ = ["Ghost", "Ghosts"]

log = logging.getLogger(__name__)

#: Ghost objects kept (each holds a few small caches); beyond it the least recently used is dropped and re-read.
MAX_CACHED = 10_000

#: Seconds an unencrypted room is trusted to stay so before a device-less bot checks it again.
CLEAR_RECHECK = 60.0

_UNSET = object()


class Ghosts:
    """The appservice's ghosts, acting through ``client`` (whose access token is the as_token)."""

    def __init__(self, client: Any, namespaces: Namespaces) -> None:
        self._client = client
        self.namespaces = namespaces
        self._ghosts: dict[str, Ghost] = {}
        #: Rooms seen unencrypted (room id -> when), for a bot without a device.
        self._clear_rooms: dict[str, float] = {}
        #: The ghosts' own devices (``appservice.ghost_devices``); None: the bot's device encrypts for them.
        self.devices: GhostDevices | None = None
        self._fallback_logged: set[str] = set()

    def get(self, name: str) -> Ghost:
        """The ghost ``name``: a full user id, a localpart with the prefix, or the part after the prefix.

        Raises ValueError outside the namespace (or with no ``ghost_prefix`` configured). Nothing is sent yet.
        """
        user_id = self.namespaces.ghost_id(name)
        ghost = self._ghosts.pop(user_id, None) or Ghost(self, user_id)
        self._ghosts[user_id] = ghost  # most recently used last
        while len(self._ghosts) > MAX_CACHED:
            self._ghosts.pop(next(iter(self._ghosts)))
        return ghost

    def is_ghost(self, user_id: str) -> bool:
        """True for a user id in the ghosts' namespace."""
        return self.namespaces.is_ghost(user_id)

    async def request(self, user_id: str | None, method: str, path: str, body: Any = None) -> Any:
        """A client-server request as ``user_id`` (None: as the bot); raises MatrixRequestError on failure."""
        if user_id is not None:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode({"user_id": user_id})
        return await request_json(self._client, method, path, body)

    async def seal(
        self, user_id: str, room_id: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The event a ghost sends into ``room_id``: if the room is encrypted, encrypted by the ghost's own device
        (:mod:`bot.appservice.ghost_devices`), or by the bridge bot's device without ghost devices or when the
        homeserver refuses the ghost one (docs/appservice.md, "Encryption"); else as it is.

        Raises :class:`~bot.errors.MatrixError` rather than post in the clear into an encrypted room the bot cannot
        encrypt for (the bot is not in it, or has no device).
        """
        client = self._client
        if getattr(client, "olm", None) is not None:
            await client.ensure_room(room_id)
            room = client.rooms.get(room_id)
            if room is not None:
                if not room.encrypted:
                    return event_type, content
                if self.devices is not None:
                    try:
                        return await self.devices.encrypt(user_id, room_id, event_type, content)
                    except (SessionError, MatrixRequestError) as exc:
                        if user_id not in self._fallback_logged:
                            self._fallback_logged.add(user_id)
                            log.error(
                                "%s has no device of its own (%s); its messages are encrypted by the bridge bot's "
                                "device (clients show them with a warning)", user_id, exc,
                            )
                return await client.encrypt_for_room(room_id, event_type, content)
        if await self._room_encrypted(user_id, room_id):
            raise MatrixError(
                f"{room_id} is encrypted and the bridge bot cannot encrypt for it (it is not in the room, or "
                "appservice.encryption is off): not sending in the clear"
            )
        return event_type, content

    async def _room_encrypted(self, user_id: str, room_id: str) -> bool:
        """Whether ``room_id`` has ``m.room.encryption`` state, as ``user_id`` (a member) sees it (an unencrypted
        room is asked again after :data:`CLEAR_RECHECK` seconds: encryption may be switched on, never off)."""
        checked = self._clear_rooms.get(room_id)
        if checked is not None and time.monotonic() - checked < CLEAR_RECHECK:
            return False
        try:
            await self.request(user_id, "GET", api_path("rooms", room_id, "state", "m.room.encryption", ""))
        except MatrixRequestError as err:
            if err.status == 404:
                self._clear_rooms[room_id] = time.monotonic()
                return False
            raise
        return True

    async def on_invite(self, room_id: str, user_id: str, inviter: str, allowed: bool) -> None:
        """A ghost was invited: it joins if ``allowed`` (the source decides by the invite policy), else declines.
        Failures are logged, never raised (the transaction goes on)."""
        ghost = self.get(user_id)
        try:
            if allowed:
                await ghost.join(room_id)
                log.info("%s joined %s on invite from %s", user_id, room_id, inviter)
            else:
                await ghost.leave(room_id)
                log.info("%s declined the invite to %s from %s (not allowed by the invite policy)",
                         user_id, room_id, inviter)
        except (MatrixError, MatrixRequestError, ValueError) as exc:
            log.warning("%s could not answer the invite to %s: %s", user_id, room_id, exc)


class Ghost:
    """One ghost user. Every method may raise :class:`~bot.errors.MatrixRequestError` when the homeserver refuses."""

    def __init__(self, ghosts: Ghosts, user_id: str) -> None:
        self._ghosts = ghosts
        #: The ghost's Matrix user id.
        self.user_id = user_id
        self._registered = False
        self._profile: dict[str, Any] | None = None
        self._joined: set[str] = set()

    def __repr__(self) -> str:
        return f"Ghost({self.user_id})"

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        return await self._ghosts.request(self.user_id, method, path, body)

    async def ensure_registered(self) -> None:
        """Create the user if it does not exist yet (once per process; an existing user is fine)."""
        if self._registered:
            return
        localpart = self.user_id[1:].split(":", 1)[0]
        body = {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
        try:
            await self._ghosts.request(None, "POST", api_path("register"), body)
            log.info("registered ghost %s", self.user_id)
        except MatrixRequestError as err:
            if err.errcode != "M_USER_IN_USE":
                raise
        self._registered = True

    async def _load_profile(self) -> dict[str, Any]:
        if self._profile is None:
            await self.ensure_registered()
            try:
                answer = await self._request("GET", api_path("profile", self.user_id))
            except MatrixRequestError as err:
                if err.status != 404:
                    raise
                answer = {}
            self._profile = answer if isinstance(answer, dict) else {}
        return self._profile

    async def set_display_name(self, name: str) -> bool:
        """Set the display name unless it is already ``name``; True if it was changed."""
        return await self._set_profile("displayname", name)

    async def set_avatar_url(self, url: str) -> bool:
        """Set the avatar (an ``mxc://`` URL) unless it is already that; True if it was changed."""
        if not url.startswith("mxc://"):
            raise ValueError(f"an avatar is an mxc:// URL, not {url[:40]!r}")
        return await self._set_profile("avatar_url", url)

    async def _set_profile(self, field: str, value: str) -> bool:
        profile = await self._load_profile()
        if profile.get(field, _UNSET) == value:
            return False
        await self._request("PUT", api_path("profile", self.user_id, field), {field: value})
        profile[field] = value
        return True

    async def join(self, room: str) -> str:
        """Join ``room`` (a room id or alias; an invite is accepted the same way); returns the room id."""
        await self.ensure_registered()
        answer = await self._request("POST", api_path("join", room), {})
        room_id = answer.get("room_id", room) if isinstance(answer, dict) else room
        self._joined.add(room_id)
        return room_id

    async def ensure_joined(self, room_id: str) -> None:
        """Join ``room_id`` unless this process saw the ghost join it already; in a room the ghost may not join by
        itself (invite-only), the bot invites it first (as mautrix's intents do)."""
        if room_id in self._joined:
            return
        try:
            await self.join(room_id)
        except MatrixRequestError as err:
            if err.status != 403:
                raise
            try:
                invite = {"user_id": self.user_id}
                await self._ghosts.request(None, "POST", api_path("rooms", room_id, "invite"), invite)
            except MatrixRequestError as invite_err:
                if invite_err.status != 403 or "already in the room" not in str(invite_err.body):
                    raise err from invite_err
            await self.join(room_id)

    def note_left(self, room_id: str) -> None:
        """Forget that this ghost is in ``room_id``: it was kicked, banned or left by other means (the next message
        there joins again). For bridges, which see those membership changes."""
        self._joined.discard(room_id)

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        """Leave ``room_id`` (or decline an invite to it)."""
        await self.ensure_registered()
        body = {"reason": reason} if reason else {}
        await self._request("POST", api_path("rooms", room_id, "leave"), body)
        self._joined.discard(room_id)

    async def send_message(
        self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message", *, txn_id: str | None = None
    ) -> str:
        """Send an event as the ghost (joining the room first if needed); returns its event id.

        The transaction id is ``txn_id`` if given, else derived from the handling in progress and this ghost (stable
        across replays of the same handling), else random.
        """
        await self.ensure_joined(room_id)
        tid = txn_id or _ghost_txn_id(next_txn_id(), self.user_id)
        event_type, content = await self._ghosts.seal(self.user_id, room_id, event_type, content)
        answer = await self._request("PUT", api_path("rooms", room_id, "send", event_type, tid), content)
        event_id = answer.get("event_id") if isinstance(answer, dict) else None
        if not isinstance(event_id, str):
            raise MatrixError(f"sending as {self.user_id} to {room_id}: the homeserver answered without an event id")
        return event_id

    async def send_text(
        self,
        room_id: str,
        text: str,
        *,
        html: str | None = None,
        notice: bool = False,
        reply_to: str | None = None,
        thread_root: str | None = None,
        mentions: list[str] | None = None,
    ) -> str:
        """Send a text (or notice) message as the ghost, optionally as a reply or in a thread; returns the event id."""
        content = text_content(
            text, html=html, notice=notice, reply_to=reply_to, thread_root=thread_root, mentions=mentions
        )
        return await self.send_message(room_id, content)


def _ghost_txn_id(base: str, user_id: str) -> str:
    """A transaction id unique to the ghost: Synapse keys an appservice's transaction ids by the path alone, not by
    the asserted user, so the bot's n-th send and a ghost's must not share one."""
    return "rtg" + hashlib.sha256(f"{base}\x1e{user_id}".encode()).hexdigest()[:40]
