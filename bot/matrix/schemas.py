"""Fast, equivalent JSON-schema checks for nio's event and response parsing.

matrix-nio validates every response and every event it parses against a JSON schema with ``jsonschema``, and it
builds a new validator object for every single check (``nio.schemas.validate_json``): for a Megolm-encrypted room
message that is five or six validators, and it was about 85% of nio's CPU time per event. The checks themselves
matter (they are what turns a malformed event into a ``BadEvent`` instead of a crash), so this module keeps them and
only makes them cheap.

:func:`install` replaces ``validate_json`` in nio's modules by :func:`validate_json`, which runs a check compiled
once per schema into plain Python closures. The compiled check mirrors ``jsonschema``'s Draft 4 semantics as nio
configures them (nio's validator also fills in ``default`` values, and its format checker knows ``user_id`` and
``http_url``), keyword by keyword and in the same order, so it has the same side effects on the instance. It is
only trusted to *accept*: whenever it rejects an instance, or meets anything it is unsure about (an exception, a
schema construct it does not compile), nio's own ``validate_json`` runs on the instance and decides, raising the very
same ``ValidationError`` (or whatever else nio would raise). So for an invalid event nio's behaviour, message and log
line are unchanged by construction, and for a valid one the instance ends up exactly as nio would leave it (same
defaults, same objects). ``tests/test_fastpath.py`` checks both against nio on every schema nio has.

Only schemas that are attributes of ``nio.schemas.Schemas`` are compiled (at install time); any other schema goes
to nio's function unchanged.

Why our own compiler and not ``fastjsonschema`` (issue 11, item 7, measured with nio 0.26 / fastjsonschema 2.22):
fastjsonschema does not give nio's results. It refuses to compile one of nio's schemas (``delete_devices``, which puts a
``required`` list among its ``properties``, where Draft 4 expects a schema; jsonschema ignores it), and its ``default``
support differs from nio's ``extend_with_default`` in ways nio's parsers depend on: it writes a fresh copy of the
default in place of a missing property and does not validate it, so nested defaults are not filled in (nio turns a
missing ``rooms`` into ``{"invite": {}, "join": {}, "leave": {}}``; fastjsonschema leaves ``{}``, and ``SyncResponse``
then breaks), and it never shares the schema's default objects as nio does. It is also slower here: 7.4 µs against
2.7 µs for the three checks of a Megolm event, 13.7 µs against 8.2 µs for a sync response (nio's own:
114 µs and 340 µs).

``install()`` is idempotent; :func:`bot.matrix.client.make_client` calls it. ``uninstall()`` restores nio.

It is the one process-wide change Ratchet makes to nio, and it cannot be made per client: nio 0.26 looks
``validate_json`` up as a global of the module that calls it, and nothing of a client reaches those calls. The call
sites are ``nio.responses`` (the ``verify`` decorator on 36 ``from_dict`` classmethods, and 12 direct calls in
``from_dict`` methods and the sync helpers ``_get_timeline``/``_get_state``/``_get_invite_state``), ``nio.events.misc``
(the ``verify``/``verify_or_none`` decorators, applied at import time to 57 ``from_dict`` and ``parse_*`` classmethods
of the event classes, and ``validate_or_badevent``, called by three message classes and by Megolm decryption in
``nio.crypto.olm_machine``) and ``nio.crypto.olm_machine`` itself (``Olm.decrypt`` and ``Olm.import_keys_static``). The
decorators' closures hold only the schema and the error class. A client's only handle is the response class it passes to
``_send`` (``RatchetClient`` already substitutes some): below it, ``SyncResponse.from_dict`` goes through module-level
helpers to the classmethods ``Event.parse_event``, ``ToDeviceEvent.parse_event`` and ``AccountDataEvent.parse_event``,
which pick nio's own event classes from their own tables; decryption goes from the client's ``Olm`` through
``validate_or_badevent`` to those classmethods. Making the checks per client would mean substituting every one of those
~100 parse functions, that is, forking nio's parsing; making a patched global consult a per-client setting would still
be a process-wide patch. So :func:`install` assigns the module globals by name (a grep for assignments to ``nio.*``
finds exactly these lines), and ``tests/test_fastpath.py`` checks that no other nio module binds ``validate_json``, so a
nio upgrade that adds a call site is noticed.
"""

