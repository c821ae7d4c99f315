"""Network-free tests for the trust policy (bot/e2ee/trust.py) and fallback keys (bot/matrix/fallback_keys.py):
cross-signing chain checks, TOFU pins and identity changes, policy decisions per mode, withheld notices, and the
client hooks that feed them (keys query capture, fallback key upload body, nio's zero-OTK-count bug)."""

from __future__ import annotations

import asyncio
import logging
import stat
from typing import Any

import pytest
import vodozemac
from nio import KeysUploadResponse, LocalProtocolError

from bot.crypto.canonical import sign_json, verify_json
from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds
from bot.crypto.withheld import CODE_BLACKLISTED, CODE_UNVERIFIED, parse_withheld, withheld_content
from bot.e2ee.trust import IdentityChanged, MemoryPinStore, StatePinStore, TrustPolicy, UserKeys
from bot.matrix.client import RatchetClient, _KeysQueryWithCrossSigning, _SyncWithKeyCounts, make_client
from bot.matrix.fallback_keys import (
    FALLBACK_KEY_ALGORITHM,
    FallbackKeys,
    fallback_key_used,
    signed_fallback_keys,
    unused_fallback_key_types,
)
from bot.storage.state import StateStore

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


# -- fixtures: users with devices and cross-signing keys ---------------------------------------------------------


class FakeDevice:
    """A device with real vodozemac identity keys that signs its own device keys."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.account = vodozemac.Account()

    @property
    def ed25519(self) -> str:
        return self.account.ed25519_key.to_base64()

    @property
    def curve25519(self) -> str:
        return self.account.curve25519_key.to_base64()

    def sign(self, message: bytes) -> str:
        return self.account.sign(message).to_base64()

    def keys(self) -> dict[str, Any]:
        unsigned = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{self.device_id}": self.ed25519, f"curve25519:{self.device_id}": self.curve25519},
        }
        return sign_json(unsigned, self.user_id, f"ed25519:{self.device_id}", self.sign)


def identity(user_id: str) -> CrossSigningKeys:
    return CrossSigningKeys(user_id, CrossSigningSeeds.generate())


def cross_signed(device: FakeDevice, xs: CrossSigningKeys) -> dict[str, Any]:
    keys = device.keys()
    ssk_sig = xs.sign_device(keys)["signatures"][xs.user_id]
    keys["signatures"][xs.user_id].update(ssk_sig)
    return keys


def keys_query(*users: tuple[str, CrossSigningKeys | None, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A /keys/query body: (user id, cross-signing keys or None, device id -> device keys) per user."""
    body: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
    for user_id, xs, devices in users:
        body["device_keys"][user_id] = devices
        if xs is not None:
            body["master_keys"][user_id] = xs.master_key()
            body["self_signing_keys"][user_id] = xs.self_signing_key()
    return body


@pytest.fixture
def alice() -> tuple[CrossSigningKeys, FakeDevice, FakeDevice]:
    """Alice's identity, a device she cross-signed and one she did not."""
    return identity(ALICE), FakeDevice(ALICE, "ASIGNED"), FakeDevice(ALICE, "AUNSIGNED")


def alice_body(alice, xs: CrossSigningKeys | None = None) -> dict[str, Any]:
    xs_alice, signed, unsigned = alice
    xs = xs or xs_alice
    return keys_query((ALICE, xs, {"ASIGNED": cross_signed(signed, xs), "AUNSIGNED": unsigned.keys()}))


# -- the chain ------------------------------------------------------------------------------------------------------


def test_chain_device_ssk_master(alice):
    xs, signed, _unsigned = alice
    keys = UserKeys.from_keys_query(alice_body(alice), ALICE)
    assert keys is not None
    assert keys.master_public == xs.master_public
    assert keys.self_signing_valid
    assert keys.device_cross_signed("ASIGNED")
    assert keys.device_valid("AUNSIGNED") and not keys.device_cross_signed("AUNSIGNED")
    assert keys.device_by_curve25519(signed.curve25519) == "ASIGNED"
    assert keys.device_key("ASIGNED", "ed25519") == signed.ed25519
    assert not keys.device_cross_signed("NOSUCH")


