"""Mentions end to end (issue 15): ``UserId`` arguments given as Element writes them (a pill whose link text is a
multi-word display name), as a typed display name or ``@localpart``, ambiguity answered with a usage error naming the
candidates, ``m.mentions`` breaking the tie, and the bot's answers carrying ``m.mentions`` for the users they name."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


def _mentioned(event) -> list[str]:
    """``m.mentions.user_ids`` of a decrypted event, as the member received it."""
    return event.source["content"].get("m.mentions", {}).get("user_ids", [])


async def test_pills_display_names_and_localparts_resolve_to_members(ratchet):
    admin = await ratchet.member("admin")
    bob = await ratchet.member("bob")
    carol = await ratchet.member("carol", display_name="Carol Smith")
    room = await ratchet.room(
        plugins={"karma": {}, "whois": {}}, plugin_dirs=[TEST_PLUGINS], member=admin, members=[bob, carol],
        admins=[admin.user_id],
    )

    # A pill, as Element sends it: the body says "Carol Smith", the link and m.mentions carry the id.
    pill = await room.mention("!karma reset {}", carol)
    sent = await room.member.expect(lambda _room, e: e.event_id == pill)
    assert sent.source["content"]["body"] == "!karma reset Carol Smith", sent.source["content"]
    assert sent.source["content"]["m.mentions"] == {"user_ids": [carol.user_id]}
    assert f'<a href="https://matrix.to/#/{carol.user_id}">Carol Smith</a>' in sent.source["content"]["formatted_body"]
    reply = await room.expect_reply(pill)
    assert reply.decrypted and reply.body == f"reset {carol.user_id}", reply.body

    # Another member's pill, through a command that mentions whom it resolved.
    as_bob = room.as_member(bob)
    answer = await as_bob.expect_reply(await as_bob.mention("!whois {}", carol))
    assert answer.decrypted and answer.body == f"that is {carol.user_id}", answer.body
    assert carol.user_id in _mentioned(answer) and bob.user_id in _mentioned(answer), answer.source["content"]
    # carol receives it too, with the mention (what makes her client notify her)
    theirs = await carol.expect(lambda _room, e: e.event_id == answer.event_id)
    assert theirs.decrypted and carol.user_id in _mentioned(theirs)

    # Typed, not picked: the display name in quotes, and a bare @localpart.
    typed = await room.ask('!whois "Carol Smith"')
    assert typed.body == f"that is {carol.user_id}" and carol.user_id in _mentioned(typed), typed.body
    localpart = "@" + bob.user_id[1:].split(":")[0]
    by_localpart = await room.ask(f"!whois {localpart}")
    assert by_localpart.body == f"that is {bob.user_id}" and bob.user_id in _mentioned(by_localpart)
    assert (await room.ask(f"!karma reset {localpart}")).body == f"reset {bob.user_id}"
    unknown = (await room.ask('!whois "Nobody Here"')).body
    assert "Usage: !whois <who: user>" in unknown and "Nobody Here" in unknown, unknown


async def test_an_ambiguous_display_name_is_a_usage_error_unless_a_pill_or_m_mentions_says_who(ratchet):
    carol = await ratchet.member("carol", display_name="Carol Smith")
    other = await ratchet.member("impostor", display_name="Carol Smith")
    room = await ratchet.room(plugins={"whois": {}}, plugin_dirs=[TEST_PLUGINS], members=[carol, other])

    ambiguous = (await room.ask('!whois "Carol Smith"')).body
    assert "Usage: !whois <who: user>" in ambiguous, ambiguous
    assert carol.user_id in ambiguous and other.user_id in ambiguous, ambiguous

    # A pill names the user itself: no ambiguity.
    for who in (carol, other):
        answer = await room.expect_reply(await room.mention("!whois {}", who))
        assert answer.body == f"that is {who.user_id}" and who.user_id in _mentioned(answer), answer.body

    # The same typed name with m.mentions listing one of them: that one is meant.
    tie = await room.send(
        "", content={"msgtype": "m.text", "body": '!whois "Carol Smith"', "m.mentions": {"user_ids": [other.user_id]}}
    )
    assert (await room.expect_reply(tie)).body == f"that is {other.user_id}"

    # A rename is seen by the bot: once carol is "Carol Jones", "Carol Smith" means the other one alone.
    await carol.set_display_name("Carol Jones")
    await room.wait_bot_sees_members()
    assert (await room.ask('!whois "Carol Smith"')).body == f"that is {other.user_id}"
    assert (await room.ask('!whois "carol jones"')).body == f"that is {carol.user_id}"
