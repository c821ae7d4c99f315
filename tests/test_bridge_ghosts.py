"""Ghost mode's pure logic, without a network: localparts from remote names, who keeps which ghost across renames,
display names, and what each remote membership change does (bot/bridge/ghosts.py); the IRC bridge's ghost
localparts and config checks."""

from __future__ import annotations

import re

import pytest

from bot.bridge.ghosts import (
    GhostNames,
    escape_localpart,
    ghost_display_name,
    membership_action,
    unescape_localpart,
)
from bot.plugin.loader import import_plugin

irc_plugin = __import__(import_plugin("irc_bridge").__module__, fromlist=["IrcBridge"])
irc_connection = __import__(import_plugin("irc_bridge").__module__ + ".connection", fromlist=["irc_lower"])
irc_lower = irc_connection.irc_lower

VALID = re.compile(r"[a-z0-9._=/-]+")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("bob_2", "bob_2"),
        ("x-y", "x-y"),
        ("Alice[m]", "alice=5bm=5d"),
        ("dot.name", "dot=2ename"),
        ("a=b", "a=3db"),
        ("zoë", "zo=c3=ab"),
        ("", "=00"),
    ],
)
def test_escape_localpart_is_valid_and_deterministic(name, expected):
    assert escape_localpart(name) == expected
    assert VALID.fullmatch(escape_localpart(name))
    assert "." not in escape_localpart(name)  # a .N suffix never collides with a derived name


def test_escape_with_irc_folding_unifies_irc_case():
    # RFC 1459: [ ] \\ ~ are the upper case of { } | ^
    assert escape_localpart("Alice[m]", irc_lower) == escape_localpart("alice{m}", irc_lower) == "alice=7bm=7d"


@pytest.mark.parametrize("name", ["alice", "Alice[m]", "zoë", "a=b", "we ird/"])
def test_unescape_round_trips_the_folded_name(name):
    assert unescape_localpart(escape_localpart(name)) == name.lower()
    assert unescape_localpart(escape_localpart(name) + ".2") == name.lower()


def test_a_renamed_user_keeps_their_ghost_and_a_newcomer_gets_a_free_one():
    names = GhostNames(escape_localpart, key=irc_lower)
    assert names.ghost_for("Alice") == ("alice", True)
    assert names.ghost_for("alice") == ("alice", False)  # the same person (IRC case)
    assert names.rename("Alice", "alice2") == "alice"
    assert names.lookup("alice2") == "alice" and names.lookup("alice") is None
    assert names.holder("alice") == "alice2"
    # Renaming twice (a NICK seen in two channels) changes nothing more
    assert names.rename("Alice", "alice2") is None
    assert names.lookup("alice2") == "alice"
    # Someone else takes the nick "alice": the ghost @..._alice is still alice2's, so they get alice.2
    assert names.ghost_for("alice") == ("alice.2", True)
    assert names.holder("alice.2") == "alice"
    # alice2 quits: their ghost is free; the next newcomer with that name derives it again
    assert names.forget("alice2") == "alice"
    assert names.holder("alice") is None
    assert names.ghost_for("ALICE2") == ("alice2", True)


def test_rename_back_and_case_only_renames():
    names = GhostNames(escape_localpart, key=irc_lower)
    names.ghost_for("bob")
    assert names.rename("bob", "Bob") == "bob"
    assert names.holder("bob") == "Bob"
    assert names.rename("Bob", "bobby") == "bob"
    assert names.rename("bobby", "bob") == "bob"
    assert names.lookup("bob") == "bob" and names.lookup("bobby") is None


def test_rename_of_someone_without_a_ghost_is_nothing():
    names = GhostNames(escape_localpart)
    assert names.rename("carol", "carol2") is None
    assert names.ghost_for("carol2") == ("carol2", True)


