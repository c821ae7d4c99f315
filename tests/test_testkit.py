"""The test kit's own helpers: BotInRoom (the bot_in_room fixture), require_tool, backoff_violations, and the
``ratchet`` fixture's rooms acting as several members (replies, edits, reactions, files), checking the bot's silence
and reactions, and reading a plugin's storage; what start_bot raises."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from bot.testing import BotStartError
from bot.testing.proxy import Seen, backoff_violations
from bot.testing.tools import in_ci, require_tool

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


def _attempts(*times: float) -> list[Seen]:
    return [Seen(t, "GET", "/_matrix/client/v3/sync", 502) for t in times]


def test_backoff_violations_accept_a_doubling_backoff_and_name_a_storm():
    # waits drawn from [0.25, 0.5], [0.5, 1], [1, 2], [2, 4]: every gap at or above its floor
    assert backoff_violations(_attempts(0, 0.3, 0.8, 1.8, 3.9), first=0.25) == []
    storm = backoff_violations(_attempts(0, 0.01, 0.02, 0.03), first=0.25)
    assert len(storm) == 3 and "attempt 2" in storm[0] and "not at least 0.23s" in storm[0], storm
    # a constant wait is no backoff: the fourth gap must be at least 0.9 * 2 s
    flat = backoff_violations(_attempts(0, 1, 2, 3, 4), first=0.25)
    assert [line.split(" (")[0] for line in flat] == ["attempt 5"], flat
    # capped: gaps never have to exceed the cap's floor
    assert backoff_violations(_attempts(0, 0.5, 1.5, 3.5, 6.5, 9.5, 12.5), first=0.5, cap=3) == []


def test_require_tool_skips_on_a_workstation_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert not in_ci()
    require_tool(True, "nothing is missing")  # no-op
    with pytest.raises(pytest.skip.Exception, match="frobnicator is not installed"):
        require_tool(False, "frobnicator is not installed")
    for value in ("true", "TRUE", "1", "yes"):
        monkeypatch.setenv("CI", value)
        assert in_ci()
        with pytest.raises(pytest.fail.Exception, match="frobnicator is not installed; CI=true"):
            require_tool(False, "frobnicator is not installed")
    monkeypatch.setenv("CI", "false")
    assert not in_ci()


@pytest.mark.e2e
async def test_bot_in_room_is_a_ready_bot_process_and_a_member_in_an_encrypted_room(synapse, bot_in_room, tmp_path):
    t = await bot_in_room(synapse, plugins={"ping": {}}, admins=["@someone:localhost"])
    assert t.proc.proc is not None and t.proc.proc.poll() is None, "the bot process runs"
    room = t.member.client.rooms[t.room]
    assert room.encrypted and t.bot_user.user_id in room.users and t.bot_user.user_id not in room.invited_users
    reply = await t.ask("!ping")
    assert reply.decrypted and reply.body.startswith("pong") and reply.sender == t.bot_user.user_id
    assert [e.event_id for e in t.bot_messages()] == [reply.event_id]
    config = yaml.safe_load(t.config_path.read_text())
    assert t.config_path == tmp_path / "bot.yaml" and config["admins"] == ["@someone:localhost"]
    assert config["data_dir"] == str(tmp_path / "data") and config["plugins"] == {"ping": {}}

    # A second one in the same test gets its own folder; nothing started when asked not to.
    idle = await bot_in_room(synapse, member=False, start=False, room=False)
    assert idle.config_path == tmp_path / "bot2" / "bot.yaml" and idle.proc.proc is None and idle.member is None
    with pytest.raises(ValueError, match="no room or member"):
        await idle.ask("!ping")

    assert await t.proc.stop() == 0
    await t.close()  # the fixture does this after the test; closing twice is harmless
    assert t.member.client.client_session is None or t.member.client.client_session.closed


@pytest.mark.e2e
async def test_kit_acts_as_members_and_checks_silence_reactions_and_storage(ratchet):
    bob = await ratchet.member("bob", display_name="Bob B")
    room = await ratchet.room(
        plugins={"karma": {}, "ctxdemo": {}, "ping": {}}, plugin_dirs=[TEST_PLUGINS], members=[bob]
    )
    as_bob = room.as_member(bob)
    assert room.members == as_bob.members == [room.member, bob]
    with pytest.raises(ValueError, match="add_member"):
        room.as_member(await ratchet.member("stranger"))

    # A passive handler's reaction, and the plugin's storage read while the bot runs.
    plus = await as_bob.send("@carol++")
    assert await room.expect_reaction(plus) == "👍"
    assert room.bot_reactions(plus) == ["👍"] and room.bot_messages() == []
    karma = ratchet.storage("karma")
    assert await karma.get("carol") == "1"
    assert await karma.fetchone("SELECT count(*) FROM ratchet_kv") == (1,)
    with pytest.raises(LookupError, match="not loaded"):
        ratchet.storage("nope")

    # A reply with the legacy quoted fallback: the handler ignores the quote, so nothing answers it.
    quoting = await room.reply(plus, "nice one")
    sent = await room.member.expect(lambda _r, e: e.event_id == quoting)
    content = sent.source["content"]
    assert content["body"] == f"> <{bob.user_id}> @carol++\n\nnice one", content["body"]
    assert content["formatted_body"].startswith("<mx-reply><blockquote>") and "@carol++</blockquote>" in (
        content["formatted_body"]
    )
    assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": plus}}
    await room.expect_no_reply(quoting, within=1)
    assert await karma.get("carol") == "1"

    # A failing expect_no_reply says what came.
    ping = await room.send("!ping")
    with pytest.raises(AssertionError, match=r"the bot answered .*pong"):
        await room.expect_no_reply(ping, within=1)
    # expect_silence: nothing after the answer; an answer in the window fails it.
    await room.expect_silence(1)
    await room.send("!ping")
    with pytest.raises(AssertionError, match="the bot sent 1 event"):
        await room.expect_silence(2)

    # An edit as clients write it, received by another member.
    edit = await as_bob.edit(plus, "@carol++ (edited)")
    seen = await room.member.expect(lambda _r, e: e.event_id == edit)
    assert seen.decrypted and seen.source["content"]["m.new_content"]["body"] == "@carol++ (edited)"
    assert seen.source["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": plus}

    # A member's reaction, and an encrypted file the bot downloads and decrypts.
    reaction = await room.react(plus, "🎉")
    assert (await as_bob.member.expect(lambda _r, e: e.event_id == reaction)).source["content"]["m.relates_to"] == {
        "rel_type": "m.annotation", "event_id": plus, "key": "🎉"
    }
    data = b"kit file\n" * 100
    file_id = await as_bob.send_file(data, name="notes.txt")
    file_event = await room.member.expect(lambda _r, e: e.event_id == file_id)
    assert file_event.source["content"]["msgtype"] == "m.file" and "file" in file_event.source["content"]
    assert file_event.source["content"]["info"] == {"mimetype": "text/plain", "size": len(data)}
    echoed = await as_bob.ask("!echo-file", reply_to=file_id)
    assert echoed.body == f"size={len(data)} sha256={hashlib.sha256(data).hexdigest()}", echoed.body


@pytest.mark.e2e
async def test_start_bot_raises_bot_start_error_naming_every_plugin_that_failed(ratchet):
    with pytest.raises(BotStartError) as failed:
        await ratchet.start_bot(
            {"ping": {}, "reminders": {"check_interval": "soon"}, "no_such_plugin": {}}, plugin_dirs=[TEST_PLUGINS]
        )
    assert set(failed.value.errors) == {"reminders", "no_such_plugin"}, failed.value.errors
    assert "check_interval" in str(failed.value) and "no_such_plugin" in str(failed.value)
    assert isinstance(failed.value, RuntimeError) and ratchet.bot is None
    # The same kit starts a good bot afterwards.
    room = await ratchet.room(plugins={"ping": {}})
    assert (await room.ask("!ping")).body.startswith("pong")
