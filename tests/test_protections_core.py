"""Issue 19: the protections' pure core (rates, windows, mentions, the ladder) and policy rules, without a network."""

from __future__ import annotations

import pytest

from plugins.protections.core import (
    Ladder,
    SlidingWindow,
    TokenBucket,
    event_shape,
    media_or_link,
    mention_counts,
    mention_violation,
    shape_worth_counting,
)
from plugins.protections.policy import PolicySet, glob_matches, server_acl, spared_servers, too_broad


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=1.0, burst=5)
    assert [bucket.hit("k", 0.0) for _ in range(6)] == [False] * 5 + [True]
    assert bucket.hit("k", 0.5) is True  # half a token
    assert bucket.hit("k", 1.5) is False  # refilled one
    assert bucket.hit("other", 1.5) is False  # per key
    bucket.prune(100.0)
    assert len(bucket) == 0


def test_token_bucket_refuses_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(0, 5)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_sliding_window_counts_and_forgets():
    window = SlidingWindow(10.0)
    assert [window.add("room", t) for t in (0, 1, 2)] == [1, 2, 3]
    assert window.count("room", 10.5) == 2
    assert window.count("room", 100) == 0
    assert len(window) == 0


def test_mentions_are_counted_from_metadata_only():
    assert mention_counts({"m.mentions": {"user_ids": ["@a:x", "@a:x", "@b:x", 3]}}) == (2, False)
    assert mention_counts({"m.mentions": "junk"}) == (0, False)
    assert mention_counts({"body": "@room"}) == (0, False)  # the body is not read
    many = {"m.mentions": {"user_ids": [f"@u{i}:x" for i in range(9)]}}
    assert "9 users" in mention_violation(many, max_mentions=8, sender_power=100, room_mention_power=50)
    room = {"m.mentions": {"room": True}}
    assert "@room" in mention_violation(room, max_mentions=8, sender_power=0, room_mention_power=50)
    assert mention_violation(room, max_mentions=8, sender_power=50, room_mention_power=50) is None


def test_event_shape_ignores_the_body():
    a = {"msgtype": "m.text", "body": "one"}
    b = {"msgtype": "m.text", "body": "two"}
    assert event_shape("m.room.message", a) == event_shape("m.room.message", b)
    react = {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "x"}}
    assert event_shape("m.reaction", react) != event_shape("m.reaction", {})


def test_ladder_climbs_then_cools_down_then_forgets():
    ladder = Ladder(["notice", "mute", "ban"], cooldown=60, forget_after=600)
    steps = [ladder.violation("u", t) for t in (0, 1, 2, 3, 70, 71)]
    assert [s and (s.action, s.repeat) for s in steps] == [
        ("notice", False), ("mute", False), ("ban", False), None, ("ban", True), None,
    ]
    assert ladder.violation("u", 2000).action == "notice"  # quiet long enough: from the bottom
    assert ladder.violation("other", 0).action == "notice"


def test_ladder_escalates_no_sooner_than_asked():
    ladder = Ladder(["warn", "kick"], escalate_after=5)
    assert ladder.violation("u", 0).action == "warn"
    assert ladder.violation("u", 1) is None
    assert ladder.violation("u", 6).action == "kick"
    ladder.reset("u")
    assert ladder.violation("u", 7).action == "warn"


def test_ladder_refuses_unknown_actions():
    with pytest.raises(ValueError, match="unknown action 'nuke'"):
        Ladder(["notice", "nuke"])
    assert Ladder([]).violation("u", 0) is None


# -- policy lists ----------------------------------------------------------------------------------------------


def _rule(entity, key="r1", kind="m.policy.rule.user", recommendation="m.ban"):
    content = {} if entity is None else {"entity": entity, "recommendation": recommendation, "reason": "spam"}
    return {"type": kind, "state_key": key, "content": content}


def test_globs():
    assert glob_matches("@spam*:evil.example", "@spammer1:evil.example")
    assert glob_matches("@SPAM?:evil.example", "@spam1:evil.example")
    assert not glob_matches("@spam?:evil.example", "@spam12:evil.example")
    assert not glob_matches("@a.b:x", "@aXb:x")  # '.' is literal


