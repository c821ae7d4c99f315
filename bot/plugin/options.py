"""Typed plugin options: checking a plugin's ``plugins: {name: {...}}`` block against the schema it declares.

A plugin declares its options as a dataclass nested in its class, conventionally named ``Config``::

    from dataclasses import dataclass, field
    from typing import Literal

    class Reminders(Plugin):
        @dataclass(frozen=True)
        class Config:
            api_key: str                                   # required: no default
            greeting: str = "hi"
            max_items: int = 10
            interval: float = 30.0
            enabled: bool = True
            mode: Literal["fast", "slow"] = "fast"
            rooms_notify: list[str] = field(default_factory=list)
            limits: dict[str, int] = field(default_factory=dict)
            target: str | None = None

        async def start(self) -> None:
            self.log.info("greeting is %s", self.config.greeting)   # self.config is a Reminders.Config

Supported option types: ``str``, ``int`` (not ``bool``, not floats), ``float`` (ints accepted; not ``bool``, nan or
infinity), ``bool`` (real YAML booleans only), ``Literal[...]``, ``X | None`` / ``Optional[X]``, ``list[X]``,
``tuple[X, ...]`` and fixed ``tuple[X, Y]`` (written as YAML lists), ``dict[str, X]``, nested dataclasses (written as
YAML mappings, checked recursively) and ``Any`` (taken as is). ``from __future__ import annotations`` is fine. A field
of any other type is a bug in the plugin and raises :class:`TypeError` naming the class and field. A ``ValueError``
raised by the dataclass's ``__post_init__`` becomes a :class:`PluginConfigError` with its message (so a plugin can add
its own checks: keep secrets out of such messages); so does a ``TypeError`` raised there.

A plugin without a schema receives its options as a read-only mapping.

Every problem with the options is a :class:`PluginConfigError` whose message is one line naming the plugin and the
key::

    plugins.reminders.max_items: expected an integer, got 'ten'
    plugins.reminders: missing required option 'api_key'
    plugins.reminders: unknown option 'greting' (did you mean 'greeting'?)

The value of an option whose name contains ``key``, ``token``, ``secret`` or ``password`` is never shown.

The ``rooms`` option is the framework's, not the plugin's: ``rooms: {allow: [...], deny: [...]}`` limits the rooms the
plugin hears (see :class:`RoomFilter`); :func:`split_options` takes it out before the rest is checked against the
schema. A schema may not declare a field named ``rooms``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.config import describe_value as _describe
from bot.errors import PluginConfigError, plugin_option_path

__all__ = [
    "RESERVED_OPTIONS",
    "PluginConfigError",
    "RoomFilter",
    "find_schema",
    "parse_plugin_options",
    "split_options",
    "validate_options",
]

#: Option names handled by the framework for every plugin (never passed to the plugin's schema).
RESERVED_OPTIONS = frozenset({"rooms"})

#: An option whose name (or the name of a mapping entry holding it) contains one of these is a secret.
_SECRET_WORDS = ("key", "token", "secret", "password")


# --------------------------------------------------------------------------------------------------
# The error type


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, name: str) -> str:
    """``path.name``, or ``path['odd name']`` when the name would not read well after a dot."""
    if _PLAIN_KEY.fullmatch(name):
        return f"{path}.{name}" if path else name
    return f"{path}[{_short(name)}]"


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


@dataclass(frozen=True)
class _Where:
    """Where a value being checked lives: its plugin, its path, and whether it must stay hidden."""

    plugin: str
    path: str = ""
    secret: bool = False
    #: The value may also be null (an ``X | None`` field): "expected X or null".
    nullable: bool = False
    #: ``path`` as option names and list indexes (for finding its line in the config file).
    parts: tuple[str | int, ...] = ()

    def key(self, name: str) -> _Where:
        return _Where(
            self.plugin, _join(self.path, name), self.secret or _is_secret_name(name), parts=(*self.parts, name)
        )

    def index(self, i: int) -> _Where:
        return _Where(self.plugin, f"{self.path}[{i}]", self.secret, parts=(*self.parts, i))

    def error(self, message: str, *, name: str | None = None) -> PluginConfigError:
        """``plugins.PLUGIN.PATH: message``, about this value, or about its option ``name`` (a missing or unknown
        one) if given."""
        return PluginConfigError(
            f"{plugin_option_path(self.plugin, self.path)}: {message}",
            plugin=self.plugin,
            key=(self.path or None) if name is None else _join(self.path, name),
            parts=self.parts if name is None else (*self.parts, name),
        )

    def expected(self, what: str, value: Any) -> PluginConfigError:
        what = f"{what} or null" if self.nullable else what
        return self.error(f"expected {what}, got {_got(value, self.secret)}")


def _short(value: str, limit: int = 60) -> str:
    """``repr`` of a string, shortened."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _got(value: Any, secret: bool) -> str:
    """The offending value for an error message: a short rendering of a scalar, or just its kind."""
    if secret:
        return _describe(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _short(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else "a large integer"
    if isinstance(value, float):
        return repr(value)
    return _describe(value)


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------------
# Converters: built once per schema from the type annotations, then applied to the option values


class _Converter:
    """Checks one value against a type and builds the value the plugin receives."""

    #: For "expected X, got Y" messages.
    what: str = "a value"

    def __call__(self, value: Any, where: _Where) -> Any:
        raise NotImplementedError


class _AnyConv(_Converter):
    what = "a value"

    def __call__(self, value: Any, where: _Where) -> Any:
        return copy.deepcopy(value)


class _StrConv(_Converter):
    what = "a string"

    def __call__(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, str):
            raise where.expected(self.what, value)
        return value


class _IntConv(_Converter):
    what = "an integer"

    def __call__(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise where.expected(self.what, value)
        return int(value)


class _FloatConv(_Converter):
    what = "a number"

    def __call__(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise where.expected(self.what, value)
        try:
            number = float(value)
        except OverflowError:
            raise where.expected("a finite number", value) from None
        if not math.isfinite(number):
            raise where.expected("a finite number", value)
        return number


class _BoolConv(_Converter):
    what = "true or false"

    def __call__(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, bool):
            raise where.expected(self.what, value)
        return value


class _LiteralConv(_Converter):
    def __init__(self, choices: tuple[Any, ...]) -> None:
        self.choices = choices
        shown = ", ".join("null" if c is None else _got(c, False) for c in choices)
        self.what = f"one of {shown}" if len(choices) > 1 else shown

    def __call__(self, value: Any, where: _Where) -> Any:
        for choice in self.choices:
            if type(choice) is type(value) and choice == value:
                return choice
        raise where.expected(self.what, value)


class _OptionalConv(_Converter):
    def __init__(self, inner: _Converter) -> None:
        self.inner = inner
        self.what = f"{inner.what} or null"

    def __call__(self, value: Any, where: _Where) -> Any:
        if value is None:
            return None
        return self.inner(value, dataclasses.replace(where, nullable=True))


class _ListConv(_Converter):
    what = "a list"

    def __init__(self, item: _Converter, *, as_tuple: bool) -> None:
        self.item = item
        self.as_tuple = as_tuple

    def __call__(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, list | tuple):
            raise where.expected(self.what, value)
        items = [self.item(v, where.index(i)) for i, v in enumerate(value)]
        return tuple(items) if self.as_tuple else items


class _FixedTupleConv(_Converter):
    def __init__(self, items: tuple[_Converter, ...]) -> None:
        self.items = items
        self.what = f"a list of {len(items)} item{'' if len(items) == 1 else 's'}"

    def __call__(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, list | tuple):
            raise where.expected(self.what, value)
        if len(value) != len(self.items):
            raise where.error(f"expected {self.what}, got {len(value)}")
        return tuple(conv(v, where.index(i)) for i, (conv, v) in enumerate(zip(self.items, value, strict=True)))


def _check_mapping(value: Any, where: _Where, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise where.expected(what, value)
    for name in value:
        if not isinstance(name, str):
            raise where.error(f"option names must be strings, got {_got(name, False)}")
    return value


class _DictConv(_Converter):
    what = "a mapping"

    def __init__(self, item: _Converter) -> None:
        self.item = item

    def __call__(self, value: Any, where: _Where) -> Any:
        mapping = _check_mapping(value, where, self.what)
        return {name: self.item(v, where.key(name)) for name, v in mapping.items()}


class _DataclassConv(_Converter):
    """A nested (or the top-level) dataclass: a mapping of its fields."""

    what = "a mapping"

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: dict[str, _Converter] = {}
        self.required: list[str] = []

    def __call__(self, value: Any, where: _Where) -> Any:
        mapping = _check_mapping(value, where, "a mapping of options" if not where.path else self.what)
        for name in mapping:
            if name not in self.fields:
                raise where.error(f"unknown option {_short(name)}{_suggest(name, self.fields)}", name=name)
        missing = [name for name in self.required if name not in mapping]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            names = ", ".join(repr(n) for n in missing)
            raise where.error(f"missing required option{plural} {names}", name=missing[0])
        kwargs = {name: self.fields[name](v, where.key(name)) for name, v in mapping.items()}
        try:
            return self.cls(**kwargs)
        except (ValueError, TypeError) as exc:
            # A check of the plugin's own (__post_init__; the options' names and types are checked above, so a
            # TypeError comes from there too); its message is the plugin author's.
            raise where.error(str(exc) or "invalid options") from None


class _Compiler:
    """Builds the converter tree of a schema; an unsupported annotation is a TypeError (a bug in the plugin)."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.done: dict[type, _DataclassConv] = {}

    def bug(self, where: str, message: str) -> TypeError:
        prefix = f"plugin {self.plugin}: " if self.plugin else ""
        return TypeError(f"{prefix}{where}: {message}")

    def dataclass(self, cls: type, *, top: bool = False) -> _DataclassConv:
        if cls in self.done:  # also ends recursion through self-referencing schemas
            return self.done[cls]
        conv = self.done[cls] = _DataclassConv(cls)
        hints = _type_hints(cls, self)
        for fld in dataclasses.fields(cls):
            if not fld.init:
                continue
            where = f"{cls.__qualname__}.{fld.name}"
            if top and fld.name in RESERVED_OPTIONS:
                raise self.bug(where, f"the option name {fld.name!r} is reserved for the framework")
            if fld.name not in hints:
                raise self.bug(where, "the field has no type annotation")
            conv.fields[fld.name] = self.convert(hints[fld.name], where)
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                conv.required.append(fld.name)
        return conv

    def convert(self, tp: Any, where: str) -> _Converter:
        simple: dict[Any, type[_Converter]] = {
            Any: _AnyConv,
            str: _StrConv,
            int: _IntConv,
            float: _FloatConv,
            bool: _BoolConv,
        }
        try:
            factory = simple.get(tp)
        except TypeError:  # an unhashable annotation
            factory = None
        if factory is not None:
            return factory()
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Literal:
            if not args or not all(a is None or type(a) in (str, int, bool) for a in args):
                raise self.bug(
                    where, f"unsupported option type {_type_name(tp)} (Literal values must be str, int, bool or None)"
                )
            return _LiteralConv(args)
        if origin is typing.Union or origin is types.UnionType:
            others = [a for a in args if a is not type(None)]
            if len(others) == 1 and len(others) < len(args):
                return _OptionalConv(self.convert(others[0], where))
            raise self.bug(where, f"unsupported option type {_type_name(tp)} (only 'X | None' unions are supported)")
        if tp is list or origin is list:
            return _ListConv(self.convert(args[0] if args else Any, where), as_tuple=False)
        if tp is tuple or origin is tuple:
            if not args:
                return _ListConv(_AnyConv(), as_tuple=True) if tp is tuple else _FixedTupleConv(())
            if len(args) == 2 and args[1] is Ellipsis:
                return _ListConv(self.convert(args[0], where), as_tuple=True)
            if Ellipsis in args:
                raise self.bug(where, f"unsupported option type {_type_name(tp)}")
            return _FixedTupleConv(tuple(self.convert(a, where) for a in args))
        if tp is dict or origin is dict:
            if args and args[0] is not str:
                raise self.bug(where, f"unsupported option type {_type_name(tp)} (mapping keys must be str)")
            return _DictConv(self.convert(args[1] if args else Any, where))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp)
        raise self.bug(where, f"unsupported option type {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _type_hints(cls: type, compiler: _Compiler) -> dict[str, Any]:
    """The resolved annotations of ``cls``.

    With ``from __future__ import annotations`` the annotations are strings; a name that is not a module global is
    then also looked up among the classes of the enclosing classes, so a ``Config`` nested in a plugin class can use
    a sibling dataclass nested in the same plugin class.
    """
    try:
        return typing.get_type_hints(cls)
    except NameError as first:
        localns = _enclosing_classes(cls)
        if localns:
            try:
                return typing.get_type_hints(cls, localns=localns)
            except Exception as exc:
                raise compiler.bug(cls.__qualname__, f"cannot resolve the option types: {exc}") from exc
        raise compiler.bug(cls.__qualname__, f"cannot resolve the option types: {first}") from first
    except Exception as exc:
        raise compiler.bug(cls.__qualname__, f"cannot resolve the option types: {exc}") from exc


def _enclosing_classes(cls: type) -> dict[str, Any]:
    """Classes defined in the bodies of the classes enclosing ``cls`` (outermost first, innermost wins)."""
    module = sys.modules.get(cls.__module__)
    parts = cls.__qualname__.split(".")[:-1]
    if module is None or "<locals>" in parts:
        return {}
    found: dict[str, Any] = {}
    obj: Any = module
    for part in parts:
        obj = getattr(obj, part, None)
        if not isinstance(obj, type):
            break
        found.update({k: v for k, v in vars(obj).items() if isinstance(v, type)})
    return found


# --------------------------------------------------------------------------------------------------
# Public API


def find_schema(plugin_cls: type) -> type | None:
    """The options schema a plugin class declares, or None.

    That is its class attribute ``config_schema`` if set (it must then be a dataclass), else its nested class
    ``Config`` if that is a dataclass. Both are inherited from base classes like any class attribute.
    """
    explicit = getattr(plugin_cls, "config_schema", None)
    if explicit is not None:
        if not (isinstance(explicit, type) and dataclasses.is_dataclass(explicit)):
            raise TypeError(f"{plugin_cls.__qualname__}.config_schema must be a dataclass, got {explicit!r}")
        return explicit
    nested = getattr(plugin_cls, "Config", None)
    if isinstance(nested, type) and dataclasses.is_dataclass(nested):
        return nested
    return None


def validate_options(plugin_name: str, schema: type | None, options: Mapping[str, Any] | None) -> Any:
    """Check a plugin's options against its schema and build the value the plugin receives as ``self.config``.

    Args:
        plugin_name: the plugin's name, its key under ``plugins:`` (used in error messages).
        schema: the plugin's options dataclass (see :func:`find_schema`), or None for a plugin without one.
        options: the plugin's options from the config file, without the framework's ``rooms`` option (see
            :func:`split_options`). None means no options.

    Returns:
        An instance of ``schema`` built from the options, with the dataclass's defaults for the options not given; or,
        without a schema, a read-only mapping holding a deep copy of the options.

    Raises:
        PluginConfigError: an option is missing, unknown, or of the wrong type.
        TypeError: the schema itself is invalid (an unsupported field type, a field named ``rooms``...): a bug in the
            plugin.
    """
    where = _Where(plugin_name)
    if options is None:
        options = {}
    if schema is not None and not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"plugin {plugin_name}: the options schema must be a dataclass, got {schema!r}")
    converter = _Compiler(plugin_name).dataclass(schema, top=True) if schema is not None else None
    try:
        if converter is None:
            mapping = _check_mapping(options, where, "a mapping of options")
            return types.MappingProxyType(copy.deepcopy(dict(mapping)))
        return converter(options, where)
    except RecursionError:
        raise where.error("the options are nested too deeply") from None


@dataclass(frozen=True)
class RoomFilter:
    """The rooms a plugin hears, from its ``rooms: {allow: [...], deny: [...]}`` option.

    Entries are room IDs (``!abc:example.org``) or aliases (``#general:example.org``). A room in ``deny`` is never
    heard (deny wins over allow); with an empty ``allow`` every other room is heard, otherwise only the rooms listed.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def permits(self, room_id: str, aliases: Iterable[str] = ()) -> bool:
        """Whether the plugin hears room ``room_id``, known also by ``aliases`` (its canonical and alt aliases)."""
        names = {room_id, *aliases}
        if any(name in names for name in self.deny):
            return False
        return not self.allow or any(name in names for name in self.allow)


def _room_list(value: Any, where: _Where) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise where.expected("a list of room IDs or aliases", value)
    rooms = []
    for i, item in enumerate(value):
        at = where.index(i)
        if not isinstance(item, str):
            raise at.expected("a room ID or alias", item)
        if not ((item.startswith("!") and len(item) > 1) or (item.startswith("#") and ":" in item and len(item) > 2)):
            raise at.expected("a room ID ('!...') or alias ('#name:server')", item)
        rooms.append(item)
    return tuple(rooms)


def split_options(plugin_name: str, options: Mapping[str, Any] | None) -> tuple[RoomFilter, dict[str, Any]]:
    """Take the framework's ``rooms`` option out of a plugin's options.

    Returns the plugin's :class:`RoomFilter` (allowing every room when ``rooms`` is absent) and the remaining options,
    to be checked with :func:`validate_options`.

    Raises:
        PluginConfigError: the options are not a mapping, or ``rooms`` is malformed.
    """
    where = _Where(plugin_name)
    if options is None:
        return RoomFilter(), {}
    if not isinstance(options, Mapping):
        raise where.expected("a mapping of options", options)
    rest = dict(options)
    rooms = rest.pop("rooms", None)
    if rooms is None:
        return RoomFilter(), rest
    at = where.key("rooms")
    if not isinstance(rooms, Mapping):
        raise at.expected("a mapping with 'allow' and/or 'deny' lists", rooms)
    for name in rooms:
        if name not in ("allow", "deny"):
            shown = _short(name) if isinstance(name, str) else _got(name, False)
            hint = _suggest(name, ("allow", "deny")) if isinstance(name, str) else ""
            hint = hint or " (expected 'allow' and/or 'deny')"
            raise at.error(f"unknown option {shown}{hint}", name=name if isinstance(name, str) else None)
    allow = _room_list(rooms.get("allow"), at.key("allow"))
    deny = _room_list(rooms.get("deny"), at.key("deny"))
    return RoomFilter(allow, deny), rest


def parse_plugin_options(
    plugin_name: str, plugin_cls: type, options: Mapping[str, Any] | None
) -> tuple[RoomFilter, Any]:
    """:func:`split_options`, :func:`find_schema` and :func:`validate_options` in one call.

    Returns the plugin's room filter and its ``config`` value. Raises :class:`PluginConfigError` for bad options and
    :class:`TypeError` for a bad schema.
    """
    rooms, rest = split_options(plugin_name, options)
    return rooms, validate_options(plugin_name, find_schema(plugin_cls), rest)
