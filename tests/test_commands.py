"""Tests of bot.plugin.commands: tokenising, invocation parsing, typed arguments, usage strings."""

import re
import sys
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.plugin.commands import (
    ArgumentError,
    CommandSpec,
    Invocation,
    Param,
    Rest,
    RoomRef,
    Token,
    UsageError,
    UserId,
    iter_tokens,
    join_args,
    parse_invocation,
    quote_arg,
    split_args,
    split_args_spans,
    strip_reply_fallback,
)

MB = 1_000_000
NO_TEXT = Rest("")
ALL_WHITESPACE = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]


class Ctx:
    """Stands in for bot.Context; the context parameter's annotation does not matter."""


class Handlers:
    """Handlers declared the way plugin authors write them."""

    async def remind(self, ctx: Ctx, who: UserId, minutes: int, text: Rest) -> None:
        """Remind someone.

        Longer description that is not part of the help line.
        """

    async def mode(
        self,
        ctx: Ctx,
        value: Literal["on", "off"],
        verbose: bool = False,
        count: Optional[int] = None,  # noqa: UP045 - Optional[X] must keep working
    ) -> None:
        """Switch the mode."""

    async def ping(self, ctx: Ctx) -> None:
        pass

    async def say(self, ctx: Ctx, text: Rest = NO_TEXT) -> None:
        """Say something"""

    async def everything(
        self,
        ctx,
        s,
        i: int,
        f: float,
        b: bool,
        u: UserId,
        r: RoomRef,
        c: Literal["Red", "green"],
        o: str | None = None,
    ) -> None:
        pass


REMIND = CommandSpec.from_function(Handlers.remind, aliases=["r", "Remindme"])
MODE = CommandSpec.from_function(Handlers.mode)
PING = CommandSpec.from_function(Handlers.ping)
SAY = CommandSpec.from_function(Handlers.say)
EVERYTHING = CommandSpec.from_function(Handlers.everything)


def param(spec: CommandSpec, name: str) -> Param:
    return next(p for p in spec.params if p.name == name)


# --------------------------------------------------------------------------------------------
# Matrix identifiers


@pytest.mark.parametrize(
    "value",
    [
        "@alice:example.org",
        "@Alice:example.org",  # historical upper case
        "@_bridge_=x/y+z.-:example.org",
        "@a!b~c:example.org",  # historical: any printable ASCII but ':'
        "@a:localhost",
        "@a:localhost:8008",
        "@a:1.2.3.4",
        "@a:1.2.3.4:65535",
        "@a:[::1]",
        "@a:[2001:db8::1]:8448",
        "@a:[::ffff:1.2.3.4]",
        "@1234:example.org",
        "@a:" + "x" * 252,  # exactly 255 bytes
    ],
)
def test_user_id_valid(value: str) -> None:
    assert UserId.is_valid(value)
    assert UserId(value) == value
    assert isinstance(UserId(value), str)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "@",
        "alice",
        "alice:example.org",
        "@alice",
        "@:example.org",
        "@alice:",
        "@al ice:example.org",
        "@ä:example.org",
        "@a\x00:example.org",
        "@a:exa mple.org",
        "@a:ex_ample.org",
        "@a:example.org:",
        "@a:example.org:65536",
        "@a:example.org:123456",
        "@a:example.org:port",
        "@a:[zz::1]",
        "@a:[::1",
        "@a:" + "x" * 253,  # 256 bytes
        "#alice:example.org",
        "!alice:example.org",
        " @alice:example.org",
        "@alice:example.org ",
        "@alice:example.org\n",
    ],
)
def test_user_id_invalid(value: str) -> None:
    assert not UserId.is_valid(value)
    with pytest.raises(ValueError, match="not a Matrix user ID"):
        UserId(value)


def test_user_id_parts() -> None:
    u = UserId("@alice:example.org:8448")
    assert u.localpart == "alice"
    assert u.server_name == "example.org:8448"


def test_user_id_rejects_non_strings() -> None:
    assert not UserId.is_valid(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UserId(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "!abc:example.org",
        "!AbC123/=+:example.org:8448",
        "!a b:example.org",  # opaque localpart: anything but ':' and NUL
        "#room:example.org",
        "#räum:example.org",
        "#a.b_c-d:[::1]:8448",
        "!" + "A" * 40 + "_-0",  # room version 12: no server name
    ],
)
def test_room_ref_valid(value: str) -> None:
    assert RoomRef.is_valid(value)
    assert RoomRef(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "room",
        "!abc",
        "#room",
        "#:example.org",
        "!:example.org",
        "#room:",
        "!a:b:c",
        "#a\x00b:example.org",
        "@alice:example.org",
        "!" + "A" * 42,
        "!" + "A" * 44,
        "!" + "A" * 42 + "=",
        "#r:" + "x" * 253,
    ],
)
def test_room_ref_invalid(value: str) -> None:
    assert not RoomRef.is_valid(value)
    with pytest.raises(ValueError, match="not a Matrix room ID or alias"):
        RoomRef(value)


