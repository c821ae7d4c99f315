"""Text helpers for relaying between Matrix and a remote network: pure functions, no I/O, nothing network-specific.

* templates: :func:`check_template` checks a relay template's ``{fields}``; :func:`render_matrix_relay` fills a
  Matrix one (``**name**: text``) as ``body`` + ``formatted_body``;
* names and sizes: :func:`sanitize_name` (one clean line), :func:`human_size`, :func:`media_text` (``sent a file:
  name (size)``);
* degrading for networks that lack a feature: :func:`reply_fallback`, :func:`edit_fallback` (``s/old/new/`` or
  ``* corrected: text``), :func:`reaction_fallback`; :func:`parse_sed` / :func:`apply_sed` read a remote user's
  ``s/old/new/`` correction;
* mentions: :func:`link_mentions` (and :class:`MentionLinker`, for text with markup) turns ``nick: ...`` / ``@name``
  into Matrix pills with the ``m.mentions`` user ids;
* splitting: :func:`split_utf8` cuts text into pieces that fit a byte budget, on word boundaries, never inside a
  UTF-8 character.

Network markup (IRC control codes, say) belongs to the bridge that speaks it; :mod:`bot.bridge.rich_text` reads
Matrix HTML into styled runs for it to serialize.
"""

from __future__ import annotations

import html as htmllib
import re
import string
import unicodedata
from collections.abc import Mapping

__all__ = [
    "MentionLinker",
    "apply_sed",
    "check_template",
    "edit_fallback",
    "human_size",
    "link_mentions",
    "media_text",
    "parse_sed",
    "quote_excerpt",
    "reaction_fallback",
    "render_matrix_relay",
    "reply_fallback",
    "sanitize_name",
    "sed_edit",
    "split_utf8",
]

#: Control characters dropped from a quote (whitespace ones become spaces).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------- templates and names

