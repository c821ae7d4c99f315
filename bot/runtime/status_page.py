"""The status page at ``/`` on the HTTP listener: what the bot is, what it is doing, what went wrong. Behind a token.

It is served only when a status token is configured (``http.status_token`` or ``http.status_token_file``, read once
here, at start). A viewer proves they hold it in one of two ways:

* ``Authorization: Bearer <token>`` on the request (scripts, ``curl``);
* the login form that ``/`` shows without it: the browser POSTs the token to ``login`` and gets a random session
  cookie (HttpOnly, SameSite=Strict, Path=/, 8 hours, Secure when the request came over HTTPS); ``logout`` ends it.
  Sessions live in memory (a restart logs everyone out), at most :data:`MAX_SESSIONS`, the oldest dropped first.

The token is never taken from a URL (a request with a query string is refused before anything is checked, so a
token pasted there is not evaluated, and the listener logs no access lines anyway); it is compared in constant time
(SHA-256 digests through ``hmac.compare_digest``, so neither its content nor its length leaks), and never logged. A
wrong token costs :data:`FAILURE_DELAY` seconds, and only one attempt is evaluated at a time: attempts that arrive
meanwhile get 429 unevaluated, so guessing runs at one try per second at most whatever the number of connections.
Form bodies are bounded (:data:`MAX_FORM`) and must arrive within :data:`FORM_TIMEOUT` seconds.

Every response carries a strict Content-Security-Policy (no script at all, the one inline style sheet by hash, no
framing, forms only to this origin), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``. Links and form actions are relative, so the page also works under a reverse proxy's
sub-path.

The page itself is rendered by bot/runtime/status_render.py from a :class:`StatusSnapshot` built here. The activity
charts come from :class:`ActivityHistory`: a background task (started and stopped with the runtime) that samples the
routed-event counter and the handler latency histogram every :data:`SAMPLE_INTERVAL` seconds and keeps the last
hour in memory. The event hot path is untouched: it only reads counters that are kept anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import urllib.parse
from collections import deque
from typing import Any

from aiohttp import web

from bot import __version__
from bot.bridge import Bridge
from bot.http_listener import HttpListener
from bot.log import add_secret
from bot.metrics import Metrics, Ticker
from bot.runtime.status_render import (
    BridgeRow,
    ErrorRow,
    PluginRow,
    RoomRow,
    Sample,
    StatusSnapshot,
    content_security_policy,
    render_login,
    render_status,
)
from bot.stats import BotStats

__all__ = ["ActivityHistory", "StatusPage", "install_status_page", "snapshot"]

log = logging.getLogger("ratchet.http")

#: Seconds between two samples of the activity history (tests set it lower before the bot starts).
SAMPLE_INTERVAL = 60.0
#: How far back the activity charts look, seconds.
HISTORY_WINDOW = 3600.0
#: The session cookie's name and lifetime (seconds), and how many sessions are kept at once.
COOKIE = "ratchet_status"
SESSION_LIFETIME = 8 * 3600
MAX_SESSIONS = 32
#: Largest login form body, bytes, and how long it may take to arrive, seconds.
MAX_FORM = 4096
FORM_TIMEOUT = 10.0
#: Seconds a wrong token waits before its answer (one evaluated attempt at a time).
FAILURE_DELAY = 1.0
#: Rooms put into one snapshot at most (sorted by name; the page says how many more there are).
MAX_ROOMS = 300


# -- activity history -------------------------------------------------------------------------------------------


class ActivityHistory(Ticker):
    """Events per minute and mean handler latency, sampled every ``interval`` seconds over the last ``window``.

    Reads only what is counted anyway (``stats.events_routed`` and the handler latency histogram's ``_sum`` and
    ``_count``); memory is bounded by ``window / interval`` samples.
    """

    def __init__(
        self, stats: BotStats, metrics: Metrics, *, interval: float | None = None, window: float = HISTORY_WINDOW
    ) -> None:
        self.stats = stats
        self.metrics = metrics
        self.interval = float(interval if interval is not None else SAMPLE_INTERVAL)
        self.window = window
        self._samples: deque[Sample] = deque(maxlen=max(2, min(3600, int(window / self.interval) + 1)))
        self._last: tuple[float, int, float, float] | None = None

    def samples(self) -> tuple[Sample, ...]:
        """The samples within the window, oldest first."""
        cutoff = time.time() - self.window
        return tuple(s for s in self._samples if s.at >= cutoff)

    def sample(self) -> Sample | None:
        """Take one sample now (the first call only sets the baseline and returns None)."""
        now_mono, now = time.monotonic(), time.time()
        events = self.stats.events_routed
        total, count = self._handler_totals()
        last, self._last = self._last, (now_mono, events, total, count)
        if last is None:
            return None
        elapsed = max(1e-6, now_mono - last[0])
        ran = count - last[3]
        point = Sample(
            at=now,
            events_per_minute=max(0, events - last[1]) * 60.0 / elapsed,
            latency_ms=(total - last[2]) / ran * 1000.0 if ran > 0 else None,
        )
        self._samples.append(point)
        return point

    def _handler_totals(self) -> tuple[float, float]:
        total = count = 0.0
        for family in self.metrics.handler_duration.collect():
            for s in family.samples:
                if s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_count"):
                    count += s.value
        return total, count

    def start(self) -> None:
        """Take the baseline sample and start sampling in the background (idempotent)."""
        if self._task is None or self._task.done():
            self.sample()
        super().start()

    def tick(self, late: float) -> None:
        self.sample()


# -- the snapshot -----------------------------------------------------------------------------------------------


def snapshot(runtime: Any, history: ActivityHistory | None = None, *, session: bool = False) -> StatusSnapshot:
    """Read everything the page shows from ``runtime`` (a :class:`bot.runtime.runtime.Runtime`) at once.

    Each part that can fail (identity, trust, bridges) is read on its own: a failing part is left empty and logged
    at DEBUG, and the rest of the page is still served.
    """
    client = runtime.client
    stats: BotStats = runtime.stats
    fields: dict[str, Any] = {}
    olm = getattr(client, "olm", None)
    with _part("device key"):
        if olm is not None:
            fields["device_key"] = olm.account.identity_keys.get("ed25519")
    identity = getattr(runtime, "identity", None)
    with _part("identity"):
        if identity is not None:
            st = identity.status()
            fields.update(
                master_key=st.get("master_key"),
                cross_signing=st.get("state"),
                cross_signed=bool(st.get("cross_signed")),
                holds_private_keys=bool(st.get("holds_private_keys")),
                recovery_key_stored=bool(st.get("recovery_key_stored")),
                identity_problem=st.get("problem"),
                backup_state=(
                    "off" if not st.get("key_backup")
                    else "error" if st.get("backup_problem")
                    else "active" if st.get("backup_version")
                    else "pending"
                ),
                backup_version=None if st.get("backup_version") is None else str(st.get("backup_version")),
                keys_backed_up=int(st.get("keys_backed_up") or 0),
                backup_problem=st.get("backup_problem"),
            )
    trust = getattr(runtime, "trust", None)
    with _part("trust"):
        if trust is not None:
            fields["trust_mode"] = trust.mode
            fields["identity_changes"] = len(trust.identity_changes())
    rooms = []
    all_rooms = dict(getattr(client, "rooms", {}) or {})
    with _part("rooms"):
        for room_id, room in all_rooms.items():
            name = getattr(room, "display_name", None) or room_id
            members = getattr(room, "joined_count", None) or len(getattr(room, "users", ()) or ())
            rooms.append(RoomRow(room_id, str(name), bool(getattr(room, "encrypted", False)), int(members or 0)))
        rooms.sort(key=lambda r: (r.name.casefold(), r.room_id))
    host = runtime.host
    plugins = [
        PluginRow(
            name=info.name,
            state=info.state,
            errors=stats.plugin_errors.get(info.name, 0),
            commands=tuple(info.commands),
            problem=info.error,
        )
        for info in host.manager.info()
    ]
    bridges = []
    with _part("bridges"):
        for name, loaded in list(host.plugins.items()):
            bridge = loaded.instance
            if not isinstance(bridge, Bridge):
                continue
            for supervisor in list(bridge.supervisors.values()):
                st = supervisor.status()
                bridges.append(
                    BridgeRow(
                        plugin=name,
                        network=st.network,
                        state=str(st.state),
                        since=st.since,
                        queued=st.queued,
                        dropped=st.dropped,
                        sent=st.sent,
                        last_error=st.last_error,
                        description=st.description,
                    )
                )
    http = runtime.config.http
    lag_probe = getattr(runtime, "lag_probe", None)
    return StatusSnapshot(
        now=time.time(),
        version=__version__,
        user_id=str(client.user_id),
        device_id=str(client.device_id),
        uptime=stats.uptime,
        last_sync_age=runtime.metrics.seconds_since_last_sync(),
        loop_lag_max=lag_probe.max_lag if lag_probe is not None else 0.0,
        events_routed=stats.events_routed,
        utd_waiting=stats.utd_waiting,
        utd_recovered=stats.utd_recovered,
        utd_total=stats.utd_total,
        sync_errors=stats.sync_errors,
        room_count=len(all_rooms),
        rooms=tuple(rooms[:MAX_ROOMS]),
        plugins=tuple(plugins),
        bridges=tuple(bridges),
        errors=tuple(
            ErrorRow(e.at, e.plugin, e.handler, e.reason) for e in reversed(list(stats.recent_errors))
        ),
        history=history.samples() if history is not None else (),
        sample_interval=history.interval if history is not None else SAMPLE_INTERVAL,
        history_window=history.window if history is not None else HISTORY_WINDOW,
        # as /health/ready counts it: the configured age plus an idle long-poll (30 s)
        max_sync_age=(http.ready_max_sync_age if http is not None else 90.0) + 30.0,
        session=session,
        **fields,
    )


@contextlib.contextmanager
def _part(what: str):
    try:
        yield
    except Exception:
        log.debug("status page: reading %s failed", what, exc_info=True)


# -- sessions and the token -------------------------------------------------------------------------------------


class _Sessions:
    """Random session ids with an expiry, in memory, bounded."""

    def __init__(self, lifetime: float = SESSION_LIFETIME, limit: int = MAX_SESSIONS) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._expiry: dict[str, float] = {}

    def create(self) -> str:
        now = time.monotonic()
        for sid, until in list(self._expiry.items()):
            if until <= now:
                del self._expiry[sid]
        while len(self._expiry) >= self.limit:
            del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = now + self.lifetime
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        until = self._expiry.get(sid)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._expiry[sid]
            return False
        return True

    def end(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)

    def __len__(self) -> int:
        return len(self._expiry)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class StatusPage:
    """The routes ``/``, ``/login`` and ``/logout`` for one token."""

    def __init__(self, runtime: Any, token: str, history: ActivityHistory | None) -> None:
        self.runtime = runtime
        self.history = history
        self.sessions = _Sessions()
        self._token = _digest(token)
        self._attempt = asyncio.Lock()

    def install(self, http: HttpListener) -> None:
        http.route("/", self.page)
        http.route("/login", self.login)
        http.route("/logout", self.logout)

    # -- checks --------------------------------------------------------------------------------------------------

    async def check_token(self, candidate: str) -> bool | None:
        """True for the token; False (after :data:`FAILURE_DELAY`) for anything else; None when another attempt is
        being evaluated (this one is not)."""
        if self._attempt.locked():
            return None
        async with self._attempt:
            if hmac.compare_digest(_digest(candidate), self._token):
                return True
            await asyncio.sleep(FAILURE_DELAY)
            return False

    # -- handlers ------------------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        if request.query_string:
            return _refuse_query()
        if request.method not in ("GET", "HEAD"):
            return _secure(web.Response(status=405, text="use GET", headers={"Allow": "GET, HEAD"}))
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                return _login_page(401, "Only a bearer token is accepted.", bearer=True)
            verdict = await self.check_token(credentials.strip())
            if verdict is None:
                return _login_page(429, "Too many attempts; try again in a moment.", bearer=True)
            if not verdict:
                log.warning("status page: a wrong token was presented (from %s)", request.remote)
                return _login_page(401, "That token was not accepted.", bearer=True)
            return self._render(session=False)
        sid = request.cookies.get(COOKIE)
        if self.sessions.valid(sid):
            return self._render(session=True)
        response = _login_page(401)
        if sid:
            _clear_cookie(response, request)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        if request.query_string:
            return _refuse_query()
        if request.method in ("GET", "HEAD"):
            return _redirect()
        if request.method != "POST":
            return _secure(web.Response(status=405, text="use POST", headers={"Allow": "POST"}))
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return _login_page(403, "Log in from the status page itself.")
        if request.content_type != "application/x-www-form-urlencoded":
            return _login_page(415, "Send the login form.")
        if request.content_length is not None and request.content_length > MAX_FORM:
            return _secure(web.Response(status=413, text="form too large", headers={"Connection": "close"}))
        try:
            async with asyncio.timeout(FORM_TIMEOUT):
                body = await _read_bounded(request, MAX_FORM)
        except TimeoutError:
            return _secure(web.Response(status=408, text="too slow", headers={"Connection": "close"}))
        if body is None:
            return _secure(web.Response(status=413, text="form too large", headers={"Connection": "close"}))
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return _login_page(400, "Send the login form.")
        candidate = (form.get("token") or [""])[0].strip()
        if not candidate:
            return _login_page(401, "Enter the token.")
        verdict = await self.check_token(candidate)
        if verdict is None:
            return _login_page(429, "Too many attempts; try again in a moment.")
        if not verdict:
            log.warning("status page: a wrong token was presented (from %s)", request.remote)
            return _login_page(401, "That token was not accepted.")
        self.sessions.end(request.cookies.get(COOKIE))
        response = _redirect()
        response.set_cookie(
            COOKIE,
            self.sessions.create(),
            max_age=int(self.sessions.lifetime),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=_https(request),
        )
        log.info("status page: logged in (from %s)", request.remote)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        if request.query_string:
            return _refuse_query()
        if request.method != "POST":
            return _redirect()
        self.sessions.end(request.cookies.get(COOKIE))
        response = _redirect()
        _clear_cookie(response, request)
        return response

    def _render(self, *, session: bool) -> web.StreamResponse:
        html = render_status(snapshot(self.runtime, self.history, session=session))
        return _secure(web.Response(text=html, content_type="text/html", charset="utf-8"))


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None if it is longer than ``limit`` bytes."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    return None


def _https(request: web.Request) -> bool:
    """The browser reached us over HTTPS (directly, or through a reverse proxy that says so)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    h = response.headers
    h["Content-Security-Policy"] = content_security_policy()
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["Cache-Control"] = "no-store"
    h["X-Frame-Options"] = "DENY"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


