"""The appservice config section, namespaces, the registration and its tokens (bot/appservice/registration.py)."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

from bot.appservice.registration import (
    AppserviceTokens,
    Namespaces,
    build_registration,
    create_tokens,
    load_tokens,
    registration_yaml,
    resolve_tokens,
)
from bot.cli.main import main
from bot.config import ConfigError, parse_config

BASE = """\
homeserver: https://matrix.example.org
user_id: "@bridge:example.org"
pickle_key: a-pickle-key-long-enough
"""


def _config(section: str, tmp_path=None, extra: str = "", environ=None):
    text = BASE + extra + "appservice:\n" + "".join(f"  {line}\n" for line in section.strip().splitlines())
    return parse_config(text, source="config.yaml", base_dir=tmp_path, environ=environ or {})


def test_an_appservice_needs_no_password_and_has_defaults(tmp_path):
    config = _config("id: irc\nport: 9000\nghost_prefix: irc_", tmp_path)
    section = config.appservice
    assert config.password is None and config.access_token is None
    assert (section.host, section.url, section.rate_limited, section.receive_ephemeral) == (
        "127.0.0.1", None, False, True,
    )
    assert section.tokens_path(config.data_dir) == tmp_path / "data" / "appservice-tokens.json"
    with pytest.raises(ConfigError, match="'password' or 'access_token'"):
        parse_config(BASE, source="config.yaml")  # relay mode still needs one


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ("port: 9000", "appservice.id", "missing required key"),
        ("id: irc", "appservice.port", "missing required key"),
        ("id: 'a b'\nport: 1", "appservice.id", "appears in URLs"),
        ("id: irc\nport: 70000", "appservice.port", "at most 65535"),
        ("id: irc\nport: 1\nurl: ftp://x", "appservice.url", "http:// or https://"),
        ("id: irc\nport: 1\nghost_prefix: IRC_", "appservice.ghost_prefix", "lowercase"),
        ("id: irc\nport: 1\nghost_prefix: bri", "appservice.ghost_prefix", "one of its own ghosts"),
        ("id: irc\nport: 1\nsender_localpart: other", "appservice.sender_localpart", "user_id's localpart"),
        ("id: irc\nport: 1\nas_token: " + "a" * 40, "appservice.hs_token", "set both"),
        ("id: irc\nport: 1\nhs_token: " + "a" * 40, "appservice.as_token", "set both"),
        ("id: irc\nport: 1\nas_token: short\nhs_token: " + "b" * 40, "appservice.as_token", "at least 32"),
        (f"id: irc\nport: 1\nas_token: {'a' * 40}\nhs_token: {'a' * 40}", "appservice.hs_token", "must differ"),
        ("id: irc\nport: 1\ncolour: red", "appservice.colour", "unknown key"),
    ],
)
def test_config_errors_name_the_key(section, key, words):
    with pytest.raises(ConfigError) as info:
        _config(section)
    assert info.value.key == key, str(info.value)
    assert words in str(info.value)
    assert "a" * 40 not in str(info.value)


def test_tokens_from_the_environment(tmp_path):
    env = {"AS_TOKEN": "x" * 40, "HS_TOKEN": "y" * 40}
    config = _config("id: irc\nport: 1\nas_token: ${AS_TOKEN}\nhs_token: ${HS_TOKEN}", tmp_path, environ=env)
    assert resolve_tokens(config, create=True) == AppserviceTokens("x" * 40, "y" * 40)
    assert not (tmp_path / "data").exists()  # nothing generated
    assert "x" * 40 not in repr(config) and "x" * 40 not in repr(resolve_tokens(config, create=False))


def test_generated_tokens_are_kept_private_and_reused(tmp_path):
    config = _config("id: irc\nport: 1", tmp_path)
    assert resolve_tokens(config, create=False) is None
    tokens = resolve_tokens(config, create=True)
    path = tmp_path / "data" / "appservice-tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_tokens(config, create=True) == tokens == load_tokens(path)
    assert len(tokens.as_token) >= 40 and tokens.as_token != tokens.hs_token
    with pytest.raises(FileExistsError):
        create_tokens(path)  # never overwritten


@pytest.mark.parametrize("content", ["not json", "{}", json.dumps({"as_token": "a", "hs_token": "b"})])
def test_a_damaged_tokens_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_tokens(path)
    assert info.value.key == "appservice.tokens_file"


def test_namespaces():
    ns = Namespaces("example.org", "bridge", "irc_", "irc_")
    assert ns.sender == "@bridge:example.org"
    assert ns.is_ghost("@irc_alice:example.org") and not ns.is_ghost("@irc_alice:other.org")
    assert not ns.is_ghost("@bridge:example.org") and ns.is_ours("@bridge:example.org")
    assert not ns.is_ghost("@irc_:example.org") and not ns.is_ghost("@xirc_a:example.org")
    assert ns.ghost_id("alice") == ns.ghost_id("irc_alice") == ns.ghost_id("@irc_alice:example.org")
    assert ns.ghost_id("alice") == "@irc_alice:example.org"
    for bad in ("Alice", "@bob:example.org", "@irc_a:other.org", "a b", ""):
        with pytest.raises(ValueError):
            ns.ghost_id(bad)
    assert ns.is_our_alias("#irc_chan:example.org") and not ns.is_our_alias("#chan:example.org")
    with pytest.raises(ValueError, match="ghost_prefix"):
        Namespaces("example.org", "bridge", None, None).ghost_id("alice")


def test_registration_content(tmp_path):
    config = _config("id: irc\nport: 9000\nghost_prefix: irc_\nalias_prefix: irc_", tmp_path)
    tokens = AppserviceTokens("a" * 40, "b" * 40)
    reg = yaml.safe_load(registration_yaml(build_registration(config, tokens)))
    assert reg == {
        "id": "irc",
        "url": "http://127.0.0.1:9000",
        "as_token": "a" * 40,
        "hs_token": "b" * 40,
        "sender_localpart": "bridge",
        "namespaces": {
            "users": [{"exclusive": True, "regex": r"@irc_[^:]+:example\.org"}],
            "aliases": [{"exclusive": True, "regex": r"#irc_[^:]+:example\.org"}],
            "rooms": [],
        },
        "rate_limited": False,
        "receive_ephemeral": True,
        "de.sorunome.msc2409.push_ephemeral": True,
        "org.matrix.msc3202": True,
        "io.element.msc4190": True,
    }
    plain = _config("id: irc\nport: 9000\nurl: https://bridge.internal:8443/\nreceive_ephemeral: false", tmp_path)
    reg = build_registration(plain, tokens)
    assert reg["url"] == "https://bridge.internal:8443" and reg["namespaces"]["users"] == []
    assert "org.matrix.msc3202" not in reg


def test_cli_writes_a_private_registration_and_names_config_errors(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(BASE + "appservice:\n  id: irc\n  port: 9000\n  ghost_prefix: irc_\n")
    out = tmp_path / "reg.yaml"
    assert main(["appservice", "registration", "-c", str(config), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    reg = yaml.safe_load(out.read_text())
    assert reg["as_token"] not in capsys.readouterr().out
    assert main(["appservice", "registration", "-c", str(config), "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == reg  # the same tokens
    config.write_text(BASE + "appservice:\n  id: irc\n")
    with pytest.raises(SystemExit) as info:
        main(["appservice", "registration", "-c", str(config), "-o", str(out)])
    assert info.value.code == 2
    assert "appservice.port" in capsys.readouterr().err
    config.write_text(BASE + "password: x\n")
    assert main(["appservice", "registration", "-c", str(config), "-o", str(out)]) == 2
    assert "no appservice section" in capsys.readouterr().err
