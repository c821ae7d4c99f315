"""The matrix-js-sdk peer (Element's crypto stack) against the real Synapse and a plain nio client.

These tests prove the interop harness itself: that the peer talks E2EE with nio, that its "exclude insecure
devices" mode (MSC4153, ``OnlySignedDevicesIsolationMode``) really cuts off a device that is not cross-signed, that it
reports cross-signing trust as Element does, and that its secret storage / recovery key round-trips between two of
its own devices. Ratchet's interop tests build on exactly these commands.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import olm
import pytest
from nio import JoinResponse, MegolmEvent

from bot.testing.member import Member

from .jspeer import JsPeer, JsPeerError

# Node and the peer's packages are required by conftest.py (a skip, or a failure under CI=true).
pytestmark = [pytest.mark.e2e, pytest.mark.interop, pytest.mark.timeout(90)]

# Every wait below is bounded well under a minute.
WAIT = 30


@pytest.fixture
def js_peers(tmp_path: Path):
    """Factory of started :class:`JsPeer` processes, all closed at teardown (logs kept under ``tmp_path``)."""
    return _PeerPool(tmp_path / "jspeer-logs")


class _PeerPool:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.peers: list[JsPeer] = []

    async def login(self, synapse, user, name: str) -> JsPeer:
        peer = JsPeer(self.log_dir, name=name)
        self.peers.append(peer)
        await peer.start()
        await peer.login(synapse.url, user.user_id, user.password, device_name=f"interop {name}")
        return peer

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.peers), return_exceptions=True)


@contextlib.asynccontextmanager
async def _cleanup(pool: _PeerPool, *members: Member) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await pool.close()
        for m in members:
            with contextlib.suppress(Exception):
                await m.close()


def _is_text(room_id: str, sender: str, body: str):
    def predicate(rid, event) -> bool:
        return (
            rid == room_id
            and event.sender == sender
            and event.source.get("type") == "m.room.message"
            and getattr(event, "body", None) == body
        )

    return predicate


def _ed25519_public(seed_b64: str) -> str:
    """The unpadded-base64 ed25519 public key of a cross-signing seed (as libolm/vodozemac derive it)."""
    seed = base64.b64decode(seed_b64 + "=" * (-len(seed_b64) % 4))
    assert len(seed) == 32
    return olm.PkSigning(seed).public_key


async def test_js_and_nio_exchange_encrypted_messages_in_all_devices_mode(synapse, new_user, tmp_path, js_peers):
    alice, bob = new_user("jsalice"), new_user("niobob")
    member = await Member.login(synapse.url, bob, tmp_path / "member")
    async with _cleanup(js_peers, member):
        peer = await js_peers.login(synapse, alice, "alice")
        status = await peer.bootstrap_cross_signing(alice.password)
        assert status["publicKeysOnDevice"] and status["is_cross_signing_ready"], status
        await peer.set_isolation("all")

        # js creates the room and invites; nio joins.
        room = await peer.create_room(invite=[bob.user_id], encrypted=True, name="interop")
        joined = await member.client.join(room)
        assert isinstance(joined, JoinResponse), joined
        await peer.wait_joined(room, bob.user_id, timeout=WAIT)
        await member.wait_joined(room, alice.user_id, timeout=WAIT)

        # js -> nio
        js_event = await peer.send_text(room, "hello from js")
        got = await member.expect(_is_text(room, alice.user_id, "hello from js"), WAIT, "the js message")
        assert got.event_id == js_event
        assert got.decrypted, "the js message must arrive encrypted and decrypt"

        # nio -> js, as a reply
        nio_event = await member.send(room, "hello from nio", reply_to=js_event)
        msg = await peer.wait_message(
            room, sender=bob.user_id, reply_to=js_event, body_prefix="hello from", timeout=WAIT
        )
        assert msg["event_id"] == nio_event
        assert msg["body"] == "hello from nio"
        assert msg["encrypted"] is True and msg["decryption_failure"] is None
        assert member.undecryptable(room) == []


async def test_only_signed_mode_excludes_a_device_that_is_not_cross_signed(synapse, new_user, tmp_path, js_peers):
    alice, bob = new_user("jsalice"), new_user("niobob")
    member = await Member.login(synapse.url, bob, tmp_path / "member")
    async with _cleanup(js_peers, member):
        peer = await js_peers.login(synapse, alice, "alice")
        await peer.bootstrap_cross_signing(alice.password)
        await peer.set_isolation("only_signed")

        # nio creates the room and invites; js joins.
        room = await member.create_room(invite=[alice.user_id], encrypted=True)
        assert (await peer.join_room(room))["encrypted"] is True
        await member.wait_joined(room, alice.user_id, timeout=WAIT)

        # As Element sees them: the js device is signed by its owner, the nio device is not.
        own = await peer.device_status(alice.user_id, peer.device_id, expect_signed=True)
        assert own["known"] and own["signed_by_owner"] is True, own
        assert own["cross_signing_verified"] is True, own
        nio_dev = await peer.device_status(bob.user_id, member.device_id)
        assert nio_dev["known"], f"the js peer never saw {member.device_id}"
        assert nio_dev["signed_by_owner"] is False and nio_dev["is_verified"] is False, nio_dev
        bob_identity = await peer.user_identity(bob.user_id)
        assert bob_identity["master_key"] is None, bob_identity

        # js -> nio: the room key is withheld from the unsigned device, so nio cannot decrypt.
        js_event = await peer.send_text(room, "not for insecure devices")
        utd = await member.expect(
            lambda rid, ev: rid == room and isinstance(ev, MegolmEvent) and ev.event_id == js_event,
            WAIT,
            "the js message (undecryptable)",
        )
        assert utd.sender == alice.user_id

        # nio -> js: the js peer refuses to decrypt what the unsigned device sends, and says why.
        nio_event = await member.send(room, "from an insecure device")
        with pytest.raises(JsPeerError) as failure:
            await peer.wait_message(room, sender=bob.user_id, timeout=10, fail_on_utd=True)
        report = json.loads(failure.value.error)
        assert report["utd"] == [{"event_id": nio_event, "sender": bob.user_id, "reason": "UNSIGNED_SENDER_DEVICE"}], (
            report
        )

        # By the time nio has its own later message back, the js room key still never came.
        await member.expect(_is_text(room, bob.user_id, "from an insecure device"), WAIT, "nio's own message")
        assert not [e for e in member.messages(room, alice.user_id) if getattr(e, "body", None)]
        assert js_event in [e.event_id for e in member.undecryptable(room)]


async def test_second_device_reads_secret_storage_and_cross_signs_itself(synapse, new_user, tmp_path, js_peers):
    alice = new_user("jsalice")
    async with _cleanup(js_peers):
        first = await js_peers.login(synapse, alice, "alice-1")
        await first.bootstrap_cross_signing(alice.password)
        sssss = await first.bootstrap_secret_storage()
        recovery_key = sssss["recovery_key"]
        assert recovery_key.startswith("E") and len(recovery_key.replace(" ", "")) == 48, recovery_key
        assert sssss["secret_storage_status"]["ready"] is True, sssss
        assert sssss["backup_version"], sssss
        master_id = (await first.cross_signing_status())["master_key_id"]
        assert master_id
        # A message whose room key only the first device has, and the key backup.
        room = await first.create_room()
        old_event = await first.send_text(room, "before the second device")
        uploaded = await first.wait_backup_uploaded(timeout=WAIT)
        assert uploaded["total"] >= 1, uploaded

        second = await js_peers.login(synapse, alice, "alice-2")
        before = await second.device_status(alice.user_id, second.device_id)
        assert before["known"] and before["signed_by_owner"] is False, before
        status = await second.cross_signing_status()
        assert status["privateKeysInSecretStorage"] is True
        assert not any(status["privateKeysCachedLocally"].values()), status

        # The recovery key opens secret storage; the stored seed is the published master key's.
        seed = await second.get_secret("m.cross_signing.master", recovery_key)
        assert seed and _ed25519_public(seed) == master_id
        assert await second.get_secret("m.megolm_backup.v1", recovery_key)

        # A wrong recovery key is refused, not silently accepted.
        carol = new_user("jscarol")
        other = await js_peers.login(synapse, carol, "carol")
        await other.bootstrap_cross_signing(carol.password)
        wrong = (await other.bootstrap_secret_storage())["recovery_key"]
        with pytest.raises(JsPeerError, match="does not match"):
            await second.get_secret("m.cross_signing.master", wrong)

        # Cross-sign the new device with the keys from secret storage.
        result = await second.verify_own_device_with_recovery_key(recovery_key)
        cached = result["cross_signing_status"]["privateKeysCachedLocally"]
        assert all(cached.values()), result
        assert result["cross_signing_status"]["master_key_id"] == master_id
        assert result["device_status"]["signed_by_owner"] is True, result
        assert result["backup"] and result["backup"]["check"]["trusted"] is True, result
        assert result["backup"]["active_version"] == sssss["backup_version"], result

        # The room key from before this device existed comes back from the key backup.
        restored = await second.restore_backup(recovery_key)
        assert restored["imported"] >= 1 and restored["total"] >= 1, restored
        old_msg = await second.wait_message(room, sender=alice.user_id, timeout=WAIT)
        assert old_msg["event_id"] == old_event and old_msg["body"] == "before the second device", old_msg
        backup = await second.key_backup_info()
        assert backup["active_version"] == sssss["backup_version"], backup

        # ... and the first device sees it signed too.
        seen = await first.device_status(alice.user_id, second.device_id, expect_signed=True, wait=15)
        assert seen["signed_by_owner"] is True and seen["cross_signing_verified"] is True, seen