def test_policy_answers_whether_a_device_is_cross_signed_for_evidence(alice):
    policy = TrustPolicy("tofu")
    assert policy.device_cross_signed(ALICE, "ASIGNED") is None  # keys not seen yet: cannot tell
    policy.observe_keys_query(alice_body(alice))
    assert policy.device_cross_signed(ALICE, "ASIGNED") is True
    assert policy.device_cross_signed(ALICE, "AUNSIGNED") is False


def test_chain_breaks_when_ssk_not_signed_by_master(alice):
    _xs, signed, _ = alice
    other = identity(ALICE)
    body = alice_body(alice)
    body["self_signing_keys"][ALICE] = other.self_signing_key()  # signed by another master key
    body["device_keys"][ALICE]["ASIGNED"] = cross_signed(signed, other)
    keys = UserKeys.from_keys_query(body, ALICE)
    assert not keys.self_signing_valid
    assert not keys.device_cross_signed("ASIGNED")


def test_device_with_broken_self_signature_is_invalid(alice):
    body = alice_body(alice)
    body["device_keys"][ALICE]["ASIGNED"]["keys"]["curve25519:ASIGNED"] = "A" * 43  # tampered after signing
    keys = UserKeys.from_keys_query(body, ALICE)
    assert not keys.device_valid("ASIGNED") and not keys.device_cross_signed("ASIGNED")


def test_user_not_in_body():
    assert UserKeys.from_keys_query({"device_keys": {}}, ALICE) is None
    assert UserKeys.from_keys_query({}, ALICE) is None


# -- modes ----------------------------------------------------------------------------------------------------------


def test_tofu_pins_on_first_use_and_trusts_cross_signed_devices(alice, caplog):
    xs = alice[0]
    policy = TrustPolicy("tofu")
    with caplog.at_level(logging.INFO, "bot.e2ee.trust"):
        changes, changed = policy.observe_keys_query(alice_body(alice))
    assert changes == [] and changed == set()
    assert policy.pinned(ALICE) == xs.master_public
    assert "pinned the cross-signing identity of " + ALICE in caplog.text
    ok = policy.device_verdict(ALICE, "ASIGNED")
    assert ok.trusted and ok.share and ok.code is None
    bad = policy.device_verdict(ALICE, "AUNSIGNED")
    assert not bad.trusted and not bad.share and bad.code == CODE_UNVERIFIED
    assert not policy.device_verdict(ALICE, "NOSUCH").trusted
    assert not policy.device_verdict(BOB, "ANY").trusted  # never queried


def test_users_without_cross_signing_per_mode():
    device = FakeDevice(BOB, "BOBDEV")
    body = keys_query((BOB, None, {"BOBDEV": device.keys()}))
    expected = {"tofu": True, "cross-signed": False, "all": True}
    for mode, trusted in expected.items():
        policy = TrustPolicy(mode)
        policy.observe_keys_query(body)
        verdict = policy.device_verdict(BOB, "BOBDEV")
        assert verdict.trusted is trusted and verdict.share is trusted, mode
        if not trusted:
            assert verdict.code == CODE_UNVERIFIED
    assert TrustPolicy("tofu").pinned(BOB) is None


def test_cross_signed_mode(alice):
    policy = TrustPolicy("cross-signed")
    policy.observe_keys_query(alice_body(alice))
    assert policy.device_verdict(ALICE, "ASIGNED").trusted
    assert not policy.device_verdict(ALICE, "AUNSIGNED").trusted


def test_all_mode_trusts_every_device_but_not_blacklisted(alice):
    policy = TrustPolicy("all")
    policy.observe_keys_query(alice_body(alice))
    assert policy.device_verdict(ALICE, "AUNSIGNED").trusted
    assert policy.device_verdict(BOB, "UNKNOWN").trusted
    blocked = policy.device_verdict(ALICE, "ASIGNED", blacklisted=True)
    assert not blocked.trusted and not blocked.share and blocked.code == CODE_BLACKLISTED


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        TrustPolicy("everyone")


# -- identity changes -----------------------------------------------------------------------------------------------


