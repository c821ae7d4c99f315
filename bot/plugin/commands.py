"""Command parsing for plugin handlers: pure text in, typed Python values out (no I/O, no nio).

A plugin declares a command as an ``async`` method whose parameters, after ``self`` and the
context, are the command's arguments. Their annotations say how each argument is converted::

    @command("remind", aliases=["r"], help="Remind someone")
    async def remind(self, ctx: Context, who: UserId, minutes: int, text: Rest): ...

:meth:`CommandSpec.from_function` turns such a signature into a :class:`CommandSpec` once, at
declaration time, so mistakes (unsupported annotations, a required argument after an optional
one, ``Rest`` not last) fail when the plugin is loaded rather than when someone types the
command. At run time the dispatcher does::

    inv = parse_invocation(event.body, prefix)        # None: not a command
    spec = commands[inv.name]
    kwargs = spec.parse(inv.args)                      # UsageError: reply with str(err)
    await func(plugin, ctx, **kwargs)

Supported annotations: ``str`` (the default for unannotated parameters), ``int``, ``float``,
``bool``, :class:`UserId`, :class:`RoomRef`, :class:`Rest`, ``Literal["a", "b", ...]`` of strings,
and ``Optional[X]`` / ``X | None`` of any of these (``Annotated[X, ...]`` is read as ``X``).

Arguments are split like a shell does (see :func:`split_args`): whitespace separates, double and
single quotes group, and a backslash escapes a special character. A :class:`Rest` parameter is
the exception: it receives the rest of the line verbatim, so free text needs no quoting and an
apostrophe in it (``don't``) is not an unclosed quote.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Self

from bot.errors import ArgumentError, UsageError

__all__ = [
    "ArgumentError",
    "CommandSpec",
    "Invocation",
    "Param",
    "ParamKind",
    "Rest",
    "RoomRef",
    "Token",
    "UsageError",
    "UserId",
    "iter_tokens",
    "join_args",
    "parse_invocation",
    "quote_arg",
    "split_args",
    "split_args_spans",
    "strip_reply_fallback",
]

# --------------------------------------------------------------------------------------------
# Errors


def _show(value: str, limit: int = 60) -> str:
    """``repr`` of a user-supplied value, shortened so a 1 MB argument cannot flood a reply."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Matrix identifiers

# Server name grammar (spec, "Server names"): hostname [ ":" port ], where hostname is an IPv4
# literal, an IPv6 literal in brackets, or a DNS name of letters, digits, "-" and ".".
_SERVER_NAME = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::(?P<port>[0-9]{1,5}))?"
# User IDs: localparts of historical user IDs may use any printable ASCII except ":".
_USER_ID_RE = re.compile(rf"@(?P<local>[\x21-\x39\x3b-\x7e]+):(?P<server>{_SERVER_NAME})")
# Room IDs up to room version 11 and room aliases: the localpart is any text without ":" or NUL.
_ROOM_ID_RE = re.compile(rf"!(?P<local>[^:\x00]+):(?P<server>{_SERVER_NAME})", re.DOTALL)
_ALIAS_RE = re.compile(rf"#(?P<local>[^:\x00]+):(?P<server>{_SERVER_NAME})", re.DOTALL)
# Room version 12 room IDs: "!" and the unpadded URL-safe base64 of a SHA-256, no server name.
_ROOM_ID_V12_RE = re.compile(r"![A-Za-z0-9_\-]{43}")
_MAX_ID_BYTES = 255


def _id_match(pattern: re.Pattern[str], value: str) -> re.Match[str] | None:
    """Full match of a Matrix identifier, with the spec's 255-byte and port-range limits."""
    if len(value) > _MAX_ID_BYTES:
        return None
    try:
        if len(value.encode("utf-8")) > _MAX_ID_BYTES:
            return None
    except UnicodeEncodeError:  # lone surrogates
        return None
    m = pattern.fullmatch(value)
    if m is None:
        return None
    port = m.groupdict().get("port")
    if port is not None and int(port) > 65535:
        return None
    return m


