"""The status page's HTML, sans I/O: a :class:`StatusSnapshot` in, a string out (bot/runtime/status_page.py serves it).

Everything shown that is not a number is escaped here, in one place (:func:`text`): room names, plugin load errors
and bridge errors come from other people (a room's name is set by whoever created it). Text is also stripped of
control characters, bounded in length, and user-chosen names are wrapped in ``<bdi>`` so a right-to-left override in
a room name cannot reorder the rest of the line.

The page has no script and no external asset: one inline style sheet (allowed by its hash, :data:`STYLE_HASH`, in
the Content-Security-Policy), and the activity charts are inline SVG drawn here.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "STYLE_HASH",
    "BridgeRow",
    "ErrorRow",
    "PluginRow",
    "RoomRow",
    "Sample",
    "StatusSnapshot",
    "content_security_policy",
    "fingerprint",
    "render_chart",
    "render_login",
    "render_status",
    "text",
]

#: Longest text shown for one value (a room name, an error); longer ones are cut with an ellipsis.
MAX_TEXT = 160


@dataclass(frozen=True)
class RoomRow:
    """A joined room."""

    room_id: str
    name: str
    encrypted: bool
    members: int


@dataclass(frozen=True)
class PluginRow:
    """A configured plugin: its state (running, disabled, failed), handler failures since the start, load error."""

    name: str
    state: str
    errors: int = 0
    commands: tuple[str, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class BridgeRow:
    """One bridge connection (a supervisor of a :class:`bot.bridge.Bridge` plugin)."""

    plugin: str
    network: str
    state: str
    since: float
    queued: int
    dropped: int
    sent: int
    last_error: str | None = None
    description: str = ""


@dataclass(frozen=True)
class ErrorRow:
    """A handler failure: when (Unix time), which plugin and handler, how (error or timeout). No message content."""

    at: float
    plugin: str
    handler: str
    reason: str


@dataclass(frozen=True)
class Sample:
    """One point of the activity history: the interval ending at ``at`` (Unix time)."""

    at: float
    #: Events handed to the plugins, per minute, over the interval.
    events_per_minute: float
    #: Mean handler run time over the interval, milliseconds (None: no handler ran).
    latency_ms: float | None


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything the status page shows, read from the running bot at one moment."""

    now: float
    version: str
    user_id: str
    device_id: str
    device_key: str | None = None
    master_key: str | None = None
    #: Cross-signing: pending, ok, disabled, error or foreign (bot/e2ee/identity.py), or None without an identity.
    cross_signing: str | None = None
    cross_signed: bool = False
    holds_private_keys: bool = False
    recovery_key_stored: bool = False
    identity_problem: str | None = None
    #: Key backup: active, pending, error or off.
    backup_state: str = "off"
    backup_version: str | None = None
    keys_backed_up: int = 0
    backup_problem: str | None = None
    trust_mode: str | None = None
    identity_changes: int = 0
    uptime: float = 0.0
    last_sync_age: float | None = None
    loop_lag_max: float = 0.0
    events_routed: int = 0
    utd_waiting: int = 0
    utd_recovered: int = 0
    utd_total: int = 0
    sync_errors: int = 0
    room_count: int = 0
    rooms: tuple[RoomRow, ...] = ()
    plugins: tuple[PluginRow, ...] = ()
    bridges: tuple[BridgeRow, ...] = ()
    errors: tuple[ErrorRow, ...] = ()
    history: tuple[Sample, ...] = ()
    #: Seconds between history samples, and how far back the charts look.
    sample_interval: float = 60.0
    history_window: float = 3600.0
    #: Sync age above which the last sync is shown as a problem (``http.ready_max_sync_age``).
    max_sync_age: float = 90.0
    #: The viewer logged in with the form (the page offers to log out).
    session: bool = False


# -- text -------------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as safe HTML text: control and bidi-control characters removed, cut to ``limit``, escaped."""
    s = _CONTROL.sub("", str(value))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return html.escape(s, quote=True)


