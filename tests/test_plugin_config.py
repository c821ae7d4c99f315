"""Typed plugin options (bot.plugin.options): types, errors, defaults, nested schemas, rooms filter."""

import dataclasses
import importlib.util
import math
import pickle
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.plugin.base import Plugin
from bot.plugin.options import (
    PluginConfigError,
    RoomFilter,
    find_schema,
    parse_plugin_options,
    split_options,
    validate_options,
)


@dataclass
class Database:
    host: str
    port: int = 5432
    password: str | None = None


class Reminders(Plugin):
    @dataclass
    class Config:
        api_key: str
        greeting: str = "hi"
        max_items: int = 10
        interval: float = 30.0
        enabled: bool = True
        mode: Literal["fast", "slow"] = "fast"
        rooms_notify: list[str] = field(default_factory=list)
        limits: dict[str, int] = field(default_factory=dict)
        target: str | None = None
        legacy: Optional[int] = None  # noqa: UP045 (the old spelling must work too)
        weights: tuple[float, ...] = ()
        pair: tuple[int, str] = (0, "")
        db: Database | None = None
        extra: Any = None


Config = Reminders.Config


def ok(**options: Any) -> Any:
    return validate_options("reminders", Config, {"api_key": "s3cret-value", **options})


def bad(**options: Any) -> PluginConfigError:
    with pytest.raises(PluginConfigError) as info:
        ok(**options)
    err = info.value
    assert err.plugin == "reminders"
    assert "\n" not in str(err)
    assert "s3cret-value" not in str(err)
    return err


# -- defaults and the happy path ------------------------------------------------------------------------------------


def test_defaults_are_applied() -> None:
    cfg = ok()
    assert isinstance(cfg, Config)
    assert cfg == Config(api_key="s3cret-value")
    assert cfg.greeting == "hi" and cfg.max_items == 10 and cfg.rooms_notify == [] and cfg.db is None


def test_every_type_round_trips() -> None:
    cfg = ok(
        greeting="hello",
        max_items=3,
        interval=2,
        enabled=False,
        mode="slow",
        rooms_notify=["!a:x", "#b:x"],
        limits={"a": 1, "b c": 2},
        target="@u:x",
        legacy=4,
        weights=[1, 2.5],
        pair=[7, "x"],
        db={"host": "db.local"},
        extra={"anything": [1, None, {"x": True}]},
    )
    assert cfg.greeting == "hello"
    assert cfg.max_items == 3
    assert cfg.interval == 2.0 and type(cfg.interval) is float
    assert cfg.enabled is False
    assert cfg.mode == "slow"
    assert cfg.rooms_notify == ["!a:x", "#b:x"]
    assert cfg.limits == {"a": 1, "b c": 2}
    assert cfg.target == "@u:x"
    assert cfg.legacy == 4
    assert cfg.weights == (1.0, 2.5) and type(cfg.weights) is tuple
    assert cfg.pair == (7, "x")
    assert cfg.db == Database(host="db.local", port=5432)
    assert cfg.extra == {"anything": [1, None, {"x": True}]}


def test_null_for_optional_fields() -> None:
    cfg = ok(target=None, legacy=None, db=None)
    assert cfg.target is None and cfg.legacy is None and cfg.db is None


def test_values_are_copied_not_shared() -> None:
    extra = {"nested": [1, 2]}
    notify = ["!a:x"]
    cfg = ok(extra=extra, rooms_notify=notify)
    extra["nested"].append(3)
    notify.append("!b:x")
    assert cfg.extra == {"nested": [1, 2]}
    assert cfg.rooms_notify == ["!a:x"]


def test_mutable_defaults_are_fresh() -> None:
    a, b = ok(), ok()
    a.rooms_notify.append("!x:y")
    assert b.rooms_notify == []


