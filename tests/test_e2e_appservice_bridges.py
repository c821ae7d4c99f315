"""Bridges in appservice mode (issue 16, item 3), end to end: a real Synapse that loads the registration written by
``ratchet appservice registration``, a real IRC server (ngircd, which has channel operators, kicks and bans), raw IRC
clients as the IRC users and a Matrix member with its own client. What is checked is what each side sees: IRC users
as ghosts with their nicks as display names (three of them talking as three distinct Matrix users), a nick change
renaming the ghost, a Matrix reply to a ghost reaching IRC addressed to that nick, joins, parts, quits, kicks and bans
as memberships both ways (where the bridge has the power, and a notice where it has not), the member list at join
bounded by ``ghost_sync_limit``, a webhook posting as its own ghost, and in an encrypted room (the appservice's
encryption on: each ghost encrypts with a device of its own) the same ghosts, decrypted by the member and by Element's
stack (the js peer).

One Synapse, one bridge (in this process: its state is inspected) and one room for the module; the tests run in
order, each building on the channel the previous one left.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from appservice_support import appservice_synapse, free_port, until
from nio import MegolmEvent

from bot.testing.harness import InProcessBot
from bot.testing.ircd import IrcClient
from bot.testing.member import Member
from bot.testing.ngircd import NgircdServer
from bot.testing.synapse import SynapseServer
from bot.testing.tools import require_tool

pytestmark = [pytest.mark.e2e]

BOT = "@bridgebot:localhost"
CHANNEL = "#ghosts"
SECRET = "#secret"
HOOK_SECRET = "hook-secret-0123456789abcdef"


def ghost(nick: str) -> str:
    return f"@irc_{nick}:localhost"


class Env:
    """The module's homeserver, IRC server, bridge, member and room."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "bridge.yaml"
        self.registration = base / "registration.yaml"
        self.as_port = free_port()
        self.hook_port = free_port()
        self.server: SynapseServer
        self.ircd: NgircdServer
        self.member: Member
        self.bot: InProcessBot | None = None
        self.room = ""
        self.secret_room = ""
        self.irc: dict[str, IrcClient] = {}

    def write_config(self, homeserver: str, plugins: dict | None = None) -> None:
        appservice: dict = {"id": "ratchet-bridges", "port": self.as_port, "ghost_prefix": "irc_"}
        data = {
            "homeserver": homeserver,
            "user_id": BOT,
            "data_dir": str(self.base / "data"),
            "pickle_key": "appservice-bridges-pickle-key-0123456789",
            "invites": {"accept_from": ["@*:localhost"]},
            "plugins": plugins or {"ping": {}},
            "appservice": appservice,
        }
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def bridge_plugins(self) -> dict:
        return {
            "irc_bridge": {
                "networks": {
                    "local": {
                        "host": "127.0.0.1",
                        "port": self.ircd.port,
                        "tls": False,
                        "nick": "relay",
                        "ping_interval": 30,
                        "channels": {CHANNEL: self.room, SECRET: self.secret_room},
                    }
                },
                "reconnect_min_delay": 0.5,
                "reconnect_max_delay": 2.0,
                "rate_limit": 0,
                "ghost_sync_limit": 2,
            },
            "webhooks": {
                "port": self.hook_port,
                "hooks": {
                    "ci": {"room": self.room, "secret": HOOK_SECRET, "ghost": "hook.ci", "display_name": "CI"},
                },
            },
        }

    def bridge(self):
        assert self.bot is not None and self.bot.runtime is not None
        return self.bot.runtime.host.plugins["irc_bridge"].instance

    # -- what the member sees -----------------------------------------------------------------------------------

    def display_name(self, user_id: str) -> str | None:
        room = self.member.client.rooms.get(self.room)
        user = room.users.get(user_id) if room is not None else None
        return user.display_name if user is not None else None

    def joined(self, user_id: str) -> bool:
        room = self.member.client.rooms.get(self.room)
        return bool(room and user_id in room.users and user_id not in room.invited_users)

    def memberships(self, user_id: str) -> list[dict]:
        """The m.room.member events about ``user_id`` the member has seen, oldest first (sender folded in)."""
        return [
            dict(e.source["content"], sender=e.sender)
            for r, e in self.member.events
            if r == self.room and e.source.get("type") == "m.room.member" and e.source.get("state_key") == user_id
        ]

    async def message_from(self, sender: str, body: str, timeout: float = 30):
        return await self.member.expect(
            lambda r, e: r == self.room and e.sender == sender and getattr(e, "body", None) == body,
            timeout, f"{body!r} from {sender}",
        )


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    require_tool(NgircdServer.available(), "ngircd is not installed (apt-get install ngircd; .ci/run installs it)")
    base = tmp_path_factory.mktemp("appservice-bridges")
    e = Env(base)
    hs_port = free_port()
    e.write_config(f"http://127.0.0.1:{hs_port}")
    e.server = await appservice_synapse(base / "hs", hs_port, e.config, e.registration, encryption=True)
    e.ircd = NgircdServer(base / "ngircd")
    e.server.start()
    e.ircd.start()
    try:
        user = e.server.register_user("member", "member-password-1")
        e.member = await Member.login(e.server.url, user, base / "member")
        e.room = await e.member.create_room(invite=[BOT], encrypted=False)
        e.secret_room = await e.member.create_room(invite=[BOT], encrypted=True)
        # The bridge bot may kick and ban in the room (what IRC kicks and bans are mapped to).
        levels = await e.member.client.room_get_state_event(e.room, "m.room.power_levels")
        content = dict(levels.content)
        content["users"] = dict(content.get("users", {}), **{BOT: 100})
        await e.member.client.room_put_state(e.room, "m.room.power_levels", content)
        e.write_config(e.server.url, e.bridge_plugins())
        yield e
    finally:
        for client in e.irc.values():
            await client.close()
        if e.bot is not None:
            await e.bot.stop()
        if getattr(e, "member", None) is not None:
            await e.member.close()
        e.ircd.stop()
        e.server.stop()


