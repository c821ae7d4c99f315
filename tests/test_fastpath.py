"""bot.matrix.schemas accepts and rejects exactly what nio's own schema validation does, with the same side effects.

Every schema nio has is checked against generated instances (mostly shaped like the schema, with random damage)
comparing ``bot.matrix.schemas.validate_json`` with nio's original ``validate_json``: same outcome (accepted, or the
same ``ValidationError`` message and path, or the same other exception), and the instance left in the same state (nio
fills in defaults while validating). Real events go through nio's parsers with the fast path installed and not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hypothesis.strategies as st
import nio.schemas as nio_schemas
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema.exceptions import ValidationError
from nio import Event, RoomMessageText, SyncError, SyncResponse
from nio.events.misc import BadEvent, UnknownBadEvent

from bot.matrix import schemas as fastpath

SCHEMA_NAMES = sorted(n for n, v in vars(nio_schemas.Schemas).items() if not n.startswith("_") and isinstance(v, dict))
ORIGINAL = fastpath._original_validate_json


@contextmanager
def fast(enabled: bool) -> Iterator[None]:
    """Run with the fast path installed (or not), restoring the state the rest of the test session had."""
    was = fastpath.installed()
    if enabled:
        fastpath.install()
    else:
        fastpath.uninstall()
    try:
        yield
    finally:
        if was:
            fastpath.install()
        else:
            fastpath.uninstall()


def outcome(validate: Any, instance: Any, schema: dict) -> tuple:
    try:
        validate(instance, schema)
    except ValidationError as exc:
        return ("invalid", exc.message, list(exc.path), list(exc.schema_path))
    except Exception as exc:  # nio's validator raises other things on odd input (e.g. AttributeError)
        return ("error", type(exc).__name__, str(exc))
    return ("valid",)


def same_as_nio(instance: Any, schema: dict) -> tuple:
    """Validate copies with nio and with the fast path; assert equal outcomes and equal resulting instances."""
    with fast(True):
        theirs = copy.deepcopy(instance)
        ours = copy.deepcopy(instance)
        expected = outcome(ORIGINAL, theirs, schema)
        got = outcome(fastpath.validate_json, ours, schema)
        assert got == expected
        assert ours == theirs
        return expected


# -- generated instances -------------------------------------------------------------------------------------------

WORDS = ["", "x", "m.text", "m.notice", "@alice:example.org", "@bad", "alice", "!room:example.org", "$ev", "http://a",
         "https://b/c", "ftp://d", "invite", "join", "m.megolm.v1.aes-sha2", "content", "type", "state_key"]
KEYS = ["type", "content", "sender", "event_id", "state_key", "room_id", "body", "msgtype", "membership", "events",
        "origin_server_ts", "unsigned", "default", "x"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 200), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(WORDS), st.text(max_size=5),
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)


def _string_for(schema: dict) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [st.sampled_from(WORDS)]
    if schema.get("format") == "user_id":
        options += [st.sampled_from(["@alice:example.org", "@b:c"])] * 3
    elif schema.get("format") == "http_url":
        options += [st.sampled_from(["http://a", "https://b/c"])] * 3
    if "pattern" in schema:
        options.append(st.from_regex(schema["pattern"]))
    return st.one_of(*options)


def shaped(schema: Any, depth: int = 0, damage: bool = True) -> st.SearchStrategy[Any]:
    """Values shaped like ``schema``; with ``damage``, anything at all here and there."""
    if not isinstance(schema, dict) or depth > 7:
        return anything
    kinds: list[st.SearchStrategy[Any]] = []
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        kinds.append(st.sampled_from(schema["enum"]))
    types = schema.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if "object" in types or "properties" in schema or "patternProperties" in schema:
        kinds.append(_object_for(schema, depth, damage))
    if "array" in types:
        kinds.append(st.lists(shaped(schema.get("items"), depth + 1, damage), max_size=3))
    if "string" in types:
        kinds.append(_string_for(schema))
    if "integer" in types:
        kinds.append(st.integers(-5, 200))
    if "number" in types or ("integer" in types and damage):
        kinds.append(st.floats(-5, 200, allow_nan=False))
    if "boolean" in types:
        kinds.append(st.booleans())
    if "null" in types:
        kinds.append(st.none())
    if not kinds:
        return anything
    good = st.one_of(*kinds)
    return st.one_of(*[good] * 9, anything) if damage else good


def _object_for(schema: dict, depth: int, damage: bool) -> st.SearchStrategy[dict]:
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    pattern_props = schema.get("patternProperties") or {}

    @st.composite
    def build(draw: Any) -> dict:
        out: dict[str, Any] = {}
        for name, sub in props.items():
            keep = draw(st.integers(0, 9))
            if (name in required and (keep < 9 or not damage)) or (name not in required and keep < 5):
                out[name] = draw(shaped(sub, depth + 1, damage))
        for pattern, sub in list(pattern_props.items())[:2]:
            for _ in range(draw(st.integers(0, 2))):
                key = draw(st.from_regex(pattern).filter(lambda k: len(k) < 40) | st.sampled_from(WORDS))
                out[key] = draw(shaped(sub, depth + 1, damage))
        if damage and draw(st.integers(0, 9)) == 0:
            out[draw(st.sampled_from(KEYS))] = draw(anything)
        return out

    return build()


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_nio_schema_compiles(name: str) -> None:
    assert fastpath.compile_schema(getattr(nio_schemas.Schemas, name)) is not None


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_generated_instances_match_nio(name: str, data: st.DataObject) -> None:
    schema = getattr(nio_schemas.Schemas, name)
    instance = data.draw(shaped(schema, damage=data.draw(st.booleans())))
    same_as_nio(instance, schema)


# -- hand-picked cases ---------------------------------------------------------------------------------------------


def _message(**changes: Any) -> dict:
    event = {
        "type": "m.room.message",
        "sender": "@alice:example.org",
        "event_id": "$abc",
        "origin_server_ts": 1700000000000,
        "content": {"msgtype": "m.text", "body": "!ping"},
        "unsigned": {"age": 5},
    }
    event.update(changes)
    return event


CASES: list[tuple[str, Any]] = [
    ("room_message_text", _message()),
    ("room_message_text", _message(sender="alice")),  # format user_id
    ("room_message_text", _message(sender=5)),  # type error first, then format on a non-string
    ("room_message_text", _message(content={"msgtype": "m.text"})),  # body missing
    ("room_message", _message(state_key="")),  # "not": {"required": ["state_key"]}
    ("room_message", _message(content=[])),
    ("room_message", "not an object"),
    ("room_create", {"type": "m.room.create", "sender": "@a:b", "event_id": "$e", "origin_server_ts": 1,
                     "state_key": "", "content": {"creator": "@a:b"}}),  # defaults filled in
    ("room_create", {"type": "m.room.create", "sender": "@a:b", "event_id": "$e", "origin_server_ts": 1,
                     "state_key": "", "content": "nope"}),  # defaults on a non-object: nio raises
    ("room_power_levels", {"type": "m.room.power_levels", "sender": "@a:b", "event_id": "$e", "origin_server_ts": 1,
                           "state_key": "", "content": {"users": {"@a:b": 100}}}),
    ("room_power_levels", {"type": "m.room.power_levels", "sender": "@a:b", "event_id": "$e", "origin_server_ts": 1,
                           "state_key": "", "content": {"users": {"@a:b": "100"}}}),
    ("sync", {"next_batch": "s1"}),  # nested defaults, shared default objects
    ("sync", {"next_batch": "s1", "rooms": {"join": {"!r:b": {"timeline": {"events": [_message()]}}}}}),
    ("sync", {"next_batch": 1}),
    ("sync", {"rooms": {}}),
    ("empty", {}),
    ("empty", {"extra": 1}),  # additionalProperties: false
    ("delete_devices", {"session": "s", "flows": [], "params": {}, "required": ["x"]}),  # nio's schema oddity
    ("room_megolm_decrypted", {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"},
                               "room_id": "!r:b"}),
    ("room_megolm_decrypted", {"type": "m.room.message", "content": {}}),
    ("keys_upload", {"one_time_key_counts": {}}),
    ("keys_upload", {"one_time_key_counts": {"signed_curve25519": True}}),
    ("push_rules", {"type": "m.push_rules", "content": {"global": {}}}),
]


@pytest.mark.parametrize(("name", "instance"), CASES)
def test_hand_picked_cases_match_nio(name: str, instance: Any) -> None:
    same_as_nio(instance, getattr(nio_schemas.Schemas, name))


def test_valid_events_take_the_fast_way() -> None:
    with fast(True):
        fastpath.stats.reset()
        fastpath.validate_json(_message(), nio_schemas.Schemas.room_message_text)
        assert (fastpath.stats.fast, fastpath.stats.slow) == (1, 0)
        with pytest.raises(ValidationError):
            fastpath.validate_json(_message(content={"msgtype": "m.text"}), nio_schemas.Schemas.room_message_text)
        assert fastpath.stats.slow == 1


def test_unknown_schemas_go_to_nio() -> None:
    with fast(True):
        fastpath.stats.reset()
        fastpath.validate_json({"a": 1}, {"type": "object", "required": ["a"]})
        with pytest.raises(ValidationError):
            fastpath.validate_json({}, {"type": "object", "required": ["a"]})
        assert fastpath.stats.fast == 0 and fastpath.stats.slow == 2


def test_install_patches_nio_and_uninstall_restores() -> None:
    import nio.crypto.olm_machine
    import nio.events.misc
    import nio.responses

    with fast(True):
        fastpath.install()  # idempotent
        for module in (nio.schemas, nio.responses, nio.events.misc, nio.crypto.olm_machine):
            assert module.validate_json is fastpath.validate_json
    with fast(False):
        for module in (nio.schemas, nio.responses, nio.events.misc, nio.crypto.olm_machine):
            assert module.validate_json is ORIGINAL


def test_install_covers_every_nio_module_that_binds_validate_json() -> None:
    # install() names nio's modules one by one (no scan): a nio upgrade that adds a call site must show up here
    import importlib
    import pkgutil
    import sys

    import nio

    for info in pkgutil.walk_packages(nio.__path__, "nio."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # optional extras nio does not need here
            continue
    with fast(True):
        left = [name for name, module in list(sys.modules.items())
                if (name == "nio" or name.startswith("nio.")) and getattr(module, "validate_json", None) is ORIGINAL]
        assert left == []


# -- through nio's own parsers -------------------------------------------------------------------------------------

EVENTS = [
    _message(),
    _message(content={"msgtype": "m.notice", "body": "n"}),
    _message(content={"msgtype": "m.emote", "body": "e"}),
    _message(content={"msgtype": "m.text"}),
    _message(sender="not-a-user"),
    _message(state_key="x"),
    _message(content={"msgtype": "m.image", "body": "i.png", "url": "mxc://a/b"}),
    {"type": "m.room.member", "sender": "@a:b", "event_id": "$m", "origin_server_ts": 1, "state_key": "@a:b",
     "content": {"membership": "join"}},
    {"type": "m.room.member", "sender": "@a:b", "event_id": "$m", "origin_server_ts": 1, "state_key": "@a:b",
     "content": {"membership": 3}},
    {"type": "m.room.create", "sender": "@a:b", "event_id": "$c", "origin_server_ts": 1, "state_key": "",
     "content": {"creator": "@a:b"}},
    {"type": "m.room.encryption", "sender": "@a:b", "event_id": "$x", "origin_server_ts": 1, "state_key": "",
     "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
    {"type": "m.room.encrypted", "sender": "@a:b", "event_id": "$y", "origin_server_ts": 1,
     "content": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k", "ciphertext": "c", "session_id": "s",
                 "device_id": "D"}},
    {"type": "m.room.encrypted", "sender": "@a:b", "event_id": "$y", "origin_server_ts": 1,
     "content": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k"}},
    {"type": "m.reaction", "sender": "@a:b", "event_id": "$r", "origin_server_ts": 1,
     "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "+"}}},
    {"type": "m.room.redaction", "sender": "@a:b", "event_id": "$d", "origin_server_ts": 1, "redacts": "$e",
     "content": {}},
    {"type": "m.room.power_levels", "sender": "@a:b", "event_id": "$p", "origin_server_ts": 1, "state_key": "",
     "content": {"users": {"@a:b": 100}}},
    {"sender": "@a:b"},
]


def _describe(value: Any) -> Any:
    if isinstance(value, (BadEvent, UnknownBadEvent)):
        return (type(value).__name__, value.source)
    if value is None:
        return None
    return (type(value).__name__, getattr(value, "source", None), vars(value).get("body"))


@pytest.mark.parametrize("event", EVENTS, ids=[str(i) for i in range(len(EVENTS))])
def test_events_parse_the_same(event: dict) -> None:
    with fast(False):
        expected = _describe(Event.parse_event(copy.deepcopy(event)))
    with fast(True):
        fastpath.stats.reset()
        got = _describe(Event.parse_event(copy.deepcopy(event)))
    assert got == expected


def test_sync_responses_parse_the_same() -> None:
    sync = {
        "next_batch": "s2",
        "rooms": {
            "join": {"!r:b": {"timeline": {"events": EVENTS, "limited": False, "prev_batch": "p"},
                              "state": {"events": EVENTS[7:11]}}},
            "invite": {},
            "leave": {},
        },
        "to_device": {"events": []},
    }
    with fast(False):
        expected = SyncResponse.from_dict(copy.deepcopy(sync))
    with fast(True):
        got = SyncResponse.from_dict(copy.deepcopy(sync))
    assert isinstance(got, SyncResponse) and isinstance(expected, SyncResponse)
    exp_join, got_join = expected.rooms.join["!r:b"], got.rooms.join["!r:b"]
    assert [_describe(e) for e in got_join.timeline.events] == [_describe(e) for e in exp_join.timeline.events]
    assert [_describe(e) for e in got_join.state] == [_describe(e) for e in exp_join.state]
    assert isinstance(got_join.timeline.events[0], RoomMessageText)
    for broken in ({"rooms": {}}, {"next_batch": ["x"]}):
        with fast(False):
            expected_err = SyncResponse.from_dict(copy.deepcopy(broken))
        with fast(True):
            got_err = SyncResponse.from_dict(copy.deepcopy(broken))
        assert isinstance(got_err, SyncError) and isinstance(expected_err, SyncError)
        assert got_err.message == expected_err.message


def test_schema_defaults_stay_shared_like_nio() -> None:
    # nio puts the schema's own default objects into the instance; the fast path must do the same
    schema = nio_schemas.Schemas.sync
    with fast(True):
        a, b = {"next_batch": "x"}, {"next_batch": "x"}
        ORIGINAL(a, schema)
        fastpath.validate_json(b, schema)
        assert a["device_lists"] is b["device_lists"] is schema["properties"]["device_lists"]["default"]
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
