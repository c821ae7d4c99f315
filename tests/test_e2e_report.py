"""Issue 5 end to end: consent-first abuse reports, with real members in encrypted rooms and Synapse's admin API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bot.reports.evidence import verify_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.both_engines]


async def _ratchet(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60
    )


def _reports(synapse, admin, event_id):
    data = synapse.admin_request("GET", "/_synapse/admin/v1/event_reports?limit=100", admin.access_token)
    return [r for r in data.get("event_reports", []) if r.get("event_id") == event_id]


async def _setup(ratchet, new_user, **report_options):
    """Moderation room (made by `mod`), a main encrypted room where the bot may moderate, and members."""
    mod = await ratchet.member("mod")
    ratchet.bot_user = new_user("bot")
    mod_room = await mod.create_room(invite=[ratchet.bot_user.user_id], name="moderation")
    options = {"moderation_room": mod_room, "sweep_interval": 0.5, **report_options}
    await ratchet.start_bot({"report": options})
    await mod.wait_joined(mod_room, ratchet.bot_user.user_id)
    alice, mallory = await ratchet.member("alice"), await ratchet.member("mallory")
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


async def _mod_room_caught_up(mod, mod_room, bot_id) -> None:
    """A moderator command the bot answers in the moderation room: once its answer is seen, every earlier bot message
    in that room is seen too (instead of a pause before a "nothing was posted" check)."""
    ask = await mod.send(mod_room, "!case NOSUCHCASE status")
    answer = await mod.expect_reply(mod_room, ask, sender=bot_id)
    assert answer.body == "No case NOSUCHCASE.", answer.body


def _bot_says(member, room_id, bot_id, needle):
    def match(rid, event):
        return rid == room_id and event.sender == bot_id and needle in str(getattr(event, "body", ""))
    return match


async def test_consent_then_case_evidence_merge_and_redact(ratchet, new_user, synapse):
    admin = new_user("admin", admin=True)
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user)
    bot_id = ratchet.bot_user.user_id
    # Bob joins before the messages: only what a member could see can be reported (tests/security/test_reports.py).
    bob = await ratchet.member("bob")
    await alice.client.room_invite(room, bob.user_id)
    await bob.client.join(room)
    await bob.wait_joined(room, bob.user_id)
    await mallory.wait_joined(room, bob.user_id)
    await mallory.send(room, "before one")
    await mallory.send(room, "before two")
    bad = await mallory.send(room, "you are a worthless idiot")

    report_cmd = await alice.send(room, "!report insult", reply_to=bad)
    ack = await alice.expect_reply(room, report_cmd, sender=bot_id)
    assert "private message" in ack.body and "idiot" not in ack.body  # no details in the room
    dm = await alice.accept_invite()
    prompt = await alice.expect(_bot_says(alice, dm, bot_id, "You are reporting a message"))
    assert "you are a worthless idiot" in prompt.body and mallory.user_id in prompt.body
    assert "anonymous" in prompt.body and "30 days" in prompt.body and "not included" in prompt.body
    assert prompt.decrypted

    # Nothing has left the bot before consent.
    await _mod_room_caught_up(mod, mod_room, bot_id)
    assert not [e for e in mod.messages(mod_room, sender=bot_id) if "Case" in getattr(e, "body", "")]
    assert _reports(synapse, admin, bad) == []

    await alice.send(dm, "context")
    await alice.expect(_bot_says(alice, dm, bot_id, "Context included"))
    await alice.send(dm, "yes")
    sent = await alice.expect(_bot_says(alice, dm, bot_id, "Your case id is"))
    case_id = sent.body.split("**")[1]

    case_msg = await mod.expect(_bot_says(mod, mod_room, bot_id, f"Case {case_id}"))
    assert "you are a worthless idiot" in case_msg.body and "before two" in case_msg.body
    assert "1 report(s)" in case_msg.body and alice.user_id not in case_msg.body  # anonymous
    assert case_msg.decrypted
    reports = _reports(synapse, admin, bad)
    assert len(reports) == 1 and "you are a worthless idiot" in reports[0]["reason"]

    # The evidence file in the case's thread verifies; one altered byte does not.
    file_event = await mod.expect(
        lambda rid, e: rid == mod_room and e.source.get("content", {}).get("msgtype") == "m.file"
    )
    bundle = json.loads(await mod.download_media(file_event.source["content"]))
    assert verify_bundle(bundle).consistent
    assert bundle["attested_by"]["user_id"] == bot_id
    assert verify_bundle(bundle, trusted_device_key=bundle["attested_by"]["ed25519"]).ok
    assert bundle["reported"]["decrypted"]["content"]["body"] == "you are a worthless idiot"
    assert bundle["reported"]["event"]["content"]["ciphertext"]  # the server's ciphertext is in it
    assert len(bundle["context"]) == 2
    tampered = json.loads(json.dumps(bundle).replace("worthless", "Worthless"))
    assert not verify_bundle(tampered).consistent
    genuine_file, tampered_file = ratchet.tmp_path / "evidence.json", ratchet.tmp_path / "tampered.json"
    genuine_file.write_text(json.dumps(bundle))
    tampered_file.write_text(json.dumps(tampered))
    config = str(ratchet.tmp_path / "bot.yaml")
    ok = await _ratchet("verify-report", str(genuine_file), "-c", config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "cross-signed by the bot's identity" in ok.stdout and "match what the homeserver holds" in ok.stdout
    bad_run = await _ratchet("verify-report", str(tampered_file), "-c", config)
    assert bad_run.returncode == 1 and "NOT VERIFIED" in bad_run.stdout

    # A second reporter merges into the same case.
    await bob.send(room, "!report", reply_to=bad)
    bob_dm = await bob.accept_invite()
    await bob.expect(_bot_says(bob, bob_dm, bot_id, "You are reporting"))
    await bob.send(bob_dm, "yes mods")
    await bob.expect(_bot_says(bob, bob_dm, bot_id, case_id))
    await mod.expect(
        lambda rid, e: rid == mod_room
        and "2 report(s)" in str(e.source.get("content", {}).get("m.new_content", {}).get("body", ""))
    )

    # A moderator redacts: the event is gone and the reporters are told the outcome only.
    act = await mod.send(mod_room, f"!case {case_id} redact abusive")
    done = await mod.expect_reply(mod_room, act, sender=bot_id)
    assert "redacted" in done.body
    await alice.expect(
        lambda rid, e: rid == room and e.source.get("type") == "m.room.redaction" and e.source.get("redacts") == bad
    )
    closed = await alice.expect(_bot_says(alice, dm, bot_id, "was closed"))
    assert "removed" in closed.body and mod.user_id not in closed.body

    # Outcomes are counted for /metrics (ratchet_report_reports_total{outcome=...}), from the plugin's own metrics.
    registry = ratchet.bot.runtime.metrics.registry
    counted = {
        o: registry.get_sample_value("ratchet_report_reports_total", {"outcome": o}) for o in ("sent", "redacted")
    }
    assert counted["sent"] is not None and counted["sent"] >= 1 and counted["redacted"] == 1, counted


async def test_no_and_expiry_send_nothing(ratchet, new_user, synapse):
    admin = new_user("admin", admin=True)
    mod, mod_room, alice, mallory, room = await _setup(ratchet, new_user, prompt_expiry_minutes=0.05)
    bot_id = ratchet.bot_user.user_id
    first = await mallory.send(room, "first rude thing")
    second = await mallory.send(room, "second rude thing")
    await alice.send(room, "!report", reply_to=first)
    dm = await alice.accept_invite()
    await alice.expect(_bot_says(alice, dm, bot_id, "first rude thing"))
    await alice.send(dm, "no")
    await alice.expect(_bot_says(alice, dm, bot_id, "cancelled; nothing was sent"))

    await alice.send(room, "!report", reply_to=second)
    await alice.expect(_bot_says(alice, dm, bot_id, "second rude thing"))
    await alice.expect(_bot_says(alice, dm, bot_id, "expired; nothing was sent"), timeout=30)
    await alice.send(dm, "yes")  # too late
    # Later messages instead of a pause: one in the DM, handled after the late "yes" (the same room and plugin run in
    # order), then one in the moderation room, whose answer comes after any case the "yes" could have posted.
    status = await alice.send(dm, "!report status NOSUCHCASE")
    assert "no report NOSUCHCASE" in (await alice.expect_reply(dm, status, sender=bot_id)).body
    await _mod_room_caught_up(mod, mod_room, bot_id)
    assert not [e for e in mod.messages(mod_room, sender=bot_id) if "Case" in getattr(e, "body", "")]
    assert _reports(synapse, admin, first) == [] and _reports(synapse, admin, second) == []


async def test_withdraw_deletes_evidence_and_rate_limit(ratchet, new_user):
    mod, mod_room, alice, mallory, room = await _setup(
        ratchet, new_user, max_reports_per_hour=2, send_to_homeserver=False
    )
    bot_id = ratchet.bot_user.user_id
    msgs = [await mallory.send(room, f"spam {i}") for i in range(3)]
    await alice.send(room, "!report spam", reply_to=msgs[0])
    dm = await alice.accept_invite()
    await alice.expect(_bot_says(alice, dm, bot_id, "spam 0"))
    await alice.send(dm, "yes")
    sent = await alice.expect(_bot_says(alice, dm, bot_id, "Your case id is"))
    case_id = sent.body.split("**")[1]
    await mod.expect(_bot_says(mod, mod_room, bot_id, f"Case {case_id}"))

    await alice.send(dm, f"!report status {case_id}")
    await alice.expect(_bot_says(alice, dm, bot_id, f"Report {case_id}: open"))
    await alice.send(dm, f"!report withdraw {case_id}")
    done = await alice.expect(_bot_says(alice, dm, bot_id, "withdrawn"))
    assert "were redacted" in done.body and "homeserver" not in done.body  # no homeserver report was filed
    assert await ratchet.storage("report").fetchone("SELECT count(*) FROM report_case") == (0,)
    # (that the case's events are redacted on the server: tests/security/test_reports.py)

    await alice.send(room, "!report", reply_to=msgs[1])
    await alice.expect(_bot_says(alice, dm, bot_id, "spam 1"))
    await alice.send(room, "!report", reply_to=msgs[2])  # the third in an hour
    await alice.expect(_bot_says(alice, dm, bot_id, "limit of 2 reports per hour"))