def test_identity_change_is_detected_logged_once_and_resolved_by_pinning(alice, caplog):
    xs_old = alice[0]
    xs_new = identity(ALICE)
    policy = TrustPolicy("tofu")
    seen: list[IdentityChanged] = []

    async def callback(change: IdentityChanged) -> None:
        seen.append(change)

    unsubscribe = policy.on_identity_change(callback)
    policy.observe_keys_query(alice_body(alice))
    with caplog.at_level(logging.WARNING, "bot.e2ee.trust"):
        changes, changed = policy.observe_keys_query(alice_body(alice, xs_new))
        again, _ = policy.observe_keys_query(alice_body(alice, xs_new))
    assert [(c.user_id, c.old_master, c.new_master) for c in changes] == [
        (ALICE, xs_old.master_public, xs_new.master_public)
    ]
    assert changes[0].type == "ratchet.identity_changed"
    assert again == []
    assert changed == {ALICE}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert ALICE in text and xs_old.master_public in text and xs_new.master_public in text
    assert policy.identity_changes() == changes

    # Until re-pinned: keys still shared with devices of the new identity, messages not trusted.
    verdict = policy.device_verdict(ALICE, "ASIGNED")
    assert not verdict.trusted and verdict.share
    assert not policy.device_verdict(ALICE, "AUNSIGNED").share

    async def run_callbacks() -> None:
        policy.notify(changes)
        await asyncio.sleep(0)

    asyncio.run(run_callbacks())
    assert seen == changes
    unsubscribe()
    asyncio.run(run_callbacks())
    assert len(seen) == 1

    assert policy.pin(ALICE) == xs_new.master_public
    assert policy.identity_changes() == []
    assert policy.device_verdict(ALICE, "ASIGNED").trusted


def test_identity_change_can_stop_key_sharing(alice):
    policy = TrustPolicy("tofu", share_with_changed_identities=False)
    policy.observe_keys_query(alice_body(alice))
    policy.observe_keys_query(alice_body(alice, identity(ALICE)))
    verdict = policy.device_verdict(ALICE, "ASIGNED")
    assert not verdict.trusted and not verdict.share and verdict.code == CODE_UNVERIFIED


def test_identity_change_under_cross_signed_follows_the_new_identity(alice, caplog):
    xs_new = identity(ALICE)
    policy = TrustPolicy("cross-signed")
    policy.observe_keys_query(alice_body(alice))
    with caplog.at_level(logging.WARNING, "bot.e2ee.trust"):
        changes, _ = policy.observe_keys_query(alice_body(alice, xs_new))
    assert len(changes) == 1 and "identity change" in caplog.text
    assert policy.identity_changes() == []  # nothing to resolve: trust follows the owner's current identity
    assert policy.device_verdict(ALICE, "ASIGNED").trusted
    assert policy.pinned(ALICE) == xs_new.master_public


def test_identity_removed_under_tofu_is_untrusted(alice):
    policy = TrustPolicy("tofu")
    policy.observe_keys_query(alice_body(alice))
    _, signed, _unsigned = alice
    changes, _ = policy.observe_keys_query(keys_query((ALICE, None, {"ASIGNED": signed.keys()})))
    assert changes[0].new_master is None
    verdict = policy.device_verdict(ALICE, "ASIGNED")
    assert not verdict.trusted and not verdict.share


def test_pins_persist_in_state_db_with_mode_0600(alice, tmp_path):
    state = StateStore.open(tmp_path / "state.db")
    try:
        TrustPolicy("tofu", pins=StatePinStore(state)).observe_keys_query(alice_body(alice))
        assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600
        later = TrustPolicy("tofu", pins=StatePinStore(state))  # e.g. after a restart
        assert later.pinned(ALICE) == alice[0].master_public
        changes, _ = later.observe_keys_query(alice_body(alice, identity(ALICE)))
        assert len(changes) == 1 and changes[0].old_master == alice[0].master_public
    finally:
        state.close()


def test_pin_without_known_identity_is_refused():
    with pytest.raises(ValueError):
        TrustPolicy().pin(ALICE)


