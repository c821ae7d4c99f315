"""Issue 14, part 3 end to end: the HTTP listener's /metrics scraped by a real Prometheus, /health/* against a
homeserver that goes away and comes back, and bad input (a taken port, malformed, oversized, stalled or too many
clients) that never touches the bot's Matrix work.

The Prometheus test needs Debian's ``prometheus`` package (``/usr/bin/prometheus``); without it the test is skipped,
and fails under ``CI=true`` (see :mod:`bot.testing.tools`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bot import http_listener
from bot.runtime import runtime as runtime_module
from bot.testing.tools import require_tool

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _get(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def _get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.content_type == "application/json", (resp.status, resp.content_type)
        return resp.status, await resp.json()


async def _until(check, timeout: float, what: str, interval: float = 0.25):
    """Await ``check()`` until it returns something true; return that (fails after ``timeout`` naming ``what``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            last = await check()
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------------------------- a real Prometheus


class Prometheus:
    """Debian's Prometheus server on 127.0.0.1, scraping ``targets`` every second, its data under ``folder``."""

    def __init__(self, folder: Path, targets: list[str]) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ratchet", "static_configs": [{"targets": targets}]}],
        }
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the process (its log to ``prometheus.log``); :meth:`start` also waits until it is ready."""
        binary = shutil.which("prometheus")
        assert binary is not None
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--web.console.templates=/nonexistent",  # (Debian's defaults point at /etc; nothing is needed)
                    "--web.console.libraries=/nonexistent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
            )

    async def start(self) -> Prometheus:
        self.launch()

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            status, _, _ = await _get(f"{self.url}/-/ready")
            return status == 200

        await _until(ready, 30, "prometheus to be ready")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.url}/api/v1/query", params={"query": promql}
        ) as resp:
            data = await resp.json()
        assert resp.status == 200 and data["status"] == "success", data
        assert data["data"]["resultType"] == "vector", data
        return data["data"]["result"]

    async def value(self, promql: str) -> float | None:
        """The single sample's value of ``promql`` (None when the series is not there (yet))."""
        result = await self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    async def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait: Prometheus' clean shutdown (the TSDB is closed); returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"prometheus did not stop within {timeout}s of SIGTERM")
            await asyncio.sleep(0.1)
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_prometheus_scrapes_the_bot_while_it_answers_encrypted_pings(ratchet, tmp_path):
    require_tool(shutil.which("prometheus") is not None, "prometheus is not installed (apt-get install prometheus)")
    room = await ratchet.room(plugins={"ping": {}}, http={"port": 0})
    listener = ratchet.bot.runtime.http
    assert listener is not None and listener.bound_port
    target = f"127.0.0.1:{listener.bound_port}"
    prometheus = await Prometheus(tmp_path / "prometheus", [target]).start()
    try:
        pings = 5
        for _ in range(pings):
            reply = await room.ask("!ping")
            assert reply.decrypted and reply.body.startswith("pong"), reply.body

        # What Prometheus scraped (values from its TSDB, after its own parsing of the exposition format).
        expectations: list[tuple[str, Any, str]] = [
            (f'up{{job="ratchet",instance="{target}"}}', lambda v: v == 1, "== 1"),
            ('ratchet_events_handled_total{plugin="ping"}', lambda v: v >= pings, f">= {pings}"),
            ('ratchet_handler_duration_seconds_count{plugin="ping",handler="command ping"}',
             lambda v: v >= pings, f">= {pings}"),
            ('ratchet_sync_requests_total{outcome="ok"}', lambda v: v > 0, "> 0"),
            # An idle /sync long-poll lasts up to 30 s: "small" is below that plus a margin.
            ("ratchet_seconds_since_last_sync", lambda v: 0 <= v < 40, "in [0, 40)"),
            ("ratchet_last_sync_timestamp_seconds", lambda v: abs(v - time.time()) < 60, "about now"),
            ("ratchet_events_decrypted_total", lambda v: v >= pings, f">= {pings}"),
            ("ratchet_events_received_total", lambda v: v >= pings, f">= {pings}"),
            ("ratchet_send_duration_seconds_count", lambda v: v >= pings, f">= {pings}"),
            ("ratchet_one_time_keys", lambda v: v > 0, "> 0"),
            ("ratchet_event_loop_lag_seconds_count", lambda v: v > 0, "> 0"),
            ('ratchet_plugin_up{plugin="ping"}', lambda v: v == 1, "== 1"),
            ("ratchet_rooms", lambda v: v >= 1, ">= 1"),
            # The histogram's buckets parse into a usable quantile (a pong takes well under 10 s).
            ('histogram_quantile(0.99, sum by (le) (ratchet_handler_duration_seconds_bucket{plugin="ping"}))',
             lambda v: 0 < v < 10, "in (0, 10)"),
            ("sum(ratchet_handler_failures_total) or vector(0)", lambda v: v == 0, "== 0"),
        ]
        seen: dict[str, float | None] = {}

        async def all_scraped() -> bool:
            for promql, _, _ in expectations:
                seen[promql] = await prometheus.value(promql)
            return all(seen[q] is not None and ok(seen[q]) for q, ok, _ in expectations)

        try:
            await _until(all_scraped, 30, "the scraped series")
        except AssertionError:
            wrong = {q: (seen.get(q), want) for q, ok, want in expectations
                     if seen.get(q) is None or not ok(seen[q])}
            raise AssertionError(f"scraped series not as expected (value, wanted): {wrong}") from None
        scraped = await prometheus.query(f'up{{job="ratchet",instance="{target}"}}')
        assert scraped[0]["metric"] == {"__name__": "up", "job": "ratchet", "instance": target}
        handled = await prometheus.query('ratchet_events_handled_total{plugin="ping"}')
        assert handled[0]["metric"]["job"] == "ratchet" and handled[0]["metric"]["instance"] == target

        # Counters only grow between scrapes: one more ping shows up as an increase of exactly what was done.
        before = await prometheus.value('ratchet_events_handled_total{plugin="ping"}')
        assert before is not None
        reply = await room.ask("!ping")
        assert reply.decrypted
        await _until(lambda: _increased(prometheus, 'ratchet_events_handled_total{plugin="ping"}', before + 1),
                     15, "the next ping in the scraped counter")
        # Prometheus reported no scrape problem (a malformed exposition would be logged and make up 0).
        assert await prometheus.value('scrape_samples_post_metric_relabeling{job="ratchet"}') > 20
    finally:
        code = await prometheus.stop()
        log = prometheus.log_text()
    assert code == 0, log[-3000:]
    assert "See you next time!" in log, log[-3000:]  # Prometheus' own words on a clean shutdown


