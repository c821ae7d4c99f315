"""Flow control toward a remote network, as plain classes with an injectable clock and random source:

* :class:`TokenBucket`: rate limit (``rate`` items per second, bursts of ``burst``);
* :class:`Backoff`: exponential reconnect delays with jitter;
* :class:`OutboundQueue`: the bounded, ordered queue that holds outgoing messages during an outage;
* :class:`SenderLimiter`: a token bucket per remote sender, for what comes in (one flooding user cannot flood a room).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Literal, TypeVar

__all__ = ["Admission", "Backoff", "OutboundQueue", "SenderLimiter", "TokenBucket"]

T = TypeVar("T")


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate`` tokens per second; a rate <= 0 means no limit.

    :meth:`reserve` takes a token now and says how long to wait before using it, so callers queue fairly in the order
    they asked (the bucket may go into debt).
    """

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate > 0:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while reservations are pending)."""
        self._refill()
        return self._tokens

    def try_take(self) -> bool:
        """Take a token if one is available now."""
        if self.rate <= 0:
            return True
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def reserve(self) -> float:
        """Take a token and return the seconds to wait until it is really there (0 if it is now)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n`` capped at ``maximum``, each delay then reduced by up to
    ``jitter`` (a fraction) at random so that many clients do not retry in step. :meth:`reset` after a success."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 300.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= maximum, factor >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self.attempts = 0

    def peek(self) -> float:
        """The delay before jitter that :meth:`next` will use."""
        return min(self.maximum, self.initial * self.factor**self.attempts)

    def next(self) -> float:
        """The next delay in seconds (and count the attempt)."""
        base = self.peek()
        self.attempts += 1
        return base * (1 - self.jitter * self._rng())

    def reset(self) -> None:
        self.attempts = 0


class OutboundQueue(Generic[T]):
    """A bounded FIFO of items waiting for the remote side.

    The sender :meth:`peek`\\ s the head, sends it, and only then :meth:`pop`\\ s it, so an item whose send failed is
    retried first after a reconnect: order is kept and nothing is skipped. When the queue is full, :meth:`put` drops
    the oldest item (counted in :attr:`dropped`, and returned) to make room.
    """

    def __init__(self, maxlen: int = 1000) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._items: deque[T] = deque()
        self.dropped = 0

    def put(self, item: T) -> T | None:
        """Append ``item``; returns the item dropped to make room, if any."""
        dropped = None
        if len(self._items) >= self.maxlen:
            dropped = self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        return dropped

    def peek(self) -> T | None:
        """The oldest item, left in the queue (None if empty)."""
        return self._items[0] if self._items else None

    def pop(self) -> T:
        """Remove and return the oldest item (IndexError if empty)."""
        return self._items.popleft()

    def push_front(self, items: list[T]) -> None:
        """Put ``items`` before everything queued, in their order (not bounded: they were queued before)."""
        self._items.extendleft(reversed(items))

    def remove(self, item: T) -> bool:
        """Remove ``item`` (by identity) if it is queued."""
        for i, queued in enumerate(self._items):
            if queued is item:
                del self._items[i]
                return True
        return False

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __bool__(self) -> bool:
        return bool(self._items)


#: :meth:`SenderLimiter.admit`'s verdict: let the message through; drop it, the first of a flood (say so once); drop it.
Admission = Literal["ok", "flood", "dropped"]


class _Sender:
    __slots__ = ("bucket", "dropped")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.dropped = 0  # messages dropped in the current flood (0: not flooding)


class SenderLimiter(Generic[T]):
    """A :class:`TokenBucket` per sender (``rate`` messages per second, bursts of ``burst``); ``rate <= 0``: no limit.

    :meth:`admit` says whether a sender's message may go. The first message dropped starts a *flood*, reported once
    (``"flood"``; the next ones are ``"dropped"``); the flood ends only when the sender has been quiet long enough
    for the bucket to fill up again, so a sender going just over the rate is one flood, not one per message.
    :attr:`ended` holds ``(sender, dropped)`` for the floods that ended at the last :meth:`admit`. At most
    ``max_senders`` buckets are kept: idle ones are forgotten first, then the oldest.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_senders: int = 10000
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_senders = max_senders
        self._clock = clock
        self._senders: dict[T, _Sender] = {}
        #: Messages dropped so far, all senders together.
        self.dropped = 0
        self.ended: tuple[T, int] | None = None

    def __len__(self) -> int:
        return len(self._senders)

    def admit(self, sender: T) -> Admission:
        self.ended = None
        if self.rate <= 0:
            return "ok"
        state = self._senders.get(sender)
        if state is None:
            self._prune()
            state = self._senders[sender] = _Sender(TokenBucket(self.rate, self.burst, clock=self._clock))
        if state.dropped and state.bucket.tokens >= self.burst:
            self.ended = (sender, state.dropped)  # quiet for long enough: that flood is over
            state.dropped = 0
        if state.bucket.try_take():
            return "ok"
        state.dropped += 1
        self.dropped += 1
        return "flood" if state.dropped == 1 else "dropped"

    def flooding(self, sender: T) -> bool:
        state = self._senders.get(sender)
        return bool(state and state.dropped)

    def _prune(self) -> None:
        if len(self._senders) < self.max_senders:
            return
        for key in [k for k, s in self._senders.items() if not s.dropped and s.bucket.tokens >= self.burst]:
            del self._senders[key]
        while len(self._senders) >= self.max_senders:
            del self._senders[next(iter(self._senders))]
