"""The rooms' state kept across restarts, against the real Synapse (issue 20, target 5): a restarted bot loads its
rooms as it left them and resumes with an incremental sync; what changed while it was down still reaches it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from nio import RoomGetStateEventResponse

pytestmark = pytest.mark.e2e

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.mark.both_engines  # the saved state lives in the storage: run on SQLite and PostgreSQL
async def test_a_restart_resumes_from_the_saved_rooms_and_sees_what_changed(ratchet, caplog):
    caplog.set_level(logging.INFO, "bot.matrix.sync")
    plugins = {"typed": {}}
    admin = await ratchet.member("admin")
    room = await ratchet.room(plugins=plugins, plugin_dirs=[TEST_PLUGINS], member=admin)
    other = await ratchet.member("other")
    theirs = (await room.add_member(other)).as_member(other)
    assert "power level 50" in (await theirs.ask("!mods")).body
    kicked = await ratchet.room(member=admin)
    assert (await kicked.ask("!mods")).body == "hello moderator"  # the bot has synced the second room too
    bot_id = room.bot_user_id
    await ratchet.stop_bot()
    assert "loaded" not in caplog.text  # the first start had nothing saved: an initial sync

    # While the bot is down: the other member is made a moderator, and the bot is removed from the second room.
    levels = await admin.client.room_get_state_event(room.room_id, "m.room.power_levels")
    assert isinstance(levels, RoomGetStateEventResponse)
    content = dict(levels.content)
    content["users"] = {**content.get("users", {}), other.user_id: 50}
    await admin.client.room_put_state(room.room_id, "m.room.power_levels", content)
    await admin.client.room_kick(kicked.room_id, bot_id, "bye")

    bot = await ratchet.start_bot(plugins, plugin_dirs=[TEST_PLUGINS])
    loaded = re.findall(r"loaded (\d+) rooms as the last run left them", caplog.text)
    assert loaded == ["2"], caplog.text  # both rooms from the store, not from a full-state sync
    reply = await theirs.ask("!mods")
    assert reply.body == "hello moderator", "the power levels changed while the bot was down must apply"
    assert reply.decrypted, "the restored room must be known as encrypted: the reply is encrypted"
    api = bot.runtime.api  # what plugins see (`self.bot`)
    assert room.room_id in api.joined_rooms() and kicked.room_id not in api.joined_rooms()
    assert api.power_level(room.room_id, other.user_id) == 50