async def _increased(prometheus: Prometheus, promql: str, at_least: float) -> bool:
    value = await prometheus.value(promql)
    return value is not None and value >= at_least


# ----------------------------------------------------------------------------------------------- health


async def test_health_live_and_ready_follow_the_homeserver(synapse, fault_proxy, bot_in_room):
    proxy = await fault_proxy(synapse.url)
    port = _free_port()
    max_age = 3
    t = await bot_in_room(synapse, connect_via=proxy, http={"port": port, "ready_max_sync_age": max_age})
    base = f"http://127.0.0.1:{port}"
    await t.proc.wait_for_log(f"HTTP listener on {base}", 10)

    status, live = await _get_json(f"{base}/health/live")
    assert status == 200 and live["status"] == "ok", live
    assert isinstance(live["loop_lag_max_seconds"], float) and 0 <= live["loop_lag_max_seconds"] < 5, live

    status, ready = await _get_json(f"{base}/health/ready")
    assert status == 200, ready
    assert ready["status"] == "ok"
    assert ready["checks"]["logged_in"] == {"ok": True}
    assert ready["checks"]["crypto_store"] == {"ok": True}
    synced = ready["checks"]["synced"]
    assert synced["ok"] is True and synced["max_seconds"] == max_age, synced
    assert synced["homeserver_failing_seconds"] is None and 0 <= synced["seconds_since_last_sync"] < 40, synced

    # Idle for longer than ready_max_sync_age: the bot's /sync long-poll waits (up to 30 s) for events, which is not
    # a homeserver that is gone. Readiness must not flap while nothing happens.
    idle_until = time.monotonic() + max_age + 3
    while time.monotonic() < idle_until:
        status, ready = await _get_json(f"{base}/health/ready")
        assert status == 200, ready
        await asyncio.sleep(0.25)

    # The homeserver goes away: every request the bot makes is dropped without an answer. A message wakes the bot's
    # current long-poll (already forwarded), so its next one meets the fault at once.
    outage = proxy.drop(r"", times=None)
    fault_at = time.monotonic()
    await t.send("anyone there?")

    async def not_ready() -> dict[str, Any] | None:
        status, body = await _get_json(f"{base}/health/ready")
        return body if status == 503 else None

    ready = await _until(not_ready, 40, "/health/ready to answer 503")
    noticed_after = time.monotonic() - fault_at
    assert noticed_after >= max_age, f"not ready {noticed_after:.1f}s after the fault, before ready_max_sync_age"
    assert ready["status"] == "unavailable", ready
    synced = ready["checks"]["synced"]
    assert synced["ok"] is False and synced["homeserver_failing_seconds"] >= max_age, synced
    assert synced["max_seconds"] == max_age
    assert ready["checks"]["logged_in"]["ok"] is True and ready["checks"]["crypto_store"]["ok"] is True, ready
    assert outage.hits > 0
    # Liveness is about the bot's own loop, which still runs; /metrics still answers.
    status, live = await _get_json(f"{base}/health/live")
    assert status == 200, live
    status, _, body = await _get(f"{base}/metrics")
    assert status == 200 and b"ratchet_seconds_since_last_sync" in body
    failing = re.search(rb"^ratchet_homeserver_failing_seconds (\S+)$", body, re.MULTILINE)
    assert failing is not None and float(failing.group(1)) >= max_age, body[-2000:]

    # The homeserver is back: ready again, and the bot answers.
    proxy.remove(outage)
    back_at = time.monotonic()

    async def ready_again() -> dict[str, Any] | None:
        status, body = await _get_json(f"{base}/health/ready")
        return body if status == 200 else None

    ready = await _until(ready_again, 60, "/health/ready to answer 200 again")
    assert ready["checks"]["synced"]["ok"] is True and ready["checks"]["synced"]["homeserver_failing_seconds"] is None
    assert time.monotonic() - back_at < 60
    reply = await t.ask("!ping")
    assert reply.decrypted and reply.body.startswith("pong")
    assert await t.proc.stop() == 0


