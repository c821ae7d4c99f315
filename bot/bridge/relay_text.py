"""Format conversion between Matrix and remote networks: pure functions, no I/O.

* Matrix HTML -> IRC: :func:`html_to_irc` (bold, italic, underline, strikethrough, monospace, colours, pills become
  the mentioned user's name, links keep their URL, lists and quotes become lines);
* IRC -> Matrix HTML: :func:`irc_to_html` and :func:`strip_irc_formatting` (control codes for bold, italic,
  underline, strikethrough, monospace, colours);
* mentions: :func:`link_mentions` turns ``nick: ...`` / ``@name`` into Matrix pills (with the ``m.mentions`` user ids);
* splitting: :func:`split_irc_text` cuts text into lines that fit a byte budget, on word boundaries, never inside a
  UTF-8 character, carrying the formatting over; :func:`irc_line_budget` computes the budget (the 512-byte line
  the server relays, prefix included);
* relaying: :func:`render_remote_lines` (``<name> text`` per line), :func:`render_matrix_relay` (``**name**: text``
  as ``body`` + ``formatted_body``), :func:`reply_fallback`, :func:`edit_fallback` (``s/old/new/`` or
  ``* corrected: text``), :func:`reaction_fallback`, :func:`media_text` (``sent a file: name (size)``);
* :func:`parse_sed` / :func:`apply_sed` read an IRC user's ``s/old/new/`` correction.
"""

from __future__ import annotations

import html as htmllib
import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from html.parser import HTMLParser

__all__ = [
    "IRC_BOLD",
    "IRC_COLOR",
    "IRC_ITALIC",
    "IRC_MONOSPACE",
    "IRC_RESET",
    "IRC_STRIKETHROUGH",
    "IRC_UNDERLINE",
    "apply_sed",
    "check_template",
    "edit_fallback",
    "html_to_irc",
    "human_size",
    "irc_line_budget",
    "irc_to_html",
    "link_mentions",
    "media_text",
    "parse_sed",
    "quote_excerpt",
    "reaction_fallback",
    "render_matrix_relay",
    "render_remote_lines",
    "reply_fallback",
    "sanitize_name",
    "sed_edit",
    "split_irc_text",
    "split_utf8",
    "strip_irc_formatting",
]

IRC_BOLD = "\x02"
IRC_COLOR = "\x03"
IRC_HEX_COLOR = "\x04"
IRC_RESET = "\x0f"
IRC_MONOSPACE = "\x11"
IRC_REVERSE = "\x16"
IRC_ITALIC = "\x1d"
IRC_STRIKETHROUGH = "\x1e"
IRC_UNDERLINE = "\x1f"

#: The 16 standard mIRC colours (index -> hex), as most clients render them.
IRC_COLORS: tuple[str, ...] = (
    "#ffffff", "#000000", "#00007f", "#009300", "#ff0000", "#7f0000", "#9c009c", "#fc7f00",
    "#ffff00", "#00fc00", "#009393", "#00ffff", "#0000fc", "#ff00ff", "#7f7f7f", "#d2d2d2",
)  # fmt: skip

_TOGGLES = {IRC_BOLD: "bold", IRC_ITALIC: "italic", IRC_UNDERLINE: "underline", IRC_STRIKETHROUGH: "strike",
            IRC_MONOSPACE: "mono", IRC_REVERSE: "reverse"}  # fmt: skip
_COLOR_RE = re.compile(r"\x03(?:(\d{1,2})(?:,(\d{1,2}))?)?")
_HEX_COLOR_RE = re.compile(r"\x04(?:([0-9a-fA-F]{6})(?:,([0-9a-fA-F]{6}))?)?")
_CONTROL_RE = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
_PILL_RE = re.compile(r"^https://matrix\.to/#/([@!#][^/?]+)")


# ---------------------------------------------------------------------------------------------- IRC control codes


@dataclass(frozen=True)
class _Style:
    bold: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    mono: bool = False
    reverse: bool = False
    fg: str | None = None  # hex colour
    bg: str | None = None


_PLAIN = _Style()


