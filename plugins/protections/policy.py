"""Moderation policy lists, sans I/O: parsing ``m.policy.rule.user|room|server`` state events, matching their globs,
refusing globs that would match everyone, and deciding who is banned where.

A policy list is a room whose state holds rules (spec: "Moderation policy lists"): the state key is the rule's name
within the list, the content ``{"entity": GLOB, "recommendation": "m.ban", "reason": ...}``. A rule is removed by
replacing its state with empty (or entity-less) content. ``*`` matches any run of characters, ``?`` one character.

:class:`PolicySet` holds every list's rules; :meth:`PolicySet.apply` takes one state event and returns what changed
(a rule added, replaced, removed, or refused with the reason), which the plugin turns into bans, unbans and case notes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "KINDS",
    "Change",
    "PolicySet",
    "Rule",
    "compile_glob",
    "glob_matches",
    "kind_of",
    "server_acl",
    "spared_servers",
    "too_broad",
]

#: The state types of each rule kind: the spec's, and the older ones lists still carry.
KINDS: dict[str, tuple[str, ...]] = {
    "user": ("m.policy.rule.user", "m.room.rule.user", "org.matrix.mjolnir.rule.user"),
    "room": ("m.policy.rule.room", "m.room.rule.room", "org.matrix.mjolnir.rule.room"),
    "server": ("m.policy.rule.server", "m.room.rule.server", "org.matrix.mjolnir.rule.server"),
}
_KIND_OF = {t: kind for kind, types in KINDS.items() for t in types}
#: Recommendations that mean "ban" (the spec's and Mjolnir's older spelling).
BAN = ("m.ban", "org.matrix.mjolnir.ban")
#: Fewest literal (non-wildcard) characters a glob must have, besides the sigil and ':'.
MIN_LITERAL = 3
#: Ids a too-broad glob would match: if a glob matches any of these, it would match (nearly) everyone.
_PROBES = {
    "user": ("@a:b", "@x9q7zk2w:zz.invalid", "@ratchet-probe-user_123:matrix.example.org"),
    "room": ("!a:b", "!x9q7zk2wPQ:zz.invalid", "#a:b"),
    "server": ("b", "zz.invalid", "matrix.example.org", "127.0.0.1:8448"),
}


def kind_of(event_type: str) -> str | None:
    """``user``, ``room`` or ``server`` for a rule's state type, else None."""
    return _KIND_OF.get(event_type)


@lru_cache(maxsize=4096)
def compile_glob(glob: str) -> re.Pattern[str]:
    """A Matrix glob as an anchored, case-insensitive regular expression."""
    parts = []
    for char in glob:
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def glob_matches(glob: str, value: str) -> bool:
    """Whether ``value`` matches ``glob`` as a whole."""
    return compile_glob(glob).fullmatch(value) is not None


def too_broad(kind: str, glob: str) -> str | None:
    """Why ``glob`` would match (nearly) everyone, or None: fewer than :data:`MIN_LITERAL` literal characters, or it
    matches ids that have nothing in common (``*``, ``@*:*``, ``@?*``, ``*.*``...)."""
    literal = re.sub(r"[*?@!#:]", "", glob)
    if len(literal) < MIN_LITERAL:
        return f"{glob!r} has fewer than {MIN_LITERAL} literal characters: it would match (nearly) everyone"
    for probe in _PROBES.get(kind, ()):
        if glob_matches(glob, probe):
            return f"{glob!r} matches unrelated ids such as {probe!r}: it would match (nearly) everyone"
    return None


@dataclass(frozen=True)
class Rule:
    """One rule of one list."""

    list_id: str
    kind: str
    state_key: str
    entity: str
    recommendation: str
    reason: str = ""

    @property
    def is_ban(self) -> bool:
        return self.recommendation in BAN

    @property
    def is_glob(self) -> bool:
        return "*" in self.entity or "?" in self.entity

    def matches(self, value: str) -> bool:
        return glob_matches(self.entity, value)


@dataclass(frozen=True)
class Change:
    """What one state event did to the rules: ``added`` (a new or replaced rule), ``removed`` (the rule that was there),
    or ``refused`` with the reason (the previous rule, if any, is removed too: a list that says something new about a
    key no longer says the old thing)."""

    list_id: str
    kind: str
    state_key: str
    added: Rule | None = None
    removed: Rule | None = None
    refused: str | None = None


