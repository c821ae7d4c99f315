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
import contextlib
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from appservice_support import appservice_synapse, free_port
from nio import MegolmEvent

from bot.testing.harness import BotProcess
from bot.testing.member import Member
from bot.testing.synapse import SynapseServer
from bot.testing.tools import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BOT = "@bridgebot:localhost"
ALICE = "@irc_alice:localhost"
BOB = "@irc_bob:localhost"
ERIN = "@irc_erin:localhost"

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

class Env:
    """The module's homeserver, the running bridge, the member and the encrypted room."""

    def __init__(self, base: Path, database: str | None = None) -> None:
        self.base = base
        #: PostgreSQL storage (the module runs once per engine), or None for SQLite files under data_dir.
        self.database = database
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
            "appservice": {
                "id": "ratchet-e2ee", "port": free_port(), "ghost_prefix": "irc_", "ghost_device_cache": 2,
            },
        }
        if self.database is not None:
            data["database"] = self.database
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def set_ghost_devices(self, enabled: bool) -> None:
        data = yaml.safe_load(self.config.read_text())
        data["appservice"]["ghost_devices"] = enabled
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
        if self.database is None:
            return json.loads((self.data / "credentials.json").read_text())["device_id"]
        logs = "".join(log.read_text() for log in sorted(self.base.glob("bridge-*.log")))
        found = re.findall(r"(?:created|using) the bot's device (\w+)", logs)
        assert found and len(set(found)) == 1, found
        return found[0]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def env(request, tmp_path_factory):
    """The whole module runs once with SQLite storage and once with PostgreSQL (the bot's and the ghosts' crypto
    stores, device ids and state in the database)."""
    base = tmp_path_factory.mktemp("appservice-e2ee")
    database = None
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres").create_database("appservice_e2ee")
    e = Env(base, database)
    hs_port = free_port()
    e.write_config(f"http://127.0.0.1:{hs_port}")
    e.server = await appservice_synapse(base / "hs", hs_port, e.config, e.registration, encryption=True)
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
    if env.database is None:
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


async def _devices_of(env, user_id: str) -> dict:
    """``user_id``'s devices as the member's client sees them after a fresh key query (device id -> OlmDevice)."""
    client = env.member.client
    client.users_for_key_query.add(user_id)
    await client.keys_query()
    return {d.id: d for d in client.device_store.active_user_devices(user_id)}


async def _keys_query(env, user_id: str) -> dict:
    """The raw ``/keys/query`` answer for ``user_id``, asked by the member."""
    resp = await env.member.client.send(
        "POST", "/_matrix/client/v3/keys/query", json.dumps({"device_keys": {user_id: []}}),
        headers={"Authorization": f"Bearer {env.member.client.access_token}"},
    )
    return await resp.json()


async def test_ghost_message_in_an_encrypted_room_decrypts_at_the_member(env):
    event_id = await env.member.send(env.room, "ghost alice hello from irc")
    reply = await env.member.expect_reply(env.room, event_id, sender=ALICE)
    assert reply.body.endswith("hello from irc")
    assert _was_encrypted(reply)
    # Encrypted by the ghost's own device (MSC4190), not the bridge bot's: the session's sender key is that device's.
    devices = await _devices_of(env, ALICE)
    assert len(devices) == 1, devices
    (device,) = devices.values()
    assert device.id.startswith("RATCHETGH")
    assert reply.sender_key == device.curve25519
    assert reply.sender_key != env.member.client.device_store[BOT][env.device_id()].curve25519
    assert f"created {ALICE}'s device {device.id} (MSC4190, cross-signed)" in env.bridge.log_text()
    assert not env.member.undecryptable(env.room)


async def test_the_ghost_device_is_cross_signed_by_the_ghost(env):
    from bot.crypto.cross_signing import verify_device_self_signed, verify_device_signed, verify_self_signing_key

    answer = await _keys_query(env, ALICE)
    master = answer["master_keys"][ALICE]
    ssk = answer["self_signing_keys"][ALICE]
    (device_id, device_keys), = answer["device_keys"][ALICE].items()
    assert device_id.startswith("RATCHETGH")
    assert verify_self_signing_key(master, ssk, ALICE)  # the self-signing key is signed by the ghost's master key
    assert verify_device_self_signed(device_keys, ALICE)  # the device signs its own keys
    assert verify_device_signed(device_keys, ssk, ALICE)  # and the ghost's self-signing key signs the device
    # Not the bot's identity: the ghost's master key is its own.
    bot_master = (await _keys_query(env, BOT))["master_keys"][BOT]
    assert master["keys"] != bot_master["keys"]


