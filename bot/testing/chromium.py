"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (one websocket, through aiohttp).

Enough of a browser driver to test a server-rendered page the way an operator's browser sees it: load a URL and get
the document's HTTP status, type into a field and click a button (real input events, so forms submit as they would
by hand), read the DOM, the cookies the browser keeps, and save a full-page screenshot::

    async with Chromium(tmp_path / "chromium") as browser:
        page = await browser.new_page()
        status = await page.goto("http://127.0.0.1:8080/")
        await page.type("#token", "...")
        status = await page.follow(page.click("button[type=submit]"))
        png = await page.screenshot(tmp_path / "page.png")

The binary is ``$RATCHET_CHROMIUM`` or the first of ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH
(:func:`find_chromium`; Debian's package is ``chromium``). It runs with a throwaway profile and with everything that
would reach out to the network (component updates, sync, background networking) switched off, so it works offline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

__all__ = ["CdpError", "Chromium", "Page", "find_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Flags for a quiet, offline, headless browser (without the background-networking ones, a closed network refuses
#: Chromium's own connections and slows everything down).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--font-render-hinting=none",
)


def find_chromium() -> str | None:
    """The Chromium binary to use, or None if there is none."""
    configured = os.environ.get("RATCHET_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else shutil.which(configured)
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _open_log(path: Path) -> BinaryIO:
    """Chromium's own output goes to a file next to its profile (for when a test fails)."""
    return open(path, "ab")


class CdpError(Exception):
    """Chromium answered a DevTools command with an error, or did not start."""


class Chromium:
    """A headless Chromium process and the DevTools connection to it (an async context manager)."""

    def __init__(
        self, profile_dir: Path, *, binary: str | None = None, width: int = 1280, height: int = 900
    ) -> None:
        self.profile_dir = Path(profile_dir)
        self.binary = binary or find_chromium()
        self.width = width
        self.height = height
        self.proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, Callable[[dict[str, Any]], bool], asyncio.Future[dict]]] = []

    async def start(self, timeout: float = 30) -> Chromium:
        """Start the browser and connect to it."""
        if not self.binary:
            raise CdpError("no Chromium binary found (apt install chromium)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        log = _open_log(self.profile_dir.parent / f"{self.profile_dir.name}.log")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                *FLAGS,
                f"--user-data-dir={self.profile_dir}",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                f"--window-size={self.width},{self.height}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                break
            if self.proc.returncode is not None:
                raise CdpError(f"Chromium exited with {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                await self.close()
                raise CdpError(f"Chromium did not open its DevTools port within {timeout}s")
            await asyncio.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        self._reader = asyncio.create_task(self._read(), name="cdp reader")
        return self

    async def __aenter__(self) -> Chromium:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result; raises :class:`CdpError` on an error answer."""
        if self._ws is None:
            raise CdpError("not connected")
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self._ws.send_str(json.dumps(message))
            answer = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def wait_for(
        self, method: str, *, session: str | None = None, predicate: Callable[[dict[str, Any]], bool] | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event ``method`` (of ``session``) whose params match ``predicate``; register it
        before doing what causes the event."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session, predicate or (lambda _params: True), future))
        return future

    async def new_page(self) -> Page:
        """A new tab, attached, with page and network events on."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Network.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    async def close(self) -> None:
        """Close the browser (killed if it does not exit within 5 s) and the connection."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self.send("Browser.close", timeout=5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self._pending.get(data["id"])
                    if future is not None and not future.done():
                        future.set_result(data)
                    continue
                method, session, params = data.get("method"), data.get("sessionId"), data.get("params", {})
                for waiter in list(self._waiters):
                    w_method, w_session, predicate, future = waiter
                    if future.done():
                        self._waiters.remove(waiter)
                    elif w_method == method and (w_session is None or w_session == session) and predicate(params):
                        self._waiters.remove(waiter)
                        future.set_result(params)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("the DevTools connection closed"))


class Page:
    """One tab of a :class:`Chromium`."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30) -> dict[str, Any]:
        """A DevTools command on this tab."""
        return await self.browser.send(method, params, session=self.session, timeout=timeout)

    async def follow(self, action: Awaitable[Any], *, timeout: float = 30) -> int:
        """Run ``action`` (which navigates: a click on a submit button, ``Page.navigate``...) and wait until the new
        document has loaded; returns the document's HTTP status (after redirects)."""
        response = self.browser.wait_for(
            "Network.responseReceived", session=self.session, predicate=lambda p: p.get("type") == "Document"
        )
        loaded = self.browser.wait_for("Page.loadEventFired", session=self.session)
        try:
            await action
            done = await asyncio.wait_for(asyncio.gather(response, loaded), timeout)
        finally:
            response.cancel()
            loaded.cancel()
        return int(done[0]["response"]["status"])

    async def goto(self, url: str, *, timeout: float = 30) -> int:
        """Load ``url``; returns the document's HTTP status."""

        async def navigate() -> None:
            result = await self.send("Page.navigate", {"url": url})
            if result.get("errorText"):
                raise CdpError(f"cannot load {url}: {result['errorText']}")

        return await self.follow(navigate(), timeout=timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools evaluates it; the page's CSP does not apply)."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def html(self) -> str:
        """The whole document as it is now."""
        return str(await self.evaluate("document.documentElement.outerHTML"))

    async def text(self) -> str:
        """The document's visible text."""
        return str(await self.evaluate("document.body ? document.body.innerText : ''"))

    async def count(self, selector: str) -> int:
        """How many elements match ``selector``."""
        return int(await self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))

    async def type(self, selector: str, text: str) -> None:
        """Focus the element ``selector`` and type ``text`` into it (an input event, as a keyboard would)."""
        focused = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false; "
            "e.focus(); return document.activeElement === e; })()"
        )
        if not focused:
            raise CdpError(f"no focusable element {selector!r}")
        await self.send("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """Click the middle of the element ``selector`` with the mouse."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise CdpError(f"no element {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def cookies(self, url: str) -> list[dict[str, Any]]:
        """The cookies the browser would send to ``url`` (with their flags)."""
        result = await self.send("Network.getCookies", {"urls": [url]})
        return list(result.get("cookies", []))

    async def screenshot(self, path: Path | None = None, *, full_page: bool = True) -> bytes:
        """A PNG of the page (all of it with ``full_page``), saved to ``path`` if given."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        result = await self.send("Page.captureScreenshot", params, timeout=60)
        data = base64.b64decode(result["data"])
        if path is not None:
            await asyncio.to_thread(Path(path).write_bytes, data)
        return data
