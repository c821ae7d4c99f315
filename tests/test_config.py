"""Tests of bot.config: the YAML config loader and its error messages (no network, no Synapse)."""

from __future__ import annotations

import dataclasses
import pickle
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import (
    Config,
    ConfigError,
    E2EEConfig,
    HttpConfig,
    InvitesConfig,
    VerificationConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "pw-Sekr1t-pw-value"
TOKEN = "syt_tok3n_Sekr1t_value"
PICKLE = "pk-Sekr1t-pickle-key-value"
ENV = {"BOT_PASSWORD": PASSWORD, "RATCHET_PICKLE_KEY": PICKLE, "HOME": "/home/bot"}
BASE_DIR = Path("/srv/bot")

MINIMAL = """\
homeserver: https://matrix.example.org
user_id: "@bot:example.org"
password: ${BOT_PASSWORD}
pickle_key: ${RATCHET_PICKLE_KEY}
"""


def parse(text: str, *, env: dict[str, str] | None = None, extra: bool = True) -> Config:
    """Parse ``MINIMAL`` followed by ``text`` (dedented), as the file ``config.yaml``."""
    body = (MINIMAL if extra else "") + textwrap.dedent(text)
    return parse_config(body, source="config.yaml", base_dir=BASE_DIR, environ=ENV if env is None else env)


def replacing(snippet: str) -> str:
    """``MINIMAL`` with the line of the snippet's key replaced by the (one-line) snippet.

    Keys of ``MINIMAL`` are on lines 1 (homeserver), 2 (user_id), 3 (password), 4 (pickle_key);
    a snippet for any other key is appended (line 5).
    """
    key = snippet.split(":", 1)[0]
    lines = MINIMAL.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(key + ":"):
            lines[i] = snippet
            return "".join(lines)
    return MINIMAL + snippet


def error(text: str, *, env: dict[str, str] | None = None, extra: bool = True) -> ConfigError:
    """The ConfigError that parsing ``MINIMAL`` + ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        parse(text, env=env, extra=extra)
    return info.value


def assert_error(err: ConfigError, *, key: str | None, line: int | None, contains: str = "") -> None:
    """``err`` names ``key`` (attribute and text), ``line`` (attribute and prefix), ``contains``."""
    text = str(err)
    assert err.key == key, text
    assert err.line == line, text
    assert err.file == "config.yaml"
    prefix = "config.yaml" if line is None else f"config.yaml:{line}"
    assert text.startswith(prefix + ": "), text
    if key is not None:
        assert key in text, text
    assert contains in text, text
    assert "\n" not in text


# -------------------------------------------------------------------------------------------------
# Valid configurations and defaults


def test_minimal_config_has_documented_defaults() -> None:
    config = parse("")
    assert config.homeserver == "https://matrix.example.org"
    assert config.user_id == "@bot:example.org"
    assert config.password == PASSWORD
    assert config.access_token is None
    assert config.pickle_key == PICKLE
    assert config.device_name == "Ratchet"
    assert config.data_dir == BASE_DIR / "data"
    assert config.command_prefix == "!"
    assert config.admins == ()
    assert config.invites == InvitesConfig(accept_from=())
    assert config.plugins == {}
    assert config.plugin_dirs == ()
    assert config.catch_up is True
    assert config.catch_up_max_age == 86400
    assert config.handler_timeout == 60
    assert config.max_concurrency == 32
    assert config.log_level == "INFO"
    assert config.log_format == "text"
    assert config.source == "config.yaml"


def test_full_config() -> None:
    config = parse(
        """\
        access_token: tok
        device_name: My Bot
        data_dir: /var/lib/ratchet
        command_prefix: "?"
        admins: ["@alice:example.org", "@bob:example.org:8448"]
        invites:
          accept_from: ["@*:example.org", "@carol:[::1]"]
        plugins:
          ping:
          echo: {reply: true, rooms: ["!a:b"], nested: {x: 1}}
        plugin_dirs: [plugins, /opt/plugins]
        catch_up: false
        catch_up_max_age: 2h
        handler_timeout: 1.5
        max_concurrency: 1
        log_level: debug
        log_format: JSON
        """
    )
    assert config.access_token == "tok"
    assert config.device_name == "My Bot"
    assert config.data_dir == Path("/var/lib/ratchet")
    assert config.command_prefix == "?"
    assert config.admins == ("@alice:example.org", "@bob:example.org:8448")
    assert config.invites.accept_from == ("@*:example.org", "@carol:[::1]")
    assert config.plugins == {"ping": {}, "echo": {"reply": True, "rooms": ["!a:b"], "nested": {"x": 1}}}
    assert config.plugin_dirs == (BASE_DIR / "plugins", Path("/opt/plugins"))
    assert config.catch_up is False
    assert config.catch_up_max_age == 7200
    assert config.handler_timeout == 1.5
    assert config.max_concurrency == 1
    assert config.log_level == "DEBUG"
    assert config.log_format == "json"


def test_empty_optional_values_mean_default() -> None:
    config = parse("admins:\ninvites:\nplugins:\ndevice_name:\nplugin_dirs:\n")
    assert config.admins == ()
    assert config.invites == InvitesConfig()
    assert config.plugins == {}
    assert config.device_name == "Ratchet"


def test_access_token_alone_is_enough() -> None:
    text = 'homeserver: http://localhost:8008\nuser_id: "@b:localhost"\naccess_token: abc\n'
    config = parse_config(text, environ={"RATCHET_PICKLE_KEY": PICKLE})
    assert config.password is None
    assert config.access_token == "abc"
    assert config.source == "<config>"


def test_homeserver_trailing_slash_is_stripped() -> None:
    text = replacing("homeserver: https://example.org/\n")
    assert parse(text, extra=False).homeserver == "https://example.org"
    text = replacing("homeserver: https://example.org/matrix//\n")
    assert parse(text, extra=False).homeserver == "https://example.org/matrix"


def test_plugins_keep_file_order() -> None:
    config = parse("plugins:\n  zeta: {}\n  alpha: {}\n  mid: {}\n")
    assert list(config.plugins) == ["zeta", "alpha", "mid"]


def test_yaml_merge_keys_and_anchors_work() -> None:
    config = parse(
        """\
        plugins:
          a: &common {lang: en, retries: 3}
          b:
            <<: *common
            retries: 5
        """
    )
    assert config.plugins["b"] == {"lang": "en", "retries": 5}
    assert config.plugins["a"] == {"lang": "en", "retries": 3}


def test_config_is_frozen_hashable_and_hides_secrets_in_repr() -> None:
    config = parse("access_token: " + TOKEN + "\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.homeserver = "x"  # type: ignore[misc]
    hash(config)
    for secret in (PASSWORD, TOKEN, PICKLE):
        assert secret not in repr(config)
    # ``source`` does not take part in equality.
    assert config == dataclasses.replace(config, source="other.yaml")


def test_invites_allows_is_case_sensitive_glob() -> None:
    invites = InvitesConfig(accept_from=("@*:example.org", "@alice:other.org"))
    assert invites.allows("@bob:example.org")
    assert invites.allows("@alice:other.org")
    assert not invites.allows("@bob:EXAMPLE.org")
    assert not invites.allows("@bob:other.org")
    assert not invites.allows("@bob:example.org.evil")
    assert not InvitesConfig().allows("@bob:example.org")


# -------------------------------------------------------------------------------------------------
# The example file


def test_example_config_loads_and_documents_every_key() -> None:
    example = REPO / "config.example.yaml"
    config = load_config(example, environ=ENV)
    assert config.password == PASSWORD
    assert config.pickle_key == PICKLE
    assert config.plugins == {"ping": {}}
    assert config.data_dir == REPO / "data"
    assert config.source == str(example)

    text = example.read_text()
    sections = (Config, InvitesConfig, HttpConfig, E2EEConfig, VerificationConfig)
    keys = [f.name for cls in sections for f in dataclasses.fields(cls) if "ratchet" in f.metadata]
    assert "accept_from" in keys and "homeserver" in keys
    for key in keys:
        # Each key appears (set or commented out) with a comment block right above it.
        match = re.search(rf"^(?:# )?\s*{key}:", text, re.MULTILINE)
        assert match, f"config.example.yaml does not document {key}"
        before = text[: match.start()].rstrip("\n").splitlines()[-1].strip()
        assert before.startswith("#"), f"{key} has no comment above it"


def test_example_config_needs_its_env_vars() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "config.example.yaml", environ={})
    err = info.value
    assert err.key == "password"
    assert "BOT_PASSWORD" in str(err)


# -------------------------------------------------------------------------------------------------
# load_config: reading the file


def test_load_config_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "bot.yaml"
    path.write_text(MINIMAL + "data_dir: state\nplugin_dirs: [../plugins, ./mine]\n")
    config = load_config(path, environ=ENV)
    assert config.data_dir == folder / "state"
    assert config.plugin_dirs == (tmp_path / "plugins", folder / "mine")
    assert config.source == str(path)

    path.write_text(MINIMAL)
    assert load_config(str(path), environ=ENV).data_dir == folder / "data"


def test_load_config_missing_file_names_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    assert str(info.value) == f"{path}: cannot read the config file: No such file or directory"
    assert info.value.file == str(path)
    assert info.value.line is None
    assert info.value.key is None


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config file: Is a directory"):
        load_config(tmp_path, environ=ENV)


def test_load_config_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(MINIMAL.encode() + b"device_name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    assert info.value.line == 5
    assert "not valid UTF-8" in str(info.value)
    assert str(info.value).startswith(f"{path}:5: ")


def test_load_config_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path, environ=ENV).user_id == "@bot:example.org"


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL + "homserver: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    assert str(info.value) == f"{path}:5: unknown key 'homserver' (did you mean 'homeserver'?)"


# -------------------------------------------------------------------------------------------------
# Syntax and structure errors


def test_yaml_syntax_error_names_the_line() -> None:
    err = error('device_name: "unterminated\n')
    assert err.line == 6
    assert "YAML syntax error" in str(err)
    assert "quoted scalar that starts on line 5" in str(err)


def test_yaml_syntax_error_bad_indentation() -> None:
    err = error("invites:\n  accept_from: []\n bad: 1\n")
    assert_error(err, key=None, line=7, contains="YAML syntax error")


def test_unquoted_user_id_gets_a_hint() -> None:
    err = error("homeserver: https://x.org\nuser_id: @bot:x.org\n", extra=False)
    assert_error(err, key=None, line=2, contains='must be quoted, e.g. user_id: "@bot:example.org"')


def test_tab_indentation_gets_a_hint() -> None:
    err = error("invites:\n\taccept_from: []\n")
    assert_error(err, key=None, line=6, contains="tabs")


def test_multiple_documents_are_an_error() -> None:
    err = error("---\nother: 1\n")
    assert_error(err, key=None, line=5, contains="single document")


def test_control_character_is_a_syntax_error() -> None:
    err = error("device_name: a\x07b\n")
    assert_error(err, key=None, line=5, contains="#x0007")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(text: str) -> None:
    err = error(text, extra=False)
    assert_error(err, key=None, line=None, contains="the file is empty")


@pytest.mark.parametrize(
    ("text", "got"),
    [("- a\n- b\n", "a list"), ("just a string\n", "a string"), ("42\n", "an integer")],
)
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    err = error(text, extra=False)
    assert_error(err, key=None, line=1, contains=f"the top level must be a mapping of keys to values, got {got}")


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("device_name: a\ndevice_name: b\n", "device_name", 6),
        ("user_id: '@other:example.org'\n", "user_id", 5),
        ("invites:\n  accept_from: []\n  accept_from: []\n", "invites.accept_from", 7),
        ("plugins:\n  ping: {}\n  ping: {}\n", "plugins.ping", 7),
        ("plugins:\n  ping:\n    a: 1\n    a: 2\n", "plugins.ping.a", 8),
    ],
)
def test_duplicate_keys(text: str, key: str, line: int) -> None:
    err = error(text)
    assert_error(err, key=key, line=line, contains=f"duplicate key '{key}' (first defined on line")


def test_duplicate_key_message() -> None:
    assert str(error("device_name: a\ndevice_name: b\n")) == (
        "config.yaml:6: duplicate key 'device_name' (first defined on line 5)"
    )


# -------------------------------------------------------------------------------------------------
# Missing and unknown keys


@pytest.mark.parametrize("key", ["homeserver", "user_id"])
def test_missing_required_key(key: str) -> None:
    text = "".join(line + "\n" for line in MINIMAL.splitlines() if not line.startswith(key))
    err = error(text, extra=False)
    assert str(err) == f"config.yaml: missing required key '{key}'"
    assert err.key == key
    assert err.line is None


def test_required_key_present_but_empty() -> None:
    err = error(replacing("homeserver:\n"), extra=False)
    assert_error(err, key="homeserver", line=1, contains="a value is required but it is empty")


def test_missing_password_and_token_names_both_keys() -> None:
    text = MINIMAL.replace("password: ${BOT_PASSWORD}\n", "")
    err = error(text, extra=False)
    assert str(err) == "config.yaml: missing required key: set 'password' or 'access_token'"
    assert err.key == "password"


def test_missing_pickle_key_explains_both_ways() -> None:
    text = MINIMAL.replace("pickle_key: ${RATCHET_PICKLE_KEY}\n", "")
    err = error(text, extra=False, env={"BOT_PASSWORD": PASSWORD})
    assert str(err) == (
        "config.yaml: missing required key 'pickle_key' (set it in the config file, e.g. "
        "'pickle_key: ${RATCHET_PICKLE_KEY}', or set the environment variable RATCHET_PICKLE_KEY)"
    )
    assert err.key == "pickle_key"


def test_pickle_key_from_environment() -> None:
    text = MINIMAL.replace("pickle_key: ${RATCHET_PICKLE_KEY}\n", "")
    assert parse(text, extra=False).pickle_key == PICKLE
    # an empty key also falls back to the environment
    text = MINIMAL.replace("pickle_key: ${RATCHET_PICKLE_KEY}\n", "pickle_key:\n")
    assert parse(text, extra=False).pickle_key == PICKLE


def test_pickle_key_in_file_wins_over_environment() -> None:
    text = MINIMAL.replace("${RATCHET_PICKLE_KEY}", "file-pickle-key-0123456789")
    assert parse(text, extra=False).pickle_key == "file-pickle-key-0123456789"


def test_pickle_key_too_short() -> None:
    text = MINIMAL.replace("${RATCHET_PICKLE_KEY}", "shortkey")
    err = error(text, extra=False)
    assert_error(err, key="pickle_key", line=4, contains="at least 16 characters")
    assert "shortkey" not in str(err)


def test_pickle_key_too_short_in_environment_names_the_variable() -> None:
    text = MINIMAL.replace("pickle_key: ${RATCHET_PICKLE_KEY}\n", "")
    err = error(text, extra=False, env={"BOT_PASSWORD": PASSWORD, "RATCHET_PICKLE_KEY": "tiny"})
    assert_error(err, key="pickle_key", line=None, contains="environment variable RATCHET_PICKLE_KEY")
    assert "at least 16 characters" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "line", "suggestion"),
    [
        ("homserver: https://x.org\n", "homserver", 5, "homeserver"),
        ("Device_Name: x\n", "Device_Name", 5, "device_name"),
        ("admin: []\n", "admin", 5, "admins"),
        ("invites:\n  acept_from: []\n", "invites.acept_from", 6, "invites.accept_from"),
        ("accept_from: []\n", "accept_from", 5, "invites.accept_from"),
    ],
)
def test_unknown_key_with_suggestion(text: str, key: str, line: int, suggestion: str) -> None:
    err = error(text)
    assert str(err) == f"config.yaml:{line}: unknown key '{key}' (did you mean '{suggestion}'?)"
    assert err.key == key
    assert err.line == line


def test_unknown_key_without_suggestion() -> None:
    err = error("frobnicate: 1\n")
    assert str(err) == "config.yaml:5: unknown key 'frobnicate'"
    err = error("invites:\n  zzz: 1\n")
    assert_error(err, key="invites.zzz", line=6, contains="valid keys here: accept_from")


def test_non_string_keys_are_errors() -> None:
    assert str(error("1: x\n")) == "config.yaml:5: keys must be strings, got an integer"
    assert_error(error("yes: x\n"), key=None, line=5, contains="got a boolean")
    err = error("invites:\n  [a]: 1\n")
    assert_error(err, key="invites", line=6, contains="keys must be single values, got a list")


# -------------------------------------------------------------------------------------------------
# Wrong types


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("user_id: 123\n", "user_id", 2, "user_id: expected a string, got an integer (YAML reads unquoted"),
        ("user_id: yes\n", "user_id", 2, "user_id: expected a string, got a boolean"),
        ("user_id: [a]\n", "user_id", 2, "user_id: expected a single value, got a list"),
        ("homeserver: {a: 1}\n", "homeserver", 1, "homeserver: expected a single value, got a mapping"),
        ("device_name: on\n", "device_name", 5, "device_name: expected a string, got a boolean"),
        ("device_name: 1.5\n", "device_name", 5, "device_name: expected a string, got a number"),
        ("device_name: 2024-01-01\n", "device_name", 5, "device_name: expected a string, got a date"),
        ("admins: '@a:b.org'\n", "admins", 5, "admins: expected a list of user ids, got a string"),
        ("admins: [123]\n", "admins[0]", 5, "admins[0]: expected a string, got an integer"),
        ("admins:\n  - '@a:b.org'\n  -\n", "admins[1]", 7, "admins[1]: expected a string, got null"),
        ("invites: []\n", "invites", 5, "invites: expected a mapping, got a list"),
        (
            "invites:\n  accept_from: '@*:x.org'\n",
            "invites.accept_from",
            6,
            "invites.accept_from: expected a list of strings, got a string",
        ),
        (
            "invites:\n  accept_from:\n    - '@*:x.org'\n    - {a: 1}\n",
            "invites.accept_from[1]",
            8,
            "invites.accept_from[1]: expected a single value, got a mapping",
        ),
        ("plugin_dirs: plugins\n", "plugin_dirs", 5, "plugin_dirs: expected a list of paths, got a string"),
        ("catch_up: 'yes'\n", "catch_up", 5, "catch_up: expected true or false, got a string"),
        ("catch_up: 1\n", "catch_up", 5, "catch_up: expected true or false, got an integer"),
        ("max_concurrency: 8.0\n", "max_concurrency", 5, "max_concurrency: expected a whole number, got a number"),
        ("max_concurrency: true\n", "max_concurrency", 5, "expected a whole number, got a boolean"),
        ("max_concurrency: '8'\n", "max_concurrency", 5, "expected a whole number, got a string"),
        ("handler_timeout: [1]\n", "handler_timeout", 5, "handler_timeout: expected a single value, got a list"),
        ("handler_timeout: true\n", "handler_timeout", 5, "handler_timeout: expected a duration, got a boolean"),
        ("log_level: 10\n", "log_level", 5, "log_level: expected a string, got an integer"),
        ("plugins: [ping]\n", "plugins", 5, "plugins: expected a mapping of plugin names to their options, got a list"),
        (
            "plugins:\n  ping: [1]\n",
            "plugins.ping",
            6,
            "plugins.ping: expected a mapping of options (or nothing), got a list",
        ),
        ("plugins:\n  ping: yes\n", "plugins.ping", 6, "got a boolean"),
        ("plugins:\n  1: {}\n", "plugins", 6, "plugins: plugin names must be strings, got an integer"),
    ],
)
def test_wrong_types(text: str, key: str, line: int, message: str) -> None:
    err = error(replacing(text), extra=False)
    assert_error(err, key=key, line=line, contains=message)


def test_type_errors_explain_yaml_coercion() -> None:
    err = error("device_name: yes\n")
    assert "put the value in quotes" in str(err)
    err = error("command_prefix: 1\n")
    assert "YAML reads unquoted numbers as numbers" in str(err)


# -------------------------------------------------------------------------------------------------
# Invalid values


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("homeserver: ftp://example.org\n", "homeserver", 1, "must be an http:// or https:// URL"),
        ("homeserver: example.org\n", "homeserver", 1, "got 'example.org'"),
        ("homeserver: https://\n", "homeserver", 1, "must be an http:// or https:// URL"),
        ("homeserver: https://x.org/?a=1\n", "homeserver", 1, "no query"),
        ("homeserver: 'https://x.org:99999'\n", "homeserver", 1, "must be an http:// or https:// URL"),
        ("homeserver: 'http://[::1'\n", "homeserver", 1, "must be an http:// or https:// URL"),
        ("user_id: bot\n", "user_id", 2, "expected a Matrix user id like @bot:example.org, got 'bot'"),
        ("user_id: '@bot'\n", "user_id", 2, "expected a Matrix user id"),
        ("user_id: '@:example.org'\n", "user_id", 2, "expected a Matrix user id"),
        ("user_id: '@bot:exa mple.org'\n", "user_id", 2, "expected a Matrix user id"),
        ("admins: ['@a:b.org', 'carol']\n", "admins[1]", 5, "admins[1]: expected a Matrix user id"),
        ("command_prefix: ''\n", "command_prefix", 5, "command_prefix: must not be empty"),
        ("command_prefix: '! '\n", "command_prefix", 5, "must not contain whitespace"),
        ("device_name: '  '\n", "device_name", 5, "device_name: must not be empty"),
        ("data_dir: ''\n", "data_dir", 5, "data_dir: must not be empty"),
        (
            "log_level: WARN\n",
            "log_level",
            5,
            "must be one of DEBUG, INFO, WARNING, ERROR, got 'WARN' (did you mean WARNING?)",
        ),
        ("log_level: TRACE\n", "log_level", 5, "must be one of DEBUG, INFO, WARNING, ERROR"),
        ("log_format: xml\n", "log_format", 5, "log_format: must be one of text, json, got 'xml'"),
        ("max_concurrency: 0\n", "max_concurrency", 5, "must be at least 1, got 0"),
        ("plugins:\n  Ping: {}\n", "plugins.Ping", 6, "invalid plugin name 'Ping'"),
        ("plugins:\n  my-plugin: {}\n", "plugins.my-plugin", 6, "invalid plugin name"),
        ("plugins:\n  1abc: {}\n", "plugins.1abc", 6, "invalid plugin name"),
        ("invites:\n  accept_from: [example.org]\n", "invites.accept_from[0]", 6, "can never match a user id"),
        ("invites:\n  accept_from: ['']\n", "invites.accept_from[0]", 6, "must not be empty"),
    ],
)
def test_invalid_values(text: str, key: str, line: int, message: str) -> None:
    err = error(replacing(text), extra=False)
    assert_error(err, key=key, line=line, contains=message)


def test_homeserver_credentials_are_not_echoed() -> None:
    text = MINIMAL.replace("https://matrix.example.org", "https://bot:hunter2@matrix.example.org")
    err = error(text, extra=False)
    assert_error(err, key="homeserver", line=1, contains="must not contain a user name or password")
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("!!int abc", "invalid !!int value"),
        ("!!float abc", "invalid !!float value"),
        ("!custom thing", "unsupported YAML tag !custom"),
        ("!!python/object:os.system x", "unsupported YAML tag !!python/object:os.system"),
        ("!!set {a, b}", "unsupported YAML tag !!set"),
    ],
)
def test_bad_tags_in_plugin_options(text: str, message: str) -> None:
    err = error(f"plugins:\n  ping:\n    opt: {text}\n")
    assert_error(err, key="plugins.ping.opt", line=7, contains=message)


def test_recursive_alias_is_an_error() -> None:
    err = error("plugins:\n  ping: &x\n    self: *x\n")
    assert_error(err, key="plugins.ping.self", line=6, contains="recursive YAML alias")
    err = error("plugins:\n  ping: &x\n    <<: *x\n")
    assert_error(err, key="plugins.ping", line=6, contains="recursive YAML alias")


def test_alias_bomb_is_an_error_not_a_hang() -> None:
    lines = ["plugins:", "  ping:", "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"    a{i}: &a{i} [{refs}]")
    err = error("\n".join(lines) + "\n")
    assert "too large" in str(err)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    err = error("plugins:\n  ping: {a: " + "[" * 5000 + "]" * 5000 + "}\n")
    assert "nested too deeply" in str(err)


# -------------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("0", 0),
        ("'90'", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("'1h 30m'", 5400),
        ("0.5h", 1800),
        ("2H", 7200),
    ],
)
def test_durations(value: str, seconds: float) -> None:
    assert parse(f"catch_up_max_age: {value}\n").catch_up_max_age == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 minutes", "invalid duration '5 minutes'"),
        ("1h30", "invalid duration '1h30'"),
        ("m", "invalid duration 'm'"),
        ("-5", "must be at least 0 seconds"),
        ("-5m", "invalid duration"),
        (".inf", "must be a finite duration"),
        (".nan", "must be a finite duration"),
        ("1" * 400, "must be a finite duration"),
    ],
)
def test_bad_durations_name_the_key(value: str, message: str) -> None:
    err = error(f"catch_up_max_age: {value}\n")
    assert_error(err, key="catch_up_max_age", line=5, contains=message)
    assert "90s, 15m, 2h or 1d" in str(err) or "at least 0" in str(err)


def test_handler_timeout_must_be_positive() -> None:
    err = error("handler_timeout: 0s\n")
    assert_error(err, key="handler_timeout", line=5, contains="must be greater than 0 seconds")


# -------------------------------------------------------------------------------------------------
# Paths


def test_relative_paths_are_resolved_against_base_dir() -> None:
    config = parse("data_dir: ../state\nplugin_dirs: [a/b, ./c/../d, /abs]\n")
    assert config.data_dir == Path("/srv/state")
    assert config.plugin_dirs == (BASE_DIR / "a/b", BASE_DIR / "d", Path("/abs"))


def test_home_directory_is_expanded_from_environ() -> None:
    assert parse("data_dir: ~/ratchet\n").data_dir == Path("/home/bot/ratchet")
    env = {k: v for k, v in ENV.items() if k != "HOME"}
    err = error("data_dir: ~/ratchet\n", env=env)
    assert_error(err, key="data_dir", line=5, contains="HOME")


def test_duplicate_list_entries_are_dropped() -> None:
    config = parse("admins: ['@a:b.org', '@a:b.org']\nplugin_dirs: [x, ./x]\n")
    assert config.admins == ("@a:b.org",)
    assert config.plugin_dirs == (BASE_DIR / "x",)


def test_parse_config_defaults_base_dir_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_config(MINIMAL, environ=ENV).data_dir == tmp_path / "data"


# -------------------------------------------------------------------------------------------------
# Environment variables


def test_env_expansion_inside_strings() -> None:
    env = {**ENV, "HOST": "matrix.example.org", "PORT": "8448", "NAME": "Bot"}
    config = parse(
        """\
        device_name: '${NAME} ${NAME}'
        admins: ["@admin:${HOST}"]
        plugins:
          ping: {greeting: "hi from ${NAME}", list: ["${PORT}"]}
        """,
        env=env,
    )
    assert config.device_name == "Bot Bot"
    assert config.admins == ("@admin:matrix.example.org",)
    assert config.plugins["ping"] == {"greeting": "hi from Bot", "list": ["8448"]}
    text = replacing("homeserver: https://${HOST}:${PORT}/\n")
    assert parse(text, env=env, extra=False).homeserver == "https://matrix.example.org:8448"


def test_dollar_dollar_brace_is_a_literal() -> None:
    config = parse("device_name: 'a $${NOT_A_VAR} b $$ c $x'\n")
    assert config.device_name == "a ${NOT_A_VAR} b $$ c $x"


def test_env_values_are_not_expanded_again() -> None:
    env = {**ENV, "NAME": "${BOT_PASSWORD}"}
    assert parse("device_name: ${NAME}\n", env=env).device_name == "${BOT_PASSWORD}"


def test_env_expansion_does_not_touch_keys_or_non_strings() -> None:
    config = parse("plugins:\n  ping: {'${X}': 1}\n")
    assert config.plugins["ping"] == {"${X}": 1}


def test_missing_env_var_names_key_and_variable() -> None:
    err = error("device_name: ${NO_SUCH_VAR}\n")
    assert str(err) == "config.yaml:5: device_name: environment variable NO_SUCH_VAR is not set"
    assert err.key == "device_name"
    err = error("plugins:\n  ping:\n    token: x${API_TOKEN}\n")
    assert_error(err, key="plugins.ping.token", line=7, contains="environment variable API_TOKEN is not set")
    err = error("admins: ['@a:b.org', '${WHO}']\n")
    assert_error(err, key="admins[1]", line=5, contains="WHO")


def test_missing_secret_env_var() -> None:
    err = error("", env={"RATCHET_PICKLE_KEY": PICKLE})
    assert str(err) == "config.yaml:3: password: environment variable BOT_PASSWORD is not set"


@pytest.mark.parametrize(
    ("value", "message"),
    [("'${}'", "invalid environment variable reference ${}"), ("'${1X}'", "${1X}"), ("'a ${X'", "unterminated")],
)
def test_malformed_env_references(value: str, message: str) -> None:
    err = error(f"device_name: {value}\n")
    assert_error(err, key="device_name", line=5, contains=message)


# -------------------------------------------------------------------------------------------------
# Secrets never appear in error text


SECRET_CASES = [
    # (config text using the secret S, expected key)
    ("password: {S}\npassword: {S}\n", "password"),
    ("access_token: '{S}'\naccess_token: '{S}'\n", "access_token"),
    ("pickle_key: '{S}'\n", "pickle_key"),  # too short
    ("password: !!int {S}\n", "password"),
    ("password: !!float {S}\n", "password"),
    ("password: !!bool {S}\n", "password"),
    ("password: !!timestamp {S}\n", "password"),
    ("password: !!binary '{S}!'\n", "password"),
    ("password: !!str [{S}]\n", "password"),
    ("password: !secret {S}\n", "password"),
    ("password: ['{S}']\n", "password"),
    ("access_token: {{'{S}': 1}}\n", "access_token"),
    ('password: "{S}\n', None),  # syntax error on the secret's line
    ("password: '{S}\n", None),
    ("password: {S}\n  bad: indent\n", None),
    ("password: {S}\x07\n", None),
    ("password: '{S} ${{MISSING}}'\n", "password"),
    ("password: '{S}${{'\n", "password"),
    ("password: '${{{S}!}}'\n", "password"),  # an invalid reference is not shown in a secret
]


@pytest.mark.parametrize(("template", "key"), SECRET_CASES)
@pytest.mark.parametrize("secret", ["hunter2hunter2", "98765", "2024-01-01", "0x1F2E"])
def test_secrets_never_appear_in_errors(template: str, key: str | None, secret: str) -> None:
    text = 'homeserver: https://matrix.example.org\nuser_id: "@bot:example.org"\n' + template.format(S=secret)
    env = {"RATCHET_PICKLE_KEY": PICKLE, "BOT_PASSWORD": PASSWORD}
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="config.yaml", environ=env)
    err = info.value
    if key is not None:
        assert err.key == key, str(err)
    for shown in (str(err), repr(err), err.message, str(err.args)):
        assert secret not in shown.replace("config.yaml", ""), shown
    # No chained exception may carry PyYAML's message (which quotes the source line).
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__


def test_secret_from_environment_is_not_echoed() -> None:
    text = MINIMAL.replace("pickle_key: ${RATCHET_PICKLE_KEY}\n", "")
    err = error(text, extra=False, env={"BOT_PASSWORD": PASSWORD, "RATCHET_PICKLE_KEY": "tiny-key"})
    assert "tiny-key" not in str(err)


# -------------------------------------------------------------------------------------------------
# ConfigError


def test_config_error_attributes_and_pickling() -> None:
    err = ConfigError("x: bad", key="x", file="c.yaml", line=3)
    assert str(err) == "c.yaml:3: x: bad"
    assert str(ConfigError("oops", file="c.yaml")) == "c.yaml: oops"
    assert str(ConfigError("oops")) == "oops"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.key, copy.file, copy.line) == ("x: bad", "x", "c.yaml", 3)
    assert str(copy) == str(err)


# -------------------------------------------------------------------------------------------------
# Property tests: parse_config returns a Config or raises ConfigError, never anything else

KEYS = [
    "homeserver", "user_id", "password", "access_token", "device_name", "data_dir", "pickle_key",
    "command_prefix", "admins", "invites", "plugins", "plugin_dirs", "catch_up", "catch_up_max_age",
    "handler_timeout", "max_concurrency", "log_level", "log_format", "accept_from", "ping",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "https://matrix.example.org/",
            "@bot:example.org",
            "@*:example.org",
            "${BOT_PASSWORD}",
            "${NOPE}",
            "$${x",
            "90s",
            "1h30m",
            "~/x",
            "../data",
            "DEBUG",
            "json",
            "0123456789abcdefXYZ",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), children, max_size=4),
    ),
    max_leaves=12,
)
environs = st.dictionaries(
    st.sampled_from(["BOT_PASSWORD", "RATCHET_PICKLE_KEY", "HOME", "NOPE"]),
    st.text(max_size=24),
    max_size=4,
)


def _parses_or_config_error(text: str, environ: dict[str, str]) -> None:
    try:
        result = parse_config(text, source="fuzz.yaml", base_dir=BASE_DIR, environ=environ)
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200), environ=environs)
def test_property_arbitrary_text(text: str, environ: dict[str, str]) -> None:
    _parses_or_config_error(text, environ)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mapping=st.dictionaries(st.sampled_from(KEYS), values, max_size=12),
    environ=environs,
    flow=st.booleans(),
)
def test_property_arbitrary_mappings(mapping: dict, environ: dict[str, str], flow: bool) -> None:
    text = yaml.safe_dump(mapping, default_flow_style=flow, allow_unicode=True)
    _parses_or_config_error(text, environ)


yaml_lines = st.lists(
    st.tuples(
        st.sampled_from(["", "  ", "    ", "- ", "  - "]),
        st.sampled_from([*KEYS, "<<", "&a x", "*a", "? ", "!!int", "!x"]),
        st.sampled_from(
            [
                "",
                " 1",
                " yes",
                " ~",
                " []",
                " {}",
                " &a {a: 1}",
                " *a",
                " '@a:b'",
                " ${BOT_PASSWORD}",
                " [1, {x: y}]",
                " !!str 5",
                " !!binary aGk=",
                ' "x',
                " 2001-12-14",
                " 1_000",
                " 0x1F",
                " .inf",
            ]
        ),
    ).map(lambda t: f"{t[0]}{t[1]}:{t[2]}"),
    max_size=15,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=yaml_lines, environ=environs, minimal=st.booleans())
def test_property_yaml_ish_lines(lines: list[str], environ: dict[str, str], minimal: bool) -> None:
    text = (MINIMAL if minimal else "") + "\n".join(lines) + "\n"
    _parses_or_config_error(text, environ)


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=8, max_size=20).map(
        lambda s: "Zq" + s
    ),
    extra=st.dictionaries(st.sampled_from(KEYS), values, max_size=5),
    where=st.sampled_from(["password", "access_token", "pickle_key"]),
)
def test_property_secrets_never_in_errors(secret: str, extra: dict, where: str) -> None:
    mapping = {
        "homeserver": "https://matrix.example.org",
        "user_id": "@bot:example.org",
        "pickle_key": PICKLE,
        **extra,
        where: secret,
    }
    text = yaml.safe_dump(mapping)
    try:
        parse_config(text, source="fuzz.yaml", environ={})
    except ConfigError as exc:
        assert secret not in str(exc)


_SAFE_TEXT = st.text(alphabet=st.characters(blacklist_characters="$", blacklist_categories=("Cs", "Cc")), max_size=20)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _SAFE_TEXT),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_SAFE_TEXT, children, max_size=3)),
    max_leaves=8,
)
_SERVER = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(org|net|example)(:[0-9]{1,4})?", fullmatch=True)
_USER_ID = st.builds(
    lambda local, server: f"@{local}:{server}", st.from_regex(r"[a-z0-9._=-]{1,12}", fullmatch=True), _SERVER
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    user_id=_USER_ID,
    device_name=_SAFE_TEXT.filter(lambda s: s.strip()),
    command_prefix=st.text(alphabet="!?.~/#%&+", min_size=1, max_size=3),
    admins=st.lists(_USER_ID, max_size=3, unique=True),
    accept_from=st.lists(_SERVER.map(lambda s: f"@*:{s}"), max_size=3, unique=True),
    plugins=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.dictionaries(_SAFE_TEXT, _JSON, max_size=3),
        max_size=4,
    ),
    data_dir=st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,2}", fullmatch=True),
    catch_up=st.booleans(),
    age=st.one_of(
        st.integers(min_value=0, max_value=10**6).map(lambda n: (n, float(n))),
        st.tuples(st.integers(0, 999), st.sampled_from(sorted(_UNITS))).map(
            lambda t: (f"{t[0]}{t[1]}", float(t[0] * _UNITS[t[1]]))
        ),
    ),
    timeout=st.floats(min_value=0.001, max_value=1e6),
    concurrency=st.integers(min_value=1, max_value=1000),
    level=st.sampled_from(["DEBUG", "info", "Warning", "ERROR"]),
    fmt=st.sampled_from(["text", "json", "JSON"]),
)
def test_property_valid_configs_round_trip(
    user_id: str,
    device_name: str,
    command_prefix: str,
    admins: list[str],
    accept_from: list[str],
    plugins: dict[str, dict],
    data_dir: str,
    catch_up: bool,
    age: tuple[object, float],
    timeout: float,
    concurrency: int,
    level: str,
    fmt: str,
) -> None:
    mapping = {
        "homeserver": "https://matrix.example.org/",
        "user_id": user_id,
        "password": "${BOT_PASSWORD}",
        "pickle_key": "${RATCHET_PICKLE_KEY}",
        "device_name": device_name,
        "command_prefix": command_prefix,
        "admins": admins,
        "invites": {"accept_from": accept_from},
        "plugins": plugins,
        "data_dir": data_dir,
        "catch_up": catch_up,
        "catch_up_max_age": age[0],
        "handler_timeout": timeout,
        "max_concurrency": concurrency,
        "log_level": level,
        "log_format": fmt,
    }
    config = parse_config(yaml.safe_dump(mapping, sort_keys=False), source="c.yaml", base_dir=BASE_DIR, environ=ENV)
    assert config.homeserver == "https://matrix.example.org"
    assert config.user_id == user_id
    assert (config.password, config.pickle_key) == (PASSWORD, PICKLE)
    assert config.device_name == device_name
    assert config.command_prefix == command_prefix
    assert config.admins == tuple(admins)
    assert config.invites.accept_from == tuple(accept_from)
    assert all(config.invites.allows("@x:" + pattern[3:]) for pattern in accept_from)
    assert config.plugins == plugins
    assert list(config.plugins) == list(plugins)
    assert config.data_dir == BASE_DIR / data_dir
    assert config.catch_up is catch_up
    assert config.catch_up_max_age == age[1]
    assert config.handler_timeout == timeout
    assert config.max_concurrency == concurrency
    assert config.log_level == level.upper()
    assert config.log_format == fmt.lower()


@pytest.mark.parametrize(
    "snippet",
    [
        "user_id: ${BOT_PASSWORD}\n",
        "homeserver: https://${BOT_PASSWORD}/?x\n",
        "command_prefix: '${BOT_PASSWORD} '\n",
        "log_level: ${BOT_PASSWORD}\n",
        "catch_up_max_age: ${BOT_PASSWORD}\n",
        "admins: ['${BOT_PASSWORD}']\n",
        "invites:\n  accept_from: ['${BOT_PASSWORD}']\n",
    ],
)
def test_expanded_values_are_shown_unexpanded(snippet: str) -> None:
    """A secret variable put under the wrong key is not revealed: the error shows the reference."""
    env = {**ENV, "BOT_PASSWORD": "x y-Sekr1t"}
    err = error(replacing(snippet), extra=False, env=env)
    assert "Sekr1t" not in str(err)
    assert "${BOT_PASSWORD}" in str(err)
    assert "expanded value not shown" in str(err)


def test_unknown_key_with_a_newline_is_reported_on_one_line() -> None:
    # found by test_property_arbitrary_mappings: the key's newline used to split the error message in two
    with pytest.raises(ConfigError) as info:
        parse_config("invites:\n  ? '\n\n    '\n  : null\n", source="fuzz.yaml", base_dir=BASE_DIR, environ={})
    assert "\n" not in str(info.value) and "unknown key" in str(info.value)
