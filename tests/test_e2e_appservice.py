"""Appservice mode end to end (issue 16, items 1 and 5), against a real Synapse that loads the registration written by
``ratchet appservice registration``: commands reach plugins through transactions, ghosts post as themselves, and
every event is handled once across failures mid-transaction, kill -9 and downtime. One Synapse and one data_dir for
the module (Synapse starts in ~5-10 s); each test starts the bridge as ``ratchet run`` in its own process.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from appservice_support import appservice_synapse, free_port, until

from bot.testing.harness import BotProcess
from bot.testing.member import Member
from bot.testing.synapse import SynapseServer

pytestmark = [pytest.mark.e2e]

AS_ID = "ratchet-test"

PLUGIN = '''
"""Test bridge for the appservice e2e tests."""
import asyncio
import os
import signal

import aiofiles

from bot import Context, Plugin, on_message


class Asbridge(Plugin):
    async def _record(self, ctx: Context) -> None:
        async with aiofiles.open(self.config["path"], "a", encoding="utf-8") as fh:
            await fh.write(f"{ctx.event_id}\\t{ctx.body}\\n")

    @on_message(r"^count ")
    async def count(self, ctx: Context, match) -> None:
        await self._record(ctx)

    @on_message(r"^ghost ([a-z]+) (.+)$")
    async def ghost(self, ctx: Context, match) -> None:
        ghost = self.bot.ghost(match.group(1))
        await ghost.set_display_name(match.group(1).title() + " (IRC)")
        await ghost.send_text(ctx.room_id, match.group(2), reply_to=ctx.event_id)

    @on_message(r"^slow ")
    async def slow(self, ctx: Context, match) -> None:
        # Slow only the first time (while the marker exists): the bridge is stopped meanwhile.
        marker = self.config["slow_marker"]
        if os.path.exists(marker):
            os.unlink(marker)
            await asyncio.sleep(60)
        await self._record(ctx)

    @on_message(r"^crash ")
    async def crash(self, ctx: Context, match) -> None:
        # Post (as the bot and as a ghost), then die by SIGKILL once: before the handled record and the
        # transaction's 200, as a power cut would.
        await self._record(ctx)
        await ctx.reply("crash reply")
        await self.bot.ghost("bob").send_text(ctx.room_id, "crash ghost")
        marker = self.config["crash_marker"]
        if os.path.exists(marker):
            os.unlink(marker)
            os.kill(os.getpid(), signal.SIGKILL)
'''


class Env:
    """The module's homeserver, bridge config, member and room."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.counts = base / "counts.tsv"
        self.crash_marker = base / "crash-once"
        self.slow_marker = base / "slow-once"
        self.config = base / "bridge.yaml"
        self.registration = base / "registration.yaml"
        self.server: SynapseServer
        self.member: Member
        self.room = ""
        self.as_port = free_port()
        self.runs = 0

    def write_config(self, homeserver: str) -> None:
        plugins = self.base / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "asbridge.py").write_text(textwrap.dedent(PLUGIN))
        data = {
            "homeserver": homeserver,
            "user_id": "@bridgebot:localhost",
            "data_dir": str(self.base / "data"),
            "pickle_key": "appservice-test-pickle-key-0123456789",
            "invites": {"accept_from": ["@*:localhost"]},
            "plugin_dirs": [str(plugins)],
            "plugins": {
                "ping": {},
                "asbridge": {
                    "path": str(self.counts),
                    "crash_marker": str(self.crash_marker),
                    "slow_marker": str(self.slow_marker),
                },
            },
            "appservice": {"id": AS_ID, "port": self.as_port, "ghost_prefix": "irc_"},
        }
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def bot(self) -> BotProcess:
        """The bridge as ``ratchet run``, logging to a file of its own (``run_ready`` counts its "synced;" lines)."""
        self.runs += 1
        return BotProcess(self.config, self.base / f"bridge-{self.runs}.log")

    def all_logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.base.glob("bridge-*.log")))

    def as_token(self) -> str:
        return yaml.safe_load(self.registration.read_text())["as_token"]

    def hs_token(self) -> str:
        return yaml.safe_load(self.registration.read_text())["hs_token"]

    def synapse_retries(self) -> int:
        """How many times Synapse re-sent a transaction it could not deliver (its recoverer's log lines)."""
        return self.server.log_path.read_text().count("Retrying transaction") if self.server.log_path.exists() else 0

    def lines(self) -> list[list[str]]:
        return [line.split("\t") for line in self.counts.read_text().splitlines()] if self.counts.exists() else []


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("appservice")
    e = Env(base)
    hs_port = free_port()
    e.write_config(f"http://127.0.0.1:{hs_port}")
    e.server = await appservice_synapse(base / "hs", hs_port, e.config, e.registration)
    e.server.start()
    try:
        user = e.server.register_user("member", "member-password-1")
        e.member = await Member.login(e.server.url, user, base / "member")
        bot = await e.bot().run_ready()
        e.room = await e.member.create_room(invite=["@bridgebot:localhost"], encrypted=False)
        await e.member.wait_joined(e.room, "@bridgebot:localhost")
        await bot.stop()
        yield e
    finally:
        if getattr(e, "member", None) is not None:
            await e.member.close()
        e.server.stop()