async def test_irc_users_become_ghosts_named_by_their_nicks(env):
    # Three IRC users are in the channel before the bridge: oper (first in, so a channel operator), dave and erin.
    for nick in ("oper", "dave", "erin"):
        env.irc[nick] = await IrcClient.connect(env.ircd.port, nick)
        await env.irc[nick].join(CHANNEL)
    env.bot = await InProcessBot(env.config).start()
    await env.member.wait_joined(env.room, BOT)
    await until(lambda: env.bridge().irc["local"].joined, 30, "the bridge to join the channel")
    # NAMES at the bridge's join: at most ghost_sync_limit (2) of the three ghosts join now, not all.
    await env.member.wait_for(lambda: sum(env.joined(ghost(n)) for n in ("oper", "dave", "erin")) == 2, 30,
                              "two ghosts from NAMES")
    await asyncio.sleep(1.0)
    assert sum(env.joined(ghost(n)) for n in ("oper", "dave", "erin")) == 2
    # Three more talk as three distinct ghosts, their nicks as display names, their text as is.
    for nick in ("alice", "bob", "carol"):
        env.irc[nick] = await IrcClient.connect(env.ircd.port, nick)
        await env.irc[nick].join(CHANNEL)
        await env.member.wait_joined(env.room, ghost(nick))  # the IRC join is the ghost's join
    for nick in ("alice", "bob", "carol"):
        await env.irc[nick].say(CHANNEL, f"hello from {nick}")
    events = [await env.message_from(ghost(nick), f"hello from {nick}") for nick in ("alice", "bob", "carol")]
    assert len({e.sender for e in events}) == 3
    for nick in ("alice", "bob", "carol"):
        assert env.display_name(ghost(nick)) == nick
        assert env.memberships(ghost(nick))[-1]["membership"] == "join"
    assert not [e for e in env.member.messages(env.room, BOT) if "hello from" in e.body]  # nothing relayed as the bot
    # The one NAMES left out joins when they speak.
    await env.irc["erin"].say(CHANNEL, "erin here")
    await env.irc["dave"].say(CHANNEL, "dave here")
    await env.message_from(ghost("erin"), "erin here")
    await env.message_from(ghost("dave"), "dave here")
    # A Matrix message still reaches IRC through the bridge's own connection.
    await env.member.send(env.room, "hi irc")
    line = await env.irc["alice"].expect(lambda m: m.command == "PRIVMSG" and m.text.endswith("hi irc"))
    assert line.nick == "relay" and line.text == "<member> hi irc"


async def test_a_matrix_reply_to_a_ghost_reaches_irc_addressed_to_the_nick(env):
    original = await env.message_from(ghost("bob"), "hello from bob")
    await env.member.send(env.room, "sure thing", reply_to=original.event_id)
    line = await env.irc["bob"].expect(lambda m: m.command == "PRIVMSG" and "sure thing" in m.text)
    assert line.text == "<member> bob: sure thing"


