"""Interactive SAS verification (issue 18) against matrix-js-sdk's Rust crypto (Element's stack) as the other side.

The bot's side is :class:`bot.e2ee.verification_service.VerificationService` on the running bot's client; the js
side is driven through the peer's ``verification_*`` commands. In every test the emoji the js side shows are compared
with the bot's before anyone confirms, and nothing on the bot's side is confirmed except by the test (the operator).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bot.crypto.cross_signing import verify_user_signed
from bot.crypto.fingerprint import group_digits, key_groups, safety_number
from bot.e2ee.identity import query_own_keys
from bot.e2ee.verification_service import VerificationService
from bot.testing.harness import InProcessBot, write_bot_config

from .jspeer import JsPeer, JsPeerError
from .stack import InteropStack

pytestmark = [pytest.mark.e2e, pytest.mark.interop, pytest.mark.timeout(120)]

WAIT = 30


class _Stack(InteropStack):
    async def service(self, bot: InProcessBot) -> VerificationService:
        """The running bot's own verification service (requests accepted from the config's admins)."""
        service = bot.runtime.verifications
        await service.wait_listening()
        return service


async def _share_room(peer: JsPeer, bot_user_id: str) -> str:
    """A room with the bot, so that each side tracks the other's devices (as any DM would)."""
    room = await peer.create_room(invite=[bot_user_id], name="dm")
    await peer.wait_joined(room, bot_user_id, timeout=WAIT)
    return room


async def _setup(synapse, new_user, tmp_path, *, alice_is_admin=True, auto_confirm_alice=False):
    bot_user, alice = new_user("vbot"), new_user("valice")
    e2ee: dict = {"cross_signing": True, "recovery_key_file": str(tmp_path / "recovery.key")}
    if auto_confirm_alice:
        e2ee["verification"] = {"auto_confirm": [alice.user_id]}
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=synapse, user=bot_user, data_dir=tmp_path / "data", e2ee=e2ee,
        admins=[alice.user_id] if alice_is_admin else [],
    )
    return bot_user, alice, cfg


def _js_emoji(status) -> list[tuple[str, str]]:
    return [(symbol, name) for symbol, name in status["emoji"]]


