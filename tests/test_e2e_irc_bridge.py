"""Issue 6 end to end: the IRC bridge between a real IRC server (miniircd on 127.0.0.1; ngircd, a production server,
for what operators met with one in issue 16) and an encrypted Matrix room on the real Synapse, with a raw IRC client
and a Matrix member (its own E2EE device) as the two peers."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import pytest

from bot.plugin.loader import import_plugin
from bot.testing.ircd import IrcClient, IrcServer, self_signed_pem
from bot.testing.ngircd import NgircdServer
from bot.testing.tools import require_tool

irc_connection = __import__(import_plugin("irc_bridge").__module__ + ".connection", fromlist=["IrcConnection"])

BRIDGE_NICK = "relay"
MINIIRCD_MISSING = "miniircd is not installed (pip install -e '.[dev]')"
NGIRCD_MISSING = "ngircd is not installed (apt-get install ngircd; .ci/run installs it)"


@pytest.fixture
def ircd(tmp_path):
    """A real IRC server; without miniircd the test is skipped, or fails under CI=true."""
    require_tool(IrcServer.available(), MINIIRCD_MISSING)
    server = IrcServer(tmp_path / "ircd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ngircd(tmp_path):
    """ngircd, a production IRC server; without it the test is skipped, or fails under CI=true."""
    require_tool(NgircdServer.available(), NGIRCD_MISSING)
    with NgircdServer(tmp_path / "ngircd") as server:
        yield server


def bridge_options(ircd: IrcServer | NgircdServer, channels: dict[str, str] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """The bridge's options for one network ``local`` on ``ircd``; without ``channels`` the key is left out (links
    made with ``!bridge link`` only: an empty mapping is a config error)."""
    local: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": ircd.port,
        "tls": False,
        "nick": BRIDGE_NICK,
        "ping_interval": 30,
    }
    if channels:
        local["channels"] = channels
    options: dict[str, Any] = {
        "networks": {"local": local},
        "reconnect_min_delay": 0.5,
        "reconnect_max_delay": 2.0,
        "rate_limit": 0,
    }
    options.update(extra)
    return options


def the_bridge(ratchet):
    return ratchet.bot.runtime.host.plugins["irc_bridge"].instance


async def until(condition, timeout: float = 20, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def body(event) -> str:
    return str(getattr(event, "body", "") or event.source.get("content", {}).get("body", ""))


def is_edit_of(event, event_id: str) -> bool:
    rel = event.source.get("content", {}).get("m.relates_to") or {}
    return rel.get("rel_type") == "m.replace" and rel.get("event_id") == event_id


@pytest.mark.both_engines  # the bridge's portals, message map and queue on SQLite and PostgreSQL
@pytest.mark.e2e
async def test_irc_and_encrypted_room_talk_with_names_edits_replies_and_no_echo(ratchet, ircd):
    alice = await ratchet.member("alice")
    await alice.client.set_displayname("Alice Liddell")
    squatter = await IrcClient.connect(ircd.port, BRIDGE_NICK)  # the bridge's nick is taken: it must pick another
    carol = await IrcClient.connect(ircd.port, "carol")
    await carol.join("#ratchet")
    room = await ratchet.room(
        plugins={"irc_bridge": bridge_options(ircd)}, member=alice, admins=[alice.user_id]
    )
    linked = await room.ask("!bridge link #ratchet")
    assert linked.body == "✅ Linked this room to local #ratchet.", linked.body
    joined = await carol.expect(lambda m: m.command == "JOIN" and m.nick.startswith(BRIDGE_NICK))
    nick = joined.nick
    assert nick == f"{BRIDGE_NICK}_"  # 433 -> append "_" and retry

    # Matrix -> IRC: the member's display name, HTML bold as an IRC bold code.
    first = await room.send("", content={
        "msgtype": "m.text", "body": "hello from **matrix**", "format": "org.matrix.custom.html",
        "formatted_body": "hello from <strong>matrix</strong>",
    })
    line = await carol.expect(lambda m: m.command == "PRIVMSG" and m.nick == nick)
    assert line.target == "#ratchet" and line.text == "<Alice Liddell> hello from \x02matrix\x02"

    # IRC -> Matrix: posted by the bot in the encrypted room with the nick in bold, the mention as a pill.
    await carol.say("#ratchet", "Alice Liddell: greetings from \x02irc\x02")
    greeting = await room.expect(lambda e: "greetings from irc" in body(e))
    assert greeting.decrypted, "the bridged message must be encrypted"
    assert greeting.body == "carol: Alice Liddell: greetings from irc"
    content = greeting.source["content"]
    assert content["msgtype"] == "m.text"
    assert content["formatted_body"].startswith("<strong>carol</strong>: ")
    assert f'<a href="https://matrix.to/#/{alice.user_id}">Alice Liddell</a>' in content["formatted_body"]
    assert "<strong>irc</strong>" in content["formatted_body"]
    assert content["m.mentions"] == {"user_ids": [alice.user_id]}

    # An edit on Matrix becomes s/old/new/ on IRC.
    await room.send("", content={
        "msgtype": "m.text", "body": "* hello from the matrix",
        "m.new_content": {"msgtype": "m.text", "body": "hello from the matrix"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": first},
    })
    edit = await carol.expect(lambda m: m.command == "PRIVMSG" and m.nick == nick and "s/" in m.text)
    assert edit.text == "<Alice Liddell> s/matrix/the matrix/"

    # A reply quotes the original's first words with its author's nick.
    await room.send("nice to meet you", reply_to=greeting.event_id)
    reply = await carol.expect(lambda m: m.command == "PRIVMSG" and "nice to meet you" in m.text)
    assert reply.text == "<Alice Liddell> nice to meet you (re @carol: Alice Liddell: greetings from irc)"

    # An IRC user's s/old/new/ edits their message in Matrix (the bot's own message, so it may).
    await carol.say("#ratchet", "s/greetings/hellos/")
    fixed = await room.expect(lambda e: is_edit_of(e, greeting.event_id))
    assert fixed.source["content"]["m.new_content"]["body"] == "carol: Alice Liddell: hellos from irc"

    # A reaction becomes a short line naming what was reacted to.
    await room.send("", event_type="m.reaction", content={
        "m.relates_to": {"rel_type": "m.annotation", "event_id": greeting.event_id, "key": "👍"},
    })
    reacted = await carol.expect(lambda m: m.command == "PRIVMSG" and "reacted" in m.text)
    assert reacted.text == '* Alice Liddell reacted 👍 to carol: "Alice Liddell: hellos from irc"'  # after the s///

    # A /me on IRC is an action in Matrix.
    await carol.action("#ratchet", "waves")
    waved = await room.expect(lambda e: body(e).endswith("carol waves"))
    assert waved.body == "* carol waves"

    # A long message is split on word boundaries into lines that fit IRC's 512 bytes, prefix included.
    words = [f"wörd{i}" for i in range(220)]
    await room.send(" ".join(words))
    await carol.expect(lambda m: m.command == "PRIVMSG" and m.text.endswith(words[-1]))
    parts = [m for m in carol.privmsgs("#ratchet", nick=nick) if "wörd" in m.text]
    assert len(parts) >= 3
    for part in parts:
        assert len(f":{part.raw.lstrip(':')}\r\n".encode()) <= 512
        assert part.text.startswith("<Alice Liddell> ")
    assert " ".join(p.text.removeprefix("<Alice Liddell> ") for p in parts).split() == words

    # No echo: each message exactly once on each side, none of the member's messages came back from the bot.
    await carol.say("#ratchet", "last one")
    await room.expect(lambda e: body(e) == "carol: last one")
    # Instead of a pause, a later message across in each direction: the bridge relays each side in order, so any
    # echo of the earlier messages would have crossed before these did.
    await room.send("sentinel from matrix")
    await carol.expect(lambda m: m.command == "PRIVMSG" and m.text == "<Alice Liddell> sentinel from matrix")
    await carol.say("#ratchet", "sentinel from irc")
    await room.expect(lambda e: body(e) == "carol: sentinel from irc")
    irc_texts = [m.text for m in carol.privmsgs("#ratchet", nick=nick)]
    assert irc_texts.count("<Alice Liddell> hello from \x02matrix\x02") == 1
    assert sum("nice to meet you" in t for t in irc_texts) == 1
    assert not any(t.startswith(("<carol", "carol")) or "last one" in t or "waves" in t for t in irc_texts)
    bot_bodies = [body(e) for e in room.bot_messages() if not is_edit_of(e, greeting.event_id)]
    assert bot_bodies.count("carol: Alice Liddell: greetings from irc") == 1
    assert bot_bodies.count("carol: last one") == 1
    assert not any("hello from" in b or "nice to meet" in b or "wörd" in b for b in bot_bodies), bot_bodies
    assert not any("sentinel from matrix" in b for b in bot_bodies), bot_bodies
    assert not [m for m in squatter.privmsgs()], "nothing was addressed to the squatter"
    assert alice.undecryptable(room.room_id) == []
    await carol.close()
    await squatter.close()


@pytest.mark.both_engines  # the bridge's portals, message map and queue on SQLite and PostgreSQL
@pytest.mark.e2e
async def test_irc_server_restart_reconnects_and_delivers_queued_messages_once_in_order(ratchet, ircd):
    dora = await ratchet.member("dora")
    await dora.client.set_displayname("Dora")
    room = await ratchet.room(plugins={"ping": {}}, member=dora)
    await ratchet.stop_bot()
    # A link from the config this time (a room id), restored at every start.
    await ratchet.start_bot(
        {"irc_bridge": bridge_options(ircd, channels={"#Restart": room.room_id})}, admins=[dora.user_id]
    )
    bridge = the_bridge(ratchet)
    supervisor = bridge.supervisors["local"]
    connection = bridge.irc["local"]
    await until(lambda: "#restart" in connection.joined, what="the bridge to join #restart")
    carol = await IrcClient.connect(ircd.port, "carol")
    await carol.join("#restart")
    await room.send("before the outage")
    await carol.expect(lambda m: m.command == "PRIVMSG" and m.text == "<Dora> before the outage")

    ircd.stop()
    await until(lambda: supervisor.state != "connected", what="the bridge to notice the outage")
    for i in range(1, 4):
        await room.send(f"during the outage {i}")
    await until(lambda: len(supervisor.queue) == 3, what="three queued messages")
    status = await room.ask("!bridge status")
    assert "local: " in status.body and "queue 3" in status.body and "#restart" in status.body, status.body
    ircd.start()
    carol2 = await IrcClient.connect(ircd.port, "carol")
    await until(lambda: supervisor.connected and not supervisor.queue, timeout=30, what="the queue to be flushed")
    await until(lambda: "#restart" in connection.joined, what="the bridge to rejoin")
    await carol2.join("#restart")

    # The server's own channel log: what reached #restart, across both server runs.
    relayed = [text for nick, text in ircd.channel_log("#restart") if nick == connection.nick or nick == BRIDGE_NICK]
    assert relayed == [
        "<Dora> before the outage",
        "<Dora> during the outage 1",
        "<Dora> during the outage 2",
        "<Dora> during the outage 3",
    ]
    # And both directions work again.
    await carol2.say("#restart", "back again")
    back = await room.expect(lambda e: body(e) == "carol: back again")
    assert back.decrypted
    await room.send("welcome back")
    await carol2.expect(lambda m: m.command == "PRIVMSG" and m.text == "<Dora> welcome back")

    status = await room.ask("!bridge status")
    assert "local: connected" in status.body and "queue 0" in status.body, status.body
    refused = await room.ask("!bridge unlink")
    assert "linked in the config file" in refused.body
    await carol.close()
    await carol2.close()


@pytest.mark.e2e
async def test_bridge_link_unlink_admin_only_joins_parts_and_private_messages(ratchet, ircd):
    admin = await ratchet.member("admin")
    room = await ratchet.room(
        plugins={"irc_bridge": bridge_options(ircd, relay_joins_parts=True, private_messages="admin_dm")},
        member=admin, admins=[admin.user_id],
    )
    bridge = the_bridge(ratchet)
    await until(lambda: bridge.supervisors["local"].connected, what="the IRC connection")

    # Only admins may link.
    other = await ratchet.member("other")
    await admin.client.room_invite(room.room_id, other.user_id)
    await other.client.join(room.room_id)
    await other.wait_joined(room.room_id, other.user_id)
    denied_id = await other.send(room.room_id, "!bridge link #elsewhere")
    denied = await other.expect_reply(room.room_id, denied_id, sender=room.bot_user_id)
    assert "admins only" in denied.body
    assert (await room.ask("!bridge link nochannel")).body.startswith("⚠️")

    assert (await room.ask("!irc link #side")).body == "✅ Linked this room to local #side."
    await until(lambda: "#side" in bridge.irc["local"].joined, what="the bridge to join #side")
    dave = await IrcClient.connect(ircd.port, "dave")
    await dave.join("#side")
    joined = await room.expect(lambda e: body(e) == "dave joined #side")
    assert joined.source["content"]["msgtype"] == "m.notice"
    await dave.say("#side", "hello side")
    await room.expect(lambda e: body(e) == "dave: hello side")

    # A private message to the bridge goes to the admins' DM with the bot.
    dave.send_raw(f"PRIVMSG {bridge.irc['local'].nick} :psst, a secret")
    await admin.wait_for(lambda: bool(admin.client.invited_rooms), 30, "the bot's DM invite")
    dm = next(iter(admin.client.invited_rooms))
    await admin.client.join(dm)
    pm = await admin.expect(
        lambda rid, e: rid == dm and "psst" in body(e), 30, "the forwarded private message"
    )
    assert pm.body == "IRC private message on local from dave: psst, a secret"

    unlinked = await room.ask("!bridge unlink #side")
    assert unlinked.body == "✅ Unlinked this room from local #side."
    await dave.expect(lambda m: m.command == "PART" and m.nick == bridge.irc["local"].nick)
    await dave.say("#side", "anyone?")
    # A later private message reaches the admins' DM: the bridge relays what IRC sends it in order, and the
    # admin's sync has every earlier bot message by then, so a relayed "anyone?" would already be seen.
    dave.send_raw(f"PRIVMSG {bridge.irc['local'].nick} :still there?")
    await admin.expect(lambda rid, e: rid == dm and "still there?" in body(e), 30, "the later private message")
    assert not [e for e in room.bot_messages() if "anyone?" in body(e)]
    assert (await room.ask("!bridge unlink")).body == "⚠️ This room is not linked."
    await dave.close()


# ------------------------------------------------------------------------------------------- without Matrix


def test_nick_fallbacks_and_case_folding():
    assert [irc_connection.next_nick("relay", n) for n in range(5)] == ["relay", "relay_", "relay__", "relay1",
                                                                      "relay2"]
    assert irc_connection.next_nick("x" * 30, 3, max_len=30) == "x" * 29 + "1"
    assert irc_connection.irc_lower("#Chan[1]") == "#chan{1}"
    assert irc_connection.clean_outgoing("\x01ACTION evil\x01 \x02ok\x02\x00") == "ACTION evil \x02ok\x02"


class ScriptedServer:
    """An IRC server that does CAP/SASL PLAIN by the book, recording what the client sent."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.received: list[str] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import base64

        nick = None
        try:
            while line := (await reader.readline()).decode().rstrip("\r\n"):
                self.received.append(line)
                out = []
                if line.startswith("CAP LS"):
                    out.append(":srv CAP * LS :multi-prefix sasl")
                elif line == "CAP REQ sasl" or line == "CAP REQ :sasl":
                    out.append(":srv CAP * ACK :sasl")
                elif line == "AUTHENTICATE PLAIN":
                    out.append("AUTHENTICATE +")
                elif line.startswith("AUTHENTICATE "):
                    _, user, password = base64.b64decode(line.split(" ", 1)[1]).split(b"\0")
                    ok = user == b"account" and password.decode() == self.password
                    out.append(":srv 903 * :SASL authentication successful" if ok else ":srv 904 * :SASL failed")
                elif line.startswith("NICK "):
                    nick = line.split()[1]
                elif line == "CAP END":
                    out.append(f":srv 001 {nick} :Welcome")
                for reply in out:
                    writer.write(reply.encode() + b"\r\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _connection(port: int, **kwargs: Any):
    return irc_connection.IrcConnection("test", host="127.0.0.1", port=port, nick="relay", **kwargs)


async def test_sasl_plain_through_the_library_state_machine():
    server = ScriptedServer("s3cret")
    port = await server.start()
    try:
        conn = _connection(port, tls=False, sasl_username="account", sasl_password="s3cret")
        await asyncio.wait_for(conn.connect(), 10)
        assert conn.nick == "relay"
        sent = server.received
        assert sent[0] == "CAP LS"  # before NICK/USER, so registration waits for SASL
        assert sent.index("AUTHENTICATE PLAIN") < sent.index("CAP END")
        assert not any(line.startswith("PASS") for line in sent)  # the SASL password is not sent as PASS
        await conn.close()

        wrong = _connection(port, tls=False, sasl_username="account", sasl_password="wrong")
        with pytest.raises(ConnectionError, match="login failed"):
            await asyncio.wait_for(wrong.connect(), 10)
        await wrong.close()
    finally:
        await server.stop()


async def test_tls_with_and_without_certificate_checks(tmp_path):
    require_tool(IrcServer.available(), MINIIRCD_MISSING)
    pem = self_signed_pem(tmp_path / "ircd.pem")
    with IrcServer(tmp_path / "tls", ssl_pem=pem) as ircd:
        trusting = _connection(ircd.port, tls=True, tls_verify=False)
        await asyncio.wait_for(trusting.connect(), 10)
        assert trusting.connected
        await trusting.close()
        checking = _connection(ircd.port, tls=True, tls_verify=True)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(checking.connect(), 10)
        await checking.close()


# ------------------------------------------------------------------------------------------- hostile IRC users
# (issue 12, finding 7: mentions capped, per-sender flood limit, nick reuse cannot edit someone else's message)


def bot_lines(room, *, since: int = 0) -> list[str]:
    return [body(e) for e in room.bot_messages()[since:]]


@pytest.mark.e2e
async def test_one_irc_line_naming_60_members_mentions_at_most_max_mentions(ratchet, ircd, new_user):
    import aiohttp

    alice = await ratchet.member("alice")
    room = await ratchet.room(plugins={"irc_bridge": bridge_options(ircd)}, member=alice, admins=[alice.user_id])
    resp = await alice.client.room_put_state(room.room_id, "m.room.join_rules", {"join_rule": "public"})
    assert type(resp).__name__ == "RoomPutStateResponse", resp
    names = [f"n{i:02d}" for i in range(60)]
    users = [await asyncio.to_thread(new_user, f"crowd{i:02d}", displayname=name) for i, name in enumerate(names)]
    async with aiohttp.ClientSession() as http:
        for user in users:
            async with http.post(f"{user.homeserver}/_matrix/client/v3/join/{room.room_id}",
                                 headers={"Authorization": f"Bearer {user.access_token}"}, json={}) as answer:
                assert answer.status == 200, await answer.text()
    bridge = the_bridge(ratchet)
    await until(lambda: len(bridge.matrix.members(room.room_id)) >= 62, 60, "the bot to see the 60 members")
    assert (await room.ask("!bridge link #crowd")).body.startswith("✅")
    await until(lambda: "#crowd" in bridge.irc["local"].joined, what="the bridge to join #crowd")

    mallory = await IrcClient.connect(ircd.port, "mallory")
    await mallory.join("#crowd")
    line = "wake up " + " ".join(f"@{name}" for name in names)
    await mallory.say("#crowd", line)
    event = await room.expect(lambda e: "wake up" in body(e))
    content = event.source["content"]
    cap = 10  # max_mentions' default
    mentioned = content["m.mentions"]["user_ids"]
    assert len(mentioned) == cap, mentioned
    assert set(mentioned) == {u.user_id for u in users[:cap]}  # the first names, in order
    pills = content["formatted_body"].count('href="https://matrix.to/#/@')
    assert pills == cap, content["formatted_body"]
    assert event.body == f"mallory: {line}"  # every name still there, as text
    assert "@n59" in content["formatted_body"] and "@n10" in content["formatted_body"]
    assert bridge.config.max_mentions == cap
    await mallory.close()


@pytest.mark.e2e
async def test_a_flooding_irc_user_is_rate_limited_with_one_notice_per_flood(ratchet, ircd, caplog):
    import logging

    caplog.set_level(logging.INFO, "ratchet")
    room = await ratchet.room(plugins={"irc_bridge": bridge_options(
        ircd, channels={}, sender_rate_limit=1.0, sender_rate_burst=5,
    )})
    await ratchet.stop_bot()
    await ratchet.start_bot({"irc_bridge": bridge_options(
        ircd, channels={"#flood": room.room_id}, sender_rate_limit=1.0, sender_rate_burst=5,
    )})
    bridge = the_bridge(ratchet)
    await until(lambda: "#flood" in bridge.irc["local"].joined, what="the bridge to join #flood")
    mallory = await IrcClient.connect(ircd.port, "mallory")
    carol = await IrcClient.connect(ircd.port, "carol")
    await mallory.join("#flood")
    await carol.join("#flood")

    started = time.monotonic()
    for i in range(40):
        mallory.send_raw(f"PRIVMSG #flood :flood line {i}")
    await mallory.say("#flood", "flood line 40")
    # Another IRC user is not held back by mallory's flood.
    await carol.say("#flood", "carol is fine")
    await room.expect(lambda e: body(e) == "carol: carol is fine")
    elapsed = time.monotonic() - started
    lines = bot_lines(room)
    relayed = [b for b in lines if b.startswith("mallory: flood line")]
    assert 5 <= len(relayed) <= 5 + int(elapsed) + 1, (len(relayed), elapsed)
    numbers = [int(b.rsplit(" ", 1)[1]) for b in relayed]
    assert numbers[:5] == [0, 1, 2, 3, 4] and numbers == sorted(numbers), numbers  # the first ones, in order
    notices = [e for e in room.bot_messages() if "sending too fast" in body(e)]
    assert len(notices) == 1 and notices[0].source["content"]["msgtype"] == "m.notice", lines
    assert notices[0].body == "⚠️ mallory is sending too fast: their messages are not relayed until they slow down."
    warnings = [r for r in caplog.records if "sending faster than" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert bridge._senders.dropped == 41 - len(relayed)
    assert f"incoming: {41 - len(relayed)} dropped" in bridge.status_text()

    # After a pause long enough for the bucket to fill up (5 lines at 1 per second), mallory is relayed again and
    # the end of the flood is logged with its count.
    await asyncio.sleep(5.5)
    await mallory.say("#flood", "calm again")
    await room.expect(lambda e: body(e) == "mallory: calm again")
    ended = [r.getMessage() for r in caplog.records if "stopped flooding" in r.getMessage()]
    assert ended == [f"local mallory stopped flooding: {41 - len(relayed)} of their messages were not relayed"]
    await mallory.close()
    await carol.close()


@pytest.mark.e2e
async def test_whoever_takes_a_departed_nick_cannot_edit_their_last_message(ratchet, ircd):
    room = await ratchet.room(plugins={"ping": {}})
    await ratchet.stop_bot()
    await ratchet.start_bot({"irc_bridge": bridge_options(ircd, channels={"#nicks": room.room_id})})
    bridge = the_bridge(ratchet)
    await until(lambda: "#nicks" in bridge.irc["local"].joined, what="the bridge to join #nicks")
    mallory = await IrcClient.connect(ircd.port, "mallory")
    await mallory.join("#nicks")

    def edits_of(event_id: str) -> list:
        return [e for e in room.bot_messages() if is_edit_of(e, event_id)]

    async def relayed(text: str):
        return await room.expect(lambda e: body(e) == text)

    # QUIT: carol leaves the network, mallory takes "carol" and tries s/// on carol's message.
    carol = await IrcClient.connect(ircd.port, "carol")
    await carol.join("#nicks")
    await carol.say("#nicks", "hello everyone")
    carols = await relayed("carol: hello everyone")
    await carol.close()  # QUIT
    await mallory.expect(lambda m: m.command == "QUIT" and m.nick == "carol")
    mallory.send_raw("NICK carol")
    await mallory.expect(lambda m: m.command == "NICK" and m.text == "carol")
    await mallory.say("#nicks", "s/hello/I hate/")
    await relayed("carol: s/hello/I hate/")  # shown as text, not applied

    # NICK: dave renames himself, mallory takes "dave".
    dave = await IrcClient.connect(ircd.port, "dave")
    await dave.join("#nicks")
    await dave.say("#nicks", "dave was here")
    daves = await relayed("dave: dave was here")
    dave.send_raw("NICK dave_away")
    await dave.expect(lambda m: m.command == "NICK" and m.text == "dave_away")
    mallory.send_raw("NICK dave")
    await mallory.expect(lambda m: m.command == "NICK" and m.text == "dave")
    await mallory.say("#nicks", "s/here/never here/")
    await relayed("dave: s/here/never here/")

    # PART: erin leaves the channel, then renames herself where the bridge cannot see it; mallory takes "erin".
    erin = await IrcClient.connect(ircd.port, "erin")
    await erin.join("#nicks")
    await erin.say("#nicks", "erin says hi")
    erins = await relayed("erin: erin says hi")
    erin.send_raw("PART #nicks :later")
    await erin.expect(lambda m: m.command == "PART")
    erin.send_raw("NICK erin_elsewhere")
    await erin.expect(lambda m: m.command == "NICK" and m.text == "erin_elsewhere")
    mallory.send_raw("NICK erin")
    await mallory.expect(lambda m: m.command == "NICK" and m.text == "erin")
    await mallory.say("#nicks", "s/hi/bye/")
    await relayed("erin: s/hi/bye/")

    # The rightful author still corrects their own message.
    frank = await IrcClient.connect(ircd.port, "frank")
    await frank.join("#nicks")
    await frank.say("#nicks", "a tset message")
    franks = await relayed("frank: a tset message")
    await frank.say("#nicks", "s/tset/test/")
    fixed = await room.expect(lambda e: is_edit_of(e, franks.event_id))
    assert fixed.source["content"]["m.new_content"]["body"] == "frank: a test message"
    for original in (carols, daves, erins):
        assert edits_of(original.event_id) == [], original.body
    for client in (mallory, dave, erin, frank):
        await client.close()


@pytest.mark.e2e
async def test_irc_passwords_are_masked_in_logs(ratchet, ircd):
    import base64
    import socket

    from bot.log import mask

    with socket.socket() as sock:  # a port nobody listens on: that network never connects, which is fine here
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    options = bridge_options(ircd)
    options["networks"]["local"]["password"] = "server-pass-1f9e3a"
    options["networks"]["other"] = {"host": "127.0.0.1", "port": closed_port, "tls": False,
                                    "sasl_username": "relay", "sasl_password": "sasl-pass-77c0d4"}
    await ratchet.room(plugins={"irc_bridge": options})
    sasl_plain = base64.b64encode(b"\0relay\0sasl-pass-77c0d4").decode()
    assert mask("PASS server-pass-1f9e3a") == "PASS [redacted]"
    assert mask("sasl: sasl-pass-77c0d4") == "sasl: [redacted]"
    assert mask(f"AUTHENTICATE {sasl_plain}") == "AUTHENTICATE [redacted]"  # the irc library logs raw lines at DEBUG
    assert "sasl-pass" not in repr(the_bridge(ratchet).config)


def _kept_messages(db_path) -> int | None:
    """Messages in the bridge's stored outgoing queue not sent yet (None: there is no such table)."""
    import sqlite3

    if not db_path.exists():
        return 0
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM ratchet_bridge_outbox WHERE done = 0").fetchone()[0]
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


@pytest.mark.both_engines  # the bridge's portals, message map and queue on SQLite and PostgreSQL
@pytest.mark.e2e
@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
async def test_queued_messages_survive_a_sigterm_and_reach_irc_once_in_order(ratchet, ircd, tmp_path, how):
    """Issue 13 part 3: IRC down, three messages queued (one of three lines), the bot stopped with SIGTERM (or
    killed) and started again, then IRC back: every line reaches the channel once, in order, before what was said
    after the restart."""
    from bot.storage.plugin_storage import plugin_db_path
    from bot.testing.harness import BotProcess, write_bot_config

    dora = await ratchet.member("dora")
    await dora.client.set_displayname("Dora")
    room = await ratchet.room(plugins={"ping": {}}, member=dora)
    await ratchet.stop_bot()
    data_dir = ratchet.tmp_path / "bot-data"
    config = write_bot_config(
        tmp_path / "bridge-bot.yaml", server=ratchet.synapse, user=ratchet.bot_user, data_dir=data_dir,
        pickle_key=ratchet._pickle_key, plugins={"irc_bridge": bridge_options(ircd, channels={"#paste": room.room_id})},
    )
    db_path = plugin_db_path(data_dir, "irc_bridge")
    proc = BotProcess(config, tmp_path / "bridge-bot.log")
    carol = await IrcClient.connect(ircd.port, "carol")
    await carol.join("#paste")
    try:
        await proc.run_ready()
        await carol.expect(lambda m: m.command == "JOIN" and m.nick.startswith(BRIDGE_NICK), timeout=30)
        await room.send("before the outage")
        await carol.expect(lambda m: m.command == "PRIVMSG" and m.text == "<Dora> before the outage")

        ircd.stop()
        await proc.wait_for_log("local: disconnected", timeout=30)
        await room.send("queued one")
        await room.send("queued two, first line\nqueued two, second line\nqueued two, third line")
        await room.send("queued three")
        await until(lambda: _kept_messages(db_path) in (3, None), what="three messages kept")
        if _kept_messages(db_path) is None:
            await asyncio.sleep(5)  # nothing to look at (no stored queue): give the bot time to handle the messages
        if how == "sigterm":
            assert await proc.stop() == 0
            assert "queued messages were not sent before stopping" not in proc.log_text()
            assert "local: 3 queued messages are kept" in proc.log_text()
        else:
            proc.kill()  # no chance to save anything: what is kept was stored when queued

        await proc.run_ready()
        await room.send("after the restart")
        await asyncio.sleep(1)
        ircd.start()
        carol2 = await IrcClient.connect(ircd.port, "carol")
        await carol2.join("#paste")
        expected = [
            "<Dora> before the outage",
            "<Dora> queued one",
            "<Dora> queued two, first line",
            "<Dora> queued two, second line",
            "<Dora> queued two, third line",
            "<Dora> queued three",
            "<Dora> after the restart",
        ]

        def relayed() -> list[str]:
            return [text for nick, text in ircd.channel_log("#paste") if nick != "carol"]

        await until(lambda: len(relayed()) >= len(expected), timeout=40, what="the kept messages on IRC")
        await asyncio.sleep(2)  # anything sent twice would show up now
        assert relayed() == expected
        await until(lambda: _kept_messages(db_path) == 0, what="the stored queue to be emptied")
        await carol2.close()
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            await proc.stop()
        await carol.close()


@pytest.mark.e2e
async def test_a_paste_cut_by_a_sigterm_is_finished_after_the_restart_without_repeating_lines(ratchet, ircd, tmp_path):
    """A multi-line paste still being paced out (rate_limit) when the bot gets SIGTERM: after the restart the lines
    not sent yet follow, and no line is sent twice."""
    from bot.testing.harness import BotProcess, write_bot_config

    erin = await ratchet.member("erin")
    await erin.client.set_displayname("Erin")
    room = await ratchet.room(plugins={"ping": {}}, member=erin)
    await ratchet.stop_bot()
    options = bridge_options(ircd, channels={"#pace": room.room_id}, rate_limit=2.0, rate_burst=1)
    config = write_bot_config(
        tmp_path / "pace-bot.yaml", server=ratchet.synapse, user=ratchet.bot_user,
        data_dir=ratchet.tmp_path / "bot-data", pickle_key=ratchet._pickle_key, plugins={"irc_bridge": options},
    )
    proc = BotProcess(config, tmp_path / "pace-bot.log")
    carol = await IrcClient.connect(ircd.port, "carol")
    await carol.join("#pace")
    lines = [f"paste line {i}" for i in range(1, 9)]
    try:
        await proc.run_ready()
        await carol.expect(lambda m: m.command == "JOIN" and m.nick.startswith(BRIDGE_NICK), timeout=30)
        await room.send("\n".join(lines))
        await carol.expect(lambda m: m.command == "PRIVMSG" and m.text == "<Erin> paste line 2", timeout=20)
        assert await proc.stop() == 0  # SIGTERM, half-way through the paste
        cut_at = len(carol.privmsgs("#pace"))
        assert 2 <= cut_at < len(lines), cut_at
        await proc.run_ready()

        def relayed() -> list[str]:
            return [text for nick, text in ircd.channel_log("#pace") if nick != "carol"]

        await until(lambda: len(relayed()) >= len(lines), timeout=40, what="the rest of the paste")
        await asyncio.sleep(2)  # a line sent twice would show up now
        assert relayed() == [f"<Erin> {line}" for line in lines]
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            await proc.stop()
        await carol.close()


# ------------------------------------------------------------------------------------------- operators (issue 16)
# What operators ran into with a production IRC server (ngircd): a TLS/plain-text mismatch, !bridge status, aliases.


@pytest.mark.e2e
async def test_status_with_ngircd_groups_networks_names_aliases_and_a_tls_mismatch(ratchet, ngircd, caplog):
    """One network right (plain text), one with ``tls: true`` on ngircd's plain-text port: that one fails within
    seconds with an ERROR naming it, host:port and the hint (ngircd itself would keep the handshake open for 20s);
    ``!bridge status`` groups both networks with their links (by alias), and its outage clock does not restart with
    every attempt."""
    import logging

    caplog.set_level(logging.INFO)
    alice = await ratchet.member("alice")
    room = await ratchet.room(plugins={"ping": {}}, member=alice, admins=[alice.user_id])
    server = alice.user_id.split(":", 1)[1]
    alias = f"#ops-{time.time_ns() % 10**9}:{server}"
    resp = await alice.client.room_put_alias(alias, room.room_id)
    assert type(resp).__name__ == "RoomPutAliasResponse", resp
    options = bridge_options(ngircd, channels={"#ops": alias})
    options["networks"]["wrongtls"] = {"host": "127.0.0.1", "port": ngircd.port, "tls": True, "nick": "relay2",
                                       "channels": {"#tls": room.room_id}}
    await ratchet.stop_bot()
    await ratchet.start_bot({"irc_bridge": options}, admins=[alice.user_id])
    bridge = the_bridge(ratchet)
    wrong = bridge.supervisors["wrongtls"]
    await until(lambda: "#ops" in bridge.irc["local"].joined, what="the bridge to join #ops on ngircd")
    await until(lambda: "set tls: false" in (wrong.last_error or ""), timeout=15, what="the TLS mismatch")
    hint = "server does not speak TLS? set tls: false (or use its TLS port, often 6697)"
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and "TLS handshake" in r.getMessage()]
    assert errors == [
        f"wrongtls: TLS handshake with 127.0.0.1:{ngircd.port} failed: the server answers in plain text; {hint}"
    ], errors

    # Relaying works through ngircd on the right network.
    carol = await IrcClient.connect(ngircd.port, "carol")
    await carol.join("#ops")
    await room.send("hello ngircd")
    await carol.expect(lambda m: m.command == "PRIVMSG" and m.text.endswith("hello ngircd"))

    # The #tls link names its room by id in the config: status shows the room's canonical alias once it has one.
    resp = await alice.client.room_put_state(room.room_id, "m.room.canonical_alias", {"alias": alias})
    assert type(resp).__name__ == "RoomPutStateResponse", resp
    await until(lambda: bridge.matrix.room_alias(room.room_id) == alias, what="the bot to see the canonical alias")

    outage_began, attempts = wrong.since, wrong.backoff.attempts
    await until(lambda: wrong.backoff.attempts >= attempts + 2, timeout=20, what="two more attempts")
    assert wrong.since == outage_began  # the outage clock runs from the first failure, not from the last retry
    status = (await room.ask("!bridge status")).body
    lines = status.splitlines()
    at_local = next(i for i, line in enumerate(lines) if line.startswith("- local: connected ("))
    assert f"127.0.0.1:{ngircd.port} as {BRIDGE_NICK}, in 1 channel, queue 0" in lines[at_local], status
    assert lines[at_local + 1] == f"  - #ops ↔ {alias} (this room) [config]", status
    at_wrong = next(i for i, line in enumerate(lines) if line.startswith("- wrongtls: "))
    assert ", down for " in lines[at_wrong] and " attempts" in lines[at_wrong], status
    assert f"127.0.0.1:{ngircd.port} (TLS) as relay2" in lines[at_wrong], status
    assert lines[at_wrong].endswith(
        f"last error: TlsMismatchError: TLS handshake with 127.0.0.1:{ngircd.port} failed: plain-text IRC there; "
        f"{hint}"
    ), status
    assert lines[at_wrong + 1] == f"  - #tls ↔ {alias} (this room) [config]", status
    assert room.room_id not in status, status
    await carol.close()


@pytest.mark.e2e
async def test_a_config_link_whose_alias_does_not_exist_yet_comes_up_when_it_is_created(ratchet, ircd):
    """The alias of a config link does not exist at start: the link is retried (shown as such by ``!bridge status``)
    and comes up by itself once the alias is created, without a reload."""
    alice = await ratchet.member("alice")
    room = await ratchet.room(plugins={"ping": {}}, member=alice, admins=[alice.user_id])
    alias = f"#later-{time.time_ns() % 10**9}:{alice.user_id.split(':', 1)[1]}"
    await ratchet.stop_bot()
    await ratchet.start_bot({"irc_bridge": bridge_options(ircd, channels={"#later": alias})}, admins=[alice.user_id])
    bridge = the_bridge(ratchet)
    await until(lambda: bridge.supervisors["local"].connected, what="the bridge to connect")
    assert ("local", "#later") in bridge.pending_links and not bridge.portals
    await until(lambda: bridge.pending_links[("local", "#later")].attempts >= 2, what="a retry")
    status = bridge.status_text()
    assert f"  - #later ↔ {alias}: not linked yet, retrying (" in status and "not found" in status, status
    carol = await IrcClient.connect(ircd.port, "carol")
    await carol.join("#later")

    resp = await alice.client.room_put_alias(alias, room.room_id)
    assert type(resp).__name__ == "RoomPutAliasResponse", resp
    await carol.expect(lambda m: m.command == "JOIN" and m.nick == BRIDGE_NICK and m.target.lower() == "#later")
    assert bridge.portals[("local", "#later")].room_id == room.room_id and not bridge.pending_links
    await carol.say("#later", "it exists now")
    relayed = await room.expect(lambda e: body(e) == "carol: it exists now")
    assert relayed.decrypted
    status = (await room.ask("!bridge status")).body
    assert f"  - #later ↔ {alias} (this room) [config]" in status and room.room_id not in status, status
    await carol.close()