def test_frozen_schema_gives_frozen_instance() -> None:
    @dataclass(frozen=True)
    class Frozen:
        n: int = 1

    cfg = validate_options("p", Frozen, {"n": 2})
    assert cfg == Frozen(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n = 3  # type: ignore[misc]


def test_none_options_mean_no_options() -> None:
    @dataclass
    class AllDefaults:
        n: int = 1

    assert validate_options("p", AllDefaults, None) == AllDefaults()


# -- the error messages ---------------------------------------------------------------------------------------------


def test_wrong_int_message() -> None:
    err = bad(max_items="ten")
    assert str(err) == "plugins.reminders.max_items: expected an integer, got 'ten'"
    assert err.key == "max_items"
    assert err.path == "plugins.reminders.max_items"


def test_missing_required_message() -> None:
    with pytest.raises(PluginConfigError) as info:
        validate_options("reminders", Config, {})
    assert str(info.value) == "plugins.reminders: missing required option 'api_key'"
    assert info.value.key == "api_key"


def test_several_missing_are_listed() -> None:
    @dataclass
    class Two:
        a: int
        b: int

    with pytest.raises(PluginConfigError, match=r"^plugins\.p: missing required options 'a', 'b'$"):
        validate_options("p", Two, {})


def test_unknown_option_suggests() -> None:
    err = bad(greting="x")
    assert str(err) == "plugins.reminders: unknown option 'greting' (did you mean 'greeting'?)"
    assert err.key == "greting"


def test_unknown_option_without_close_match() -> None:
    err = bad(zzzzzz=1)
    assert str(err) == "plugins.reminders: unknown option 'zzzzzz'"


def test_unknown_option_reported_before_missing() -> None:
    with pytest.raises(PluginConfigError, match="unknown option 'api_kye' \\(did you mean 'api_key'\\?\\)"):
        validate_options("reminders", Config, {"api_kye": "x"})


def test_options_must_be_a_mapping() -> None:
    with pytest.raises(PluginConfigError, match=r"^plugins\.reminders: expected a mapping of options, got a list$"):
        validate_options("reminders", Config, ["a"])  # type: ignore[arg-type]
    with pytest.raises(PluginConfigError, match=r"^plugins\.reminders: expected a mapping of options"):
        validate_options("reminders", None, "x")  # type: ignore[arg-type]


def test_option_names_must_be_strings() -> None:
    with pytest.raises(PluginConfigError, match=r"^plugins\.reminders: option names must be strings, got 1$"):
        validate_options("reminders", Config, {1: "x", "api_key": "k"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # str
        ({"greeting": 5}, "plugins.reminders.greeting: expected a string, got 5"),
        ({"greeting": None}, "plugins.reminders.greeting: expected a string, got null"),
        ({"greeting": ["a"]}, "plugins.reminders.greeting: expected a string, got a list"),
        # int: bool is not an int, floats are rejected
        ({"max_items": True}, "plugins.reminders.max_items: expected an integer, got true"),
        ({"max_items": 2.0}, "plugins.reminders.max_items: expected an integer, got 2.0"),
        ({"max_items": 2.5}, "plugins.reminders.max_items: expected an integer, got 2.5"),
        # float: ints fine, not bool, nan or infinity
        ({"interval": "1"}, "plugins.reminders.interval: expected a number, got '1'"),
        ({"interval": False}, "plugins.reminders.interval: expected a number, got false"),
        ({"interval": math.nan}, "plugins.reminders.interval: expected a finite number, got nan"),
        ({"interval": -math.inf}, "plugins.reminders.interval: expected a finite number, got -inf"),
        ({"interval": 10**400}, "plugins.reminders.interval: expected a finite number, got a large integer"),
        # bool: real booleans only
        ({"enabled": "yes"}, "plugins.reminders.enabled: expected true or false, got 'yes'"),
        ({"enabled": 1}, "plugins.reminders.enabled: expected true or false, got 1"),
        # Literal
        ({"mode": "medium"}, "plugins.reminders.mode: expected one of 'fast', 'slow', got 'medium'"),
        ({"mode": None}, "plugins.reminders.mode: expected one of 'fast', 'slow', got null"),
        # Optional
        ({"target": 3}, "plugins.reminders.target: expected a string or null, got 3"),
        ({"legacy": "x"}, "plugins.reminders.legacy: expected an integer or null, got 'x'"),
        # list
        ({"rooms_notify": "!a:x"}, "plugins.reminders.rooms_notify: expected a list, got '!a:x'"),
        ({"rooms_notify": ["!a:x", 2]}, "plugins.reminders.rooms_notify[1]: expected a string, got 2"),
        # tuple
        ({"weights": {"a": 1}}, "plugins.reminders.weights: expected a list, got a mapping"),
        ({"weights": [1, "x"]}, "plugins.reminders.weights[1]: expected a number, got 'x'"),
        ({"pair": [1]}, "plugins.reminders.pair: expected a list of 2 items, got 1"),
        ({"pair": [1, 2]}, "plugins.reminders.pair[1]: expected a string, got 2"),
        # dict
        ({"limits": ["a"]}, "plugins.reminders.limits: expected a mapping, got a list"),
        ({"limits": {"a": "x"}}, "plugins.reminders.limits.a: expected an integer, got 'x'"),
        ({"limits": {"a b": "x"}}, "plugins.reminders.limits['a b']: expected an integer, got 'x'"),
        ({"limits": {3: 1}}, "plugins.reminders.limits: option names must be strings, got 3"),
        # nested dataclass
        ({"db": "localhost"}, "plugins.reminders.db: expected a mapping or null, got 'localhost'"),
        ({"db": {}}, "plugins.reminders.db: missing required option 'host'"),
        ({"db": {"host": 1}}, "plugins.reminders.db.host: expected a string, got 1"),
        ({"db": {"host": "h", "prot": 1}}, "plugins.reminders.db: unknown option 'prot' (did you mean 'port'?)"),
    ],
)
def test_type_errors(options: dict[str, Any], message: str) -> None:
    err = bad(**options)
    assert str(err) == message
    if "missing" not in message and "unknown" not in message:
        assert err.path == message.split(":")[0]


def test_long_values_are_shortened() -> None:
    err = bad(mode="x" * 500)
    assert len(str(err)) < 160
    assert "..." in str(err)


def test_nested_keys() -> None:
    err = bad(db={"host": "h", "prot": 1})
    assert err.key == "db.prot"
    err = bad(db={"host": 1})
    assert err.key == "db.host"
    assert err.path == "plugins.reminders.db.host"
    err = bad(rooms_notify=["!a:x", 2])
    assert err.key == "rooms_notify[1]"


def test_deeply_nested_dataclasses() -> None:
    @dataclass
    class C:
        value: int

    @dataclass
    class B:
        c: C

    @dataclass
    class A:
        b: B
        bs: list[B] = field(default_factory=list)

    @dataclass
    class Top:
        a: A

    cfg = validate_options("p", Top, {"a": {"b": {"c": {"value": 1}}, "bs": [{"c": {"value": 2}}]}})
    assert cfg == Top(A(B(C(1)), [B(C(2))]))
    with pytest.raises(PluginConfigError) as info:
        validate_options("p", Top, {"a": {"b": {"c": {"value": "x"}}}})
    assert str(info.value) == "plugins.p.a.b.c.value: expected an integer, got 'x'"
    assert info.value.key == "a.b.c.value"
    with pytest.raises(PluginConfigError) as info:
        validate_options("p", Top, {"a": {"b": {"c": {"value": 1}}, "bs": [{"c": {}}]}})
    assert str(info.value) == "plugins.p.a.bs[0].c: missing required option 'value'"


def test_error_pickles() -> None:
    err = bad(max_items="ten")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.plugin, again.key) == (str(err), err.plugin, err.key)


