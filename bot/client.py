"""The nio client Ratchet drives, with the retry policy of a well-behaved bot.

nio already retries a request on connection errors and timeouts, and honours ``retry_after_ms`` on
``M_LIMIT_EXCEEDED``. Its wait between connection retries is a plain exponential without jitter, so every bot that
lost the same homeserver would come back in lock-step; we add full jitter and a floor, so a down homeserver sees a
handful of requests per minute from us, never a storm.
"""

from __future__ import annotations

import random
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig
from nio.store import SqliteStore

__all__ = ["RatchetClient", "make_client"]

#: First wait after a failed request, in seconds; doubles with each further failure.
BACKOFF_BASE = 0.5
#: Longest wait between two attempts, in seconds.
BACKOFF_CAP = 60.0


def backoff_delay(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, capped, with jitter.

    The delay is drawn from ``[d/2, d]`` where ``d = min(cap, base * 2**(attempt-1))``, so the mean still grows
    exponentially but clients that failed together spread out.
    """
    ceiling = min(cap, base * (2 ** min(max(attempt, 1) - 1, 30)))
    return random.uniform(ceiling / 2, ceiling)


class RatchetClient(AsyncClient):
    """nio's AsyncClient with jittered exponential backoff between connection retries."""

    async def get_timeout_retry_wait_time(self, got_timeouts: int) -> float:
        return backoff_delay(got_timeouts, cap=self.config.max_timeout_retry_wait_time)


def make_client(
    homeserver: str, user_id: str, store_dir: Path, pickle_key: str, device_id: str | None = None
) -> RatchetClient:
    """Build a client with E2EE on and nio's SQLite crypto store under ``store_dir``."""
    config = AsyncClientConfig(
        store=SqliteStore,
        encryption_enabled=True,
        pickle_key=pickle_key,
        store_sync_tokens=False,  # the runtime persists the token itself, after handling
        max_limit_exceeded=None,  # always honour retry_after_ms
        max_timeouts=None,
        max_timeout_retry_wait_time=BACKOFF_CAP,
        request_timeout=60,
    )
    return RatchetClient(
        homeserver, user_id, device_id=device_id or "", store_path=str(store_dir), config=config
    )
