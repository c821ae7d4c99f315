"""Sync bookkeeping, kept free of I/O so it can be tested directly.

* :class:`TokenCommitter` decides when a sync token may be persisted: only when every event of its batch *and of all
  earlier batches* has been handled. Batches complete out of order (rooms run concurrently); tokens are committed in
  order.
* :func:`select_events` decides which timeline events of a joined room are handed to plugins: not the initial sync's
  history, not what precedes the bot's own join, not the bot's own messages, not what is older than the catch-up
  window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["CatchUpPolicy", "TokenCommitter", "own_join_index", "select_events"]


T = TypeVar("T")


class TokenCommitter(Generic[T]):
    """Orders sync-token commits behind the handling of the batches they follow.

    ``begin(token)`` registers a batch and returns its id; ``finish(id)`` marks it handled and returns the newest
    token that may now be persisted (or None if an earlier batch is still running). A "token" is any value the
    caller wants persisted with the batch (the runtime keeps the batch's receipt time with it).
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._open: dict[int, T] = {}
        self._finished: set[int] = set()
        self._committed_through = -1

    def begin(self, token: T) -> int:
        """Register the batch that ends at ``token``."""
        batch = self._next_id
        self._next_id += 1
        self._open[batch] = token
        return batch

    def finish(self, batch: int) -> T | None:
        """Mark ``batch`` handled; return the token to persist now, if any."""
        self._finished.add(batch)
        token = None
        while self._committed_through + 1 in self._finished:
            self._committed_through += 1
            self._finished.discard(self._committed_through)
            token = self._open.pop(self._committed_through)
        return token

    @property
    def pending(self) -> int:
        """Batches registered but not yet committed."""
        return len(self._open)


@dataclass(frozen=True)
class CatchUpPolicy:
    """Which events that arrived while the bot was away are still handled."""

    enabled: bool = True
    max_age_ms: int = 86_400_000


class _EventLike(Protocol):
    sender: str
    server_timestamp: int
    source: dict


def select_events(
    events: Sequence[_EventLike],
    *,
    own_user_id: str,
    initial_sync: bool,
    resumed: bool,
    now_ms: int,
    policy: CatchUpPolicy,
) -> list[_EventLike]:
    """The events of one joined room's timeline batch that plugins should see, in timeline order.

    ``initial_sync``: the very first sync of a new bot (no token): its timeline is history, skip it all.
    ``resumed``: the first sync after a restart with a stored token: apply the catch-up policy to it.
    """
    if initial_sync:
        return []
    start = own_join_index(events, own_user_id) + 1
    selected = []
    for event in events[start:]:
        # nio's BadEvent/UnknownBadEvent (a malformed event) may lack any of these: the runtime skips it with a log
        if getattr(event, "sender", None) == own_user_id:
            continue
        if resumed:
            if not policy.enabled:
                continue
            timestamp = getattr(event, "server_timestamp", 0)
            if now_ms - (timestamp if isinstance(timestamp, int) else 0) > policy.max_age_ms:
                continue
        selected.append(event)
    return selected


def own_join_index(events: Sequence[_EventLike], own_user_id: str) -> int:
    """Index of the bot's own (latest) join in ``events``, or -1: what precedes it is history the bot missed."""
    found = -1
    for index, event in enumerate(events):
        src = getattr(event, "source", None)
        if not isinstance(src, dict):
            continue
        if (
            src.get("type") == "m.room.member"
            and src.get("state_key") == own_user_id
            and isinstance(src.get("content"), dict)
            and src["content"].get("membership") == "join"
            and _prev_membership(src) != "join"
        ):
            found = index
    return found


def _prev_membership(src: dict) -> str | None:
    unsigned = src.get("unsigned")
    if not isinstance(unsigned, dict):
        return None
    prev = unsigned.get("prev_content")
    if isinstance(prev, dict):
        value = prev.get("membership")
        return value if isinstance(value, str) else None
    return None


def session_ids(events: Iterable[object]) -> set[str]:
    """Megolm session ids named by room-key to-device events (``m.room_key``, ``m.forwarded_room_key``)."""
    found = set()
    for event in events:
        sid = getattr(event, "session_id", None)
        if isinstance(sid, str):
            found.add(sid)
    return found
