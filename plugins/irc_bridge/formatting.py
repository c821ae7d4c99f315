"""IRC formatting for the IRC bridge: control codes both ways, line splitting, the relayed line budget. Pure, no I/O.

* Matrix HTML -> IRC: :func:`html_to_irc` (bold, italic, underline, strikethrough, monospace, colours; the layout
  -- pills as names, links with their URL, lists and quotes as lines -- comes from :func:`bot.bridge.html_to_lines`);
* IRC -> Matrix HTML: :func:`irc_to_html`, :func:`link_irc_mentions` (with pills) and :func:`strip_irc_formatting`
  (control codes for bold, italic, underline, strikethrough, monospace, colours);
* splitting: :func:`split_irc_text` cuts text into lines that fit a byte budget, on word boundaries, never inside a
  UTF-8 character, carrying the formatting over; :func:`irc_line_budget` computes the budget (the 512-byte line
  the server relays, prefix included); :func:`render_remote_lines` puts the relay template (``<name> text``) on
  every line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from bot.bridge import MentionLinker, TextStyle, html_to_lines, runs_to_html, split_utf8

__all__ = [
    "IRC_BOLD",
    "IRC_COLOR",
    "IRC_ITALIC",
    "IRC_MONOSPACE",
    "IRC_RESET",
    "IRC_STRIKETHROUGH",
    "IRC_UNDERLINE",
    "html_to_irc",
    "irc_line_budget",
    "irc_to_html",
    "link_irc_mentions",
    "render_remote_lines",
    "split_irc_text",
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


def _irc_style(style: TextStyle) -> _Style:
    return _Style(bold=style.bold, italic=style.italic, underline=style.underline, strike=style.strike,
                  mono=style.mono, fg=style.fg, bg=style.bg)


def _text_style(style: _Style) -> TextStyle:
    return TextStyle(bold=style.bold, italic=style.italic, underline=style.underline, strike=style.strike,
                     mono=style.mono, fg=style.fg, bg=style.bg)


def strip_irc_formatting(text: str) -> str:
    """``text`` without IRC formatting codes (bold, colours, ...)."""
    return _CONTROL_RE.sub("", text)


def irc_to_html(text: str, *, transform: Callable[[str, bool], str] | None = None) -> str | None:
    """Matrix HTML (``formatted_body``) for an IRC line with formatting codes; None if it has none.

    ``transform(run, at_start)`` turns each run of plain text into HTML (default: escape it); ``at_start`` is true for
    the run that starts the message. :func:`link_irc_mentions` uses it to put pills in.
    """
    runs, _ = _parse_irc(text)
    styled = any(style != _PLAIN for _, style in runs)
    if not styled and transform is None:
        return None
    return runs_to_html([(run, _text_style(style)) for run, style in runs], transform=transform)


def link_irc_mentions(
    text: str, members: Mapping[str, str], *, exclude: set[str] | None = None, max_mentions: int | None = None
) -> tuple[str | None, list[str]]:
    """Matrix HTML for an IRC line, its formatting converted and mentions of room members made pills.

    Mentions are read as :class:`bot.bridge.MentionLinker` reads them, in the unformatted runs of the line. Returns
    the HTML (None if nothing was mentioned and the line has no formatting) and the mentioned user ids (at most
    ``max_mentions`` of them: further names stay plain text).
    """
    linker = MentionLinker(members, exclude=exclude, max_mentions=max_mentions)
    html = irc_to_html(text, transform=linker.transform)
    styled = irc_to_html(text) is not None
    if not linker.mentioned and not styled:
        return None, []
    return html, linker.mentioned


# ---------------------------------------------------------------------------------------------- Matrix HTML -> IRC


def html_to_irc(html: str) -> str:
    """IRC text (lines separated by ``\\n``, with formatting codes) for Matrix ``formatted_body`` HTML.

    Pills become the name shown in them; other links keep their URL in parentheses unless the text is the URL;
    paragraphs, list items and quotes become lines (``• item``, ``1. item``, ``> quote``); a rich reply's
    ``<mx-reply>`` is dropped (see :func:`bot.bridge.html_to_lines`).
    """
    lines = []
    for segments in html_to_lines(html):
        line = _serialize([(text, _irc_style(style)) for text, style in segments])
        lines.append(line + _switch(_parse_irc(line)[1], _PLAIN))  # close what is still open
    return "\n".join(lines)


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
