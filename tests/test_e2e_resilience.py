"""The homeserver goes away or pushes back: the bot backs off politely and loses nothing.

Each test runs its own Synapse (``own_synapse``: the session one must stay up for everybody else).
"""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

pytestmark = pytest.mark.e2e

#: The bot's waits after a refused connection (nio's retry with bot.matrix.client.backoff_delay): the first is drawn
#: from [0.25 s, 0.5 s], each next one from a range twice as high, capped at [30 s, 60 s].
FIRST_WAIT, LONGEST_WAIT = 0.25, 30.0


async def test_homeserver_outage_backs_off_then_recovers(own_synapse, bot_in_room):
    hs = own_synapse()
    t = await bot_in_room(hs)
    proc, member, room, bot_user = t.proc, t.member, t.room, t.bot_user
    before = len(proc.log_text().splitlines())

    await asyncio.to_thread(hs.stop)
    await asyncio.sleep(12)  # the outage itself (nothing is checked against the clock)
    outage_log = "\n".join(proc.log_text().splitlines()[before:])
    assert proc.proc.poll() is None, "the bot must survive the outage"

    await asyncio.to_thread(hs.start)
    ping = await member.send(room, "!ping")
    reply = await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=90)
    assert reply.decrypted and reply.body.startswith("pong")
    assert await proc.stop() == 0

    # Exponential backoff with jitter, not a storm, read from the order of the log instead of a count per 12 s:
    # every refused connection is logged with the wait before the next attempt ("Timed out, sleeping for Ns",
    # whole seconds), and the k-th wait is at least the floor of the doubling range it is drawn from; the log's
    # timestamps (whole seconds too) show the bot really waited. Lower bounds only: a slow machine cannot break it.
    retries = [
        (_seconds(stamp), int(wait))
        for stamp, wait in re.findall(r"^(\d\d:\d\d:\d\d) .*Timed out, sleeping for (\d+)s$", outage_log, re.M)
    ]
    assert len(retries) >= 2, outage_log
    for k, (_, wait) in enumerate(retries, start=1):
        assert wait >= int(min(LONGEST_WAIT, FIRST_WAIT * 2 ** (k - 1))), (k, retries)
    for (stamp, wait), (next_stamp, _) in itertools.pairwise(retries):
        assert (next_stamp - stamp) % 86400 >= wait - 1, retries


def _seconds(stamp: str) -> int:
    hours, minutes, seconds = (int(part) for part in stamp.split(":"))
    return hours * 3600 + minutes * 60 + seconds


async def test_rate_limited_replies_all_arrive_in_order(own_synapse, fault_proxy, bot_in_room):
    hs = own_synapse(tight_rate_limits=True)
    proxy = await fault_proxy(hs.url)
    t = await bot_in_room(hs, connect_via=proxy)
    proc, member, room, bot_user = t.proc, t.member, t.room, t.bot_user
    # The bot's /sync is held while the member sends, so the commands reach it at once however slowly the member
    # sends them (a busy machine must not pace them below the rate limit).
    burst = proxy.hold(r"/sync$")
    pings = [await member.send(room, "!ping") for _ in range(8)]
    burst.release()
    replies = [await member.expect_reply(room, p, sender=bot_user.user_id, timeout=90) for p in pings]
    assert all(r.body.startswith("pong") for r in replies)
    order = [e.event_id for e in member.messages(room, sender=bot_user.user_id)]
    assert order == [r.event_id for r in replies], "replies go out in the order of the commands"
    assert await proc.stop() == 0
    assert "429" in proc.log_text() or "ratelimited" in proc.log_text(), "the bot was actually rate limited"
    assert [s for s in proxy.requests(r"/send/") if s.status == 429], "the homeserver did answer 429"