async def test_two_ghosts_have_two_devices(env):
    event_id = await env.member.send(env.room, "ghost bob hello from bob")
    reply = await env.member.expect_reply(env.room, event_id, sender=BOB)
    assert _was_encrypted(reply)
    alice, bob = await _devices_of(env, ALICE), await _devices_of(env, BOB)
    assert len(bob) == 1 and set(alice).isdisjoint(bob)
    (bob_device,) = bob.values()
    assert reply.sender_key == bob_device.curve25519
    assert reply.sender_key not in {d.curve25519 for d in alice.values()}


def _shield(info: dict) -> tuple:
    return info["shield_colour"], info["shield_reason"]


@contextlib.asynccontextmanager
async def _js_peer_in_room(env, tmp_path, name: str, *, only_signed: bool = False):
    """A js peer (matrix-js-sdk with Rust crypto) logged in as a new user ``name`` and joined to the room, closed on
    exit; ``only_signed``: cross-signed, and excluding insecure devices (MSC4153)."""
    from interop.jspeer import INSTALL_COMMAND, JsPeer, js_available

    require_tool(js_available(), f"node or the matrix-js-sdk peer is not installed; run: {INSTALL_COMMAND}")
    user = env.server.register_user(name, f"{name}-password-1")
    peer = JsPeer(tmp_path / "logs", name=name)
    await peer.start()
    try:
        await peer.login(env.server.url, user.user_id, user.password, device_name=f"interop {name}")
        if only_signed:
            await peer.bootstrap_cross_signing(user.password)
            await peer.set_isolation("only_signed")
        await env.member.client.room_invite(env.room, user.user_id)
        await peer.join_room(env.room)
        await env.member.wait_joined(env.room, user.user_id)
        yield peer
    finally:
        await peer.close()


async def test_js_peer_shows_a_ghost_message_as_the_bots_own(env, tmp_path):
    """Element's default ("all devices"): a ghost's message, encrypted by the ghost's own cross-signed device, gets
    the shield of the bridge bot's own message (a cross-signed device of a user nobody verified: none). A plain nio
    member (no cross-signing) is measured too, for comparison."""
    async with _js_peer_in_room(env, tmp_path, "carol") as peer:
        trigger = await env.member.send(env.room, "ghost bob hello js")
        ghost_msg = await env.member.expect_reply(env.room, trigger, sender=BOB)
        ping = await env.member.send(env.room, "!ping")
        bot_msg = await env.member.expect_reply(env.room, ping, sender=BOT)

        ghost_info = await peer.event_info(env.room, ghost_msg.event_id)
        bot_info = await peer.event_info(env.room, bot_msg.event_id)
        member_info = await peer.event_info(env.room, ping)
        print("js peer, all devices mode: ghost", ghost_info, "bot", bot_info, "nio member", member_info)
        assert ghost_info["decryption_failure"] is None and ghost_info["body"] == "hello js"
        assert ghost_info["encrypted"] is True
        assert bot_info["decryption_failure"] is None and "pong" in bot_info["body"]
        assert _shield(bot_info) == ("NONE", None)
        assert _shield(ghost_info) == _shield(bot_info)  # no MISMATCHED_SENDER: the ghost owns the device
        assert member_info["decryption_failure"] is None
        assert _shield(member_info) == ("RED", "UNSIGNED_DEVICE")  # nio has no cross-signing: its own device


async def test_js_peer_excluding_insecure_devices_decrypts_ghosts_as_the_bot(env, tmp_path):
    """Element's "exclude insecure devices" (MSC4153): the ghost's device is cross-signed by the ghost, so the peer
    decrypts its messages and shows them as the bot's own (measured here; docs/appservice.md)."""
    async with _js_peer_in_room(env, tmp_path, "dave", only_signed=True) as peer:
        status = await peer.device_status(BOT, env.device_id(), expect_signed=True)
        assert status.get("signed_by_owner") is True, status
        trigger = await env.member.send(env.room, "ghost erin hello strict js")
        ghost_msg = await env.member.expect_reply(env.room, trigger, sender=ERIN)
        (erin_device,) = await _devices_of(env, ERIN)
        status = await peer.device_status(ERIN, erin_device, expect_signed=True)
        assert status.get("signed_by_owner") is True, status
        ping = await env.member.send(env.room, "!ping")
        bot_msg = await env.member.expect_reply(env.room, ping, sender=BOT)
        ghost_info = await peer.event_info(env.room, ghost_msg.event_id)
        bot_info = await peer.event_info(env.room, bot_msg.event_id)
        print("js peer, only signed devices: ghost", ghost_info, "bot", bot_info)
        assert bot_info["decryption_failure"] is None and "pong" in bot_info["body"]
        assert _shield(bot_info) == ("NONE", None)
        assert ghost_info["decryption_failure"] is None and ghost_info["body"] == "hello strict js"
        assert _shield(ghost_info) == ("NONE", None)


