"""Issue 2 end to end, against the real Synapse: encrypted ping, one device forever, exactly-once across restarts,
invites, and what the operator's log and files look like."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import urllib.parse

import pytest
import yaml

from bot.testing.proxy import Rule

pytestmark = pytest.mark.e2e


def _devices(synapse, admin, user_id):
    path = f"/_synapse/admin/v2/users/{urllib.parse.quote(user_id)}/devices"
    return synapse.admin_request("GET", path, admin.access_token)["devices"]


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_encrypted_ping_restart_same_device_and_clean_log(synapse, new_user, bot_in_room):
    admin = new_user("admin", admin=True)
    t = await bot_in_room(synapse)
    proc, member, room, bot_user, data_dir = t.proc, t.member, t.room, t.bot_user, t.data_dir

    ping = await member.send(room, "!ping")
    reply = await member.expect_reply(room, ping, sender=bot_user.user_id)
    assert reply.decrypted, "the bot's reply must be encrypted"
    assert reply.body.startswith("pong")
    first_identity = reply.sender_key  # the curve25519 identity key of the device that encrypted it

    on_postgresql = "database" in yaml.safe_load(t.config_path.read_text())
    creds = data_dir / "credentials.json"
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    if on_postgresql:  # the login is in the database, encrypted (tests/test_e2e_postgres.py)
        assert not creds.exists() and not (data_dir / "state.db").exists()
        device_id = re.findall(r"new device (\w+)", proc.log_text())[0]
    else:
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "state.db").stat().st_mode) == 0o600
        device_id = json.loads(creds.read_text())["device_id"]
    devices_before = sorted(d["device_id"] for d in _devices(synapse, admin, bot_user.user_id))
    assert device_id in devices_before
    assert await proc.stop() == 0

    # Restart: same device, no new device on the server, and new messages decrypt.
    await proc.run_ready()
    assert re.findall(r"restored session \S+, device (\w+)", proc.log_text()) == [device_id]
    # (the other device is the one shared-secret registration made for the harness)
    assert sorted(d["device_id"] for d in _devices(synapse, admin, bot_user.user_id)) == devices_before
    ping2 = await member.send(room, "!ping")
    reply2 = await member.expect_reply(room, ping2, sender=bot_user.user_id)
    assert reply2.decrypted and reply2.body.startswith("pong")
    assert member.undecryptable(room) == []
    assert reply2.sender_key == first_identity, "the device identity key must survive the restart"
    assert await proc.stop() == 0

    log = proc.log_text()
    assert "!ping" not in log and "pong" not in log, "message bodies must not be logged at INFO"
    if not on_postgresql:
        assert json.loads(creds.read_text())["access_token"] not in log
    assert "syt_" not in log and bot_user.password not in log
    assert "synced;" in log


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_offline_messages_handled_exactly_once(synapse, tmp_path, test_plugins_dir, bot_in_room):
    counts = tmp_path / "counts.tsv"
    t = await bot_in_room(
        synapse, plugins={"ping": {}, "counter": {"path": str(counts)}}, plugin_dirs=[test_plugins_dir]
    )
    proc, member, room = t.proc, t.member, t.room
    await member.send(room, "count online-1")
    await _wait_lines(counts, 1)
    assert await proc.stop() == 0

    # Sent while the bot is down: handled once after the start, in order.
    for i in range(3):
        await member.send(room, f"count offline-{i}")
    await proc.run_ready()
    await _wait_lines(counts, 4)
    assert await proc.stop() == 0

    # Another restart must not handle anything again.
    await proc.run_ready()
    sentinel = await member.send(room, "count after-restart")
    await _wait_lines(counts, 5)
    assert await proc.stop() == 0
    lines = [line.split("\t") for line in counts.read_text().splitlines()]
    ids = [event_id for event_id, _ in lines]
    assert len(ids) == len(set(ids)) == 5, lines
    assert [body for _, body in lines] == [
        "count online-1", "count offline-0", "count offline-1", "count offline-2", "count after-restart"
    ]
    assert ids[-1] == sentinel


async def _until(condition, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s")


async def _wait_lines(path, n, timeout=30.0):
    for _ in range(int(timeout / 0.1)):
        if path.exists() and len(path.read_text().splitlines()) >= n:
            await asyncio.sleep(0.3)  # and no more than n
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} has {len(path.read_text().splitlines()) if path.exists() else 0} lines, not {n}")


async def test_invites_follow_the_allow_list(synapse, new_user, bot_in_room):
    friend, stranger = new_user("friend"), new_user("stranger")
    t = await bot_in_room(
        synapse, member_user=friend, member_name="friend", room=False, invites={"accept_from": [friend.user_id]}
    )
    proc, m_friend, bot_user = t.proc, t.member, t.bot_user
    m_stranger = await t.add_member(stranger, "stranger")
    ok_room = await m_friend.create_room(invite=[bot_user.user_id])
    bad_room = await m_stranger.create_room(invite=[bot_user.user_id])
    await m_friend.wait_joined(ok_room, bot_user.user_id)

    def rejected(room_id, event) -> bool:
        src = event.source
        return (
            room_id == bad_room
            and src.get("type") == "m.room.member"
            and src.get("state_key") == bot_user.user_id
            and src.get("content", {}).get("membership") == "leave"
        )

    await m_stranger.expect(rejected, 30, "the bot to reject the stranger's invite")
    await proc.stop()
    assert f"rejected invite to {bad_room} from {stranger.user_id}" in proc.log_text()


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_gap_longer_than_one_sync_page_is_filled(synapse, tmp_path, test_plugins_dir, bot_in_room):
    """More messages while the bot is down than one sync's timeline holds (100): all handled, once, in order."""
    counts = tmp_path / "counts.tsv"
    t = await bot_in_room(synapse, plugins={"counter": {"path": str(counts)}}, plugin_dirs=[test_plugins_dir])
    proc, member, room = t.proc, t.member, t.room
    n = 130
    assert await proc.stop() == 0
    for i in range(n):
        await member.send(room, f"count {i}")
    await proc.run_ready()
    await _wait_lines(counts, n, timeout=60)
    assert await proc.stop() == 0
    bodies = [line.split("\t")[1] for line in counts.read_text().splitlines()]
    assert bodies == [f"count {i}" for i in range(n)]
    assert "filled a timeline gap" in proc.log_text()


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_late_room_key_delivers_the_event_once_even_across_a_restart(
    synapse, tmp_path, test_plugins_dir, bot_in_room
):
    counts = tmp_path / "counts.tsv"
    t = await bot_in_room(synapse, plugins={"counter": {"path": str(counts)}}, plugin_dirs=[test_plugins_dir])
    proc, member, room, bot_user = t.proc, t.member, t.room, t.bot_user

    # 1. The key arrives while the bot runs.
    first, release_first = await member.send_with_late_key(room, "count late-1")
    await proc.wait_for_log(f"cannot decrypt {first}")
    await release_first()
    await _wait_lines(counts, 1)

    # 2. The key arrives while the bot is down: the waiting event survives the restart.
    second, release_second = await member.send_with_late_key(room, "count late-2")
    await proc.wait_for_log(f"cannot decrypt {second}")
    assert await proc.stop() == 0
    await release_second()
    await proc.run_ready()
    await _wait_lines(counts, 2)
    assert await proc.stop() == 0
    await proc.run_ready()  # and a third start handles nothing again
    sentinel = await member.send(room, "count sentinel")
    await _wait_lines(counts, 3)
    # The member's own sync has reached its sentinel: any message the bot had sent into the room before is seen.
    await member.expect(lambda r, e: r == room and e.event_id == sentinel, 30, "the sentinel in the timeline")
    assert await proc.stop() == 0
    lines = [line.split("\t") for line in counts.read_text().splitlines()]
    assert lines[0] == [first, "count late-1"]
    assert lines[1] == [second, "count late-2"]
    assert len(lines) == 3
    log = proc.log_text()
    assert log.count(f"cannot decrypt {first}") == 1 and log.count(f"cannot decrypt {second}") == 1
    assert member.messages(room, sender=bot_user.user_id) == [], "a UTD is never announced in the room"


