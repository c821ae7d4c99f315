"""Appservice E2EE pieces without a network: what a transaction carries for the bot's device (MSC2409 to-device
messages, MSC3202 key counts, fallback key types and device lists, in every spelling Synapse sends), the sync-shaped
body nio reads, and the device named on the bot's own requests."""

from __future__ import annotations

from bot.appservice.transactions import DeviceExtensions, device_extensions, sync_body, to_device_for
from bot.matrix.client import _with_device

BOT, DEV = "@bot:hs", "BOTDEV"


def test_key_counts_in_both_unstable_spellings_and_the_stable_one():
    for key in (
        "org.matrix.msc3202.device_one_time_keys_count",
        "org.matrix.msc3202.device_one_time_key_counts",
        "device_one_time_keys_count",
    ):
        ext = {key: {BOT: {DEV: {"signed_curve25519": 0}, "OTHER": {"signed_curve25519": 9}}}}
        assert device_extensions(ext, BOT, DEV).one_time_key_counts == {"signed_curve25519": 0}


def test_a_device_not_mentioned_has_unknown_counts_not_zero():
    ext = {"org.matrix.msc3202.device_one_time_keys_count": {"@ghost:hs": {"X": {"signed_curve25519": 3}}}}
    found = device_extensions(ext, BOT, DEV)
    assert found.one_time_key_counts is None and found.unused_fallback_key_types is None


def test_fallback_types_and_device_lists():
    ext = {
        "org.matrix.msc3202.device_unused_fallback_key_types": {BOT: {DEV: []}},
        "org.matrix.msc3202.device_lists": {"changed": ["@a:hs", 5], "left": ["@b:hs"]},
    }
    found = device_extensions(ext, BOT, DEV)
    assert found.unused_fallback_key_types == []
    assert (found.changed, found.left) == (["@a:hs"], ["@b:hs"])


def test_malformed_extensions_are_ignored():
    ext = {
        "org.matrix.msc3202.device_one_time_keys_count": {BOT: {DEV: {"signed_curve25519": -1, "x": True}}},
        "org.matrix.msc3202.device_lists": "nonsense",
        "org.matrix.msc3202.device_unused_fallback_key_types": {BOT: "nope"},
    }
    found = device_extensions(ext, BOT, DEV)
    assert found.one_time_key_counts == {} and found.changed == [] and found.unused_fallback_key_types is None


def test_only_the_bot_devices_to_device_messages_without_the_routing_fields():
    messages = [
        {"type": "m.room.encrypted", "sender": "@m:hs", "content": {}, "to_user_id": BOT, "to_device_id": DEV},
        {"type": "m.room.encrypted", "sender": "@m:hs", "content": {}, "to_user_id": BOT, "to_device_id": "OLD"},
        {"type": "m.room.encrypted", "sender": "@m:hs", "content": {}, "to_user_id": "@irc_a:hs", "to_device_id": DEV},
    ]
    assert to_device_for(messages, BOT, DEV) == [{"type": "m.room.encrypted", "sender": "@m:hs", "content": {}}]


def test_sync_body_carries_the_device_fields_where_sync_puts_them():
    device = DeviceExtensions({"signed_curve25519": 7}, ["signed_curve25519"], ["@a:hs"], ["@b:hs"])
    body = sync_body([], own_user_id=BOT, next_batch="t", to_device=[{"type": "x"}], device=device)
    assert body["device_one_time_keys_count"] == {"signed_curve25519": 7}
    assert body["device_unused_fallback_key_types"] == ["signed_curve25519"]
    assert body["device_lists"] == {"changed": ["@a:hs"], "left": ["@b:hs"]}
    assert body["to_device"] == {"events": [{"type": "x"}]}
    unknown = sync_body([], own_user_id=BOT, next_batch="t", device=DeviceExtensions())
    assert "device_unused_fallback_key_types" not in unknown and unknown["device_one_time_keys_count"] == {}


def test_the_bot_names_its_device_and_itself_but_not_on_a_ghost_request():
    assert _with_device("/_matrix/client/v3/keys/upload", BOT, DEV) == (
        "/_matrix/client/v3/keys/upload?user_id=%40bot%3Ahs&device_id=BOTDEV"
    )
    assert _with_device("/x?since=1", BOT, DEV) == "/x?since=1&user_id=%40bot%3Ahs&device_id=BOTDEV"
    ghost = "/x?user_id=%40irc_a%3Ahs"
    assert _with_device(ghost, BOT, DEV) == ghost
