"""Loading and validating Ratchet's YAML configuration file.

The loader is sans-I/O apart from reading the file itself: :func:`parse_config` turns text into a
frozen :class:`Config` without touching the filesystem or the network, and :func:`load_config`
reads a file and hands its text to :func:`parse_config`.

Every problem is a :class:`ConfigError` whose message is one human-readable line naming the file,
the 1-based line (when the offending YAML node exists) and the dotted key, for example::

    config.yaml:7: invites.accept_from: expected a list of strings, got a string
    config.yaml: missing required key 'homeserver'
    config.yaml:3: unknown key 'homserver' (did you mean 'homeserver'?)

Error messages never contain the value of a secret (``password``, ``access_token``,
``pickle_key``), and exceptions raised while reading values are never chained onto a
``ConfigError`` (PyYAML's own messages quote the source line, which may hold a secret).

The schema is declarative: every configuration key is a field of a frozen dataclass whose metadata,
made with :func:`_key`, holds the converter that checks and builds its value (and optionally an
environment-variable fallback). Unknown-key checks, defaults and required keys all come from those
fields; nested sections such as ``invites`` are dataclasses described the same way and plugged in
with :func:`_section`. Adding a key means adding one field.

Strings may reference environment variables as ``${NAME}``, anywhere inside the string; ``$${``
stands for a literal ``${``. A variable that is not set is an error naming the key and the
variable.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot.errors import ConfigError

__all__ = [
    "PICKLE_KEY_ENV",
    "AppserviceConfig",
    "Config",
    "ConfigError",
    "E2EEConfig",
    "InvitesConfig",
    "load_config",
    "parse_config",
]

#: Environment variable consulted for ``pickle_key`` when the config file does not set it.
PICKLE_KEY_ENV = "RATCHET_PICKLE_KEY"


# --------------------------------------------------------------------------------------------------
# The error type


# --------------------------------------------------------------------------------------------------
# Schema machinery

#: ``convert(ctx, node, path) -> value``: checks a YAML node and builds the value for key ``path``.
Converter = Callable[["_Context", Node, str], Any]

_TAG = "tag:yaml.org,2002:"
_STR_TAG = _TAG + "str"
_NULL_TAG = _TAG + "null"
_MAP_TAG = _TAG + "map"
_SEQ_TAG = _TAG + "seq"
_MERGE_TAG = _TAG + "merge"
#: Tags of scalars that are built with PyYAML's safe constructor (strings are handled directly).
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "timestamp", "binary"))

#: Upper bound on YAML nodes visited while building values: stops "billion laughs" alias bombs.
_NODE_BUDGET = 100_000


@dataclass(frozen=True)
class _KeySpec:
    """How one configuration key is read; stored in its dataclass field's metadata."""

    #: Checks the YAML node and builds the value.
    convert: Converter
    #: Environment variable used when the key is absent (or empty) in the file.
    env: str | None = None
    #: Default written in config terms (e.g. a relative path), run through ``convert`` when the
    #: key is absent; otherwise the field's own default is used as is.
    raw_default: str | None = None
    #: The value is a secret: error messages never show it.
    secret: bool = False


def _key(
    convert: Converter,
    *,
    env: str | None = None,
    raw_default: str | None = None,
    secret: bool = False,
) -> dict[str, _KeySpec]:
    """Field metadata declaring a configuration key (see :class:`_KeySpec`)."""
    return {"ratchet": _KeySpec(convert, env=env, raw_default=raw_default, secret=secret)}


def _schema(cls: type) -> dict[str, tuple[dataclasses.Field[Any], _KeySpec]]:
    """The configuration keys of a section dataclass, in declaration order."""
    fields = dataclasses.fields(cls)
    return {f.name: (f, f.metadata["ratchet"]) for f in fields if "ratchet" in f.metadata}


def _required(fld: dataclasses.Field[Any]) -> bool:
    return fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING


class _LiteralNode(ScalarNode):
    """A synthetic string node used verbatim (no ``${VAR}`` expansion), e.g. from environ."""

    def __init__(self, value: str) -> None:
        super().__init__(_STR_TAG, value)


@dataclass
class _Context:
    """Per-parse state: where errors point, how relative paths and ``${VAR}`` are resolved."""

    source: str | None
    base_dir: Path
    environ: Mapping[str, str]
    budget: int = _NODE_BUDGET
    #: Collection nodes being built (meeting one again inside itself means a recursive alias).
    active: set[int] = dataclasses.field(default_factory=set)
    #: Mapping nodes whose ``<<`` merges are being resolved.
    merging: set[int] = dataclasses.field(default_factory=set)
    #: The key being read is a secret: :meth:`show` hides values.
    secret: bool = False
    #: Source text of the string last read by :func:`_scalar` if ``${VAR}`` expansion changed it.
    unexpanded: str | None = None
    #: Line of each plugin option read so far (see :attr:`Config.plugin_lines`).
    lines: dict[tuple[str | int, ...], int] = dataclasses.field(default_factory=dict)

    def error(self, message: str, *, key: str | None, node: Node | None = None) -> ConfigError:
        """A ConfigError at ``node``'s line (if it has a position)."""
        line = None
        if node is not None and node.start_mark is not None:
            line = node.start_mark.line + 1
        return ConfigError(message, key=key, file=self.source, line=line)

    def bad(self, path: str, node: Node | None, message: str) -> ConfigError:
        """An error about the value at ``path``: ``PATH: MESSAGE`` (just MESSAGE at the top)."""
        if not path:
            return self.error(message, key=None, node=node)
        return self.error(f"{path}: {message}", key=path, node=node)

    def show(self, value: str) -> str:
        """``value`` for an error message: its shortened ``repr``; never a secret.

        A value that ``${VAR}`` expansion changed is shown as written in the file, since the
        variable may hold a secret put under the wrong key.
        """
        if self.secret:
            return "(value hidden)"
        if self.unexpanded is not None:
            return f"{_show(self.unexpanded)} (expanded value not shown)"
        return _show(value)

    def visit(self, node: Node, path: str) -> None:
        """Count one node against the budget."""
        self.budget -= 1
        if self.budget < 0:
            raise self.bad(path, node, "the document is too large (too many aliases?)")