# -- secrets --------------------------------------------------------------------------------------------------------


@dataclass
class Secrets:
    api_key: int = 0
    access_token: int = 0
    client_secret: int = 0
    PASSWORD: int = 0
    monkey_keys: list[int] = field(default_factory=list)
    headers: dict[str, int] = field(default_factory=dict)
    db: Database | None = None
    mode: Literal["a", "b"] = "a"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"api_key": "hunter2-secret"}, "api_key"),
        ({"access_token": "hunter2-secret"}, "access_token"),
        ({"client_secret": "hunter2-secret"}, "client_secret"),
        ({"PASSWORD": "hunter2-secret"}, "PASSWORD"),
        ({"monkey_keys": [1, "hunter2-secret"]}, "monkey_keys[1]"),
        ({"headers": {"X-Api-Token": "hunter2-secret"}}, "headers.X-Api-Token"),
        ({"db": {"host": "h", "password": 1234567}}, "db.password"),
    ],
)
def test_secret_values_are_never_echoed(options: dict[str, Any], key: str) -> None:
    with pytest.raises(PluginConfigError) as info:
        validate_options("p", Secrets, options)
    text = str(info.value)
    assert info.value.key == key
    assert "hunter2" not in text and "1234567" not in text
    assert "got a string" in text or "got an integer" in text