def test_room_ref_parts() -> None:
    alias = RoomRef("#room:example.org")
    assert alias.is_alias and not alias.is_room_id
    assert alias.server_name == "example.org"
    room = RoomRef("!abc:example.org:8448")
    assert room.is_room_id and not room.is_alias
    assert room.server_name == "example.org:8448"
    assert RoomRef("!" + "A" * 43).server_name is None


# --------------------------------------------------------------------------------------------
# split_args


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   \t\n ", []),
        ("a", ["a"]),
        ("a b  c", ["a", "b", "c"]),
        ("  a\tb\nc  ", ["a", "b", "c"]),
        ("a\u00a0b\u3000c\u2003d", ["a", "b", "c", "d"]),
        ('"a b" c', ["a b", "c"]),
        ("'a b' c", ["a b", "c"]),
        ('""', [""]),
        ("''", [""]),
        ('a "" b', ["a", "", "b"]),
        ('a"b c"d', ["ab cd"]),
        ("a'b c'\"d e\"f", ["ab cd ef"]),
        ('"it\'s"', ["it's"]),
        ("'say \"hi\"'", ['say "hi"']),
        ('"multi\nline"', ["multi\nline"]),
        # inside double quotes: \" and \\ are escapes, any other backslash is literal
        (r'"a\"b"', ['a"b']),
        (r'"a\\b"', ["a\\b"]),
        (r'"a\nb"', ["a\\nb"]),
        (r'"a\'b"', ["a\\'b"]),
        (r'"\\\""', ['\\"']),
        # inside single quotes nothing is special
        (r"'a\b\'", ["a\\b\\"]),
        # outside quotes: a backslash escapes whitespace, quotes and backslashes
        (r"a\ b", ["a b"]),
        (r"\"a\"", ['"a"']),
        (r"don\'t", ["don't"]),
        (r"a\\b", ["a\\b"]),
        ("a\\\tb", ["a\tb"]),
        # ... and is literal before anything else
        (r"\o/", ["\\o/"]),
        (r"C:\dir\file", ["C:\\dir\\file"]),
        ("a\\", ["a\\"]),
        ("\\", ["\\"]),
        ("\x00 a\x00b", ["\x00", "a\x00b"]),
        ("émoji 🎉 ok", ["émoji", "🎉", "ok"]),
    ],
)
def test_split_args(text: str, expected: list[str]) -> None:
    assert split_args(text) == expected


@pytest.mark.parametrize(
    ("text", "quote"),
    [
        ('"abc', '"'),
        ("'abc", "'"),
        ('a "b c', '"'),
        ("don't", "'"),
        (r'"abc\"', '"'),  # the closing quote is escaped
        ('ok "', '"'),
        ("'", "'"),
        ('"', '"'),
    ],
)
def test_split_args_unclosed_quote(text: str, quote: str) -> None:
    with pytest.raises(ArgumentError, match=f"unclosed {quote} quote") as info:
        split_args(text)
    assert isinstance(info.value, ValueError)


def test_unclosed_quote_message_is_short_for_huge_input() -> None:
    with pytest.raises(ArgumentError) as info:
        split_args('"' + "x" * MB)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("ws", ALL_WHITESPACE)
def test_every_unicode_whitespace_separates(ws: str) -> None:
    assert split_args(f"a{ws}b") == ["a", "b"]
    assert split_args(quote_arg(f"a{ws}b")) == [f"a{ws}b"]
    assert split_args(f"a\\{ws}b") == [f"a{ws}b"]


def test_split_args_spans() -> None:
    text = r' ab  "c d"e  \o/ ' + "'x'"
    spans = split_args_spans(text)
    assert spans == [
        Token("ab", 1, 3),
        Token("c de", 5, 11),
        Token("\\o/", 13, 16),
        Token("x", 17, 20),
    ]
    assert [text[t.start : t.end] for t in spans] == ["ab", '"c d"e', "\\o/", "'x'"]


def test_iter_tokens_is_lazy() -> None:
    tokens = iter_tokens("first second 'unclosed")
    assert next(tokens).value == "first"
    assert next(tokens).value == "second"
    with pytest.raises(ArgumentError):
        next(tokens)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("abc", "abc"),
        ("", '""'),
        ("a b", '"a b"'),
        ('say "hi"', r'"say \"hi\""'),
        ("it's", '"it\'s"'),
        ("C:\\dir", r'"C:\\dir"'),
        ("a\nb", '"a\nb"'),
        ("@a:b.org", "@a:b.org"),
    ],
)
def test_quote_arg(value: str, quoted: str) -> None:
    assert quote_arg(value) == quoted
    assert split_args(quoted) == [value]


