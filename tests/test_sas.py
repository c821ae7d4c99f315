"""SAS verification: the maths (bot/crypto/sas.py) against published vectors and two independent implementations
(vodozemac, Element's Rust crypto's; python-olm, libolm), and the flow state machine (bot/e2ee/verification.py) run
against itself, both roles, every way it can go wrong that the spec names.

Vectors: RFC 7748 section 6.1 (X25519), RFC 5869 test case 3 (HKDF-SHA-256 without salt and info), the commitment
vector of matrix-rust-sdk (crates/matrix-sdk-crypto/src/verification/sas/helpers.rs, ``commitment_calculation``),
the spec's emoji table (matrix-spec data-definitions/sas-emoji.json) and the spec's bit layouts of both short codes.
"""

from __future__ import annotations

import json

import olm
import pytest
import vodozemac

from bot.crypto import sas
from bot.crypto.canonical import b64encode
from bot.e2ee.verification import FLOW_TIMEOUT, KEEP_FINISHED, Outcome, Send, VerificationMachine

# ------------------------------------------------------------------------------------------------ the maths


def test_emoji_table_is_the_specs():
    assert len(sas.EMOJI) == 64 and len({e for e, _ in sas.EMOJI}) == 64 and len({n for _, n in sas.EMOJI}) == 64
    # Spot checks against data-definitions/sas-emoji.json (number, code points, description).
    assert sas.EMOJI[0] == ("\U0001f436", "Dog")
    assert sas.EMOJI[21] == ("\u2601\ufe0f", "Cloud")
    assert sas.EMOJI[36] == ("\U0001f44d", "Thumbs Up")
    assert sas.EMOJI[41] == ("\U0001f4a1", "Light Bulb")
    assert sas.EMOJI[53] == ("\u2708\ufe0f", "Aeroplane")
    assert sas.EMOJI[63] == ("\U0001f4cc", "Pin")


def test_short_code_bit_layouts():
    assert sas.emoji_indices(bytes(6)) == [0] * 7
    assert sas.emoji_indices(b"\xff" * 6) == [63] * 7
    # 42 bits 000001 000010 000011 000100 000101 000110 000111, then 6 ignored bits set to 1.
    bits = "".join(f"{i:06b}" for i in range(1, 8)) + "111111"
    assert sas.emoji_indices(int(bits, 2).to_bytes(6, "big")) == [1, 2, 3, 4, 5, 6, 7]
    assert sas.decimals(bytes(5)) == (1000, 1000, 1000)
    assert sas.decimals(b"\xff" * 5) == (9191, 9191, 9191)
    bits = f"{1:013b}{2:013b}{8191:013b}0"
    assert sas.decimals(int(bits, 2).to_bytes(5, "big")) == (1001, 1002, 9191)
    with pytest.raises(ValueError):
        sas.decimals(bytes(4))