def describe_value(value: Any) -> str:
    """'a string', 'an integer', ... for 'expected X, got Y' messages (shared with plugin option checks)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes | bytearray):
        return "binary data"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if hasattr(value, "isoformat"):
        return "a date"
    return f"a {type(value).__name__}"


_describe = describe_value


def _describe_node(ctx: _Context, node: Node, path: str) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _describe(_scalar(ctx, node, path, expand=False))


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def _show(value: str, limit: int = 60) -> str:
    """``repr`` of a (non-secret) value, shortened."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _join(path: str, key: Any) -> str:
    """``path.key``; a key with control characters (a newline) is shown as ``path['\\n']`` so that every error
    stays on one line."""
    key = str(key)
    if not key.isprintable():
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------------------
# Environment variable references

_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand(ctx: _Context, value: str, path: str, node: Node) -> str:
    """Replace each ``${NAME}`` with the variable's value and each ``$${`` with ``${``."""
    if "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, closed = match.group(1), match.group(2)
        literal = "(write '$${' for a literal '${')"
        if not closed:
            raise ctx.bad(path, node, f"unterminated '${{' {literal}")
        if not _ENV_NAME.fullmatch(name):
            # The reference is shown to help find it, except in a secret (it may be a literal part).
            reference = "" if ctx.secret else " ${" + name[:40] + "}"
            message = f"invalid environment variable reference{reference} {literal}"
            raise ctx.bad(path, node, message)
        try:
            return ctx.environ[name]
        except KeyError:
            raise ctx.bad(path, node, f"environment variable {name} is not set") from None

    return _ENV_REF.sub(replace, value)


# --------------------------------------------------------------------------------------------------
# Reading YAML nodes


def _scalar(ctx: _Context, node: Node, path: str, *, expand: bool = True) -> Any:
    """The Python value of a scalar node, with ``${VAR}`` expanded in strings if ``expand``."""
    if not isinstance(node, ScalarNode):
        raise ctx.bad(path, node, f"expected a single value, got {_describe_node(ctx, node, path)}")
    ctx.unexpanded = None
    if node.tag == _STR_TAG:
        if expand and not isinstance(node, _LiteralNode):
            value = _expand(ctx, node.value, path, node)
            if value != node.value:
                ctx.unexpanded = node.value
            return value
        return node.value
    if node.tag not in _SCALAR_TAGS:
        raise ctx.bad(path, node, f"unsupported YAML tag {_short_tag(node.tag)}")
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except Exception:
        # e.g. ``!!int abc``: the original exception's text quotes the value, so it is dropped.
        raise ctx.bad(path, node, f"invalid {_short_tag(node.tag)} value") from None


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _pairs(ctx: _Context, node: MappingNode, path: str) -> list[tuple[Any, Node, Node]]:
    """``(key, key_node, value_node)`` for each entry of a mapping, with ``<<`` merges applied.

    Keys must be scalars and must not repeat. Keys brought in by a merge come first (as in PyYAML)
    and are overridden by the mapping's own.
    """
    if id(node) in ctx.merging:
        raise ctx.bad(path, node, "recursive YAML alias in a '<<' merge")
    ctx.merging.add(id(node))
    try:
        own: dict[Any, tuple[Node, Node]] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            ctx.visit(key_node, path)
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                got = _describe_node(ctx, key_node, path)
                raise ctx.bad(path, key_node, f"keys must be single values, got {got}")
            key = _scalar(ctx, key_node, path, expand=False)
            try:
                first = own.get(key)
            except TypeError:  # unhashable
                raise ctx.bad(path, key_node, f"unsupported key type: {_describe(key)}") from None
            if first is not None:
                name = _join(path, key)
                first_line = first[0].start_mark.line + 1
                raise ctx.error(
                    f"duplicate key '{name}' (first defined on line {first_line})",
                    key=name,
                    node=key_node,
                )
            own[key] = (key_node, value_node)

        merged: dict[Any, tuple[Node, Node]] = {}
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    message = "'<<' must merge a mapping or a list of mappings"
                    raise ctx.bad(path, source, message)
                for key, key_node, value_node in _pairs(ctx, source, path):
                    merged.setdefault(key, (key_node, value_node))
        merged.update(own)
        return [(key, k, v) for key, (k, v) in merged.items()]
    finally:
        ctx.merging.discard(id(node))


