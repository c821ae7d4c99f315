"""Issue 4 (trust half) end to end, against the real Synapse: who gets the bot's room keys (``e2ee.trust``),
``m.room_key.withheld`` for the others, TOFU pins and identity changes, per-message trust, and fallback keys when
the bot's one-time keys run out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import KeysClaimResponse, MegolmEvent, UnknownToDeviceEvent

from bot.crypto.canonical import verify_json
from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds, signatures_upload_body
from bot.e2ee.trust import IdentityChanged
from bot.testing.member import Member

pytestmark = pytest.mark.e2e

PROBE = '''
from bot import Context, Plugin, on_message


class Trustprobe(Plugin):
    """Answers "probe ..." with what ctx.trusted said, and remembers it by event id."""

    seen: dict

    async def start(self) -> None:
        self.seen = {}

    @on_message(r"^probe")
    async def probe(self, ctx: Context, match) -> None:
        self.seen[ctx.event_id] = ctx.trusted
        await ctx.reply(f"trusted={ctx.trusted}")
'''


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "probe-plugins"
    folder.mkdir()
    (folder / "trustprobe.py").write_text(PROBE)
    return folder


# -- helpers --------------------------------------------------------------------------------------------------------


async def _api(member: Member, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict]:
    """A raw client-server request as ``member``."""
    client = member.client
    resp = await client.send(
        method,
        path,
        json.dumps(body) if body is not None else None,
        {"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"},
    )
    return resp.status, await resp.json()


async def cross_sign(member: Member) -> CrossSigningKeys:
    """Give ``member``'s account new cross-signing keys (a reset if it had some) and sign its device with them."""
    xs = CrossSigningKeys(member.user_id, CrossSigningSeeds.generate())
    body = xs.device_signing_upload_body()
    status, data = await _api(member, "POST", "/_matrix/client/v3/keys/device_signing/upload", body)
    if status == 401:  # replacing keys needs the password
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": member.user_id},
            "password": member.password,
            "session": data.get("session"),
        }
        status, data = await _api(member, "POST", "/_matrix/client/v3/keys/device_signing/upload", body)
    assert status == 200, data
    status, data = await _api(
        member, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {member.user_id: [member.device_id]}}
    )
    device = data["device_keys"][member.user_id][member.device_id]
    account = member.client.olm.account

    def device_sign(message: bytes) -> str:
        return account.sign(message.decode())

    signed = [xs.sign_device(device), xs.master_key_signed_by_device(member.device_id, device_sign)]
    upload = signatures_upload_body(signed)
    status, data = await _api(member, "POST", "/_matrix/client/v3/keys/signatures/upload", upload)
    assert status == 200 and not data.get("failures"), data
    return xs


def record_to_device(member: Member) -> list[UnknownToDeviceEvent]:
    """Collect the to-device events nio does not handle itself (m.room_key.withheld among them)."""
    got: list[UnknownToDeviceEvent] = []

    async def on_to_device(event: UnknownToDeviceEvent) -> None:
        got.append(event)

    member.client.add_to_device_callback(on_to_device, (UnknownToDeviceEvent,))
    return got


def probe_seen(bot) -> dict[str, bool]:
    """event id -> ``ctx.trusted`` as the probe plugin's handler saw it."""
    return bot.runtime.host.plugins["trustprobe"].instance.seen


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def join(member: Member, room_id: str) -> None:
    resp = await member.client.join(room_id)
    assert getattr(resp, "room_id", None) == room_id, resp
    await member.wait_joined(room_id, member.user_id)


def replied_to(event) -> str | None:
    """The event a (possibly still encrypted) message replies to: m.relates_to stays in the clear."""
    rel = event.source.get("content", {}).get("m.relates_to") or {}
    return (rel.get("m.in_reply_to") or {}).get("event_id")


def withheld_for(events: list[UnknownToDeviceEvent], session_id: str) -> list[dict[str, Any]]:
    return [
        e.source["content"]
        for e in events
        if e.type == "m.room_key.withheld" and e.source.get("content", {}).get("session_id") == session_id
    ]


