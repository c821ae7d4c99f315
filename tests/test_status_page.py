"""The status page without a homeserver: the renderer (escaping, fingerprints, charts, the style hash in the CSP),
the activity history, and the token, session and header rules of bot/runtime/status_page.py over real HTTP on
loopback (with a stand-in for the runtime). The end-to-end test in a real Chromium is tests/test_e2e_status_page.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections import Counter
from dataclasses import replace
from http.cookies import SimpleCookie
from types import SimpleNamespace

import aiohttp
import pytest

from bot.config import HttpConfig
from bot.http_listener import HttpListener
from bot.metrics import Metrics
from bot.plugin.info import PluginInfo
from bot.runtime import status_page
from bot.runtime.status_page import COOKIE, ActivityHistory, StatusPage, install_status_page, snapshot
from bot.runtime.status_render import (
    STYLE_HASH,
    BridgeRow,
    ErrorRow,
    PluginRow,
    RoomRow,
    Sample,
    StatusSnapshot,
    content_security_policy,
    fingerprint,
    render_chart,
    render_login,
    render_status,
    text,
)
from bot.stats import BotStats

TOKEN = "status-token-0123456789abcdef"
DEVICE = "STATUSDEVICE"
USER = "@statusbot:example.org"

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _snapshot(**changes) -> StatusSnapshot:
    now = time.time()
    base = StatusSnapshot(
        now=now,
        version="0.1.0",
        user_id=USER,
        device_id=DEVICE,
        device_key="y3Yx4zNw9K1ug3oPpOTx2gS1t0c9TWXqRtzJPGMTbyo",
        master_key="Ab8oQzX1yYl6b8C5lXzoz1fa7hs2nRZsm1lRK6w8E2c",
        cross_signing="ok",
        cross_signed=True,
        backup_state="active",
        backup_version="3",
        rooms=(RoomRow("!a:example.org", "General", True, 3),),
        room_count=1,
        plugins=(PluginRow("ping", "running", 0, ("ping",)),),
    )
    return replace(base, **changes)


# -- rendering ----------------------------------------------------------------------------------------------------


def test_hostile_strings_are_escaped_everywhere():
    now = time.time()
    page = render_status(
        _snapshot(
            rooms=(RoomRow("!h:example.org", HOSTILE, True, 2), RoomRow(f"!{HOSTILE}", "", False, 1)),
            room_count=2,
            plugins=(PluginRow(HOSTILE, "failed", 3, (HOSTILE,), problem=f"PluginLoadError: {HOSTILE}"),),
            bridges=(BridgeRow(HOSTILE, HOSTILE, "backoff", now - 5, 1, 0, 0, HOSTILE, HOSTILE),),
            errors=(ErrorRow(now - 5, HOSTILE, HOSTILE, HOSTILE),),
            identity_problem=HOSTILE,
            backup_state="error",
            backup_problem=HOSTILE,
            user_id=HOSTILE,
            device_id=HOSTILE,
        )
    )
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # the only elements are the page's own
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", page))
    assert tags <= {
        "html", "head", "meta", "title", "link", "style", "body", "header", "h1", "h2", "h3", "div", "code", "form",
        "button", "main", "section", "dl", "dt", "dd", "span", "table", "thead", "tbody", "tr", "th", "td", "strong",
        "bdi", "p", "svg", "line", "text", "rect", "polyline", "circle", "footer",
    }, tags


def test_control_and_bidi_characters_are_removed_and_names_isolated():
    name = "evil\u202eexe.txt\x00\x1b[31m"
    page = render_status(_snapshot(rooms=(RoomRow("!r:x", name, True, 1),), room_count=1))
    assert "\u202e" not in page and "\x00" not in page and "\x1b" not in page
    assert "<bdi>evilexe.txt[31m</bdi>" in page
    assert text("a" * 500, 10) == "a" * 9 + "…"


def test_fingerprints_in_groups_of_four():
    assert fingerprint("y3Yx4zNw9K1ug3oPpOTx2gS1t0c9TWXqRtzJPGMTbyo") == (
        "y3Yx 4zNw 9K1u g3oP pOTx 2gS1 t0c9 TWXq RtzJ PGMT byo"
    )
    assert fingerprint(" ab cd\nefghi ") == "abcd efgh i"
    assert fingerprint(None) == fingerprint("") == "—"
    page = render_status(_snapshot())
    assert "y3Yx 4zNw 9K1u g3oP" in page and "Ab8o QzX1 yYl6 b8C5" in page


def test_chart_with_empty_history_says_so():
    svg = render_chart([], now=time.time(), label="Events per minute")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "no data yet" in svg and 'class="bar"' not in svg and "polyline" not in svg
    page = render_status(_snapshot(history=()))
    assert page.count("no data yet") == 2


def test_chart_with_a_full_hour():
    now = time.time()
    points = [(now - 60 * i, float(i % 7)) for i in range(60)]
    svg = render_chart(points, now=now, window=3600, interval=60, style="bars")
    assert svg.count('class="bar"') == 60  # one per sample, zero-height for the quiet minutes
    assert ">10<" in svg and ">5<" in svg  # the y axis goes to a round number above the max (6)
    bars = re.findall(r'<rect class="bar" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)
    assert all(float(x) >= 44 and float(x) + float(w) <= 560 for x, _, w, _ in bars)
    assert "no data yet" not in svg
    # older than the window, or without a value: left out
    svg = render_chart([(now - 7200, 5.0), (now - 30, None), (now - 10, 2.0)], now=now, style="line")
    assert svg.count("<circle") == 1 and "polyline" not in svg
    line = render_chart([(now - 120, 1.0), (now - 60, 3.0), (now, 2.0)], now=now, style="line")
    assert "<polyline" in line and line.count("<circle") == 3


def test_the_style_sheet_is_allowed_by_its_hash_and_nothing_else_is():
    page = render_status(_snapshot())
    css = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    digest = "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"
    assert digest == STYLE_HASH
    csp = content_security_policy()
    assert f"style-src {STYLE_HASH}" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp and "script-src" not in csp
    assert "<script" not in page and " style=" not in page
    assert re.search(r"<[^>]+\son\w+=", page) is None, "no event handler attributes"


def test_login_page_shows_nothing_of_the_bot():
    page = render_login("That token was not accepted.")
    assert 'type="password"' in page and 'action="login"' in page and 'method="post"' in page
    assert "That token was not accepted." in page
    assert "@" not in page.replace("@media", "")


# -- the activity history -----------------------------------------------------------------------------------------


def test_activity_history_samples_events_and_latency():
    stats, metrics = BotStats(), Metrics()
    history = ActivityHistory(stats, metrics, interval=1.0, window=3600)
    assert history.sample() is None  # the baseline
    stats.events_routed += 30
    metrics.handler_finished("ping", "command ping", "ok", 0.010)
    metrics.handler_finished("ping", "command ping", "ok", 0.030)
    metrics.handler_finished("admin", "command status", "error", 0.020)
    history._last = (history._last[0] - 30.0, *history._last[1:])  # as if 30 s had passed
    point = history.sample()
    assert point is not None
    assert point.events_per_minute == pytest.approx(60.0, rel=0.01)
    assert point.latency_ms == pytest.approx(20.0)
    quiet = history.sample()
    assert quiet.events_per_minute == 0 and quiet.latency_ms is None
    assert history.samples() == (point, quiet)


def test_activity_history_is_bounded():
    history = ActivityHistory(BotStats(), Metrics(), interval=1.0, window=10)
    for _ in range(50):
        history.sample()
    assert len(history._samples) == 11


async def test_activity_history_runs_in_the_background():
    history = ActivityHistory(BotStats(), Metrics(), interval=0.05)
    history.start()
    await asyncio.sleep(0.3)
    await history.stop()
    assert len(history.samples()) >= 3
    assert isinstance(history.samples()[0], Sample)


# -- HTTP: token, sessions, headers ---------------------------------------------------------------------------------


class _FakeManager:
    def info(self):
        return [PluginInfo("ping", "running", ("ping",)), PluginInfo("broken", "failed", error=HOSTILE)]


def _runtime(token: str | None = TOKEN):
    stats = BotStats()
    stats.handler_failed("ping", "command ping")
    room = SimpleNamespace(display_name=HOSTILE, encrypted=True, joined_count=2, users={})
    return SimpleNamespace(
        config=SimpleNamespace(http=HttpConfig(port=0, status_token=token)),
        client=SimpleNamespace(user_id=USER, device_id=DEVICE, olm=None, rooms={"!r:example.org": room}),
        stats=stats,
        metrics=Metrics(),
        host=SimpleNamespace(manager=_FakeManager(), plugins={}),
        identity=None,
        trust=None,
        activity=None,
    )


@pytest.fixture
async def served():
    listener = HttpListener("127.0.0.1", 0)
    runtime = _runtime()
    install_status_page(runtime, listener)
    await listener.start()
    async with aiohttp.ClientSession() as http:
        yield listener.url, http
    await listener.close()


@pytest.fixture(autouse=True)
def _short_failure_delay(monkeypatch):
    monkeypatch.setattr(status_page, "FAILURE_DELAY", 0.3)


def _assert_secure_headers(resp: aiohttp.ClientResponse) -> None:
    h = resp.headers
    assert h["Content-Security-Policy"] == content_security_policy()
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["Cache-Control"] == "no-store"


async def test_no_token_no_page():
    listener = HttpListener("127.0.0.1", 0)
    install_status_page(_runtime(token=None), listener)
    await listener.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(listener.url + "/") as resp:
            assert resp.status == 404
    finally:
        await listener.close()


async def test_without_credentials_only_the_form(served):
    url, http = served
    async with http.get(url + "/") as resp:
        assert resp.status == 401
        body = await resp.text()
        _assert_secure_headers(resp)
    assert 'name="token"' in body and DEVICE not in body and USER not in body


async def test_bearer_token(served):
    url, http = served
    async with http.get(url + "/", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        _assert_secure_headers(resp)
        body = await resp.text()
    assert DEVICE in body and USER in body and "&lt;script&gt;" in body and "<script" not in body
    assert "broken" in body and "Log out" not in body

    started = time.monotonic()
    async with http.get(url + "/", headers={"Authorization": f"Bearer {TOKEN}x"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.text()
    assert time.monotonic() - started >= 0.3, "a wrong token is answered after a delay"
    assert DEVICE not in body
    async with http.get(url + "/", headers={"Authorization": f"Basic {TOKEN}"}) as resp:
        assert resp.status == 401 and DEVICE not in await resp.text()


async def test_the_token_is_never_taken_from_the_url(served):
    url, http = served
    for path in (f"/?token={TOKEN}", f"/?access_token={TOKEN}", f"/login?token={TOKEN}", "/?x=1"):
        async with http.get(url + path) as resp:
            assert resp.status == 400, path
            body = await resp.text()
            _assert_secure_headers(resp)
            assert DEVICE not in body and TOKEN not in body
        async with http.post(url + path, data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 400 and "Set-Cookie" not in resp.headers
    # not even with the right token in the header as well
    async with http.get(url + "/?a=b", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 400


async def test_login_cookie_and_logout(served):
    url, http = served
    async with http.post(url + "/login", data={"token": TOKEN}, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "./"
        _assert_secure_headers(resp)
        raw = resp.headers["Set-Cookie"]
    cookie = SimpleCookie(raw)[COOKIE]
    flags = raw.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert int(cookie["max-age"]) == status_page.SESSION_LIFETIME
    assert "secure" not in flags.replace("samesite", "")  # plain HTTP on loopback
    assert len(cookie.value) >= 40 and TOKEN not in raw

    session = {COOKIE: cookie.value}
    async with http.get(url + "/", cookies=session) as resp:
        assert resp.status == 200
        assert DEVICE in await resp.text()
    async with http.post(url + "/logout", cookies=session, allow_redirects=False) as resp:
        assert resp.status == 303
        assert "max-age=0" in resp.headers["Set-Cookie"].lower()
    async with http.get(url + "/", cookies=session) as resp:
        assert resp.status == 401 and DEVICE not in await resp.text()


async def test_cookie_is_secure_behind_an_https_proxy(served):
    url, http = served
    async with http.post(
        url + "/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"}, allow_redirects=False
    ) as resp:
        assert "; secure" in resp.headers["Set-Cookie"].lower()


async def test_wrong_tokens_are_refused_one_at_a_time(served):
    url, http = served

    async def attempt(n: int) -> int:
        async with http.post(url + "/login", data={"token": f"wrong-{n}"}, allow_redirects=False) as resp:
            body = await resp.text()
            assert "Set-Cookie" not in resp.headers and DEVICE not in body
            return resp.status

    statuses = Counter(await asyncio.gather(*(attempt(n) for n in range(6))))
    assert statuses[401] == 1 and statuses[429] == 5, statuses
    # the right token is accepted at once afterwards
    async with http.post(url + "/login", data={"token": TOKEN}, allow_redirects=False) as resp:
        assert resp.status == 303


async def test_form_rules(served):
    url, http = served
    big = "token=" + "a" * (status_page.MAX_FORM + 10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(url + "/login", data=big, headers=headers, allow_redirects=False) as resp:
        assert resp.status == 413
    async with http.post(url + "/login", json={"token": TOKEN}, allow_redirects=False) as resp:
        assert resp.status == 415
    async with http.post(
        url + "/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False
    ) as resp:
        assert resp.status == 403 and "Set-Cookie" not in resp.headers
    async with http.post(url + "/login", data={"token": ""}, allow_redirects=False) as resp:
        assert resp.status == 401
    async with http.get(url + "/login", allow_redirects=False) as resp:
        assert resp.status == 303
    async with http.put(url + "/", allow_redirects=False) as resp:
        assert resp.status == 405


def test_sessions_are_bounded_and_expire(monkeypatch):
    page = StatusPage(_runtime(), TOKEN, None)
    first = page.sessions.create()
    ids = [page.sessions.create() for _ in range(status_page.MAX_SESSIONS)]
    assert len(page.sessions) == status_page.MAX_SESSIONS
    assert not page.sessions.valid(first) and all(page.sessions.valid(i) for i in ids)
    later = time.monotonic() + status_page.SESSION_LIFETIME + 1
    monkeypatch.setattr(status_page.time, "monotonic", lambda: later)
    assert not page.sessions.valid(ids[-1])


def test_snapshot_reads_the_runtime():
    runtime = _runtime()
    snap = snapshot(runtime)
    assert snap.user_id == USER and snap.device_id == DEVICE and snap.room_count == 1
    assert snap.rooms[0].name == HOSTILE and snap.rooms[0].encrypted and snap.rooms[0].members == 2
    assert [(p.name, p.state, p.errors) for p in snap.plugins] == [("ping", "running", 1), ("broken", "failed", 0)]
    assert snap.errors[0].plugin == "ping" and snap.cross_signing is None and snap.device_key is None