from __future__ import annotations

import numbers
import re
import threading
from collections.abc import Callable
from typing import Any

import nio.schemas as nio_schemas
from jsonschema._utils import equal as _json_equal

__all__ = ["compile_schema", "install", "installed", "stats", "uninstall", "validate_json"]

Check = Callable[[Any], bool]

_MISSING = object()


class CannotCompile(Exception):
    """The schema uses something the compiler does not mirror exactly; nio's validator handles it."""


class _Fallback(Exception):
    """Raised inside a compiled check when only nio's validator can say what happens."""


# -- types (Draft 4: an integer is an int that is not a bool; 1.0 is a number, not an integer) ----------------------


def _is_number(instance: Any) -> bool:
    cls = instance.__class__
    if cls is int or cls is float:
        return True
    return isinstance(instance, numbers.Number) and not isinstance(instance, bool)




def _ensure_list(thing: Any) -> Any:
    # jsonschema._utils.ensure_list: a lone string becomes a one-item list, everything else is used as it is
    return [thing] if isinstance(thing, str) else thing


# -- the compiler: one generated Python function per schema --------------------------------------------------------

#: Draft 4 type names -> a Python test of the variable ``{v}``
_TYPE_TESTS = {
    "array": "isinstance({v}, list)",
    "boolean": "isinstance({v}, bool)",
    "integer": "(isinstance({v}, int) and not isinstance({v}, bool))",
    "null": "{v} is None",
    "number": "_is_number({v})",
    "object": "isinstance({v}, dict)",
    "string": "isinstance({v}, str)",
}
#: Nesting depth after which a sub-schema becomes a function of its own (keeps the generated code shallow).
_MAX_INLINE_DEPTH = 8


def _format_check(func: Callable[[Any], Any], raises: Any) -> Check:
    def check(instance: Any) -> bool:
        try:
            result = func(instance)
        except raises:
            return False
        return bool(result)

    return check


def _enum_check(enums: Any) -> Check:
    return lambda instance: not all(not _json_equal(each, instance) for each in enums)


