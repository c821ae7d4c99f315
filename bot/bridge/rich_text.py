"""Matrix HTML as lines of styled text runs, and back: pure functions, no I/O.

A network without HTML still wants the structure of a Matrix message (paragraphs, list items, quotes, links) and
perhaps its styles. :func:`html_to_lines` reads ``formatted_body`` HTML into lines of ``(text, TextStyle)`` runs
that a bridge serializes in its network's own markup (the IRC bridge writes control codes); :func:`html_to_plain`
joins them without styles; :func:`runs_to_html` turns styled runs read from a network back into Matrix HTML.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

__all__ = ["PLAIN_STYLE", "StyledRun", "TextStyle", "html_to_lines", "html_to_plain", "runs_to_html"]


@dataclass(frozen=True)
class TextStyle:
    """The style of a run of text: the Matrix HTML styles a plain-text network may render its own way."""

    bold: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    mono: bool = False
    fg: str | None = None  # ``#rrggbb``
    bg: str | None = None


PLAIN_STYLE = TextStyle()
StyledRun = tuple[str, TextStyle]

_PILL_RE = re.compile(r"^https://matrix\.to/#/([@!#][^/?]+)")
_BLOCKS = {"p", "div", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr",
           "hr", "details", "summary"}  # fmt: skip
_TAG_STYLE = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
              "s": "strike", "del": "strike", "strike": "strike", "code": "mono", "tt": "mono"}  # fmt: skip
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


class _HtmlToLines(HTMLParser):
    """Collects lines of styled segments; :meth:`result` keeps the lines that have text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[StyledRun]] = [[]]
        self.counts: dict[str, int] = {}
        self.colors: list[tuple[str | None, str | None] | None] = []
        self.skip = 0
        self.pre = 0
        self.quote = 0
        self.lists: list[list[int]] = []  # per open list: [next number] (0 for bullets)
        self.links: list[tuple[str, int, int]] = []  # (href, line index, segment index) where each <a> began
        self.pending_space: TextStyle | None = None

    # -- output ------------------------------------------------------------------------------------------------

    def _style(self) -> TextStyle:
        color = next((c for c in reversed(self.colors) if c is not None), None)
        return TextStyle(
            **{attr: self.counts.get(attr, 0) > 0 for attr in ("bold", "italic", "underline", "strike", "mono")},
            fg=color[0] if color else None,
            bg=color[1] if color else None,
        )

    def _line_text(self, line: int = -1, start: int = 0) -> str:
        return "".join(text for text, _ in self.lines[line][start:])

    def _at_line_start(self) -> bool:
        return not self._line_text().strip(" >")

    def emit(self, text: str, style: TextStyle | None = None) -> None:
        if not text:
            return
        if not self.lines[-1] and self.quote:
            self.lines[-1].append(("> " * self.quote, PLAIN_STYLE))
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
            self.emit(marker, PLAIN_STYLE)
        elif tag == "hr":
            self.emit("---", PLAIN_STYLE)
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
            self.emit(f" ({href})" if shown else href, PLAIN_STYLE)

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

    def result(self) -> list[list[StyledRun]]:
        lines = []
        for segments in self.lines:
            if not "".join(t for t, _ in segments).strip(" >"):
                continue
            lines.append([(t.rstrip() if i == len(segments) - 1 else t, st) for i, (t, st) in enumerate(segments)])
        return lines


def html_to_lines(html: str) -> list[list[StyledRun]]:
    """Matrix ``formatted_body`` HTML as lines of styled runs (only lines with text; trailing spaces dropped).

    Pills become the name shown in them; other links keep their URL in parentheses unless the text is the URL;
    paragraphs, list items and quotes become lines (``• item``, ``1. item``, ``> quote``); ``<pre>`` keeps its line
    breaks; headings are bold; a rich reply's ``<mx-reply>`` is dropped.
    """
    parser = _HtmlToLines()
    parser.feed(html)
    parser.close()
    return parser.result()


def html_to_plain(html: str) -> str:
    """Matrix HTML as plain text (lines separated by ``\\n``), laid out as :func:`html_to_lines` reads it."""
    return "\n".join("".join(text for text, _ in line) for line in html_to_lines(html))


def runs_to_html(runs: Sequence[tuple[str, TextStyle]], *, transform: Callable[[str, bool], str] | None = None) -> str:
    """Matrix HTML for styled runs of text (as a bridge read them from its network's markup).

    ``transform(run, at_start)`` turns each run of plain text into HTML (default: escape it); ``at_start`` is true for
    the run that starts the message (:class:`~bot.bridge.relay_text.MentionLinker` puts pills in this way).
    """
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
