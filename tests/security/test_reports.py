"""The report feature as an attacker would use it (issue 12, findings 2, 3, 4, 6 and the report items of 7), against
the real Synapse with the real bot.

Each scenario plays a hostile or careless party with a real client: a member forging evidence bundles (a fresh key
naming the bot's device; her own cross-signed device around a real ciphertext), a member who joined late reporting
what was said before, a reporter withdrawing, a stolen or unverified login answering a consent prompt or acting on a
case, an operator whose moderation room is not encrypted, an abuser whose text would render links and images.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import urllib.parse
from typing import Any

import olm
import pytest

from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds, signatures_upload_body
from bot.reports.evidence import build_bundle, sign_bundle
from bot.testing.member import Member

from .attacker import random_text, send_in_the_clear

pytestmark = pytest.mark.e2e

q = urllib.parse.quote


# -- helpers --------------------------------------------------------------------------------------------------------


async def _ratchet(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60
    )


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


async def _cross_sign(member: Member) -> None:
    """Give ``member``'s account cross-signing keys and sign its device with them."""
    xs = CrossSigningKeys(member.user_id, CrossSigningSeeds.generate())
    status, data = await _api(member, "POST", "/_matrix/client/v3/keys/device_signing/upload",
                              xs.device_signing_upload_body())
    assert status == 200, data
    status, data = await _api(
        member, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {member.user_id: [member.device_id]}}
    )
    device = data["device_keys"][member.user_id][member.device_id]
    account = member.client.olm.account
    signed = [xs.sign_device(device), xs.master_key_signed_by_device(member.device_id,
                                                                      lambda m: account.sign(m.decode()))]
    status, data = await _api(member, "POST", "/_matrix/client/v3/keys/signatures/upload",
                              signatures_upload_body(signed))
    assert status == 200 and not data.get("failures"), data


