"""The rooms' state kept across restarts (issue 20, target 5): what a sync changed is saved before the runtime sees the
batch, and a restart loads the rooms from it and resumes with an incremental sync instead of a full-state one.

The end-to-end check (a bot restarted against Synapse after its rooms changed while it was down) is in
tests/test_e2e_room_state.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nio import SyncResponse

from bot.matrix.client import RatchetClient
from bot.matrix.sync import SyncSource, room_state_rows
from bot.storage.state import StateStore

BOT = "@bot:localhost"
ALICE = "@alice:localhost"
MALLORY = "@mallory:localhost"


def state(kind: str, key: str, content: dict[str, Any], sender: str = ALICE, n: int = 0) -> dict[str, Any]:
    return {
        "type": kind, "state_key": key, "content": content, "sender": sender,
        "event_id": f"${kind}-{key}-{n}", "origin_server_ts": 1_000 + n,
    }


def member(user: str, membership: str = "join", n: int = 0) -> dict[str, Any]:
    return state("m.room.member", user, {"membership": membership}, sender=user, n=n)


def room_state(room: str) -> list[dict[str, Any]]:
    return [
        state("m.room.create", "", {"creator": ALICE, "room_version": "10"}),
        member(ALICE),
        member(BOT),
        state("m.room.power_levels", "", {"users": {ALICE: 100}, "users_default": 0}),
        state("m.room.encryption", "", {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 7}),
        state("m.room.name", "", {"name": f"room {room}"}),
    ]


def sync_body(
    token: str, join: dict[str, dict[str, list[dict[str, Any]]]], leave: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "next_batch": token,
        "rooms": {
            "join": {
                room_id: {
                    "state": {"events": parts.get("state", [])},
                    "timeline": {"events": parts.get("timeline", []), "limited": False},
                }
                for room_id, parts in join.items()
            },
            "invite": {},
            "leave": {room_id: {"timeline": {"events": [member(BOT, "leave", 9)]}} for room_id in leave},
        },
        "to_device": {"events": []},
    }


class ScriptedClient(RatchetClient):
    """nio's client without a network or E2EE: ``sync`` answers the bodies it was given, handled as nio would."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        super().__init__("http://localhost:1", BOT)
        self.user_id = BOT  # as a restored login sets it
        self.bodies = bodies
        self.calls: list[dict[str, Any]] = []

    async def sync(self, **kwargs: Any) -> SyncResponse:  # type: ignore[override]
        self.calls.append(kwargs)
        resp = SyncResponse.from_dict(self.bodies.pop(0))
        await self.receive_response(resp)
        return resp