async def test_sigterm_finishes_inflight_handler_and_exits_quickly(
    synapse, tmp_path, test_plugins_dir, fault_proxy, bot_in_room
):
    proxy = await fault_proxy(synapse.url)
    done = tmp_path / "slow.tsv"
    t = await bot_in_room(
        synapse, connect_via=proxy, plugins={"slow": {"path": str(done)}}, plugin_dirs=[test_plugins_dir],
        extra_args=("--log-level", "DEBUG"),
    )
    proc, member, room = t.proc, t.member, t.room
    # Once the /sync carrying the message is answered, the proxy holds the bot's next /sync long poll and never
    # answers it: a bot that waited for its sync before exiting would not exit at all.
    held: list[Rule] = []

    def hold_later_syncs(body, _request) -> None:
        rooms = (body or {}).get("rooms", {}).get("join", {}) or {}
        events = [e for info in rooms.values() for e in info.get("timeline", {}).get("events", [])]
        if not held and any(e.get("sender") == member.user_id and e.get("type") == "m.room.encrypted" for e in events):
            held.append(proxy.hold(r"/sync$"))

    proxy.on_answer(r"/sync$", hold_later_syncs)
    first = await member.send(room, "slow 2")
    await proc.wait_for_log("running message handler slow", timeout=30)  # the handler has started
    await _until(lambda: bool(held))
    await held[0].wait_hit()
    assert await proc.stop(timeout=10) == 0
    assert all(s.status == 0 for s in proxy.requests(r"/sync$")[-held[0].hits:]), (
        "the bot exited while its /sync was still unanswered"
    )
    assert len(done.read_text().splitlines()) == 1, "the in-flight handler finished before exit"
    proxy.clear()
    await proc.run_ready()
    # A later message, handled after anything the restart might have handled again (one room: in order).
    sentinel = await member.send(room, "slow 0")
    await _wait_lines(done, 2)
    assert await proc.stop() == 0
    lines = [line.split("\t") for line in done.read_text().splitlines()]
    assert [event_id for event_id, _ in lines] == [first, sentinel], "not handled again after the restart"
