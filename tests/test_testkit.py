"""The test kit's own helpers: BotInRoom (the bot_in_room fixture), require_tool and backoff_violations."""

from __future__ import annotations

import pytest
import yaml

from bot.testing.proxy import Seen, backoff_violations
from bot.testing.tools import in_ci, require_tool


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