def _plain(ctx: _Context, node: Node, path: str, parts: tuple[str | int, ...] | None = None) -> Any:
    """Any YAML value as plain Python data (dicts, lists, scalars), e.g. a plugin's options.

    With ``parts`` (the value's path as keys and list indexes), the line of each key and list item inside is recorded
    in ``ctx.lines`` under its own path.
    """
    ctx.visit(node, path)
    if isinstance(node, ScalarNode):
        return _scalar(ctx, node, path)
    if node.tag not in (_MAP_TAG, _SEQ_TAG):
        raise ctx.bad(path, node, f"unsupported YAML tag {_short_tag(node.tag)}")
    if id(node) in ctx.active:
        raise ctx.bad(path, node, "recursive YAML alias (a value that contains itself)")
    ctx.active.add(id(node))
    try:
        if isinstance(node, SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                items.append(_plain(ctx, item, f"{path}[{i}]", _record(ctx, parts, i, item)))
            return items
        return {k: _plain(ctx, v, _join(path, k), _record(ctx, parts, k, kn)) for k, kn, v in _pairs(ctx, node, path)}
    finally:
        ctx.active.discard(id(node))


def _record(
    ctx: _Context, parts: tuple[str | int, ...] | None, key: Any, node: Node
) -> tuple[str | int, ...] | None:
    """``parts`` + ``key``, with ``node``'s line recorded for it; None when lines are not recorded."""
    if parts is None or not isinstance(key, str | int) or node.start_mark is None:
        return None
    sub = (*parts, key)
    ctx.lines[sub] = node.start_mark.line + 1
    return sub


def _build_section(ctx: _Context, cls: type, node: MappingNode, path: str) -> Any:
    """Check a mapping node against the section dataclass ``cls`` and build an instance.

    Structure comes first (duplicate, non-string and unknown keys, in file order), then each
    value in file order, then absent keys (defaults, environment fallbacks, required keys), then
    the class's ``_require_one_of`` groups.
    """
    schema = _schema(cls)
    pairs = _pairs(ctx, node, path)
    for key, key_node, _ in pairs:
        if not isinstance(key, str):
            raise ctx.bad(path, key_node, f"keys must be strings, got {_describe(key)}")
        if key not in schema:
            message = _unknown_key_message(path, key, schema)
            raise ctx.error(message, key=_join(path, key), node=key_node)

    values: dict[str, Any] = {}
    key_nodes: dict[str, Node] = {}
    for key, key_node, value_node in pairs:
        fld, spec = schema[key]
        key_nodes[key] = key_node
        if _is_null(value_node):
            if _required(fld) and not spec.env:
                raise ctx.bad(_join(path, key), value_node, "a value is required but it is empty")
            continue  # an empty optional key means "use the default"
        values[key] = _convert(ctx, spec, value_node, _join(path, key))

    for name, (fld, spec) in schema.items():
        if name in values:
            continue
        full = _join(path, name)
        if spec.env and spec.env in ctx.environ:
            try:
                values[name] = _convert(ctx, spec, _LiteralNode(ctx.environ[spec.env]), full)
            except ConfigError as exc:
                raise ConfigError(
                    f"{exc.message} (the value comes from the environment variable {spec.env})",
                    key=exc.key,
                    file=exc.file,
                ) from None
        elif spec.raw_default is not None:
            values[name] = _convert(ctx, spec, _LiteralNode(spec.raw_default), full)
        elif _required(fld):
            message = f"missing required key '{full}'"
            if spec.env:
                message += (
                    f" (set it in the config file, e.g. '{name}: ${{{spec.env}}}', "
                    f"or set the environment variable {spec.env})"
                )
            raise ctx.error(message, key=full, node=key_nodes.get(name))

    instead = any(values.get(name) is not None for name in getattr(cls, "_instead_of_required", ()))
    for group in () if instead else getattr(cls, "_require_one_of", ()):
        if all(values.get(name) is None for name in group):
            names = " or ".join(f"'{_join(path, name)}'" for name in group)
            raise ctx.error(f"missing required key: set {names}", key=_join(path, group[0]))
    return cls(**values)


def _convert(ctx: _Context, spec: _KeySpec, node: Node, path: str) -> Any:
    previous, ctx.secret = ctx.secret, spec.secret or ctx.secret
    try:
        return spec.convert(ctx, node, path)
    finally:
        ctx.secret = previous


def _unknown_key_message(path: str, key: str, schema: Mapping[str, tuple[Any, _KeySpec]]) -> str:
    """``unknown key 'x'`` plus a suggestion: a similar key, or the same key in a sub-section."""
    full = _join(path, key)
    names = list(schema)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6) or difflib.get_close_matches(
        key.lower(), names, n=1, cutoff=0.6
    )
    if close:
        return f"unknown key '{full}' (did you mean '{_join(path, close[0])}'?)"
    for name, (_, spec) in schema.items():
        section = getattr(spec.convert, "section", None)
        if section is not None and key in _schema(section):
            return f"unknown key '{full}' (did you mean '{_join(_join(path, name), key)}'?)"
    if path and len(schema) <= 8:
        return f"unknown key '{full}' (valid keys here: {', '.join(names)})"
    return f"unknown key '{full}'"


# --------------------------------------------------------------------------------------------------
# Converters and checks

#: ``check(ctx, value) -> problem``: an error message (without the key) or None if ``value`` is OK.
Check = Callable[[_Context, str], str | None]

_TYPE_HINTS = {
    bool: "YAML reads unquoted yes/no/on/off/true/false as booleans; put the value in quotes",
    int: "YAML reads unquoted numbers as numbers; put the value in quotes",
    float: "YAML reads unquoted numbers as numbers; put the value in quotes",
}


def _string(*checks: Check) -> Converter:
    """A string (never a coerced number or boolean), then each of ``checks`` in order."""

    def convert(ctx: _Context, node: Node, path: str) -> str:
        value = _scalar(ctx, node, path)
        if not isinstance(value, str):
            message = f"expected a string, got {_describe(value)}"
            hint = _TYPE_HINTS.get(type(value))
            raise ctx.bad(path, node, f"{message} ({hint})" if hint else message)
        for check in checks:
            problem = check(ctx, value)
            if problem:
                raise ctx.bad(path, node, problem)
        return value

    return convert