def test_x25519_rfc7748_vector():
    alice = sas.SasKeyPair(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = sas.SasKeyPair(bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public_key == b64encode(
        bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    )
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.shared_secret(bob.public_key) == shared == bob.shared_secret(alice.public_key)


def test_low_order_and_malformed_keys_are_refused():
    pair = sas.SasKeyPair()
    with pytest.raises(sas.SasError):
        pair.shared_secret(b64encode(bytes(32)))  # the all-zero point: a non-contributory secret
    with pytest.raises(sas.SasError):
        pair.shared_secret("not base64!")
    with pytest.raises(sas.SasError):
        pair.shared_secret(b64encode(bytes(31)))


def test_hkdf_rfc5869_case_3():
    okm = sas.hkdf_bytes(b"\x0b" * 22, b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_commitment_matrix_rust_sdk_vector():
    content = {
        "from_device": "XOWLHHFSWM",
        "transaction_id": "bYxBsirjUJO9osar6ST4i2M2NjrYLA7l",
        "method": "m.sas.v1",
        "key_agreement_protocols": ["curve25519-hkdf-sha256", "curve25519"],
        "hashes": ["sha256"],
        "message_authentication_codes": ["hkdf-hmac-sha256", "hmac-sha256"],
        "short_authentication_string": ["decimal", "emoji"],
    }
    key = "Q/NmNFEUS1fS+YeEmiZkjjblKTitrKOAk7cPEumcMlg"
    assert sas.commitment(key, content) == "CCQmB4JCdB0FW21FdAnHj/Hu8+W9+Nb0vgwPEnZZQ4g"


def test_info_strings_are_the_specs():
    info = sas.sas_info("@a:x", "ADEV", "akey", "@b:x", "BDEV", "bkey", "txn")
    assert info == b"MATRIX_KEY_VERIFICATION_SAS|@a:x|ADEV|akey|@b:x|BDEV|bkey|txn"
    assert sas.mac_info("@a:x", "ADEV", "@b:x", "BDEV", "txn") == "MATRIX_KEY_VERIFICATION_MAC@a:xADEV@b:xBDEVtxn"


def test_against_vodozemac_and_libolm():
    ours = sas.SasKeyPair()
    theirs = vodozemac.Sas()
    their_public = theirs.public_key.to_base64()
    established = theirs.diffie_hellman(vodozemac.Curve25519PublicKey.from_base64(ours.public_key))
    secret = ours.shared_secret(their_public)
    info = sas.sas_info("@a:x", "ADEV", ours.public_key, "@b:x", "BDEV", their_public, "txn")
    got = established.bytes(info.decode())
    data = sas.sas_bytes(secret, info)
    assert list(got.emoji_indices) == sas.emoji_indices(data)
    assert tuple(got.decimals) == sas.decimals(data)
    mac_info = sas.mac_info("@a:x", "ADEV", "@b:x", "BDEV", "txn") + "ed25519:ADEV"
    assert established.calculate_mac("somekey", mac_info) == sas.calculate_mac(secret, mac_info, "somekey")

    libolm = olm.Sas()
    libolm.set_their_pubkey(ours.public_key)
    secret = ours.shared_secret(libolm.pubkey)
    assert libolm.generate_bytes(info.decode(), 6) == sas.sas_bytes(secret, info)
    assert libolm.calculate_mac_fixed_base64("k", mac_info) == sas.calculate_mac(secret, mac_info, "k")


def test_mac_content_round_trip_and_tampering():
    secret = b"s" * 32
    info = sas.mac_info("@a:x", "ADEV", "@b:x", "BDEV", "txn")
    keys = {"ed25519:ADEV": "devkey", "ed25519:MASTER": "MASTER"}
    content = sas.mac_content(secret, info, keys)
    checked = sas.check_mac_content(secret, info, content, keys)
    assert checked.verified == keys and checked.unknown == []
    # A key we do not know is ignored; a key we know with another value is a mismatch.
    assert sas.check_mac_content(secret, info, content, {"ed25519:ADEV": "devkey"}).unknown == ["ed25519:MASTER"]
    with pytest.raises(sas.SasError) as err:
        sas.check_mac_content(secret, info, content, {"ed25519:ADEV": "otherkey"})
    assert err.value.code == "m.key_mismatch"
    dropped = {"mac": {"ed25519:ADEV": content["mac"]["ed25519:ADEV"]}, "keys": content["keys"]}
    with pytest.raises(sas.SasError) as err:
        sas.check_mac_content(secret, info, dropped, keys)  # the key list MAC covers both ids
    assert err.value.code == "m.key_mismatch"
    with pytest.raises(sas.SasError) as err:
        sas.check_mac_content(b"t" * 32, info, content, keys)
    assert err.value.code == "m.key_mismatch"


# ------------------------------------------------------------------------------------------------ the flow


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Keys:
    """A key directory: user -> (device -> ed25519), user -> master key."""

    def __init__(self, devices: dict[str, dict[str, str]], masters: dict[str, str]) -> None:
        self.devices = devices
        self.masters = masters

    def device_ed25519(self, user_id: str, device_id: str) -> str | None:
        return self.devices.get(user_id, {}).get(device_id)

    def master_key(self, user_id: str) -> str | None:
        return self.masters.get(user_id)


ALICE, BOB = "@alice:x", "@bob:x"
DIRECTORY = {ALICE: {"ADEV": "alice-device-key"}, BOB: {"BDEV": "bob-device-key", "BDEV2": "bob-device2-key"}}
MASTERS = {ALICE: "alicemaster", BOB: "bobmaster"}


def machines(clock: Clock | None = None, **kwargs):
    clock = clock or Clock()
    ids = iter(f"txn{i}" for i in range(100))
    alice = VerificationMachine(ALICE, "ADEV", Keys(DIRECTORY, MASTERS), now=clock, new_id=lambda: next(ids), **kwargs)
    bob = VerificationMachine(BOB, "BDEV", Keys(DIRECTORY, MASTERS), now=clock, new_id=lambda: next(ids))
    return alice, bob, clock


def deliver(actions, machines_by_user, *, log=None, tamper=None, from_user=None):
    """Deliver every Send to its machine (to-device), recursively; return all outcomes."""
    outcomes: list[Outcome] = []
    queue = [(from_user, a) for a in actions]
    while queue:
        sender, action = queue.pop(0)
        if isinstance(action, Outcome):
            outcomes.append(action)
            continue
        assert isinstance(action, Send)
        if log is not None:
            log.append((sender, action.event_type, action.to_device, action.content))
        target = machines_by_user.get(action.to_user)
        if target is None or (action.to_device not in ("*", target.own_device)):
            continue
        content = tamper(action) if tamper else action.content
        if content is None:
            continue
        produced = target.receive_to_device(sender, action.event_type, content)
        queue += [(target.own_user, a) for a in produced]
    return outcomes


def test_full_to_device_flow_both_roles():
    alice, bob, _ = machines()
    peers = {ALICE: alice, BOB: bob}
    log: list = []
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    outcomes = deliver(actions, peers, log=log, from_user=BOB)
    types = [t for _, t, _, _ in log]
    assert types == [
        "m.key.verification.request",
        "m.key.verification.ready",
        "m.key.verification.start",
        "m.key.verification.accept",
        "m.key.verification.key",
        "m.key.verification.key",
    ]
    flow_a = alice.get(flow_b.flow_id)
    assert flow_a.state == flow_b.state == "keys"
    assert flow_a.emoji == flow_b.emoji and len(flow_a.emoji) == 7
    assert flow_a.decimals == flow_b.decimals
    assert {o.kind for o in outcomes} == {"requested", "sas"}
    # Nothing happens until each operator confirms; the order does not matter.
    outcomes = deliver(alice.confirm(flow_a.flow_id), peers, log=log, from_user=ALICE)
    assert flow_a.state == "confirmed" and not outcomes
    outcomes = deliver(bob.confirm(flow_b.flow_id), peers, log=log, from_user=BOB)
    assert flow_a.state == flow_b.state == "done"
    assert [o.kind for o in outcomes if o.verification is flow_b] == ["verified"]
    assert [o.kind for o in outcomes if o.verification is flow_a] == ["verified"]
    assert flow_a.verified_keys == {"ed25519:BDEV": "bob-device-key", "ed25519:bobmaster": "bobmaster"}
    assert flow_b.verified_keys == {"ed25519:ADEV": "alice-device-key", "ed25519:alicemaster": "alicemaster"}
    assert [t for _, t, _, _ in log][-4:] == [
        "m.key.verification.mac",
        "m.key.verification.mac",
        "m.key.verification.done",
        "m.key.verification.done",
    ]
    # Every to-device message carried the transaction id; the accept's commitment is over the start as sent.
    assert all(c["transaction_id"] == flow_b.flow_id for _, _, _, c in log)
    start = next(c for _, t, _, c in log if t == "m.key.verification.start")
    accept = next(c for _, t, _, c in log if t == "m.key.verification.accept")
    assert start["message_authentication_codes"] == ["hkdf-hmac-sha256.v2"]
    assert accept["message_authentication_code"] == "hkdf-hmac-sha256.v2"
    assert accept["short_authentication_string"] == ["decimal", "emoji"]
    json.dumps([c for *_, c in log])  # all plain JSON


def test_request_to_several_devices_cancels_the_others_with_accepted():
    alice, bob, _ = machines()
    log: list = []
    flow, actions = alice.request_to_device(BOB, ["BDEV", "BDEV2"])
    assert [a.to_device for a in actions] == ["BDEV", "BDEV2"]
    deliver(actions, {ALICE: alice, BOB: bob}, log=log, from_user=ALICE)
    cancels = [(d, c["code"]) for _, t, d, c in log if t == "m.key.verification.cancel"]
    assert cancels == [("BDEV2", "m.accepted")]
    assert flow.other_device == "BDEV" and flow.state == "keys"


def test_operator_mismatch_cancels_both_sides():
    alice, bob, _ = machines()
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions, {ALICE: alice, BOB: bob}, from_user=BOB)
    outcomes = deliver(alice.mismatch(flow_b.flow_id), {ALICE: alice, BOB: bob}, from_user=ALICE)
    flow_a = alice.get(flow_b.flow_id)
    assert flow_a.state == flow_b.state == "cancelled"
    assert flow_a.cancel_code == flow_b.cancel_code == "m.mismatched_sas"
    assert flow_a.cancelled_by_us is True and flow_b.cancelled_by_us is False
    assert {o.kind for o in outcomes} == {"cancelled"}
    with pytest.raises(ValueError):
        alice.confirm(flow_b.flow_id)


def test_user_cancel():
    alice, bob, _ = machines()
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions, {ALICE: alice, BOB: bob}, from_user=BOB)
    deliver(bob.cancel(flow_b.flow_id), {ALICE: alice, BOB: bob}, from_user=BOB)
    assert alice.get(flow_b.flow_id).cancel_code == "m.user" and flow_b.state == "cancelled"
    assert alice.pending() == [] and bob.pending() == []


def test_mismatched_commitment():
    alice, bob, _ = machines()

    def tamper(action):
        if action.event_type == "m.key.verification.accept":
            return action.content | {"commitment": b64encode(b"x" * 32)}
        return action.content

    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions, {ALICE: alice, BOB: bob}, tamper=tamper, from_user=BOB)
    # Bob started (he asked, alice answered ready), alice accepted: bob checks alice's key against her commitment.
    assert flow_b.state == "cancelled" and flow_b.cancel_code == "m.mismatched_commitment"
    assert alice.get(flow_b.flow_id).cancel_code == "m.mismatched_commitment"