def test_restored_entries_and_capacity():
    names = GhostNames(escape_localpart, capacity=2)
    names.load([("alice2", "alice"), ("bob", "bob")])
    assert names.lookup("alice2") == "alice"
    assert names.ghost_for("alice") == ("alice.2", True)  # held by alice2 (restored)
    assert len(names) == 2  # the oldest (alice2) was dropped beyond capacity
    assert names.lookup("alice2") is None


def test_display_name_is_one_clean_line():
    assert ghost_display_name("{name}", "alice") == "alice"
    assert ghost_display_name("{name} (IRC)", "bob") == "bob (IRC)"
    assert "\n" not in ghost_display_name("{name}", "evil\nname")


@pytest.mark.parametrize(
    ("kind", "ban", "action"),
    [
        ("join", False, "join"),
        ("part", False, "leave"),
        ("quit", False, "leave"),
        ("kick", False, "kick"),
        ("kick", True, "ban"),
        ("nick", False, "rename"),
        ("members", False, "sync"),
        ("message", False, None),
        ("action", False, None),
        ("topic", False, None),
    ],
)
def test_membership_mapping(kind, ban, action):
    assert membership_action(kind, ban=ban) == action


def _irc_config(**extra):
    net = irc_plugin.Network(host="irc.example.org")
    return irc_plugin.IrcBridge.Config(networks={"libera": net, **extra.pop("more", {})}, **extra)


def test_irc_ghost_localpart_config():
    assert _irc_config().ghost_localpart is None  # "{nick}", or "{network}_{nick}" with several networks
    assert _irc_config(ghost_localpart="{network}_{nick}").ghost_localpart == "{network}_{nick}"
    oftc = {"oftc": irc_plugin.Network(host="irc.oftc.net")}
    assert _irc_config(more=oftc).ghost_localpart is None  # relay mode with several networks: fine
    with pytest.raises(ValueError, match="must contain \\{network\\}"):
        _irc_config(more=oftc, ghost_localpart="{nick}")
    with pytest.raises(ValueError, match="invalid localparts"):
        _irc_config(ghost_localpart="IRC {nick}")
    with pytest.raises(ValueError, match="unknown field"):
        _irc_config(ghost_localpart="{server}_{nick}")


def test_irc_bridge_derives_ghosts_from_folded_nicks():
    bridge = irc_plugin.IrcBridge.__new__(irc_plugin.IrcBridge)
    bridge.config = _irc_config()
    key = bridge.sender_key("libera", "Alice[m]")
    assert key == "alice{m}"
    assert bridge.ghost_localpart("libera", key) == "alice=7bm=7d"
    bridge.config = _irc_config(more={"oftc": irc_plugin.Network(host="irc.oftc.net")})
    assert bridge.ghost_localpart("libera", key) == "libera_alice=7bm=7d"
    bridge.config = _irc_config(ghost_localpart="{network}.{nick}")
    assert bridge.ghost_localpart("libera", key) == "libera.alice=7bm=7d"


def test_bridge_config_ghost_options_are_checked():
    from bot.bridge import BridgeConfig

    assert BridgeConfig().ghost_reply_template == "{nick}: {text}"
    with pytest.raises(ValueError, match="unknown field"):
        BridgeConfig(ghost_display_template="{nick}")
    with pytest.raises(ValueError, match="ghost_sync_limit"):
        BridgeConfig(ghost_sync_limit=-1)


def test_webhook_hook_ghost_is_checked():
    hooks = __import__(import_plugin("webhooks").__module__, fromlist=["Hook"])
    hook = hooks.Hook(secret="s" * 20, ghost="hook.ci", avatar="mxc://example.org/abc")
    assert hook.ghost == "hook.ci"
    with pytest.raises(ValueError, match="not a localpart"):
        hooks.Hook(secret="s" * 20, ghost="CI Bot")
    with pytest.raises(ValueError, match="mxc://"):
        hooks.Hook(secret="s" * 20, ghost="ci", avatar="https://example.org/a.png")