def test_join_args() -> None:
    values = ["a", "", "b c", '"', "\\", "'"]
    assert split_args(join_args(values)) == values


# --------------------------------------------------------------------------------------------
# Reply fallbacks and invocations


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("> <@alice:example.org> hello\n\n!ping", "!ping"),
        ("> <@alice:example.org> line 1\n> line 2\n>\n> \n\nreply\nmore", "reply\nmore"),
        ("> * <@alice:example.org> waves\n\n!ping", "!ping"),
        ("> <@a:b> x\r\n> y\r\n\r\n!ping", "!ping"),
        ("> <@a:b> x\n   \n!ping", "!ping"),  # whitespace-only blank line
        ("> <@a:b> x\n\n", ""),
        ("> <@a:b> x\n\n\n!ping", "\n!ping"),  # only one blank line belongs to the fallback
        # not a fallback: left alone
        ("!ping", "!ping"),
        ("", ""),
        ("> quote\nno blank line", "> quote\nno blank line"),
        ("> only a quote", "> only a quote"),
        ("> only\n> quotes", "> only\n> quotes"),
        (">no space\n\n!ping", ">no space\n\n!ping"),
        ("text\n> quote\n\n!ping", "text\n> quote\n\n!ping"),
        ("\n\n!ping", "\n\n!ping"),
        (" > x\n\n!ping", " > x\n\n!ping"),
    ],
)
def test_strip_reply_fallback(body: str, expected: str) -> None:
    assert strip_reply_fallback(body) == expected


@pytest.mark.parametrize(
    ("body", "prefix", "expected"),
    [
        ("!ping", "!", Invocation("ping", "")),
        ("!ping  a b", "!", Invocation("ping", "a b")),
        ("!PING", "!", Invocation("ping", "")),
        ("!Ping A B", "!", Invocation("ping", "A B")),
        ("!ping\ta", "!", Invocation("ping", "a")),
        ("!ping a  b  ", "!", Invocation("ping", "a  b  ")),
        ("!ping\nsecond line\nthird", "!", Invocation("ping", "second line\nthird")),
        ("!ping a\n  b", "!", Invocation("ping", "a\n  b")),
        ("!ping\n", "!", Invocation("ping", "")),
        ("!set-mode_2 x", "!", Invocation("set-mode_2", "x")),
        ("!42", "!", Invocation("42", "")),
        ("bot:ping x", "bot:", Invocation("ping", "x")),
        ("Bot:ping x", "bot:", Invocation("ping", "x")),  # prefix is case-insensitive
        ("!!ping", "!!", Invocation("ping", "")),
        ("> <@a:b> hi\n\n!ping x", "!", Invocation("ping", "x")),
        ("> <@a:b> !other\n\n!ping", "!", Invocation("ping", "")),
        ("! ping", "!", None),
        ("ping", "!", None),
        ("!", "!", None),
        ("!\nping", "!", None),
        ("", "!", None),
        (" !ping", "!", None),
        ("hello\n!ping", "!", None),
        ("!!!", "!", None),
        ("!?", "!", None),
        ("!-ping", "!", None),
        ("!_ping", "!", None),
        ("!pi.ng", "!", None),
        ('!ping"x"', "!", None),
        ("!pïng", "!", None),
        ("!\u212aick", "!", None),  # KELVIN SIGN lowercases to ASCII 'k'
        ("bot: ping", "bot:", None),
        ("bo", "bot:", None),
        ("?ping", "!", None),
        ("> <@a:b> !ping", "!", None),  # a quote with no blank line is not a fallback
    ],
)
def test_parse_invocation(body: str, prefix: str, expected: Invocation | None) -> None:
    assert parse_invocation(body, prefix) == expected


def test_parse_invocation_rejects_empty_prefix() -> None:
    with pytest.raises(ValueError):
        parse_invocation("!ping", "")


# --------------------------------------------------------------------------------------------
# Declaring commands


def test_from_function_remind() -> None:
    assert REMIND.name == "remind"
    assert REMIND.aliases == ("r", "remindme")
    assert REMIND.names == ("remind", "r", "remindme")
    assert REMIND.help == "Remind someone."
    assert REMIND.params == (
        Param("who", "user"),
        Param("minutes", "int"),
        Param("text", "rest"),
    )


def test_from_function_mode() -> None:
    assert MODE.help == "Switch the mode."
    assert MODE.params == (
        Param("value", "choice", choices=("on", "off")),
        Param("verbose", "bool", optional=True, default=False),
        Param("count", "int", optional=True, default=None),
    )