def test_bad_mac_is_a_key_mismatch():
    clock = Clock()
    alice, bob, _ = machines(clock)
    # Alice's directory says bob's device has another key (a man in the middle would look like this).
    alice.keys = Keys({**DIRECTORY, BOB: {"BDEV": "not-bobs-key"}}, {ALICE: "alicemaster"})
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    peers = {ALICE: alice, BOB: bob}
    deliver(actions, peers, from_user=BOB)
    deliver(bob.confirm(flow_b.flow_id), peers, from_user=BOB)
    flow_a = alice.get(flow_b.flow_id)
    assert flow_a.state == flow_b.state == "cancelled"
    assert flow_a.cancel_code == "m.key_mismatch" and flow_a.verified_keys == {}


def test_a_tampered_mac_is_a_key_mismatch():
    alice, bob, _ = machines()

    def tamper(action):
        if action.event_type == "m.key.verification.mac":
            return action.content | {"keys": b64encode(b"y" * 32)}
        return action.content

    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    peers = {ALICE: alice, BOB: bob}
    deliver(actions, peers, from_user=BOB)
    deliver(alice.confirm(flow_b.flow_id), peers, tamper=tamper, from_user=ALICE)
    assert flow_b.state == "cancelled" and flow_b.cancel_code == "m.key_mismatch"


