"""The human side of the round trips: a plain matrix-nio client (the same for every bot under test) that creates
encrypted rooms, sends ``!ping`` and time-stamps the bot's ``pong`` when its sync delivers it, decrypted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    RoomCreateResponse,
    RoomMessageNotice,
    RoomMessageText,
    RoomSendResponse,
)
from nio.store import SqliteStore

from bench.common import log


class BenchMember:
    """One user, one device, syncing in the background."""

    def __init__(self, homeserver: str, user_id: str, password: str, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.client = AsyncClient(
            homeserver,
            user_id,
            store_path=str(store_dir),
            config=AsyncClientConfig(store=SqliteStore, encryption_enabled=True, pickle_key="bench-member-pickle"),
        )
        self.password = password
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        #: room id -> (bot user id, future resolved with perf_counter() when a pong from that bot arrives)
        self._waiting: dict[str, tuple[str, asyncio.Future[float]]] = {}
        self._shared_devices: dict[str, frozenset[str]] = {}
        #: with track_replies: event id of a message -> perf_counter() when a reply to it arrived
        self.track_replies = False
        self.replies: dict[str, float] = {}

    async def start(self) -> None:
        resp = await self.client.login(self.password, device_name="bench-member")
        if not isinstance(resp, LoginResponse):
            raise RuntimeError(f"member login failed: {resp}")
        self.client.add_event_callback(self._on_message, (RoomMessageText, RoomMessageNotice))
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self._task = asyncio.create_task(self._sync_forever())
        await asyncio.wait_for(self._synced.wait(), 60)

    async def _sync_forever(self) -> None:
        first = True
        while True:
            resp = await self.client.sync(timeout=0 if first else 30_000, full_state=first or None)
            first = False
            self._synced.set()
            with contextlib.suppress(Exception):
                if self.client.should_upload_keys:
                    await self.client.keys_upload()
                if self.client.should_query_keys:
                    await self.client.keys_query()
                if self.client.should_claim_keys:
                    await self.client.keys_claim(self.client.get_users_for_key_claiming())
                await self.client.send_to_device_messages()
            if not hasattr(resp, "next_batch"):
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.client.close()

    async def _on_message(self, room: Any, event: Any) -> None:
        now = time.perf_counter()
        if self.track_replies:
            rel = event.source.get("content", {}).get("m.relates_to") or {}
            target = (rel.get("m.in_reply_to") or {}).get("event_id") if isinstance(rel, dict) else None
            if isinstance(target, str):
                self.replies.setdefault(target, now)
        waiting = self._waiting.get(room.room_id)
        if waiting is None:
            return
        bot, fut = waiting
        if event.sender == bot and "pong" in (getattr(event, "body", "") or "") and not fut.done():
            fut.set_result(now)

    async def create_rooms(self, count: int, invite: str) -> list[str]:
        """Create ``count`` encrypted rooms inviting ``invite`` (a few at a time)."""
        sem = asyncio.Semaphore(4)

        async def one() -> str:
            async with sem:
                resp = await self.client.room_create(
                    invite=[invite],
                    initial_state=[
                        {
                            "type": "m.room.encryption",
                            "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                        }
                    ],
                )
            if not isinstance(resp, RoomCreateResponse):
                raise RuntimeError(f"room creation failed: {resp}")
            return resp.room_id

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def wait_rooms(self, rooms: list[str], bot: str, timeout: float = 60) -> None:
        """Wait until this member's sync shows ``bot`` joined in every room."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [
                r
                for r in rooms
                if r not in self.client.rooms
                or bot not in self.client.rooms[r].users
                or bot in self.client.rooms[r].invited_users
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} rooms do not show {bot} joined")
            await asyncio.sleep(0.2)

    async def refresh_devices(self, bot: str, rooms: list[str]) -> None:
        """Query ``bot``'s devices; start new Megolm sessions in ``rooms`` if its device list changed."""
        olm = self.client.olm
        assert olm is not None
        olm.users_for_key_query.add(bot)
        with contextlib.suppress(Exception):
            await self.client.keys_query()
        devices = frozenset(d.id for d in self.client.device_store.active_user_devices(bot))
        for room in rooms:
            if self._shared_devices.get(room) != devices:
                self.client.invalidate_outbound_session(room)
                self._shared_devices[room] = devices

    async def ping(self, room: str, bot: str, timeout: float = 30) -> float | None:
        """Send ``!ping``; the seconds until ``bot``'s pong arrived, or None on a timeout or a send error."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[room] = (bot, fut)
        start = time.perf_counter()
        try:
            resp = await self.client.room_send(
                room, "m.room.message", {"msgtype": "m.text", "body": "!ping"}, ignore_unverified_devices=True
            )
            if not isinstance(resp, RoomSendResponse):
                log(f"send failed in {room}: {resp}")
                return None
            return await asyncio.wait_for(fut, timeout) - start
        except TimeoutError:
            return None
        finally:
            if self._waiting.get(room, (None, None))[1] is fut:
                del self._waiting[room]

    async def warm_up(self, rooms: list[str], bot: str, timeout: float = 120) -> int:
        """Ping every room until the bot answers there (keys shared both ways); returns rooms that answered."""
        deadline = time.monotonic() + timeout
        pending = list(rooms)
        while pending and time.monotonic() < deadline:
            await self.refresh_devices(bot, pending)
            results = await asyncio.gather(*(self.ping(r, bot, timeout=8) for r in pending))
            pending = [r for r, lat in zip(pending, results, strict=True) if lat is None]
        return len(rooms) - len(pending)
