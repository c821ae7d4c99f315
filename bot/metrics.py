"""The runtime's Prometheus metrics: one :class:`Metrics` per running bot, each with its own registry.

Why a registry per bot rather than prometheus-client's global one: tests, the test kit and the benchmarks run several
bots in one process, and a plugin reload must not register a metric twice. ``/metrics`` on the HTTP listener
(bot/runtime/endpoints.py) serves :attr:`Metrics.registry`.

What is counted where (every layer records into the object it is handed, nothing imports the runtime):

* the sync loop (bot/runtime): requests, their latency, the time of the last successful one, events received,
  decrypted and undecryptable;
* the dispatcher (bot/plugin/dispatch.py): handler latency per plugin and handler, errors and timeouts, queue length;
* the router: events handled once per plugin (only the first, recorded handling counts);
* Matrix actions (bot/matrix/actions.py): send latency and failures, rate-limit waits;
* a loop-lag probe: how late the event loop wakes a sleeping task;
* scrape-time collectors for what is state rather than events (one-time keys, key backup, bridge connections).

Labels are bounded: plugin names and handler names come from the code, never from events or users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "LoopLagProbe", "Metrics", "PluginMetrics", "StateCollector", "StateFamily", "Ticker"]

log = logging.getLogger(__name__)

_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")

#: Seconds; fine enough for a 5 ms handler and a 30 s long-poll alike.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Event-loop lag buckets, seconds: the target is p99 under 20 ms.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """Every metric of one running bot; see the module docstring for who records what."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sync_requests = Counter(
            "ratchet_sync_requests", "Sync requests by outcome (ok, error).", ["outcome"], registry=r
        )
        self._sync_ok = self.sync_requests.labels("ok")
        self._sync_error = self.sync_requests.labels("error")
        self.sync_duration = Histogram(
            "ratchet_sync_duration_seconds",
            "Duration of successful sync requests (long-polls wait up to 30 s for events).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.last_sync = Gauge(
            "ratchet_last_sync_timestamp_seconds", "Unix time of the last successful sync (0: none yet).", registry=r
        )
        self.seconds_since_sync = Gauge(
            "ratchet_seconds_since_last_sync", "Seconds since the last successful sync (-1: none yet).", registry=r
        )
        self.seconds_since_sync.set_function(self._since_sync)
        self._last_sync_monotonic: float | None = None
        #: When the homeserver started failing (a transport error or a 5xx since its last good answer), monotonic.
        self._homeserver_failing_since: float | None = None
        self.homeserver_failing = Gauge(
            "ratchet_homeserver_failing_seconds",
            "Seconds the homeserver has been unreachable or answering 5xx without a good answer since (0: fine). "
            "Sync retries transport errors inside the client, so this, not ratchet_sync_requests_total, shows an "
            "outage.",
            registry=r,
        )
        self.homeserver_failing.set_function(lambda: self.seconds_homeserver_failing() or 0.0)

        self.events_received = Counter(
            "ratchet_events_received", "Timeline events received in joined rooms.", registry=r
        )
        self.events_decrypted = Counter("ratchet_events_decrypted", "Encrypted events decrypted.", registry=r)
        self.events_undecryptable = Counter(
            "ratchet_events_undecryptable",
            "Events that could not be decrypted when they arrived (their key was requested).",
            registry=r,
        )
        self.events_recovered = Counter(
            "ratchet_events_recovered", "Events decrypted later, after their key arrived.", registry=r
        )
        self.events_waiting = Gauge(
            "ratchet_events_waiting_for_keys", "Undecryptable events waiting for their key.", registry=r
        )
        self.events_handled = Counter(
            "ratchet_events_handled", "Events handled by a plugin (each once per plugin).", ["plugin"], registry=r
        )
        self.handler_duration = Histogram(
            "ratchet_handler_duration_seconds",
            "Handler run time per plugin and handler (commands are 'command <name>').",
            ["plugin", "handler"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handler_failures = Counter(
            "ratchet_handler_failures",
            "Handlers that raised (error) or were cancelled after handler_timeout (timeout).",
            ["plugin", "handler", "reason"],
            registry=r,
        )
        self.handler_queue = Gauge(
            "ratchet_handler_jobs", "Handler jobs queued or running.", registry=r
        )
        self.send_duration = Histogram(
            "ratchet_send_duration_seconds",
            "Time to send an event to a room (encryption, retries and rate-limit waits included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.send_failures = Counter(
            "ratchet_send_failures", "Sends that failed after their retries.", registry=r
        )
        self.rate_limit_waits = Counter(
            "ratchet_rate_limit_waits", "Times the homeserver answered 429 and the bot waited.", registry=r
        )
        self.rate_limit_wait_seconds = Counter(
            "ratchet_rate_limit_wait_seconds", "Seconds spent waiting on 429 answers.", registry=r
        )
        self.loop_lag = Histogram(
            "ratchet_event_loop_lag_seconds",
            "How late the event loop ran a task that asked to wake up (a stalled loop delays everything).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "ratchet_event_loop_lag_max_seconds", "The largest event-loop lag seen since the bot started.", registry=r
        )
        self._handler_children: dict[tuple[str, str], object] = {}
        self._handled_children: dict[str, object] = {}
        self._plugin_metrics: dict[str, tuple[Counter | Gauge | Histogram, str, tuple[str, ...]]] = {}

    # -- recording (hot paths: children are cached, no label lookups per event) ------------------------------------

    def sync_succeeded(self, seconds: float) -> None:
        """A sync request returned a batch after ``seconds``."""
        self._sync_ok.inc()
        self.sync_duration.observe(seconds)
        self.last_sync.set(time.time())
        self._last_sync_monotonic = time.monotonic()

    def sync_failed(self) -> None:
        """A sync request failed (it is retried with backoff)."""
        self._sync_error.inc()

    def homeserver_answered(self) -> None:
        """The homeserver answered a request (any status below 500)."""
        self._homeserver_failing_since = None

    def homeserver_failed(self) -> None:
        """A request to the homeserver failed: a transport error (nio retries it) or a 5xx answer."""
        if self._homeserver_failing_since is None:
            self._homeserver_failing_since = time.monotonic()

    def seconds_homeserver_failing(self) -> float | None:
        """Seconds since the homeserver's requests started failing without a good answer since, or None.

        ``/health/ready`` needs it because the time since the last sync alone cannot tell an unreachable homeserver
        from a healthy idle long-poll (a ``/sync`` waits up to 30 s for events).
        """
        since = self._homeserver_failing_since
        return None if since is None else time.monotonic() - since

    def seconds_since_last_sync(self) -> float | None:
        """Seconds since the last successful sync, or None before the first."""
        if self._last_sync_monotonic is None:
            return None
        return time.monotonic() - self._last_sync_monotonic

    def _since_sync(self) -> float:
        since = self.seconds_since_last_sync()
        return -1.0 if since is None else since

    def handler_finished(self, plugin: str, handler: str, status: str, seconds: float) -> None:
        """A handler job ended with ``status`` (ok, error, timeout or cancelled) after ``seconds``."""
        key = (plugin, handler)
        child = self._handler_children.get(key)
        if child is None:
            child = self._handler_children[key] = self.handler_duration.labels(plugin, handler)
        child.observe(seconds)  # type: ignore[attr-defined]
        if status in ("error", "timeout"):
            self.handler_failures.labels(plugin, handler, status).inc()

    def handled(self, plugin: str) -> None:
        """``plugin`` finished handling an event (recorded as handled: it is not handed to it again)."""
        child = self._handled_children.get(plugin)
        if child is None:
            child = self._handled_children[plugin] = self.events_handled.labels(plugin)
        child.inc()  # type: ignore[attr-defined]

    def plugin_metric(
        self, plugin: str, kind: str, name: str, documentation: str, labels: tuple[str, ...], **kwargs: object
    ) -> Counter | Gauge | Histogram:
        """The metric ``ratchet_<plugin>_<name>`` of ``kind`` (counter, gauge, histogram), created on first use.

        The same metric is returned to a reloaded plugin (a registry refuses a name twice); asking for an existing
        name with another kind or other labels raises ValueError.
        """
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r}: use lowercase letters, digits and underscores")
        full = f"ratchet_{plugin}_{name}"
        existing = self._plugin_metrics.get(full)
        if existing is not None:
            metric, known_kind, known_labels = existing
            if (known_kind, known_labels) != (kind, labels):
                raise ValueError(f"metric {full} already exists as a {known_kind} with labels {list(known_labels)}")
            return metric
        factory = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}.get(kind)
        if factory is None:
            raise ValueError(f"unknown metric kind {kind!r}")
        if kind == "histogram":
            kwargs.setdefault("buckets", LATENCY_BUCKETS)
        metric = factory(full, documentation, list(labels), registry=self.registry, **kwargs)  # type: ignore[arg-type]
        self._plugin_metrics[full] = (metric, kind, labels)
        return metric

    def add_collector(self, collector: Collector) -> None:
        """Register a scrape-time collector (state read when Prometheus scrapes, not counted per event)."""
        self.registry.register(collector)