def _parse_irc(text: str) -> tuple[list[tuple[str, _Style]], _Style]:
    """``text`` as runs of plain text with the style in force for each, and the style in force at its end."""
    runs: list[tuple[str, _Style]] = []
    style = _PLAIN
    buf: list[str] = []
    i = 0
    n = len(text)

    def flush() -> None:
        if buf:
            runs.append(("".join(buf), style))
            buf.clear()

    while i < n:
        ch = text[i]
        if ch in _TOGGLES:
            flush()
            attr = _TOGGLES[ch]
            style = replace(style, **{attr: not getattr(style, attr)})
            i += 1
        elif ch == IRC_RESET:
            flush()
            style = _PLAIN
            i += 1
        elif ch in (IRC_COLOR, IRC_HEX_COLOR):
            flush()
            m = (_COLOR_RE if ch == IRC_COLOR else _HEX_COLOR_RE).match(text, i)
            assert m is not None
            fg, bg = m.group(1), m.group(2)
            if fg is None:
                style = replace(style, fg=None, bg=None)
            elif ch == IRC_COLOR:
                style = replace(style, fg=_color_hex(int(fg)), bg=_color_hex(int(bg)) if bg is not None else style.bg)
            else:
                style = replace(style, fg="#" + fg.lower(), bg=("#" + bg.lower()) if bg else style.bg)
            i = m.end()
        else:
            buf.append(ch)
            i += 1
    flush()
    return runs, style


def _serialize(segments: list[tuple[str, _Style]], start: _Style = _PLAIN) -> str:
    """IRC text for styled ``segments``: the codes that switch from each style to the next, then the text."""
    out: list[str] = []
    current = start
    for text, style in segments:
        if not text:
            continue
        codes = _switch(current, style)
        if codes and (codes[-1].isdigit()) and (text[0].isdigit() or text[0] == ","):
            codes += IRC_BOLD + IRC_BOLD  # keep "\x0304" + "5" from reading as colour 45
        out.append(codes + text)
        current = style
    return "".join(out)


def _switch(old: _Style, new: _Style) -> str:
    """Control codes that turn style ``old`` into ``new``."""
    if (old.fg or old.bg) and not (new.fg or new.bg):
        # a bare \x03 before a digit would start a colour: reset everything and switch the rest on again
        return IRC_RESET + _switch(_PLAIN, new)
    codes = "".join(code for code, attr in _TOGGLES.items() if getattr(old, attr) != getattr(new, attr))
    if (new.fg, new.bg) != (old.fg, old.bg) and new.fg is not None:
        codes += IRC_COLOR + f"{_nearest_color(new.fg):02d}"
        if new.bg is not None:
            codes += f",{_nearest_color(new.bg):02d}"
    return codes


def _color_hex(index: int) -> str | None:
    return IRC_COLORS[index] if 0 <= index < len(IRC_COLORS) else None


def _nearest_color(hex_color: str) -> int:
    """Index of the mIRC colour closest to ``#rrggbb``."""
    try:
        r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    except ValueError:
        return 1
    best, best_d = 1, -1
    for index, candidate in enumerate(IRC_COLORS):
        cr, cg, cb = (int(candidate[i : i + 2], 16) for i in (1, 3, 5))
        d = (r - cr) ** 2 + (g - cg) ** 2 + (b - cb) ** 2
        if best_d < 0 or d < best_d:
            best, best_d = index, d
    return best


def strip_irc_formatting(text: str) -> str:
    """``text`` without IRC formatting codes (bold, colours, ...)."""
    return _CONTROL_RE.sub("", text)