async def test_a_nick_change_renames_the_ghost(env):
    carol = env.irc["carol"]
    carol.send_raw("NICK caroline")
    await carol.expect(lambda m: m.command == "NICK" and m.text == "caroline")
    await env.member.wait_for(lambda: env.display_name(ghost("carol")) == "caroline", 30, "the ghost renamed")
    await carol.say(CHANNEL, "same person, new nick")
    event = await env.message_from(ghost("carol"), "same person, new nick")  # the same Matrix user
    assert env.joined(ghost("carol")) and not env.joined(ghost("caroline"))
    # A reply to what carol said before the rename is addressed to her current nick.
    earlier = await env.message_from(ghost("carol"), "hello from carol")
    await env.member.send(env.room, "welcome back", reply_to=earlier.event_id)
    line = await carol.expect(lambda m: m.command == "PRIVMSG" and "welcome back" in m.text)
    assert line.text == "<member> caroline: welcome back"
    assert event.sender == ghost("carol")


async def test_joins_parts_and_quits_are_memberships(env):
    bob = env.irc["bob"]
    bob.send_raw(f"PART {CHANNEL} :lunch")
    await env.member.wait_for(lambda: not env.joined(ghost("bob")), 30, "bob's ghost to leave")
    left = env.memberships(ghost("bob"))[-1]
    assert left["membership"] == "leave" and left["sender"] == ghost("bob") and left.get("reason") == "lunch"
    await bob.join(CHANNEL)
    await env.member.wait_joined(env.room, ghost("bob"))
    alice = env.irc.pop("alice")
    alice.send_raw("QUIT :gone home")
    await env.member.wait_for(lambda: not env.joined(ghost("alice")), 30, "alice's ghost to leave on QUIT")
    assert "gone home" in env.memberships(ghost("alice"))[-1]["reason"]  # (ngircd quotes a quit message)
    await alice.close()


async def test_kicks_and_bans_map_where_the_bridge_has_the_power(env):
    oper = env.irc["oper"]
    # An IRC kick: the bot (power 100 in the room) kicks the ghost, naming who kicked on IRC.
    oper.send_raw(f"KICK {CHANNEL} dave :behave")
    await env.member.wait_for(lambda: not env.joined(ghost("dave")), 30, "dave's ghost to be kicked")
    kicked = env.memberships(ghost("dave"))[-1]
    assert kicked["sender"] == BOT and kicked["reason"] == "kicked on local by oper: behave"
    # An IRC ban of a member: the bot bans the ghost.
    oper.send_raw(f"MODE {CHANNEL} +b erin!*@*")
    await env.member.wait_for(lambda: env.memberships(ghost("erin"))[-1]["membership"] == "ban", 30,
                              "erin's ghost to be banned")
    assert env.memberships(ghost("erin"))[-1]["sender"] == BOT
    # A Matrix kick of a ghost while the bridge is no channel operator: a notice says it was not done on IRC.
    resp = await env.member.client.room_kick(env.room, ghost("bob"), "spam")
    assert not hasattr(resp, "status_code"), resp
    notice = await env.member.expect(
        lambda r, e: r == env.room and e.sender == BOT and "bob was kicked here but not" in getattr(e, "body", ""),
        30, "the notice",
    )
    assert "not an operator in #ghosts" in notice.body
    # Made an operator on IRC, the bridge kicks there too: bob sees the KICK with who did it on Matrix.
    oper.send_raw(f"MODE {CHANNEL} +o relay")
    await until(lambda: env.bridge().irc["local"].is_op(CHANNEL), 20, "the bridge to be an operator")
    bob = env.irc["bob"]
    await bob.say(CHANNEL, "back again")  # bob's ghost rejoins with his next message
    await env.message_from(ghost("bob"), "back again")
    resp = await env.member.client.room_kick(env.room, ghost("bob"), "enough")
    assert not hasattr(resp, "status_code"), resp
    line = await bob.expect(lambda m: m.command == "KICK" and m.params[1] == "bob")
    assert line.nick == "relay" and line.text == "kicked on Matrix by member: enough"


async def test_a_webhook_posts_as_its_ghost(env):
    body = json.dumps({"text": "deploy finished"}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{env.hook_port}/hooks/ci", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {HOOK_SECRET}"},
    )
    answer = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(req, timeout=30).read()))
    assert answer["ok"] is True
    event = await env.message_from(ghost("hook.ci"), "deploy finished")
    assert event.event_id == answer["event_id"]
    await env.member.wait_for(lambda: env.display_name(ghost("hook.ci")) == "CI", 30, "the hook ghost's name")