def check_template(template: str, fields: tuple[str, ...], *, required: tuple[str, ...] = ("text",)) -> None:
    """Raise ``ValueError`` if ``template`` uses an unknown ``{field}`` or lacks a required one (once)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ValueError(
            f"template {template!r} uses unknown field {{{unknown[0]}}}; it may use " + ", ".join(
                "{" + f + "}" for f in fields
            )
        )
    for name in required:
        if names.count(name) != 1:
            raise ValueError(f"template {template!r} must contain {{{name}}} exactly once")


def sanitize_name(name: str, *, limit: int = 32) -> str:
    """A display name fit for one line of a remote network: no control characters or line breaks, shortened."""
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in name)
    cleaned = " ".join(cleaned.split()) or "?"
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned


def render_matrix_relay(template: str, name: str, text: str, html: str | None = None) -> tuple[str, str]:
    """``(body, formatted_body)`` of a relayed message: ``template`` with ``**bold**`` marks, ``{name}`` and ``{text}``.

    The body drops the ``**`` marks (``bob: hello``); the HTML makes them ``<strong>`` (``<strong>bob</strong>:
    hello``). ``html`` is the text's own HTML if it has some; otherwise the text is escaped.
    """
    body = template.replace("**", "").format(name=name, text=text)
    escaped = htmllib.escape(template.replace("{name}", "\x00N").replace("{text}", "\x00T"), quote=False)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    text_html = html if html is not None else htmllib.escape(text, quote=False).replace("\n", "<br>")
    formatted = escaped.replace("\x00N", htmllib.escape(name, quote=False)).replace("\x00T", text_html)
    return body, formatted


# ---------------------------------------------------------------------------------------------- degrading


def quote_excerpt(text: str, *, words: int = 8, chars: int = 60) -> str:
    """The first words of ``text`` on one line (``…`` when cut, control characters dropped), for quoting in a reply."""
    flat = " ".join(_CONTROL_RE.sub("", text).split())
    parts = flat.split(" ")
    excerpt = " ".join(parts[:words])
    if len(excerpt) > chars:
        excerpt = excerpt[: chars - 1].rstrip()
        return excerpt + "…"
    return excerpt + ("…" if len(parts) > words else "")


def reply_fallback(template: str, text: str, nick: str, quoted: str) -> str:
    """A reply for networks without replies: ``template`` (``"{text} (re @{nick}: {quote})"``) filled in."""
    return template.format(text=text, nick=nick, quote=quote_excerpt(quoted))


def reaction_fallback(key: str, nick: str, quoted: str) -> str:
    """A reaction for networks without reactions: ``reacted 👍 to bob: "first words…"``."""
    return f'reacted {key} to {nick}: "{quote_excerpt(quoted, words=6, chars=40)}"'


def sed_edit(old: str, new: str, *, max_len: int = 40) -> str | None:
    """``s/old/new/`` for an edit that changed one short stretch of ``old``, else None."""
    if old == new:
        return None
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old), len(new)
    while end_old > start and end_new > start and old[end_old - 1] == new[end_new - 1]:
        end_old -= 1
        end_new -= 1
    # widen to whole words, so the substitution reads naturally
    while start > 0 and not old[start - 1].isspace():
        start -= 1
    while end_old < len(old) and not old[end_old].isspace():
        end_old += 1
        end_new += 1
    removed, added = old[start:end_old], new[start:end_new]
    if not removed or "/" in removed or "/" in added or "\n" in removed + added:
        return None
    if len(removed) > max_len or len(added) > max_len or old.count(removed) != 1:
        return None
    if len(removed) * 2 > len(old):
        return None  # most of the message changed: say it whole
    return f"s/{removed}/{added}/"


def edit_fallback(old: str | None, new: str) -> str:
    """An edit for networks without edits: ``s/old/new/`` when that is short and exact, else ``* corrected: new``."""
    if old is not None:
        sed = sed_edit(old, new)
        if sed is not None:
            return sed
    return f"* corrected: {new}"


_SED_RE = re.compile(r"^s/((?:\\/|[^/])+)/((?:\\/|[^/])*)/?([gi]*)$")


def parse_sed(text: str) -> tuple[str, str, str] | None:
    """``(old, new, flags)`` if ``text`` is a ``s/old/new/`` correction (``\\/`` escapes a slash), else None."""
    m = _SED_RE.match(text.strip())
    if m is None:
        return None
    return m.group(1).replace("\\/", "/"), m.group(2).replace("\\/", "/"), m.group(3)


def apply_sed(text: str, old: str, new: str, flags: str = "") -> str | None:
    """``text`` with ``old`` replaced by ``new`` (all of them with ``g``, any case with ``i``); None if absent."""
    pattern = re.compile(re.escape(old), re.IGNORECASE if "i" in flags else 0)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda _m: new, text, count=0 if "g" in flags else 1)


def human_size(size: int | None) -> str:
    """``1.5 MB`` style size (decimal units, as clients show them)."""
    if size is None or size < 0:
        return "unknown size"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}".replace(".0 ", " ")
    return f"{size} B"


def media_text(name: str | None, size: int | None, msgtype: str = "m.file") -> str:
    """What a remote network without uploads sees for a Matrix file: ``sent a file: name (size)``."""
    kind = {"m.image": "an image", "m.video": "a video", "m.audio": "an audio file"}.get(msgtype, "a file")
    return f"sent {kind}: {sanitize_name(name or 'file', limit=80)} ({human_size(size)})"


# ---------------------------------------------------------------------------------------------- mentions


def _mention_targets(members: Mapping[str, str], exclude: set[str]) -> dict[str, str]:
    """Lowercased names (display names and localparts) -> user id, for the names that are unambiguous."""
    seen: dict[str, set[str]] = {}
    for user_id, display in members.items():
        if user_id in exclude:
            continue
        names = {user_id.lower(), user_id[1:].split(":", 1)[0].lower()}
        if display:
            names.add(display.strip().lower())
        for name in names:
            if name:
                seen.setdefault(name, set()).add(user_id)
    return {name: next(iter(ids)) for name, ids in seen.items() if len(ids) == 1}


class MentionLinker:
    """Turns mentions of room members in runs of remote text into Matrix pills, collecting the mentioned user ids.

    A member is mentioned by ``name: ...`` / ``name, ...`` at the start of the message or ``@name`` anywhere, where
    ``name`` is their display name or localpart (``members`` maps user ids to display names); a name two members share
    is no mention. :meth:`transform` has the signature :func:`~bot.bridge.rich_text.runs_to_html` takes, so a bridge
    whose network has markup links mentions in each run of its styled text; :func:`link_mentions` does it for plain
    text. At most ``max_mentions`` different members are mentioned (None: no limit); further names stay plain text,
    so one remote line cannot ping a whole room.
    """

    def __init__(
        self, members: Mapping[str, str], *, exclude: set[str] | None = None, max_mentions: int | None = None
    ) -> None:
        self.members = members
        self.max_mentions = max_mentions
        #: The user ids mentioned so far, in order, for ``m.mentions``.
        self.mentioned: list[str] = []
        self._targets = _mention_targets(members, exclude or set())
        if self._targets:
            alternatives = "|".join(re.escape(n) for n in sorted(self._targets, key=len, reverse=True))
            self._start_re: re.Pattern[str] | None = re.compile(
                rf"^(?P<name>{alternatives})(?=[:,](?:\s|$))", re.IGNORECASE
            )
            self._at_re: re.Pattern[str] | None = re.compile(
                rf"(?<![\w@])@(?P<name>{alternatives})(?![\w-])", re.IGNORECASE
            )
        else:
            self._start_re = self._at_re = None

    def _pill(self, user_id: str, shown: str, written: str) -> str:
        """A pill for ``user_id``, or ``written`` as plain text once ``max_mentions`` others are mentioned."""
        if user_id not in self.mentioned:
            if self.max_mentions is not None and len(self.mentioned) >= self.max_mentions:
                return htmllib.escape(written, quote=False)
            self.mentioned.append(user_id)
        return f'<a href="https://matrix.to/#/{htmllib.escape(user_id)}">{htmllib.escape(shown, quote=False)}</a>'

    def transform(self, run: str, at_start: bool) -> str:
        """HTML for one run of plain text (escaped), with its mentions as pills; ``at_start``: it starts the message."""
        if self._start_re is None or self._at_re is None:
            return htmllib.escape(run, quote=False)
        out: list[str] = []
        pos = 0
        if at_start:
            m = self._start_re.match(run)
            if m:
                user_id = self._targets[m.group("name").lower()]
                out.append(self._pill(user_id, self.members.get(user_id) or m.group("name"), m.group("name")))
                pos = m.end()
        for m in self._at_re.finditer(run, pos):
            out.append(htmllib.escape(run[pos : m.start()], quote=False))
            user_id = self._targets[m.group("name").lower()]
            out.append(self._pill(user_id, self.members.get(user_id) or m.group("name"), m.group(0)))
            pos = m.end()
        out.append(htmllib.escape(run[pos:], quote=False))
        return "".join(out)


def link_mentions(
    text: str, members: Mapping[str, str], *, exclude: set[str] | None = None, max_mentions: int | None = None
) -> tuple[str | None, list[str]]:
    """Turn mentions of room members in a plain-text remote message into Matrix pills (see :class:`MentionLinker`).

    Returns the HTML (None if nobody was mentioned) and the mentioned user ids, for ``m.mentions``.
    """
    linker = MentionLinker(members, exclude=exclude, max_mentions=max_mentions)
    html = linker.transform(text, True) if text else ""
    if not linker.mentioned:
        return None, []
    return html, linker.mentioned


# ---------------------------------------------------------------------------------------------- splitting


def _cut_point(encoded: bytes, limit: int) -> int:
    """The largest byte offset <= ``limit`` that falls on a UTF-8 character boundary of ``encoded``."""
    cut = min(limit, len(encoded))
    while 0 < cut < len(encoded) and (encoded[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


def _keeps_together(text: str, index: int) -> bool:
    """True if a cut before ``text[index]`` would separate a combining mark, joiner or selector from its base."""
    if index <= 0 or index >= len(text):
        return False
    ch, prev = text[index], text[index - 1]
    return (
        unicodedata.combining(ch) != 0
        or ch in "\u200d\ufe0e\ufe0f"
        or prev == "\u200d"
        or 0x1F3FB <= ord(ch) <= 0x1F3FF  # skin tone modifiers
    )


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Cut one line into pieces of at most ``max_bytes`` UTF-8 bytes, preferring word boundaries.

    A piece never ends inside a character (nor between a character and its combining marks); a word longer than a
    whole piece is cut where it must. Spaces at a cut are dropped. An empty text gives no piece.
    """
    if max_bytes < 4:
        raise ValueError("max_bytes must be at least 4 (one UTF-8 character)")
    pieces: list[str] = []
    rest = text
    while rest:
        encoded = rest.encode()
        if len(encoded) <= max_bytes:
            pieces.append(rest)
            break
        chars = len(encoded[: _cut_point(encoded, max_bytes)].decode())
        while chars > 1 and _keeps_together(rest, chars):
            chars -= 1
        prefix = rest[:chars]
        space = max(prefix.rfind(" "), prefix.rfind("\t"))
        if rest[chars : chars + 1] in (" ", "\t"):
            space = chars  # the cut falls right on a space
        if space > 0:
            piece, rest = rest[:space].rstrip(" \t"), rest[space:].lstrip(" \t")
        else:
            piece, rest = prefix, rest[chars:]
        if piece:
            pieces.append(piece)
    return pieces