def _request(method: str, url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_registration_file_and_tokens_are_private(env):
    reg = yaml.safe_load(env.registration.read_text())
    assert reg["id"] == AS_ID and reg["sender_localpart"] == "bridgebot"
    assert reg["url"] == f"http://127.0.0.1:{env.as_port}"
    assert reg["namespaces"]["users"] == [{"exclusive": True, "regex": "@irc_[^:]+:localhost"}]
    assert reg["de.sorunome.msc2409.push_ephemeral"] is True and reg["org.matrix.msc3202"] is True
    assert reg["io.element.msc4190"] is True
    tokens_file = env.base / "data" / "appservice-tokens.json"
    for path in (env.registration, tokens_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(tokens_file.read_text()) == {"as_token": reg["as_token"], "hs_token": reg["hs_token"]}
    # Written again: the same tokens (the running bot and the homeserver keep agreeing).
    again = env.base / "again.yaml"
    subprocess.run(
        [sys.executable, "-m", "bot", "appservice", "registration", "-c", str(env.config), "-o", str(again)],
        check=True, capture_output=True, timeout=60,
    )
    assert yaml.safe_load(again.read_text()) == reg
    # Secrets never reach the bridge's log.
    log = env.all_logs()
    assert "synced; appservice mode" in log
    assert reg["as_token"] not in log and reg["hs_token"] not in log


async def test_ping_through_a_transaction_is_answered_once(env):
    bot = await env.bot().run_ready()
    try:
        event_id = await env.member.send(env.room, "!ping")
        reply = await env.member.expect_reply(env.room, event_id, sender="@bridgebot:localhost")
        assert "pong" in reply.body
        await asyncio.sleep(1.0)
        replies = [
            e for e in env.member.messages(env.room, "@bridgebot:localhost")
            if (e.source["content"].get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id") == event_id
        ]
        assert len(replies) == 1
        assert "synced; appservice mode" in bot.log_text()
        assert "appservice self-test: the homeserver reached us" in bot.log_text()
    finally:
        assert await bot.stop() == 0


async def test_ghost_registered_lazily_named_and_posting_as_itself(env):
    bot = await env.bot().run_ready()
    try:
        first = await env.member.send(env.room, "ghost alice hello from irc")
        reply = await env.member.expect_reply(env.room, first, sender="@irc_alice:localhost")
        assert reply.body.endswith("hello from irc")
        await env.member.wait_for(
            lambda: (room := env.member.client.rooms.get(env.room)) is not None
            and room.user_name("@irc_alice:localhost") == "Alice (IRC)",
            30, "the ghost's display name",
        )
        second = await env.member.send(env.room, "ghost alice again")
        await env.member.expect_reply(env.room, second, sender="@irc_alice:localhost")
        # The display name was set once: one join and one rename, nothing for the second message.
        members = [
            e for r, e in env.member.events
            if r == env.room
            and e.source.get("type") == "m.room.member"
            and e.source.get("state_key") == "@irc_alice:localhost"
        ]
        assert len(members) == 2, [m.source["content"] for m in members]
        assert "registered ghost @irc_alice:localhost" in bot.log_text()
    finally:
        assert await bot.stop() == 0


async def test_a_ghost_invited_to_a_room_joins(env):
    bot = await env.bot().run_ready()
    try:
        room = await env.member.create_room(encrypted=False)
        resp = await env.member.client.room_invite(room, "@irc_carol:localhost")
        assert not hasattr(resp, "status_code"), resp
        await env.member.wait_joined(room, "@irc_carol:localhost")
    finally:
        assert await bot.stop() == 0


async def test_kill_9_mid_transaction_is_retried_and_nothing_is_posted_twice(env):
    env.crash_marker.write_text("1")
    bot = env.bot()
    await bot.run_ready()
    retries = env.synapse_retries()
    crash = await env.member.send(env.room, "crash now")
    await until(lambda: bot.proc.poll() is not None, 30, "the bridge to kill itself")
    assert bot.proc.returncode == -9
    assert not env.crash_marker.exists()
    # Restarted: Synapse sends the transaction again (the start-up ping makes it retry at once).
    await bot.run_ready()
    try:
        after = await env.member.send(env.room, "count after the crash")
        await until(lambda: any(line[0] == after for line in env.lines()), 30, "the next message")
        await asyncio.sleep(1.5)
        runs = [line for line in env.lines() if line[0] == crash]
        assert len(runs) == 2, runs  # handled again after the kill...
        replies = [e for e in env.member.messages(env.room, "@bridgebot:localhost") if e.body.endswith("crash reply")]
        ghosts = [e for e in env.member.messages(env.room, "@irc_bob:localhost") if e.body == "crash ghost"]
        assert len(replies) == 1 and len(ghosts) == 1  # ...but posted once: same transaction ids
        assert env.synapse_retries() > retries  # the killed transaction came again
    finally:
        assert await bot.stop() == 0


async def test_stopped_mid_transaction_answers_503_and_the_retry_handles_it_once(env):
    env.slow_marker.write_text("1")
    bot = env.bot()
    await bot.run_ready()
    retries = env.synapse_retries()
    slow = await env.member.send(env.room, "slow one")
    await until(lambda: not env.slow_marker.exists(), 30, "the slow handler to start")
    started = asyncio.get_running_loop().time()
    assert await bot.stop() == 0  # SIGTERM: the handler is cut short after the grace, the transaction gets a 503
    assert asyncio.get_running_loop().time() - started < 10
    assert "transaction" in bot.log_text() and "not completely handled (the bot is stopping)" in bot.log_text()
    assert not any(line[0] == slow for line in env.lines())
    assert "received code=503" in env.server.log_path.read_text()  # Synapse saw the 503 and keeps the transaction
    await bot.run_ready()
    try:
        await until(lambda: any(line[0] == slow for line in env.lines()), 30, "the retried transaction")
        await asyncio.sleep(1.0)
        assert [line[0] for line in env.lines()].count(slow) == 1
        assert env.synapse_retries() > retries
    finally:
        assert await bot.stop() == 0


async def test_downtime_then_restart_delivers_everything_once_in_order(env):
    bot = env.bot()
    before, retries = len(env.lines()), env.synapse_retries()
    sent = [await env.member.send(env.room, f"count offline-{i}") for i in range(3)]
    await asyncio.sleep(1.0)  # Synapse fails to deliver and backs off
    await bot.run_ready()
    try:
        await until(lambda: len(env.lines()) >= before + 3, 40, "the offline messages")
        await asyncio.sleep(1.0)
        new = env.lines()[before:]
        assert [line[0] for line in new] == sent
        assert env.synapse_retries() > retries  # delivered by Synapse's retries, not by a sync
        # Another restart hands nothing again.
        assert await bot.stop() == 0
        await bot.run_ready()
        last = await env.member.send(env.room, "count sentinel")
        await until(lambda: env.lines()[-1][0] == last, 30, "the sentinel")
        ids = [line[0] for line in env.lines() if not line[1].startswith("crash")]  # (a deliberate re-run there)
        assert len(ids) == len(set(ids))
    finally:
        assert await bot.stop() == 0


async def test_bad_requests_are_refused_and_logged_without_effect(env):
    bot = await env.bot().run_ready()
    url = f"http://127.0.0.1:{env.as_port}/_matrix/app/v1"
    forged = {
        "events": [
            {
                "type": "m.room.message",
                "room_id": env.room,
                "sender": "@member:localhost",
                "event_id": "$forged-by-test",
                "origin_server_ts": 1,
                "content": {"msgtype": "m.text", "body": "count forged"},
            }
        ]
    }
    body = json.dumps(forged).encode()
    try:
        before = len(env.lines())
        assert _request("PUT", f"{url}/transactions/t1", body, token="wrong-token")[0] == 403
        assert _request("PUT", f"{url}/transactions/t1", body)[0] == 401
        status, answer = _request("PUT", f"{url}/transactions/t2", b"{not json", token=env.hs_token())
        assert (status, answer["errcode"]) == (400, "M_NOT_JSON")
        status, answer = _request("PUT", f"{url}/transactions/t3", b'{"events": {}}', token=env.hs_token())
        assert (status, answer["errcode"]) == (400, "M_BAD_JSON")
        assert _request("GET", f"{url}/users/@irc_nobody:localhost", token=env.hs_token())[0] == 404
        await asyncio.sleep(0.5)
        assert len(env.lines()) == before
        log = bot.log_text()
        assert "appservice request refused: PUT /_matrix/app/v1/transactions/t1 -> 403 M_FORBIDDEN" in log
        assert "-> 401 M_UNAUTHORIZED" in log and "-> 400 M_NOT_JSON" in log and "-> 400 M_BAD_JSON" in log
        # A good transaction is handled once; the same id again is answered 200 without effect.
        assert _request("PUT", f"{url}/transactions/manual-1", body, token=env.hs_token()) == (200, {})
        assert _request("PUT", f"{url}/transactions/manual-1", body, token=env.hs_token()) == (200, {})
        await asyncio.sleep(0.5)
        assert [line[1] for line in env.lines()[before:]] == ["count forged"]
        assert "transaction manual-1 was handled already" in bot.log_text()
    finally:
        assert await bot.stop() == 0
    assert env.as_token() not in bot.log_text() and env.hs_token() not in bot.log_text()


async def test_a_transaction_arriving_in_pieces_is_read_whole(env):
    """Synapse's transactions of up to 100 events reach the bridge in several TCP segments; the body is read whole
    (it used to be cut at the first segment and refused as M_NOT_JSON until a retry happened to arrive at once)."""
    bot = await env.bot().run_ready()
    event = {
        "type": "m.room.message",
        "room_id": env.room,
        "sender": "@member:localhost",
        "event_id": "$in-pieces-by-test",
        "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": "count in pieces " + "x" * 3000},
    }
    body = json.dumps({"events": [event]}).encode()
    try:
        before = len(env.lines())
        reader, writer = await asyncio.open_connection("127.0.0.1", env.as_port)
        writer.write(
            f"PUT /_matrix/app/v1/transactions/pieces-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {env.hs_token()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for start in range(0, len(body), 1000):  # three pieces, each after a pause
            writer.write(body[start : start + 1000])
            await writer.drain()
            await asyncio.sleep(0.2)
        status_line = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
        assert status_line.split()[1] == b"200", status_line
        await asyncio.sleep(0.5)
        assert [line[1][:15] for line in env.lines()[before:]] == ["count in pieces"]
        assert "M_NOT_JSON" not in bot.log_text()
    finally:
        assert await bot.stop() == 0


async def test_synapse_ping_reaches_the_bridge(env):
    bot = await env.bot().run_ready()
    try:
        pings = bot.log_text().count("ping from the homeserver")
        url = f"{env.server.url}/_matrix/client/v1/appservice/{AS_ID}/ping"
        status, answer = _request("POST", url, json.dumps({"transaction_id": "t-ping"}).encode(), token=env.as_token())
        assert status == 200 and isinstance(answer["duration_ms"], int)
        await bot.wait_for_log("ping from the homeserver", 10, occurrences=pings + 1)
        status, answer = _request("POST", f"{env.server.url}/_matrix/client/v1/appservice/other/ping", b"{}",
                                  token=env.as_token())
        assert status == 403
    finally:
        assert await bot.stop() == 0