# -- (i) outgoing: room keys only for trusted devices, withheld notices for the others ---------------------------


@pytest.mark.parametrize("mode", ["cross-signed", "all"])
async def test_room_keys_follow_the_trust_policy(ratchet, probe_dir, mode):
    bot = await ratchet.start_bot({"ping": {}, "trustprobe": {}}, plugin_dirs=[probe_dir], e2ee={"trust": mode})
    trusted = probe_seen(bot)
    alice = await ratchet.member("alice")  # cross-signed
    carol = await ratchet.member("carol")  # no cross-signing: what a plain nio client is
    await cross_sign(alice)
    carol_to_device = record_to_device(carol)
    room = await ratchet.room(member=alice)
    invited = await alice.client.room_invite(room.room_id, carol.user_id)
    assert not hasattr(invited, "status_code"), invited
    await until(lambda: room.room_id in carol.client.invited_rooms, 30, "carol's invite")
    await join(carol, room.room_id)
    await alice.wait_joined(room.room_id, carol.user_id)

    ping = await room.send("!ping")
    reply = await room.expect_reply(ping)  # alice, cross-signed, always reads the bot
    assert reply.decrypted and reply.body.startswith("pong")

    def bot_event(rid: str, event) -> bool:
        return rid == room.room_id and event.sender == room.bot_user_id and event.event_id == reply.event_id

    seen_by_carol = await carol.expect(bot_event, 30, "the bot's answer in carol's timeline")
    if mode == "all":
        assert not isinstance(seen_by_carol, MegolmEvent) and seen_by_carol.body.startswith("pong")
        assert not [e for e in carol_to_device if e.type == "m.room_key.withheld"]
    else:
        assert isinstance(seen_by_carol, MegolmEvent), "carol's device is not cross-signed: no room key for it"
        await carol.wait_for(
            lambda: withheld_for(carol_to_device, seen_by_carol.session_id), 30, "an m.room_key.withheld notice"
        )
        (notice,) = withheld_for(carol_to_device, seen_by_carol.session_id)
        assert notice["code"] == "m.unverified"
        assert notice["room_id"] == room.room_id
        assert notice["algorithm"] == "m.megolm.v1.aes-sha2"
        assert notice["sender_key"] == seen_by_carol.sender_key == bot.runtime.client.olm.account.identity_keys[
            "curve25519"
        ]
        assert notice["reason"]
        # nio holds no key for the session: the answer stays unreadable
        assert carol.client.olm.inbound_group_store.get(
            room.room_id, seen_by_carol.sender_key, seen_by_carol.session_id
        ) is None

    # incoming: alice's device is cross-signed, carol's is not
    from_alice = await room.send("probe alice")
    assert (await room.expect_reply(from_alice)).body == "trusted=True"
    from_carol = await carol.send(room.room_id, "probe carol")
    await room.expect_reply(from_carol)
    assert trusted[from_alice] is True
    assert trusted[from_carol] is (mode == "all")


# -- (ii) tofu: pins, identity changes, per-message trust ---------------------------------------------------------


