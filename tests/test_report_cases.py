"""The report plugin's pure core: consent state machine, prompt contents, case merging text, rate limits."""

import sys

import pytest

from bot.plugin.loader import import_plugin

import_plugin("report")
cases = sys.modules["ratchet_plugins.report.cases"]
Answer, Draft, DraftState = cases.Answer, cases.Draft, cases.DraftState


def draft(**kw):
    base = dict(draft_id="R-ABC234", reporter="@alice:x", room_id="!r:x", event_id="$e", sender="@mal:x",
                text="bad words", reason="insult", created=0.0, expires=900.0, context_offered=2)
    base.update(kw)
    return Draft(**base)


@pytest.mark.parametrize("text, expected", [
    ("yes", Answer.YES), ("  YES ", Answer.YES), ("✅", Answer.YES), ("yes mods", Answer.YES_MODS),
    ("no", Answer.NO), ("❌", Answer.NO), ("context", Answer.CONTEXT), ("maybe", None), ("yes please", None),
])
def test_parse_answer(text, expected):
    assert cases.parse_answer(text) is expected


def test_nothing_is_consented_without_yes():
    d = draft()
    assert d.open and d.state is DraftState.PROMPTED
    d = cases.answer(d, Answer.CONTEXT, 10, homeserver_destination=True)
    assert d.context_included and d.open
    d = cases.answer(d, Answer.CONTEXT, 11, homeserver_destination=True)
    assert not d.context_included
    assert cases.answer(d, Answer.NO, 12, homeserver_destination=True).state is DraftState.CANCELLED


def test_yes_and_yes_mods_decide_the_homeserver_text():
    assert cases.answer(draft(), Answer.YES, 1, homeserver_destination=True).homeserver_consent
    mods_only = cases.answer(draft(), Answer.YES_MODS, 1, homeserver_destination=True)
    assert mods_only.state is DraftState.CONSENTED and not mods_only.homeserver_consent
    assert not cases.answer(draft(), Answer.YES, 1, homeserver_destination=False).homeserver_consent


def test_expired_and_closed_drafts_ignore_answers():
    late = cases.answer(draft(), Answer.YES, 900.0, homeserver_destination=True)
    assert late.state is DraftState.EXPIRED
    assert cases.answer(late, Answer.YES, 901, homeserver_destination=True) is late
    cancelled = cases.answer(draft(), Answer.NO, 1, homeserver_destination=True)
    assert cases.answer(cancelled, Answer.YES, 2, homeserver_destination=True).state is DraftState.CANCELLED
    assert cases.expire(draft(), 899).open and not cases.expire(draft(), 900).open


def test_no_context_offered_means_context_does_nothing():
    d = cases.answer(draft(context_offered=0), Answer.CONTEXT, 1, homeserver_destination=True)
    assert not d.context_included


def test_prompt_says_what_where_who_and_how_long():
    text = cases.consent_prompt(
        draft(), room_name="#general:x", to_moderators=True, to_homeserver=True, anonymous=True, retention_days=30,
        homeserver_name="bot.example", context_preview=[("@a:x", "earlier")],
    ).body
    for needle in ("bad words", "@mal:x", "insult", "moderators", "administrators", "not shared", "30 days",
                   "withdraw", "not included", "earlier", "yes mods", "Nothing has been sent yet"):
        assert needle in text, needle
    named = cases.consent_prompt(draft(), room_name="r", to_moderators=True, to_homeserver=False, anonymous=False,
                                 retention_days=7).body
    assert "shared with the moderators (@alice:x)" in named and "yes mods" not in named
    assert "administrators" not in named and "homeserver" not in named


def test_prompt_names_the_bots_homeserver_and_what_yes_mods_means():
    """Issue 12 finding 7: the prompt said "your homeserver" (it is the bot's) and "yes mods" still filed a homeserver
    report; it now says whose homeserver gets what, that "yes mods" sends nothing there, and that it cannot be
    withdrawn."""
    text = cases.consent_prompt(
        draft(), room_name="!r:x", to_moderators=True, to_homeserver=True, anonymous=True, retention_days=30,
        homeserver_name="bot.example",
    ).body
    assert "your homeserver" not in text
    assert "administrators of the bot's homeserver (`bot.example`, which may not be yours)" in text
    assert "nothing at all goes to the homeserver" in text
    assert "A homeserver report cannot be withdrawn" in text
    homeserver_only = cases.consent_prompt(
        draft(), room_name="!r:x", to_moderators=False, to_homeserver=True, anonymous=True, retention_days=30,
    ).body
    assert "yes mods" not in homeserver_only and "moderation room" not in homeserver_only


def test_yes_mods_needs_a_moderation_room():
    d = cases.answer(draft(), Answer.YES_MODS, 1, homeserver_destination=True, moderator_destination=False)
    assert d.open and d == draft()


HOSTILE = 'click <a href="https://evil.example">here</a> ![x](mxc://evil/img) <img src="mxc://evil/i"> **bold** @room'


def test_untrusted_text_cannot_render_links_or_images():
    """Issue 12 finding 7: an abuser's text in the case message rendered as Markdown/HTML in the moderation room."""
    case = cases.Case("R-XYZ234", "!r:x", "$e", "@mal:x", "DEV", True, HOSTILE, 5, ['<a href="x">reason</a>'],
                      ["anonymous"], context=[("@mal:x", "[link](https://evil.example/ctx)")])
    for rendered in (
        cases.case_message(case, room_name="<b>room</b>"),
        cases.consent_prompt(draft(text=HOSTILE, reason="<img src=x>"), room_name="!r:x", to_moderators=True,
                             to_homeserver=True, anonymous=True, retention_days=1,
                             context_preview=[("@mal:x", "[link](https://evil.example/ctx)")]),
    ):
        markup = rendered.html.lower()
        assert "<a" not in markup and "<img" not in markup and "<b>" not in markup, markup
        assert "&lt;a href=" in markup and "&lt;img src=" in markup
        assert "<pre><code>click &lt;a href=" in markup  # the reported text is shown as code, verbatim
        assert "![x](mxc://evil/img)" in rendered.body


def test_case_message_and_ids():
    case = cases.Case("R-XYZ234", "!r:x", "$e", "@mal:x", "DEV", True, "bad words", 5, ["insult", ""],
                      ["anonymous", "@bob:x"])
    msg = cases.case_message(case, room_name="#general:x").body
    assert "2 report(s)" in msg and "cross-signed by the sender" in msg and "> bad words" in msg
    assert "!case R-XYZ234 redact|kick|ban|dismiss" in msg
    ids = {cases.new_case_id() for _ in range(200)}
    assert len(ids) == 200 and all(i.startswith("R-") and len(i) == 8 for i in ids)


def test_rate_limiter_sliding_window():
    limiter = cases.RateLimiter(2, window=60)
    assert limiter.allow("a", 0) and limiter.allow("a", 1) and not limiter.allow("a", 2)
    assert limiter.allow("b", 2)
    assert limiter.allow("a", 60.5)