@pytest.mark.parametrize("glob", ["*", "@*:*", "@*", "?*", "**", "@?*:*", "*:*", "@a*", "*.*"])
def test_globs_that_match_everyone_are_refused(glob):
    assert too_broad("user", glob)


@pytest.mark.parametrize("glob", ["@spam*:*", "@*:evil.example", "@mallory:localhost"])
def test_narrow_globs_are_accepted(glob):
    assert too_broad("user", glob) is None


def test_policy_set_adds_replaces_removes_and_refuses():
    rules = PolicySet()
    added = rules.apply("!list", _rule("@bad:x"))
    assert added.added.entity == "@bad:x" and added.removed is None
    assert rules.apply("!list", _rule("@bad:x")) is None  # the same again: nothing changed
    assert [r.entity for r in rules.bans_for("user", "@bad:x")] == ["@bad:x"]
    refused = rules.apply("!list", _rule("*", key="r2"))
    assert refused.refused and "everyone" in refused.refused and refused.removed is None
    replaced = rules.apply("!list", _rule("@worse:x"))
    assert replaced.added.entity == "@worse:x" and replaced.removed.entity == "@bad:x"
    removed = rules.apply("!list", _rule(None))
    assert removed.removed.entity == "@worse:x" and removed.added is None
    assert rules.apply("!list", _rule(None)) is None
    assert rules.bans_for("user", "@worse:x") == []


@pytest.mark.parametrize(
    "content",
    [{"entity": 3, "recommendation": "m.ban"}, {"entity": "@a:b"}, {"entity": "", "recommendation": "m.ban"},
     {"entity": "nobody", "recommendation": "m.ban"}, {"entity": "@" + "a" * 300, "recommendation": "m.ban"}],
)
def test_malformed_rules_are_refused(content):
    change = PolicySet().apply("!l", {"type": "m.policy.rule.user", "state_key": "k", "content": content})
    assert change.refused and change.added is None


def test_other_recommendations_are_kept_but_do_not_ban():
    rules = PolicySet()
    rules.apply("!l", _rule("@a:bcd", recommendation="org.example.watch"))
    assert rules.bans_for("user", "@a:bcd") == []


def test_load_replaces_a_lists_rules_and_reports_removals():
    rules = PolicySet()
    rules.load("!l", [_rule("@one:xyz", "a"), _rule("@two:xyz", "b"), {"type": "m.room.name", "state_key": ""}])
    changes = rules.load("!l", [_rule("@two:xyz", "b")])
    assert [c.removed.entity for c in changes] == ["@one:xyz"]
    assert [c.removed.entity for c in rules.drop_list("!l")] == ["@two:xyz"]


def test_server_acl_keeps_the_room_and_never_denies_the_bots_server():
    acl = server_acl({"allow": ["*"], "deny": ["old.example"]}, ["evil.example", "*host"], "localhost")
    assert acl["deny"] == ["old.example", "evil.example"] and acl["allow"] == ["*"]


# -- cases ------------------------------------------------------------------------------------------------------


def test_case_message_is_metadata_only_and_escaped():
    from plugins.protections.cases import Action, ProtectionCase, case_message, new_case_id

    case = ProtectionCase(new_case_id(), "flood", "!room:x", "@<b>evil</b>:x", 0.0)
    case.add_fact("more than 10 messages at once (event $e)")
    case.add_action(Action("mute", "!room:x", ok=False, detail="missing power"))
    case.add_action(Action("ban", "!room:x", ok=True, dry_run=True))
    body, markup = case_message(case)
    assert case.case_id.startswith("P-") and "mute FAILED" in body and "would ban" in body
    assert "dry run: nothing was changed" in body
    assert "<b>evil" not in markup and "&lt;b&gt;evil" in markup
    again = ProtectionCase.from_json(case.to_json())
    assert again == case
    for i in range(50):
        case.add_fact(str(i))
    assert len(case.facts) == 20 and case.facts[-1] == "49"


