"""A man in the middle for fault tests: a small reverse proxy between a client (the bot, a member) and Synapse.

:class:`FaultProxy` listens on ``127.0.0.1`` and forwards every request to the homeserver, unless a rule says
otherwise. Rules match a regular expression searched in the request path (``/_matrix/client/v3/sync``; the query
string is not part of it) and optionally a method, and apply a limited number of times (or forever):

* :meth:`~FaultProxy.fail` answers with a status code and a Matrix error body, without forwarding;
* :meth:`~FaultProxy.malformed` answers 200 with a body that is not JSON, without forwarding;
* :meth:`~FaultProxy.delay` waits before forwarding; :meth:`~FaultProxy.hold` waits until the test releases it;
* :meth:`~FaultProxy.drop` closes the connection without answering, either before forwarding or *after* the
  homeserver processed the request (``after_forward=True``: "the server did it, the client never heard");
* :meth:`~FaultProxy.rewrite` changes a JSON answer with a callback (e.g. a ``/sync`` body);
* :meth:`~FaultProxy.on_answer` calls back when the homeserver has answered (before or after the client gets the
  answer), e.g. to ``kill -9`` the bot at that exact moment.

Every request is recorded (:attr:`~FaultProxy.seen`) with its time, method, path and the status the client got, so a
test can count what a client did while the homeserver was down (:meth:`~FaultProxy.count`). When the homeserver
cannot be reached, the proxy answers 502 like a reverse proxy in front of a dead Synapse would (or, with
``upstream_down="drop"``, closes the connection).

Why an in-process aiohttp proxy rather than a separate tool (toxiproxy, mitmproxy): it runs in the test's own event
loop, so a test changes rules between two awaits, waits for "the bot has just asked for X", and runs its callback at
the exact moment the homeserver answered; rules see and change whole JSON bodies per path, not just bytes; and
aiohttp is already installed (nio uses it), so there is nothing else to install or to leave running. Only
127.0.0.1 is ever bound or contacted (the upstream is the test's own Synapse).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
from aiohttp import web
from yarl import URL

__all__ = ["FaultProxy", "Request", "Rule", "Seen", "backoff_violations"]

log = logging.getLogger(__name__)

#: Headers that belong to one hop and are not copied through the proxy.
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}
#: The longest a forwarded request may take (a /sync long-poll is 30 s).
_UPSTREAM_TIMEOUT = 120.0


@dataclass(frozen=True)
class Request:
    """What a rule callback learns about a request."""

    method: str
    path: str
    query: str
    body: bytes

    def json(self) -> Any:
        """The request body as JSON (None if it is not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Seen:
    """One request that reached the proxy: when, what, and what the client got (0: no answer, the connection was
    dropped)."""

    time: float
    method: str
    path: str
    status: int = 0
    retry_after_ms: int | None = None


@dataclass
class Rule:
    """One fault. ``times`` is how often it still applies (None: always); ``hits`` how often it did."""

    kind: str
    pattern: re.Pattern[str]
    method: str | None = None
    times: int | None = None
    hits: int = 0
    status: int = 500
    body: Any = None
    seconds: float = 0.0
    after_forward: bool = False
    callback: Callable[..., Any] | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    hit: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.pattern.search(path) is not None

    def use(self) -> None:
        self.hits += 1
        if self.times is not None:
            self.times -= 1
        self.hit.set()

    def release(self) -> None:
        """Let held requests (a :meth:`FaultProxy.hold` rule) through, and stop holding new ones."""
        self.times = 0
        self.gate.set()

    async def wait_hit(self, timeout: float = 30.0) -> None:
        """Wait until the rule has applied at least once."""
        await asyncio.wait_for(self.hit.wait(), timeout)


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` that injects faults by rule. Use ``async with``."""

    def __init__(self, upstream: str, *, upstream_down: str = "502", server_name: str = "localhost") -> None:
        self.upstream = URL(upstream)
        #: The homeserver's server name (so the proxy can stand in for a SynapseServer in ``write_bot_config``).
        self.server_name = server_name
        if self.upstream.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to a homeserver on this machine")
        self.upstream_down = upstream_down
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_UPSTREAM_TIMEOUT), auto_decompress=True
        )
        return self

    async def close(self) -> None:
        """Stop listening; held requests are released first."""
        for rule in self.rules:
            rule.gate.set()
        if self._session is not None:  # first: requests still waiting on the homeserver (long polls) end now
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The proxy's base URL, to give the bot as its homeserver."""
        assert self._port is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._port}"

    # -- rules ------------------------------------------------------------------------------------------------

    def _add(self, kind: str, pattern: str, **kwargs: Any) -> Rule:
        rule = Rule(kind, re.compile(pattern), **kwargs)
        self.rules.append(rule)
        return rule

    def fail(
        self, pattern: str, status: int = 500, *, times: int | None = 1, method: str | None = None, body: Any = None
    ) -> Rule:
        """Answer ``status`` (with a Matrix error body, or ``body``) without forwarding."""
        if body is None:
            body = {"errcode": "M_UNKNOWN", "error": f"injected {status}"}
        return self._add("fail", pattern, status=status, times=times, method=method, body=body)

    def malformed(self, pattern: str, *, times: int | None = 1, method: str | None = None, status: int = 200) -> Rule:
        """Answer ``status`` with a truncated, non-JSON body (declared as JSON) without forwarding."""
        return self._add("malformed", pattern, status=status, times=times, method=method)

    def delay(self, pattern: str, seconds: float, *, times: int | None = None, method: str | None = None) -> Rule:
        """Wait ``seconds`` before forwarding."""
        return self._add("delay", pattern, seconds=seconds, times=times, method=method)

    def hold(self, pattern: str, *, times: int | None = None, method: str | None = None) -> Rule:
        """Hold matching requests until ``rule.release()`` (then forward them)."""
        return self._add("hold", pattern, times=times, method=method)

    def drop(
        self, pattern: str, *, times: int | None = 1, method: str | None = None, after_forward: bool = False
    ) -> Rule:
        """Close the client's connection without an answer; ``after_forward``: once the homeserver processed it."""
        return self._add("drop", pattern, times=times, method=method, after_forward=after_forward)

    def rewrite(
        self,
        pattern: str,
        callback: Callable[[Any, Request], Any],
        *,
        times: int | None = None,
        method: str | None = None,
    ) -> Rule:
        """Pass JSON answers through ``callback(body, request)``; its result (if not None) is sent instead."""
        return self._add("rewrite", pattern, callback=callback, times=times, method=method)

    def on_answer(
        self,
        pattern: str,
        callback: Callable[[Any, Request], Awaitable[None] | None],
        *,
        times: int | None = None,
        method: str | None = None,
        after_delivery: bool = False,
    ) -> Rule:
        """Call ``callback(body, request)`` when the homeserver answered: before the client gets the answer, or
        ``after_delivery`` (once it was written to the client's connection)."""
        return self._add("answer", pattern, callback=callback, times=times, method=method, after_forward=after_delivery)

    def remove(self, rule: Rule) -> None:
        """Forget a rule (held requests are let through)."""
        rule.gate.set()
        with contextlib.suppress(ValueError):
            self.rules.remove(rule)

    def clear(self) -> None:
        """Forget every rule."""
        for rule in list(self.rules):
            self.remove(rule)

    # -- observations -----------------------------------------------------------------------------------------

    def count(self, pattern: str = "", *, since: float = 0.0, until: float | None = None) -> int:
        """How many requests whose path matches ``pattern`` arrived in ``[since, until]`` (``time.monotonic()``)."""
        regex = re.compile(pattern)
        return sum(
            1
            for s in self.seen
            if s.time >= since and (until is None or s.time <= until) and regex.search(s.path) is not None
        )

    def requests(self, pattern: str = "", *, since: float = 0.0) -> list[Seen]:
        """The recorded requests whose path matches ``pattern``, oldest first."""
        regex = re.compile(pattern)
        return [s for s in self.seen if s.time >= since and regex.search(s.path) is not None]

    async def wait_for_request(self, pattern: str, *, since: float = 0.0, timeout: float = 30.0) -> Seen:
        """Wait until a request matching ``pattern`` arrives (after ``since``); return it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests(pattern, since=since)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request matching {pattern!r} within {timeout}s")
            await asyncio.sleep(0.02)

    # -- the handler ------------------------------------------------------------------------------------------

    def _take(self, kinds: tuple[str, ...], method: str, path: str, *, first: bool = False) -> list[Rule]:
        found = []
        for rule in list(self.rules):
            if rule.kind in kinds and rule.matches(method, path):
                rule.use()
                found.append(rule)
                if first:
                    break
        return found

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        seen = Seen(time.monotonic(), method, path)
        self.seen.append(seen)
        body = await request.read()
        info = Request(method, path, request.query_string, body)

        for rule in self._take(("delay",), method, path):
            await asyncio.sleep(rule.seconds)
        for rule in self._take(("hold",), method, path):
            await rule.gate.wait()
        for rule in self.rules:  # the first answering rule (in the order they were added) answers
            if rule.kind in ("fail", "malformed", "drop") and not rule.after_forward and rule.matches(method, path):
                rule.use()
                return self._injected(rule, request, seen)
        after_drop = [r for r in self._take(("drop",), method, path, first=True) if r.after_forward]

        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = self.upstream.join(URL(request.raw_path, encoded=True))
        try:
            async with self._session.request(method, url, headers=headers, data=body, allow_redirects=False) as up:
                payload = await up.read()
                status = up.status
                out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("proxy: upstream unreachable for %s %s: %s", method, path, exc)
            if self.upstream_down == "drop":
                return self._abort(request, seen)
            seen.status = 502
            return web.json_response({"errcode": "M_UNKNOWN", "error": "bad gateway (injected)"}, status=502)

        parsed: Any = None
        is_json = out_headers.get("Content-Type", "").startswith("application/json")
        if is_json:
            with contextlib.suppress(ValueError):
                parsed = json.loads(payload)
        for rule in self._take(("rewrite",), method, path):
            if parsed is not None and rule.callback is not None:
                changed = rule.callback(parsed, info)
                if changed is not None:
                    parsed = changed
                payload = json.dumps(parsed).encode()
        delivered: list[Rule] = []
        for rule in self._take(("answer",), method, path):
            if rule.after_forward:
                delivered.append(rule)
            else:
                await _maybe_await(rule.callback(parsed, info) if rule.callback else None)
        if after_drop:
            return self._abort(request, seen)

        seen.status = status
        if status == 429 and isinstance(parsed, dict):
            retry = parsed.get("retry_after_ms")
            seen.retry_after_ms = retry if isinstance(retry, int) else None
        response = web.StreamResponse(status=status, headers=out_headers)
        response.content_length = len(payload)
        try:
            await response.prepare(request)
            await response.write(payload)
            await response.write_eof()
        except ConnectionError:  # the client is gone (killed): nothing to answer
            seen.status = 0
            raise asyncio.CancelledError from None  # aiohttp's quiet path for a vanished client
        for rule in delivered:
            await _maybe_await(rule.callback(parsed, info) if rule.callback else None)
        return response

    def _injected(self, rule: Rule, request: web.Request, seen: Seen) -> web.StreamResponse:
        if rule.kind == "drop":
            return self._abort(request, seen)
        seen.status = rule.status
        if rule.kind == "malformed":
            truncated = b'{"next_batch": "s1_2_3", "rooms": {"join": {'
            return web.Response(status=rule.status, body=truncated, content_type="application/json")
        return web.json_response(rule.body, status=rule.status)

    @staticmethod
    def _abort(request: web.Request, seen: Seen) -> NoReturn:
        seen.status = 0
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp's quiet path for a connection that is gone


def backoff_violations(
    attempts: Sequence[Seen], *, first: float, cap: float = float("inf"), factor: float = 2.0, slack: float = 0.9
) -> list[str]:
    """The gaps between consecutive ``attempts`` (oldest first) that are shorter than an exponential backoff allows.

    Attempt ``k + 1`` (k = 1, 2, ...) must arrive at least ``slack * min(cap, first * factor ** (k - 1))`` seconds
    after attempt ``k``: ``first`` is the shortest first wait (for a jittered delay, the bottom of its range) and
    ``slack`` allows for timer granularity. Only lower bounds: a busy machine makes gaps longer, never shorter, so
    the check does not flake under load, while a client that retries without backing off fails it at once.
    Returns one line per violation (empty: the spacing is a backoff).
    """
    problems = []
    for k, (before, after) in enumerate(itertools.pairwise(attempts), start=1):
        need = slack * min(cap, first * factor ** (k - 1))
        gap = after.time - before.time
        if gap < need:
            problems.append(f"attempt {k + 1} ({after.method} {after.path}) came {gap:.2f}s after attempt {k}, "
                            f"not at least {need:.2f}s")
    return problems


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        await value