async def _server_event(member: Member, room_id: str, event_id: str) -> dict[str, Any]:
    status, data = await _api(member, "GET", f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/event/{q(event_id)}")
    assert status == 200, data
    return data


def _reports(synapse, admin, event_id):
    data = synapse.admin_request("GET", "/_synapse/admin/v1/event_reports?limit=100", admin.access_token)
    return [r for r in data.get("event_reports", []) if r.get("event_id") == event_id]


def _bot_says(room_id, bot_id, needle):
    def match(rid, event):
        return rid == room_id and event.sender == bot_id and needle in str(getattr(event, "body", ""))
    return match


def _content(event) -> dict[str, Any]:
    return event.source.get("content", {})


async def _join(ratchet, inviter: Member, room: str, name: str) -> Member:
    member = await ratchet.member(name)
    await inviter.client.room_invite(room, member.user_id)
    await member.client.join(room)
    await inviter.wait_joined(room, member.user_id)
    await member.wait_joined(room, member.user_id)
    return member


async def _setup(ratchet, new_user, *, cross_signed=(), mod_room_encrypted=True, **report_options):
    """A moderation room made by `mod`, an encrypted room made by `alice` where the bot may moderate, and mallory.

    ``cross_signed`` names the members ("mod", "alice", "mallory") whose accounts get cross-signing keys before the
    bot first sees them (so the bot's trust policy pins those identities)."""
    mod = await ratchet.member("mod")
    if "mod" in cross_signed:
        await _cross_sign(mod)
    ratchet.bot_user = new_user("bot")
    mod_room = await mod.create_room(invite=[ratchet.bot_user.user_id], name="moderation",
                                     encrypted=mod_room_encrypted)
    options = {"moderation_room": mod_room, "sweep_interval": 0.5, **report_options}
    await ratchet.start_bot({"report": options})
    await mod.wait_joined(mod_room, ratchet.bot_user.user_id)
    alice, mallory = await ratchet.member("alice"), await ratchet.member("mallory")
    for name, member in (("alice", alice), ("mallory", mallory)):
        if name in cross_signed:
            await _cross_sign(member)
    resp = await alice.client.room_create(
        invite=[ratchet.bot_user.user_id, mallory.user_id],
        initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
        power_level_override={"users": {ratchet.bot_user.user_id: 50}},
    )
    room = resp.room_id
    await alice.wait_for(lambda: room in alice.client.rooms, 30, "room")
    await mallory.client.join(room)
    await alice.wait_joined(room, ratchet.bot_user.user_id)
    await alice.wait_joined(room, mallory.user_id)
    return mod, mod_room, alice, mallory, room


async def _report_and_consent(
    member: Member, room: str, target: str, text: str, bot_id: str, *, reason: str = "", dm: str | None = None
) -> tuple[str, str]:
    """``member`` reports ``target`` (whose text is ``text``) and answers yes; returns (DM room, case id)."""
    await member.send(room, f"!report {reason}".strip(), reply_to=target)
    dm = dm or await member.accept_invite()
    await member.expect(_bot_says(dm, bot_id, text))
    await member.send(dm, "yes")
    sent = await member.expect(_bot_says(dm, bot_id, "Your case id is"))
    return dm, sent.body.split("**")[1]


async def _mod_room_caught_up(mod: Member, mod_room: str, bot_id: str) -> None:
    """A moderator command the bot answers: once seen, every earlier bot message in the moderation room is seen."""
    ask = await mod.send(mod_room, f"!case NOSUCHCASE status {random_text()}")
    await mod.expect_reply(mod_room, ask, sender=bot_id)


async def _redacted(member: Member, room_id: str, event_id: str) -> None:
    """Wait for the redaction of ``event_id`` to reach ``member``, then check the server returns no content."""
    await member.expect(
        lambda rid, e: rid == room_id and e.source.get("type") == "m.room.redaction"
        and e.source.get("redacts") == event_id,
        what=f"the redaction of {event_id}",
    )
    held = await _server_event(member, room_id, event_id)
    assert held.get("content") == {}, held
    assert held.get("unsigned", {}).get("redacted_because"), held


# -- finding 2: forged evidence --------------------------------------------------------------------------------------


async def test_verify_report_accepts_only_the_bots_own_signature(ratchet, new_user):
    """A bundle signed by a fresh key that names the bot's device, and one a member signed with her own cross-signed
    device around a real ciphertext, are "not verified" (exit 1 with the reason); offline without a key the tool says
    the signer is not verified (exit 3); the genuine bundle verifies online and against the bot's key."""
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user, cross_signed=("alice", "mallory"))
    bot_id = ratchet.bot_user.user_id
    hostile = 'you are a worthless idiot <a href="https://evil.example/x">prize</a> ![i](mxc://evil.example/img)'
    bad = await mallory.send(room, hostile)
    await _report_and_consent(alice, room, bad, "worthless idiot", bot_id)

    case_msg = await mod.expect(_bot_says(mod_room, bot_id, "Case R-"))
    # Finding 7: the abuser's text cannot render links or images in the moderation room.
    markup = _content(case_msg).get("formatted_body", "")
    assert "worthless idiot" in markup and "<a" not in markup.lower() and "<img" not in markup.lower(), markup
    assert "&lt;a href=" in markup and "<pre><code>" in markup
    file_event = await mod.expect(lambda rid, e: rid == mod_room and _content(e).get("msgtype") == "m.file")
    genuine = json.loads(await mod.download_media(_content(file_event)))
    assert genuine["reported"]["decrypted"]["content"]["body"] == hostile
    # Finding 7: the sender's device is cross-signed by mallory's own identity, and the bundle says so.
    assert genuine["sender_device"]["device_id"] == mallory.device_id
    assert genuine["sender_device"]["cross_signed"] is True

    # The bot's device key, as the homeserver publishes it (what a moderator's client shows as its session key).
    _, keys = await _api(alice, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {bot_id: []}})
    bot_device = genuine["attested_by"]["device_id"]
    bot_key = keys["device_keys"][bot_id][bot_device]["keys"][f"ed25519:{bot_device}"]

    # Forgery 1: invented text, signed by a fresh key, naming the bot and its device.
    fresh = olm.PkSigning(olm.PkSigning.generate_seed())
    invented = json.loads(json.dumps(genuine))
    invented.pop("signatures")
    invented["reported"]["decrypted"]["content"]["body"] = "alice is a saint"
    invented["attested_by"]["ed25519"] = fresh.public_key
    forged_fresh = sign_bundle(invented, fresh.sign)

    # Forgery 2: alice wraps mallory's real ciphertext around invented text and signs with her own (cross-signed)
    # device, in her own name.
    raw = await _server_event(alice, room, bad)
    account = alice.client.olm.account
    forged_member = sign_bundle(
        build_bundle(
            room_id=room, event=raw,
            decrypted={"type": "m.room.message", "room_id": room,
                       "content": {"msgtype": "m.text", "body": "I will hurt you"}},
            sender_device=genuine["sender_device"], bot_user_id=alice.user_id, bot_device_id=alice.device_id,
            bot_device_ed25519=account.identity_keys["ed25519"],
        ),
        lambda data: account.sign(data.decode()),
    )

    files = {}
    for name, bundle in (("genuine", genuine), ("fresh", forged_fresh), ("member", forged_member)):
        files[name] = ratchet.tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(bundle))
    config = str(ratchet.tmp_path / "bot.yaml")

    # The forgeries first (on the old verifier, the member's bundle passed every online check with exit 0, and the
    # fresh key's passed offline).
    run = await _ratchet("verify-report", str(files["member"]), "-c", config)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"signed in the name of {alice.user_id}, not of the bot {bot_id}" in run.stdout, run.stdout
    assert f"not of the bot's device {bot_device}" in run.stdout and "NOT VERIFIED" in run.stdout
    for name in ("fresh", "member", "genuine"):
        run = await _ratchet("verify-report", str(files[name]))  # offline, no key: never "verified"
        assert run.returncode == 3, (name, run.stdout + run.stderr)
        assert "NOT VERIFIED: the signer is NOT verified" in run.stdout, run.stdout
    run = await _ratchet("verify-report", str(files["fresh"]), "-c", config)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "NOT VERIFIED" in run.stdout and f"not the trusted key {bot_key}" in run.stdout, run.stdout
    for name in ("fresh", "member"):
        run = await _ratchet("verify-report", str(files[name]), "--key", bot_key)
        assert run.returncode == 1, (name, run.stdout + run.stderr)
        assert "does not verify with the trusted key" in run.stdout and "NOT VERIFIED" in run.stdout, run.stdout

    # The genuine bundle: verified online (the configured bot and its stored device) and against the bot's key.
    run = await _ratchet("verify-report", str(files["genuine"]), "-c", config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"the signer is the bot: {bot_id} device {bot_device}" in run.stdout
    assert "cross-signed by the bot's identity" in run.stdout and "match what the homeserver holds" in run.stdout
    run = await _ratchet("verify-report", str(files["genuine"]), "--key", bot_key)
    assert run.returncode == 0 and "verified (offline, against the given key)" in run.stdout, run.stdout


# -- finding 3: history the reporter never saw -----------------------------------------------------------------------


async def test_a_late_joiner_cannot_report_or_quote_what_was_said_before(ratchet, new_user, synapse, caplog):
    """Bob joins after a message was sent: reporting it (a reply, or a 🚩 reaction naming its id) is refused and its
    text appears nowhere; context offered for a later message stops at his join."""
    caplog.set_level(logging.INFO)
    admin = new_user("admin", admin=True)
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user)
    bot_id = ratchet.bot_user.user_id
    secret = f"before bob {random_text()}"
    pre = await mallory.send(room, secret)
    bob = await _join(ratchet, alice, room, "bob")
    await mallory.wait_joined(room, bob.user_id)
    after = await mallory.send(room, "after bob one")
    rude = await mallory.send(room, "rude after bob")

    await bob.send(room, "!report look", reply_to=pre)
    dm = await bob.accept_invite()
    refused = await bob.expect(_bot_says(dm, bot_id, "I cannot report that message for you"))
    assert "before you joined" in refused.body
    # The same through a reaction, which names any event id it likes.
    await bob.send(room, "", event_type="m.reaction",
                   content={"m.relates_to": {"rel_type": "m.annotation", "event_id": pre, "key": "🚩"}})
    await bob.expect(lambda rid, e: rid == dm and e.sender == bot_id and e.event_id != refused.event_id
                     and "I cannot report that message for you" in str(getattr(e, "body", "")))

    # A message he did see: reported, with the context offered cut at his join.
    await bob.send(room, "!report rude", reply_to=rude)
    prompt = await bob.expect(_bot_says(dm, bot_id, "You are reporting"))
    assert "rude after bob" in prompt.body and "after bob one" in prompt.body
    assert "The 1 message(s) before it" in prompt.body
    await bob.send(dm, "context")
    await bob.expect(_bot_says(dm, bot_id, "Context included"))
    await bob.send(dm, "yes")
    await bob.expect(_bot_says(dm, bot_id, "Your case id is"))
    case_msg = await mod.expect(_bot_says(mod_room, bot_id, "Case R-"))
    assert "after bob one" in case_msg.body
    file_event = await mod.expect(lambda rid, e: rid == mod_room and _content(e).get("msgtype") == "m.file")
    bundle = json.loads(await mod.download_media(_content(file_event)))
    assert [c["event"]["event_id"] for c in bundle["context"]] == [after]

    await _mod_room_caught_up(mod, mod_room, bot_id)
    everywhere = [e for member in (bob, mod) for _, e in member.events]
    assert not [e for e in everywhere if secret in json.dumps(e.source)], "the pre-join text was shown"
    assert secret not in caplog.text
    assert _reports(synapse, admin, pre) == []


