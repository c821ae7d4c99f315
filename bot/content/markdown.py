"""Markdown to Matrix HTML: what ``markdown=True`` on the send and reply methods uses.

:func:`render_markdown` renders with Python-Markdown (``fenced_code``, ``tables``, ``nl2br``, ``sane_lists``) and then
sanitizes the result down to what the Matrix spec allows in ``org.matrix.custom.html``:

* raw HTML in the source is never passed through: the bot renders text that users and plugins give it, so
  ``<script>`` comes out as the visible text ``&lt;script&gt;``;
* only the tags and attributes the spec lists survive; links keep ``http``, ``https``, ``ftp``, ``mailto`` and
  ``magnet`` targets only, images only ``mxc://`` sources (others become their alt text), code blocks keep their
  ``language-*`` class;
* plain text that renders to nothing more than itself in a paragraph gives ``None``, so such a message gets no
  pointless ``formatted_body``.

Everything here is pure (no I/O) and safe to call from any thread.
"""

from __future__ import annotations

import html
import re
import threading
from html.parser import HTMLParser

import markdown as _markdown

__all__ = ["ALLOWED_TAGS", "render_markdown", "sanitize_html"]

#: Tags the Matrix spec (client-server API, ``m.room.message`` formatted bodies) lets clients render.
ALLOWED_TAGS = frozenset(
    {
        "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol", "sup", "sub", "li", "b",
        "i", "u", "strong", "em", "s", "code", "hr", "br", "div", "table", "thead", "tbody", "tr", "th", "td",
        "caption", "pre", "span", "img", "details", "summary", "font",
    }
)  # fmt: skip

#: Attributes the spec allows, per tag (``code``'s ``class`` is further limited to ``language-*``).
ALLOWED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "font": frozenset({"data-mx-bg-color", "data-mx-color", "color"}),
    "span": frozenset({"data-mx-bg-color", "data-mx-color", "data-mx-spoiler", "data-mx-maths"}),
    "div": frozenset({"data-mx-maths"}),
    "a": frozenset({"name", "target", "href"}),
    "img": frozenset({"width", "height", "alt", "title", "src"}),
    "ol": frozenset({"start"}),
    "code": frozenset({"class"}),
}

#: URL schemes a link may point to.
LINK_SCHEMES = frozenset({"http", "https", "ftp", "mailto", "magnet"})

_VOID = frozenset({"br", "hr", "img"})
#: Tags whose content is dropped with them (the rest lose the tag and keep their text).
_DROP_CONTENT = frozenset({"script", "style", "iframe", "object", "embed", "template", "noscript", "textarea", "svg"})
_CODE_CLASS = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

_EXTENSIONS = ["fenced_code", "tables", "nl2br", "sane_lists"]
_local = threading.local()


def _converter() -> _markdown.Markdown:
    md = getattr(_local, "md", None)
    if md is None:
        md = _markdown.Markdown(extensions=_EXTENSIONS, output_format="xhtml")
        # No raw HTML: block-level HTML and inline tags in the source are escaped like any other text.
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        _local.md = md
    return md


def render_markdown(text: str) -> str | None:
    """Matrix-safe HTML for the Markdown ``text``, or ``None`` if it is just plain text."""
    if not text or not text.strip():
        return None
    rendered = _converter().reset().convert(text)
    clean = sanitize_html(rendered)
    if not clean or _is_plain(clean, text):
        return None
    return clean


def _is_plain(rendered: str, text: str) -> bool:
    """True if ``rendered`` is only ``text`` in a paragraph (line breaks as ``<br />``)."""
    match = re.fullmatch(r"<p>(.*)</p>", rendered, re.DOTALL)
    if match is None:
        return False
    inner = match.group(1).replace("<br />\n", "\n")
    return "<" not in inner and html.unescape(inner).strip() == text.strip()


def sanitize_html(markup: str) -> str:
    """Reduce ``markup`` to the tags and attributes the Matrix spec allows; everything else is escaped or dropped."""
    parser = _Sanitizer()
    parser.feed(markup)
    parser.close()
    return parser.result()


def _safe_href(url: str) -> bool:
    match = _SCHEME.match(url.strip())
    return bool(match) and match.group(1).lower() in LINK_SCHEMES


class _Sanitizer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        # Open tags, with whether their start tag was written (an unsafe link is unwrapped, its text kept).
        self._stack: list[tuple[str, bool]] = []
        self._dropping = 0

    def result(self) -> str:
        for tag, emitted in reversed(self._stack):
            if emitted:
                self._out.append(f"</{tag}>")
        self._stack.clear()
        return "".join(self._out).strip()

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> dict[str, str] | None:
        """The attributes to keep, or None if the element itself must go."""
        allowed = ALLOWED_ATTRIBUTES.get(tag, frozenset())
        kept: dict[str, str] = {}
        for name, value in attrs:
            if name not in allowed or value is None:
                continue
            if tag == "code" and name == "class":
                classes = [c for c in value.split() if _CODE_CLASS.fullmatch(c)]
                if not classes:
                    continue
                value = " ".join(classes)
            elif tag == "ol" and name == "start" and not value.isdigit():
                continue
            elif tag == "a" and name == "href" and not _safe_href(value):
                return None
            elif tag == "img" and name == "src" and not value.startswith("mxc://"):
                return None
            elif tag == "a" and name == "target" and value != "_blank":
                continue
            kept[name] = value
        if tag == "img" and "src" not in kept:
            return None
        return kept

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], void: bool) -> None:
        if self._dropping:
            if tag in _DROP_CONTENT and not void:
                self._dropping += 1
            return
        if tag in _DROP_CONTENT:
            if not void:
                self._dropping = 1
            return
        if tag not in ALLOWED_TAGS:
            if not (void or tag in _VOID):
                self._stack.append((tag, False))
            return
        kept = self._attrs(tag, attrs)
        if kept is None:
            if tag == "img":
                alt = dict(attrs).get("alt") or ""
                self._out.append(html.escape(alt, quote=False))
            else:
                self._stack.append((tag, False))
            return
        rendered = "".join(f' {name}="{html.escape(value, quote=True)}"' for name, value in kept.items())
        if tag in _VOID:
            self._out.append(f"<{tag}{rendered} />")
        else:
            self._out.append(f"<{tag}{rendered}>")
            self._stack.append((tag, True))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, void=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, void=True)

    def handle_endtag(self, tag: str) -> None:
        if self._dropping:
            if tag in _DROP_CONTENT:
                self._dropping -= 1
            return
        if tag in _VOID or not any(t == tag for t, _ in self._stack):
            return
        while self._stack:
            open_tag, emitted = self._stack.pop()
            if emitted:
                self._out.append(f"</{open_tag}>")
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._dropping:
            self._out.append(html.escape(data, quote=False))