def test_from_function_kinds() -> None:
    kinds = {p.name: (p.kind, p.optional) for p in EVERYTHING.params}
    assert kinds == {
        "s": ("str", False),  # unannotated: str
        "i": ("int", False),
        "f": ("float", False),
        "b": ("bool", False),
        "u": ("user", False),
        "r": ("room", False),
        "c": ("choice", False),
        "o": ("str", True),
    }
    assert param(EVERYTHING, "c").choices == ("Red", "green")


def test_plain_function_bound_method_and_context_annotation() -> None:
    async def plain(context: int, n: int) -> None:  # the first parameter is the context
        pass

    async def unannotated(c, n: int):
        pass

    assert [p.name for p in CommandSpec.from_function(plain).params] == ["n"]
    assert [p.name for p in CommandSpec.from_function(unannotated).params] == ["n"]
    bound = CommandSpec.from_function(Handlers().remind)
    assert bound.params == REMIND.params


def test_self_is_only_skipped_by_name() -> None:
    def handler(this, ctx, n: int) -> None:
        pass

    spec = CommandSpec.from_function(handler)
    assert [p.name for p in spec.params] == ["ctx", "n"]


def test_name_help_and_alias_options() -> None:
    def Do_Thing(ctx) -> None:
        """
        First line after a blank one.

        Details.
        """

    spec = CommandSpec.from_function(Do_Thing)
    assert spec.name == "do_thing"
    assert spec.help == "First line after a blank one."
    spec = CommandSpec.from_function(Do_Thing, name="DO", aliases=["X", "x", "do", "y"], help="Explicit")
    assert spec.name == "do"
    assert spec.aliases == ("x", "y")  # lowercased, deduplicated, name removed
    assert spec.help == "Explicit"

    def nodoc(ctx) -> None:
        pass

    assert CommandSpec.from_function(nodoc).help == ""


@pytest.mark.parametrize("bad", ["", "bad name", "-x", "_x", "é", "a.b", "a!", "\u212a"])
def test_invalid_names_and_aliases(bad: str) -> None:
    def h(ctx) -> None:
        pass

    with pytest.raises(ValueError, match="must match"):
        CommandSpec.from_function(h, name=bad)
    with pytest.raises(ValueError, match="must match"):
        CommandSpec.from_function(h, aliases=[bad])
    with pytest.raises(ValueError, match="must match"):
        CommandSpec(name=bad)


def test_aliases_given_as_a_string() -> None:
    def h(ctx) -> None:
        pass

    with pytest.raises(TypeError, match="aliases must be a list"):
        CommandSpec.from_function(h, aliases="r")
    with pytest.raises(TypeError, match="aliases must be a list"):
        CommandSpec("h", aliases="r")  # type: ignore[arg-type]


def test_optional_forms() -> None:
    def h(
        ctx,
        a: int | None,
        b: Optional[UserId],  # noqa: UP045
        c: Union[RoomRef, None],  # noqa: UP007
        d: Optional[Literal["x", "y"]] = "x",  # noqa: UP045
        e: Annotated[float, "meta"] = 1.5,
        f: Annotated[int | None, "meta"] = 3,
        g: bool = True,
        h: Rest | None = None,
    ) -> None:
        pass

    spec = CommandSpec.from_function(h)
    assert spec.params == (
        Param("a", "int", optional=True),
        Param("b", "user", optional=True),
        Param("c", "room", optional=True),
        Param("d", "choice", optional=True, default="x", choices=("x", "y")),
        Param("e", "float", optional=True, default=1.5),
        Param("f", "int", optional=True, default=3),
        Param("g", "bool", optional=True, default=True),
        Param("h", "rest", optional=True),
    )
    assert spec.parse("") == dict(a=None, b=None, c=None, d="x", e=1.5, f=3, g=True, h=None)


def test_future_annotations_are_resolved() -> None:
    source = """
from __future__ import annotations
from typing import Literal, Optional
from bot.plugin.commands import Rest, UserId

class P:
    async def cmd(self, ctx: Context, who: UserId, n: Optional[int], mode: Literal["a"] = "a",
                  text: Rest | None = None):
        pass

class Context:
    pass
"""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<plugin>", "exec"), namespace)
    spec = CommandSpec.from_function(namespace["P"].cmd)
    assert [(p.name, p.kind, p.optional) for p in spec.params] == [
        ("who", "user", False),
        ("n", "int", True),
        ("mode", "choice", True),
        ("text", "rest", True),
    ]


class Custom:
    pass


