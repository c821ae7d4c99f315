"""The runtime's counters, as the admin plugin's ``!status``, the status page, the tests and the benchmarks read them.

Prometheus metrics live in :mod:`bot.metrics`; these are the few numbers and the recent errors that the bot itself
shows (they carry no message content: a plugin, a handler name, an exception class and a time).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass

__all__ = ["BotStats", "RecentError"]

#: How many recent handler errors are kept for the status page.
RECENT_ERRORS = 50


@dataclass(frozen=True)
class RecentError:
    """A handler that failed: when, which plugin and handler, how (``error`` or ``timeout``)."""

    at: float
    plugin: str
    handler: str
    reason: str


class BotStats:
    """Counters exposed to the admin plugin, the status page and the tests."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.events_routed = 0
        self.utd_waiting = 0
        self.utd_total = 0
        self.utd_recovered = 0
        self.sync_errors = 0
        self.rooms = 0
        #: Handler failures per plugin since the start.
        self.plugin_errors: Counter[str] = Counter()
        #: The latest handler failures, newest last.
        self.recent_errors: deque[RecentError] = deque(maxlen=RECENT_ERRORS)

    @property
    def uptime(self) -> float:
        """Seconds since the bot started."""
        return time.time() - self.started_at

    def handler_failed(self, plugin: str, handler: str, reason: str = "error") -> None:
        """A handler of ``plugin`` raised (``error``) or was cancelled after its timeout (``timeout``)."""
        self.plugin_errors[plugin] += 1
        self.recent_errors.append(RecentError(time.time(), plugin, handler, reason))