def test_non_secret_values_are_shown() -> None:
    with pytest.raises(PluginConfigError, match="got 'c'"):
        validate_options("p", Secrets, {"mode": "c"})


# -- schema declarations --------------------------------------------------------------------------------------------


def test_find_schema() -> None:
    assert find_schema(Reminders) is Reminders.Config

    class NoSchema(Plugin):
        pass

    class NotADataclass(Plugin):
        class Config:
            x: int = 1

    class Explicit(Plugin):
        config_schema = Database

    class Inherited(Reminders):
        pass

    assert find_schema(NoSchema) is None
    assert find_schema(NotADataclass) is None
    assert find_schema(Explicit) is Database
    assert find_schema(Inherited) is Reminders.Config

    class BadExplicit(Plugin):
        config_schema = dict

    with pytest.raises(TypeError, match="config_schema"):
        find_schema(BadExplicit)


def test_no_schema_gives_read_only_copy() -> None:
    options = {"a": 1, "nested": {"b": [1, 2]}}
    cfg = validate_options("p", None, options)
    assert isinstance(cfg, types.MappingProxyType)
    assert cfg == options
    with pytest.raises(TypeError):
        cfg["a"] = 2  # type: ignore[index]
    options["nested"]["b"].append(3)
    assert cfg["nested"] == {"b": [1, 2]}
    assert validate_options("p", None, None) == {}


@pytest.mark.parametrize(
    ("annotation", "shown"),
    [
        (set[str], "set[str]"),
        (int | str, "int | str"),
        (dict[int, str], "dict[int, str]"),
        (bytes, "bytes"),
        (Literal[1.5], "Literal[1.5]"),
        (list[set[int]], "set[int]"),
    ],
)
def test_unsupported_annotation_is_a_type_error(annotation: Any, shown: str) -> None:
    schema = dataclasses.make_dataclass("Config", [("field_x", annotation)])
    schema.__qualname__ = "MyPlugin.Config"
    with pytest.raises(TypeError) as info:
        validate_options("mine", schema, {})
    text = str(info.value)
    assert "MyPlugin.Config.field_x" in text
    assert shown in text
    assert "mine" in text


def test_unsupported_annotation_reported_even_if_option_not_given() -> None:
    @dataclass
    class Cfg:
        ok: int = 1
        bad: set[int] = field(default_factory=set)

    with pytest.raises(TypeError, match=r"Cfg\.bad"):
        validate_options("p", Cfg, {"ok": 2})


def test_rooms_field_is_reserved() -> None:
    @dataclass
    class Cfg:
        rooms: list[str] = field(default_factory=list)

    with pytest.raises(TypeError, match="reserved"):
        validate_options("p", Cfg, {})


def test_schema_must_be_a_dataclass() -> None:
    with pytest.raises(TypeError):
        validate_options("p", dict, {})


