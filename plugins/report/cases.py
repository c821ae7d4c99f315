"""The report plugin's pure core: consent prompts, their state machine, cases and what each party is shown.

No I/O and no clock of its own (``now`` is always passed in), so every rule is tested directly:

* a :class:`Draft` is what the reporter is asked about; nothing leaves the bot until it is ``consented``;
* answers (``yes``, ``yes mods``, ``no``, ``context``) move it through :func:`answer`; an unanswered draft expires;
* a :class:`Case` is what moderators see; reports of the same event by several members merge into one case;
* :class:`RateLimiter` caps reports per reporter per hour.

Everything a reporter or an abuser wrote (the reported text, context, reasons, even user ids) is untrusted: in the
messages built here it is HTML-escaped and shown as code (``<pre><code>``), never as Markdown, so a reported message
cannot render links, images, mentions or formatting in the moderation room or the reporter's DM.
"""

from __future__ import annotations

import enum
import html
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
    "Rendered",
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


def answer(
    draft: Draft, reply: Answer, now: float, *, homeserver_destination: bool, moderator_destination: bool = True
) -> Draft:
    """Apply the reporter's answer; answers to a closed or expired draft change nothing.

    ``yes`` sends to every configured destination; ``yes mods`` to the moderators only (no homeserver report at all),
    and changes nothing when there is no moderation room.
    """
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
    if reply is Answer.YES_MODS and not moderator_destination:
        return draft
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


@dataclass(frozen=True)
class Rendered:
    """A message as plain text (``body``) and as HTML (``formatted_body``) in which untrusted text is inert."""

    body: str
    html: str


class _Doc:
    """Builds a message line by line in both forms; untrusted text only ever enters through :meth:`code`/:meth:`quoted`
    (escaped, shown as code) or escaped inside :meth:`line`."""

    def __init__(self) -> None:
        self._body: list[str] = []
        self._html: list[str] = []

    def line(self, *parts: str | tuple[str, str]) -> _Doc:
        """One line; a plain string is trusted wording, a ``("b"|"code"|"t", text)`` pair is escaped text."""
        body, markup = [], []
        for part in parts:
            if isinstance(part, str):
                body.append(part)
                markup.append(html.escape(part, quote=False))
                continue
            kind, text = part
            text = _one_line(text)
            body.append(text if kind != "code" else f"`{text}`")
            escaped = html.escape(text, quote=False)
            markup.append({"b": f"<strong>{escaped}</strong>", "code": f"<code>{escaped}</code>"}.get(kind, escaped))
        self._body.append("".join(body))
        self._html.append("".join(markup) + "<br>")
        return self

    def quoted(self, text: str) -> _Doc:
        """Untrusted text shown verbatim as a code block (no links, images, mentions or formatting)."""
        text = text or "(no text)"
        self._body += [f"> {line}" for line in text.splitlines() or [""]]
        self._html.append(f"<pre><code>{html.escape(text, quote=False)}</code></pre>")
        return self

    def blank(self) -> _Doc:
        self._body.append("")
        return self

    def render(self) -> Rendered:
        return Rendered("\n".join(self._body), "".join(self._html))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def consent_prompt(
    draft: Draft,
    *,
    room_name: str,
    to_moderators: bool,
    to_homeserver: bool,
    anonymous: bool,
    retention_days: int,
    homeserver_name: str = "the bot's homeserver",
    context_preview: Iterable[tuple[str, str]] = (),
) -> Rendered:
    """The consent prompt: exactly what would leave the room, to whom, for how long, and how to answer."""
    doc = _Doc()
    doc.line("You are reporting a message in ", ("code", room_name), " (report ", ("code", draft.draft_id), ").")
    doc.blank().line("Message from ", ("code", draft.sender), ", exactly as it would be shared:").quoted(draft.text)
    doc.line("Your reason: ", ("t", draft.reason or "(none given)"))
    preview = list(context_preview)
    if draft.context_offered and preview:
        state = "included" if draft.context_included else "not included"
        doc.blank().line(
            f"The {len(preview)} message(s) before it, which you could see, are ", ("b", state),
            " (answer context to change that):",
        )
        doc.quoted("\n".join(f"{_one_line(sender)}: {text}" for sender, text in preview))
    with_context = " and the messages before it" if draft.context_included else ""
    doc.blank().line("If you answer ", ("b", "yes"), ", this is shared:")
    if to_moderators:
        doc.line(
            "- with the moderators of the room, in their encrypted moderation room: the message above"
            f"{with_context}, its sender and sending device, your reason, and a file signed by the bot holding the "
            "message's ciphertext and this text (the message's decryption key is not shared)"
        )
    if to_homeserver:
        doc.line(
            "- with the administrators of the bot's homeserver (", ("code", homeserver_name),
            ", which may not be yours): a report of this event, filed by the bot's account, with your reason and the "
            "message text above. A homeserver report cannot be withdrawn.",
        )
    if not (to_moderators or to_homeserver):
        doc.line("- with nobody (reporting is not configured)")
    if to_moderators and to_homeserver:
        doc.line(
            "If you answer ", ("b", "yes mods"), ", only the moderators get it: nothing at all goes to the homeserver."
        )
    doc.line(
        "Your identity: "
        + ("not shared with the moderators (they see 'anonymous')" if anonymous else "shared with the moderators ")
        + ("" if anonymous else f"({_one_line(draft.reporter)})")
        + ("; the homeserver report names the bot, not you." if to_homeserver else ".")
    )
    where = " and redacted from the moderation room" if to_moderators else ""
    doc.line(
        f"Kept for {retention_days} days, then deleted from the bot{where}; until the moderators act you can "
        "withdraw it with !report withdraw ID."
    )
    answers = "Answer yes to send" + (", yes mods for the moderators only" if to_moderators and to_homeserver else "")
    doc.blank().line(answers + ", or no to cancel (or react ✅ / ❌).")
    doc.line("Nothing has been sent yet. Without an answer this expires and nothing is sent.")
    return doc.render()


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


def case_message(case: Case, *, room_name: str, prefix: str = "!") -> Rendered:
    """The message for the moderation room (every untrusted part escaped, the reported text code-quoted)."""
    device = case.sender_device or "unknown (unencrypted event)"
    trust = {True: "cross-signed by the sender", False: "NOT cross-signed by the sender", None: "unknown"}
    doc = _Doc()
    doc.line(("b", f"Case {case.case_id}"), f" ({case.status}): {case.count} report(s)")
    doc.line("- room: ", ("t", room_name), " (", ("code", case.room_id), ")")
    doc.line("- sender: ", ("code", case.sender), ", device ", ("code", device), f" ({trust[case.cross_signed]})")
    doc.line("- event: ", ("code", case.event_id), f", sent at {int(case.sent_at)} (ms since epoch)")
    doc.line("- reasons: ", ("t", "; ".join(r for r in case.reasons if r) or "(none given)"))
    doc.line("- reporters: ", ("t", ", ".join(case.reporters)))
    doc.blank().line("The reported message, verbatim:").quoted(case.text)
    if case.context:
        doc.line("Context (chosen by the reporter):")
        doc.quoted("\n".join(f"{_one_line(s)}: {t}" for s, t in case.context))
    doc.blank().line("Act with ", ("code", f"{prefix}case {case.case_id} redact|kick|ban|dismiss [reason]"), ".")
    return doc.render()


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