async def test_tofu_pins_detects_an_identity_reset_and_untrusts_until_repinned(ratchet, probe_dir, caplog):
    caplog.set_level(logging.INFO, "bot.e2ee.trust")
    bot = await ratchet.start_bot({"trustprobe": {}}, plugin_dirs=[probe_dir])  # default trust: tofu
    trusted = probe_seen(bot)
    policy = bot.runtime.trust
    assert policy is not None and policy.mode == "tofu" and bot.runtime.api.trust is policy
    changes: list[IdentityChanged] = []

    async def on_change(change: IdentityChanged) -> None:
        changes.append(change)

    policy.on_identity_change(on_change)

    alice = await ratchet.member("alice")
    xs1 = await cross_sign(alice)
    room = await ratchet.room(member=alice)
    first = await room.send("probe 1")
    assert (await room.expect_reply(first)).body == "trusted=True"
    assert trusted[first] is True
    assert policy.pinned(alice.user_id) == xs1.master_public

    # A second device of alice's that she did not cross-sign: not trusted, gets no key.
    alice2 = await Member.login(ratchet.synapse.url, alice, ratchet.tmp_path / "alice2")
    try:
        alice2_to_device = record_to_device(alice2)
        await until(lambda: room.room_id in alice2.client.rooms, 30, "alice's second device to see the room")
        second = await alice2.send(room.room_id, "probe 2")
        answer = await alice2.expect(
            lambda rid, e: rid == room.room_id and e.sender == room.bot_user_id and replied_to(e) == second,
            30,
            "the bot's answer on alice's second device",
        )
        assert trusted[second] is False
        assert isinstance(answer, MegolmEvent)
        await alice2.wait_for(lambda: withheld_for(alice2_to_device, answer.session_id), 30, "a withheld notice")
        assert withheld_for(alice2_to_device, answer.session_id)[0]["code"] == "m.unverified"
    finally:
        await alice2.close()

    # Alice resets her cross-signing: new master key, her device signed by the new self-signing key.
    xs2 = await cross_sign(alice)
    await until(policy.identity_changes, 30, "the bot to notice the identity change")
    (change,) = policy.identity_changes()
    assert (change.user_id, change.old_master) == (alice.user_id, xs1.master_public)
    assert change.new_master == xs2.master_public
    await until(lambda: changes, 5, "the identity-change callback")
    assert changes == [change]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "identity change" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert alice.user_id in warnings[0] and xs1.master_public in warnings[0] and xs2.master_public in warnings[0]
    assert "probe" not in caplog.text.lower().replace("trustprobe", "")  # no message content in the trust log

    # Element's policy for the keys (still readable), but no authority until re-pinned.
    third = await room.send("probe 3")
    answer = await room.expect_reply(third)
    assert answer.decrypted and answer.body == "trusted=False"
    assert trusted[third] is False

    policy.pin(alice.user_id)
    assert policy.identity_changes() == [] and policy.pinned(alice.user_id) == xs2.master_public
    fourth = await room.send("probe 4")
    assert (await room.expect_reply(fourth)).body == "trusted=True"
    assert trusted[fourth] is True

    # The pins are in state.db: a restarted bot still knows the re-pinned identity.
    await ratchet.stop_bot()
    bot = await ratchet.start_bot({"trustprobe": {}}, plugin_dirs=[probe_dir])
    assert bot.runtime.trust.pinned(alice.user_id) == xs2.master_public


# -- (iii) fallback keys ------------------------------------------------------------------------------------------


async def test_exhausted_one_time_keys_fall_back_and_a_new_peer_still_gets_an_answer(ratchet, new_user):
    bot = await ratchet.start_bot({"ping": {}})
    client = bot.runtime.client
    bot_user, bot_device = client.user_id, client.device_id
    device_ed25519 = client.olm.account.identity_keys["ed25519"]
    await until(lambda: client.fallback.generated and not client.fallback.pending, 30, "the fallback key upload")

    carol = await ratchet.member("carol")  # a new peer: no Olm session with the bot yet
    claims: list[dict[str, Any]] = []

    claim = carol.client.keys_claim

    async def recording_claim(user_set):
        resp = await claim(user_set)
        if isinstance(resp, KeysClaimResponse):
            claims.append(resp.one_time_keys)
        return resp

    carol.client.keys_claim = recording_claim  # what carol's client got when it claimed the bot's key
    room = await ratchet.room(member=carol)
    await asyncio.sleep(1.5)  # let the bot finish reacting to the join (key queries) so it sits in its long poll

    # Another user claims every one-time key of the bot's device until the server hands out the fallback key.
    claimer = new_user("claimer")
    started = time.monotonic()
    count = 0
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.post(
                f"{ratchet.synapse.url}/_matrix/client/v3/keys/claim",
                json={"one_time_keys": {bot_user: {bot_device: "signed_curve25519"}}},
                headers={"Authorization": f"Bearer {claimer.access_token}"},
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
            count += 1
            ((key_id, key),) = body["one_time_keys"][bot_user][bot_device].items()
            assert key_id.startswith("signed_curve25519:")
            assert verify_json(key, bot_user, f"ed25519:{bot_device}", device_ed25519)
            if key.get("fallback") is True:
                break
            assert count < 200, "the server never returned a fallback key"
    assert count > 1, "the bot had one-time keys to exhaust"
    exhausted_in = time.monotonic() - started

    # Right away, the new peer starts an Olm session with the bot: it can only get the fallback key.
    ping = await room.send("!ping")
    reply = await room.expect_reply(ping)
    assert reply.decrypted and reply.body.startswith("pong")
    used = [c[bot_user][bot_device] for c in claims if bot_user in c and bot_device in c[bot_user]]
    assert used, "carol claimed a key of the bot's device"
    assert next(iter(used[0].values())).get("fallback") is True, "carol's session was built on the fallback key"
    assert next(iter(used[0].values()))["key"] == key["key"]

    # The bot noticed: the used fallback key is replaced and fresh one-time keys are uploaded.
    await until(lambda: client.fallback.used >= 1 and not client.fallback.pending, 30, "the fallback key rotation")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{ratchet.synapse.url}/_matrix/client/v3/keys/claim",
            json={"one_time_keys": {bot_user: {bot_device: "signed_curve25519"}}},
            headers={"Authorization": f"Bearer {claimer.access_token}"},
        ) as resp:
            after = (await resp.json())["one_time_keys"][bot_user][bot_device]
    ((_, fresh),) = after.items()
    assert not fresh.get("fallback"), "one-time keys were replenished"
    print(f"exhausted {count - 1} one-time keys in {exhausted_in:.2f}s")


