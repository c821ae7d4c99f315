"""Event content builders, checked against the spec's shapes."""

from bot.content.text import edit_content, reaction_content, text_content


def test_reply_without_fallback_and_with_mentions():
    c = text_content("pong", reply_to="$e", mentions=["@u:x"])
    assert c == {
        "msgtype": "m.text",
        "body": "pong",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$e"}},
        "m.mentions": {"user_ids": ["@u:x"]},
    }


def test_thread_reply_falls_back_to_latest_for_old_clients():
    c = text_content("hi", thread_root="$root", notice=True)
    assert c["msgtype"] == "m.notice"
    assert c["m.relates_to"] == {
        "rel_type": "m.thread", "event_id": "$root", "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$root"},
    }
    c = text_content("hi", thread_root="$root", reply_to="$other")
    assert c["m.relates_to"]["is_falling_back"] is False
    assert c["m.relates_to"]["m.in_reply_to"] == {"event_id": "$other"}


def test_edit_and_reaction():
    e = edit_content("$orig", "new", html="<b>new</b>")
    assert e["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$orig"}
    assert e["m.new_content"]["body"] == "new"
    assert e["m.new_content"]["formatted_body"] == "<b>new</b>"
    assert e["body"] == "* new"
    assert reaction_content("$e", "👍") == {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}
    }