def irc_to_html(text: str, *, transform: Callable[[str, bool], str] | None = None) -> str | None:
    """Matrix HTML (``formatted_body``) for an IRC line with formatting codes; None if it has none.

    ``transform(run, at_start)`` turns each run of plain text into HTML (default: escape it); ``at_start`` is true for
    the run that starts the message. :func:`link_mentions` uses it to put pills in.
    """
    runs, _ = _parse_irc(text)
    styled = any(style != _PLAIN for _, style in runs)
    if not styled and transform is None:
        return None
    out: list[str] = []
    for index, (run, style) in enumerate(runs):
        inner = transform(run, index == 0) if transform is not None else htmllib.escape(run, quote=False)
        if style.mono:
            inner = f"<code>{inner}</code>"
        if style.strike:
            inner = f"<del>{inner}</del>"
        if style.underline:
            inner = f"<u>{inner}</u>"
        if style.italic:
            inner = f"<em>{inner}</em>"
        if style.bold:
            inner = f"<strong>{inner}</strong>"
        if style.fg or style.bg:
            attrs = ""
            if style.fg:
                attrs += f' data-mx-color="{style.fg}"'
            if style.bg:
                attrs += f' data-mx-bg-color="{style.bg}"'
            inner = f"<font{attrs}>{inner}</font>"
        out.append(inner)
    return "".join(out)


# ---------------------------------------------------------------------------------------------- Matrix HTML -> IRC

_BLOCKS = {"p", "div", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr",
           "hr", "details", "summary"}  # fmt: skip
_TAG_STYLE = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
              "s": "strike", "del": "strike", "strike": "strike", "code": "mono", "tt": "mono"}  # fmt: skip
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


