"""What the runtime serves on its HTTP listener: ``/metrics``, ``/health/live``, ``/health/ready`` (and the status
page, bot/runtime/status_page.py), plus the scrape-time readings behind ``/metrics``.

* ``/metrics``: Prometheus text format from the bot's own registry (bot/metrics.py).
* ``/health/live``: 200 while the event loop answers (the handler runs on it), with the worst loop lag seen.
* ``/health/ready``: 200 when the bot is logged in, synced (its homeserver has not been failing for longer than
  ``http.ready_max_sync_age``, and a sync succeeded within that age plus the long-poll time) and its crypto store is
  open; 503 with the failing checks otherwise. Both answer JSON.

Why not simply "the last sync is younger than ``ready_max_sync_age``": an idle ``/sync`` long-poll waits up to 30 s
for events, so with a small age a healthy idle bot would flap between ready and not ready, and with a large one an
unreachable homeserver would go unnoticed for as long. The client notes when the homeserver stops answering (a
transport error or a 5xx) and when it answers again; that is what fails readiness after ``ready_max_sync_age``. The age
of the last successful sync (beyond the long-poll time) still catches a sync that hangs without any error.

The scrape-time readings (one-time keys, key backup, bridge connections, plugin states) are read when Prometheus
scrapes, so they cost nothing per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.bridge import Bridge
from bot.config import Config
from bot.http_listener import HttpListener
from bot.metrics import LoopLagProbe, Metrics, StateCollector, StateFamily
from bot.runtime.status_page import install_status_page
from bot.stats import BotStats

__all__ = ["RuntimeView", "install_endpoints", "readiness"]

log = logging.getLogger("ratchet.http")

_ONLY_GET = {"Allow": "GET, HEAD"}


class RuntimeView(Protocol):
    """What the endpoints read from the runtime (``bot.runtime.runtime.Runtime`` has all of it)."""

    config: Config
    client: Any
    metrics: Metrics
    stats: BotStats
    host: Any
    identity: Any
    ready: asyncio.Event
    http: HttpListener | None
    lag_probe: LoopLagProbe


def install_endpoints(runtime: RuntimeView, *, long_poll: float = 30.0) -> None:
    """Register the scrape-time readings and, when the listener is configured, the routes.

    ``long_poll`` is how long the sync loop's ``/sync`` waits for events, seconds (see :func:`readiness`).
    """
    runtime.metrics.add_collector(StateCollector(lambda: _readings(runtime)))
    runtime.metrics.events_waiting.set_function(lambda: runtime.stats.utd_waiting)
    runtime.metrics.handler_queue.set_function(lambda: runtime.host.dispatcher.busy)
    http = runtime.http
    if http is None:
        return

    async def metrics(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": "use GET"}, status=405, headers=_ONLY_GET)
        body = generate_latest(runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def live(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": "use GET"}, status=405, headers=_ONLY_GET)
        return web.json_response({"status": "ok", "loop_lag_max_seconds": round(runtime.lag_probe.max_lag, 4)})

    async def ready(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": "use GET"}, status=405, headers=_ONLY_GET)
        ok, checks = readiness(runtime, long_poll=long_poll)
        return web.json_response({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)

    http.route("/metrics", metrics)
    http.route("/health/live", live)
    http.route("/health/ready", ready)
    install_status_page(runtime, http)


def readiness(runtime: RuntimeView, *, long_poll: float = 30.0) -> tuple[bool, dict[str, Any]]:
    """Whether the bot is ready, and each check with its detail (the body of ``/health/ready``).

    ``synced`` holds when the first sync has been handled, the homeserver has not been failing (transport errors or
    5xx answers with no good answer since) for longer than ``ready_max_sync_age``, and the last successful sync is
    at most ``ready_max_sync_age + long_poll`` seconds old (an idle long-poll legitimately takes ``long_poll``).
    """
    client = runtime.client
    assert runtime.config.http is not None
    max_age = runtime.config.http.ready_max_sync_age
    metrics = runtime.metrics
    since = metrics.seconds_since_last_sync()
    failing = metrics.seconds_homeserver_failing()
    logged_in = bool(getattr(client, "logged_in", False) and getattr(client, "access_token", None))
    synced = (
        runtime.ready.is_set()
        and since is not None
        and since <= max_age + long_poll
        and (failing is None or failing <= max_age)
    )
    store_open = _crypto_store_open(client)
    checks: dict[str, Any] = {
        "logged_in": {"ok": logged_in},
        "synced": {
            "ok": synced,
            "seconds_since_last_sync": None if since is None else round(since, 1),
            "homeserver_failing_seconds": None if failing is None else round(failing, 1),
            "max_seconds": max_age,
        },
        "crypto_store": {"ok": store_open},
    }
    return logged_in and synced and store_open, checks


def _crypto_store_open(client: Any) -> bool:
    """The Olm machine is loaded and its store answers a trivial query."""
    if getattr(client, "olm", None) is None or getattr(client, "store", None) is None:
        return False
    check = getattr(client.store, "is_open", None)
    if callable(check):
        try:
            return bool(check())
        except Exception:
            return False
    return True


def _readings(runtime: RuntimeView) -> Iterator[StateFamily]:
    """The families read at scrape time."""
    client = runtime.client
    olm = getattr(client, "olm", None)
    if olm is not None:
        yield (
            "gauge",
            "ratchet_one_time_keys",
            "One-time keys the homeserver holds for the bot's device (signed_curve25519).",
            [],
            [([], float(olm.uploaded_key_count or 0))],
        )
    yield ("gauge", "ratchet_rooms", "Rooms the bot is in.", [], [([], float(runtime.stats.rooms))])
    identity = runtime.identity
    if identity is not None:
        status = identity.status()
        backup_state = (
            "off" if not status["key_backup"]
            else "error" if status["backup_problem"]
            else "active" if status["backup_version"]
            else "pending"
        )
        yield (
            "gauge",
            "ratchet_key_backup_state",
            "Server-side key backup: 1 for the current state (active, pending, error, off).",
            ["state"],
            [([s], 1.0 if s == backup_state else 0.0) for s in ("active", "pending", "error", "off")],
        )
        yield (
            "counter",
            "ratchet_key_backup_keys",
            "Room keys uploaded to the server-side key backup by this process.",
            [],
            [([], float(status["keys_backed_up"] or 0))],
        )
        yield (
            "gauge",
            "ratchet_device_cross_signed",
            "1 when the bot's device is signed by its account's self-signing key.",
            [],
            [([], 1.0 if status["cross_signed"] else 0.0)],
        )
    plugins = runtime.host.manager.info()
    yield (
        "gauge",
        "ratchet_plugin_up",
        "1 for each configured plugin that is running (0: disabled or failed to load).",
        ["plugin", "state"],
        [([p.name, p.state], 1.0 if p.state == "running" else 0.0) for p in plugins],
    )
    connected: list[tuple[list[str], float]] = []
    queued: list[tuple[list[str], float]] = []
    dropped: list[tuple[list[str], float]] = []
    inbound: list[tuple[list[str], float]] = []
    for name, loaded in list(runtime.host.plugins.items()):
        bridge = loaded.instance
        if not isinstance(bridge, Bridge):
            continue
        for supervisor in list(bridge.supervisors.values()):
            status = supervisor.status()
            labels = [name, status.network]
            connected.append((labels, 1.0 if status.state == "connected" else 0.0))
            queued.append((labels, float(status.queued)))
            dropped.append((labels, float(status.dropped)))
        inbound.append(([name, "rate_limited"], float(bridge.inbound_dropped)))
        inbound.append(([name, "queue_full"], float(bridge.inbound_refused)))
    if connected:
        yield ("gauge", "ratchet_bridge_connected", "1 when the bridge's remote connection is up.",
               ["plugin", "network"], connected)
        yield ("gauge", "ratchet_bridge_queue_length", "Messages waiting to be sent to the remote network.",
               ["plugin", "network"], queued)
        yield ("counter", "ratchet_bridge_dropped", "Outgoing messages dropped (queue full or expired).",
               ["plugin", "network"], dropped)
    if inbound:
        yield ("counter", "ratchet_bridge_inbound_dropped", "Remote messages not posted to Matrix, by reason.",
               ["plugin", "reason"], inbound)
