"""Appservice transactions without a network: auth, parsing, handled ids, the sync-shaped body (bot/appservice)."""

from __future__ import annotations

import json

import pytest

from bot.appservice.transactions import (
    SeenTransactions,
    TransactionError,
    check_auth,
    ghost_invites,
    own_joins,
    parse_transaction,
    rooms_of,
    sync_body,
)

TOKEN = "h" * 43
BOT = "@bridge:example.org"


def _error(fn, *args) -> TransactionError:
    with pytest.raises(TransactionError) as info:
        fn(*args)
    return info.value


def test_auth_bearer_header_or_legacy_query_parameter():
    check_auth(f"Bearer {TOKEN}", None, TOKEN)
    check_auth(f"bearer  {TOKEN} ", None, TOKEN)
    check_auth(None, TOKEN, TOKEN)  # use_appservice_legacy_authorization


@pytest.mark.parametrize(
    ("header", "query", "status", "errcode"),
    [
        (None, None, 401, "M_UNAUTHORIZED"),
        ("Bearer ", None, 401, "M_UNAUTHORIZED"),
        (f"Basic {TOKEN}", None, 401, "M_UNAUTHORIZED"),
        ("Bearer wrong", None, 403, "M_FORBIDDEN"),
        (f"Bearer {TOKEN}x", None, 403, "M_FORBIDDEN"),
        (None, "wrong", 403, "M_FORBIDDEN"),
        ("Bearer wrong", TOKEN, 403, "M_FORBIDDEN"),  # the header wins over the query
        ("Bearer \udcff", None, 403, "M_FORBIDDEN"),  # undecodable bytes are just wrong
    ],
)
def test_auth_refusals(header, query, status, errcode):
    err = _error(check_auth, header, query, TOKEN)
    assert (err.status, err.errcode) == (status, errcode)
    assert TOKEN not in err.message


@pytest.mark.parametrize(
    ("body", "errcode", "words"),
    [
        (b"{not json", "M_NOT_JSON", "not JSON"),
        (b"\xff\xfe", "M_NOT_JSON", "not JSON"),
        (b"[]", "M_BAD_JSON", "JSON object"),
        (b"{}", "M_BAD_JSON", "missing 'events'"),
        (b'{"events": {}}', "M_BAD_JSON", "'events' must be a list"),
        (b'{"events": [1]}', "M_BAD_JSON", "'events' must be a list of objects"),
        (b'{"events": [], "de.sorunome.msc2409.to_device": "x"}', "M_BAD_JSON", "to_device"),
    ],
)
def test_malformed_bodies_are_400(body, errcode, words):
    err = _error(parse_transaction, "1", body)
    assert (err.status, err.errcode) == (400, errcode)
    assert words in err.message
    assert err.body() == {"errcode": errcode, "error": err.message}


def test_parse_keeps_events_ephemeral_to_device_and_extensions():
    body = {
        "events": [{"type": "m.room.message", "room_id": "!r:x"}],
        "de.sorunome.msc2409.ephemeral": [{"type": "m.typing"}],
        "de.sorunome.msc2409.to_device": [{"type": "m.room_key"}],
        "org.matrix.msc3202.device_lists": {"changed": ["@a:x"]},
    }
    txn = parse_transaction("42", json.dumps(body).encode())
    assert txn.txn_id == "42" and txn.events == body["events"]
    assert txn.ephemeral == [{"type": "m.typing"}] and txn.to_device == [{"type": "m.room_key"}]
    assert txn.extensions == {"org.matrix.msc3202.device_lists": {"changed": ["@a:x"]}}
    assert parse_transaction("1", b'{"events": [], "ephemeral": [{"a": 1}]}').ephemeral == [{"a": 1}]


def test_transaction_id_length():
    assert _error(parse_transaction, "", b'{"events": []}').status == 400
    assert _error(parse_transaction, "x" * 256, b'{"events": []}').status == 400


def test_seen_transactions_bounded_in_order_and_read_from_the_old_list():
    seen = SeenTransactions(limit=3)
    for txn_id in ("1", "2", "3", "4"):
        seen.add(txn_id)
    assert "1" not in seen and all(t in seen for t in ("2", "3", "4")) and len(seen) == 3
    seen.add("2")  # handled again: now the newest
    seen.add("5")
    assert "3" not in seen and "2" in seen
    assert list(seen) == ["4", "2", "5"]  # oldest first
    # the JSON list earlier versions persisted (moved to rows by the source, tests/test_appservice_source.py)
    again = SeenTransactions.load(json.dumps(list(seen)), limit=3)
    assert list(again) == ["4", "2", "5"]
    assert len(SeenTransactions.load(None)) == 0
    assert len(SeenTransactions.load("{damaged")) == 0
    assert len(SeenTransactions.load('{"a": 1}')) == 0
    assert list(SeenTransactions.load('["a", 2, "b"]')._ids) == ["a", "b"]


def _msg(room: str, event_id: str, sender: str = "@a:x") -> dict:
    return {"type": "m.room.message", "room_id": room, "event_id": event_id, "sender": sender, "content": {}}


def _member(room: str, target: str, membership: str, sender: str = "@a:x") -> dict:
    return {
        "type": "m.room.member", "room_id": room, "state_key": target, "sender": sender, "event_id": f"${room}{target}",
        "content": {"membership": membership},
    }


def test_sync_body_groups_rooms_in_order_and_sorts_memberships_of_the_bot():
    events = [
        _msg("!a:x", "$1"),
        _member("!inv:x", BOT, "invite"),
        _msg("!b:x", "$2"),
        _msg("!a:x", "$3"),
        _member("!gone:x", BOT, "leave"),
        {"type": "m.room.message", "event_id": "$noroom"},
    ]
    body = sync_body(events, own_user_id=BOT, next_batch="t", state={"!a:x": [{"type": "m.room.create"}]})
    join = body["rooms"]["join"]
    assert list(join) == ["!a:x", "!b:x"]
    assert [e["event_id"] for e in join["!a:x"]["timeline"]["events"]] == ["$1", "$3"]
    assert join["!a:x"]["state"]["events"] == [{"type": "m.room.create"}]
    assert list(body["rooms"]["invite"]) == ["!inv:x"]
    assert body["rooms"]["invite"]["!inv:x"]["invite_state"]["events"][0]["state_key"] == BOT
    assert list(body["rooms"]["leave"]) == ["!gone:x"]
    assert body["next_batch"] == "t"


def test_an_invited_room_is_not_joined_and_a_join_after_the_invite_is():
    invited = sync_body([_member("!r:x", BOT, "invite"), _msg("!r:x", "$1")], own_user_id=BOT, next_batch="t")
    assert "!r:x" not in invited["rooms"]["join"] and "!r:x" in invited["rooms"]["invite"]
    joined = sync_body([_member("!r:x", BOT, "invite"), _member("!r:x", BOT, "join")], own_user_id=BOT, next_batch="t")
    assert "!r:x" in joined["rooms"]["join"] and not joined["rooms"]["invite"]


def test_ghost_invites_own_joins_and_rooms():
    events = [
        _member("!r:x", "@irc_a:x", "invite", sender=BOT),
        _member("!r:x", "@irc_b:x", "join"),
        _member("!s:x", "@someone:x", "invite"),
        _member("!t:x", BOT, "join"),
    ]
    found = ghost_invites(events, lambda u: u.startswith("@irc_"))
    assert [(i.room_id, i.user_id, i.inviter) for i in found] == [("!r:x", "@irc_a:x", BOT)]
    assert own_joins(events, BOT) == {"!t:x"}
    assert rooms_of(events) == ["!r:x", "!s:x", "!t:x"]
