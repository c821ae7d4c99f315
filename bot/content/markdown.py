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

The sanitizing itself is `nh3 <https://nh3.readthedocs.io>`_ (Python bindings to Ammonia, the Rust sanitizer built on
html5ever): it parses untrusted markup exactly as a browser's HTML5 parser would (our former ``html.parser``
allow-list did not: nested links in tables, raw-text elements, foreign content), it is fuzzed and maintained upstream,
and it is faster (see the commit that switched). What Ammonia's options cannot say is done here, and only on its
output, which is normalised (every attribute double-quoted with ``"`` escaped inside, ``<`` escaped in text), so a
single token pattern reads it exactly:

* per-tag URL rules: Ammonia's ``url_schemes`` is one set for ``href`` and ``src`` alike, so the ``attribute_filter``
  narrows links to :data:`LINK_SCHEMES` and images to ``mxc://``;
* an element dropped for a bad URL: Ammonia removes the attribute and keeps the element, so a link left without an
  ``href`` is unwrapped (its text kept) and an image left without a ``src`` becomes its alt text;
* XHTML void tags (``<br />``, ``<img ... />``) as Python-Markdown writes them and Matrix clients have always seen.

Everything here is pure (no I/O) and safe to call from any thread.
"""

from __future__ import annotations

import html
import re
import threading

import markdown as _markdown
import nh3

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
#: One token of Ammonia's normalised output: a start tag (attributes double-quoted, ``"`` escaped inside values), an
#: end tag, or text (never containing ``<``).
_TOKEN = re.compile(r'<([a-z][a-z0-9]*)((?: [^\s"=<>/]+="[^"]*")*)>|</([a-z][a-z0-9]*)>|[^<]+')
_ATTR = re.compile(r' ([^\s"=<>/]+)="([^"]*)"')

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
    return _finish(_CLEANER.clean(markup)).strip()


def _safe_href(url: str) -> bool:
    match = _SCHEME.match(url.strip())
    return bool(match) and match.group(1).lower() in LINK_SCHEMES


def _filter(tag: str, name: str, value: str) -> str | None:
    """Ammonia's per-attribute hook: the value rules its options cannot express (``None`` drops the attribute)."""
    if tag == "code" and name == "class":
        classes = [c for c in value.split() if _CODE_CLASS.fullmatch(c)]
        return " ".join(classes) if classes else None
    if tag == "ol" and name == "start":
        return value if value.isdigit() else None
    if tag == "a" and name == "href":
        return value if _safe_href(value) else None
    if tag == "a" and name == "target":
        return value if value == "_blank" else None
    if tag == "img" and name == "src":
        return value if value.startswith("mxc://") else None
    return value


_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags=set(_DROP_CONTENT),
    # "*" given (and empty) so that Ammonia's default generic attributes (lang, title) are not allowed everywhere.
    attributes={"*": set(), **{tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()}},
    attribute_filter=_filter,
    strip_comments=True,
    link_rel=None,
    url_schemes=set(LINK_SCHEMES | {"mxc"}),  # relative URLs pass Ammonia's check, then fail _filter's
)


def _finish(clean: str) -> str:
    """Unwrap links left without ``href``, turn images left without ``src`` into their alt text, close void tags."""
    if "<a" not in clean and "<br" not in clean and "<hr" not in clean and "<img" not in clean:
        return clean
    out: list[str] = []
    # Whether each open <a> was kept: HTML5 lets links nest (a link in a table cell inside a link), so count them.
    links: list[bool] = []
    for token in _TOKEN.finditer(clean):
        tag, end = token.group(1), token.group(3)
        attrs = dict(_ATTR.findall(token.group(2))) if tag in ("a", "img") else {}
        if tag == "a":
            keep = "href" in attrs
            links.append(keep)
            if keep:
                out.append(token.group(0))
        elif end == "a":
            if links and links.pop():
                out.append(token.group(0))
        elif tag == "img" and "src" not in attrs:
            out.append(html.escape(html.unescape(attrs.get("alt", "")), quote=False))
        elif tag in _VOID:
            out.append(f"<{tag}{token.group(2)} />")
        else:
            out.append(token.group(0))
    return "".join(out)