class UserId(str):
    """A Matrix user ID, ``@localpart:server.name[:port]``; constructing one validates it.

    Validation follows the spec's grammar loosely but correctly: historical localparts (any
    printable ASCII except ``:``, including upper case) are accepted, the server name may be a
    DNS name, an IPv4 address or a bracketed IPv6 address with an optional port, and the whole
    ID is at most 255 bytes.
    """

    def __new__(cls, value: str) -> Self:
        """Validate ``value`` and wrap it; raises :class:`ValueError` if it is not a user ID."""
        if not isinstance(value, str) or _id_match(_USER_ID_RE, value) is None:
            raise ValueError(f"not a Matrix user ID: {_show(str(value))}")
        return super().__new__(cls, value)

    @classmethod
    def is_valid(cls, value: str) -> bool:
        """Whether ``value`` is a syntactically valid user ID."""
        return isinstance(value, str) and _id_match(_USER_ID_RE, value) is not None

    @property
    def localpart(self) -> str:
        """The part between ``@`` and the first ``:``."""
        return self[1:].partition(":")[0]

    @property
    def server_name(self) -> str:
        """The part after the first ``:``, port included."""
        return self.partition(":")[2]


class RoomRef(str):
    """A room ID (``!opaque:server``) or room alias (``#name:server``); constructing validates.

    Room IDs of room version 12 and later, which have no server name (``!`` followed by 43
    characters of URL-safe base64), are accepted too. Localparts of room IDs and aliases may be
    any text without ``:`` or NUL; the whole reference is at most 255 bytes.
    """

    def __new__(cls, value: str) -> Self:
        """Validate ``value`` and wrap it; raises :class:`ValueError` if it is neither form."""
        if not cls.is_valid(value):
            raise ValueError(f"not a Matrix room ID or alias: {_show(str(value))}")
        return super().__new__(cls, value)

    @classmethod
    def is_valid(cls, value: str) -> bool:
        """Whether ``value`` is a syntactically valid room ID or room alias."""
        if not isinstance(value, str) or not value:
            return False
        if value[0] == "#":
            return _id_match(_ALIAS_RE, value) is not None
        return _id_match(_ROOM_ID_RE, value) is not None or _id_match(_ROOM_ID_V12_RE, value) is not None

    @property
    def is_alias(self) -> bool:
        """True for ``#alias:server``."""
        return self.startswith("#")

    @property
    def is_room_id(self) -> bool:
        """True for ``!id:server`` (and server-less room version 12 IDs)."""
        return self.startswith("!")

    @property
    def server_name(self) -> str | None:
        """The server name (port included), or None for a room version 12 room ID."""
        _, sep, server = self.partition(":")
        return server if sep else None


class Rest(str):
    """Marker annotation: the rest of the line, verbatim, after the preceding arguments.

    Quotes and backslashes in it are not interpreted and inner spacing (newlines included) is
    kept; only leading and trailing whitespace is stripped. It must be the last parameter.
    """


# --------------------------------------------------------------------------------------------
# Tokenising

_WS_RE = re.compile(r"\s+")
_PLAIN_RE = re.compile(r"[^\s\"'\\]+")
# Body of a double-quoted string: anything but '"' and '\', or a backslash and any character.
_DQ_BODY_RE = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_DQ_ESCAPE_RE = re.compile(r'\\(["\\])')
_NEEDS_QUOTING_RE = re.compile(r"[\s\"'\\]")


class Token(NamedTuple):
    """One argument: its value, and where its source text is in the input (``text[start:end]``)."""

    value: str
    start: int
    end: int


