"""Mentions as clients write them (pills, display names, m.mentions): the pure parsing, without a network."""

from __future__ import annotations

import re

import pytest

from bot.content.mentions import AmbiguousUser, UserResolver, mentioned_user_ids, pills, substitute_pills
from bot.errors import UsageError
from bot.plugin.commands import CommandSpec, UserId

CAROL = "@carol:example.org"


def test_pills_are_read_from_the_html_and_the_reply_fallback_is_ignored():
    html = (
        '<mx-reply><blockquote><a href="https://matrix.to/#/@bob:example.org">Bob</a></blockquote></mx-reply>'
        'reset <a href="https://matrix.to/#/%40carol%3Aexample.org">Carol Smith</a> and '
        '<a href="matrix:u/dave:example.org">Dave</a>, not <a href="https://example.org">a link</a>'
    )
    assert pills(html) == [("Carol Smith", CAROL), ("Dave", "@dave:example.org")]
    assert pills(None) == [] and pills("<a href='https://matrix.to/#/@x:y'") == []


def test_pill_texts_are_replaced_by_user_ids_left_to_right():
    found = [("Carol Smith", CAROL), ("Dave", "@dave:example.org")]
    assert substitute_pills("reset Carol Smith now, Dave too", found) == f"reset {CAROL} now, @dave:example.org too"
    assert substitute_pills("nothing here", found) == "nothing here"
    assert substitute_pills(f"already {CAROL}", [(CAROL, CAROL)]) == f"already {CAROL}"


def test_m_mentions_is_read_defensively():
    assert mentioned_user_ids({"m.mentions": {"user_ids": [CAROL, 5, "nope", "@d:x"]}}) == [CAROL, "@d:x"]
    assert mentioned_user_ids({"m.mentions": "all"}) == [] and mentioned_user_ids({}) == []


def test_display_names_and_localparts_resolve_to_the_one_member_who_has_them():
    members = {CAROL: "Carol", "@carol:other.org": "Carol", "@dave:example.org": "Dave D", "@eve:example.org": "eve"}
    resolver = UserResolver(members)
    assert resolver.resolve("dave d") == "@dave:example.org"
    assert resolver.resolve("@eve") == "@eve:example.org"
    assert resolver.resolve("nobody") is None
    with pytest.raises(AmbiguousUser, match="use the full user id"):
        resolver.resolve("Carol")
    assert UserResolver(members, mentioned=["@carol:other.org"]).resolve("Carol") == "@carol:other.org"


def test_user_arguments_use_the_resolver_and_explain_ambiguity():
    async def reset(ctx, who: UserId) -> None: ...

    spec = CommandSpec.from_function(reset, name="reset")
    members = {CAROL: "Carol", "@carol:other.org": "Carol", "@dave:example.org": "Dave"}
    resolve = UserResolver(members).resolve
    assert spec.parse("Dave", resolve_user=resolve) == {"who": "@dave:example.org"}
    assert spec.parse(CAROL, resolve_user=resolve) == {"who": CAROL}
    with pytest.raises(UsageError, match=re.escape("could be @carol:example.org, @carol:other.org")):
        spec.parse("Carol", resolve_user=resolve)
    with pytest.raises(UsageError, match="expected a user ID"):
        spec.parse("Dave")  # without a resolver only ids are accepted