# -- finding 6: withdrawal and retention redact what was posted -----------------------------------------------------


async def test_withdrawal_and_retention_redact_the_case_and_its_evidence(ratchet, new_user, synapse):
    admin = new_user("admin", admin=True)
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user, retention_days=1)
    bot_id = ratchet.bot_user.user_id
    bob = await _join(ratchet, alice, room, "bob")
    await mallory.wait_joined(room, bob.user_id)
    first = await mallory.send(room, "first nasty thing")
    second = await mallory.send(room, "second nasty thing")

    # Two reporters of the first message: alice says yes (the homeserver gets it too), bob "yes mods".
    alice_dm, case_id = await _report_and_consent(alice, room, first, "first nasty", bot_id, reason="alice's reason")
    case_msg = await mod.expect(_bot_says(mod_room, bot_id, f"Case {case_id}"))
    evidence = await mod.expect(lambda rid, e: rid == mod_room and _content(e).get("msgtype") == "m.file")
    await bob.send(room, "!report bob's reason", reply_to=first)
    bob_dm = await bob.accept_invite()
    await bob.expect(_bot_says(bob_dm, bot_id, "You are reporting"))
    await bob.send(bob_dm, "yes mods")
    await bob.expect(_bot_says(bob_dm, bot_id, case_id))
    edit = await mod.expect(
        lambda rid, e: rid == mod_room and "2 report(s)" in str(_content(e).get("m.new_content", {}).get("body"))
    )
    assert "bob's reason" in _content(edit)["m.new_content"]["body"]

    # Bob withdraws: every version that held his reason is redacted, the case is posted anew without it.
    await bob.send(bob_dm, f"!report withdraw {case_id}")
    done = await bob.expect(_bot_says(bob_dm, bot_id, f"Report {case_id} withdrawn"))
    for event in (case_msg, edit, evidence):
        await _redacted(mod, mod_room, event.event_id)
    assert "stays open" in done.body and "homeserver" not in done.body
    assert len(_reports(synapse, admin, first)) == 1  # alice's; bob's "yes mods" sent nothing to the homeserver
    reposted = await mod.expect(
        lambda rid, e: rid == mod_room and e.sender == bot_id and f"Case {case_id}" in str(getattr(e, "body", ""))
        and e.event_id != case_msg.event_id and "m.new_content" not in _content(e)
    )
    assert "1 report(s)" in reposted.body and "bob's reason" not in reposted.body
    new_evidence = await mod.expect(
        lambda rid, e: rid == mod_room and _content(e).get("msgtype") == "m.file" and e.event_id != evidence.event_id
    )

    # Alice withdraws: the case is gone from the moderation room and the bot; she is told the homeserver report
    # cannot be taken back.
    await alice.send(alice_dm, f"!report withdraw {case_id}")
    done = await alice.expect(_bot_says(alice_dm, bot_id, f"Report {case_id} withdrawn"))
    for event in (reposted, new_evidence):
        await _redacted(mod, mod_room, event.event_id)
    assert "redacted" in done.body and "cannot be withdrawn" in done.body
    db = ratchet.tmp_path / "bot-data" / "plugins" / "report.db"
    with sqlite3.connect(db, timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM report_case").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM posted WHERE kind = 'case'").fetchone()[0] == 0

    # Retention: a case older than retention_days is redacted by the sweep, and so is the reporter's DM prompt.
    _, second_id = await _report_and_consent(alice, room, second, "second nasty", bot_id, dm=alice_dm)
    second_msg = await mod.expect(_bot_says(mod_room, bot_id, f"Case {second_id}"))
    second_file = await mod.expect(
        lambda rid, e: rid == mod_room and _content(e).get("msgtype") == "m.file"
        and e.event_id not in (evidence.event_id, new_evidence.event_id)
    )
    prompt = await alice.expect(_bot_says(alice_dm, bot_id, "second nasty thing"))
    first_prompt = await alice.expect(_bot_says(alice_dm, bot_id, "first nasty thing"))
    with sqlite3.connect(db, timeout=10) as conn:  # two days ago, past retention_days: 1
        conn.execute("UPDATE report_case SET created = created - 2 * 86400")
        conn.execute("UPDATE draft SET created = created - 2 * 86400")
    for event in (second_msg, second_file):
        await _redacted(mod, mod_room, event.event_id)
    await _redacted(alice, alice_dm, prompt.event_id)
    await _redacted(alice, alice_dm, first_prompt.event_id)
    with sqlite3.connect(db, timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM report_case").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM draft").fetchone()[0] == 0