def iter_tokens(text: str) -> Iterator[Token]:
    """Yield the arguments of ``text`` one at a time, lazily (see :func:`split_args`).

    Lazy so that a caller can stop early: an unclosed quote after the last token it asks for
    does not raise.
    """
    n = len(text)
    pos = 0
    while True:
        m = _WS_RE.match(text, pos)
        if m:
            pos = m.end()
        if pos >= n:
            return
        start = pos
        parts: list[str] = []
        while pos < n:
            c = text[pos]
            if c == '"':
                body = _DQ_BODY_RE.match(text, pos + 1)
                assert body is not None  # the pattern also matches the empty string
                end = body.end()
                if end >= n:
                    raise _unclosed(text, pos)
                quoted = text[pos + 1 : end]
                parts.append(_DQ_ESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted)
                pos = end + 1
            elif c == "'":
                end = text.find("'", pos + 1)
                if end < 0:
                    raise _unclosed(text, pos)
                parts.append(text[pos + 1 : end])
                pos = end + 1
            elif c == "\\":
                if pos + 1 < n and (text[pos + 1] in "\"'\\" or text[pos + 1].isspace()):
                    parts.append(text[pos + 1])
                    pos += 2
                else:
                    parts.append("\\")
                    pos += 1
            elif c.isspace():
                break
            else:
                m = _PLAIN_RE.match(text, pos)
                assert m is not None
                parts.append(m.group())
                pos = m.end()
        yield Token("".join(parts), start, pos)


def _unclosed(text: str, pos: int) -> ArgumentError:
    q = text[pos]
    return ArgumentError(
        f"unclosed {q} quote at {_show(text[pos : pos + 20], 20)}: close it, or write \\{q} for a literal {q}",
        value=text[pos:],
    )


def split_args(text: str) -> list[str]:
    """Split ``text`` into arguments, like a shell.

    - Runs of whitespace (anything ``str.isspace`` accepts, newlines included) separate
      arguments; leading and trailing whitespace is ignored.
    - ``"double quotes"`` group; inside them ``\\"`` and ``\\\\`` are a literal ``"`` and ``\\``,
      and any other backslash is kept as is.
    - ``'single quotes'`` group; nothing inside them is special.
    - Outside quotes, a backslash before whitespace, a quote or a backslash makes it literal;
      before anything else (``\\o/``, ``C:\\dir``) the backslash is kept as is.
    - Quoted and unquoted pieces next to each other form one argument (``a"b c"`` is ``ab c``),
      and ``""`` is an empty argument.

    An unclosed quote raises :class:`ArgumentError`. :func:`quote_arg` is the inverse.
    """
    return [tok.value for tok in iter_tokens(text)]


def split_args_spans(text: str) -> list[Token]:
    """Like :func:`split_args`, with each argument's ``start``/``end`` offsets in ``text``."""
    return list(iter_tokens(text))


def quote_arg(value: str) -> str:
    """Quote ``value`` so that :func:`split_args` reads it back as exactly one argument."""
    if value and _NEEDS_QUOTING_RE.search(value) is None:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def join_args(values: Iterable[str]) -> str:
    """Quote each value and join them with spaces; ``split_args(join_args(xs)) == list(xs)``."""
    return " ".join(quote_arg(v) for v in values)


# --------------------------------------------------------------------------------------------
# Finding the command in a message

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_\-]*")


@dataclass(frozen=True)
class Invocation:
    """A message that invokes a command: the command name (lower case) and its raw arguments."""

    #: The command name as typed, lowercased (it matches ``[a-z0-9][a-z0-9_-]*``).
    name: str
    #: Everything after the name, leading whitespace stripped; it includes any further lines.
    args: str