# -- (iv) incoming withheld notices explain a missing key -------------------------------------------------------


async def test_a_withheld_notice_is_logged_once_with_the_waiting_event(ratchet, caplog):
    caplog.set_level(logging.INFO, "bot.e2ee.trust")
    bot = await ratchet.start_bot({"ping": {}})
    room = await ratchet.room()
    member = room.member
    event_id, _release = await member.send_with_late_key(room.room_id, "!ping")  # never released
    state = bot.runtime.state
    pending = await until(lambda: [p for p in state.pending() if p.event_id == event_id], 30, "the bot's UTD")
    session_id = pending[0].session_id
    sender_key = member.client.olm.account.identity_keys["curve25519"]
    content = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "code": "m.unverified",
        "room_id": room.room_id,
        "session_id": session_id,
        "sender_key": sender_key,
    }

    async def send_notice(txn: str, reason: str, session: str = session_id) -> None:
        status, data = await _api(
            member,
            "PUT",
            f"/_matrix/client/v3/sendToDevice/m.room_key.withheld/{txn}",
            {"messages": {room.bot_user_id: {bot.device_id: content | {"reason": reason, "session_id": session}}}},
        )
        assert status == 200, data

    policy = bot.runtime.trust
    await send_notice("w1", "the sender does not trust this device")
    await until(lambda: policy.withheld_reason(session_id), 30, "the bot to read the notice")
    assert policy.withheld_reason(session_id).code == "m.unverified"
    line = f"the key for {event_id} (session {session_id}) was withheld by {member.user_id}: m.unverified"
    await until(lambda: line in caplog.text, 30, "the withheld reason in the log")
    # The same session withheld again: remembered (newest reason), not logged a second time.
    await send_notice("w2", "second notice")
    await until(lambda: policy.withheld_reason(session_id).reason == "second notice", 30, "the second notice")
    # Instead of a pause: a later notice, for another waiting event, gets logged; the bot has gone over the waiting
    # events again after the second notice by then.
    later_id, _later_release = await member.send_with_late_key(room.room_id, "!ping")  # never released either
    later = await until(lambda: [p for p in state.pending() if p.event_id == later_id], 30, "the bot's second UTD")
    await send_notice("w3", "a later session", session=later[0].session_id)
    later_line = f"the key for {later_id} (session {later[0].session_id}) was withheld by {member.user_id}"
    await until(lambda: later_line in caplog.text, 30, "the later withheld reason in the log")
    assert caplog.text.count(line) == 1
    assert "(the sender does not trust this device)" in caplog.text
