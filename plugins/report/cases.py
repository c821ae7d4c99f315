"""The report plugin's pure core: consent prompts, their state machine, cases and what each party is shown.

No I/O and no clock of its own (``now`` is always passed in), so every rule is tested directly:

* a :class:`Draft` is what the reporter is asked about; nothing leaves the bot until it is ``consented``;
* answers (``yes``, ``yes mods``, ``no``, ``context``) move it through :func:`answer`; an unanswered draft expires;
* a :class:`Case` is what moderators see; reports of the same event by several members merge into one case;
* :class:`RateLimiter` caps reports per reporter per hour.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

__all__ = [
    "Answer",
    "Case",
    "Draft",
    "DraftState",
    "RateLimiter",
    "answer",
    "case_message",
    "consent_prompt",
    "new_case_id",
    "parse_answer",
]


class DraftState(enum.Enum):
    """Where a consent prompt stands."""

    PROMPTED = "prompted"
    CONSENTED = "consented"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Answer(enum.Enum):
    """What the reporter can answer."""

    YES = "yes"  # send to every destination listed
    YES_MODS = "yes mods"  # send to the room's moderators only (the homeserver gets no decrypted text)
    NO = "no"
    CONTEXT = "context"  # toggle the offered context messages


_WORDS = {
    "yes": Answer.YES, "y": Answer.YES, "✅": Answer.YES, "send": Answer.YES,
    "yes mods": Answer.YES_MODS, "mods": Answer.YES_MODS, "yes moderators": Answer.YES_MODS,
    "no": Answer.NO, "n": Answer.NO, "❌": Answer.NO, "cancel": Answer.NO,
    "context": Answer.CONTEXT,
}


def parse_answer(text: str) -> Answer | None:
    """The answer in a DM reply or reaction key, or None if it is not one."""
    return _WORDS.get(" ".join(text.strip().lower().split()))


@dataclass(frozen=True)
class Draft:
    """A report waiting for the reporter's consent."""

    draft_id: str
    reporter: str
    room_id: str
    event_id: str
    sender: str
    text: str
    reason: str
    created: float
    expires: float
    context_offered: int
    context_included: bool = False
    state: DraftState = DraftState.PROMPTED
    homeserver_consent: bool = False

    @property
    def open(self) -> bool:
        """True while the reporter can still answer."""
        return self.state is DraftState.PROMPTED


def answer(draft: Draft, reply: Answer, now: float, *, homeserver_destination: bool) -> Draft:
    """Apply the reporter's answer; answers to a closed or expired draft change nothing."""
    if not draft.open:
        return draft
    if now >= draft.expires:
        return replace(draft, state=DraftState.EXPIRED)
    if reply is Answer.CONTEXT:
        if draft.context_offered == 0:
            return draft
        return replace(draft, context_included=not draft.context_included)
    if reply is Answer.NO:
        return replace(draft, state=DraftState.CANCELLED)
    return replace(
        draft,
        state=DraftState.CONSENTED,
        homeserver_consent=homeserver_destination and reply is Answer.YES,
    )


def expire(draft: Draft, now: float) -> Draft:
    """The draft as it stands at ``now`` (expired if unanswered too long)."""
    if draft.open and now >= draft.expires:
        return replace(draft, state=DraftState.EXPIRED)
    return draft


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in (text or "(no text)").splitlines() or [""])


def consent_prompt(
    draft: Draft,
    *,
    room_name: str,
    to_moderators: bool,
    to_homeserver: bool,
    anonymous: bool,
    retention_days: int,
    context_preview: Iterable[tuple[str, str]] = (),
) -> str:
    """The Markdown consent prompt: exactly what would leave the room, to whom, for how long, and how to answer."""
    recipients = []
    if to_moderators:
        recipients.append("the moderators of the room (in their encrypted moderation room)")
    if to_homeserver:
        recipients.append("your homeserver's administrators (a report with the text as the reason)")
    lines = [
        f"**You are reporting a message** in {room_name} (report `{draft.draft_id}`).",
        "",
        f"Message from {draft.sender}, exactly as it would be shared:",
        _quote(draft.text),
        "",
        f"Your reason: {draft.reason or '(none given)'}",
        "Who receives it: " + ("; ".join(recipients) or "nobody (reporting is not configured)"),
        "Your identity: " + ("**not** shared (anonymous)" if anonymous else f"shared ({draft.reporter})"),
        f"Kept for {retention_days} days, then deleted; withdraw any time with `!report withdraw ID`.",
        "A signed copy of the event (its ciphertext and this text) goes with it so moderators can check it; "
        "the message's decryption key is not shared.",
    ]
    preview = list(context_preview)
    if draft.context_offered and preview:
        state = "included" if draft.context_included else "not included"
        lines += ["", f"The {len(preview)} message(s) before it are **{state}** (answer `context` to change that):"]
        lines += [f"> {sender}: {text}" for sender, text in preview]
    lines += [
        "",
        "Answer **yes** to send" + (", **yes mods** to send to the moderators only" if to_homeserver else "")
        + ", or **no** to cancel (or react ✅ / ❌).",
        "Nothing has been sent yet. Without an answer this expires and nothing is sent.",
    ]
    return "\n".join(lines)


def new_case_id() -> str:
    """A short, unguessable case id such as ``R-7K2Q9P``."""
    alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    return "R-" + "".join(secrets.choice(alphabet) for _ in range(6))


@dataclass
class Case:
    """What moderators see about one reported event (several reporters merge into one case)."""

    case_id: str
    room_id: str
    event_id: str
    sender: str
    sender_device: str | None
    cross_signed: bool | None
    text: str
    sent_at: int
    reasons: list[str] = field(default_factory=list)
    reporters: list[str] = field(default_factory=list)  # user ids, or "anonymous"
    context: list[tuple[str, str]] = field(default_factory=list)
    status: str = "open"

    @property
    def count(self) -> int:
        """Number of reporters."""
        return len(self.reporters)


def case_message(case: Case, *, room_name: str, prefix: str = "!") -> str:
    """The Markdown message for the moderation room."""
    device = case.sender_device or "unknown (unencrypted event)"
    trust = {True: "cross-signed by the sender", False: "NOT cross-signed by the sender", None: "unknown"}
    when = case.sent_at
    lines = [
        f"**Case {case.case_id}** ({case.status}): {case.count} report(s)",
        f"- room: {room_name} (`{case.room_id}`)",
        f"- sender: {case.sender}, device `{device}` ({trust[case.cross_signed]})",
        f"- event: `{case.event_id}`, sent at {when} (ms since epoch)",
        "- reasons: " + ("; ".join(r for r in case.reasons if r) or "(none given)"),
        "- reporters: " + ", ".join(case.reporters),
        "",
        _quote(case.text),
    ]
    if case.context:
        lines += ["", "Context (chosen by the reporter):"] + [f"> {s}: {t}" for s, t in case.context]
    lines += [
        "",
        f"Act with `{prefix}case {case.case_id} redact|kick|ban|dismiss [reason]`.",
    ]
    return "\n".join(lines)


class RateLimiter:
    """At most ``limit`` events per key in any sliding ``window`` seconds."""

    def __init__(self, limit: int, window: float = 3600.0) -> None:
        self.limit = limit
        self.window = window
        self._seen: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        """Record an attempt at ``now`` and say whether it is within the limit."""
        seen = self._seen.setdefault(key, deque())
        while seen and now - seen[0] >= self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            return False
        seen.append(now)
        return True
