"""The homeserver goes away or pushes back: the bot backs off politely and loses nothing.

Each test runs its own Synapse (the session one must stay up for everybody else).
"""

from __future__ import annotations

import asyncio
import re

import pytest

from bot.testing.harness import BotProcess, write_bot_config
from bot.testing.member import Member
from bot.testing.synapse import SynapseServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_synapse(tmp_path):
    servers: list[SynapseServer] = []

    def make(**kwargs) -> SynapseServer:
        server = SynapseServer(tmp_path / f"hs{len(servers)}", **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


async def test_homeserver_outage_backs_off_then_recovers(own_synapse, tmp_path):
    hs = own_synapse()
    bot_user, alice = hs.register_user("bot", "bot-password-1"), hs.register_user("alice", "alice-password-1")
    cfg = write_bot_config(tmp_path / "bot.yaml", server=hs, user=bot_user, data_dir=tmp_path / "data")
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await Member(hs.url, alice.user_id, alice.password, tmp_path / "m").start()
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        before = len(proc.log_text().splitlines())

        await asyncio.to_thread(hs.stop)
        await asyncio.sleep(12)
        outage_log = "\n".join(proc.log_text().splitlines()[before:])
        retries = len(re.findall(r"Timed out, sleeping|sync failed", outage_log))
        # Exponential backoff with jitter: a handful of attempts in 12 s, not a storm.
        assert 1 <= retries <= 10, outage_log
        assert proc.proc.poll() is None, "the bot must survive the outage"

        await asyncio.to_thread(hs.start)
        ping = await member.send(room, "!ping")
        reply = await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=90)
        assert reply.decrypted and reply.body.startswith("pong")
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()


async def test_rate_limited_replies_all_arrive_in_order(own_synapse, tmp_path):
    hs = own_synapse(tight_rate_limits=True)
    bot_user, alice = hs.register_user("bot", "bot-password-1"), hs.register_user("alice", "alice-password-1")
    cfg = write_bot_config(tmp_path / "bot.yaml", server=hs, user=bot_user, data_dir=tmp_path / "data")
    proc = BotProcess(cfg, tmp_path / "bot.log")
    member = await Member(hs.url, alice.user_id, alice.password, tmp_path / "m").start()
    try:
        await proc.run_ready()
        room = await member.create_room(invite=[bot_user.user_id])
        await member.wait_joined(room, bot_user.user_id)
        pings = [await member.send(room, "!ping") for _ in range(8)]
        replies = [await member.expect_reply(room, p, sender=bot_user.user_id, timeout=90) for p in pings]
        assert all(r.body.startswith("pong") for r in replies)
        order = [e.event_id for e in member.messages(room, sender=bot_user.user_id)]
        assert order == [r.event_id for r in replies], "replies go out in the order of the commands"
        assert await proc.stop() == 0
    finally:
        proc.kill()
        await member.close()
    assert "429" in proc.log_text() or "ratelimited" in proc.log_text(), "the bot was actually rate limited"