async def _ratchet(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` (the operator's CLI) in a thread, so the bot in this event loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )


async def _js_verified_identity(peer: JsPeer, user_id: str, timeout: float = 10) -> dict:
    """js's view of ``user_id``'s identity, polled until it is cross-signing verified (or ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        identity = await peer.user_identity(user_id)
        if identity["is_cross_signing_verified"] or asyncio.get_running_loop().time() > deadline:
            return identity
        await asyncio.sleep(0.2)


async def _js_asks_for_emoji(peer: JsPeer, bot_user_id: str, device_id: str) -> tuple[str, dict]:
    """js requests verification of the bot's device, the bot answers ready by itself, js starts SAS: returns js's
    request id and its state once the emoji are shown."""
    vid = (await peer.call("verification_request_device", user_id=bot_user_id, device_id=device_id))["vid"]
    await peer.call("verification_wait", vid=vid, phase="Ready", timeout_ms=WAIT * 1000)
    await peer.call("verification_start_sas", vid=vid)
    js = await peer.call("verification_wait", vid=vid, sas=True, timeout_ms=WAIT * 1000)
    return vid, js


async def _alice_signed_by_bot(bot, alice_id: str) -> bool:
    client = bot.runtime.client
    ours = await query_own_keys(client, client.user_id)
    theirs = await query_own_keys(client, alice_id)
    return verify_user_signed(theirs.master, ours.user_signing, client.user_id)


async def test_js_verifies_the_bots_device_to_device(synapse, new_user, tmp_path):
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await _share_room(peer, bot_user.user_id)
        before = await peer.device_status(bot_user.user_id, bot.device_id, expect_signed=True)
        assert before["signed_by_owner"] is True and before["is_verified"] is False, before

        # js asks the bot's device; the bot answers ready by itself (alice is allowed), js picks emoji.
        vid, js = await _js_asks_for_emoji(peer, bot_user.user_id, bot.device_id)
        flow = await service.wait(js["transaction_id"], {"keys"})
        assert flow.other_user == alice.user_id and flow.other_device == peer.device_id
        # The acid test: both sides show the same seven emoji (and names, as Element shows them) and numbers.
        assert _js_emoji(js) == flow.emoji and len(flow.emoji) == 7, (js, flow.emoji)
        assert tuple(js["decimal"]) == flow.decimals
        # Nothing was confirmed on the bot's side by itself.
        assert flow.state == "keys" and not flow.our_mac_sent

        await peer.call("verification_confirm", vid=vid)
        await service.confirm(flow.flow_id)
        flow = await service.wait(flow.flow_id, {"done", "cancelled"})
        assert flow.state == "done", flow.describe()
        js = await peer.call("verification_wait", vid=vid, verified=True, timeout_ms=WAIT * 1000)
        assert js["verify_result"] == {"ok": True}, js
        js = await peer.call("verification_wait", vid=vid, phase="Done", timeout_ms=WAIT * 1000)

        # js now trusts the bot's device (locally verified). A device verification does not make js sign the bot's
        # identity (Element does that after an in-room user verification).
        status = await peer.device_status(bot_user.user_id, bot.device_id)
        assert status["is_verified"] is True and status["locally_verified"] is True, status
        # The bot verified alice's device and master key, and signed the master key with its user-signing key.
        master = identity_master = (await peer.user_identity(alice.user_id))["master_key"]
        assert flow.verified_keys == {
            f"ed25519:{peer.device_id}": flow.verified_keys[f"ed25519:{peer.device_id}"],
            f"ed25519:{identity_master}": master,
        }
        assert service.signed == [(alice.user_id, f"ed25519:{master}")]
        assert await _alice_signed_by_bot(bot, alice.user_id)


async def test_the_bot_requests_verification_of_a_js_user(synapse, new_user, tmp_path):
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await _share_room(peer, bot_user.user_id)

        flow = await service.request(alice.user_id)
        js = await peer.call("verification_incoming", from_user=bot_user.user_id, timeout_ms=WAIT * 1000)
        assert js["transaction_id"] == flow.flow_id and js["other_device"] == bot.device_id, js
        await peer.call("verification_accept", vid=js["vid"])
        # The bot sends start once js is ready; js accepts it (its verifier), keys are exchanged.
        js = await peer.call("verification_wait", vid=js["vid"], sas=True, timeout_ms=WAIT * 1000)
        flow = await service.wait(flow.flow_id, {"keys"})
        assert flow.we_started and _js_emoji(js) == flow.emoji, (js, flow.emoji)

        await service.confirm(flow.flow_id)
        await peer.call("verification_confirm", vid=js["vid"])
        flow = await service.wait(flow.flow_id, {"done", "cancelled"})
        assert flow.state == "done", flow.describe()
        js = await peer.call("verification_wait", vid=js["vid"], verified=True, timeout_ms=WAIT * 1000)
        assert js["verify_result"] == {"ok": True}, js
        assert (await peer.device_status(bot_user.user_id, bot.device_id))["is_verified"] is True
        assert await _alice_signed_by_bot(bot, alice.user_id)


async def test_emoji_that_differ_cancel_both_sides_and_nothing_is_signed(synapse, new_user, tmp_path):
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await _share_room(peer, bot_user.user_id)
        vid, js = await _js_asks_for_emoji(peer, bot_user.user_id, bot.device_id)
        flow = await service.wait(js["transaction_id"], {"keys"})
        # The js user says "they don't match".
        await peer.call("verification_mismatch", vid=vid)
        flow = await service.wait(flow.flow_id, {"cancelled"})
        assert flow.cancel_code == "m.mismatched_sas" and flow.cancelled_by_us is False
        js = await peer.call("verification_wait", vid=vid, phase="Cancelled", timeout_ms=WAIT * 1000)
        assert js["cancellation_code"] == "m.mismatched_sas"
        assert service.signed == [] and not await _alice_signed_by_bot(bot, alice.user_id)
        assert (await peer.device_status(bot_user.user_id, bot.device_id))["is_verified"] is False


async def test_a_request_from_a_user_not_allowed_is_refused(synapse, new_user, tmp_path):
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path, alice_is_admin=False)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await _share_room(peer, bot_user.user_id)
        request = await peer.call("verification_request_device", user_id=bot_user.user_id, device_id=bot.device_id)
        vid = request["vid"]
        js = await peer.call("verification_wait", vid=vid, phase="Cancelled", timeout_ms=WAIT * 1000)
        assert js["cancellation_code"] == "m.user" and js["cancelling_user"] == bot_user.user_id, js
        flow = service.get(js["transaction_id"])
        assert flow is not None and flow.state == "cancelled" and flow.cancelled_by_us is True


async def test_js_verifies_the_bot_user_in_a_dm(synapse, new_user, tmp_path):
    """Element's "Verify user" in a DM: in-room request, emoji, and afterwards each side's identity verified by the
    other (js signed the bot's master key, the bot signed js's)."""
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        room = await _share_room(peer, bot_user.user_id)
        assert (await peer.user_identity(bot_user.user_id))["is_cross_signing_verified"] is False

        request = await peer.call("verification_request_dm", user_id=bot_user.user_id, room_id=room)
        vid = request["vid"]
        await peer.call("verification_wait", vid=vid, phase="Ready", timeout_ms=WAIT * 1000)
        await peer.call("verification_start_sas", vid=vid)
        js = await peer.call("verification_wait", vid=vid, sas=True, timeout_ms=WAIT * 1000)
        flow = await service.wait(None, {"keys"})
        assert flow.room_id == room and flow.flow_id == js["transaction_id"], (flow.describe(), js)
        assert _js_emoji(js) == flow.emoji and tuple(js["decimal"]) == flow.decimals, (js, flow.emoji)

        # The operator's view, from another process through the control socket: the same emoji and names.
        listed = json.loads((await _ratchet("verification", "list", "-c", str(cfg), "--json")).stdout)
        assert [f["id"] for f in listed] == [flow.flow_id] and listed[0]["state"] == "keys", listed
        shown = await _ratchet("verification", "show", flow.flow_id[:12], "-c", str(cfg))
        assert shown.returncode == 0, shown.stderr
        printed = [tuple(line.split(None, 1)) for line in shown.stdout.splitlines() if line.startswith("    ")]
        assert printed == _js_emoji(js), (shown.stdout, js["emoji"])
        assert "numbers: " + " ".join(map(str, js["decimal"])) in shown.stdout, shown.stdout

        await peer.call("verification_confirm", vid=vid)
        confirmed = await _ratchet("verification", "confirm", flow.flow_id, "-c", str(cfg))
        assert confirmed.returncode == 0, confirmed.stderr
        flow = await service.wait(flow.flow_id, {"done", "cancelled"})
        assert flow.state == "done", flow.describe()
        js = await peer.call("verification_wait", vid=vid, phase="Done", timeout_ms=WAIT * 1000)
        assert js["verify_result"] == {"ok": True}, js
        identity = await _js_verified_identity(peer, bot_user.user_id)
        assert identity["is_cross_signing_verified"] is True, identity
        assert await _alice_signed_by_bot(bot, alice.user_id)

        # Fingerprints for out-of-band comparison: the keys js knows, and the safety number of the two.
        fp = json.loads((await _ratchet("fingerprint", "-c", str(cfg), "--user", alice.user_id, "--json")).stdout)
        alice_master = (await peer.user_identity(alice.user_id))["master_key"]
        assert fp["device_id"] == bot.device_id and fp["master_key"] == identity["master_key"], fp
        assert fp["other"]["master_key"] == alice_master
        assert fp["other"]["safety_number"] == safety_number(identity["master_key"], bot_user.user_id, alice_master,
                                                             alice.user_id)
        text = (await _ratchet("fingerprint", "-c", str(cfg), "--user", alice.user_id)).stdout
        assert key_groups(fp["device_ed25519"]) in text and group_digits(fp["other"]["safety_number"]) in text, text


async def test_the_bot_requests_user_verification_in_a_dm(synapse, new_user, tmp_path):
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        room = await _share_room(peer, bot_user.user_id)

        # The operator: ratchet verify-user, through the running bot's control socket.
        asked = await _ratchet("verify-user", alice.user_id, "--room", room, "-c", str(cfg), "--json")
        assert asked.returncode == 0, asked.stderr
        flow = service.get(json.loads(asked.stdout)["id"])
        assert flow is not None and flow.room_id == room and flow.we_requested
        js = await peer.call("verification_incoming", from_user=bot_user.user_id, timeout_ms=WAIT * 1000)
        assert js["room_id"] == room and js["transaction_id"] == flow.flow_id, js
        await peer.call("verification_accept", vid=js["vid"])
        js = await peer.call("verification_wait", vid=js["vid"], sas=True, timeout_ms=WAIT * 1000)
        flow = await service.wait(flow.flow_id, {"keys"})
        assert _js_emoji(js) == flow.emoji, (js, flow.emoji)
        await service.confirm(flow.flow_id)
        await peer.call("verification_confirm", vid=js["vid"])
        flow = await service.wait(flow.flow_id, {"done", "cancelled"})
        assert flow.state == "done", flow.describe()
        js = await peer.call("verification_wait", vid=js["vid"], phase="Done", timeout_ms=WAIT * 1000)
        assert (await _js_verified_identity(peer, bot_user.user_id))["is_cross_signing_verified"] is True
        assert await _alice_signed_by_bot(bot, alice.user_id)


async def test_another_session_of_the_bot_account_is_verified_and_cross_signed(synapse, new_user, tmp_path):
    """The operator's Element logged in as the bot's account verifies "this session" with the bot: once the emoji
    are confirmed on both sides, the bot signs that device with its self-signing key."""
    bot_user, _alice, cfg = await _setup(synapse, new_user, tmp_path, alice_is_admin=False)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        element = await stack.peer(synapse, bot_user, "element")
        before = await element.device_status(bot_user.user_id, element.device_id)
        assert before["signed_by_owner"] is False, before
        vid, js = await _js_asks_for_emoji(element, bot_user.user_id, bot.device_id)
        flow = await service.wait(js["transaction_id"], {"keys"})
        assert _js_emoji(js) == flow.emoji
        await element.call("verification_confirm", vid=vid)
        await service.confirm(flow.flow_id)
        flow = await service.wait(flow.flow_id, {"done", "cancelled"})
        assert flow.state == "done", flow.describe()
        assert service.signed == [(bot_user.user_id, f"ed25519:{element.device_id}")]
        after = await element.device_status(bot_user.user_id, element.device_id, expect_signed=True)
        assert after["signed_by_owner"] is True, after


async def test_trust_verified_shares_room_keys_only_after_verification(synapse, new_user, tmp_path):
    """``e2ee.trust: verified``: the bot withholds its room keys from a user it has not verified (js cannot read its
    answer), and once the emoji were confirmed on both sides (and the bot signed alice's identity), it shares them."""
    bot_user, alice = new_user("vbot"), new_user("valice")
    cfg = write_bot_config(
        tmp_path / "bot.yaml", server=synapse, user=bot_user, data_dir=tmp_path / "data", admins=[alice.user_id],
        e2ee={"cross_signing": True, "trust": "verified", "recovery_key_file": str(tmp_path / "recovery.key")},
    )
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        room = await _share_room(peer, bot_user.user_id)

        ping = await peer.send_text(room, "!ping")
        with pytest.raises(JsPeerError) as failure:
            await peer.wait_message(room, sender=bot_user.user_id, reply_to=ping, timeout=WAIT, fail_on_utd=True)
        report = json.loads(failure.value.error)
        assert [u["reason"] for u in report["utd"]] == ["MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE"], report
        assert not bot.runtime.trust.user_verified(alice.user_id)

        request = await peer.call("verification_request_dm", user_id=bot_user.user_id, room_id=room)
        vid = request["vid"]
        await peer.call("verification_wait", vid=vid, phase="Ready", timeout_ms=WAIT * 1000)
        await peer.call("verification_start_sas", vid=vid)
        js = await peer.call("verification_wait", vid=vid, sas=True, timeout_ms=WAIT * 1000)
        flow = await service.wait(None, {"keys"})
        assert _js_emoji(js) == flow.emoji
        await peer.call("verification_confirm", vid=vid)
        await service.confirm(flow.flow_id)
        assert (await service.wait(flow.flow_id, {"done", "cancelled"})).state == "done"
        assert bot.runtime.trust.user_verified(alice.user_id)

        ping = await peer.send_text(room, "!ping")
        reply = await peer.wait_message(room, sender=bot_user.user_id, reply_to=ping, timeout=WAIT, fail_on_utd=True)
        assert reply["body"].startswith("pong") and reply["encrypted"] is True, reply


async def test_trust_user_by_fingerprint(synapse, new_user, tmp_path):
    """``ratchet trust-user``: a wrong fingerprint is refused and nothing is signed; the safety number the operator
    compared out of band pins and signs the user's master key (js then counts as verified under trust: verified)."""
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path, alice_is_admin=False)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await _share_room(peer, bot_user.user_id)
        alice_master = (await peer.user_identity(alice.user_id))["master_key"]
        bot_master = (await peer.user_identity(bot_user.user_id))["master_key"]

        wrong = await _ratchet("trust-user", alice.user_id, "-c", str(cfg), "--fingerprint", "12345 " * 12)
        assert wrong.returncode == 1 and "does not match" in wrong.stderr, wrong
        assert not await _alice_signed_by_bot(bot, alice.user_id)

        number = group_digits(safety_number(bot_master, bot_user.user_id, alice_master, alice.user_id))
        # What `!fingerprint @alice` shows in a room (self.bot.fingerprints) is that number, from the keys js holds.
        shown = await bot.runtime.api.fingerprints(alice.user_id)
        assert f"safety number: {number}" in shown, shown
        assert f"{alice.user_id} master key: {key_groups(alice_master)}" in shown, shown
        right = await _ratchet("trust-user", alice.user_id, "-c", str(cfg), "--fingerprint", number)
        assert right.returncode == 0, right.stderr
        assert f"pinned master key {alice_master} and signed it" in right.stdout, right.stdout
        assert await _alice_signed_by_bot(bot, alice.user_id)
        assert bot.runtime.trust.pinned(alice.user_id) == alice_master


async def test_auto_confirm_for_a_named_user_needs_no_operator(synapse, new_user, tmp_path, caplog):
    """e2ee.verification.auto_confirm: the bot confirms alice's verification itself (and says so at WARNING)."""
    bot_user, alice, cfg = await _setup(synapse, new_user, tmp_path, auto_confirm_alice=True)
    async with _Stack(tmp_path / "jspeer-logs") as stack:
        bot = await stack.bot(cfg)
        service = await stack.service(bot)
        peer = await stack.peer(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await _share_room(peer, bot_user.user_id)
        vid, js = await _js_asks_for_emoji(peer, bot_user.user_id, bot.device_id)
        await peer.call("verification_confirm", vid=vid)  # only alice compares; the bot does not wait
        flow = await service.wait(js["transaction_id"], {"done", "cancelled"})
        assert flow.state == "done", flow.describe()
        js = await peer.call("verification_wait", vid=vid, verified=True, timeout_ms=WAIT * 1000)
        assert js["verify_result"] == {"ok": True}, js
        assert await _alice_signed_by_bot(bot, alice.user_id)
        assert "confirmed without comparing the emoji" in caplog.text