def test_init_false_fields_are_not_options() -> None:
    @dataclass
    class Cfg:
        n: int = 1
        derived: int = field(init=False, default=0)

        def __post_init__(self) -> None:
            self.derived = self.n * 2

    assert validate_options("p", Cfg, {"n": 3}).derived == 6
    with pytest.raises(PluginConfigError, match="unknown option 'derived'"):
        validate_options("p", Cfg, {"derived": 1})


def test_post_init_value_error_becomes_config_error() -> None:
    @dataclass
    class Cfg:
        low: int = 0
        high: int = 10

        def __post_init__(self) -> None:
            if self.low > self.high:
                raise ValueError("low must not exceed high")

    with pytest.raises(PluginConfigError, match=r"^plugins\.p: low must not exceed high$"):
        validate_options("p", Cfg, {"low": 11})


@dataclass
class TreeNode:
    name: str
    children: list["TreeNode"] = field(default_factory=list)


def test_self_referencing_schema() -> None:
    cfg = validate_options("p", TreeNode, {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]})
    assert cfg == TreeNode("a", [TreeNode("b", [TreeNode("c")])])
    with pytest.raises(PluginConfigError, match=r"^plugins\.p\.children\[0\]\.children\[1\]\.name: expected a string"):
        validate_options(
            "p", TreeNode, {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}, {"name": 1}]}]}
        )


def test_unresolvable_string_annotation_is_a_type_error() -> None:
    @dataclass
    class Cfg:
        x: "NoSuchType" = None  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="NoSuchType"):
        validate_options("p", Cfg, {})


FUTURE_PLUGIN = """
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bot.plugin.base import Plugin


@dataclass(frozen=True)
class Endpoint:
    url: str
    retries: int = 3


class Future(Plugin):
    @dataclass(frozen=True)
    class Limits:
        per_minute: int = 5

    @dataclass(frozen=True)
    class Config:
        token: str
        mode: Literal["a", "b"] = "a"
        endpoint: Endpoint | None = None
        limits: Limits = field(default_factory=lambda: Future.Limits())
        tags: tuple[str, ...] = ()
        weights: dict[str, float] = field(default_factory=dict)
"""


