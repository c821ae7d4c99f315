"""Protection cases, sans I/O: what a case holds and the message moderators see.

A case is opened the first time a protection acts against a user in a room (or against a room, for a join wave) and
updated while it stays open. It holds only metadata: which protection, what it counted (``"31 messages in 4.2 s"``),
the events' ids and the actions taken, each with what undoing it needs. Never a message body: protections do not read
them.

Everything in the message that came from a member (user ids, room names) is HTML-escaped and shown as code.
"""

from __future__ import annotations

import html
import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Action", "ProtectionCase", "case_message", "new_case_id"]

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
#: The most facts and actions a case keeps (a long flood updates one case; its oldest lines go).
MAX_LINES = 20


def new_case_id() -> str:
    """A short, unguessable case id such as ``P-7K2Q9P`` (``R-`` ids are the report plugin's)."""
    return "P-" + "".join(secrets.choice(_ALPHABET) for _ in range(6))


@dataclass
class Action:
    """One action a protection took (or, in dry-run, would have taken)."""

    action: str
    room_id: str
    ok: bool
    detail: str = ""
    #: What undoing it needs: ``{"level": previous power level}`` for a mute, ``{"join_rule": ...}`` for a closed
    #: room; empty when there is nothing to undo (a notice, a redaction, a kick).
    undo: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    undone: bool = False


@dataclass
class ProtectionCase:
    """One case: a protection (or a policy list) against one user (or one room) in one room."""

    case_id: str
    protection: str
    room_id: str
    subject: str  # a user id, or the room id for room-wide protections
    created: float
    facts: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    status: str = "open"

    def add_fact(self, fact: str) -> None:
        self.facts.append(fact)
        del self.facts[:-MAX_LINES]

    def add_action(self, action: Action) -> None:
        self.actions.append(action)
        del self.actions[:-MAX_LINES]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProtectionCase:
        data = json.loads(text)
        data["actions"] = [Action(**a) for a in data.get("actions", [])]
        return cls(**data)


def _code(text: str) -> str:
    return f"<code>{html.escape(' '.join(str(text).split()), quote=False)}</code>"


def case_message(case: ProtectionCase, *, prefix: str = "!") -> tuple[str, str]:
    """The case as ``(plain body, HTML)``: metadata only, every member-controlled string escaped as code."""
    dry = any(a.dry_run for a in case.actions)
    head = f"Case {case.case_id} ({case.status}{', dry run: nothing was changed' if dry else ''})"
    body = [head, f"- protection: {case.protection}", f"- room: {case.room_id}", f"- subject: {case.subject}"]
    markup = [
        f"<strong>{html.escape(head)}</strong>",
        f"- protection: {_code(case.protection)}",
        f"- room: {_code(case.room_id)}",
        f"- subject: {_code(case.subject)}",
    ]
    if case.facts:
        body.append("What triggered it (metadata only):")
        markup.append("What triggered it (metadata only):")
        for fact in case.facts:
            body.append(f"  - {fact}")
            markup.append(f"&nbsp;&nbsp;- {_code(fact)}")
    if case.actions:
        body.append("Actions:")
        markup.append("Actions:")
        for a in case.actions:
            state = "would " + a.action if a.dry_run else a.action + ("" if a.ok else " FAILED")
            state += " (undone)" if a.undone else ""
            line = f"{state} in {a.room_id}" + (f": {a.detail}" if a.detail else "")
            body.append(f"  - {line}")
            markup.append(f"&nbsp;&nbsp;- {_code(line)}")
    usage = f"{prefix}case {case.case_id} undo|dismiss|ban [reason]"
    body.append(f"Act with {usage}.")
    markup.append(f"Act with {_code(usage)}.")
    return "\n".join(body), "<br>".join(markup)