@pytest.mark.parametrize(
    "annotation",
    [
        list[int],
        dict,
        bytes,
        Any,
        Custom,
        Union[int, str],  # noqa: UP007
        int | str | None,
        Literal[1, 2],
        Literal["a", 1],
        type(None),
        Optional[list[str]],  # noqa: UP045
    ],
)
def test_unsupported_annotation(annotation: Any) -> None:
    def handler(ctx, good: int, bad) -> None:
        pass

    handler.__annotations__["bad"] = annotation
    with pytest.raises(TypeError, match=r"handler\(\).*'bad'.*unsupported annotation"):
        CommandSpec.from_function(handler)


def test_literal_choices_differing_only_by_case() -> None:
    def handler(ctx, x: Literal["On", "on"]) -> None:
        pass

    with pytest.raises(TypeError, match=r"handler\(\).*'x'.*case"):
        CommandSpec.from_function(handler)


def test_required_after_optional() -> None:
    def fine(ctx, a: int, b: int = 1, c: str = "", d: UserId | None = None, e: Rest = NO_TEXT):
        pass

    assert [p.optional for p in CommandSpec.from_function(fine).params] == [
        False,
        True,
        True,
        True,
        True,
    ]

    def none_default(ctx, a: int = None, b: str = "x"):  # noqa: RUF013
        pass

    assert CommandSpec.from_function(none_default).params[0] == Param("a", "int", True, None)

    def bad(ctx, a: int | None, b: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"bad\(\).*required parameter 'b'.*optional .*'a'"):
        CommandSpec.from_function(bad)

    def bad_default(ctx, a: int = 1, b: UserId = ...) -> None:  # type: ignore[assignment]
        pass

    CommandSpec.from_function(bad_default)  # any default makes a parameter optional

    def bad_keyword(ctx, a: int = 1, *, b: str) -> None:
        pass

    with pytest.raises(TypeError, match=r"bad_keyword\(\).*required parameter 'b'"):
        CommandSpec.from_function(bad_keyword)

    def bad_rest(ctx, a: bool = False, *, text: Rest) -> None:
        pass

    with pytest.raises(TypeError, match=r"bad_rest\(\).*required parameter 'text'"):
        CommandSpec.from_function(bad_rest)


def test_rest_must_be_last() -> None:
    def handler(ctx, text: Rest, n: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"handler\(\).*'text'.*must be the last"):
        CommandSpec.from_function(handler)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def h(ctx, *args): pass", r"\*args.*Rest"),
        ("def h(ctx, **kw): pass", r"\*\*kw"),
        ("def h(ctx, a, /, b): pass", "positional-only"),
        ("def h(): pass", "context parameter"),
        ("def h(self): pass", "context parameter"),
        ("def h(*ctx): pass", "context parameter"),
        ("def h(ctx, x: 'Missing'): pass", "cannot resolve"),
    ],
)
def test_other_declaration_errors(source: str, match: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(TypeError, match=match) as info:
        CommandSpec.from_function(namespace["h"])
    assert "h()" in str(info.value)


def test_positional_only_self_and_context_are_fine() -> None:
    def h(self, ctx, /, n: int) -> None:
        pass

    assert [p.name for p in CommandSpec.from_function(h).params] == ["n"]


def test_not_callable() -> None:
    with pytest.raises(TypeError):
        CommandSpec.from_function(42)  # type: ignore[arg-type]


def test_direct_construction_is_validated() -> None:
    spec = CommandSpec(name="Hello", aliases=("HI", "hi"), params=(Param("x", "int"),))
    assert spec.name == "hello" and spec.aliases == ("hi",)
    with pytest.raises(TypeError, match="last"):
        CommandSpec("x", params=(Param("t", "rest"), Param("n", "int")))
    with pytest.raises(TypeError, match="after optional"):
        CommandSpec("x", params=(Param("a", optional=True), Param("b")))
    with pytest.raises(TypeError, match="twice"):
        CommandSpec("x", params=(Param("a"), Param("a")))
    with pytest.raises(ValueError):
        Param("a", "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Param("a", "choice")
    with pytest.raises(ValueError):
        Param("a", "str", choices=("x",))


def test_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        REMIND.name = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Usage strings


def test_usage() -> None:
    assert REMIND.usage() == "!remind <who: user> <minutes: int> <text...>"
    assert MODE.usage() == "!mode <value: on|off> [verbose: yes|no] [count: int]"
    assert MODE.usage("bot: ") == "bot: mode <value: on|off> [verbose: yes|no] [count: int]"
    assert PING.usage() == "!ping"
    assert SAY.usage() == "!say [text...]"
    assert EVERYTHING.usage(".") == (
        ".everything <s> <i: int> <f: number> <b: yes|no> <u: user> <r: room> <c: Red|green> [o]"
    )


def test_describe() -> None:
    assert REMIND.describe() == (
        "!remind <who: user> <minutes: int> <text...>\nRemind someone.\nAliases: !r, !remindme"
    )
    assert PING.describe("?") == "?ping"
    assert SAY.describe() == "!say [text...]\nSay something"


# --------------------------------------------------------------------------------------------
# Converting arguments


def convert(kind: str, raw: str, **kw: Any) -> Any:
    return Param("p", kind, **kw).convert(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("-3", -3), ("+4", 4), ("007", 7), ("9" * 1000, int("9" * 1000))],
)
def test_int(raw: str, value: int) -> None:
    assert convert("int", raw) == value


@pytest.mark.parametrize(
    "raw",
    ["", "1.5", "abc", "1e3", "0x10", "1_000", "٣", "１", " 1", "1 ", "-", "+", "--1", "9" * 5000],
)
def test_int_rejects(raw: str) -> None:
    with pytest.raises(ArgumentError, match=r"^p: expected an integer, got ") as info:
        convert("int", raw)
    assert info.value.param == "p" and info.value.value == raw


def test_int_error_message_exact() -> None:
    with pytest.raises(ArgumentError) as info:
        Param("count", "int").convert("abc")
    assert str(info.value) == "count: expected an integer, got 'abc'"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1.5", 1.5), ("-2", -2.0), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0), ("-1.5E-2", -0.015)],
)
def test_float(raw: str, value: float) -> None:
    assert convert("float", raw) == value


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "abc", "", "1_0", "."])
def test_float_rejects(raw: str) -> None:
    with pytest.raises(ArgumentError, match=r"^p: expected a number"):
        convert("float", raw)