@pytest.fixture
def future_plugin(tmp_path: Path):
    path = tmp_path / "future_plugin_mod.py"
    path.write_text(textwrap.dedent(FUTURE_PLUGIN))
    spec = importlib.util.spec_from_file_location("future_plugin_mod", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["future_plugin_mod"] = module
    try:
        spec.loader.exec_module(module)
        yield module.Future
    finally:
        del sys.modules["future_plugin_mod"]


def test_future_annotations(future_plugin: type) -> None:
    schema = find_schema(future_plugin)
    assert schema is future_plugin.Config
    cfg = validate_options(
        "future",
        schema,
        {
            "token": "t",
            "mode": "b",
            "endpoint": {"url": "https://x"},
            "limits": {"per_minute": 9},
            "tags": ["x"],
            "weights": {"a": 1},
        },
    )
    assert cfg.mode == "b"
    assert cfg.endpoint.url == "https://x" and cfg.endpoint.retries == 3
    assert cfg.limits == future_plugin.Limits(per_minute=9)
    assert cfg.tags == ("x",)
    assert cfg.weights == {"a": 1.0}
    with pytest.raises(PluginConfigError) as info:
        validate_options("future", schema, {"token": "t", "limits": {"per_minute": "many"}})
    assert str(info.value) == "plugins.future.limits.per_minute: expected an integer, got 'many'"
    with pytest.raises(PluginConfigError) as info:
        validate_options("future", schema, {"token": 123456789})
    assert "123456789" not in str(info.value)


# -- rooms ----------------------------------------------------------------------------------------------------------


def test_room_filter_semantics() -> None:
    everything = RoomFilter()
    assert everything.permits("!a:x")
    only = RoomFilter(allow=("!a:x", "#general:x"))
    assert only.permits("!a:x")
    assert not only.permits("!b:x")
    assert only.permits("!b:x", aliases=["#general:x"])
    no_b = RoomFilter(deny=("!b:x",))
    assert no_b.permits("!a:x") and not no_b.permits("!b:x")
    both = RoomFilter(allow=("!a:x", "#general:x"), deny=("!a:x", "#private:x"))
    assert not both.permits("!a:x")  # deny wins
    assert not both.permits("!c:x", aliases=("#general:x", "#private:x"))
    assert both.permits("!c:x", aliases=("#general:x",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        both.allow = ()  # type: ignore[misc]


def test_split_options() -> None:
    rooms, rest = split_options("p", {"rooms": {"allow": ["!a:x", "#b:x"], "deny": ["!c"]}, "n": 1})
    assert rooms == RoomFilter(("!a:x", "#b:x"), ("!c",))
    assert rest == {"n": 1}
    assert split_options("p", {"n": 1}) == (RoomFilter(), {"n": 1})
    assert split_options("p", None) == (RoomFilter(), {})
    assert split_options("p", {"rooms": None}) == (RoomFilter(), {})
    assert split_options("p", {"rooms": {}}) == (RoomFilter(), {})
    assert split_options("p", {"rooms": {"allow": None, "deny": ["!a:x"]}}) == (RoomFilter((), ("!a:x",)), {})
    original = {"rooms": {"allow": ["!a:x"]}, "n": 1}
    split_options("p", original)
    assert "rooms" in original  # the input is not modified


@pytest.mark.parametrize(
    ("rooms", "message", "key"),
    [
        (["!a:x"], "plugins.p.rooms: expected a mapping with 'allow' and/or 'deny' lists, got a list", "rooms"),
        ({"alow": ["!a:x"]}, "plugins.p.rooms: unknown option 'alow' (did you mean 'allow'?)", "rooms.alow"),
        ({"only": []}, "plugins.p.rooms: unknown option 'only' (expected 'allow' and/or 'deny')", "rooms.only"),
        ({"allow": "!a:x"}, "plugins.p.rooms.allow: expected a list of room IDs or aliases, got '!a:x'", "rooms.allow"),
        ({"deny": [1]}, "plugins.p.rooms.deny[0]: expected a room ID or alias, got 1", "rooms.deny[0]"),
        (
            {"allow": ["!a:x", "general"]},
            "plugins.p.rooms.allow[1]: expected a room ID ('!...') or alias ('#name:server'), got 'general'",
            "rooms.allow[1]",
        ),
        (
            {"allow": ["#general"]},
            "plugins.p.rooms.allow[0]: expected a room ID ('!...') or alias ('#name:server'), got '#general'",
            "rooms.allow[0]",
        ),
    ],
)
def test_split_options_errors(rooms: Any, message: str, key: str) -> None:
    with pytest.raises(PluginConfigError) as info:
        split_options("p", {"rooms": rooms})
    assert str(info.value) == message
    assert info.value.plugin == "p"
    assert info.value.key == key


def test_split_options_needs_a_mapping() -> None:
    with pytest.raises(PluginConfigError, match=r"^plugins\.p: expected a mapping of options, got a list$"):
        split_options("p", ["x"])  # type: ignore[arg-type]


def test_parse_plugin_options() -> None:
    rooms, cfg = parse_plugin_options("reminders", Reminders, {"rooms": {"deny": ["!x:y"]}, "api_key": "k"})
    assert rooms == RoomFilter(deny=("!x:y",))
    assert cfg == Config(api_key="k")
    rooms, cfg = parse_plugin_options("plain", Plugin, {"a": 1})
    assert rooms == RoomFilter() and cfg == {"a": 1}


# -- property: arbitrary option values never raise anything but PluginConfigError ----------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from([f.name for f in dataclasses.fields(Config)] + ["rooms", "greting", "x"])
SECRET = "Zq9-secret-Zq9"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(options=st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=8), with_key=st.booleans())
def test_arbitrary_values_only_raise_config_errors(options: dict[str, Any], with_key: bool) -> None:
    if with_key:
        options.setdefault("api_key", SECRET)
    try:
        cfg = validate_options("reminders", Config, options)
    except PluginConfigError as exc:
        assert str(exc).startswith("plugins.reminders")
        assert "\n" not in str(exc)
        assert SECRET not in str(exc)
    else:
        assert isinstance(cfg, Config)
        assert isinstance(cfg.max_items, int) and not isinstance(cfg.max_items, bool)
        assert isinstance(cfg.interval, float) and math.isfinite(cfg.interval)
        assert cfg.mode in ("fast", "slow")
        assert all(isinstance(r, str) for r in cfg.rooms_notify)
    try:
        validate_options("reminders", None, options)
        split_options("reminders", options)
    except PluginConfigError:
        pass


@settings(max_examples=200)
@given(value=json_values)
def test_arbitrary_values_for_every_field(value: Any) -> None:
    for name in [f.name for f in dataclasses.fields(Config)]:
        try:
            validate_options("reminders", Config, {"api_key": "k", name: value})
        except PluginConfigError as exc:
            assert exc.key is not None and exc.key.startswith(name)
    try:
        split_options("reminders", {"rooms": value})
    except PluginConfigError as exc:
        assert exc.key is not None and exc.key.startswith("rooms")


# -- where an error points in the config file (issue 15) -------------------------------------------------------------

OPTS_PLUGIN = '''
from dataclasses import dataclass, field

from bot import Context, Plugin, on_message


@dataclass(frozen=True)
class Db:
    host: str
    port: int = 5432


class Opts(Plugin):
    @dataclass(frozen=True)
    class Config:
        interval: float = 1.0
        db: Db | None = None
        tags: list[str] = field(default_factory=list)
        patterns: list[str] = field(default_factory=lambda: ["hello"])
        low: int = 0
        high: int = 10

        def __post_init__(self) -> None:
            if self.low > self.high:
                raise ValueError("low must not exceed high")
            if self.high == 13:
                raise TypeError("high must not be 13")

    @on_message(config="patterns")
    async def seen(self, ctx: Context, match) -> None:
        await ctx.reply("seen")
'''

#: One plugin per kind of error; ``# <- NAME`` marks the line each error must point at.
OPTS_CONFIG = """\
homeserver: http://127.0.0.1:1
user_id: '@b:localhost'
password: pw-123456
pickle_key: a-long-enough-pickle-key
plugin_dirs: [{plugin_dir}]
plugins:
  opts_ok:
    interval: 2
  opts_type:
    tags: [a]
    interval: soon  # <- opts_type
  opts_unknown:
    intervall: 5  # <- opts_unknown
  opts_missing:
    db:  # <- opts_missing
      port: 1
  opts_value:  # <- opts_value
    low: 11
  opts_typeerror:  # <- opts_typeerror
    high: 13
  opts_pattern:
    patterns:
      - ok
      - "["  # <- opts_pattern
  opts_item:
    tags:
      - a
      - 2  # <- opts_item
  opts_rooms:
    rooms:
      allow: ["!a:b"]
      deni: []  # <- opts_rooms
  opts_empty:
    patterns: ['']  # <- opts_empty
  opts_nosuch: {{}}  # <- opts_nosuch
"""

#: What each plugin's error says after ``FILE:LINE: ``.
OPTS_ERRORS = {
    "opts_type": "plugins.opts_type.interval: expected a number, got 'soon'",
    "opts_unknown": "plugins.opts_unknown: unknown option 'intervall' (did you mean 'interval'?)",
    "opts_missing": "plugins.opts_missing.db: missing required option 'host'",
    "opts_value": "plugins.opts_value: low must not exceed high",
    "opts_typeerror": "plugins.opts_typeerror: high must not be 13",
    "opts_pattern": "plugins.opts_pattern.patterns[1]: pattern '[' is not a valid regular expression",
    "opts_item": "plugins.opts_item.tags[1]: expected a string, got 2",
    "opts_rooms": "plugins.opts_rooms.rooms: unknown option 'deni' (did you mean 'deny'?)",
    "opts_empty": "plugins.opts_empty.patterns[0]: pattern 1 is empty",
    "opts_nosuch": "plugin opts_nosuch: not found",
}


@pytest.fixture
def opts_config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A config file with one plugin per kind of option error, and the line each error must point at."""
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    for name in ["opts_ok", *OPTS_ERRORS]:
        if name != "opts_nosuch":
            (plugin_dir / f"{name}.py").write_text(OPTS_PLUGIN)
    text = OPTS_CONFIG.format(plugin_dir=plugin_dir)
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(text)
    lines = {}
    for number, line in enumerate(text.splitlines(), 1):
        if "# <- " in line:
            lines[line.split("# <- ")[1].strip()] = number
    assert set(lines) == set(OPTS_ERRORS)
    return cfg, lines


def test_plugin_option_errors_point_at_their_line(opts_config: tuple[Path, dict[str, int]]) -> None:
    from bot.config import load_config
    from bot.plugin.host import check_plugin_options

    cfg, lines = opts_config
    config = load_config(cfg)
    errors = {err.key.split(".")[1].split("[")[0]: err for err in check_plugin_options(config)}
    assert set(errors) == set(OPTS_ERRORS), errors
    for name, message in OPTS_ERRORS.items():
        err = errors[name]
        assert (err.file, err.line) == (str(cfg), lines[name]), (name, str(err))
        assert str(err).startswith(f"{cfg}:{lines[name]}: {message}"), str(err)


def test_check_config_prints_file_and_line_of_each_plugin_option_error(
    opts_config: tuple[Path, dict[str, int]],
) -> None:
    import subprocess

    cfg, lines = opts_config
    res = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stdout + res.stderr
    printed = res.stderr.splitlines()
    assert len(printed) == len(OPTS_ERRORS), res.stderr
    for name, message in OPTS_ERRORS.items():
        expected = f"ratchet: config error: {cfg}:{lines[name]}: {message}"
        assert [line for line in printed if line.startswith(expected)], f"{expected!r} not in:\n{res.stderr}"
    assert "Traceback" not in res.stderr


def test_plugin_lines_are_recorded_but_not_compared() -> None:
    from bot.config import parse_config

    head = "homeserver: http://h\nuser_id: '@b:h'\npassword: pw\npickle_key: a-long-enough-pickle-key\n"
    body = "plugins:\n  p:\n    a: 1\n    b:\n      - x\n      - {c: 2}\n    d: &anchor {e: 3}\n  q:\n"
    config = parse_config(head + body)
    assert config.plugins == {"p": {"a": 1, "b": ["x", {"c": 2}], "d": {"e": 3}}, "q": {}}
    assert config.plugin_line("p") == 6
    assert config.plugin_line("p", "a") == 7
    assert config.plugin_line("p", "b") == 8
    assert config.plugin_line("p", "b", 1) == 10
    assert config.plugin_line("p", "b", 1, "c") == 10
    assert config.plugin_line("p", "d", "e") == 11
    assert config.plugin_line("p", "missing", "deeper") == 6  # the nearest enclosing key
    assert config.plugin_line("q", "x") == 12
    assert config.plugin_line("nope") is None
    assert parse_config("\n\n" + head + body) == config, "line numbers are not part of equality"


def test_error_parts_follow_the_key() -> None:
    err = bad(db={"port": 1})
    assert (err.key, err.parts) == ("db.host", ("db", "host"))
    err = bad(rooms_notify=["a", 2])
    assert (err.key, err.parts) == ("rooms_notify[1]", ("rooms_notify", 1))
    err = bad(greting="x")
    assert (err.key, err.parts) == ("greting", ("greting",))
    with pytest.raises(PluginConfigError) as info:
        split_options("reminders", {"rooms": {"allow": ["!a:b", "nope"]}})
    assert info.value.parts == ("rooms", "allow", 1)
    assert pickle.loads(pickle.dumps(info.value)).parts == ("rooms", "allow", 1)
