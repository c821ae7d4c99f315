"""The runtime's counters, as the admin plugin's ``!status``, the tests and the benchmarks read them."""

from __future__ import annotations

import time

__all__ = ["BotStats"]


class BotStats:
    """Counters exposed to the admin plugin and the tests."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.events_routed = 0
        self.utd_waiting = 0
        self.utd_total = 0
        self.utd_recovered = 0
        self.sync_errors = 0
        self.rooms = 0

    @property
    def uptime(self) -> float:
        """Seconds since the bot started."""
        return time.time() - self.started_at