#: One family read at scrape time: kind (``gauge`` or ``counter``), name, documentation, label names and samples.
StateFamily = tuple[str, str, str, list[str], list[tuple[list[str], float]]]


class PluginMetrics:
    """A plugin's own Prometheus metrics (``self.metrics``), served at ``/metrics`` as ``ratchet_<plugin>_<name>``.

    ``self.metrics.counter("reports", "Reports by outcome", ["outcome"]).labels("sent").inc()``. Keep label values
    bounded (outcomes, networks, never user ids or message text). Without the ``http`` listener nothing is served,
    and recording still works (it costs about a microsecond).
    """

    def __init__(self, metrics: Metrics, plugin: str) -> None:
        self._metrics = metrics
        self._plugin = plugin

    def counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        """A counter (``_total`` is appended to its name in the exposition)."""
        return self._metrics.plugin_metric(self._plugin, "counter", name, documentation, tuple(labels))  # type: ignore[return-value]

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        """A gauge (a value that goes up and down)."""
        return self._metrics.plugin_metric(self._plugin, "gauge", name, documentation, tuple(labels))  # type: ignore[return-value]

    def histogram(
        self, name: str, documentation: str, labels: Iterable[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS
    ) -> Histogram:
        """A histogram (seconds, by default with the runtime's latency buckets)."""
        return self._metrics.plugin_metric(  # type: ignore[return-value]
            self._plugin, "histogram", name, documentation, tuple(labels), buckets=tuple(buckets)
        )


class StateCollector(Collector):
    """Families computed at scrape time from ``read()`` (state such as queue lengths, not counted per event).

    A reading that raises is logged at DEBUG and left out of that scrape; the rest is served.
    """

    def __init__(self, read: Callable[[], Iterable[StateFamily]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        try:
            families = list(self._read())
        except Exception:  # a scrape must never break on one bad reading
            log.debug("a metrics reading failed", exc_info=True)
            return []
        out: list[Metric] = []
        for kind, name, documentation, labels, samples in families:
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_type(name, documentation, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            out.append(family)
        return out

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on what is running; nothing to check at registration


class Ticker:
    """A background task that calls :meth:`tick` every ``interval`` seconds until stopped (samplers, probes).

    ``start()`` is idempotent; an exception from ``tick`` is logged at DEBUG and the ticking goes on.
    """

    interval: float
    _task: asyncio.Task[None] | None = None

    def tick(self, late: float) -> None:
        """One period has passed; ``late`` is how many seconds later than asked the loop woke this task."""
        raise NotImplementedError

    def start(self) -> None:
        """Start ticking in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=type(self).__name__)

    async def stop(self) -> None:
        """Stop ticking."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            try:
                self.tick(max(0.0, time.monotonic() - before - self.interval))
            except Exception:  # a reading must never end the ticking
                log.debug("%s failed", type(self).__name__, exc_info=True)


class LoopLagProbe(Ticker):
    """Measures event-loop lag: wakes every ``interval`` seconds and records how late it woke.

    A handler that blocks the loop (CPU-heavy crypto, blocking I/O) shows up here before anyone notices the bot is
    slow; the dispatcher's block warning names the culprit.
    """

    def __init__(self, metrics: Metrics, interval: float = 1.0) -> None:
        # Once a second: a stall that is under way when the probe is due is measured whole, and an idle bot is not
        # woken four times a second for it (at 0.25 s the probe was ~85% of an idle bot's CPU: issue 20).
        self.metrics = metrics
        self.interval = interval
        self.max_lag = 0.0

    def tick(self, late: float) -> None:
        self.metrics.loop_lag.observe(late)
        if late > self.max_lag:
            self.max_lag = late
            self.metrics.loop_lag_max.set(late)