def open_store(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    if engine == "sqlite":
        return StateStore.open(tmp_path / "state.db")
    return StateStore.open_postgres(request.getfixturevalue("postgres_dsn"))


def reopen(engine: str, store: StateStore, tmp_path: Path) -> StateStore:
    """The same store as a restarted process opens it."""
    if engine == "sqlite":
        store.close()
        return StateStore.open(tmp_path / "state.db")
    return store


def test_rows_are_the_state_that_applies_and_nothing_forged() -> None:
    forged = {  # a timeline event that is not state: no state_key
        "type": "m.room.power_levels", "content": {"users": {MALLORY: 100}}, "sender": MALLORY,
        "event_id": "$forged", "origin_server_ts": 5,
    }
    body = sync_body("s1", {
        "!a:x": {
            "state": room_state("!a:x"),
            "timeline": [
                {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}, "sender": ALICE,
                 "event_id": "$m", "origin_server_ts": 3},
                forged,
                member(MALLORY, n=4),
                {"type": "m.room.power_levels", "state_key": "", "content": "not an object", "sender": ALICE,
                 "event_id": "$bad", "origin_server_ts": 6},
            ],
        },
    })
    resp = SyncResponse.from_dict(body)
    decrypted = resp.rooms.join["!a:x"].timeline.events[0]
    decrypted.source = {**decrypted.source, "state_key": ""}  # a decrypted event claiming to be state: a forgery
    decrypted.decrypted = True
    rows = room_state_rows(resp)
    keys = [(r[1], r[2]) for r in rows]
    assert keys == [
        ("m.room.create", ""), ("m.room.member", ALICE), ("m.room.member", BOT), ("m.room.power_levels", ""),
        ("m.room.encryption", ""), ("m.room.name", ""), ("m.room.member", MALLORY),
    ]
    assert all(r[0] == "!a:x" for r in rows)
    assert json.loads(rows[-1][3])["event_id"] == "$m.room.member-@mallory:localhost-4"


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_restart_rebuilds_the_rooms_and_syncs_incrementally(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = open_store(engine, tmp_path, request)
    assert not store.room_state_complete and dict(store.iter_room_state()) == {}

    # First run: an initial sync (every room's state), then an incremental one that changes and leaves rooms.
    client = ScriptedClient([
        sync_body("s1", {"!a:x": {"state": room_state("!a:x")}, "!b:x": {"state": room_state("!b:x")}}),
        sync_body(
            "s2",
            {"!a:x": {"timeline": [
                member(MALLORY, n=2),
                state("m.room.power_levels", "", {"users": {ALICE: 100, MALLORY: 50}}, n=3),
            ]}},
            leave=("!b:x",),
        ),
    ])
    source = SyncSource(client, store)
    assert source.restore_rooms() is None  # nothing saved yet: the first sync after a restart is a full one
    await source.fetch(None, timeout_ms=0)
    assert store.room_state_complete
    assert set(dict(store.iter_room_state())) == {"!a:x", "!b:x"}
    await source.fetch("s1", timeout_ms=0)
    saved = dict(store.iter_room_state())
    assert set(saved) == {"!a:x"}, "a room the bot left is forgotten"
    assert len(saved["!a:x"]) == 7  # six events, Mallory's membership; the power levels replaced

    # Restart: a new client, the rooms from the store, no request made for them.
    store = reopen(engine, store, tmp_path)
    fresh = ScriptedClient([])
    seen: list[tuple[str, list]] = []
    count = SyncSource(fresh, store).restore_rooms(lambda room_id, state: seen.append((room_id, state)))
    assert fresh.calls == []
    assert count == 1 and [room_id for room_id, _ in seen] == ["!a:x"]
    assert {e.source["type"] for e in seen[0][1]} >= {"m.room.create", "m.room.encryption"}
    room = fresh.rooms["!a:x"]
    assert room.encrypted and "!a:x" in fresh.encrypted_rooms
    assert room.name == "room !a:x"
    assert set(room.users) == {ALICE, BOT, MALLORY}
    assert room.power_levels.get_user_level(MALLORY) == 50
    assert room.power_levels.get_user_level(ALICE) == 100
    assert "!b:x" not in fresh.rooms
    store.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_full_sync_replaces_everything_saved(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = open_store(engine, tmp_path, request)
    store.save_room_state([("!old:x", "m.room.name", "", "{}")])
    assert not store.room_state_complete, "rows alone do not make the saved state complete"
    client = ScriptedClient([sync_body("s9", {"!a:x": {"state": room_state("!a:x")}})])
    await SyncSource(client, store).fetch("s8", timeout_ms=0, full_state=True)
    assert set(dict(store.iter_room_state())) == {"!a:x"}
    assert store.room_state_complete
    store.close()


def test_a_saved_room_without_the_bot_is_not_restored(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "state.db")
    kept = room_state("!a:x")
    gone = [e for e in room_state("!b:x") if e.get("state_key") != BOT]
    rows = [(room, e["type"], e["state_key"], json.dumps(e)) for room, events in (("!a:x", kept), ("!b:x", gone))
            for e in events]
    store.save_room_state(rows, replace_all=True)
    client = ScriptedClient([])
    seen: list[str] = []
    count = SyncSource(client, store).restore_rooms(lambda room_id, state: seen.append(room_id))
    assert count == 1 and seen == ["!a:x"], "on_room is called for the rooms kept only"
    assert set(client.rooms) == {"!a:x"}
    store.close()


def test_a_restart_reads_and_builds_one_room_at_a_time(tmp_path: Path) -> None:
    """The saved state is read room by room (in room id order) and each room is built before the next one's events are
    read: with thousands of rooms, parsing all of them first leaves the rooms scattered through memory the allocator
    cannot give back (bench/memrooms.py)."""
    store = StateStore.open(tmp_path / "state.db")
    rows = [(room, e["type"], e["state_key"], json.dumps(e)) for room in ("!c:x", "!a:x", "!b:x")
            for e in room_state(room)]
    store.save_room_state(rows, replace_all=True)
    reading = store.iter_room_state()
    assert next(reading)[0] == "!a:x", "a generator: rows are read as the rooms are asked for"
    reading.close()
    assert [(room_id, len(texts)) for room_id, texts in store.iter_room_state()] == [
        (room_id, len(room_state(room_id))) for room_id in ("!a:x", "!b:x", "!c:x")
    ]
    client = ScriptedClient([])
    built: list[tuple[str, int]] = []
    count = SyncSource(client, store).restore_rooms(lambda room_id, state: built.append((room_id, len(client.rooms))))
    assert count == 3
    assert built == [("!a:x", 1), ("!b:x", 2), ("!c:x", 3)], "each room is built when its events have been read"
    assert all(client.rooms[r].encrypted and set(client.rooms[r].users) >= {BOT} for r in ("!a:x", "!b:x", "!c:x"))
    assert client.encrypted_rooms >= {"!a:x", "!b:x", "!c:x"}
    store.close()
