"""A bare matrix-nio echo bot, written the way nio's examples write one: ``!ping`` -> ``pong``.

``python bench/bots/nio_echo.py HOMESERVER USER_ID PASSWORD STORE_DIR`` (runs in the project venv, without
anything from Ratchet). The first start logs in and keeps the credentials in STORE_DIR; later starts restore them
and resume from nio's stored sync token (``store_sync_tokens``), so messages sent while it was down are answered.
With BENCH_MARK_FILE set, the wall-clock time of each handled ``!ping`` is appended to that file; with
BENCH_SYNC_MARK_FILE set, the wall-clock time at which its first sync was handled (nio's response callbacks run after
the event callbacks) is written to that file; BENCH_PICKLE_KEY overrides the store's pickle key (the start-up
benchmark opens Ratchet's store with it).
"""

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, InviteMemberEvent, LoginResponse, RoomMessageText, SyncResponse
from nio.store import SqliteStore


async def main() -> None:
    homeserver, user_id, password, store_dir = sys.argv[1:5]
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - start-up, before anything runs
    pickle_key = os.environ.get("BENCH_PICKLE_KEY", "bench-nio-echo-pickle")
    config = AsyncClientConfig(
        store=SqliteStore, encryption_enabled=True, pickle_key=pickle_key, store_sync_tokens=True
    )
    client = AsyncClient(homeserver, user_id, store_path=str(store), config=config)
    creds = store / "credentials.json"
    if creds.exists():
        data = json.loads(creds.read_text())
        client.restore_login(data["user_id"], data["device_id"], data["access_token"])
    else:
        resp = await client.login(password, device_name="nio-echo")
        if not isinstance(resp, LoginResponse):
            raise SystemExit(f"login failed: {resp}")
        creds.write_text(json.dumps({"user_id": resp.user_id, "device_id": resp.device_id,
                                     "access_token": resp.access_token}))
    mark = os.environ.get("BENCH_MARK_FILE")

    async def on_message(room, event) -> None:
        if event.sender == client.user_id or event.body != "!ping":
            return
        if mark:
            with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
                fh.write(f"{time.time()}\n")
        content = {
            "msgtype": "m.text",
            "body": "pong",
            "m.relates_to": {"m.in_reply_to": {"event_id": event.event_id}},
        }
        await client.room_send(room.room_id, "m.room.message", content, ignore_unverified_devices=True)

    async def on_invite(room, event) -> None:
        if event.state_key == client.user_id:
            await client.join(room.room_id)

    client.add_event_callback(on_message, RoomMessageText)
    client.add_event_callback(on_invite, InviteMemberEvent)
    sync_mark = os.environ.get("BENCH_SYNC_MARK_FILE")
    if sync_mark:
        marked = []

        async def on_sync(_resp) -> None:
            if not marked:
                marked.append(True)
                with open(sync_mark, "w") as fh:  # noqa: ASYNC230 - once
                    fh.write(f"{time.time()}\n")

        client.add_response_callback(on_sync, SyncResponse)
    if client.should_upload_keys:
        await client.keys_upload()
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(client.sync_forever(timeout=30_000, full_state=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    print("READY", flush=True)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
