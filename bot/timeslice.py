"""Cooperative time slices: a long loop that runs on the event loop hands it a turn every few milliseconds.

A sync batch of 500 encrypted messages is decrypted, parsed and routed one event after another, with no await that
really suspends in between: without a pause, every other task (handlers sending replies, the HTTP endpoints, the
lease renewal's callbacks) waits for the whole batch, tens of milliseconds (issue 20, target 2). The loops that can
be that long check a :class:`TimeSlice` after each item and pause when it is used up. The check is one
``perf_counter()`` call; a pause is one turn of the event loop.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["SLICE_SECONDS", "TimeSlice"]

#: How long a loop keeps the event loop before it gives other tasks a turn.
SLICE_SECONDS = 0.005


class TimeSlice:
    """``if slice.due(): await slice.pause()`` after each item of a long loop on the event loop."""

    __slots__ = ("_until", "seconds")

    def __init__(self, seconds: float = SLICE_SECONDS) -> None:
        self.seconds = seconds
        self._until = time.perf_counter() + seconds

    def due(self) -> bool:
        """True once the slice is used up."""
        return time.perf_counter() >= self._until

    async def pause(self) -> None:
        """Give the event loop one turn, then start a new slice."""
        await asyncio.sleep(0)
        self._until = time.perf_counter() + self.seconds
