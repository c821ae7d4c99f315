"""The two kinds of webhook connection: the inbound HTTP endpoint and an outbound hook (a URL to POST to).

Both are :class:`~bot.bridge.RemoteConnection`\\ s, so the bridge core supervises them like any remote network: the
inbound server is (re)bound with backoff if its port is busy; an outbound hook's POSTs wait in the ordered queue while
the URL fails and are retried with exponential backoff (dropped after ``max_attempts``).

When the bot runs its own HTTP listener (the ``http`` config section: metrics, health), the inbound endpoint does not
open a port of its own: it mounts its handler on that listener at its path prefix (one server, one port), and unmounts
it when it closes (a reload mounts it again). Its bounds stay its own: it reads the body itself, up to ``max_body``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from bot.bridge import (
    InboundRefused,
    PermanentSendError,
    RemoteCapabilities,
    RemoteConnection,
    RemoteMessage,
    RemoteSend,
)

from .templates import (
    SIGNATURE_HEADERS,
    TEMPLATES,
    TIMESTAMP_HEADER,
    TemplateError,
    forge_event,
    matching_signature,
    redact_url,
    verify_bearer,
)

__all__ = ["HookServer", "OutboundHook"]

log = logging.getLogger("ratchet.plugin.webhooks")

#: How long a request waits for its message to be posted before it is answered 202 (queued) instead of 200.
REPLY_TIMEOUT = 20.0
#: The one answer to a request for an unknown hook or with missing or wrong credentials: which hook names exist is
#: not given away.
UNAUTHORIZED = ("unknown hook, or a missing or wrong secret or signature: send 'Authorization: Bearer <secret>', or "
                "X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body with the hook's secret>")
#: Signatures remembered per endpoint to refuse replays (the oldest are forgotten beyond it).
MAX_SEEN_SIGNATURES = 10000


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
        listener: Any = None,
    ) -> None:
        super().__init__(network)
        self.host = host
        self.port = port
        #: The bot's HTTP listener (``self.bot.http``) to mount on instead of binding ``host:port``; None: our own.
        self.listener = listener
        self._unmount: Callable[[], None] | None = None
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.max_body = max_body
        self.hooks = hooks
        self.linked = linked
        self.bound_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._closed = asyncio.Event()
        self.accepted = 0
        self.refused = 0
        #: (hook, signature) -> when it stops being remembered (monotonic), for refusing replays.
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._decoy = secrets.token_urlsafe(32)  # checked against for unknown hooks, so they take as long

    def describe(self) -> str:
        if self.listener is not None:
            where = (f"{self.listener.url}{self.prefix} (the bot's HTTP listener)" if self.listener.bound_port
                     else "mounted on the bot's HTTP listener, which is not listening yet")
        else:
            where = f"http://{self.host}:{self.bound_port}{self.prefix}" if self.bound_port else "not listening"
        return f"{where}, {len(self.hooks)} hooks, {self.accepted} posted, {self.refused} refused"

    async def connect(self) -> None:
        self._closed = asyncio.Event()
        if self.listener is not None:
            self._unmount = self.listener.mount(self.prefix, self._handle)  # ValueError: the prefix is taken
            self.bound_port = self.listener.bound_port
            log.info("%s: mounted on the bot's HTTP listener (%s%s<hook>; the plugin's own host and port are not "
                     "used)", self.network, self.listener.url, self.prefix)
            return
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
        unmount, self._unmount = self._unmount, None
        if unmount is not None:
            unmount()
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
        if request.method != "POST":
            return _error(405, "use POST", close=True, headers={"Allow": "POST"})
        name = request.path[len(self.prefix) :]
        hook = self.hooks.get(name)
        # Up to the credentials, what is checked and the answers depend on the request alone, never on whether the
        # hook exists or how it authenticates: an unknown hook and wrong credentials get the same 401.
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            return _error(415, f"the body must be application/json, not {ctype}", close=True)
        length = request.content_length
        if length is not None and length > self.max_body:
            return _error(413, f"the body is {length} bytes; this endpoint takes at most {self.max_body}", close=True)
        signed = any(header in request.headers for header, _ in SIGNATURE_HEADERS)
        authorization = request.headers.get("Authorization")
        if not signed:
            # A bearer token is checked before the body is read.
            ok = hook is not None and hook.auth == "bearer"
            if not verify_bearer(hook.secret if ok else self._decoy, authorization) or not ok:
                return _error(401, UNAUTHORIZED, close=True)
        body = await self._read_body(request)
        if body is None:
            return _error(413, f"the body is larger than the {self.max_body} bytes this endpoint takes", close=True)
        seen_key: tuple[str, str] | None = None
        if signed:
            timestamp = request.headers.get(TIMESTAMP_HEADER)
            ok = hook is not None and hook.auth == "hmac"
            signature = matching_signature(hook.secret if ok else self._decoy, body, request.headers,
                                           timestamp=timestamp.strip() if timestamp is not None else None)
            if signature is None or not ok:
                return _error(401, UNAUTHORIZED)
            problem = self._check_fresh(name, hook, timestamp, signature)
            if problem is not None:
                return problem
            seen_key = (name, signature)
        response = await self._post(request, name, hook, body)
        if seen_key is not None and response.status in (429, 502, 503):
            self._seen.pop(seen_key, None)  # not posted: the sender may try the same request again
        return response

    def _check_fresh(self, name: str, hook: Any, timestamp: str | None, signature: str) -> web.Response | None:
        """Replay protection for a signed request whose signature is good: its timestamp (if any) is at most the
        hook's ``max_age`` old, and the same signature was not seen within that time. None if it may go on."""
        max_age = float(hook.max_age)
        if timestamp is None:
            if hook.require_timestamp:
                return _error(401, f"a signed {TIMESTAMP_HEADER} is required: send it and sign "
                                   f"'<timestamp>.<body>'")
        else:
            try:
                age = time.time() - float(timestamp)
            except ValueError:
                return _error(401, f"{TIMESTAMP_HEADER} must be unix seconds")
            if abs(age) > max_age:
                return _error(401, f"the signature's timestamp is {age:.0f}s old; at most {max_age:.0f}s is accepted")
        now = time.monotonic()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        key = (name, signature)
        if key in self._seen:
            log.warning("%s: hook %s: a signed request was sent again (a replay?); refused", self.network, name)
            return _error(409, "this signed request was already received; a replay is not posted again")
        self._seen[key] = now + max_age
        while len(self._seen) > MAX_SEEN_SIGNATURES:
            self._seen.popitem(last=False)
        return None

    async def _post(self, request: web.Request, name: str, hook: Any, body: bytes) -> web.Response:
        """The request is authenticated: render its payload and post it."""
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
            extra={"named": rendered.sender is not None},
        )
        future = self.deliver(message)
        try:
            event_id = await asyncio.wait_for(asyncio.shield(future), REPLY_TIMEOUT)
        except TimeoutError:
            self.accepted += 1
            return web.json_response({"ok": True, "queued": True}, status=202)
        except InboundRefused as exc:
            if exc.reason == "flood":
                return _error(429, f"hook {name!r} is sending too fast; try again later", headers={"Retry-After": "10"})
            return _error(503, "too many messages are waiting to be posted; try again later",
                          headers={"Retry-After": "30"})
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
        return f"POST {redact_url(self.url)}{status}"

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
                raise ConnectionError(f"{redact_url(self.url)} answered {resp.status}")
            raise PermanentSendError(f"{redact_url(self.url)} answered {resp.status}")

    async def close(self) -> None:
        self._closed.set()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