async def test_a_room_key_in_a_later_transaction_still_unlocks_its_message(env):
    event_id, release = await env.member.send_with_late_key(env.room, "!ping")
    await env.bridge.wait_for_log(f"cannot decrypt {event_id}", 30)
    await release()  # the key goes out now, in a later transaction than the message
    reply = await env.member.expect_reply(env.room, event_id, sender=BOT)
    assert "pong" in reply.body and _was_encrypted(reply)
    assert f"decrypted {event_id} after its key arrived" in env.bridge.log_text()


async def _claim(env, device_id: str) -> dict:
    """One one-time key of the bot's device, claimed as the member (as any peer starting an Olm session does)."""
    body = {"one_time_keys": {BOT: {device_id: "signed_curve25519"}}}
    resp = await env.member.client.send(
        "POST", "/_matrix/client/v3/keys/claim", json.dumps(body),
        headers={"Authorization": f"Bearer {env.member.client.access_token}"},
    )
    answer = await resp.json()
    keys = answer["one_time_keys"].get(BOT, {}).get(device_id, {})
    assert len(keys) == 1, answer
    return next(iter(keys.values()))


async def test_one_time_keys_claimed_away_are_replenished_from_the_transactions_counts(env):
    device_id = env.device_id()
    for _ in range(200):  # every one-time key, until the server hands out the fallback key
        if (await _claim(env, device_id)).get("fallback"):
            break
    else:
        raise AssertionError("the bot's one-time keys never ran out")
    # The next transaction tells the bridge its count is 0 and its fallback key was used.
    event_id = await env.member.send(env.room, "!ping after the claims")
    await env.member.expect_reply(env.room, event_id, sender=BOT)
    for _ in range(100):
        key = await _claim(env, device_id)
        if not key.get("fallback"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("no new one-time keys were uploaded")
    log = env.bridge.log_text()
    assert "the bot's device has 0 one-time keys left on the server; uploading more" in log
    assert "the fallback key was used by a new peer; rotating it" in log


async def test_ghost_machines_beyond_the_cache_are_closed_and_reopened_from_their_store(env):
    """``ghost_device_cache: 2`` here: after two other ghosts spoke, alice's machine was closed; her next message
    reopens it from its store (the same device and identity key) and decrypts."""
    (alice,) = (await _devices_of(env, ALICE)).values()
    for name in ("gina", "hank"):
        trigger = await env.member.send(env.room, f"ghost {name} filling the cache")
        await env.member.expect_reply(env.room, trigger, sender=f"@irc_{name}:localhost")
    trigger = await env.member.send(env.room, "ghost alice after eviction")
    reply = await env.member.expect_reply(env.room, trigger, sender=ALICE)
    assert _was_encrypted(reply) and reply.sender_key == alice.curve25519
    assert f"opened {ALICE}'s device {alice.id}" in env.bridge.log_text()
    assert list(await _devices_of(env, ALICE)) == [alice.id]


async def test_restart_keeps_the_device_and_its_identity(env):
    device_id = env.device_id()
    client = env.member.client
    identity = client.device_store[BOT][device_id].curve25519
    (alice,) = (await _devices_of(env, ALICE)).values()
    await env.stop_bridge()
    await env.start_bridge()
    assert env.device_id() == device_id
    assert f"using the bot's device {device_id}" in env.bridge.log_text()
    client.users_for_key_query.add(BOT)
    await client.keys_query()
    assert [d.id for d in client.device_store.active_user_devices(BOT)] == [device_id]
    assert client.device_store[BOT][device_id].curve25519 == identity
    event_id = await env.member.send(env.room, "!ping after restart")
    reply = await env.member.expect_reply(env.room, event_id, sender=BOT)
    assert _was_encrypted(reply) and reply.sender_key == identity
    trigger = await env.member.send(env.room, "ghost alice back after restart")
    ghost_msg = await env.member.expect_reply(env.room, trigger, sender=ALICE)
    assert _was_encrypted(ghost_msg) and ghost_msg.sender_key == alice.curve25519
    assert f"opened {ALICE}'s device {alice.id}" in env.bridge.log_text()
    assert list(await _devices_of(env, ALICE)) == [alice.id]  # the same device, the same identity key
    assert not env.member.undecryptable(env.room)


async def test_ghost_devices_off_encrypts_ghosts_with_the_bots_device(env):
    """``appservice.ghost_devices: false``: the fallback, ghosts' messages encrypted by the bridge bot's device (what
    Element shows a red MISMATCHED_SENDER shield for, docs/appservice.md)."""
    await env.stop_bridge()
    env.set_ghost_devices(False)
    try:
        await env.start_bridge()
        trigger = await env.member.send(env.room, "ghost alice through the bot's device")
        ghost_msg = await env.member.expect_reply(env.room, trigger, sender=ALICE)
        bot_key = env.member.client.device_store[BOT][env.device_id()].curve25519
        assert _was_encrypted(ghost_msg) and ghost_msg.sender_key == bot_key
    finally:
        env.set_ghost_devices(True)
