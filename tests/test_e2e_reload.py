"""Hot reload under traffic, counted from the member's side (issue 13, part 2): every message is answered exactly once
by one version, a failed reload (a raising start(), a clashing alias) leaves the old version answering, and a handler
still running when its version is replaced finishes and keeps its write."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PLUGIN = '''
import asyncio
from bot import Context, Plugin, command, on_message

VERSION = {version}


class Echo(Plugin):
    reload_side_by_side = {side_by_side}

    async def start(self) -> None:
        await asyncio.sleep({start_delay})
        {start_extra}

    @on_message(r"^say (\\S+)")
    async def say(self, ctx: Context, match) -> None:
        await ctx.reply(f"v{{VERSION}} {{match.group(1)}}")

    @on_message(r"^slow (\\S+)")
    async def slow(self, ctx: Context, match) -> None:
        await asyncio.sleep(3)
        await self.storage.set(f"slow-{{match.group(1)}}", VERSION)
        await ctx.reply(f"v{{VERSION}} wrote {{match.group(1)}}")

    @command("echoversion", aliases={aliases})
    async def version(self, ctx: Context) -> None:
        await ctx.reply(f"v{{VERSION}}")
'''

OTHER = '''
from bot import Context, Plugin, command


class Other(Plugin):
    @command("taken")
    async def taken(self, ctx: Context) -> None:
        await ctx.reply("other")
'''


def _write(
    folder: Path, version: int, *, start_delay: float = 0, start_extra: str = "pass", aliases=(), side_by_side=True
) -> None:
    (folder / "echo").mkdir(exist_ok=True)
    (folder / "echo" / "__init__.py").write_text(
        PLUGIN.format(
            version=version, start_delay=start_delay, start_extra=start_extra, aliases=list(aliases),
            side_by_side=side_by_side,
        )
    )


def _answers(room) -> Counter:
    """How many bot replies each message got (by the event they reply to)."""
    counts: Counter = Counter()
    for event in room.bot_messages():
        relates = event.source.get("content", {}).get("m.relates_to") or {}
        target = (relates.get("m.in_reply_to") or {}).get("event_id")
        if target:
            counts[target] += 1
    return counts


async def test_reload_under_traffic_answers_every_message_once_and_keeps_the_old_version_on_failure(
    ratchet, tmp_path
):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins, 1)
    (plugins / "other.py").write_text(OTHER)
    room = await ratchet.room(plugins={"echo": {}, "other": {}}, plugin_dirs=[plugins])
    host = ratchet.bot.runtime.host
    assert (await room.ask("!echoversion")).body == "v1"

    # 1. a slow start(): messages keep coming while v2 starts; each is answered once, by v1 or v2
    _write(plugins, 2, start_delay=3)
    reload = asyncio.create_task(host.reload("echo"))
    sent = []
    for i in range(8):
        sent.append(await room.send(f"say {i}"))
        await asyncio.sleep(0.4)
    await reload
    sent.append(await room.send("say after"))
    await room.member.wait_for(lambda: all(_answers(room)[e] >= 1 for e in sent), 60, "every message answered")
    answered = _answers(room)
    assert [answered[e] for e in sent] == [1] * len(sent), "each message exactly once"
    bodies = [m.body for m in room.bot_messages() if m.body.startswith(("v1 ", "v2 "))]
    assert any(b.startswith("v1 ") for b in bodies), "the old version answered while the new one started"
    assert bodies[-1] == "v2 after"

    # 2. a start() that raises: the reload fails and v2 keeps answering
    _write(plugins, 3, start_extra='raise RuntimeError("broken start")')
    with pytest.raises(Exception, match="broken start"):
        await host.reload("echo")
    assert (await room.ask("!echoversion")).body == "v2"

    # 3. an alias that clashes with another plugin's command: refused, v2 keeps answering
    _write(plugins, 4, aliases=["taken"])
    with pytest.raises(Exception, match="already provided by plugin other"):
        await host.reload("echo")
    assert (await room.ask("!echoversion")).body == "v2"
    assert (await room.ask("!taken")).body == "other"

    # 4. a handler still running when its version is replaced finishes, and its write is kept
    _write(plugins, 5)
    slow = await room.send("slow k")
    await asyncio.sleep(0.5)  # the v2 handler is inside its 3 s sleep
    await host.reload("echo")
    reply = await room.expect_reply(slow, timeout=30)
    assert reply.body == "v2 wrote k"
    assert await host.plugins["echo"].instance.storage.get("slow-k") == 2
    assert (await room.ask("!echoversion")).body == "v5"


async def test_a_plugin_that_must_not_run_twice_is_restarted_with_its_events_held(ratchet, tmp_path):
    """reload_side_by_side = False (bridges): the old version stops first; what arrives while the new one starts is
    held and answered by the new one, once; a failing start() brings the old version back."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins, 1, side_by_side=False)
    room = await ratchet.room(plugins={"echo": {}}, plugin_dirs=[plugins])
    host = ratchet.bot.runtime.host
    assert (await room.ask("!echoversion")).body == "v1"

    _write(plugins, 2, start_delay=3, side_by_side=False)
    reload = asyncio.create_task(host.reload("echo"))
    await asyncio.sleep(0.5)  # v1 is stopped, v2 is inside its 3 s start()
    assert "echo" not in host.plugins
    held = [await room.send(f"say {i}") for i in range(4)]
    await reload
    await room.member.wait_for(lambda: all(_answers(room)[e] >= 1 for e in held), 60, "the held messages answered")
    answered = _answers(room)
    assert [answered[e] for e in held] == [1, 1, 1, 1]
    assert [m.body for m in room.bot_messages() if m.body.startswith(("v1 ", "v2 "))] == [f"v2 {i}" for i in range(4)]

    _write(plugins, 3, start_extra='raise RuntimeError("broken start")', side_by_side=False)
    with pytest.raises(Exception, match="broken start"):
        await host.reload("echo")
    assert (await room.ask("!echoversion")).body == "v2", "the previous version runs again"