def test_float_rejects_overflow() -> None:
    with pytest.raises(ArgumentError, match=r"^p: expected a finite number, got '1e999'"):
        convert("float", "1e999")


@pytest.mark.parametrize("raw", ["yes", "YES", "true", "True", "on", "On", "1"])
def test_bool_true(raw: str) -> None:
    assert convert("bool", raw) is True


@pytest.mark.parametrize("raw", ["no", "No", "false", "FALSE", "off", "oFF", "0"])
def test_bool_false(raw: str) -> None:
    assert convert("bool", raw) is False


@pytest.mark.parametrize("raw", ["", "maybe", "2", "y", "n", "yes!", "ｙｅｓ"])
def test_bool_rejects(raw: str) -> None:
    with pytest.raises(ArgumentError, match=r"^p: expected yes/no"):
        convert("bool", raw)


def test_user_and_room_conversion() -> None:
    u = convert("user", "@a:b.org")
    assert type(u) is UserId and u == "@a:b.org"
    r = convert("room", "#r:b.org")
    assert type(r) is RoomRef and r == "#r:b.org"
    with pytest.raises(ArgumentError, match=r"^p: expected a user ID like @name:server"):
        convert("user", "bob")
    with pytest.raises(ArgumentError, match=r"^p: expected a room ID or alias"):
        convert("room", "@a:b.org")


def test_choice_is_case_insensitive_and_canonical() -> None:
    p = Param("colour", "choice", choices=("Red", "green", "ß"))
    assert p.convert("red") == "Red"
    assert p.convert("RED") == "Red"
    assert p.convert("GREEN") == "green"
    assert p.convert("SS") == "ß"  # casefold
    with pytest.raises(ArgumentError) as info:
        p.convert("blue")
    assert str(info.value) == "colour: expected one of Red, green, ß, got 'blue'"


def test_str_and_rest_conversion() -> None:
    assert convert("str", "") == ""
    rest = convert("rest", "a  b")
    assert type(rest) is Rest and rest == "a  b"


# --------------------------------------------------------------------------------------------
# Parsing invocations


def test_parse_remind() -> None:
    values = REMIND.parse("@bob:example.org 15 buy  milk")
    assert values == {"who": "@bob:example.org", "minutes": 15, "text": "buy  milk"}
    assert type(values["who"]) is UserId
    assert type(values["text"]) is Rest
    assert list(values) == ["who", "minutes", "text"]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ("@b:c 1 hello", "hello"),
        ("@b:c 1    spaced   out   ", "spaced   out"),
        ("@b:c 1 don't \"forget\" the 'milk", "don't \"forget\" the 'milk"),
        ('@b:c 1 "quoted stays" quoted', '"quoted stays" quoted'),
        ("@b:c 1 back\\slash \\o/", "back\\slash \\o/"),
        ("@b:c 1 line one\n  line two\n\tthree", "line one\n  line two\n\tthree"),
        ("@b:c\n1\nnext line", "next line"),
        ('"@b:c" "1" x', "x"),
        ("  @b:c   1   \u00a0x\u00a0 ", "x"),
    ],
)
def test_rest_is_verbatim(args: str, text: str) -> None:
    assert REMIND.parse(args)["text"] == text


