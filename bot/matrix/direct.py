"""Direct messages: find the bot's encrypted DM with a user, or create it.

A DM is a room listed for the user in the bot's ``m.direct`` account data that the bot is still joined to, that is
encrypted and where the user is joined or invited. When there is none, :class:`DirectRooms` creates one (private,
``is_direct``, the user invited, ``m.room.encryption`` in the initial state) and records it in ``m.direct``.

A message sent right after the creation must be readable by the user once they accept the invite. nio shares a
room's Megolm session with every member it knows, invited ones included (``room.users`` holds both), but only for
rooms in its state and only with devices it has queried. So :meth:`DirectRooms.room_for` returns only when the new
room has come down the bot's sync (with its encryption and the invite), its members are loaded and the user's
devices are known; the next send then shares the room key with the invitee's devices.

The user-to-room mapping is cached in memory; one lock per user makes concurrent calls for the same user wait for
the first one instead of creating two rooms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from nio import (
    DirectRoomsErrorResponse,
    DirectRoomsResponse,
    ErrorResponse,
    JoinedMembersResponse,
    JoinedRoomsResponse,
    RoomCreateResponse,
    RoomPreset,
    RoomVisibility,
)

from bot.errors import MatrixError

if TYPE_CHECKING:
    from nio import MatrixRoom

    from bot.matrix.client import RatchetClient

__all__ = ["DirectRooms", "create_dm_request", "direct_candidates", "is_usable_dm", "with_direct_room"]

log = logging.getLogger(__name__)

#: How long to wait for a new DM room to come down the bot's own sync, in seconds.
DM_SYNC_TIMEOUT = 30.0

_ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


# -- pure helpers --------------------------------------------------------------------------------------------


def direct_candidates(m_direct: dict[str, Any], user_id: str) -> list[str]:
    """The DM rooms ``m_direct`` lists for ``user_id``, most recently added first."""
    rooms = m_direct.get(user_id) if isinstance(m_direct, dict) else None
    if not isinstance(rooms, list):
        return []
    seen: set[str] = set()
    ordered: list[str] = []
    for room_id in reversed(rooms):
        if isinstance(room_id, str) and room_id not in seen:
            seen.add(room_id)
            ordered.append(room_id)
    return ordered


def with_direct_room(m_direct: dict[str, Any], user_id: str, room_id: str) -> dict[str, list[str]]:
    """A copy of ``m_direct`` with ``room_id`` added (last) to ``user_id``'s DM rooms."""
    updated = {k: list(v) for k, v in (m_direct or {}).items() if isinstance(v, list)}
    rooms = [r for r in updated.get(user_id, []) if r != room_id]
    rooms.append(room_id)
    updated[user_id] = rooms
    return updated


def create_dm_request(user_id: str) -> dict[str, Any]:
    """Keyword arguments of ``AsyncClient.room_create`` for a new encrypted DM with ``user_id``."""
    return {
        "visibility": RoomVisibility.private,
        "preset": RoomPreset.trusted_private_chat,
        "is_direct": True,
        "invite": [user_id],
        "initial_state": [dict(_ENCRYPTION, content=dict(_ENCRYPTION["content"]))],
    }


def is_usable_dm(room: MatrixRoom | None, own_user_id: str, user_id: str) -> bool:
    """True if ``room`` (nio's state) is encrypted, the bot is joined and ``user_id`` is joined or invited."""
    if room is None or not room.encrypted:
        return False
    if own_user_id not in room.users or own_user_id in room.invited_users:
        return False
    return user_id in room.users  # nio's ``users`` holds joined and invited members


# -- the I/O -------------------------------------------------------------------------------------------------


class DirectRooms:
    """Finds or creates the bot's DM room with a user; one instance per bot, shared by all plugins."""

    def __init__(self, client: RatchetClient, *, sync_timeout: float = DM_SYNC_TIMEOUT) -> None:
        self._client = client
        self._sync_timeout = sync_timeout
        self._cache: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._account_data_lock = asyncio.Lock()

    def cached(self, user_id: str) -> str | None:
        """The DM room remembered for ``user_id`` (without checking it)."""
        return self._cache.get(user_id)

    async def room_for(self, user_id: str) -> str:
        """The id of the bot's encrypted DM room with ``user_id``, created (and synced) if there is none."""
        if user_id == self._client.user_id:
            raise MatrixError("the bot cannot open a DM with itself")
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(user_id)
            if cached is not None and self._usable(cached, user_id):
                return cached
            room_id = await self._find(user_id)
            if room_id is None:
                room_id = await self._create(user_id)
            self._cache[user_id] = room_id
            return room_id

    def _usable(self, room_id: str, user_id: str) -> bool:
        return is_usable_dm(self._client.rooms.get(room_id), self._client.user_id, user_id)

    async def _find(self, user_id: str) -> str | None:
        candidates = direct_candidates(await self._read_m_direct(), user_id)
        if not candidates:
            return None
        joined = await self._client.joined_rooms()
        joined_ids = set(joined.rooms) if isinstance(joined, JoinedRoomsResponse) else None
        for room_id in candidates:
            if joined_ids is not None and room_id not in joined_ids:
                continue
            if self._usable(room_id, user_id):
                log.debug("using existing DM %s with %s", room_id, user_id)
                return room_id
        return None

    async def _create(self, user_id: str) -> str:
        resp = await self._client.room_create(**create_dm_request(user_id))
        if not isinstance(resp, RoomCreateResponse):
            raise MatrixError(
                f"creating a DM with {user_id} failed: {getattr(resp, 'message', resp)}",
                getattr(resp, "status_code", None),
            )
        room_id = resp.room_id
        log.info("created DM %s with %s", room_id, user_id)
        async with self._account_data_lock:
            current = await self._read_m_direct()
            await self._write_m_direct(with_direct_room(current, user_id, room_id))
        await self._wait_ready(room_id, user_id)
        return room_id

    async def _wait_ready(self, room_id: str, user_id: str) -> None:
        """Wait until nio knows the room (encrypted, user invited) and the user's devices, so keys reach them."""
        client = self._client
        deadline = time.monotonic() + self._sync_timeout
        while not self._usable(room_id, user_id):
            if time.monotonic() > deadline:
                raise MatrixError(
                    f"the DM {room_id} with {user_id} was created but did not arrive in the bot's sync within "
                    f"{self._sync_timeout:.0f}s (is the bot syncing?)"
                )
            await asyncio.sleep(0.05)
        room = client.rooms[room_id]
        if not room.members_synced:
            members = await client.joined_members(room_id)
            if not isinstance(members, JoinedMembersResponse):
                log.warning("could not load the members of %s: %s", room_id, getattr(members, "message", members))
        if client.olm is not None and client.should_query_keys:
            await client.keys_query()

    async def _read_m_direct(self) -> dict[str, Any]:
        resp = await self._client.list_direct_rooms()
        if isinstance(resp, DirectRoomsResponse):
            return resp.rooms if isinstance(resp.rooms, dict) else {}
        if isinstance(resp, DirectRoomsErrorResponse) and resp.status_code == "M_NOT_FOUND":
            return {}  # never set
        raise MatrixError(
            f"reading the bot's m.direct failed: {getattr(resp, 'message', resp)}", getattr(resp, "status_code", None)
        )

    async def _write_m_direct(self, m_direct: dict[str, list[str]]) -> None:
        resp = await self._client.set_account_data("m.direct", m_direct)
        if isinstance(resp, ErrorResponse):
            raise MatrixError(f"updating the bot's m.direct failed: {resp.message}", resp.status_code)