# -- finding 4: consent and case actions from untrusted devices ------------------------------------------------------


async def test_consent_and_case_actions_need_a_trusted_device(ratchet, new_user, caplog):
    """A consent "yes" sent in the clear, or from a new unverified login of the reporter, and a !case action from a
    new unverified login of a moderator, are refused with an answer and logged; the same from trusted devices work."""
    caplog.set_level(logging.INFO)
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user, cross_signed=("mod", "alice"),
                                                       send_to_homeserver=False)
    bot_id = ratchet.bot_user.user_id
    bad = await mallory.send(room, "a threat")
    await alice.send(room, "!report", reply_to=bad)
    dm = await alice.accept_invite()
    await alice.expect(_bot_says(dm, bot_id, "You are reporting"))

    clear_yes = await send_in_the_clear(alice, dm, "yes")
    refusal = await alice.expect_reply(dm, clear_yes, sender=bot_id)
    assert "did not accept this answer" in refusal.body and "do not trust" in refusal.body
    stolen = await Member.login(ratchet.synapse.url, alice, ratchet.tmp_path / "alice-new-login")
    try:
        new_yes = await stolen.send(dm, "yes")
        refusal = await alice.expect_reply(dm, new_yes, sender=bot_id)
        assert "did not accept this answer" in refusal.body
    finally:
        await stolen.close()
    await _mod_room_caught_up(mod, mod_room, bot_id)
    assert not [e for e in mod.messages(mod_room, sender=bot_id) if "Case R-" in getattr(e, "body", "")]

    await alice.send(dm, "yes")
    sent = await alice.expect(_bot_says(dm, bot_id, "Your case id is"))
    case_id = sent.body.split("**")[1]
    await mod.expect(_bot_says(mod_room, bot_id, f"Case {case_id}"))

    mod_login = await Member.login(ratchet.synapse.url, mod, ratchet.tmp_path / "mod-new-login")
    try:
        act = await mod_login.send(mod_room, f"!case {case_id} redact")
        refusal = await mod.expect_reply(mod_room, act, sender=bot_id)
        assert "did not accept this !case redact" in refusal.body
    finally:
        await mod_login.close()
    status = await mod.send(mod_room, f"!case {case_id} status")
    assert (await mod.expect_reply(mod_room, status, sender=bot_id)).body == f"Case {case_id}: open."
    held = await _server_event(alice, room, bad)
    assert held.get("content"), "the message was redacted on an untrusted order"
    refused = [r.getMessage() for r in caplog.records if "refused: sent from a device the trust policy" in
               r.getMessage()]
    assert len(refused) == 3, refused

    act = await mod.send(mod_room, f"!case {case_id} redact")
    assert "redacted" in (await mod.expect_reply(mod_room, act, sender=bot_id)).body


# -- finding 7: an unencrypted moderation room ----------------------------------------------------------------------


async def test_no_evidence_goes_to_an_unencrypted_moderation_room(ratchet, new_user, caplog):
    caplog.set_level(logging.INFO)
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user, mod_room_encrypted=False)
    bot_id = ratchet.bot_user.user_id
    secret = f"abuse {random_text()}"
    bad = await mallory.send(room, secret)
    await alice.send(room, "!report", reply_to=bad)
    dm = await alice.accept_invite()
    answer = await alice.expect(_bot_says(dm, bot_id, "not encrypted"))
    assert "Nothing was sent" in answer.body
    assert any(r.levelno == logging.ERROR and "is not encrypted" in r.getMessage() for r in caplog.records)
    await _mod_room_caught_up(mod, mod_room, bot_id)
    seen = [e for rid, e in mod.events + alice.events if rid in (mod_room, dm) and secret in json.dumps(e.source)]
    assert not seen, seen