def test_unexpected_message_and_unknown_transaction():
    alice, bob, _ = machines()
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions[:1], {BOB: bob}, from_user=BOB)  # alice gets nothing yet
    alice_actions = alice.receive_to_device(BOB, "m.key.verification.request", actions[0].content)
    assert [a.event_type for a in alice_actions if isinstance(a, Send)] == ["m.key.verification.ready"]
    # A key before any start: out of order.
    out = alice.receive_to_device(BOB, "m.key.verification.key", {"transaction_id": flow_b.flow_id, "key": "k"})
    assert [(a.event_type, a.content["code"]) for a in out if isinstance(a, Send)] == [
        ("m.key.verification.cancel", "m.unexpected_message")
    ]
    # A MAC for a transaction nobody knows: m.unknown_transaction; a cancel for one: ignored (no error loops).
    out = alice.receive_to_device(BOB, "m.key.verification.mac", {"transaction_id": "nope", "mac": {}, "keys": ""})
    assert [a.content["code"] for a in out] == ["m.unknown_transaction"]
    assert alice.receive_to_device(BOB, "m.key.verification.cancel", {"transaction_id": "nope", "code": "m.user"}) == []
    # Nothing is answered about a flow once it is over.
    assert alice.receive_to_device(BOB, "m.key.verification.key", {"transaction_id": flow_b.flow_id, "key": "k"}) == []