def strip_reply_fallback(body: str) -> str:
    """Remove a legacy rich-reply fallback from the start of a message body.

    Clients used to start the ``body`` of a reply with the quoted original, each line prefixed
    with ``> `` (or just ``>`` for an empty line), then a blank line, then the reply. If the body
    starts that way, the quoted lines and the blank line are removed; otherwise (a quote not
    followed by a blank line, or no quote) the body is returned unchanged.
    """
    n = len(body)
    pos = 0
    quoted = False
    while pos < n:
        nl = body.find("\n", pos)
        end = n if nl < 0 else nl
        line = body[pos:end]
        if line.startswith("> ") or line.rstrip("\r") == ">":
            quoted = True
        elif quoted and not line.strip():
            return body[end + 1 :] if nl >= 0 else ""
        else:
            return body
        if nl < 0:
            break
        pos = nl + 1
    return body


def parse_invocation(body: str, prefix: str) -> Invocation | None:
    """Find the command invoked by a message ``body``, or None if it does not invoke one.

    The reply fallback is stripped first (:func:`strip_reply_fallback`). Then the first line
    must start with ``prefix`` (compared case-insensitively) immediately followed by the command
    name, which ends at whitespace and must match ``[a-z0-9][a-z0-9_-]*`` once lowercased (ASCII
    only). ``"!ping"``, ``"!PING a b"`` invoke ``ping``; ``"! ping"``, ``"ping"``, ``"!"``,
    ``"!!!"`` and ``" !ping"`` invoke nothing. Only the first line chooses the command; the
    arguments run to the end of the body.
    """
    if not prefix:
        raise ValueError("the command prefix must not be empty")
    body = strip_reply_fallback(body)
    p = len(prefix)
    if body[:p].lower() != prefix.lower() or len(body[:p]) != p:
        return None
    m = _WS_RE.search(body, p)
    end = m.start() if m else len(body)
    raw_name = body[p:end]
    if not raw_name.isascii():
        return None
    name = raw_name.lower()
    if not _NAME_RE.fullmatch(name):
        return None
    return Invocation(name=name, args=body[end:].lstrip())


# --------------------------------------------------------------------------------------------
# Converters

ParamKind = Literal["str", "int", "float", "bool", "user", "room", "choice", "rest"]

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_MAX_NUMBER_CHARS = 1000


def _to_int(name: str, raw: str) -> int:
    if len(raw) <= _MAX_NUMBER_CHARS and _INT_RE.fullmatch(raw):
        try:
            return int(raw)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            pass
    raise ArgumentError(f"{name}: expected an integer, got {_show(raw)}", param=name, value=raw)


def _to_float(name: str, raw: str) -> float:
    if len(raw) <= _MAX_NUMBER_CHARS and _FLOAT_RE.fullmatch(raw):
        value = float(raw)
        if math.isfinite(value):
            return value
        raise ArgumentError(f"{name}: expected a finite number, got {_show(raw)}", param=name, value=raw)
    raise ArgumentError(f"{name}: expected a number, got {_show(raw)}", param=name, value=raw)


def _to_bool(name: str, raw: str) -> bool:
    word = raw.lower() if raw.isascii() else ""
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ArgumentError(
        f"{name}: expected yes/no (true/false, on/off, 1/0), got {_show(raw)}",
        param=name,
        value=raw,
    )


#: While :meth:`CommandSpec.parse` runs: turns a display name or ``@localpart`` into a member's user id.
_USER_RESOLVER: ContextVar[Callable[[str], str | None] | None] = ContextVar("ratchet_user_resolver", default=None)


def _to_user(name: str, raw: str) -> UserId:
    if UserId.is_valid(raw):
        return UserId(raw)
    resolve = _USER_RESOLVER.get()
    if resolve is not None:
        try:
            found = resolve(raw)
        except ValueError as exc:  # more than one member has that name
            raise ArgumentError(f"{name}: {exc}", param=name, value=raw) from None
        if found is not None and UserId.is_valid(found):
            return UserId(found)
    raise ArgumentError(
        f"{name}: expected a user ID like @name:server.org (or a mention of a member), got {_show(raw)}",
        param=name,
        value=raw,
    )


