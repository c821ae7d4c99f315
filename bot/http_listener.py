"""One optional HTTP listener per bot, shared by the runtime's endpoints and plugins that serve HTTP.

The runtime serves ``/metrics``, ``/health/live``, ``/health/ready`` and the status page on it
(bot/runtime/endpoints.py); the webhooks bridge mounts its hooks under its ``path_prefix`` instead of opening a second
port. It is off unless the config has an ``http`` section, and binds to 127.0.0.1 unless told otherwise.

Routes are looked up per request in a table that can change while the server runs (aiohttp freezes its own router
once started, and plugins mount and unmount as they are loaded and reloaded): exact paths first, then the longest
mounted prefix.

Bounded by construction: request lines and headers (aiohttp's limits, set here explicitly: a longer line or field,
or more header fields, is answered 400), bodies (``max_body``, and a mount reads its own body with its own bound), the
number of open connections (beyond ``MAX_CONNECTIONS`` a new one is answered 503 and closed at once, so a flood of
idle clients cannot use up the process's file descriptors, which the bot's own connections to the homeserver need),
and how long a connection may stay idle or trickle a request's head (``IDLE_TIMEOUT``). A stalled or hostile client
holds one connection and nothing else; nothing here ever blocks the event loop, so the bot's Matrix work goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["Handler", "HttpListener", "ListenerError"]

log = logging.getLogger("ratchet.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Longest request line and header field, bytes.
MAX_LINE = 8190
MAX_FIELD = 8190
#: Largest request body read by aiohttp on the listener's own routes, bytes (mounts read theirs themselves).
MAX_BODY = 64 * 1024
#: Most header fields in one request.
MAX_HEADERS = 100
#: Connections open at once; beyond it new ones are answered 503 and closed until some close.
MAX_CONNECTIONS = 256
#: Seconds a connection may stay without a complete request (at its start, or between keep-alive requests).
IDLE_TIMEOUT = 15.0

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
    b"Connection: close\r\n\r\n{\"error\": \"busy\"}"
)


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log: a malformed request (too long a header, too many...) is the client's problem and is
    answered 400; it is logged in one line at INFO, not as an ERROR with a traceback a hostile client could repeat."""

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            peer = args[0] if args else "?"
            first_line = str(exc_info.message).splitlines()[0][:120] if exc_info.message else ""
            self.logger.info("HTTP listener: malformed request from %s refused (%d %s)", peer, exc_info.code,
                             first_line)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


class _Busy(asyncio.Protocol):
    """A connection beyond ``MAX_CONNECTIONS``: answered 503, whatever it sends is discarded, closed within 1 s."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = asyncio.get_running_loop().call_later(1.0, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # read and dropped, so that closing does not reset the connection before the client reads the 503

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()


class ListenerError(Exception):
    """The listener could not start (the port is in use, the address is not local...); the message says why."""


class HttpListener:
    """An aiohttp server whose routes can be added and removed while it runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, max_body: int = MAX_BODY) -> None:
        self.host = host
        self.port = port
        self.max_body = max_body
        self.bound_port: int | None = None
        self._exact: dict[str, Handler] = {}
        self._mounts: dict[str, Handler] = {}
        self._runner: web.AppRunner | None = None
        self._listening: asyncio.AbstractServer | None = None
        self._last_busy_warning = 0.0
        self._open = 0

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (port 0 in the config is filled in once started)."""
        return f"http://{self.host}:{self.bound_port or self.port}"

    def route(self, path: str, handler: Handler) -> None:
        """Serve ``handler`` at exactly ``path`` (any method; the handler checks it)."""
        self._exact[path] = handler

    def mount(self, prefix: str, handler: Handler) -> Callable[[], None]:
        """Serve every path under ``prefix`` (which ends with ``/``) with ``handler``; returns the unmount call.

        Raises ValueError if the prefix is taken or overlaps a core route: two owners of one path would be a
        silent misroute.
        """
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"a mount prefix starts and ends with '/', not {prefix!r}")
        if prefix == "/" or prefix in self._mounts:
            raise ValueError(f"{prefix} is already served on the HTTP listener")
        for path in self._exact:
            if path.startswith(prefix):
                raise ValueError(f"{prefix} would hide {path}, which the bot serves")
        self._mounts[prefix] = handler

        def unmount() -> None:
            if self._mounts.get(prefix) is handler:
                del self._mounts[prefix]

        return unmount

    async def start(self) -> None:
        """Bind and serve. Raises :class:`ListenerError` with the address when it cannot."""
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(
            app,
            access_log=None,  # the status page's token travels in headers and form bodies, never logged anyway
            handle_signals=False,
            shutdown_timeout=1.0,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            logger=_ServerLog(log, {}),
            keepalive_timeout=IDLE_TIMEOUT,  # (aiohttp also applies it from a connection's start)
            # A body the handler did not read (a refused request's, e.g. a hook's 413) is not drained for up to 10 s:
            # the connection is closed once the answer is sent.
            lingering_time=0,
        )
        await runner.setup()
        server = runner.server
        assert server is not None

        def connection() -> asyncio.BaseProtocol:
            # The listening socket is ours rather than a web.TCPSite so that a connection beyond the limit never
            # reaches aiohttp: it gets a 503 and is closed.
            if len(server.connections) >= MAX_CONNECTIONS:
                self._refused_busy()
                return _Busy()
            return server()

        try:
            listening = await asyncio.get_running_loop().create_server(
                connection, self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            await runner.cleanup()
            raise ListenerError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._runner = runner
        self._listening = listening
        sockets = listening.sockets
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("HTTP listener on %s", self.url)

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.close()  # no new connections; the open ones are shut down by the runner
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _refused_busy(self) -> None:
        now = time.monotonic()
        if now - self._last_busy_warning > 60:
            self._last_busy_warning = now
            log.warning("HTTP listener: %d connections are open; new ones are answered 503 until some close",
                        MAX_CONNECTIONS)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if self._open >= MAX_CONNECTIONS:
            return web.json_response({"error": "busy"}, status=503, headers={"Connection": "close"})
        self._open += 1
        try:
            handler = self._find(request.path)
            if handler is None:
                return web.json_response({"error": "not found"}, status=404)
            return await handler(request)
        finally:
            self._open -= 1

    def _find(self, path: str) -> Handler | None:
        handler = self._exact.get(path)
        if handler is not None:
            return handler
        best = ""
        for prefix in self._mounts:
            if path.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self._mounts[best] if best else None