def test_timeouts_and_stale_requests():
    clock = Clock()
    alice, bob, _ = machines(clock)
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions, {ALICE: alice, BOB: bob}, from_user=BOB)
    clock.t += FLOW_TIMEOUT - 1
    assert alice.tick() == []
    clock.t += 2
    out = alice.tick()
    assert [a.content["code"] for a in out if isinstance(a, Send)] == ["m.timeout"]
    assert alice.get(flow_b.flow_id).state == "cancelled"
    # A to-device request stamped 11 minutes ago, or 6 minutes ahead, is ignored.
    for skew in (-660, 360):
        content = {"from_device": "BDEV", "methods": ["m.sas.v1"], "transaction_id": f"old{skew}",
                   "timestamp": int((clock.t + skew) * 1000)}
        assert alice.receive_to_device(BOB, "m.key.verification.request", content) == []
        assert alice.get(f"old{skew}") is None


def test_second_request_from_the_same_device_cancels_both():
    alice, bob, _ = machines()
    first, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions, {ALICE: alice}, from_user=BOB)
    second, actions = bob.request_to_device(ALICE, ["ADEV"])
    log: list = []
    deliver(actions, {ALICE: alice}, log=log, from_user=BOB)
    cancels = sorted((c["transaction_id"], c["code"]) for _, t, _, c in log if t == "m.key.verification.cancel")
    assert cancels == sorted([(first.flow_id, "m.unexpected_message"), (second.flow_id, "m.unexpected_message")])
    assert alice.pending() == []


def test_crossing_starts_smaller_user_wins():
    alice, _bob, _ = machines()
    flow, _actions = alice.request_to_device(BOB, ["BDEV"])
    ready = {"from_device": "BDEV", "methods": ["m.sas.v1"], "transaction_id": flow.flow_id}
    out = alice.receive_to_device(BOB, "m.key.verification.ready", ready)
    assert [a.event_type for a in out if isinstance(a, Send)] == ["m.key.verification.start"]
    bobs_start = dict(out[0].content) | {"from_device": "BDEV"}
    # @alice < @bob: alice's own start counts, bob's is ignored.
    assert alice.receive_to_device(BOB, "m.key.verification.start", bobs_start) == []
    assert flow.we_started and flow.state == "started"
    # Seen from bob's side (the larger id), alice's start wins and bob accepts it.
    bob2 = VerificationMachine(BOB, "BDEV", Keys(DIRECTORY, MASTERS))
    bflow, _ = bob2.request_to_device(ALICE, ["ADEV"])
    bob2.receive_to_device(ALICE, "m.key.verification.ready",
                           {"from_device": "ADEV", "methods": ["m.sas.v1"], "transaction_id": bflow.flow_id})
    alices_start = dict(bflow.start_content) | {"from_device": "ADEV"}
    out = bob2.receive_to_device(ALICE, "m.key.verification.start", alices_start)
    assert [a.event_type for a in out if isinstance(a, Send)] == ["m.key.verification.accept"]
    assert not bflow.we_started and bflow.state == "accepted"


def test_requests_from_users_not_allowed_are_refused():
    alice, bob, _ = machines(accept_from=lambda user: user == "@admin:x")
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    log: list = []
    deliver(actions, {ALICE: alice, BOB: bob}, log=log, from_user=BOB)
    assert [(t, c.get("code")) for _, t, _, c in log][1:] == [("m.key.verification.cancel", "m.user")]
    assert flow_b.state == "cancelled"