async def test_case_registry_routes_by_prefix_and_survives_a_reload():
    from bot.reports.cases import CaseRegistry

    registry, seen = CaseRegistry(), []

    async def old(ctx, case_id, action, reason):
        seen.append(("old", case_id))

    async def new(ctx, case_id, action, reason):
        seen.append(("new", case_id))

    registry.register("P-", "protections", old)
    with pytest.raises(ValueError, match="already owned"):
        registry.register("P-", "other", old)
    with pytest.raises(ValueError):
        registry.register("p", "protections", old)
    registry.register("P-", "protections", new)  # the reloaded version
    registry.unregister("protections", old)  # the old one stopping leaves the new one
    await registry.owner("p-abc123").act(None, "P-ABC123", "undo", None)
    assert seen == [("new", "P-ABC123")] and registry.owner("R-ABC123") is None
    registry.unregister("protections")
    assert registry.prefixes() == {}


def test_repeats_count_only_shapes_with_a_relation_or_media():
    text = event_shape("m.room.message", {"msgtype": "m.text", "body": "hi"})
    assert not shape_worth_counting(text)  # plain text: the flood protection's business
    reply = event_shape("m.room.message", {"msgtype": "m.text", "body": "a", "m.relates_to": {
        "rel_type": "m.thread", "event_id": "$root"}})
    image = event_shape("m.room.message", {"msgtype": "m.image", "body": "x.png",
                                            "info": {"size": 1234, "mimetype": "image/png"}})
    sticker = event_shape("m.sticker", {"body": "s", "info": {"size": 99, "mimetype": "image/webp"}})
    assert shape_worth_counting(reply) and shape_worth_counting(image) and shape_worth_counting(sticker)
    # The same image posted with another caption is the same shape; another size is not.
    assert image == event_shape("m.room.message", {"msgtype": "m.image", "body": "other caption",
                                                    "info": {"size": 1234, "mimetype": "image/png"}})
    assert image != event_shape("m.room.message", {"msgtype": "m.image", "info": {"size": 1, "mimetype": "image/png"}})


@pytest.mark.parametrize(("event_type", "content", "links", "expected"), [
    ("m.sticker", {}, True, "media"),
    ("m.room.message", {"msgtype": "m.image", "body": "a.png"}, True, "media"),
    ("m.room.message", {"msgtype": "m.file", "body": "a.exe"}, False, "media"),
    ("m.room.message", {"msgtype": "m.text", "body": "buy at https://spam.example now"}, True, "link"),
    ("m.room.message", {"msgtype": "m.text", "body": "see www.spam-site.example"}, True, "link"),
    ("m.room.message", {"msgtype": "m.text", "body": "x", "formatted_body": '<a href="x">y</a>'}, True, "link"),
    ("m.room.message", {"msgtype": "m.text", "body": "buy at https://spam.example now"}, False, None),
    ("m.room.message", {"msgtype": "m.text", "body": "hello, I am new here"}, True, None),
    ("m.room.message", {"msgtype": "m.text", "body": 42}, True, None),
    ("m.room.message", "junk", True, None),
])
def test_media_or_link(event_type, content, links, expected):
    assert media_or_link(event_type, content, links=links) == expected


def test_server_acl_never_denies_the_admins_servers_either():
    content = server_acl(None, ["*.evil.example", "admins*.org", "local*"], ["localhost", "admins.org"])
    assert content["deny"] == ["*.evil.example"]
    assert spared_servers(["*.evil.example", "admins*.org"], ["localhost", "admins.org"]) == [
        ("admins*.org", "admins.org")
    ]


async def test_invite_guards_veto_observe_and_survive_a_broken_guard():
    from bot.reports.invites import InviteGuards

    guards, seen = InviteGuards(), []

    async def counting(room_id, inviter, allowed):
        seen.append((room_id, inviter, allowed))
        return None

    async def broken(room_id, inviter, allowed):
        raise RuntimeError("bug")

    async def veto(room_id, inviter, allowed):
        return "spam" if inviter == "@spam:x" else None

    for name, guard in (("a", counting), ("b", broken), ("c", veto)):
        guards.add_guard(name, guard)
    assert await guards.refusal("!r:x", "@ok:x", True) is None
    assert await guards.refusal("!r:x", "@spam:x", False) == "spam (c)"
    assert seen == [("!r:x", "@ok:x", True), ("!r:x", "@spam:x", False)]  # every guard is asked
    guards.remove_guard("c", veto)
    assert await guards.refusal("!r:x", "@spam:x", True) is None
    guards.remove_guard("a")
    guards.remove_guard("b")
    assert len(guards) == 0