class _Compiler:
    """Generates the source of a check function per schema, mirroring jsonschema's Draft 4 keyword functions (with
    nio's defaults) keyword by keyword, in schema order: ``return False`` where jsonschema yields its first error,
    ``raise _Fallback`` where it would raise, the same ``setdefault`` calls at the same points."""

    def __init__(self, validator_cls: Any, format_checker: Any) -> None:
        self.keywords = set(validator_cls.VALIDATORS)
        self.format_checker = format_checker
        self.namespace: dict[str, Any] = {
            "_Fallback": _Fallback,
            "_MISSING": _MISSING,
            "_is_number": _is_number,
        }
        self._functions: dict[int, str] = {}
        self._sources: list[str] = []
        self._keep: list[Any] = []  # the ids used as memo keys stay valid while compiling
        self._count = 0

    def compile(self, schema: Any) -> Check:
        name = self.function(schema)
        code = compile("\n\n".join(self._sources), "<bot.matrix.schemas generated>", "exec")
        exec(code, self.namespace)  # our own generated code, from nio's schema constants
        return self.namespace[name]

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: Any, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.namespace[name] = value
        return name

    def function(self, schema: Any) -> str:
        """The name of a generated ``def f(v0) -> bool`` checking ``schema``."""
        found = self._functions.get(id(schema))
        if found is not None:
            return found
        self._keep.append(schema)
        name = self._name("check_")
        self._functions[id(schema)] = name
        lines = [f"def {name}(v0):"]
        self.emit(schema, 0, 1, lines)
        lines.append("    return True")
        self._sources.append("\n".join(lines))
        return name

    def emit(self, schema: Any, depth: int, indent: int, lines: list[str]) -> None:
        """Statements checking variable ``v<depth>`` against ``schema``."""
        pad = "    " * indent
        if schema is True:
            return
        if schema is False:
            lines.append(f"{pad}return False")
            return
        if not isinstance(schema, dict):
            lines.append(f"{pad}raise _Fallback")  # jsonschema fails with an AttributeError/TypeError here
            return
        if "$ref" in schema:
            raise CannotCompile("$ref")
        if depth >= _MAX_INLINE_DEPTH:
            lines.append(f"{pad}if not {self.function(schema)}(v{depth}): return False")
            return
        for keyword, value in schema.items():
            if keyword not in self.keywords:
                continue  # unknown keywords (including "const" and "default" in Draft 4) are ignored
            emitter = getattr(self, "_k_" + keyword, None)
            if emitter is None:
                raise CannotCompile(keyword)
            emitter(value, schema, depth, indent, lines)

    def _block(self, depth: int, indent: int, lines: list[str], sub: Any) -> None:
        """Emit ``sub`` for ``v<depth>`` as the body of the block just opened (``pass`` if it checks nothing)."""
        mark = len(lines)
        self.emit(sub, depth, indent, lines)
        if len(lines) == mark:
            lines.append("    " * indent + "pass")

    # Each _k_<keyword> mirrors jsonschema's function for that keyword.

    def _k_type(self, types: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        try:
            tests = [_TYPE_TESTS[t].format(v=f"v{depth}") for t in _ensure_list(types)]
        except (KeyError, TypeError) as exc:
            raise CannotCompile(f"type {types!r}") from exc
        lines.append(f"{'    ' * indent}if not ({' or '.join(tests) or 'False'}): return False")

    def _k_properties(self, properties: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        if not isinstance(properties, dict):
            raise CannotCompile("properties that are not an object")
        pad, v, w = "    " * indent, f"v{depth}", f"v{depth + 1}"
        # nio's extend_with_default: first setdefault() every property whose sub-schema has "default", on whatever
        # the instance is (a non-object raises AttributeError: nio's validator decides then)
        defaults = []
        for name, sub in properties.items():
            try:
                has_default = "default" in sub
            except TypeError:
                lines.append(f"{pad}raise _Fallback")
                return
            if has_default:
                if not isinstance(sub, dict):
                    lines.append(f"{pad}raise _Fallback")
                    return
                defaults.append((name, sub))
        if defaults:
            lines.append(f"{pad}if not isinstance({v}, dict): raise _Fallback")
            for name, sub in defaults:
                lines.append(f"{pad}{v}.setdefault({name!r}, {self.const(sub, 's')}['default'])")
            inner = indent
        else:
            lines.append(f"{pad}if isinstance({v}, dict):")
            inner = indent + 1
        ipad = "    " * inner
        mark = len(lines)
        for name, sub in properties.items():
            before = len(lines)
            lines.append(f"{ipad}{w} = {v}.get({name!r}, _MISSING)")
            lines.append(f"{ipad}if {w} is not _MISSING:")
            body = len(lines)
            self.emit(sub, depth + 1, inner + 1, lines)
            if len(lines) == body:
                del lines[before:]  # nothing to check for this property
        if not defaults and len(lines) == mark:
            lines.append(f"{ipad}pass")

    def _k_required(self, required: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        if not isinstance(required, list):
            raise CannotCompile("required that is not a list")
        if required:
            v = f"v{depth}"
            missing = " or ".join(f"{name!r} not in {v}" for name in required)
            lines.append(f"{'    ' * indent}if isinstance({v}, dict) and ({missing}): return False")

    def _k_enum(self, enums: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        v, pad = f"v{depth}", "    " * indent
        if isinstance(enums, list) and enums and all(isinstance(e, str) for e in enums):
            allowed = self.const(frozenset(enums), "e")
            lines.append(f"{pad}if not (isinstance({v}, str) and {v} in {allowed}): return False")
        else:
            lines.append(f"{pad}if not {self.const(_enum_check(enums), 'e')}({v}): return False")

    def _k_format(self, fmt: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        checker = self.format_checker
        entry = checker.checkers.get(fmt) if checker is not None else None
        if entry is None:
            return  # FormatChecker.check ignores formats it does not know
        check = self.const(_format_check(*entry), "fmt")
        lines.append(f"{'    ' * indent}if not {check}(v{depth}): return False")

    def _k_pattern(self, pattern: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        search = self.const(re.compile(pattern).search, "p")
        v = f"v{depth}"
        lines.append(f"{'    ' * indent}if isinstance({v}, str) and {search}({v}) is None: return False")

    def _k_patternProperties(self, pattern_props: Any, schema: dict, depth: int, indent: int,
                             lines: list[str]) -> None:
        if not isinstance(pattern_props, dict):
            raise CannotCompile("patternProperties that are not an object")
        pad, v, w, k = "    " * indent, f"v{depth}", f"v{depth + 1}", f"k{depth}"
        lines.append(f"{pad}if isinstance({v}, dict):")
        for pattern, sub in pattern_props.items():  # jsonschema: patterns outside, the instance's items inside
            search = self.const(re.compile(pattern).search, "p")
            lines.append(f"{pad}    for {k}, {w} in {v}.items():")
            lines.append(f"{pad}        if {search}({k}):")
            self._block(depth + 1, indent + 3, lines, sub)
        if not pattern_props:
            lines.append(f"{pad}    pass")

    def _k_additionalProperties(self, extra: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        if isinstance(extra, dict):
            # jsonschema walks the extra properties in set order: only side-effect-free sub-schemas are mirrored
            if _has_side_effects(extra):
                raise CannotCompile("additionalProperties with defaults")
            sub: str | None = self.function(extra)
        elif not extra:
            sub = None  # jsonschema: "elif not aP and extras" is an error
        else:
            return
        pad, v, k = "    " * indent, f"v{depth}", f"k{depth}"
        known = self.const(schema.get("properties", {}), "props")
        patterns = "|".join(schema.get("patternProperties", {}))
        lines.append(f"{pad}if isinstance({v}, dict):")
        lines.append(f"{pad}    for {k} in {v}:")
        cond = f"{k} not in {known}"
        if patterns:
            cond += f" and {self.const(re.compile(patterns).search, 'p')}({k}) is None"
        lines.append(f"{pad}        if {cond}:")
        if sub is None:
            lines.append(f"{pad}            return False")
        else:
            lines.append(f"{pad}            if not {sub}({v}[{k}]): return False")

    def _k_items(self, items: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        pad, v, w = "    " * indent, f"v{depth}", f"v{depth + 1}"
        if isinstance(items, dict):
            lines.append(f"{pad}if isinstance({v}, list):")
            lines.append(f"{pad}    for {w} in {v}:")
            self._block(depth + 1, indent + 2, lines, items)
        elif isinstance(items, list):
            lines.append(f"{pad}if isinstance({v}, list):")
            lines.append(f"{pad}    pass")
            for index, sub in enumerate(items):
                lines.append(f"{pad}    if len({v}) > {index}:")
                lines.append(f"{pad}        {w} = {v}[{index}]")
                self._block(depth + 1, indent + 2, lines, sub)
        else:
            raise CannotCompile("items that are neither an object nor an array")

    def _k_minimum(self, minimum: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        op = "<=" if schema.get("exclusiveMinimum", False) else "<"
        v = f"v{depth}"
        lines.append(f"{'    ' * indent}if _is_number({v}) and {v} {op} {self.const(minimum, 'n')}: return False")

    def _k_maximum(self, maximum: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        op = ">=" if schema.get("exclusiveMaximum", False) else ">"
        v = f"v{depth}"
        lines.append(f"{'    ' * indent}if _is_number({v}) and {v} {op} {self.const(maximum, 'n')}: return False")

    def _k_not(self, not_schema: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        # jsonschema: evolve(schema=not_schema).is_valid(instance), which stops at the first error like we do
        lines.append(f"{'    ' * indent}if {self.function(not_schema)}(v{depth}): return False")

    def _k_allOf(self, subschemas: Any, schema: dict, depth: int, indent: int, lines: list[str]) -> None:
        if not isinstance(subschemas, list):
            raise CannotCompile("allOf that is not a list")
        for sub in subschemas:
            self.emit(sub, depth, indent, lines)


def _has_side_effects(schema: Any) -> bool:
    """Whether validating against ``schema`` could fill in defaults (nio's validator does)."""
    if isinstance(schema, dict):
        if "default" in schema:
            return True
        return any(_has_side_effects(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_side_effects(v) for v in schema)
    return False


def compile_schema(schema: Any) -> Check | None:
    """A compiled check for ``schema`` (True: nio's validator accepts it, with the same side effects), or None."""
    compiler = _Compiler(nio_schemas.Validator, nio_schemas.Checker)
    try:
        return compiler.compile(schema)
    except (CannotCompile, re.error, SyntaxError, RecursionError, ValueError):
        return None


# -- the replacement for nio.schemas.validate_json ------------------------------------------------------------------

_original_validate_json: Callable[[Any, Any], None] = nio_schemas.validate_json
# id(schema) -> (schema, check): the schema is kept so that its id cannot be reused by another object
_compiled: dict[int, tuple[Any, Check]] = {}
_installed = False
_lock = threading.Lock()


class _Stats:
    """How often the compiled checks decided alone (``fast``) or handed over to nio (``slow``)."""

    def __init__(self) -> None:
        self.fast = 0
        self.slow = 0

    def reset(self) -> None:
        self.fast = 0
        self.slow = 0


stats = _Stats()


def validate_json(instance: Any, schema: Any) -> None:
    """Drop-in replacement for ``nio.schemas.validate_json``: same result, same exceptions, same side effects."""
    entry = _compiled.get(id(schema))
    if entry is not None and entry[0] is schema:
        try:
            if entry[1](instance):
                stats.fast += 1
                return
        except Exception:
            pass
    stats.slow += 1
    _original_validate_json(instance, schema)


def _schema_objects() -> list[Any]:
    found = []
    for name, value in vars(nio_schemas.Schemas).items():
        if not name.startswith("_") and isinstance(value, dict):
            found.append(value)
    return found


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed


def install() -> None:
    """Compile nio's schemas and make nio use :func:`validate_json` (idempotent, process-wide; see the docstring)."""
    global _installed
    with _lock:
        if _installed:
            return
        if not _compiled:  # compiled once per process; uninstall() keeps them for the next install()
            for schema in _schema_objects():
                check = compile_schema(schema)
                if check is not None:
                    _compiled[id(schema)] = (schema, check)
        _assign(validate_json)
        _installed = True


def uninstall() -> None:
    """Give nio its own ``validate_json`` back."""
    global _installed
    with _lock:
        _assign(_original_validate_json)
        _installed = False


def _assign(function: Callable[[Any, Any], None]) -> None:
    import nio
    import nio.crypto.olm_machine
    import nio.events
    import nio.events.misc
    import nio.responses

    # the three modules nio calls it from (as their global ``validate_json``) ...
    nio.responses.validate_json = function
    nio.events.misc.validate_json = function
    nio.crypto.olm_machine.validate_json = function
    # ... its definition, and the two packages that re-export it with ``import *``, for callers from outside nio
    nio.schemas.validate_json = function
    nio.events.validate_json = function
    nio.validate_json = function  # type: ignore[attr-defined]