def _non_empty(ctx: _Context, value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _min_length(n: int) -> Check:
    def check(ctx: _Context, value: str) -> str | None:
        if len(value) < n:
            return f"must be at least {n} characters long (got {len(value)})"
        return None

    return check


def _database_check(ctx: _Context, value: str) -> str | None:
    """A ``postgresql://`` URL (its password is never echoed)."""
    expected = "must be a postgresql:// URL like postgresql://ratchet:${DB_PASSWORD}@db.example.org/ratchet"
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return f"{expected} (the URL does not parse)"
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        return f"{expected}; leave the key out to keep SQLite files under data_dir"
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        return f"{expected}: name the database"
    return None


def _url_check(ctx: _Context, value: str) -> str | None:
    expected = "must be an http:// or https:// URL like https://matrix.example.org"
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
        has_credentials = parts.username is not None or parts.password is not None
        hostname = parts.hostname
    except ValueError:
        return f"{expected}, got {ctx.show(value)}"
    if has_credentials:
        return "must not contain a user name or password"  # not echoed: it would show them
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        return f"{expected}, got {ctx.show(value)}"
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        return f"{expected} (no query, fragment or spaces), got {ctx.show(value)}"
    return None


# Historical Matrix user ids: printable ASCII except ':' in the localpart; the server name is a
# DNS name, an IPv4 address or an [IPv6] literal, with an optional port.
_USER_ID = re.compile(
    r"@[\x21-\x39\x3b-\x7e]+:"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?"
)


def _user_id_check(ctx: _Context, value: str) -> str | None:
    if _USER_ID.fullmatch(value) and len(value) <= 255:
        return None
    return f"expected a Matrix user id like @bot:example.org, got {ctx.show(value)}"


def _prefix_check(ctx: _Context, value: str) -> str | None:
    if not value:
        return "must not be empty"
    if any(c.isspace() for c in value):
        return f"must not contain whitespace, got {ctx.show(value)}"
    return None


def _pattern_check(ctx: _Context, value: str) -> str | None:
    if not value:
        return "must not be empty"
    if value[0] not in "@*?[":
        return (
            f"pattern {ctx.show(value)} can never match a user id (user ids look like "
            f"@name:server; to accept a whole server write '@*:server')"
        )
    return None


def _choice(*options: str, upper: bool) -> Check:
    """One of ``options``, compared after upper- or lower-casing the value."""

    def check(ctx: _Context, value: str) -> str | None:
        normalized = value.upper() if upper else value.lower()
        if normalized in options:
            return None
        close = difflib.get_close_matches(normalized, options, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"must be one of {', '.join(options)}, got {ctx.show(value)}{hint}"

    return check


def _then(convert: Converter, fn: Callable[[Any], Any]) -> Converter:
    """``convert``, then ``fn`` applied to its result (e.g. to normalize case)."""

    def wrapped(ctx: _Context, node: Node, path: str) -> Any:
        return fn(convert(ctx, node, path))

    return wrapped


def _at_least(convert: Converter, minimum: float, unit: str = "s") -> Converter:
    """``convert``, then a check that the number is at least ``minimum``."""

    def wrapped(ctx: _Context, node: Node, path: str) -> Any:
        value = convert(ctx, node, path)
        if value < minimum:
            raise ctx.bad(path, node, f"must be at least {minimum:g}{unit} (got {value:g}{unit})")
        return value

    return wrapped


def _boolean(ctx: _Context, node: Node, path: str) -> bool:
    value = _scalar(ctx, node, path)
    if not isinstance(value, bool):
        raise ctx.bad(path, node, f"expected true or false, got {_describe(value)}")
    return value


def _integer(minimum: int) -> Converter:
    """A whole number (not a boolean) of at least ``minimum``."""

    def convert(ctx: _Context, node: Node, path: str) -> int:
        value = _scalar(ctx, node, path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.bad(path, node, f"expected a whole number, got {_describe(value)}")
        if value < minimum:
            raise ctx.bad(path, node, f"must be at least {minimum}, got {value}")
        return value

    return convert


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)")
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?\s*[smhdw]?\s*)+")
_DURATION_USAGE = "use a number of seconds or a duration like 90s, 15m, 2h or 1d"


def _duration(*, positive: bool) -> Converter:
    """Seconds (a float): a number, or a string like ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``."""

    def convert(ctx: _Context, node: Node, path: str) -> float:
        value = _scalar(ctx, node, path)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            got = _describe(value)
            raise ctx.bad(path, node, f"expected a duration, got {got} ({_DURATION_USAGE})")
        if isinstance(value, str):
            text = value.strip().lower()
            parts = _DURATION_PART.findall(text)
            if not _DURATION.fullmatch(text) or (len(parts) > 1 and not all(u for _, u in parts)):
                shown = ctx.show(value)
                raise ctx.bad(path, node, f"invalid duration {shown} ({_DURATION_USAGE})")
            seconds = sum(float(number) * _DURATION_UNITS[unit or "s"] for number, unit in parts)
        else:
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
        if not math.isfinite(seconds):
            raise ctx.bad(path, node, f"must be a finite duration ({_DURATION_USAGE})")
        if seconds < 0 or (positive and seconds == 0):
            bound = "greater than 0" if positive else "at least 0"
            raise ctx.bad(path, node, f"must be {bound} seconds")
        return seconds

    return convert


def _path(ctx: _Context, node: Node, path: str) -> Path:
    """A path: ``~`` is $HOME, relative paths are resolved against the config file's folder."""
    value = _string(_non_empty)(ctx, node, path)
    if value == "~" or value.startswith("~/"):
        home = ctx.environ.get("HOME")
        if not home:
            raise ctx.bad(path, node, "cannot expand '~': the environment variable HOME is not set")
        value = home + value[1:]
    return Path(os.path.normpath(ctx.base_dir / value))


def _list_of(item: Converter, what: str) -> Converter:
    """A list (as a tuple, duplicates dropped) whose items are read by ``item``.

    ``what`` names the items in 'expected a list of WHAT' messages.
    """

    def convert(ctx: _Context, node: Node, path: str) -> tuple[Any, ...]:
        if not isinstance(node, SequenceNode):
            got = _describe_node(ctx, node, path)
            raise ctx.bad(path, node, f"expected a list of {what}, got {got}")
        result: list[Any] = []
        for i, child in enumerate(node.value):
            ctx.visit(child, path)
            value = item(ctx, child, f"{path}[{i}]")
            if value not in result:
                result.append(value)
        return tuple(result)

    return convert


def _section(cls: type) -> Converter:
    """A nested mapping described by the section dataclass ``cls`` (same rules as the top level)."""

    def convert(ctx: _Context, node: Node, path: str) -> Any:
        if not isinstance(node, MappingNode):
            raise ctx.bad(path, node, f"expected a mapping, got {_describe_node(ctx, node, path)}")
        return _build_section(ctx, cls, node, path)

    convert.section = cls  # type: ignore[attr-defined]  # lets unknown-key hints look inside
    return convert


_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _plugins(ctx: _Context, node: Node, path: str) -> dict[str, dict[Any, Any]]:
    """Plugin name -> options mapping, in file order (an empty value means no options)."""
    if not isinstance(node, MappingNode):
        got = _describe_node(ctx, node, path)
        raise ctx.bad(
            path,
            node,
            f"expected a mapping of plugin names to their options, got {got} (write one 'name: {{}}' line per plugin)",
        )
    plugins: dict[str, dict[Any, Any]] = {}
    for name, key_node, value_node in _pairs(ctx, node, path):
        if not isinstance(name, str):
            raise ctx.bad(path, key_node, f"plugin names must be strings, got {_describe(name)}")
        full = _join(path, name)
        if not _PLUGIN_NAME.fullmatch(name):
            raise ctx.bad(
                full,
                key_node,
                f"invalid plugin name {_show(name)} (use lowercase letters, digits and "
                "underscores, starting with a letter)",
            )
        parts = _record(ctx, (), name, key_node)
        if _is_null(value_node):
            plugins[name] = {}
        elif isinstance(value_node, MappingNode):
            plugins[name] = _plain(ctx, value_node, full, parts)
        else:
            got = _describe_node(ctx, value_node, full)
            raise ctx.bad(full, value_node, f"expected a mapping of options (or nothing), got {got}")
    return plugins


# --------------------------------------------------------------------------------------------------
# The schema: one field per configuration key. See config.example.yaml for the user-facing docs.


@dataclass(frozen=True, kw_only=True)
class InvitesConfig:
    """Which room invites the bot accepts (the ``invites`` section).

    Attributes:
        accept_from: glob patterns (``fnmatch``, case-sensitive) matched against the inviter's
            user id, e.g. ``@*:example.org`` or ``@alice:example.org``. Empty (the default)
            accepts no invites.
    """

    accept_from: tuple[str, ...] = field(default=(), metadata=_key(_list_of(_string(_pattern_check), "strings")))

    def allows(self, user_id: str) -> bool:
        """True if an invite from ``user_id`` is accepted: it matches a pattern, case-sensitively."""
        return any(fnmatchcase(user_id, pattern) for pattern in self.accept_from)


@dataclass(frozen=True, kw_only=True)
class VerificationConfig:
    """The ``e2ee.verification`` section (docs/verification.md)."""

    #: Who may ask the bot for an interactive (emoji) verification besides the ``admins`` and the bot's own account:
    #: glob patterns (``fnmatch``, case-sensitive) of user ids. Others are refused with ``m.key.verification.cancel``.
    accept_from: tuple[str, ...] = field(default=(), metadata=_key(_list_of(_string(_pattern_check), "strings")))
    #: Users (exact ids) whose verifications the bot confirms without the operator comparing the emoji. This gives
    #: up the check against a man in the middle (the homeserver could swap keys unnoticed): use it only for an
    #: account whose devices you control, on a homeserver you run.
    auto_confirm: tuple[str, ...] = field(default=(), metadata=_key(_list_of(_string(_user_id_check), "user ids")))


@dataclass(frozen=True, kw_only=True)
class E2EEConfig:
    """The ``e2ee`` section: trust policy, cross-signing, recovery key and key backup."""

    #: Which devices get the bot's room keys and whose messages count as trusted: ``tofu`` (pin each user's
    #: cross-signing identity on first use; devices cross-signed by it, or of users without cross-signing),
    #: ``cross-signed`` (only devices cross-signed by their owner), ``verified`` (cross-signed devices of users the bot
    #: verified interactively, and its own), ``all`` (every device).
    trust: str = field(
        default="tofu",
        metadata=_key(_then(_string(_choice("tofu", "cross-signed", "verified", "all", upper=False)), str.lower)),
    )
    #: Create cross-signing keys for the bot's account on first start and sign its device with them.
    cross_signing: bool = field(default=True, metadata=_key(_boolean))
    #: Back up room keys to the homeserver (``m.megolm_backup.v1.curve25519-aes-sha2``), key kept in secret storage.
    key_backup: bool = field(default=True, metadata=_key(_boolean))
    #: Write the recovery key to this file (mode 0600) when it is created; otherwise it is only printed once.
    recovery_key_file: Path | None = field(default=None, metadata=_key(_path))
    #: Run commands sent unencrypted into an encrypted room. Off: the server, or anyone with a stolen access token
    #: and no device keys, could put them there; they are ignored (and logged).
    plaintext_commands: bool = field(default=False, metadata=_key(_boolean))
    #: Interactive (emoji) verification: who may ask, and whose verifications confirm themselves.
    verification: VerificationConfig = field(
        default_factory=lambda: VerificationConfig(), metadata=_key(_section(VerificationConfig))
    )


def _port(ctx: _Context, node: Node, path: str) -> int:
    value = _integer(0)(ctx, node, path)
    if value > 65535:
        raise ctx.bad(path, node, f"a TCP port is at most 65535, got {value}")
    return value


def _readable_secret_file(ctx: _Context, node: Node, path: str) -> Path:
    """A file holding a secret (e.g. a systemd credential): it must be readable and hold at least 16 characters."""
    file = _path(ctx, node, path)
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ctx.bad(path, node, f"cannot read {file}: {reason}") from None
    if len(text) < 16:
        raise ctx.bad(path, node, f"{file} must hold a token of at least 16 characters")
    return file


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """The ``http`` section: the optional HTTP listener for metrics, health checks and the status page.

    Off unless the section is present. The webhooks bridge mounts its hooks on it too when both run.
    """

    #: Address to bind; keep it on loopback (behind a reverse proxy for anything else).
    host: str = field(default="127.0.0.1", metadata=_key(_string(_non_empty)))
    #: TCP port (0: any free port, logged at start).
    port: int = field(metadata=_key(_port))
    #: Token for the status page (at least 16 characters); or ``status_token_file``. Without either, the page is off.
    status_token: str | None = field(default=None, repr=False, metadata=_key(_string(_min_length(16)), secret=True))
    #: File holding the status page token (e.g. a systemd credential), read at start.
    status_token_file: Path | None = field(default=None, metadata=_key(_readable_secret_file))
    #: ``/health/ready`` fails when the homeserver has not answered for longer than this, or no sync succeeded for
    #: this long plus the 30 s long-poll.
    ready_max_sync_age: float = field(default=90.0, metadata=_key(_duration(positive=True)))

    def read_status_token(self) -> str | None:
        """The status page token (from the file if one is configured), or None if the page is off."""
        if self.status_token_file is not None:
            return self.status_token_file.read_text(encoding="utf-8").strip()
        return self.status_token


_LOCALPART = re.compile(r"[a-z0-9._=/+-]+")


def _localpart_check(ctx: _Context, value: str) -> str | None:
    if _LOCALPART.fullmatch(value):
        return None
    return f"expected a user id localpart (lowercase a-z, 0-9 and ._=-/+), got {ctx.show(value)}"


def _ghost_prefix_check(ctx: _Context, value: str) -> str | None:
    problem = _localpart_check(ctx, value)
    if problem:
        return problem.replace("a user id localpart", "the start of a user id localpart, like irc_,")
    return None


def _appservice_id_check(ctx: _Context, value: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9._~-]+", value):
        return None
    return f"expected a short id of letters, digits and . _ ~ - (it appears in URLs), got {ctx.show(value)}"


@dataclass(frozen=True, kw_only=True)
class AppserviceConfig:
    """The ``appservice`` section: run as an application service (docs/appservice.md) instead of a logged-in bot.

    With it, ``ratchet run`` takes events from the homeserver's transactions instead of ``/sync``, the bot is the
    appservice's ``sender_localpart`` user and acts with ``as_token``, and ghosts (``ghost_prefix``...) act through
    the same token. ``ratchet appservice registration -c CONFIG`` writes the registration file for the homeserver.
    """

    #: The registration's id, unique on the homeserver (Synapse's ping endpoint names it).
    id: str = field(metadata=_key(_string(_appservice_id_check)))
    #: Where the homeserver reaches the appservice; default ``http://{host}:{port}``.
    url: str | None = field(default=None, metadata=_key(_then(_string(_url_check), lambda s: s.rstrip("/"))))
    #: Address the appservice listens on for the homeserver's requests. Keep it on loopback or a private network.
    host: str = field(default="127.0.0.1", metadata=_key(_string(_non_empty)))
    #: TCP port the appservice listens on.
    port: int = field(metadata=_key(_port))
    #: The bridge bot's localpart; default (and it must be) ``user_id``'s localpart.
    sender_localpart: str | None = field(default=None, metadata=_key(_string(_localpart_check)))
    #: Ghost users are ``@{ghost_prefix}{name}:{server}`` (the registration claims them exclusively). Default none:
    #: no ghosts.
    ghost_prefix: str | None = field(default=None, metadata=_key(_string(_ghost_prefix_check)))
    #: Room aliases ``#{alias_prefix}...:{server}`` the appservice claims; default none.
    alias_prefix: str | None = field(default=None, metadata=_key(_string(_ghost_prefix_check)))
    #: The token the appservice authenticates with at the homeserver (use ``${VAR}``); with ``hs_token``, or neither:
    #: then ``ratchet appservice registration`` generates both into ``tokens_file``.
    as_token: str | None = field(default=None, repr=False, metadata=_key(_string(_min_length(32)), secret=True))
    #: The token the homeserver authenticates with at the appservice (use ``${VAR}``).
    hs_token: str | None = field(default=None, repr=False, metadata=_key(_string(_min_length(32)), secret=True))
    #: Where generated tokens are kept (mode 0600); default ``data_dir/appservice-tokens.json``.
    tokens_file: Path | None = field(default=None, metadata=_key(_path))
    #: Let the homeserver rate-limit the appservice's users (false for bridges).
    rate_limited: bool = field(default=False, metadata=_key(_boolean))
    #: Ask for ephemeral events (receipts, typing) and, for encryption, the MSC2409/3202/4190 extensions.
    receive_ephemeral: bool = field(default=True, metadata=_key(_boolean))
    #: End-to-end encryption: the bot gets a device of its own (MSC4190) fed by the transactions' to-device events,
    #: device lists and key counts (needs ``receive_ephemeral`` and the homeserver's experimental MSC2409/MSC3202
    #: features, docs/appservice.md "Encryption"). Default true.
    encryption: bool = field(default=True, metadata=_key(_boolean))
    #: With encryption: each ghost that posts into an encrypted room gets a device of its own (MSC4190), cross-signed
    #: by the ghost's own keys, and its messages are encrypted by that device, so clients show them as any
    #: cross-signed user's (docs/appservice.md "Encryption"). False: ghosts' messages are encrypted by the bridge
    #: bot's device (Element shows a red "mismatched sender" shield, or nothing with "exclude insecure devices").
    #: Default true.
    ghost_devices: bool = field(default=True, metadata=_key(_boolean))
    #: Ghost devices whose Olm machines are kept in memory at once (least recently used beyond that are closed and
    #: reopened from their store when needed). Default 100.
    ghost_device_cache: int = field(default=100, metadata=_key(_integer(1)))

    def tokens_path(self, data_dir: Path) -> Path:
        """Where generated tokens live: ``tokens_file``, else ``data_dir/appservice-tokens.json``."""
        return self.tokens_file if self.tokens_file is not None else data_dir / "appservice-tokens.json"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The bot's configuration; ``config.example.yaml`` documents every key.

    Attributes:
        homeserver: base URL of the homeserver's client-server API (http or https), without a
            trailing slash. Required.
        user_id: the bot's Matrix user id, ``@localpart:server``. Required.
        password: the account password, used to log in when there is no stored session.
            ``password`` or ``access_token`` (or both) is required. Hidden from ``repr``.
        access_token: an existing access token. Hidden from ``repr``.
        device_name: display name of the device created at first login. Default ``"Ratchet"``.
        data_dir: where the session, the crypto store and the bot's state live. Default
            ``./data``; relative paths are resolved against the config file's directory.
        database: a ``postgresql://`` URL: keep everything in that PostgreSQL database instead of SQLite files under
            ``data_dir`` (the login, the crypto store, the state, plugins' data); two bots need two databases. Two
            processes with the same database form an active/standby pair. Default none (SQLite). Hidden from ``repr``.
        database_lease_ttl: seconds the active process's lease lasts without renewal: how long a standby waits
            before taking over from an active one that froze or lost its network (one that died is replaced at
            once). At least 3. Default 10.
        pickle_key: passphrase encrypting the crypto store, at least 16 characters: the
            ``pickle_key`` key, else the ``RATCHET_PICKLE_KEY`` environment variable. Required.
            Hidden from ``repr``.
        command_prefix: what starts a command, e.g. ``!`` in ``!ping``: non-empty, no
            whitespace. Default ``"!"``.
        admins: user ids allowed to run admin commands. Default none.
        invites: the invite policy (:class:`InvitesConfig`).
        plugins: plugin name -> its options mapping, in file order. Default none.
        plugin_dirs: extra folders to look for plugins in, resolved against the config file's
            directory. Default none.
        catch_up: handle messages that arrived while the bot was down. Default true.
        catch_up_max_age: seconds; older missed messages are not handled. Default 86400 (1 day).
        handler_timeout: seconds a handler may run before it is cancelled. Default 60.
        max_concurrency: how many handlers may run at once (at least 1). Default 32 (measured: the smallest bound
            at which 50 rooms pinging at once get a p99 no worse than maubot's; docs/performance.md).
        log_level: DEBUG, INFO, WARNING or ERROR. Default INFO.
        log_format: ``text`` or ``json``. Default ``text``.
        http: the optional HTTP listener (:class:`HttpConfig`): metrics, health, status page. Default off.
        appservice: run as an application service (:class:`AppserviceConfig`, docs/appservice.md) instead of a
            logged-in account; then ``password``/``access_token`` are not needed. Default off (relay mode).
        source: the file the configuration was read from; not part of equality.
        plugin_lines: the line of each plugin's key and of each key and list item inside its options, by path
            (``("reminders",)``, ``("reminders", "check_interval")``, ``("webhooks", "hooks", "ci", "secret")``,
            ``("reminders", "rooms", "allow", 0)``); see :meth:`plugin_line`. Not part of equality.
    """

    homeserver: str = field(metadata=_key(_then(_string(_url_check), lambda s: s.rstrip("/"))))
    user_id: str = field(metadata=_key(_string(_user_id_check)))
    password: str | None = field(default=None, repr=False, metadata=_key(_string(_non_empty), secret=True))
    access_token: str | None = field(default=None, repr=False, metadata=_key(_string(_non_empty), secret=True))
    device_name: str = field(default="Ratchet", metadata=_key(_string(_non_empty)))
    data_dir: Path = field(default=Path("data"), metadata=_key(_path, raw_default="./data"))
    database: str | None = field(default=None, repr=False, metadata=_key(_string(_database_check), secret=True))
    database_lease_ttl: float = field(default=10.0, metadata=_key(_at_least(_duration(positive=True), 3)))
    pickle_key: str = field(repr=False, metadata=_key(_string(_min_length(16)), env=PICKLE_KEY_ENV, secret=True))
    command_prefix: str = field(default="!", metadata=_key(_string(_prefix_check)))
    admins: tuple[str, ...] = field(default=(), metadata=_key(_list_of(_string(_user_id_check), "user ids")))
    invites: InvitesConfig = field(default_factory=InvitesConfig, metadata=_key(_section(InvitesConfig)))
    e2ee: E2EEConfig = field(default_factory=E2EEConfig, metadata=_key(_section(E2EEConfig)))
    plugins: dict[str, dict[Any, Any]] = field(default_factory=dict, hash=False, metadata=_key(_plugins))
    plugin_dirs: tuple[Path, ...] = field(default=(), metadata=_key(_list_of(_path, "paths")))
    catch_up: bool = field(default=True, metadata=_key(_boolean))
    catch_up_max_age: float = field(default=86400.0, metadata=_key(_duration(positive=False)))
    handler_timeout: float = field(default=60.0, metadata=_key(_duration(positive=True)))
    max_concurrency: int = field(default=32, metadata=_key(_integer(1)))
    log_level: str = field(
        default="INFO",
        metadata=_key(_then(_string(_choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True)), str.upper)),
    )
    log_format: str = field(
        default="text",
        metadata=_key(_then(_string(_choice("text", "json", upper=False)), str.lower)),
    )
    http: HttpConfig | None = field(default=None, metadata=_key(_section(HttpConfig)))
    appservice: AppserviceConfig | None = field(default=None, metadata=_key(_section(AppserviceConfig)))
    source: str | None = field(default=None, compare=False)
    plugin_lines: Mapping[tuple[str | int, ...], int] = field(default_factory=dict, compare=False, repr=False)

    #: Groups of keys of which at least one must be set.
    _require_one_of: ClassVar[tuple[tuple[str, ...], ...]] = (("password", "access_token"),)
    #: Sections that stand in for the ``_require_one_of`` keys (an appservice acts with its as_token).
    _instead_of_required: ClassVar[tuple[str, ...]] = ("appservice",)

    def plugin_line(self, plugin: str, *parts: str | int) -> int | None:
        """The line of plugin option ``parts`` of ``plugin`` in the config file; for an option that is not in the
        file (a missing one), the line of the nearest enclosing key (at least the plugin's own). None if the plugin is
        not in the file (or the config was not read from text)."""
        path = (plugin, *parts)
        while path:
            line = self.plugin_lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return None


# --------------------------------------------------------------------------------------------------
# Entry points


def _syntax_error(source: str, exc: yaml.YAMLError, text: str) -> ConfigError:
    """A ConfigError for a YAML syntax error, without PyYAML's source snippet (may hold secrets)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        head = "YAML syntax error" if mark is None else f"YAML syntax error at column {mark.column + 1}"
        problem = exc.problem or exc.context or "invalid YAML"
        body = problem
        if exc.problem and exc.context:
            context = exc.context
            elsewhere = exc.context_mark is not None and (mark is None or exc.context_mark.line != mark.line)
            # e.g. "expected a single document in the stream, but found another document"
            if problem.startswith("but "):
                if elsewhere:
                    context += f" (line {exc.context_mark.line + 1})"
                body = f"{context}, {problem}"
            elif elsewhere:
                body = f"{problem} ({context} that starts on line {exc.context_mark.line + 1})"
        if "'@'" in problem:
            body += '; values starting with @ must be quoted, e.g. user_id: "@bot:example.org"'
        elif "'\\t'" in problem:
            body += "; YAML does not allow tabs for indentation, use spaces"
        elif "'`'" in problem or "'%'" in problem:
            body += "; put the value in quotes"
        line = mark.line + 1 if mark is not None else None
        return ConfigError(f"{head}: {body}", file=source, line=line)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        message = f"YAML syntax error: unacceptable character {what} (control characters are not allowed)"
        return ConfigError(message, file=source, line=line)
    return ConfigError("YAML syntax error", file=source)


def _check_appservice(ctx: _Context, config: Config) -> None:
    """What the ``appservice`` section's keys cannot check alone: the tokens come in pairs, the sender is the bot."""
    section = config.appservice
    if section is None:
        return
    if (section.as_token is None) != (section.hs_token is None):
        missing = "appservice.hs_token" if section.hs_token is None else "appservice.as_token"
        raise ctx.error(
            "set both appservice.as_token and appservice.hs_token, or neither (then `ratchet appservice "
            "registration` generates them into appservice.tokens_file)",
            key=missing,
        )
    if section.as_token is not None and section.as_token == section.hs_token:
        raise ctx.error("appservice.as_token and appservice.hs_token must differ", key="appservice.hs_token")
    localpart = config.user_id[1:].split(":", 1)[0]
    if section.sender_localpart is not None and section.sender_localpart != localpart:
        raise ctx.error(
            f"appservice.sender_localpart is {section.sender_localpart!r} but user_id's localpart is {localpart!r}; "
            "the bot is the appservice's sender: make them the same (or leave sender_localpart out)",
            key="appservice.sender_localpart",
        )
    if section.ghost_prefix is not None and localpart.startswith(section.ghost_prefix):
        raise ctx.error(
            f"the bot's own localpart {localpart!r} starts with appservice.ghost_prefix {section.ghost_prefix!r}: "
            "the bot would be one of its own ghosts; choose another prefix",
            key="appservice.ghost_prefix",
        )


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Parse and validate configuration ``text``; raise :class:`ConfigError` on any problem.

    ``source`` names the text in error messages and becomes :attr:`Config.source`; relative
    paths are resolved against ``base_dir`` (default: the current directory); ``${VAR}``
    references and the ``RATCHET_PICKLE_KEY`` fallback come from ``environ`` (default:
    ``os.environ``).
    """
    ctx = _Context(
        source=source,
        base_dir=Path(os.path.abspath(base_dir if base_dir is not None else os.getcwd())),
        environ=os.environ if environ is None else environ,
    )
    try:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise _syntax_error(source, exc, text) from None
        if root is None or _is_null(root):
            raise ConfigError(
                "the file is empty; expected a mapping of keys to values, starting with homeserver and user_id",
                file=source,
            )
        if not isinstance(root, MappingNode):
            got = _describe_node(ctx, root, "")
            message = f"the top level must be a mapping of keys to values, got {got}"
            raise ctx.error(message, key=None, node=root)
        config = _build_section(ctx, Config, root, "")
        _check_appservice(ctx, config)
    except RecursionError:
        raise ConfigError("the document is nested too deeply", file=source) from None
    return dataclasses.replace(config, source=source, plugin_lines=ctx.lines)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``; raise :class:`ConfigError` on any problem.

    Relative paths inside the file are resolved against the file's directory. ``${VAR}``
    references and the ``RATCHET_PICKLE_KEY`` fallback come from ``environ`` (default:
    ``os.environ``).
    """
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the config file: {reason}", file=name) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            file=name,
            line=data.count(b"\n", 0, exc.start) + 1,
        ) from None
    base_dir = Path(os.path.abspath(name)).parent
    return parse_config(text, source=name, base_dir=base_dir, environ=environ)


def reread_plugin_options(config: Config, plugin: str) -> dict[str, Any] | None:
    """``plugin``'s options from the config file as it is now (a reload picks up edits); None if the config was not
    loaded from a file. Raises :class:`ConfigError` if the file has an error now."""
    if not config.source:
        return None
    return load_config(config.source).plugins.get(plugin)
