"""The homeserver goes away, answers garbage, fails key requests or rate-limits: the bot backs off politely, retries,
and loses nothing. The fault proxy (:mod:`bot.testing.proxy`) sits between the bot and Synapse and counts."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bot.testing.harness import BotProcess, write_bot_config

from .support import assert_exactly_once_in_order, assert_log_clean, ledger_lines, start_member, wait_lines

pytestmark = pytest.mark.e2e

#: Fault 4: how long Synapse stays down (the issue says 30 s; 15 s shows the same backoff at half the cost).
OUTAGE_SECONDS = 15


async def test_homeserver_down_for_a_while_few_requests_and_nothing_lost(
    own_synapse, fault_proxy, tmp_path, test_plugins_dir
):
    hs = own_synapse()
    proxy = await fault_proxy(hs.url)
    bot_user, alice = hs.register_user("bot", "bot-password-1"), hs.register_user("alice", "alice-password-1")
    ledger = tmp_path / "ledger.tsv"
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=proxy, user=bot_user, data_dir=tmp_path / "data",
        plugins={"ping": {}, "ledger": {"path": str(ledger)}}, plugin_dirs=[str(test_plugins_dir)],
    )
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await start_member(hs.url, alice, tmp_path, "alice")
    sent: list[str] = []
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        for i in range(5):
            sent.append(await member.send(room, f"count before-{i}"))
        # Stop Synapse while the bot may still be handling those.
        await asyncio.to_thread(hs.stop)
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        up_at = time.monotonic()
        requests_while_down = proxy.count("", since=down_at, until=up_at)
        assert proc.proc.poll() is None, "the bot survives the outage"
        await asyncio.to_thread(hs.start)
        for i in range(5):
            sent.append(await member.send(room, f"count after-{i}"))
        lines = await wait_lines(ledger, len(sent), timeout=90)
        ping = await member.send(room, "!ping")
        reply = await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=60)
        assert reply.decrypted and reply.body.startswith("pong")
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    # Exponential backoff with jitter: a handful of attempts while down, not a storm.
    print(f"requests while Synapse was down for {OUTAGE_SECONDS}s: {requests_while_down}")
    assert 1 <= requests_while_down <= 12, requests_while_down
    assert_exactly_once_in_order(lines, {room: sent})


async def test_504s_on_key_endpoints_the_encrypted_exchange_still_works(
    synapse, new_user, fault_proxy, tmp_path, test_plugins_dir
):
    """Fault 5: the first calls of /keys/upload, /keys/claim, /keys/query and /sendToDevice answer 504. The bot's
    keys still get published, members' messages decrypt, and a new sender device that appears while /keys/query keeps
    failing is not dropped: its message is handled once the queries work again."""
    bot_user, alice, carol_user = new_user("bot"), new_user("alice"), new_user("carol")
    proxy = await fault_proxy(synapse.url)
    for path in (r"/keys/upload$", r"/keys/claim$", r"/keys/query$", r"/sendToDevice/"):
        proxy.fail(path, 504, times=1)
    ledger = tmp_path / "ledger.tsv"
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=proxy, user=bot_user, data_dir=tmp_path / "data",
        plugins={"ping": {}, "ledger": {"path": str(ledger)}}, plugin_dirs=[str(test_plugins_dir)],
    )
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await start_member(synapse.url, alice, tmp_path, "alice")
    sent: list[str] = []
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        sent.append(await member.send(room, "count from-alice"))
        await wait_lines(ledger, 1, timeout=60)

        query_down = proxy.fail(r"/keys/query$", 504, times=None)
        carol = await start_member(synapse.url, carol_user, tmp_path, "carol")
        try:
            await member.client.room_invite(room, carol.user_id)
            await carol.wait_for(lambda: room in carol.client.invited_rooms, 30, "the invite")
            await carol.client.join(room)
            await carol.wait_joined(room, carol.user_id)
            sent.append(await carol.send(room, "count from-carol"))
            await proc.wait_for_log(f"cannot check the device that sent {sent[-1]} yet", timeout=30)
            await asyncio.sleep(2)
            assert len(ledger_lines(ledger)) == 1, "not handled before its sender's device is known"
            proxy.remove(query_down)
            lines = await wait_lines(ledger, 2, timeout=60)
        finally:
            await carol.close()
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    assert_exactly_once_in_order(lines, {room: sent})
    assert {s.path.rsplit("/", 2)[-2] if "sendToDevice" in s.path else s.path.rsplit("/", 1)[-1]
            for s in proxy.seen if s.status == 504} >= {"upload", "query"}
    assert "cannot decrypt" not in proc.log_text()


async def test_a_reply_after_504s_on_claim_and_send_to_device_is_readable(
    synapse, new_user, fault_proxy, tmp_path
):
    bot_user, alice = new_user("bot"), new_user("alice")
    proxy = await fault_proxy(synapse.url)
    cfg = write_bot_config(tmp_path / "bot.yaml", server=proxy, user=bot_user, data_dir=tmp_path / "data")
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await start_member(synapse.url, alice, tmp_path, "alice")
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        proxy.fail(r"/keys/claim$", 504, times=1)
        proxy.fail(r"/sendToDevice/", 504, times=1)
        ping = await member.send(room, "!ping")
        reply = await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=8)
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    assert reply.decrypted and reply.body.startswith("pong")


def _register(synapse, name):
    import secrets

    return synapse.register_user(f"{name}-{secrets.token_hex(3)}", secrets.token_urlsafe(12))


async def test_500s_and_malformed_json_are_logged_retried_and_survived(
    synapse, new_user, fault_proxy, tmp_path, test_plugins_dir
):
    bot_user, alice = new_user("bot"), new_user("alice")
    proxy = await fault_proxy(synapse.url)
    ledger = tmp_path / "ledger.tsv"
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=proxy, user=bot_user, data_dir=tmp_path / "data",
        plugins={"ping": {}, "ledger": {"path": str(ledger)}}, plugin_dirs=[str(test_plugins_dir)],
    )
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await start_member(synapse.url, alice, tmp_path, "alice")
    sent: list[str] = []
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        sent.append(await member.send(room, "count first"))
        await wait_lines(ledger, 1)
        # A bad patch on the homeserver: /sync answers 500 twice, then malformed JSON twice; /keys/query 500 twice.
        sync_500 = proxy.fail(r"/sync$", 500, times=2)
        sync_garbage = proxy.malformed(r"/sync$", times=2)
        query_500 = proxy.fail(r"/keys/query$", 500, times=2)
        for i in range(3):
            sent.append(await member.send(room, f"count during-{i}"))
        ping = await member.send(room, "!ping")
        lines = await wait_lines(ledger, len(sent), timeout=90)
        reply = await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=60)
        assert reply.body.startswith("pong")
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    assert_exactly_once_in_order(lines, {room: sent})
    assert sync_500.hits == 2 and sync_garbage.hits == 2
    log = proc.log_text()
    assert log.count("sync failed") >= 4, "each bad answer is logged (and retried with backoff)"
    assert_log_clean(proc, bodies=["count during-0", "!ping"], secrets=[bot_user.password])
    del query_500


async def test_a_reply_whose_send_answered_500_is_retried(synapse, new_user, fault_proxy, tmp_path):
    bot_user, alice = new_user("bot"), new_user("alice")
    proxy = await fault_proxy(synapse.url)
    cfg = write_bot_config(tmp_path / "bot.yaml", server=proxy, user=bot_user, data_dir=tmp_path / "data")
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await start_member(synapse.url, alice, tmp_path, "alice")
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        proxy.fail(r"/send/m\.room\.encrypted/", 500, times=1)
        proxy.malformed(r"/send/m\.room\.encrypted/", times=1, status=502)
        ping = await member.send(room, "!ping")
        reply = await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=8)
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    assert reply.body.startswith("pong")


async def test_rate_limited_burst_all_replies_in_order_honouring_retry_after(own_synapse, fault_proxy, tmp_path):
    """Fault 10: 100 commands in a burst against a tight rc_message; every reply goes out, in order, and the bot
    never sends again before the retry_after_ms the server asked for has passed."""
    hs = own_synapse(tight_rate_limits=True, extra_config={"rc_message": {"per_second": 10, "burst_count": 5}})
    proxy = await fault_proxy(hs.url)
    bot_user, alice = hs.register_user("bot", "bot-password-1"), hs.register_user("alice", "alice-password-1")
    admin = hs.register_user("admin", "admin-password-1", admin=True)
    # The member is exempt, so that only the bot is rate limited.
    hs.admin_request(
        "POST",
        f"/_synapse/admin/v1/users/{alice.user_id}/override_ratelimit",
        admin.access_token,
        {"messages_per_second": 0, "burst_count": 0},
    )
    cfg = write_bot_config(tmp_path / "bot.yaml", server=proxy, user=bot_user, data_dir=tmp_path / "data")
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await start_member(hs.url, alice, tmp_path, "alice")
    n = 100
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        pings = [await member.send(room, "!ping") for _ in range(n)]
        replies = [await member.expect_reply(room, p, sender=bot_user.user_id, timeout=120) for p in pings]
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    assert all(r.body.startswith("pong") for r in replies)
    order = [e.event_id for e in member.messages(room, sender=bot_user.user_id)]
    assert order == [r.event_id for r in replies], "replies go out in the order of the commands"
    sends = proxy.requests(r"/rooms/.*/send/")
    limited = [s for s in sends if s.status == 429]
    assert limited, "the bot was actually rate limited"
    for before, after in itertools.pairwise(sends):
        if before.status == 429 and before.retry_after_ms:
            waited = (after.time - before.time) * 1000
            assert waited >= before.retry_after_ms * 0.9, (waited, before.retry_after_ms)