class _HtmlToIrc(HTMLParser):
    """Collects lines of styled segments; :meth:`result` serializes them with IRC codes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[tuple[str, _Style]]] = [[]]
        self.counts: dict[str, int] = {}
        self.colors: list[tuple[str | None, str | None] | None] = []
        self.skip = 0
        self.pre = 0
        self.quote = 0
        self.lists: list[list[int]] = []  # per open list: [next number] (0 for bullets)
        self.links: list[tuple[str, int, int]] = []  # (href, line index, segment index) where each <a> began
        self.pending_space: _Style | None = None

    # -- output ------------------------------------------------------------------------------------------------

    def _style(self) -> _Style:
        color = next((c for c in reversed(self.colors) if c is not None), None)
        return _Style(
            **{attr: self.counts.get(attr, 0) > 0 for attr in ("bold", "italic", "underline", "strike", "mono")},
            fg=color[0] if color else None,
            bg=color[1] if color else None,
        )

    def _line_text(self, line: int = -1, start: int = 0) -> str:
        return "".join(text for text, _ in self.lines[line][start:])

    def _at_line_start(self) -> bool:
        return not self._line_text().strip(" >")

    def emit(self, text: str, style: _Style | None = None) -> None:
        if not text:
            return
        if not self.lines[-1] and self.quote:
            self.lines[-1].append(("> " * self.quote, _PLAIN))
        self.lines[-1].append((text, self._style() if style is None else style))

    def newline(self) -> None:
        """End the current line unless it is empty."""
        self.pending_space = None
        if self._line_text().strip(" >"):
            self.lines.append([])
        else:
            self.lines[-1] = []

    def hard_break(self) -> None:
        self.pending_space = None
        self.lines.append([])

    # -- parser callbacks --------------------------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "mx-reply":
            self.skip += 1
            return
        if self.skip:
            return
        if tag in _BLOCKS:
            self.newline()
        if tag == "br":
            self.hard_break()
        elif tag == "pre":
            self.pre += 1
        elif tag == "blockquote":
            self.quote += 1
        elif tag in ("ul", "ol"):
            start = a.get("start", "1")
            self.lists.append([int(start) if tag == "ol" and start.isdigit() else (1 if tag == "ol" else 0)])
        elif tag == "li":
            marker = "• "
            if self.lists and self.lists[-1][0]:
                marker = f"{self.lists[-1][0]}. "
                self.lists[-1][0] += 1
            self.emit(marker, _PLAIN)
        elif tag == "hr":
            self.emit("---", _PLAIN)
            self.newline()
        elif tag == "img":
            self.emit(a.get("alt") or a.get("title") or "[image]")
        elif tag == "a":
            self.links.append((a.get("href", ""), len(self.lines) - 1, len(self.lines[-1])))
        elif tag in ("font", "span"):
            fg = a.get("data-mx-color") or a.get("color") or None
            bg = a.get("data-mx-bg-color") or None
            self.colors.append((fg, bg) if (fg or bg) else None)
        if tag in _HEADINGS:
            self._count("bold", +1)
        elif tag in _TAG_STYLE and not (tag == "code" and self.pre):
            self._count(_TAG_STYLE[tag], +1)

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply":
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag in _HEADINGS:
            self._count("bold", -1)
        elif tag in _TAG_STYLE and not (tag == "code" and self.pre):
            self._count(_TAG_STYLE[tag], -1)
        if tag == "a" and self.links:
            self._close_link(*self.links.pop())
        elif tag in ("font", "span") and self.colors:
            self.colors.pop()
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        elif tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()
        if tag in _BLOCKS:
            self.newline()

    def _count(self, attr: str, delta: int) -> None:
        self.counts[attr] = max(0, self.counts.get(attr, 0) + delta)

    def _close_link(self, href: str, line: int, segment: int) -> None:
        if line != len(self.lines) - 1 or _PILL_RE.match(href):
            return  # a pill: its text is the name, which is what the remote users know
        shown = self._line_text(line, segment).strip()
        target = href.removeprefix("mailto:")
        if href and shown != href and shown != target:
            self.emit(f" ({href})" if shown else href, _PLAIN)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            for i, part in enumerate(data.split("\n")):
                if i:
                    self.hard_break()
                self.emit(part)
            return
        text = re.sub(r"\s+", " ", data)
        if not text.strip():
            if text and not self._at_line_start() and self.pending_space is None:
                self.pending_space = self._style()
            return
        if text.startswith(" ") and not self._at_line_start() and self.pending_space is None:
            self.pending_space = self._style()
        text = text.strip(" ")
        if self.pending_space is not None and not self._at_line_start():
            self.emit(" ", self.pending_space)
        self.pending_space = self._style() if data[-1:].isspace() else None
        self.emit(text)

    def result(self) -> str:
        lines = []
        for segments in self.lines:
            if not "".join(t for t, _ in segments).strip(" >"):
                continue
            line = _serialize([(t.rstrip() if i == len(segments) - 1 else t, st)
                               for i, (t, st) in enumerate(segments)])
            lines.append(line + _switch(_parse_irc(line)[1], _PLAIN))  # close what is still open
        return "\n".join(lines)


def html_to_irc(html: str) -> str:
    """IRC text (lines separated by ``\\n``, with formatting codes) for Matrix ``formatted_body`` HTML.

    Pills become the name shown in them; other links keep their URL in parentheses unless the text is the URL;
    paragraphs, list items and quotes become lines (``• item``, ``1. item``, ``> quote``); a rich reply's
    ``<mx-reply>`` is dropped.
    """
    parser = _HtmlToIrc()
    parser.feed(html)
    parser.close()
    return parser.result()


# ---------------------------------------------------------------------------------------------- splitting


def irc_line_budget(nick: str, target: str, *, command: str = "PRIVMSG", user: str | None = None,
                    host: str | None = None) -> int:
    """How many bytes of text fit in one ``command`` to ``target``, as the server relays it to others.

    Servers relay ``:nick!user@host PRIVMSG #target :text\\r\\n`` and cut it at 512 bytes. Without the real
    ``user``/``host`` (the bridge learns them from its own JOIN), the longest usual ones are assumed (10 and 63).
    """
    mask = f":{nick}!{user if user is not None else 'u' * 10}@{host if host is not None else 'h' * 63}"
    overhead = len(f"{mask} {command} {target} :".encode()) + 2
    return max(16, 512 - overhead)


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


def split_irc_text(text: str, max_bytes: int) -> list[str]:
    """Lines of at most ``max_bytes`` bytes for ``text`` (which may hold several lines and IRC formatting).

    Each ``\\n`` starts a new line; long lines are cut by :func:`split_utf8`, and the formatting in force at a cut is
    switched on again at the start of the next piece. Empty lines are dropped.
    """
    out: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not strip_irc_formatting(raw).strip():
            continue
        carry = ""
        rest = raw.rstrip(" \t")
        while strip_irc_formatting(rest).strip():
            budget = max(4, max_bytes - len(carry.encode()))
            first = split_utf8(rest, budget)[0]
            piece = carry + first
            out.append(piece)
            rest = rest[len(first) :].lstrip(" \t")
            _, end_style = _parse_irc(piece)
            carry = _switch(_PLAIN, end_style)
    return out


# ---------------------------------------------------------------------------------------------- relaying

_FIELD_RE = re.compile(r"\{(\w*)[^}]*\}")


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


def render_remote_lines(template: str, name: str, text: str, max_bytes: int, *, max_lines: int = 0) -> list[str]:
    """The lines to send for ``text`` relayed with ``template`` (``"<{name}> {text}"``), each within ``max_bytes``.

    Every line carries the template (so each shows who spoke). With ``max_lines`` > 0, longer output is cut and its
    last line says how many lines were left out.
    """
    head, _, tail = template.partition("{text}")
    head = head.format(name=name)
    tail = tail.format(name=name)
    room = max_bytes - len((head + tail).encode()) - 8  # room to close open formatting before the tail
    if room < 16:
        raise ValueError("the relay template leaves no room for text")
    bodies = split_irc_text(text, room)
    if max_lines > 0 and len(bodies) > max_lines:
        left = len(bodies) - (max_lines - 1)
        bodies = [*bodies[: max_lines - 1], f"… ({left} more lines not relayed)"]
    return [f"{head}{body}{_switch(_parse_irc(body)[1], _PLAIN)}{tail}" for body in bodies]


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


def quote_excerpt(text: str, *, words: int = 8, chars: int = 60) -> str:
    """The first words of ``text`` on one line (``…`` when cut), for quoting in a reply."""
    flat = " ".join(strip_irc_formatting(text).split())
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


def link_mentions(
    text: str, members: Mapping[str, str], *, exclude: set[str] | None = None
) -> tuple[str | None, list[str]]:
    """Turn mentions of room members in an IRC line into Matrix pills.

    A member is mentioned by ``name: ...`` / ``name, ...`` at the start of the line or ``@name`` anywhere, where
    ``name`` is their display name or localpart (``members`` maps user ids to display names). Returns the HTML (or
    None if nothing was mentioned and the line has no formatting) and the mentioned user ids, for ``m.mentions``.
    """
    targets = _mention_targets(members, exclude or set())
    mentioned: list[str] = []
    if targets:
        alternatives = "|".join(re.escape(n) for n in sorted(targets, key=len, reverse=True))
        start_re = re.compile(rf"^(?P<name>{alternatives})(?=[:,](?:\s|$))", re.IGNORECASE)
        at_re = re.compile(rf"(?<![\w@])@(?P<name>{alternatives})(?![\w-])", re.IGNORECASE)
    else:
        start_re = at_re = None

    def pill(user_id: str, shown: str) -> str:
        if user_id not in mentioned:
            mentioned.append(user_id)
        return f'<a href="https://matrix.to/#/{htmllib.escape(user_id)}">{htmllib.escape(shown, quote=False)}</a>'

    def transform(run: str, at_start: bool) -> str:
        if start_re is None or at_re is None:
            return htmllib.escape(run, quote=False)
        out: list[str] = []
        pos = 0
        if at_start:
            m = start_re.match(run)
            if m:
                out.append(pill(targets[m.group("name").lower()], members.get(targets[m.group("name").lower()])
                                or m.group("name")))
                pos = m.end()
        for m in at_re.finditer(run, pos):
            out.append(htmllib.escape(run[pos : m.start()], quote=False))
            user_id = targets[m.group("name").lower()]
            out.append(pill(user_id, members.get(user_id) or m.group("name")))
            pos = m.end()
        out.append(htmllib.escape(run[pos:], quote=False))
        return "".join(out)

    html = irc_to_html(text, transform=transform)
    styled = irc_to_html(text) is not None
    if not mentioned and not styled:
        return None, []
    return html, mentioned
