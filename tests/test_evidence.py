"""Evidence bundles: built, signed, verified; any altered byte is caught."""

import json

import olm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.reports.evidence import EvidenceError, build_bundle, sign_bundle, verify_bundle

SIGNER = olm.PkSigning(b"\x01" * 32)
EVENT = {
    "event_id": "$abc",
    "type": "m.room.encrypted",
    "sender": "@mallory:x",
    "origin_server_ts": 1700000000000,
    "room_id": "!r:x",
    "content": {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEpAB...",
        "session_id": "SESSION",
        "device_id": "MALDEV",
        "sender_key": "curve",
    },
}
DECRYPTED = {"type": "m.room.message", "room_id": "!r:x", "content": {"msgtype": "m.text", "body": "nasty words"}}


def bundle(**over):
    kw = dict(
        room_id="!r:x", event=EVENT, decrypted=DECRYPTED,
        sender_device={"device_id": "MALDEV", "keys": {"ed25519": "k"}, "cross_signed": True},
        bot_user_id="@bot:x", bot_device_id="BOTDEV", bot_device_ed25519=SIGNER.public_key, collected_at_ms=1,
    )
    kw.update(over)
    return sign_bundle(build_bundle(**kw), SIGNER.sign)


def test_genuine_bundle_verifies():
    result = verify_bundle(bundle(), trusted_device_key=SIGNER.public_key)
    assert result.ok, result.problems
    assert any("signed by @bot:x" in c for c in result.checks)


def test_any_altered_byte_is_rejected():
    text = json.dumps(bundle())
    i = text.index("nasty")
    altered = json.loads(text[:i] + "N" + text[i + 1:])
    assert not verify_bundle(altered).ok


def test_wrong_key_or_inconsistent_parts_are_rejected():
    other = olm.PkSigning(b"\x02" * 32)
    assert not verify_bundle(bundle(), trusted_device_key=other.public_key).ok
    mismatched = bundle(sender_device={"device_id": "OTHER", "keys": {}, "cross_signed": False})
    assert "sender device" in " ".join(verify_bundle(mismatched).problems)
    with pytest.raises(EvidenceError):
        build_bundle(room_id="!r:x", event=EVENT, decrypted=None, sender_device=None, bot_user_id="@b:x",
                     bot_device_id="D", bot_device_ed25519="k")


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0), st.sampled_from(["0", "z", "\\u0000", " "]))
def test_fuzzed_single_character_changes(pos, ch):
    text = json.dumps(bundle(), sort_keys=True)
    pos %= len(text)
    mutated = text[:pos] + ch + text[pos + 1:]
    if mutated == text:
        return
    try:
        data = json.loads(mutated)
    except ValueError:
        return
    if data == json.loads(text):
        return  # e.g. a whitespace change outside strings
    assert not verify_bundle(data).ok