async def test_after_a_restart_a_renamed_user_keeps_their_ghost_and_departed_ones_leave(env):
    frank = await IrcClient.connect(env.ircd.port, "frank")
    await frank.join(CHANNEL)
    await env.member.wait_joined(env.room, ghost("frank"))
    await env.bot.stop()
    env.bot = None
    await frank.close()  # frank quits while the bridge is down
    await asyncio.sleep(0.5)
    env.bot = await InProcessBot(env.config).start()
    # The member list at the bridge's join: frank's ghost is no longer in the channel, so it leaves.
    await env.member.wait_for(lambda: not env.joined(ghost("frank")), 30, "frank's ghost to leave")
    assert env.memberships(ghost("frank"))[-1]["reason"] == f"not in {CHANNEL} any more"
    # caroline (carol before the rename) still posts as @irc_carol: who has which ghost was kept.
    await until(lambda: env.bridge().irc["local"].joined, 30, "the bridge to join the channel again")
    await env.irc["carol"].say(CHANNEL, "still me after the restart")
    await env.message_from(ghost("carol"), "still me after the restart")
    assert not env.joined(ghost("caroline"))


async def test_in_an_encrypted_room_ghosts_post_encrypted(env):
    await env.member.wait_joined(env.secret_room, BOT)
    gina = await IrcClient.connect(env.ircd.port, "gina")
    env.irc["gina"] = gina
    await gina.join(SECRET)
    await env.member.wait_joined(env.secret_room, ghost("gina"))
    await gina.say(SECRET, "secret hello")
    event = await env.member.expect(
        lambda r, e: r == env.secret_room and e.sender == ghost("gina") and getattr(e, "body", None) == "secret hello",
        30, "gina's message",
    )
    assert not isinstance(event, MegolmEvent) and event.decrypted  # encrypted by the ghost's own device
    await env.member.send(env.secret_room, "encrypted reply", reply_to=event.event_id)
    line = await gina.expect(lambda m: m.command == "PRIVMSG" and "encrypted reply" in m.text)
    assert line.text == "<member> gina: encrypted reply"
    assert not env.member.undecryptable(env.secret_room)


async def test_the_issues_showcase_three_irc_users_in_an_encrypted_room_at_elements_client(env, tmp_path):
    """Issue 16's demonstration in one scenario: an IRC channel linked to an encrypted room; three IRC users appear as
    three ghosts with their nicks; their messages decrypt at Element's stack (the js peer, matrix-js-sdk with Rust
    crypto, cross-signed and excluding insecure devices) with no shield, as a cross-signed user's would; a nick change
    renames the ghost; a reply sent from the js peer to a ghost reaches IRC addressed to that nick."""
    from interop.jspeer import INSTALL_COMMAND, JsPeer, js_available

    require_tool(js_available(), f"node or the matrix-js-sdk peer is not installed; run: {INSTALL_COMMAND}")
    user = env.server.register_user("judy", "judy-password-1")
    peer = JsPeer(tmp_path / "logs", name="judy")
    await peer.start()
    try:
        await peer.login(env.server.url, user.user_id, user.password, device_name="interop judy")
        await peer.bootstrap_cross_signing(user.password)
        await peer.set_isolation("only_signed")  # Element's "exclude insecure devices"
        await env.member.client.room_invite(env.secret_room, user.user_id)
        await peer.join_room(env.secret_room)
        await env.member.wait_joined(env.secret_room, user.user_id)

        nicks = ("ivy", "jack", "kim")
        for nick in nicks:
            env.irc[nick] = await IrcClient.connect(env.ircd.port, nick)
            await env.irc[nick].join(SECRET)
            await env.member.wait_joined(env.secret_room, ghost(nick))
        events = {}
        for nick in nicks:
            await env.irc[nick].say(SECRET, f"secret from {nick}")
            events[nick] = await env.member.expect(
                lambda r, e, n=nick: r == env.secret_room and e.sender == ghost(n)
                and getattr(e, "body", None) == f"secret from {n}",
                30, f"{nick}'s message",
            )
        assert len({e.sender for e in events.values()}) == 3
        for nick, event in events.items():
            assert not isinstance(event, MegolmEvent) and event.decrypted
            info = await peer.event_info(env.secret_room, event.event_id)
            assert info["decryption_failure"] is None and info["body"] == f"secret from {nick}", info
            assert info["encrypted"] is True and info["sender"] == ghost(nick)
            assert (info["shield_colour"], info["shield_reason"]) == ("NONE", None), info

        kim = env.irc["kim"]
        kim.send_raw("NICK kimberly")
        await kim.expect(lambda m: m.command == "NICK" and m.text == "kimberly")
        room = env.member.client.rooms[env.secret_room]
        await env.member.wait_for(
            lambda: room.users.get(ghost("kim")) is not None and room.users[ghost("kim")].display_name == "kimberly",
            30, "kim's ghost renamed",
        )

        await peer.send_text(env.secret_room, "welcome, jack", reply_to=events["jack"].event_id)
        line = await env.irc["jack"].expect(lambda m: m.command == "PRIVMSG" and "welcome, jack" in m.text)
        assert line.text.endswith("jack: welcome, jack") and line.text.startswith("<judy")
    finally:
        await peer.close()