def test_rest_required_and_optional() -> None:
    with pytest.raises(UsageError) as info:
        REMIND.parse("@b:c 5   ")
    assert info.value.message == "missing argument <text...>"
    assert SAY.parse("") == {"text": ""}
    assert SAY.parse("  hi  there ") == {"text": "hi  there"}
    assert SAY.parse("it's") == {"text": "it's"}


def test_parse_mode() -> None:
    assert MODE.parse("on") == {"value": "on", "verbose": False, "count": None}
    assert MODE.parse("OFF yes") == {"value": "off", "verbose": True, "count": None}
    assert MODE.parse("on no -3") == {"value": "on", "verbose": False, "count": -3}
    assert MODE.parse('"on" \'true\' "+2"') == {"value": "on", "verbose": True, "count": 2}


def test_parse_everything() -> None:
    values = EVERYTHING.parse('"a b" 1 2.5 on @u:s.org #r:s.org RED ""')
    assert values == {
        "s": "a b",
        "i": 1,
        "f": 2.5,
        "b": True,
        "u": "@u:s.org",
        "r": "#r:s.org",
        "c": "Red",
        "o": "",
    }


@pytest.mark.parametrize(
    ("spec", "args", "message"),
    [
        (MODE, "", "missing argument <value: on|off>"),
        (MODE, "maybe", "value: expected one of on, off, got 'maybe'"),
        (MODE, "on sure", "verbose: expected yes/no (true/false, on/off, 1/0), got 'sure'"),
        (MODE, "on yes abc", "count: expected an integer, got 'abc'"),
        (MODE, "on yes 1.5", "count: expected an integer, got '1.5'"),
        (MODE, "on yes 1 2", "too many arguments: unexpected '2'"),
        (MODE, "on yes 1 'two words'", "too many arguments: unexpected 'two words'"),
        (MODE, "on 'yes", "unclosed ' quote at \"'yes\": close it, or write \\' for a literal '"),
        (MODE, 'on yes 1 "', 'unclosed " quote at \'"\': close it, or write \\" for a literal "'),
        (REMIND, "", "missing argument <who: user>"),
        (REMIND, "bob 5 x", "who: expected a user ID like @name:server.org (or a mention of a member), got 'bob'"),
        (REMIND, "@b:c", "missing argument <minutes: int>"),
        (REMIND, "@b:c soon x", "minutes: expected an integer, got 'soon'"),
        (REMIND, "@b:c 5", "missing argument <text...>"),
        (PING, "x", "!ping takes no arguments, got 'x'"),
        (PING, "'x", "unclosed ' quote at \"'x\": close it, or write \\' for a literal '"),
    ],
)
def test_parse_errors(spec: CommandSpec, args: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        spec.parse(args)
    err = info.value
    assert err.message == message
    assert err.usage == spec.usage()
    assert str(err) == f"{message}\nUsage: {spec.usage()}"


def test_parse_error_uses_the_given_prefix_and_chains_the_cause() -> None:
    with pytest.raises(UsageError) as info:
        MODE.parse("nope", prefix="bot: ")
    assert info.value.usage == "bot: mode <value: on|off> [verbose: yes|no] [count: int]"
    assert isinstance(info.value.__cause__, ArgumentError)


def test_parse_error_message_is_short_for_huge_input() -> None:
    with pytest.raises(UsageError) as info:
        MODE.parse("x" * MB)
    assert len(str(info.value)) < 300


def test_ping_takes_nothing() -> None:
    assert PING.parse("") == {}
    assert PING.parse("   \n ") == {}


def test_end_to_end() -> None:
    body = "> <@alice:example.org> what's up?\n\n!R @bob:example.org 10 don't  forget\nthe milk"
    inv = parse_invocation(body, "!")
    assert inv is not None and inv.name in REMIND.names
    assert REMIND.parse(inv.args) == {
        "who": "@bob:example.org",
        "minutes": 10,
        "text": "don't  forget\nthe milk",
    }


@pytest.mark.parametrize(
    "text",
    ['"' * MB, "'" * MB, "\\" * MB, " " * MB, "a " * (MB // 2), '"a" ' * (MB // 4), "9" * MB],
)
def test_huge_inputs(text: str) -> None:
    try:
        split_args(text)
    except ArgumentError:
        pass
    for spec in (REMIND, MODE, PING, SAY, EVERYTHING):
        try:
            spec.parse(text)
        except UsageError:
            pass
    parse_invocation("!x " + text, "!")
    strip_reply_fallback("> " + text + "\n\n!x")


# --------------------------------------------------------------------------------------------
# Properties

# Characters that matter to the tokeniser, mixed with arbitrary (surrogate-free) Unicode.
SPECIAL = list(" \t\n\r\u00a0\u3000\"'\\\x00@#!:>-_0123456789.eE+")
chars = st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=["Cs"]))
texts = st.text(chars)
whitespace = st.text(st.sampled_from(ALL_WHITESPACE), min_size=1, max_size=3)


def _huge(chunk: str) -> str:
    return (chunk * (MB // len(chunk) + 1))[:MB]


huge_texts = st.text(chars, min_size=1, max_size=40).map(_huge)
HUGE = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECS = [REMIND, MODE, PING, SAY, EVERYTHING]


def _check_split(text: str) -> None:
    try:
        result = split_args(text)
    except ArgumentError:
        return
    assert isinstance(result, list)
    assert all(type(v) is str for v in result)


def _check_parse(text: str) -> None:
    for spec in SPECS:
        try:
            result = spec.parse(text)
        except UsageError as err:
            assert err.usage == spec.usage()
            continue
        assert list(result) == [p.name for p in spec.params]


@given(texts)
def test_split_args_total(text: str) -> None:
    _check_split(text)


@HUGE
@given(huge_texts)
def test_split_args_total_huge(text: str) -> None:
    _check_split(text)


@given(texts)
def test_parse_total(text: str) -> None:
    _check_parse(text)


@HUGE
@given(huge_texts)
def test_parse_total_huge(text: str) -> None:
    _check_parse(text)


@given(st.lists(texts))
def test_quote_round_trip(values: list[str]) -> None:
    assert split_args(join_args(values)) == values


@given(st.lists(st.tuples(texts, whitespace)), whitespace)
def test_quote_round_trip_any_separator(pairs: list[tuple[str, str]], lead: str) -> None:
    text = lead + "".join(quote_arg(v) + sep for v, sep in pairs)
    assert split_args(text) == [v for v, _ in pairs]


@given(texts)
def test_quote_arg_single_token(value: str) -> None:
    (token,) = split_args_spans(quote_arg(value))
    assert token == Token(value, 0, len(quote_arg(value)))


@given(texts)
def test_spans_are_consistent(text: str) -> None:
    try:
        tokens = split_args_spans(text)
    except ArgumentError:
        return
    previous_end = 0
    for tok in tokens:
        assert previous_end < tok.start or (previous_end == tok.start == 0)
        assert tok.start < tok.end <= len(text)
        assert text[previous_end : tok.start].strip() == ""
        assert split_args(text[tok.start : tok.end]) == [tok.value]
        previous_end = tok.end
    assert text[previous_end:].strip() == ""


@given(st.lists(texts), texts)
def test_str_params_round_trip(values: list[str], rest: str) -> None:
    params = (*(Param(f"p{i}") for i in range(len(values))), Param("rest", "rest"))
    spec = CommandSpec("cmd", params=params)
    expected_rest = rest.strip()
    args = join_args(values) + " " + rest
    if not expected_rest:
        with pytest.raises(UsageError, match=r"missing argument <rest\.\.\.>"):
            spec.parse(args)
        return
    parsed = spec.parse(args)
    assert parsed == {**{f"p{i}": v for i, v in enumerate(values)}, "rest": expected_rest}


@given(st.integers())
def test_int_round_trip(n: int) -> None:
    assert MODE.parse(f"on no {n}")["count"] == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trip(x: float) -> None:
    assert Param("x", "float").convert(repr(x)) == x


@given(texts, st.sampled_from(["!", "bot:", "!!", "Ratchet "]))
def test_parse_invocation_total(body: str, prefix: str) -> None:
    inv = parse_invocation(body, prefix)
    if inv is None:
        return
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", inv.name)
    assert strip_reply_fallback(body).endswith(inv.args)
    assert inv.args == inv.args.lstrip()


@given(st.sampled_from(["ping", "set-mode", "a_1"]), texts, st.booleans())
def test_parse_invocation_finds_the_name(name: str, args: str, upper: bool) -> None:
    typed = name.upper() if upper else name
    inv = parse_invocation(f"!{typed} {args}", "!")
    assert inv == Invocation(name, args.lstrip())


@given(texts)
def test_strip_reply_fallback_returns_a_suffix(body: str) -> None:
    assert body.endswith(strip_reply_fallback(body))


@given(st.lists(st.text(chars).filter(lambda s: "\n" not in s), min_size=1), texts)
def test_strip_reply_fallback_strips_quoted_lines(quoted: list[str], reply: str) -> None:
    body = "\n".join("> " + line for line in quoted) + "\n\n" + reply
    assert strip_reply_fallback(body) == reply


@given(texts)
def test_identifier_checks_are_total(text: str) -> None:
    assert UserId.is_valid(text) in (True, False)
    assert RoomRef.is_valid(text) in (True, False)
    for sigil in "@!#":
        UserId.is_valid(sigil + text)
        RoomRef.is_valid(sigil + text)
