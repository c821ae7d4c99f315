"""Passive handlers (``@on_message``) against a real Synapse: they match what the author wrote, not the quoted reply
fallback; they do not fire on commands unless asked to; their patterns can come from the plugin's config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


async def test_reply_fallback_and_commands_do_not_trigger_passive_handlers(ratchet):
    room = await ratchet.room(
        plugins={"plusplus": {"patterns": ["^hello\\b", "^bonjour\\b"]}}, plugin_dirs=[TEST_PLUGINS]
    )
    bot = room.bot_user_id
    first = await room.send("@carol++")
    assert (await room.expect_reply(first)).body == "point for carol"

    # A reply quoting that message: the fallback ("> <@...> @carol++") is what clients put in the body.
    quoted = await room.reply(first, "nice one")
    # A command whose arguments match the passive pattern: only the command answers.
    command = await room.send("!pp @dave++")
    assert (await room.expect_reply(command)).body == "pp command"
    # Events of a room reach a plugin in order: the quoted reply was handled before the command was.
    replies_to = {
        (getattr(e, "source", {}).get("content", {}).get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
        for e in room.bot_messages()
        if e.sender == bot
    }
    assert quoted not in replies_to, "the quoted fallback gave carol a point"
    assert not [e for e in room.bot_messages() if "point for dave" in getattr(e, "body", "")]

    # commands=True: that handler does see the command (its reaction on the command message).
    assert await room.expect_reaction(command) == "👀"

    # An edit ("* @erin++", m.replace) is not a new message: passive handlers saw the original already.
    plain = await room.send("just words")
    edit = await room.edit(plain, "@erin++")
    await room.expect_no_reply(edit, within=2)
    assert not [e for e in room.bot_messages() if "point for erin" in getattr(e, "body", "")]

    hello = await room.send("hello there")
    assert (await room.expect_reply(hello)).body == "configured pattern matched: hello"
    bonjour = await room.send("bonjour")
    assert (await room.expect_reply(bonjour)).body == "configured pattern matched: bonjour"


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ("'['", "not a valid regular expression"),
        ("['']", "is empty"),
        ("42", "expected a regular expression or a list of them"),
    ],
)
def test_config_patterns_are_checked_by_check_config(tmp_path, patterns, message):
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        "homeserver: http://127.0.0.1:1\nuser_id: '@b:localhost'\npassword: pw-123456\n"
        f"pickle_key: a-long-enough-pickle-key\nplugin_dirs: [{TEST_PLUGINS}]\n"
        f"plugins:\n  plusplus:\n    patterns: {patterns}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{cfg}:8: plugins.plusplus.patterns" in res.stderr and message in res.stderr, res.stderr


async def test_subcommands_with_their_own_arguments_rules_and_help(ratchet):
    admin = await ratchet.member("admin")
    room = await ratchet.room(
        plugins={"karma": {}, "help": {}}, plugin_dirs=[TEST_PLUGINS], member=admin, admins=[admin.user_id]
    )
    assert (await room.ask("!karma")).body == "karma: try !karma top"
    assert (await room.ask("!karma carol")).body == "carol: 0"
    assert (await room.ask("!karma top")).body == "top 3"
    assert (await room.ask("!karma TOP 5")).body == "top 5"
    assert (await room.ask("!karma best 2")).body == "top 2"
    usage = (await room.ask("!karma top many")).body
    assert "Usage: !karma top [n: int]" in usage, usage
    assert (await room.ask(f"!karma reset {admin.user_id}")).body == f"reset {admin.user_id}"
    missing = (await room.ask("!karma reset")).body
    assert "Usage: !karma reset <who: user>" in missing, missing

    listing = (await room.ask("!help")).body
    assert "!karma top" in listing and "!karma reset" in listing, listing
    detail = (await room.ask("!help karma")).body
    assert "Subcommands:" in detail and "!karma top [n: int]" in detail and "!karma reset <who: user>" in detail
    sub = (await room.ask("!help karma reset")).body
    assert "!karma reset <who: user>" in sub and "admins" in sub, sub

    # A member who is not an admin, in a room of their own: the parent runs, the admin-only subcommand is refused.
    theirs = await ratchet.room(member=await ratchet.member("other"))
    assert (await theirs.ask("!karma top")).body == "top 3"
    refused = (await theirs.ask(f"!karma reset {admin.user_id}")).body
    assert refused == "⛔ !karma reset is for the bot's admins only.", refused
    their_listing = (await theirs.ask("!help")).body
    assert "!karma top" in their_listing and "!karma reset" not in their_listing, their_listing