def test_signature_changes_are_reported_as_changed_users(alice):
    xs, _signed, unsigned = alice
    policy = TrustPolicy("tofu", pins=MemoryPinStore())
    policy.observe_keys_query(alice_body(alice))
    body = alice_body(alice)
    body["device_keys"][ALICE]["AUNSIGNED"] = cross_signed(unsigned, xs)  # alice verified her second device
    changes, changed = policy.observe_keys_query(body)
    assert changes == [] and changed == {ALICE}
    assert policy.device_verdict(ALICE, "AUNSIGNED").trusted


# -- messages -------------------------------------------------------------------------------------------------------


def test_an_unchanged_key_query_keeps_the_signature_checks_already_done(alice):
    policy = TrustPolicy("tofu")
    policy.observe_keys_query(alice_body(alice))
    keys = policy._users[ALICE]
    assert keys.device_cross_signed("ASIGNED")
    checked = dict(keys._checked)
    changes, changed = policy.observe_keys_query(alice_body(alice))  # nio asks again: nothing changed
    assert (changes, changed) == ([], set())
    assert policy._users[ALICE] is keys and keys._checked == checked, "the same keys are not checked again"
    _changes, changed = policy.observe_keys_query(alice_body(alice, identity(ALICE)))  # a new identity
    assert changed == {ALICE} and policy._users[ALICE] is not keys, "new keys are checked afresh"
    assert policy._users[ALICE]._checked == {}


def test_sender_verdict_traces_the_session_to_the_device(alice):
    _, signed, unsigned = alice
    policy = TrustPolicy("tofu")
    policy.observe_keys_query(alice_body(alice))
    assert policy.sender_verdict(ALICE, signed.curve25519, claimed_ed25519=signed.ed25519).trusted
    assert not policy.sender_verdict(ALICE, unsigned.curve25519, claimed_ed25519=unsigned.ed25519).trusted
    # the session claims another signing key than the device has
    assert not policy.sender_verdict(ALICE, signed.curve25519, claimed_ed25519=unsigned.ed25519).trusted
    # a forwarded key proves nothing about the sender's device
    assert not policy.sender_verdict(ALICE, signed.curve25519, forwarded=True).trusted
    # a key that belongs to no device of the sender (or to another user's device)
    assert not policy.sender_verdict(BOB, signed.curve25519).trusted
    assert not policy.sender_verdict(ALICE, "B" * 43).trusted
    assert TrustPolicy("all").sender_verdict(ALICE, None).trusted


def test_check_sender_unencrypted_is_trusted_only_under_all():
    class Plain:
        decrypted = False
        sender = ALICE

    tofu = asyncio.run(TrustPolicy("tofu").check_sender("!r:x", Plain()))
    assert tofu.owned is True and tofu.trusted is False  # no device claim to check, and none vouches for it
    assert asyncio.run(TrustPolicy("all").check_sender("!r:x", Plain())).trusted is True


# -- withheld -------------------------------------------------------------------------------------------------------


def test_withheld_content_has_the_spec_fields():
    content = withheld_content(room_id="!r:x", session_id="SID", sender_key="CURVE", code=CODE_UNVERIFIED)
    assert content == {
        "algorithm": "m.megolm.v1.aes-sha2",
        "code": "m.unverified",
        "reason": content["reason"],
        "room_id": "!r:x",
        "session_id": "SID",
        "sender_key": "CURVE",
    }
    assert content["reason"]
    assert withheld_content(room_id="!r", session_id="s", sender_key="k", code="m.blacklisted", reason="no")[
        "reason"
    ] == "no"


def test_incoming_withheld_notices_are_remembered_and_logged_once(caplog):
    policy = TrustPolicy()
    assert policy.record_withheld(ALICE, {"reason": "no code"}) is None
    assert parse_withheld(ALICE, "junk") is None
    notice = policy.record_withheld(
        ALICE, withheld_content(room_id="!r:x", session_id="SID", sender_key="K", code=CODE_UNVERIFIED, reason="R")
    )
    assert notice is not None and policy.withheld_reason("SID") == notice
    assert notice.code == CODE_UNVERIFIED and notice.reason == "R" and notice.room_id == "!r:x"
    assert policy.withheld_reason("OTHER") is None
    with caplog.at_level(logging.INFO, "bot.e2ee.trust"):
        assert policy.log_withheld_for({"SID": ["$e1"], "OTHER": ["$e2"]}) == 1
        assert policy.log_withheld_for({"SID": ["$e1"]}) == 0
    assert "$e1" in caplog.text and "m.unverified" in caplog.text and "(R)" in caplog.text
    assert "$e2" not in caplog.text