def _login_page(status: int = 401, message: str | None = None, *, bearer: bool = False) -> web.StreamResponse:
    response = web.Response(status=status, text=render_login(message), content_type="text/html", charset="utf-8")
    if status == 401 and bearer:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ratchet status"'
    return _secure(response)


def _refuse_query() -> web.StreamResponse:
    return _login_page(
        400, "The status page takes no URL parameters: the token goes in the login form or an Authorization header."
    )


def _redirect() -> web.StreamResponse:
    # Relative, so that a reverse proxy may serve the page under a sub-path.
    return _secure(web.Response(status=303, headers={"Location": "./"}))


def _clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.set_cookie(
        COOKIE, "", max_age=0, path="/", httponly=True, samesite="Strict", secure=_https(request)
    )


def install_status_page(runtime: Any, http: HttpListener) -> None:
    """Serve the status page on ``http`` when a status token is configured (read once, now)."""
    config = runtime.config.http
    if config is None:
        return
    try:
        token = config.read_status_token()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("the status page is off: cannot read http.status_token_file (%s)", type(exc).__name__)
        return
    if not token:
        return
    if len(token) < 16:
        log.error("the status page is off: its token must be at least 16 characters")
        return
    add_secret(token)  # never logged by this module; masked should anything else ever print it
    StatusPage(runtime, token, getattr(runtime, "activity", None)).install(http)