def fingerprint(key: str | None) -> str:
    """A base64 public key in groups of four characters (as Element shows them), or an em dash."""
    if not key:
        return "—"
    clean = re.sub(r"\s+", "", key)
    return " ".join(clean[i : i + 4] for i in range(0, len(clean), 4))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        hours, rest = divmod(int(s), 3600)
        return f"{hours} h {rest // 60} min"
    days, rest = divmod(int(s), 86400)
    return f"{days} d {rest // 3600} h"


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _pill(label: str, tone: str) -> str:
    return f'<span class="pill {tone}">{text(label, 40)}</span>'


def _code(value: str | None, limit: int = MAX_TEXT) -> str:
    return f"<code>{text(value, limit)}</code>" if value else "—"


# -- style ------------------------------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--fg:#1d2330;--muted:#667085;--line:#e3e6eb;
--accent:#3b6fd8;--accent2:#d9822b;--ok:#1a7f4b;--ok-bg:#e3f5ea;--warn:#9a6200;--warn-bg:#fdf1d8;
--bad:#b42318;--bad-bg:#fde7e5;--off-bg:#eceef2}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1d2128;--fg:#e6e8eb;--muted:#98a2b3;--line:#2e343d;
--accent:#6e9bf0;--accent2:#f0a95a;--ok:#6fd49b;--ok-bg:#173826;--warn:#f2c46b;--warn-bg:#3a2f14;
--bad:#f59b92;--bad-bg:#42201d;--off-bg:#2a2f37}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
header{background:var(--card);border-bottom:1px solid var(--line);padding:14px 24px;display:flex;
align-items:center;gap:16px;flex-wrap:wrap}
header h1{font-size:18px;margin:0;font-weight:650}
header .who{color:var(--muted);flex:1;min-width:240px;overflow-wrap:anywhere}
header form{margin:0}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px;display:grid;gap:16px;
grid-template-columns:repeat(auto-fit,minmax(460px,1fr))}
.wide{grid-column:1/-1}
.tiles{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(150px,1fr))}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.tile .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .v{font-size:22px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.tile .n{color:var(--muted);font-size:12px}
section.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;min-width:0}
h2{font-size:15px;margin:0 0 12px;font-weight:650}
h2 .count{color:var(--muted);font-weight:400}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;margin:0}
dt{color:var(--muted)}
dd{margin:0;min-width:0;overflow-wrap:anywhere}
code{font:12.5px/1.4 ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,Consolas,monospace}
.fp{letter-spacing:.02em;word-spacing:.2em}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th{text-align:left;color:var(--muted);font-weight:500;font-size:12px;text-transform:uppercase;letter-spacing:.04em;
border-bottom:1px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid var(--line);padding:7px 8px;vertical-align:top;overflow-wrap:anywhere}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right}
.muted{color:var(--muted)}
.small{font-size:12px}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;white-space:nowrap}
.ok{color:var(--ok);background:var(--ok-bg)}
.warn{color:var(--warn);background:var(--warn-bg)}
.bad{color:var(--bad);background:var(--bad-bg)}
.off{color:var(--muted);background:var(--off-bg)}
.problem{color:var(--bad);font-size:12px;margin-top:2px}
.empty{color:var(--muted);padding:6px 0}
.charts{display:grid;gap:18px;grid-template-columns:repeat(auto-fit,minmax(420px,1fr))}
.chart h3{font-size:13px;font-weight:600;margin:0 0 6px}
.chart h3 span{color:var(--muted);font-weight:400}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis{fill:var(--muted);font-size:11px;font-family:inherit}
svg .bar{fill:var(--accent)}
svg .line{fill:none;stroke:var(--accent2);stroke-width:2;stroke-linejoin:round;stroke-linecap:round}
svg .dot{fill:var(--accent2)}
svg .none{fill:var(--muted);font-size:13px}
button{font:inherit;border:1px solid var(--line);background:var(--card);color:var(--fg);border-radius:7px;
padding:6px 14px;cursor:pointer}
button.primary{background:var(--accent);border-color:var(--accent);color:#fff;font-weight:600}
.login{max-width:380px;margin:12vh auto;background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:26px 28px}
.login h1{font-size:20px;margin:0 0 6px}
.login p{color:var(--muted);margin:0 0 18px}
.login label{display:block;font-weight:600;margin-bottom:6px}
.login input{width:100%;font:inherit;padding:8px 10px;border:1px solid var(--line);border-radius:7px;
background:var(--bg);color:var(--fg);margin-bottom:14px}
.login .msg{color:var(--bad);background:var(--bad-bg);border-radius:7px;padding:8px 10px;margin:0 0 14px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
""".strip()

#: The ``style-src`` source of the one inline style sheet (the page needs no ``'unsafe-inline'``).
STYLE_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode() + "'"


def content_security_policy() -> str:
    """The Content-Security-Policy of every status page response: no script, no external anything."""
    return (
        f"default-src 'none'; style-src {STYLE_HASH}; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _document(title: str, body: str, *, refresh: int | None = None) -> str:
    meta_refresh = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">{meta_refresh}'
        f'<title>{text(title)}</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>'
        f"<body>{body}</body></html>"
    )


# -- the login page ---------------------------------------------------------------------------------------------


def render_login(message: str | None = None) -> str:
    """The login form (the only thing shown without the token); ``message`` says why the last attempt failed."""
    notice = f'<p class="msg" role="alert">{text(message)}</p>' if message else ""
    body = (
        '<main class="wide"><form class="login" method="post" action="login" autocomplete="off">'
        "<h1>Ratchet status</h1><p>Enter the status token from the bot's configuration.</p>"
        f"{notice}"
        '<label for="token">Status token</label>'
        '<input id="token" name="token" type="password" required autofocus autocomplete="current-password" '
        'spellcheck="false" maxlength="1024">'
        '<button class="primary" type="submit">Log in</button>'
        "</form></main>"
    )
    return _document("Ratchet status: log in", body)


# -- the status page --------------------------------------------------------------------------------------------

#: Rooms listed at most (the count is always shown).
MAX_ROOMS = 300


def render_status(s: StatusSnapshot, *, refresh: int | None = 60) -> str:
    """The whole status page for ``s``."""
    logout = (
        '<form method="post" action="logout"><button type="submit">Log out</button></form>' if s.session else ""
    )
    header = (
        f"<header><h1>Ratchet status</h1>"
        f'<div class="who"><code>{text(s.user_id)}</code> · device <code>{text(s.device_id)}</code> · '
        f"version {text(s.version, 40)}</div>{logout}</header>"
    )
    sections = [
        _tiles(s),
        _identity(s),
        _health(s),
        _activity(s),
        _plugins(s),
        _bridges(s),
        _rooms(s),
        _errors(s),
    ]
    footer = f"<footer>Rendered {_utc(s.now)}; refreshes every {refresh} s.</footer>" if refresh else ""
    return _document(f"Ratchet status: {s.user_id}", header + '<main>' + "".join(sections) + "</main>" + footer,
                     refresh=refresh)


def _tile(key: str, value: str, note: str = "") -> str:
    return f'<div class="tile"><div class="k">{key}</div><div class="v">{value}</div><div class="n">{note}</div></div>'


def _tiles(s: StatusSnapshot) -> str:
    sync_tone = "bad" if s.last_sync_age is None or s.last_sync_age > s.max_sync_age else "ok"
    failures = sum(p.errors for p in s.plugins)
    running = sum(1 for p in s.plugins if p.state == "running")
    tiles = [
        _tile("Uptime", text(_duration(s.uptime))),
        _tile("Last sync", text(_duration(s.last_sync_age) + ("" if s.last_sync_age is None else " ago")),
              _pill("ok" if sync_tone == "ok" else "stale", sync_tone)),
        _tile("Rooms", str(s.room_count), f"{sum(1 for r in s.rooms if r.encrypted)} encrypted"),
        _tile("Plugins", f"{running}/{len(s.plugins)}", "running"),
        _tile("Events handled", f"{s.events_routed:,}", "since the start"),
        _tile("Handler errors", f"{failures:,}", _pill("none" if not failures else "see below",
                                                       "ok" if not failures else "warn")),
    ]
    return '<div class="tiles wide">' + "".join(tiles) + "</div>"


def _identity(s: StatusSnapshot) -> str:
    if s.cross_signing is None:
        xs = _pill("unavailable", "warn")
    elif s.cross_signing == "ok" and s.cross_signed:
        xs = _pill("device cross-signed", "ok")
    elif s.cross_signing == "disabled":
        xs = _pill("off", "off")
    elif s.cross_signing in ("error", "foreign") or (s.cross_signing == "ok" and not s.cross_signed):
        xs = _pill("not cross-signed" if s.cross_signing == "ok" else s.cross_signing, "bad")
    else:
        xs = _pill(s.cross_signing, "warn")
    if s.cross_signing not in (None, "disabled"):
        detail = []
        detail.append("holds its private keys" if s.holds_private_keys else "no private keys here")
        if s.recovery_key_stored:
            detail.append("recovery key in secret storage")
        xs += f' <span class="muted small">{text(", ".join(detail))}</span>'
    if s.identity_problem:
        xs += f'<div class="problem">{text(s.identity_problem)}</div>'
    tone = {"active": "ok", "pending": "warn", "error": "bad"}.get(s.backup_state, "off")
    backup = _pill(s.backup_state, tone)
    if s.backup_version:
        backup += f' <span class="muted small">version {text(s.backup_version, 40)}, ' \
                  f'{s.keys_backed_up:,} keys uploaded by this process</span>'
    if s.backup_problem:
        backup += f'<div class="problem">{text(s.backup_problem)}</div>'
    rows = [
        ("User", _code(s.user_id)),
        ("Device", _code(s.device_id)),
        ("Device key (ed25519)", f'<code class="fp">{text(fingerprint(s.device_key))}</code>'),
        ("Master key", f'<code class="fp">{text(fingerprint(s.master_key))}</code>'),
        ("Cross-signing", xs),
    ]
    rows.append(("Key backup", backup))
    if s.trust_mode:
        changes = (
            _pill(f"{s.identity_changes} unaccepted identity change(s)", "warn") if s.identity_changes else ""
        )
        rows.append(("Trust policy", f"{text(s.trust_mode, 40)} {changes}"))
    return _card("Identity", _dl(rows))


def _health(s: StatusSnapshot) -> str:
    lag_tone = "ok" if s.loop_lag_max < 0.1 else "warn" if s.loop_lag_max < 1 else "bad"
    rows = [
        ("Running since", text(_utc(s.now - s.uptime))),
        ("Last sync", text(_duration(s.last_sync_age) + ("" if s.last_sync_age is None else " ago"))),
        ("Sync errors", f"{s.sync_errors:,}"),
        ("Event-loop lag (max)", f"{s.loop_lag_max * 1000:.1f} ms " + _pill("ok" if lag_tone == "ok" else "high",
                                                                         lag_tone)),
        ("Events handled", f"{s.events_routed:,}"),
        (
            "Undecryptable",
            f"{s.utd_waiting:,} waiting for keys, {s.utd_recovered:,} recovered, {s.utd_total:,} seen",
        ),
    ]
    return _card("Health", _dl(rows))


def _activity(s: StatusSnapshot) -> str:
    minutes = s.history_window / 60
    every = _duration(s.sample_interval) if s.sample_interval < 60 else f"{s.sample_interval / 60:.0f} min"
    events = render_chart(
        [(p.at, p.events_per_minute) for p in s.history], now=s.now, window=s.history_window,
        interval=s.sample_interval, style="bars", unit="/min", label="Events per minute",
    )
    latency = render_chart(
        [(p.at, p.latency_ms) for p in s.history if p.latency_ms is not None], now=s.now,
        window=s.history_window, interval=s.sample_interval, style="line", unit=" ms", label="Mean handler latency",
    )
    body = (
        '<div class="charts">'
        f'<div class="chart"><h3>Events per minute <span>handed to plugins</span></h3>{events}</div>'
        f'<div class="chart"><h3>Handler latency <span>mean, milliseconds</span></h3>{latency}</div>'
        "</div>"
        f'<p class="muted small">Last {minutes:.0f} minutes, one sample every {text(every)}; kept in memory only '
        "(a restart starts a new history).</p>"
    )
    return _card("Activity", body, wide=True)


def _plugins(s: StatusSnapshot) -> str:
    if not s.plugins:
        return _card("Plugins", '<div class="empty">No plugins configured.</div>')
    rows = []
    for p in s.plugins:
        tone = {"running": "ok", "failed": "bad"}.get(p.state, "off")
        problem = f'<div class="problem">{text(p.problem)}</div>' if p.problem else ""
        commands = " ".join(f"<code>{text(c, 40)}</code>" for c in p.commands[:12])
        if len(p.commands) > 12:
            commands += f' <span class="muted">+{len(p.commands) - 12}</span>'
        err = f'<span class="pill warn">{p.errors:,}</span>' if p.errors else '<span class="muted">0</span>'
        rows.append(
            f"<tr><td><strong>{text(p.name, 60)}</strong>{problem}</td><td>{_pill(p.state, tone)}</td>"
            f'<td class="small">{commands or "—"}</td><td class="num">{err}</td></tr>'
        )
    table = (
        '<table><thead><tr><th>Plugin</th><th>State</th><th>Commands</th><th class="num">Errors</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _card("Plugins", table, count=len(s.plugins))


def _bridges(s: StatusSnapshot) -> str:
    if not s.bridges:
        return _card("Bridge connections", '<div class="empty">No bridge is running.</div>')
    rows = []
    for b in s.bridges:
        tone = {"connected": "ok", "connecting": "warn", "stopped": "off"}.get(b.state, "bad")
        error = f'<div class="problem">{text(b.last_error)}</div>' if b.last_error else ""
        desc = f'<div class="muted small">{text(b.description)}</div>' if b.description else ""
        dropped = f'<span class="pill warn">{b.dropped:,}</span>' if b.dropped else "0"
        rows.append(
            f"<tr><td><strong>{text(b.network, 60)}</strong>{desc}<div class='muted small'>{text(b.plugin, 60)}"
            f"</div></td><td>{_pill(b.state, tone)}<div class='muted small'>for {text(_duration(s.now - b.since))}"
            f"</div>{error}</td><td class='num'>{b.queued:,}</td><td class='num'>{dropped}</td>"
            f"<td class='num'>{b.sent:,}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>Network</th><th>State</th><th class='num'>Queued</th><th class='num'>Dropped</th>"
        f"<th class='num'>Sent</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _card("Bridge connections", table, count=len(s.bridges))


def _rooms(s: StatusSnapshot) -> str:
    if not s.rooms:
        return _card("Rooms", '<div class="empty">The bot is in no room.</div>', count=s.room_count)
    rows = []
    for r in s.rooms[:MAX_ROOMS]:
        enc = _pill("encrypted", "ok") if r.encrypted else _pill("not encrypted", "warn")
        rows.append(
            f"<tr><td><bdi>{text(r.name, 80)}</bdi><div class='muted small'><code>{text(r.room_id, 100)}</code>"
            f"</div></td><td>{enc}</td><td class='num'>{r.members:,}</td></tr>"
        )
    more = ""
    if s.room_count > min(len(s.rooms), MAX_ROOMS):
        more = f'<p class="muted small">and {s.room_count - min(len(s.rooms), MAX_ROOMS):,} more</p>'
    table = (
        "<table><thead><tr><th>Room</th><th>Encryption</th><th class='num'>Members</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{more}"
    )
    return _card("Rooms", table, count=s.room_count)


def _errors(s: StatusSnapshot) -> str:
    if not s.errors:
        return _card("Recent errors", '<div class="empty">No handler has failed since the start.</div>')
    rows = []
    for e in s.errors:
        tone = "warn" if e.reason == "timeout" else "bad"
        rows.append(
            f"<tr><td>{text(_utc(e.at))}<div class='muted small'>{text(_duration(s.now - e.at))} ago</div></td>"
            f"<td>{text(e.plugin, 60)}</td><td><code>{text(e.handler, 80)}</code></td>"
            f"<td>{_pill(e.reason, tone)}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>When</th><th>Plugin</th><th>Handler</th><th>Outcome</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="muted small">Newest first. The bot\'s log has the tracebacks.</p>'
    )
    return _card("Recent errors", table, count=len(s.errors))


def _card(title: str, body: str, *, count: int | None = None, wide: bool = False) -> str:
    badge = f' <span class="count">({count:,})</span>' if count is not None else ""
    cls = "card wide" if wide else "card"
    return f'<section class="{cls}"><h2>{title}{badge}</h2>{body}</section>'


def _dl(rows: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


# -- charts -----------------------------------------------------------------------------------------------------

_W, _H = 560, 170
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 10, 10, 24


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^n at or above ``value`` (the y axis' top)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exp
        if top >= value * (1 - 1e-9):
            return float(top)
    return float(10 ** (exp + 1))


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}"


def render_chart(
    points: Sequence[tuple[float, float | None]],
    *,
    now: float,
    window: float = 3600.0,
    interval: float = 60.0,
    style: str = "bars",
    unit: str = "",
    label: str = "",
) -> str:
    """An inline SVG chart of ``points`` (Unix time, value) over the ``window`` seconds before ``now``.

    ``style`` is ``bars`` (one bar per sample, ``interval`` seconds wide) or ``line``. Points outside the window and
    values that are None are left out; with nothing to draw the chart says so.
    """
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    shown = [(at, v) for at, v in points if v is not None and now - window <= at <= now + 1]
    top = _nice_ceiling(max((v for _, v in shown), default=0.0))
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{text(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{text(label)}</title>'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = _TOP + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{text(_number(top * frac))}</text>'
        )
    minutes = window / 60
    for frac, tick in ((0.0, f"−{minutes:.0f} min"), (0.5, f"−{minutes / 2:.0f} min"), (1.0, "now")):
        x = _LEFT + plot_w * frac
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        parts.append(f'<text class="axis" x="{x:.1f}" y="{_H - 6}" text-anchor="{anchor}">{tick}</text>')

    def x_of(at: float) -> float:
        return _LEFT + plot_w * (1 - (now - at) / window)

    def y_of(v: float) -> float:
        return _TOP + plot_h * (1 - min(v, top) / top)

    if not shown:
        parts.append(
            f'<text class="none" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2 + 4:.1f}" '
            'text-anchor="middle">no data yet</text>'
        )
    elif style == "bars":
        bar_w = max(1.5, plot_w * interval / window - 1.5)
        for at, v in shown:
            x = max(_LEFT, x_of(at) - bar_w)
            y = y_of(v)
            h = _TOP + plot_h - y
            if v > 0 and h < 1:
                y, h = _TOP + plot_h - 1, 1.0
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                f"<title>{text(_utc(at))}: {text(_number(v))}{text(unit)}</title></rect>"
            )
    else:
        coords = [(x_of(at), y_of(v)) for at, v in shown]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline class="line" points="{path}"/>')
        if len(coords) <= 120:
            for (x, y), (at, v) in zip(coords, shown, strict=True):
                parts.append(
                    f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                    f"<title>{text(_utc(at))}: {text(_number(v))}{text(unit)}</title></circle>"
                )
    parts.append("</svg>")
    return "".join(parts)
