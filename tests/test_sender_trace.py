"""Tracing a decrypted event to the device that encrypted it (RatchetOlm.trace_sender), on a real nio Olm machine:
forged senders are caught, and a copy of someone's curve25519 key published on another account cannot make that
someone's messages look forged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nio.crypto import OlmDevice

from bot.matrix.client import make_client

BOT = "@bot:localhost"
ALICE = "@alice:localhost"
MALLORY = "@mallory:localhost"
ROOM = "!room:localhost"
ALICE_CURVE = "aliceCurve25519KeyAAAAAAAAAAAAAAAAAAAAAAAAA"
MALLORY_CURVE = "malloryCurve25519KeyBBBBBBBBBBBBBBBBBBBBBBBB"


@pytest.fixture
async def olm(tmp_path):
    client = make_client("http://127.0.0.1:9", BOT, tmp_path, "trace-pickle-key", "BOTDEV")
    client.restore_login(BOT, "BOTDEV", "not-a-real-token")
    yield client.olm
    await client.close()


def _device(user_id: str, device_id: str, curve: str) -> OlmDevice:
    return OlmDevice(user_id, device_id, {"curve25519": curve, "ed25519": f"{device_id}-ed25519"})


def _event(sender: str, sender_key: str) -> SimpleNamespace:
    return SimpleNamespace(sender=sender, sender_key=sender_key, session_id=None, decrypted=True)


async def test_the_senders_own_device_proves_the_sender(olm):
    olm.device_store.add(_device(ALICE, "ALICEDEV", ALICE_CURVE))
    assert olm.trace_sender(ROOM, _event(ALICE, ALICE_CURVE), queried=False).owned is True


async def test_a_forged_sender_is_refused_once_their_keys_are_known(olm):
    olm.device_store.add(_device(ALICE, "ALICEDEV", ALICE_CURVE))
    olm.device_store.add(_device(MALLORY, "MALDEV", MALLORY_CURVE))
    forged = _event(ALICE, MALLORY_CURVE)  # Mallory's session, the sender field rewritten to Alice
    assert olm.trace_sender(ROOM, forged, queried=False).owned is None  # not Alice's device: ask for her keys
    assert olm.trace_sender(ROOM, forged, queried=True).owned is False


async def test_a_copied_curve25519_key_on_another_account_does_not_silence_its_owner(olm):
    olm.device_store.add(_device(ALICE, "ALICEDEV", ALICE_CURVE))
    olm.device_store.add(_device(MALLORY, "COPYCAT", ALICE_CURVE))  # Mallory publishes Alice's curve25519 key
    assert olm.trace_sender(ROOM, _event(ALICE, ALICE_CURVE), queried=False).owned is True
