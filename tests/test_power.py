"""Power levels by room version (v12 creators outrank everyone)."""

from nio.rooms import MatrixRoom

from bot.matrix.power import CREATOR_POWER, creators_from_create_event, creators_privileged, user_power_level


def test_room_versions():
    assert creators_privileged("12") and creators_privileged("13") and creators_privileged("org.matrix.hydra.11")
    assert not creators_privileged("11") and not creators_privileged("10") and not creators_privileged("custom")


def test_creator_power_only_from_v12():
    room = MatrixRoom("!r:x", "@bot:x")
    creators = creators_from_create_event(
        {"sender": "@alice:x", "content": {"additional_creators": ["@carol:x", 5]}, "type": "m.room.create"}
    )
    assert creators == {"@alice:x", "@carol:x"}
    room.room_version = "11"
    assert user_power_level(room, "@alice:x", creators) == 0
    room.room_version = "12"
    assert user_power_level(room, "@alice:x", creators) == CREATOR_POWER
    assert user_power_level(room, "@carol:x", creators) == CREATOR_POWER
    assert user_power_level(room, "@bob:x", creators) == 0
