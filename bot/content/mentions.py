"""Who a message mentions, the way clients write it: pills, display names, ``m.mentions``.

Element does not put user ids in a message's plain ``body``: typing "@Car" and picking Carol leaves ``Carol`` in the
body, a *pill* (``<a href="https://matrix.to/#/@carol:example.org">Carol</a>``) in ``formatted_body``, and
``@carol:example.org`` in ``m.mentions.user_ids``. Commands that take a :class:`~bot.UserId` therefore accept:

1. a full user id (``@carol:example.org``);
2. a pill: its link text in the body is replaced by the user id before the arguments are split
   (:func:`substitute_pills`), so multi-word display names work;
3. a display name or a bare ``@localpart`` of a room member, when exactly one member has it (:class:`UserResolver`),
   preferring users listed in ``m.mentions``.

Pure functions and a small class: no network, tested without a homeserver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote

__all__ = ["UserResolver", "mentioned_user_ids", "pills", "substitute_pills"]

_MATRIX_TO = re.compile(r"^https://matrix\.to/#/([^/?#]+)")
_MATRIX_URI = re.compile(r"^matrix:u/([^/?#]+)")
_REPLY_BLOCK = re.compile(r"<mx-reply>.*?</mx-reply>", re.DOTALL | re.IGNORECASE)
#: A message with more links than this is not searched further (a hostile body cannot make parsing costly).
MAX_PILLS = 50


def _user_from_href(href: str) -> str | None:
    match = _MATRIX_TO.match(href)
    if match:
        user = unquote(match.group(1))
        if not user.startswith("@"):
            return None  # a room or an event link
    else:
        match = _MATRIX_URI.match(href)
        if not match:
            return None
        user = "@" + unquote(match.group(1))
    return user if ":" in user and " " not in user else None


class _PillParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._user: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and len(self.found) < MAX_PILLS:
            href = dict(attrs).get("href") or ""
            self._user = _user_from_href(href)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._user is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._user is not None:
            text = "".join(self._text).strip()
            if text:
                self.found.append((text, self._user))
            self._user = None


def pills(formatted_body: str | None) -> list[tuple[str, str]]:
    """The user pills of an HTML body, in order: ``(link text, user id)``; the reply fallback is ignored."""
    if not formatted_body:
        return []
    parser = _PillParser()
    try:
        parser.feed(_REPLY_BLOCK.sub("", formatted_body))
        parser.close()
    except Exception:  # malformed HTML from a hostile client: whatever was found so far
        pass
    return parser.found


def substitute_pills(text: str, found: Iterable[tuple[str, str]]) -> str:
    """``text`` with each pill's link text replaced by its user id (each once, left to right).

    Link texts that do not occur in ``text`` (after the previous replacement) are skipped.
    """
    out: list[str] = []
    rest = text
    for label, user_id in found:
        if label == user_id:
            index = rest.find(label)
            if index >= 0:
                out.append(rest[: index + len(label)])
                rest = rest[index + len(label) :]
            continue
        index = rest.find(label)
        if index < 0:
            continue
        out.append(rest[:index] + user_id)
        rest = rest[index + len(label) :]
    out.append(rest)
    return "".join(out)


def mentioned_user_ids(content: Mapping[str, Any]) -> list[str]:
    """``m.mentions.user_ids`` of an event's content (strings only; anything malformed is ignored)."""
    mentions = content.get("m.mentions")
    users = mentions.get("user_ids") if isinstance(mentions, Mapping) else None
    if not isinstance(users, list):
        return []
    return [u for u in users if isinstance(u, str) and u.startswith("@") and ":" in u][:MAX_PILLS]


class AmbiguousUser(ValueError):
    """A name matches more than one member; the message lists them."""


class UserResolver:
    """Turns a display name or a bare ``@localpart`` into the user id of the one room member who has it.

    ``members`` maps the room's joined members to their display names; ``mentioned`` (from ``m.mentions``) wins a
    tie: if the name matches several members and exactly one of them is mentioned, that one is meant.
    """

    def __init__(self, members: Mapping[str, str], mentioned: Iterable[str] = ()) -> None:
        self.members = members
        self.mentioned = set(mentioned)

    def resolve(self, name: str) -> str | None:
        """The user id meant by ``name``, None if no member matches. Raises :class:`AmbiguousUser`."""
        wanted = name.strip()
        if not wanted:
            return None
        folded = wanted.casefold()
        if wanted.startswith("@") and ":" not in wanted:
            local = folded[1:]
            matches = [u for u in self.members if u[1:].split(":", 1)[0].casefold() == local]
        else:
            bare = folded[1:] if folded.startswith("@") else folded
            matches = [u for u, display in self.members.items() if display.casefold() in (folded, bare)]
        if len(matches) > 1:
            preferred = [u for u in matches if u in self.mentioned]
            if len(preferred) == 1:
                return preferred[0]
            listed = ", ".join(sorted(matches)[:5])
            raise AmbiguousUser(f"{wanted!r} could be {listed}: use the full user id")
        return matches[0] if matches else None