def test_withheld_after_sync_reads_waiting_events_from_state(tmp_path, caplog):
    state = StateStore.open(tmp_path / "state.db")
    try:
        policy = TrustPolicy()
        state.add_pending("$waiting", "!r:x", "SID", {"type": "m.room.encrypted", "sender": ALICE})
        state.add_pending("$other", "!r:x", "SID2", {"type": "m.room.encrypted", "sender": ALICE})
        policy.record_withheld(ALICE, {"code": "m.unverified", "session_id": "SID", "room_id": "!r:x"})
        policy.record_withheld(BOB, {"code": "m.unverified", "session_id": "SID2", "room_id": "!r:x"})  # not its sender
        with caplog.at_level(logging.INFO, "bot.e2ee.trust"):
            asyncio.run(policy.after_sync(state))
            asyncio.run(policy.after_sync(state))
        assert caplog.text.count("$waiting") == 1
        assert "$other" not in caplog.text
    finally:
        state.close()


# -- fallback keys --------------------------------------------------------------------------------------------------


def test_signed_fallback_keys_verify_with_the_device_key():
    device = FakeDevice(ALICE, "DEV")
    from nio.api import Api

    body = signed_fallback_keys(
        {"AAAAAQ": "KEY"},
        user_id=ALICE,
        device_id="DEV",
        sign=lambda obj: device.sign(Api.to_canonical_json(obj).encode()),
    )
    obj = body[f"{FALLBACK_KEY_ALGORITHM}:AAAAAQ"]
    assert obj["fallback"] is True and obj["key"] == "KEY"
    assert verify_json(obj, ALICE, "ed25519:DEV", device.ed25519)


def test_fallback_key_used_semantics():
    assert unused_fallback_key_types({}) is None
    assert unused_fallback_key_types({"device_unused_fallback_key_types": ["signed_curve25519"]}) == [
        "signed_curve25519"
    ]
    assert unused_fallback_key_types({"org.matrix.msc2732.device_unused_fallback_key_types": []}) == []
    assert fallback_key_used([]) is True
    assert fallback_key_used(["signed_curve25519"]) is False
    assert fallback_key_used(None) is False  # the server does not support fallback keys


@pytest.fixture
def client(tmp_path) -> RatchetClient:
    client = make_client("http://127.0.0.1:1", ALICE, tmp_path, "pickle-key-for-tests")
    client.restore_login(ALICE, "BOTDEVICE", "token")
    return client


async def test_client_uploads_rotates_fallback_key_and_unsticks_zero_otk_count(client):
    olm = client.olm
    olm.account.shared = True
    olm.uploaded_key_count = 50
    assert not client.should_upload_keys

    # The server reports no unused fallback key: one is generated and waits for upload.
    client.fallback.observe_sync({"device_unused_fallback_key_types": [], "device_one_time_keys_count": {}})
    assert client.fallback.pending and client.should_upload_keys
    first = dict(client.fallback.unpublished())

    sent: list[dict[str, Any]] = []

    async def fake_send(response_class, method, path, data=None, *args, **kwargs):
        import json

        sent.append(json.loads(data))
        resp = KeysUploadResponse(50, 50)
        await client.receive_response(resp)
        return resp

    client._send = fake_send  # type: ignore[method-assign]
    await client.keys_upload()
    (body,) = sent
    assert "one_time_keys" not in body and "device_keys" not in body
    [(key_id, obj)] = body["fallback_keys"].items()
    assert key_id == f"signed_curve25519:{next(iter(first))}"
    assert obj["fallback"] is True and obj["key"] == next(iter(first.values()))
    assert verify_json(obj, ALICE, "ed25519:BOTDEVICE", olm.account.identity_keys["ed25519"])
    assert not client.fallback.pending and not client.should_upload_keys  # published by nio's handling

    # Still unused: nothing to do. Used: a new key, different from the first.
    client.fallback.observe_sync({"device_unused_fallback_key_types": ["signed_curve25519"]})
    assert not client.fallback.pending
    client.fallback.observe_sync({"device_unused_fallback_key_types": []})
    assert client.fallback.pending and client.fallback.unpublished() != first
    assert client.fallback.used == 1

    # nio ignores a zero one-time-key count; the hook makes the client upload a new batch.
    client.fallback.observe_sync({"device_one_time_keys_count": {"signed_curve25519": 0}})
    assert olm.uploaded_key_count == 0 and olm.should_upload_keys
    await client.close()


