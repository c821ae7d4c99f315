"""Evidence bundles: built, signed, verified; any altered byte is caught; a bundle signed by anyone but the bot's key
is not verified (issue 12, finding 2: forged evidence)."""

import asyncio
import json

import olm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.reports.evidence import EvidenceError, build_bundle, sign_bundle, verify_bundle
from bot.reports.moderation import member_could_see
from bot.reports.verify import verify_report

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


def bundle(signer=SIGNER, **over):
    kw = dict(
        room_id="!r:x", event=EVENT, decrypted=DECRYPTED,
        sender_device={"device_id": "MALDEV", "keys": {"ed25519": "k"}, "cross_signed": True},
        bot_user_id="@bot:x", bot_device_id="BOTDEV", bot_device_ed25519=signer.public_key, collected_at_ms=1,
    )
    kw.update(over)
    return sign_bundle(build_bundle(**kw), signer.sign)


def test_genuine_bundle_verifies():
    result = verify_bundle(
        bundle(), trusted_device_key=SIGNER.public_key, expected_user_id="@bot:x", expected_device_id="BOTDEV"
    )
    assert result.ok and result.signer_verified, result.problems
    assert any("signed by the trusted key" in c and "@bot:x" in c for c in result.checks)


def test_without_a_trusted_key_the_signer_is_not_verified():
    result = verify_bundle(bundle())
    assert result.consistent and not result.signer_verified and not result.ok
    assert "NOT verified" in " ".join(result.unverified)


def test_a_fresh_key_naming_the_bots_device_is_not_the_bot():
    forger = olm.PkSigning(b"\x09" * 32)
    forged = bundle(signer=forger, decrypted={**DECRYPTED, "content": {"msgtype": "m.text", "body": "invented"}})
    assert forged["attested_by"] == {"user_id": "@bot:x", "device_id": "BOTDEV", "ed25519": forger.public_key}
    alone = verify_bundle(forged)
    assert alone.consistent and not alone.ok  # self-consistent, nothing more
    checked = verify_bundle(forged, trusted_device_key=SIGNER.public_key)
    assert not checked.ok and not checked.signer_verified
    assert "not the trusted key" in " ".join(checked.problems)
    assert "does not verify with the trusted key" in " ".join(checked.problems)


def test_a_member_signing_in_her_own_name_is_not_the_bot():
    member = olm.PkSigning(b"\x05" * 32)
    forged = bundle(signer=member, bot_user_id="@alice:x", bot_device_id="ALICEDEV")
    result = verify_bundle(
        forged, trusted_device_key=member.public_key, expected_user_id="@bot:x", expected_device_id="BOTDEV"
    )
    assert not result.ok and not result.signer_verified
    problems = " ".join(result.problems)
    assert "not of the bot @bot:x" in problems and "not of the bot's device BOTDEV" in problems


def test_context_from_another_room_is_inconsistent():
    other = {**EVENT, "event_id": "$other", "room_id": "!elsewhere:x"}
    result = verify_bundle(bundle(context=[(other, {**DECRYPTED, "room_id": "!elsewhere:x"})]))
    assert not result.consistent and "context message 1" in " ".join(result.problems)


@pytest.mark.parametrize("key, forged, code, needle", [
    (None, False, 3, "who signed it is not verified"),
    (SIGNER.public_key, False, 0, "verified (offline, against the given key)"),
    (SIGNER.public_key, True, 1, "does not verify with the trusted key"),
    (None, True, 3, "NOT verified"),
])
def test_cli_exit_codes(tmp_path, capsys, key, forged, code, needle):
    made = bundle(signer=olm.PkSigning(b"\x09" * 32)) if forged else bundle()
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(made))
    assert asyncio.run(verify_report(path, None, key)) == code
    out = capsys.readouterr().out
    assert needle in out, out
    if code:
        assert "NOT VERIFIED" in out


def test_any_altered_byte_is_rejected():
    text = json.dumps(bundle())
    i = text.index("nasty")
    altered = json.loads(text[:i] + "N" + text[i + 1:])
    assert not verify_bundle(altered).consistent
    assert not verify_bundle(altered, trusted_device_key=SIGNER.public_key).ok


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
    assert not verify_bundle(data).consistent


# -- who could see an event (issue 12, finding 3: reports leaked history the reporter never saw) -------------------

@pytest.mark.parametrize("membership, visibility, encrypted, seen", [
    # the spec's rule for a current member, on unencrypted events
    (None, "world_readable", False, True),
    ("join", "joined", False, True),
    ("leave", "joined", False, False),
    (None, "joined", False, False),
    ("invite", "joined", False, False),
    ("invite", "invited", False, True),
    (None, "invited", False, False),
    (None, "shared", False, True),  # they joined after the event: shared history is theirs
    ("leave", "shared", False, True),
    (None, None, False, True),  # no history visibility state: shared
    (None, "made_up", False, False),  # unknown: the strictest, joined
    ("join", "made_up", False, True),
    # encrypted: the room key went only to the members of the moment
    ("join", "shared", True, True),
    (None, "shared", True, False),
    (None, "world_readable", True, False),
    ("leave", "shared", True, False),
    ("invite", "shared", True, True),
    ("invite", "invited", True, True),
    ("invite", "joined", True, False),
    ("ban", "world_readable", True, False),
])
def test_member_could_see(membership, visibility, encrypted, seen):
    assert member_could_see(membership=membership, visibility=visibility, encrypted=encrypted) is seen
