"""The two kinds of webhook connection: the inbound HTTP endpoint and an outbound hook (a URL to POST to).

Both are :class:`~bot.bridge.RemoteConnection`\\ s, so the bridge core supervises them like any remote network: the
inbound server is (re)bound with backoff if its port is busy; an outbound hook's POSTs wait in the ordered queue while
the URL fails and are retried with exponential backoff (dropped after ``max_attempts``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from bot.bridge import PermanentSendError, RemoteCapabilities, RemoteConnection, RemoteMessage, RemoteSend

from .templates import TEMPLATES, TemplateError, forge_event, verify_bearer, verify_signature

__all__ = ["HookServer", "OutboundHook"]

log = logging.getLogger("ratchet.plugin.webhooks")

#: How long a request waits for its message to be posted before it is answered 202 (queued) instead of 200.
REPLY_TIMEOUT = 20.0


def _error(status: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None) -> web.Response:
    resp = web.json_response({"ok": False, "status": status, "error": message}, status=status, headers=headers)
    if close:
        resp.force_close()
    return resp


class HookServer(RemoteConnection):
    """The inbound endpoint: ``POST {prefix}<hook name>`` with the hook's secret posts into the hook's room."""

    capabilities = RemoteCapabilities(outgoing=False)

    def __init__(
        self,
        network: str,
        *,
        host: str,
        port: int,
        prefix: str,
        max_body: int,
        hooks: Mapping[str, Any],
        linked: Callable[[str], bool],
    ) -> None:
        super().__init__(network)
        self.host = host
        self.port = port
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.max_body = max_body
        self.hooks = hooks
        self.linked = linked
        self.bound_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._closed = asyncio.Event()
        self.accepted = 0
        self.refused = 0

    def describe(self) -> str:
        where = f"http://{self.host}:{self.bound_port}{self.prefix}" if self.bound_port else "not listening"
        return f"{where}, {len(self.hooks)} hooks, {self.accepted} posted, {self.refused} refused"

    async def connect(self) -> None:
        self._closed = asyncio.Event()
        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # lingering_time=0: a refused request's unread body is not drained, the connection is closed at once.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, lingering_time=0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.bound_port = runner.addresses[0][1] if runner.addresses else self.port
        log.info("%s: listening on http://%s:%s%s<hook>", self.network, self.host, self.bound_port, self.prefix)

    async def run(self) -> None:
        await self._closed.wait()

    async def send(self, item: RemoteSend) -> str | None:
        raise PermanentSendError("the inbound endpoint sends nothing")

    async def close(self) -> None:
        self._closed.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- requests ------------------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._process(request)
        if response.status >= 400:
            self.refused += 1
            log.info("%s: %s %s refused with %d", self.network, request.method, request.path, response.status)
        return response

    async def _process(self, request: web.Request) -> web.Response:
        if not request.path.startswith(self.prefix):
            return _error(404, f"not found: hooks are at {self.prefix}<name>", close=True)
        name = request.path[len(self.prefix) :]
        hook = self.hooks.get(name)
        if hook is None:
            return _error(404, f"unknown hook {name!r}", close=True)
        if request.method != "POST":
            return _error(405, "use POST", close=True, headers={"Allow": "POST"})
        if hook.auth == "bearer" and not verify_bearer(hook.secret, request.headers.get("Authorization")):
            return _error(401, "missing or wrong secret: send 'Authorization: Bearer <secret>'", close=True)
        if hook.auth == "hmac" and not any(h in request.headers for h in (
            "X-Hub-Signature-256", "X-Gitea-Signature", "X-Forgejo-Signature"
        )):
            return _error(401, "missing signature: send X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>",
                          close=True)
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            return _error(415, f"the body must be application/json, not {ctype}", close=True)
        length = request.content_length
        if length is not None and length > self.max_body:
            return _error(413, f"the body is {length} bytes; this endpoint takes at most {self.max_body}", close=True)
        body = await self._read_body(request)
        if body is None:
            return _error(413, f"the body is larger than the {self.max_body} bytes this endpoint takes", close=True)
        if hook.auth == "hmac" and not verify_signature(hook.secret, body, request.headers):
            return _error(401, "wrong signature: the HMAC-SHA256 of the body with the hook's secret does not match")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"malformed JSON: {exc}")
        if hook.template == "push":
            event = forge_event(request.headers)
            if event == "ping":
                return web.json_response({"ok": True, "pong": True})
            if event not in (None, "push"):
                return web.json_response({"ok": True, "ignored": f"{event} events are not posted"}, status=202)
        try:
            rendered = TEMPLATES[hook.template](payload)
        except TemplateError as exc:
            return _error(400, f"{hook.template} template: {exc}")
        if not self.linked(name):
            return _error(409, f"hook {name!r} is not linked to a room (set its room, or !webhooks link {name})")
        message = RemoteMessage(
            self.network,
            name,
            name,
            rendered.sender or hook.display_name or name,
            rendered.text,
            html=rendered.html,
            anonymous=rendered.sender is None and not hook.display_name,
            msgtype=rendered.msgtype or hook.msgtype,
        )
        future = self.deliver(message)
        try:
            event_id = await asyncio.wait_for(asyncio.shield(future), REPLY_TIMEOUT)
        except TimeoutError:
            self.accepted += 1
            return web.json_response({"ok": True, "queued": True}, status=202)
        except Exception as exc:
            log.warning("%s: posting hook %s failed: %s", self.network, name, exc)
            return _error(502, "posting into Matrix failed; try again later")
        if event_id is None:
            return _error(409, f"hook {name!r} is not linked to a room")
        self.accepted += 1
        return web.json_response({"ok": True, "event_id": event_id})

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None as soon as it exceeds ``max_body`` (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)


class OutboundHook(RemoteConnection):
    """POSTs each message of its room as JSON to ``url`` (signed with ``X-Ratchet-Signature-256`` if it has a
    secret). 2xx is success; 408, 425, 429 and 5xx or a network error are retried with backoff; other statuses drop
    the message."""

    capabilities = RemoteCapabilities(outgoing=True, html=True)

    def __init__(self, network: str, *, url: str, secret: str | None, timeout: float) -> None:
        super().__init__(network)
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = asyncio.Event()
        self.last_status: int | None = None

    def describe(self) -> str:
        status = f", last answer {self.last_status}" if self.last_status is not None else ""
        return f"POST {self.url}{status}"

    async def connect(self) -> None:
        self._closed = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers={"User-Agent": "Ratchet-Webhooks/1"}
        )

    async def run(self) -> None:
        await self._closed.wait()

    async def send(self, item: RemoteSend) -> str | None:
        if self._session is None:
            raise ConnectionError("not connected")
        body = json.dumps(item.payload or {"body": item.text}, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Ratchet-Signature-256"] = f"sha256={digest}"
        async with self._session.post(self.url, data=body, headers=headers) as resp:
            self.last_status = resp.status
            if 200 <= resp.status < 300:
                return None
            if resp.status in (408, 425, 429) or resp.status >= 500:
                raise ConnectionError(f"{self.url} answered {resp.status}")
            raise PermanentSendError(f"{self.url} answered {resp.status}")

    async def close(self) -> None:
        self._closed.set()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
