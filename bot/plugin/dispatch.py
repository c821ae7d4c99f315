"""Running plugin handlers: per-room order, a global concurrency bound, timeouts and isolation.

Every job belongs to a *lane*, ``(room_id, plugin_name)``: jobs of one lane run one after another in submission
order, so a plugin sees a room's events in timeline order; different lanes run concurrently, at most
``max_concurrency`` at a time. A plugin that hangs in one room therefore delays only its own next events in that room,
never another plugin or another room. Each job is cancelled after ``timeout`` seconds; an exception is logged with its
traceback and reported to ``on_error``; neither escapes the dispatcher.

A handler that blocks the event loop (``time.sleep``, heavy CPU, blocking I/O) stalls every lane, which no timeout can
interrupt; each step of a job's coroutine is timed, and a step longer than ``block_warning`` seconds is logged with the
plugin's name ("plugin X: command y blocked the event loop for 2.0s"), so the culprit is found at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

from bot.timeslice import TimeSlice

__all__ = ["Dispatcher", "JobOutcome"]

log = logging.getLogger(__name__)

Lane = tuple[str, str]

#: A single step of a handler that keeps the event loop longer than this (seconds) is logged as blocking it.
BLOCK_WARNING = 0.5


@dataclass
class JobOutcome:
    """How a job ended: ``ok``, ``error`` (an exception), ``timeout`` or ``cancelled``."""

    status: str
    error: BaseException | None = None
    seconds: float = 0.0


@dataclass
class _Job:
    run: Callable[[], Awaitable[object]]
    label: str
    future: asyncio.Future[JobOutcome]
    on_done: Callable[[JobOutcome], None] | None = None

    def finish(self, outcome: JobOutcome) -> None:
        """Call ``on_done`` (in this step: no callback scheduled per job), then resolve the future."""
        if self.on_done is not None:
            try:
                self.on_done(outcome)
            except Exception:
                log.exception("job completion callback failed")
        if not self.future.done():
            self.future.set_result(outcome)


@dataclass
class _LaneState:
    queue: deque[_Job] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None


class Dispatcher:
    """Runs submitted coroutines in per-lane order under a concurrency bound and a timeout."""

    def __init__(
        self,
        *,
        max_concurrency: int = 32,
        timeout: float = 60.0,
        on_error: Callable[[Lane, str, JobOutcome], None] | None = None,
        block_warning: float = BLOCK_WARNING,
    ) -> None:
        self._sem = asyncio.Semaphore(max_concurrency)
        self.timeout = timeout
        self.block_warning = block_warning
        self._lanes: dict[Lane, _LaneState] = {}
        self._on_error = on_error
        self._closed = False
        #: Shared by the lanes: a lane whose jobs do not suspend pauses every few milliseconds.
        self._turn = TimeSlice()

    def submit(
        self,
        lane: Lane,
        run: Callable[[], Awaitable[object]],
        label: str = "",
        *,
        on_done: Callable[[JobOutcome], None] | None = None,
    ) -> asyncio.Future[JobOutcome]:
        """Queue ``run()`` on ``lane``; the returned future resolves with its :class:`JobOutcome` (never raises).

        ``on_done(outcome)`` is called just before the future resolves, in the same step as the job's end (a done
        callback on the future would wait for a later turn of the event loop, and costs a scheduled call per job).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[JobOutcome] = loop.create_future()
        job = _Job(run, label, fut, on_done)
        if self._closed:
            job.finish(JobOutcome("cancelled"))
            return fut
        state = self._lanes.setdefault(lane, _LaneState())
        state.queue.append(job)
        if state.worker is None or state.worker.done():
            state.worker = loop.create_task(self._work(lane, state), name=f"lane {lane[0]} {lane[1]}")
        return fut

    @property
    def busy(self) -> int:
        """Jobs queued or running."""
        return sum(len(s.queue) + (1 if s.worker and not s.worker.done() else 0) for s in self._lanes.values())

    async def _work(self, lane: Lane, state: _LaneState) -> None:
        while state.queue and not self._closed:
            job = state.queue[0]
            outcome = await self._run(lane, job)
            state.queue.popleft()
            job.finish(outcome)
            if self._turn.due():  # handlers that never suspend (a no-op, a counter): other tasks get a turn too
                await self._turn.pause()
        if self._lanes.get(lane) is state and not state.queue:
            del self._lanes[lane]

    async def _run(self, lane: Lane, job: _Job) -> JobOutcome:
        start = time.monotonic()
        try:
            async with self._sem:
                start = time.monotonic()
                log.debug("plugin %s: running %s", lane[1], job.label)
                # in the lane's own task: no task per job (asyncio.wait_for would start one; issue 20)
                async with asyncio.timeout(self.timeout):
                    await self._timed(lane, job)
            return JobOutcome("ok", seconds=time.monotonic() - start)
        except TimeoutError as exc:
            outcome = JobOutcome("timeout", exc, time.monotonic() - start)
            log.error(
                "plugin %s: %s did not finish within %.0fs and was cancelled", lane[1], job.label, self.timeout
            )
        except asyncio.CancelledError:
            if self._closed:
                return JobOutcome("cancelled", seconds=time.monotonic() - start)
            raise
        except Exception as exc:
            outcome = JobOutcome("error", exc, time.monotonic() - start)
            log.error("plugin %s: %s raised", lane[1], job.label, exc_info=exc)
        if self._on_error is not None:
            try:
                self._on_error(lane, job.label, outcome)
            except Exception:
                log.exception("error callback failed")
        return outcome

    def _timed(self, lane: Lane, job: _Job) -> Coroutine[Any, Any, object]:
        """``job.run()``, with each step that holds the event loop too long logged with the plugin's name."""

        def blocked(seconds: float) -> None:
            log.warning(
                "plugin %s: %s blocked the event loop for %.1fs (every room and plugin waited; use "
                "asyncio.to_thread() for blocking work)",
                lane[1],
                job.label,
                seconds,
            )

        async def run() -> object:
            return await _StepTimer(job.run(), self.block_warning, blocked)

        return run()

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued job; True if all finished."""
        deadline = time.monotonic() + timeout
        while self._lanes:
            workers = [s.worker for s in self._lanes.values() if s.worker and not s.worker.done()]
            if not workers:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.wait(workers, timeout=remaining)
        return True

    async def close(self) -> None:
        """Cancel whatever is still queued or running; pending futures resolve as ``cancelled``."""
        self._closed = True
        workers = []
        for state in list(self._lanes.values()):
            for job in state.queue:
                if not job.future.done():
                    job.finish(JobOutcome("cancelled"))
            if state.worker and not state.worker.done():
                state.worker.cancel()
                workers.append(state.worker)
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self._lanes.clear()


class _StepTimer:
    """Awaits a coroutine step by step (as a task would) and reports any step that took ``limit`` seconds or more.

    Every value sent and every exception thrown (cancellation included) is passed through unchanged.
    """

    def __init__(self, coro: Coroutine[Any, Any, object], limit: float, report: Callable[[float], None]) -> None:
        self._coro = coro
        self._limit = limit
        self._report = report

    def __await__(self) -> Generator[Any, Any, object]:
        coro = self._coro
        send: Any = None
        throw: BaseException | None = None
        while True:
            start = time.monotonic()
            try:
                yielded = coro.throw(throw) if throw is not None else coro.send(send)
            except StopIteration as stop:
                self._check(start)
                return stop.value
            except BaseException:
                self._check(start)
                raise
            self._check(start)
            try:
                send, throw = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                send, throw = None, exc

    def _check(self, start: float) -> None:
        took = time.monotonic() - start
        if took >= self._limit:
            self._report(took)