def _to_room(name: str, raw: str) -> RoomRef:
    if RoomRef.is_valid(raw):
        return RoomRef(raw)
    raise ArgumentError(
        f"{name}: expected a room ID or alias like !id:server.org or #room:server.org, got {_show(raw)}",
        param=name,
        value=raw,
    )


_CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    "str": lambda name, raw: raw,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "user": _to_user,
    "room": _to_room,
    "rest": lambda name, raw: Rest(raw),
}

_SIMPLE_KINDS: dict[Any, ParamKind] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    UserId: "user",
    RoomRef: "room",
    Rest: "rest",
}

_LABELS: dict[str, str] = {
    "int": "int",
    "float": "number",
    "bool": "yes|no",
    "user": "user",
    "room": "room",
}


@dataclass(frozen=True)
class Param:
    """One argument of a command: how to convert it and whether it may be left out."""

    #: The Python parameter name (the key in :meth:`CommandSpec.parse`'s result).
    name: str
    #: How the raw text is converted: ``str``, ``int``, ``float``, ``bool``, ``user``
    #: (:class:`UserId`), ``room`` (:class:`RoomRef`), ``choice`` (a ``Literal``) or ``rest``.
    kind: ParamKind = "str"
    #: Whether the argument may be left out; then :attr:`default` is used.
    optional: bool = False
    #: The value used when an optional argument is left out.
    default: Any = None
    #: For ``choice``: the allowed values, as written in the ``Literal``.
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check that :attr:`kind` is known and that only ``choice`` has choices."""
        if self.kind != "choice" and self.kind not in _CONVERTERS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError("choices are required for kind 'choice', and only for it")

    @property
    def is_rest(self) -> bool:
        """Whether this parameter takes the rest of the line."""
        return self.kind == "rest"

    def convert(self, raw: str) -> Any:
        """Convert one raw argument; raises :class:`ArgumentError` naming this parameter."""
        if self.kind == "choice":
            folded = raw.casefold()
            for choice in self.choices:
                if choice.casefold() == folded:
                    return choice
            raise ArgumentError(
                f"{self.name}: expected one of {', '.join(self.choices)}, got {_show(raw)}",
                param=self.name,
                value=raw,
            )
        return _CONVERTERS[self.kind](self.name, raw)

    def usage(self) -> str:
        """This parameter in a usage line: ``<who: user>``, ``[count: int]``, ``<text...>``."""
        if self.kind == "rest":
            inner = f"{self.name}..."
        elif self.kind == "choice":
            inner = f"{self.name}: {'|'.join(self.choices)}"
        elif self.kind == "str":
            inner = self.name
        else:
            inner = f"{self.name}: {_LABELS[self.kind]}"
        return f"[{inner}]" if self.optional else f"<{inner}>"


def _check_params(params: tuple[Param, ...], where: str) -> None:
    seen_optional: str | None = None
    names: set[str] = set()
    for i, p in enumerate(params):
        if p.name in names:
            raise TypeError(f"{where}: parameter {p.name!r} appears twice")
        names.add(p.name)
        if p.is_rest and i != len(params) - 1:
            raise TypeError(
                f"{where}: parameter {p.name!r} is Rest (the rest of the line) so it must be the last parameter"
            )
        if p.optional:
            seen_optional = seen_optional or p.name
        elif seen_optional is not None:
            raise TypeError(
                f"{where}: required parameter {p.name!r} comes after optional parameter "
                f"{seen_optional!r}; give it a default or move it before"
            )


def _check_name(name: Any, what: str, where: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{where}: {what} must be a string, got {type(name).__name__}")
    lowered = name.lower()
    if not name.isascii() or not _NAME_RE.fullmatch(lowered):
        raise ValueError(f"{where}: {what} {name!r} must match [a-z0-9][a-z0-9_-]*")
    return lowered


def _param_from_annotation(where: str, param: inspect.Parameter, annotation: Any) -> Param:
    has_default = param.default is not inspect.Parameter.empty
    optional = has_default
    default = param.default if has_default else None

    def unsupported(detail: str = "") -> TypeError:
        shown = getattr(annotation, "__name__", None) or repr(annotation)
        return TypeError(
            f"{where}: parameter {param.name!r} has unsupported annotation {shown}"
            f"{detail}; use str, int, float, bool, UserId, RoomRef, Rest, Literal['a', ...] "
            f"or Optional[...] of one of these"
        )

    ann = annotation
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(members) != 1:
            raise unsupported(" (a union other than Optional[X])")
        optional = True
        ann = members[0]
        while typing.get_origin(ann) is typing.Annotated:
            ann = typing.get_args(ann)[0]
        origin = typing.get_origin(ann)
    if origin is Literal:
        choices = typing.get_args(ann)
        if not choices or not all(isinstance(c, str) for c in choices):
            raise unsupported(" (Literal values must be strings)")
        folded = [c.casefold() for c in choices]
        if len(set(folded)) != len(folded):
            raise TypeError(
                f"{where}: parameter {param.name!r}: Literal choices must differ "
                f"other than by case, got {list(choices)!r}"
            )
        return Param(param.name, "choice", optional, default, tuple(choices))
    kind = _SIMPLE_KINDS.get(ann) if isinstance(ann, type) else None
    if kind is None:
        raise unsupported()
    return Param(param.name, kind, optional, default)


@dataclass(frozen=True)
class CommandSpec:
    """What a command is called and which arguments it takes; parses and describes invocations.

    Build it with :meth:`from_function`. ``name`` and ``aliases`` are lowercased and must match
    ``[a-z0-9][a-z0-9_-]*``.
    """

    #: The command name, lower case.
    name: str
    #: Other names the command answers to, lower case, without the name itself or duplicates.
    aliases: tuple[str, ...] = ()
    #: One-line description.
    help: str = ""
    #: The arguments, in order.
    params: tuple[Param, ...] = ()

    def __post_init__(self) -> None:
        """Normalise and validate the name, aliases and parameter order."""
        where = f"command {self.name!r}"
        name = _check_name(self.name, "command name", where)
        if isinstance(self.aliases, str):
            raise TypeError(f"{where}: aliases must be a list of strings, not a string")
        aliases: list[str] = []
        for alias in self.aliases:
            a = _check_name(alias, "alias", where)
            if a != name and a not in aliases:
                aliases.append(a)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "aliases", tuple(aliases))
        object.__setattr__(self, "params", tuple(self.params))
        _check_params(self.params, where)

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by the aliases."""
        return (self.name, *self.aliases)

    @classmethod
    def from_function(
        cls,
        func: Callable[..., Any],
        name: str | None = None,
        aliases: Iterable[str] = (),
        help: str | None = None,
    ) -> CommandSpec:
        """Read a command's arguments from the signature of its handler.

        The first parameter is skipped if it is named ``self``. The next one is the context
        and is always skipped, whatever its name or annotation (even none). Every further
        parameter is an argument, converted according to its annotation (see the module
        docstring); one with a default, or annotated ``Optional[X]`` / ``X | None`` (default
        None), is optional. ``*args``, ``**kwargs`` and positional-only arguments are not
        allowed, since the handler is called as ``func(self, ctx, **spec.parse(args))``.

        ``name`` defaults to the function's name, ``help`` to the first line of its docstring.
        Raises :class:`TypeError` naming the function and parameter for an unsupported
        annotation, a required parameter after an optional one, or ``Rest`` not last, and
        :class:`ValueError` for an invalid name or alias.
        """
        if not callable(func):
            raise TypeError(f"a command handler must be callable, got {func!r}")
        where = f"{getattr(func, '__qualname__', None) or repr(func)}()"
        if isinstance(aliases, str):
            raise TypeError(f"{where}: aliases must be a list of strings, not a string")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{where}: cannot read its signature: {err}") from err
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as err:
            raise TypeError(f"{where}: cannot resolve its annotations: {err}") from err

        parameters = list(signature.parameters.values())
        if parameters and parameters[0].name == "self":
            parameters = parameters[1:]
        if not parameters:
            raise TypeError(f"{where}: a command handler must take a context parameter")
        context, *arguments = parameters
        if context.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{where}: the context parameter must be a plain parameter")

        params: list[Param] = []
        for p in arguments:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{where}: *{p.name} is not supported; annotate with Rest")
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                raise TypeError(f"{where}: **{p.name} is not supported")
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"{where}: parameter {p.name!r} must not be positional-only")
            params.append(_param_from_annotation(where, p, hints.get(p.name, str)))
        _check_params(tuple(params), where)

        if name is None:
            name = getattr(func, "__name__", None)
            if not isinstance(name, str):
                raise TypeError(f"{where}: give the command a name")
        if help is None:
            doc = inspect.getdoc(func) or ""
            help = next((line.strip() for line in doc.splitlines() if line.strip()), "")
        return cls(
            name=_check_name(name, "command name", where),
            aliases=tuple(_check_name(a, "alias", where) for a in aliases),
            help=help,
            params=tuple(params),
        )

    def usage(self, prefix: str = "!") -> str:
        """The usage line, e.g. ``!remind <who: user> <minutes: int> <text...>``.

        Required arguments are in ``<>``, optional ones in ``[]``.
        """
        return " ".join([f"{prefix}{self.name}", *(p.usage() for p in self.params)])

    def describe(self, prefix: str = "!") -> str:
        """Usage line, help text and aliases, one per line (help and aliases only if any)."""
        lines = [self.usage(prefix)]
        if self.help:
            lines.append(self.help)
        if self.aliases:
            lines.append("Aliases: " + ", ".join(f"{prefix}{a}" for a in self.aliases))
        return "\n".join(lines)

    def parse(
        self, args: str, prefix: str = "!", *, resolve_user: Callable[[str], str | None] | None = None
    ) -> dict[str, Any]:
        """Convert the raw arguments of an invocation into ``{parameter name: value}``.

        ``resolve_user`` turns what is not a user id (a display name, ``@localpart``) into one for :class:`UserId`
        arguments (the router passes the room's members); it may raise ValueError for an ambiguous name.

        Each argument is split off (see :func:`split_args`) and converted in order; left-out
        optional arguments get their defaults. A :class:`Rest` parameter gets the remaining raw
        text, stripped. Raises :class:`UsageError` (carrying :meth:`usage` with ``prefix``) for
        a missing or extra argument, a value that does not convert, or an unclosed quote.
        """
        token = _USER_RESOLVER.set(resolve_user)
        try:
            return self._parse(args, prefix)
        finally:
            _USER_RESOLVER.reset(token)

    def _parse(self, args: str, prefix: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        tokens = iter_tokens(args)
        consumed = 0
        try:
            for p in self.params:
                if p.is_rest:
                    rest = args[consumed:].strip()
                    if rest:
                        values[p.name] = p.convert(rest)
                    elif p.optional:
                        values[p.name] = p.default
                    else:
                        raise UsageError(f"missing argument {p.usage()}", self.usage(prefix))
                    return values
                tok = next(tokens, None)
                if tok is None:
                    if not p.optional:
                        raise UsageError(f"missing argument {p.usage()}", self.usage(prefix))
                    values[p.name] = p.default
                    continue
                consumed = tok.end
                values[p.name] = p.convert(tok.value)
            extra = next(tokens, None)
        except ArgumentError as err:
            raise UsageError(str(err), self.usage(prefix)) from err
        if extra is not None:
            if not self.params:
                message = f"{prefix}{self.name} takes no arguments, got {_show(extra.value)}"
            else:
                message = f"too many arguments: unexpected {_show(extra.value)}"
            raise UsageError(message, self.usage(prefix))
        return values