async def test_fallback_key_survives_a_restart_unpublished(tmp_path):
    client = make_client("http://127.0.0.1:1", ALICE, tmp_path, "pickle-key-for-tests")
    client.restore_login(ALICE, "BOTDEVICE", "token")
    client.olm.account.shared = True
    client.olm.save_account()
    client.fallback.observe_sync({"device_unused_fallback_key_types": []})
    pending = client.fallback.unpublished()
    await client.close()
    again = make_client("http://127.0.0.1:1", ALICE, tmp_path, "pickle-key-for-tests")
    again.restore_login(ALICE, "BOTDEVICE", "token")
    assert again.fallback.unpublished() == pending and again.should_upload_keys
    await again.close()


def test_fallback_needs_an_olm_machine():
    class NoOlm:
        olm = None

    keys = FallbackKeys(NoOlm())  # type: ignore[arg-type]
    assert keys.unpublished() == {} and keys.upload_content() == {} and keys.generate() is None


# -- client hooks ---------------------------------------------------------------------------------------------------


def test_capturing_responses_keep_what_nio_drops(alice):
    body = alice_body(alice)
    resp = _KeysQueryWithCrossSigning.from_dict(body)
    assert resp.ratchet_body["master_keys"] == body["master_keys"]
    assert resp.device_keys == body["device_keys"]
    sync = _SyncWithKeyCounts.from_dict(
        {"next_batch": "s1", "device_unused_fallback_key_types": [], "device_one_time_keys_count": {"x": 1}}
    )
    assert sync.ratchet_keys == {"device_unused_fallback_key_types": [], "device_one_time_keys_count": {"x": 1}}


async def test_keys_query_response_feeds_the_trust_policy(client, alice):
    policy = TrustPolicy("tofu")
    policy.attach(client)
    resp = _KeysQueryWithCrossSigning.from_dict(alice_body(alice))
    await client.receive_response(resp)
    assert policy.pinned(ALICE) == alice[0].master_public
    assert "ASIGNED" in client.olm.device_store[ALICE]  # nio's own handling still ran
    assert policy.device_verdict(ALICE, "ASIGNED").trusted
    await client.query_user_keys([])  # nothing to query: no request, no error
    with pytest.raises(LocalProtocolError):
        await client.keys_query()
    await client.close()


def test_the_bots_own_identity_change_is_followed_not_flagged(alice, caplog):
    policy = TrustPolicy("tofu", own_user_id=ALICE)  # here alice plays the bot
    policy.observe_keys_query(alice_body(alice))
    xs_new = identity(ALICE)
    with caplog.at_level(logging.INFO, "bot.e2ee.trust"):
        changes, _ = policy.observe_keys_query(alice_body(alice, xs_new))
    assert changes == [] and policy.identity_changes() == []
    assert policy.pinned(ALICE) == xs_new.master_public
    assert "own cross-signing identity changed" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unknown_users_are_not_queried_again_and_again(alice):
    policy = TrustPolicy()
    assert policy.wants_query(ALICE)
    policy.note_queried([ALICE])
    assert not policy.wants_query(ALICE)  # the server could not answer: wait before asking again
    assert policy.wants_query(BOB)
    policy.observe_keys_query(keys_query((BOB, None, {})))
    assert not policy.wants_query(BOB) and policy.knows(BOB)