# ----------------------------------------------------------------------------------------------- bad input


async def test_a_taken_port_does_not_stop_the_bot_and_the_listener_comes_up_once_it_is_free(
    ratchet, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, "ratchet")
    monkeypatch.setattr(runtime_module, "HTTP_RETRY", 0.5)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    try:
        room = await ratchet.room(plugins={"ping": {}}, http={"port": port})
        reply = await room.ask("!ping")
        assert reply.decrypted and reply.body.startswith("pong")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "cannot listen" in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert f"127.0.0.1:{port}" in errors[0].getMessage(), errors[0].getMessage()
        assert ratchet.bot.runtime.http.bound_port is None
        await asyncio.sleep(1.5)  # a few retries while it is still taken: no more errors, no crash
        assert len([r for r in caplog.records if "cannot listen" in r.getMessage()]) == 1
    finally:
        squatter.close()

    async def live() -> bool:
        status, _, _ = await _get(f"http://127.0.0.1:{port}/health/live")
        return status == 200

    await _until(live, 10, "the listener to come up once the port is free")
    assert ratchet.bot.runtime.http.bound_port == port
    assert f"HTTP listener on http://127.0.0.1:{port}" in caplog.text
    reply = await room.ask("!ping")
    assert reply.decrypted and reply.body.startswith("pong")


async def test_bad_requests_stalled_and_excess_clients_leave_the_bot_alone(ratchet, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "ratchet")
    monkeypatch.setattr(http_listener, "IDLE_TIMEOUT", 3.0)
    monkeypatch.setattr(http_listener, "MAX_CONNECTIONS", 24)
    room = await ratchet.room(plugins={"ping": {}}, http={"port": 0})
    listener = ratchet.bot.runtime.http
    port = listener.bound_port
    base = f"http://127.0.0.1:{port}"

    # Bound to loopback by default (no host in the config).
    assert ratchet.bot.runtime.config.http.host == "127.0.0.1"
    assert {s.getsockname()[0] for s in listener._listening.sockets} == {"127.0.0.1"}

    # Methods and paths.
    for method, path in [("POST", "/metrics"), ("DELETE", "/health/live"), ("PUT", "/health/ready"),
                         ("PATCH", "/metrics")]:
        status, headers, _ = await _get(f"{base}{path}", method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", (method, path, status)
    for path in ("/nope", "/metrics/more", "/health", "/health/live/x"):
        status, _, _ = await _get(f"{base}{path}")
        assert status == 404, (path, status)
    status, headers, body = await _get(f"{base}/metrics", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Type"].startswith("text/plain")

    # Oversized request heads: a 4xx, and the next request is served as usual.
    async def raw(head: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        return int(answer.split(b" ", 2)[1])

    assert 400 <= await raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n") < 500
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    assert 400 <= await raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n") < 500
    assert 400 <= await raw(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") < 500
    assert 400 <= await raw(b"NOT HTTP AT ALL\r\n\r\n") < 500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        "a malformed request is the client's problem, not an error of the bot (nor a traceback from aiohttp)"
    status, _, _ = await _get(f"{base}/metrics")
    assert status == 200

    # Stalled clients: some connect and send nothing, some trickle a request's head and never finish it. Meanwhile
    # another client is served and the bot answers.
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    for _, writer in slow:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for i in range(40):
            for _, writer in slow:
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X-Slow-%d: 1\r\n" % i)
            await asyncio.sleep(0.25)

    trickling = asyncio.create_task(trickle())
    try:
        t0 = time.monotonic()
        status, _, body = await _get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5))
        assert status == 200 and b"ratchet_events_handled_total" in body
        assert time.monotonic() - t0 < 2
        reply = await room.ask("!ping")
        assert reply.decrypted and reply.body.startswith("pong")
        # The server hangs up on them after IDLE_TIMEOUT (patched to 3 s): they do not hold a connection forever.
        for reader, _ in idle + slow:
            assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        trickling.cancel()
        for _, writer in idle + slow:
            writer.close()

    # Too many connections: beyond MAX_CONNECTIONS (patched to 24) a new one is answered 503 and closed at once;
    # the bot goes on, and once they close the listener serves again.
    await asyncio.sleep(0.2)
    hogs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(24)]
    try:
        await asyncio.sleep(0.2)
        assert await raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == 503
        reply = await room.ask("!ping")
        assert reply.decrypted and reply.body.startswith("pong")
    finally:
        for _, writer in hogs:
            writer.close()

    async def served() -> bool:
        status, _, _ = await _get(f"{base}/metrics")
        return status == 200

    await _until(served, 10, "/metrics once the connections are closed")
    assert "connections are open; new ones are answered 503" in caplog.text