@dataclass
class PolicySet:
    """Every subscribed list's rules, by (list, kind, state key)."""

    rules: dict[tuple[str, str, str], Rule] = field(default_factory=dict)

    def apply(self, list_id: str, event: Mapping[str, Any]) -> Change | None:
        """Take one state event of list ``list_id`` (its JSON); None if it is not a rule event or changes nothing."""
        kind = kind_of(str(event.get("type", "")))
        state_key = event.get("state_key")
        if kind is None or not isinstance(state_key, str):
            return None
        key = (list_id, kind, state_key)
        old = self.rules.get(key)
        content = event.get("content")
        if not isinstance(content, Mapping) or not content or "entity" not in content:
            if old is None:
                return None
            del self.rules[key]
            return Change(list_id, kind, state_key, removed=old)
        rule, why = parse_rule(list_id, kind, state_key, content)
        if rule is None:
            if old is not None:
                del self.rules[key]
            return Change(list_id, kind, state_key, removed=old, refused=why)
        if old == rule:
            return None
        self.rules[key] = rule
        return Change(list_id, kind, state_key, added=rule, removed=old)

    def load(self, list_id: str, state: Iterable[Mapping[str, Any]]) -> list[Change]:
        """Replace list ``list_id``'s rules by those in ``state`` (a room's full state); the changes, removals
        included."""
        seen: set[tuple[str, str, str]] = set()
        changes = []
        for event in state:
            kind = kind_of(str(event.get("type", "")))
            if kind is None or not isinstance(event.get("state_key"), str):
                continue
            seen.add((list_id, kind, event["state_key"]))
            change = self.apply(list_id, event)
            if change is not None:
                changes.append(change)
        for key in [k for k in self.rules if k[0] == list_id and k not in seen]:
            changes.append(Change(list_id, key[1], key[2], removed=self.rules.pop(key)))
        return changes

    def drop_list(self, list_id: str) -> list[Change]:
        """Forget a list (unsubscribed): its rules as removals."""
        keys = [k for k in self.rules if k[0] == list_id]
        return [Change(list_id, k[1], k[2], removed=self.rules.pop(k)) for k in keys]

    def bans_for(self, kind: str, value: str) -> list[Rule]:
        """The ban rules of ``kind`` that match ``value``."""
        return [r for r in self.rules.values() if r.kind == kind and r.is_ban and r.matches(value)]

    def server_bans(self) -> list[str]:
        """Every banned server glob, sorted."""
        return sorted({r.entity for r in self.rules.values() if r.kind == "server" and r.is_ban})


def parse_rule(list_id: str, kind: str, state_key: str, content: Mapping[str, Any]) -> tuple[Rule | None, str]:
    """A rule from its content, or None and why it is refused (malformed, too broad)."""
    entity = content.get("entity")
    recommendation = content.get("recommendation")
    reason = content.get("reason", "")
    if not isinstance(entity, str) or not entity.strip():
        return None, "malformed rule: entity is not a non-empty string"
    if not isinstance(recommendation, str) or not recommendation:
        return None, "malformed rule: recommendation is not a non-empty string"
    if len(entity) > 255:
        return None, "malformed rule: entity longer than 255 characters"
    if not isinstance(reason, str):
        reason = ""
    if kind == "user" and not (entity.startswith("@") or entity.startswith("*") or entity.startswith("?")):
        return None, f"malformed user rule: {entity[:80]!r} is not a user id or glob"
    broad = too_broad(kind, entity)
    if broad is not None:
        return None, "refused: " + broad
    return Rule(list_id, kind, state_key, entity, recommendation, reason[:500]), ""


def server_acl(
    current: Mapping[str, Any] | None, banned: Iterable[str], own_server: str | Iterable[str]
) -> dict[str, Any]:
    """The ``m.room.server_acl`` content that denies ``banned`` server globs, keeping the room's allow list and its
    other denials; ``own_server`` (the bot's, or several: the bot's and its admins') is never denied (a rule matching
    one is dropped)."""
    kept = [own_server] if isinstance(own_server, str) else list(own_server)
    current = current if isinstance(current, Mapping) else {}
    allow = current.get("allow")
    allow = [a for a in allow if isinstance(a, str)] if isinstance(allow, list) else ["*"]
    deny = [d for d in current.get("deny") or [] if isinstance(d, str)] if isinstance(current.get("deny"), list) else []
    for glob in banned:
        if glob not in deny and not any(glob_matches(glob, server) for server in kept):
            deny.append(glob)
    return {"allow": allow, "deny": deny, "allow_ip_literals": bool(current.get("allow_ip_literals", True))}


def spared_servers(banned: Iterable[str], kept: Iterable[str]) -> list[tuple[str, str]]:
    """``(glob, server)`` for each banned glob that matches a server never denied (the bot's, its admins')."""
    kept = list(kept)
    return [(glob, server) for glob in banned for server in kept if glob_matches(glob, server)]


def rule_state_key(entity: str) -> str:
    """The state key ``!ban`` writes a rule under (one per entity, so ``!unban`` finds it)."""
    return f"rule:{entity}"