def test_unknown_methods_are_refused():
    alice, _, _ = machines()
    content = {"from_device": "BDEV", "methods": ["m.qr_code.show.v1"], "transaction_id": "t1"}
    out = alice.receive_to_device(BOB, "m.key.verification.request", content)
    assert [a.content["code"] for a in out if isinstance(a, Send)] == ["m.unknown_method"]
    # A start offering only the deprecated MAC is refused.
    content = {"from_device": "BDEV", "methods": ["m.sas.v1"], "transaction_id": "t2"}
    alice.receive_to_device(BOB, "m.key.verification.request", content)
    start = {"from_device": "BDEV", "method": "m.sas.v1", "transaction_id": "t2",
             "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
             "message_authentication_codes": ["hkdf-hmac-sha256"], "short_authentication_string": ["decimal"]}
    out = alice.receive_to_device(BOB, "m.key.verification.start", start)
    assert [a.content["code"] for a in out if isinstance(a, Send)] == ["m.unknown_method"]


def test_start_without_request_is_handled():
    alice, _bob, _ = machines()
    start = {"from_device": "BDEV", "method": "m.sas.v1", "transaction_id": "legacy",
             "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
             "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
             "short_authentication_string": ["decimal", "emoji"]}
    out = alice.receive_to_device(BOB, "m.key.verification.start", start)
    assert [a.event_type for a in out if isinstance(a, Send)] == ["m.key.verification.accept"]
    assert alice.get("legacy").state == "accepted"


def test_in_room_flow():
    alice, bob, _ = machines()
    room = "!dm:x"
    request = VerificationMachine.room_request_content("BDEV", ALICE)
    flow_b = bob.room_request_sent(room, "$request", ALICE)
    events = [(BOB, "m.room.message", request, "$request")]
    seen: list[str] = []
    n = 0
    while events:
        sender, etype, content, event_id = events.pop(0)
        seen.append(etype if etype != "m.room.message" else content["msgtype"])
        for machine in (alice, bob):
            for action in machine.receive_room_event(room, sender, etype, content, event_id, None):
                if isinstance(action, Send):
                    assert action.room_id == room and "transaction_id" not in action.content
                    assert action.content["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$request"}
                    n += 1
                    events.append((machine.own_user, action.event_type, action.content, f"$e{n}"))
        if not events and flow_b.state == "keys" and not flow_b.our_mac_sent:
            for machine in (alice, bob):
                for action in machine.confirm("$request"):
                    if isinstance(action, Send):
                        n += 1
                        events.append((machine.own_user, action.event_type, action.content, f"$e{n}"))
    flow_a = alice.get("$request")
    assert flow_a.state == flow_b.state == "done"
    assert flow_a.emoji == flow_b.emoji and flow_a.verified_keys["ed25519:bobmaster"] == "bobmaster"
    assert seen[:6] == [
        "m.key.verification.request",
        "m.key.verification.ready",
        "m.key.verification.start",
        "m.key.verification.accept",
        "m.key.verification.key",
        "m.key.verification.key",
    ]
    # Requests meant for someone else, and a third member's events in the flow, are ignored.
    other = VerificationMachine.room_request_content("BDEV", "@carol:x")
    assert alice.receive_room_event(room, BOB, "m.room.message", other, "$other") == []


def test_finished_flows_are_forgotten_after_an_hour():
    clock = Clock()
    alice, bob, _ = machines(clock)
    flow_b, actions = bob.request_to_device(ALICE, ["ADEV"])
    deliver(actions, {ALICE: alice, BOB: bob}, from_user=BOB)
    deliver(alice.cancel(flow_b.flow_id), {ALICE: alice, BOB: bob}, from_user=ALICE)
    clock.t += KEEP_FINISHED - 1
    alice.tick()
    assert alice.get(flow_b.flow_id) is not None
    clock.t += 2
    assert alice.tick() == [] and alice.get(flow_b.flow_id) is None


def test_messages_from_another_device_of_the_other_user_are_ignored():
    alice, _bob, _ = machines()
    flow, _ = alice.request_to_device(BOB, ["BDEV", "BDEV2"])
    ready = {"from_device": "BDEV", "methods": ["m.sas.v1"], "transaction_id": flow.flow_id}
    alice.receive_to_device(BOB, "m.key.verification.ready", ready)
    assert flow.state == "started"
    late = {"from_device": "BDEV2", "methods": ["m.sas.v1"], "transaction_id": flow.flow_id}
    assert alice.receive_to_device(BOB, "m.key.verification.ready", late) == []
    assert flow.state == "started"
