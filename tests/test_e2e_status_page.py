"""Issue 14, part 4: the status page of a running bot (real Synapse, an encrypted room with a member), seen in a real
headless Chromium driven over the DevTools protocol (bot/testing/chromium.py), and with plain HTTP requests.

The browser: without the token only the login form (and none of the bot's data in the DOM); a wrong token through
the form is refused; the right one logs in with a session cookie, and the page shows the bot's user and device, its
plugins, a hostile room name as text, the recent error and the activity charts, styled under the strict CSP; a
full-page screenshot is saved under the test's tmp dir; logging out shows the form again. Plain HTTP: a token in the
URL is refused, a bearer token works, the cookie's flags and the security headers are right, and the token is never
logged.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from http.cookies import SimpleCookie

import aiohttp
import pytest

from bot.runtime import status_page
from bot.testing.chromium import Chromium, find_chromium
from bot.testing.tools import require_tool

pytestmark = pytest.mark.e2e

TOKEN = "e2e-status-token-7c1f0a9b3d5e"
HOSTILE_ROOM = '<script>alert("room")</script><img src=x onerror=alert(1)> Ops'


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.1)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


async def test_status_page_in_chromium(ratchet, tmp_path, monkeypatch, test_plugins_dir, caplog):
    binary = find_chromium()
    require_tool(binary is not None, "Chromium is not installed (apt install chromium)")
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(status_page, "SAMPLE_INTERVAL", 1.0)  # read when the runtime is built

    room = await ratchet.room(
        plugins={"ping": {}, "faulty": {}},
        plugin_dirs=[test_plugins_dir],
        http={"port": 0, "status_token": TOKEN},
    )
    runtime = ratchet.bot.runtime
    assert runtime.activity.interval == 1.0
    base = runtime.http.url
    device_id, user_id = ratchet.bot.device_id, ratchet.bot_user.user_id

    # Something to show: handled commands, a failing one, a room named by an attacker.
    for _ in range(3):
        reply = await room.ask("!ping")
        assert reply.decrypted
    await room.send("!boom")
    hostile = await room.member.create_room(invite=[user_id], name=HOSTILE_ROOM)
    await room.member.wait_joined(hostile, user_id)
    await _until(lambda: runtime.stats.recent_errors, 30, "the failing command recorded")
    await _until(lambda: hostile in runtime.client.rooms and runtime.client.rooms[hostile].name, 30, "the room name")
    await _until(
        lambda: any(s.events_per_minute > 0 for s in runtime.activity.samples())
        and any(s.latency_ms is not None for s in runtime.activity.samples()),
        10,
        "an activity sample with events and latency",
    )

    started = time.monotonic()
    async with Chromium(tmp_path / "chromium", binary=binary) as browser:
        page = await browser.new_page()

        # 1. No token: the login form and nothing else.
        assert await page.goto(base + "/") == 401
        html = await page.html()
        assert await page.count('form[action="login"] input[type="password"][name="token"]') == 1
        assert device_id not in html and user_id not in html and "ping" not in html

        # 2. A wrong token through the form: refused, no cookie, still nothing of the bot.
        await page.type("#token", "not-the-token-at-all")
        assert await page.follow(page.click('button[type="submit"]')) == 401
        assert "not accepted" in await page.text()
        html = await page.html()
        assert device_id not in html and user_id not in html
        assert await page.cookies(base + "/") == []

        # 3. The right token: the page.
        await page.type("#token", TOKEN)
        assert await page.follow(page.click('button[type="submit"]')) == 200
        assert await page.evaluate("location.href") == base + "/", "the token never appears in the URL"
        text = await page.text()
        assert device_id in text and user_id in text
        assert "ping" in text and "faulty" in text and "running" in text
        assert "command boom" in text, "the recent error names the handler"
        assert HOSTILE_ROOM in text, "the hostile room name is shown as text"
        assert await page.evaluate("document.scripts.length") == 0
        assert await page.count("img") == 0
        # the device's ed25519 key, in groups of four
        device_key = runtime.client.olm.account.identity_keys["ed25519"]
        assert " ".join(device_key[i : i + 4] for i in range(0, 12, 4)) in text
        # the charts: two SVGs, bars of events and points of latency
        assert await page.count("svg.chart") == 2
        assert await page.count("svg.chart rect.bar") >= 1
        assert await page.count("svg.chart circle.dot") >= 1
        assert await page.evaluate(
            "Math.max(...[...document.querySelectorAll('svg.chart rect.bar')].map(r => r.getBBox().height))"
        ) > 1
        # the inline style sheet applied under the CSP (allowed by its hash)
        assert await page.evaluate("getComputedStyle(document.querySelector('section.card')).borderRadius") == "10px"

        cookies = await page.cookies(base + "/")
        assert len(cookies) == 1
        cookie = cookies[0]
        assert cookie["name"] == status_page.COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/" and not cookie.get("session", False) and TOKEN not in cookie["value"]

        png = await page.screenshot(tmp_path / "status-page.png")
        width, height = _png_size(png)
        assert width == 1280 and height > 900 and len(png) > 30_000
        assert (tmp_path / "status-page.png").read_bytes() == png

        # 4. Log out: the form again, and the old cookie is gone.
        assert await page.follow(page.click('header form button[type="submit"]')) == 401
        assert device_id not in await page.html()
        assert await page.cookies(base + "/") == []
    browser_seconds = time.monotonic() - started
    print(f"chromium part: {browser_seconds:.1f}s")

    # Plain HTTP against the same bot.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/?token={TOKEN}") as resp:
            assert resp.status == 400 and device_id not in await resp.text()
        async with http.get(base + "/", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200 and device_id in await resp.text()
            headers = resp.headers
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        async with http.get(base + "/", headers={"Authorization": "Bearer wrong-wrong-wrong"}) as resp:
            assert resp.status == 401 and device_id not in await resp.text()
        async with http.post(base + "/login", data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 303
            raw = resp.headers["Set-Cookie"]
        flags = raw.lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags and "max-age=" in flags
        session = SimpleCookie(raw)[status_page.COOKIE].value
        async with http.get(base + "/", cookies={status_page.COOKIE: session}) as resp:
            assert resp.status == 200
        # the other endpoints on the listener are untouched
        async with http.get(base + "/health/live") as resp:
            assert resp.status == 200

    assert TOKEN not in caplog.text, "the token is never logged"
    assert "wrong token" in caplog.text
