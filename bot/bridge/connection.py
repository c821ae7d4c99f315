"""Remote connections and their supervisor.

A bridge implements :class:`RemoteConnection` for its network: ``connect()`` (open and log in), ``run()`` (receive
until the link ends, handing each incoming message to :meth:`RemoteConnection.deliver`), ``send()`` (one outgoing
item) and ``close()``. The :class:`ConnectionSupervisor` drives it:

* it reconnects after any failure or disconnection, waiting an exponential :class:`~bot.bridge.flow.Backoff` with
  jitter between attempts;
* outgoing messages go through a bounded :class:`~bot.bridge.flow.OutboundQueue` of :class:`Outgoing` messages (one
  message may be several items: an IRC message is its lines): during an outage they wait there, in order, and are
  flushed after the reconnect; an item counts as sent only once ``send()`` returned, so the one whose send failed goes
  first next time, and a message leaves the queue when its last item is sent;
* with an ``on_progress`` journal (the bridge's storage) every message is kept on disk until it is sent, how many
  of its items were sent included, so a restart sends what is left, once, in order
  (:meth:`ConnectionSupervisor.restore`);
  a message cut short (its first lines sent, the rest dropped) is followed by ``cut_notice``'s item, so the remote
  side sees that it was cut;
* a :class:`~bot.bridge.flow.TokenBucket` paces what is sent (remote networks throttle or disconnect floods).

The backoff starts over after a successful send, or when a connection that had been up for ``stable_after`` seconds
drops (a new outage), not merely after a connect: an endpoint that accepts connections but fails every send still
sees growing delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bot.bridge.flow import Backoff, OutboundQueue, TokenBucket
from bot.bridge.model import RemoteCapabilities, RemoteMessage, RemoteSend
from bot.errors import PermanentSendError

__all__ = [
    "ConnectionState",
    "ConnectionStatus",
    "ConnectionSupervisor",
    "InboundRefused",
    "Outgoing",
    "PermanentSendError",
    "RemoteConnection",
]

log = logging.getLogger(__name__)

ConnectionState = Literal["stopped", "connecting", "connected", "waiting"]

#: The key of :attr:`RemoteMessage.extra <bot.bridge.model.RemoteMessage.extra>` that marks what
#: :meth:`RemoteConnection.sender_gone` delivers: no message, an instruction kept in the order of the messages.
SENDER_GONE = "ratchet.sender_gone"


class InboundRefused(Exception):
    """What the future :meth:`RemoteConnection.deliver` returns holds when the bridge did not take the message:
    ``reason`` is ``"flood"`` (its sender is over ``sender_rate_limit``) or ``"full"`` (the bridge's inbound queue
    is full: Matrix is not keeping up). Nothing was posted; a network that answers its sender says so (a webhook
    answers 429 or 503)."""

    def __init__(self, reason: Literal["flood", "full"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RemoteConnection(ABC):
    """One link to a remote network (an IRC server, an HTTP endpoint...), driven by a :class:`ConnectionSupervisor`.

    Subclasses set :attr:`capabilities` and implement the four coroutines. Incoming messages are handed to
    :meth:`deliver` (synchronously, in the order they arrive): the bridge queues them and posts them into Matrix in
    that order. ``deliver`` returns a future with the Matrix event id (or None if the message was not posted), for
    networks that answer their sender (a webhook's HTTP response).
    """

    capabilities: ClassVar[RemoteCapabilities] = RemoteCapabilities()

    def __init__(self, network: str) -> None:
        self.network = network
        self._sink: Callable[[RemoteMessage], asyncio.Future[str | None]] | None = None

    def attach(self, sink: Callable[[RemoteMessage], asyncio.Future[str | None]]) -> None:
        """Set where :meth:`deliver` sends incoming messages (done by the bridge)."""
        self._sink = sink

    def deliver(self, message: RemoteMessage) -> asyncio.Future[str | None]:
        """Hand an incoming message to the bridge; the future resolves when it is posted (to its event id)."""
        if self._sink is None:
            fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            log.warning("%s: a message arrived before the connection was attached to a bridge", self.network)
            return fut
        return self._sink(message)

    def sender_gone(self, sender_id: str, channel: str | None = None) -> None:
        """Say that ``sender_id`` left ``channel`` (None: the network, or changed their name), in the order of the
        messages delivered: the bridge forgets their last message, so whoever takes the name next cannot correct it
        with ``s/old/new/``. IRC calls it on PART, KICK, QUIT and NICK."""
        if self._sink is not None:
            self._sink(RemoteMessage(self.network, channel or "", sender_id, sender_id, extra={SENDER_GONE: True}))

    def is_own(self, sender_id: str) -> bool:
        """True if ``sender_id`` is the bridge itself on the remote network (its messages are never relayed)."""
        return False

    def describe(self) -> str:
        """A short description for ``!bridge status`` (server, nick...)."""
        return ""

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection and log in; return when items can be sent. Raise on failure."""

    @abstractmethod
    async def run(self) -> None:
        """Receive until the connection ends, then return (or raise). Cancelled when the bridge stops."""

    @abstractmethod
    async def send(self, item: RemoteSend) -> str | None:
        """Send one item; return its remote id if the network gives one.

        Raise :class:`PermanentSendError` for an item that will never be accepted; any other exception means the
        connection is broken (the supervisor reconnects and sends the item again).
        """

    async def close(self) -> None:
        """Close the connection (called after ``run()`` ends and on shutdown; must not raise). Default: nothing."""
        return None


@dataclass(frozen=True)
class ConnectionStatus:
    """A snapshot for ``!bridge status``.

    ``since`` is when the connection last came up or went down: while it is down, ``connecting`` and ``waiting``
    alternate with every attempt but ``since`` stays at the moment it was first lost (or first tried), so it measures
    the whole outage. ``next_attempt`` is when the next attempt starts (a timestamp; None unless ``waiting``).
    """

    network: str
    state: ConnectionState
    since: float
    queued: int
    dropped: int
    sent: int
    attempts: int
    last_error: str | None
    description: str
    next_attempt: float | None = None

    def line(self, now: float | None = None) -> str:
        """One line: ``libera: connected (2h05m), irc.libera.chat:6697 as relay, queue 0`` or, during an outage,
        ``libera: waiting, down for 12m (5 attempts, next in 40s), ..., last error: ...``."""
        now = time.time() if now is None else now
        ago = _ago(now - self.since)
        if self.state in ("connecting", "waiting"):
            text = f"{self.network}: {self.state}, down for {ago}"
            extra = []
            if self.attempts:
                extra.append(f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}")
            if self.state == "waiting" and self.next_attempt is not None:
                extra.append(f"next in {_ago(self.next_attempt - now)}")
            if extra:
                text += f" ({', '.join(extra)})"
        else:
            text = f"{self.network}: {self.state} ({ago})"
        if self.description:
            text += f", {self.description}"
        text += f", queue {self.queued}"
        if self.dropped:
            text += f" ({self.dropped} dropped)"
        if self.state != "connected" and self.last_error:
            text += f", last error: {self.last_error}"
        return text


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


#: The states of a connection that is not up: an outage goes back and forth between them, one attempt at a time.
_DOWN: frozenset[str] = frozenset({"connecting", "waiting"})


SentCallback = Callable[[RemoteSend, str | None], Awaitable[None]]


@dataclass(eq=False)
class Outgoing:
    """One message on its way to the remote side: its items in order (an IRC message: its lines) and how many of them
    were sent. ``key`` is its row in the bridge's storage (None: kept in memory only); ``dropped`` is set when it
    left the queue unsent (queue full, refused, given up, expired)."""

    items: tuple[RemoteSend, ...]
    sent: int = 0
    key: int | None = None
    created_at: float = field(default_factory=time.time)
    dropped: bool = False

    @property
    def done(self) -> bool:
        return self.dropped or self.sent >= len(self.items)

    @property
    def left(self) -> int:
        """Items not sent yet."""
        return max(0, len(self.items) - self.sent)


ProgressCallback = Callable[[Outgoing], Awaitable[None]]
CutNotice = Callable[[Outgoing], RemoteSend | None]


class ConnectionSupervisor:
    """Keeps one :class:`RemoteConnection` up and feeds it the outgoing queue.

    ``submit()`` / ``submit_message()`` never block and never fail: while the connection is down messages wait in the
    queue (the oldest are dropped if more than ``queue_size`` messages pile up). ``on_sent(item, remote_id)`` is
    awaited after each successful send. ``max_attempts`` (None: no limit) drops an item that failed that many times,
    for endpoints that may refuse one item forever; a refused or abandoned item drops the rest of its message.

    ``on_progress(message)`` (the journal) is awaited after each item sent and when a message is dropped, and for
    every message still queued when the supervisor stops: it records ``message.sent``, or forgets the message once
    :attr:`Outgoing.done`. The send loop is never cancelled inside it. ``cut_notice(message)`` gives an item to send
    in place of a message dropped after some of its items were sent (None: nothing).
    """

    def __init__(
        self,
        connection: RemoteConnection,
        *,
        backoff: Backoff | None = None,
        bucket: TokenBucket | None = None,
        queue_size: int = 1000,
        connect_timeout: float = 30.0,
        max_attempts: int | None = None,
        stable_after: float = 30.0,
        on_sent: SentCallback | None = None,
        on_progress: ProgressCallback | None = None,
        cut_notice: CutNotice | None = None,
    ) -> None:
        self.connection = connection
        self.backoff = backoff or Backoff()
        self.bucket = bucket or TokenBucket(0)
        self.queue: OutboundQueue[Outgoing] = OutboundQueue(queue_size)
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.stable_after = stable_after
        self.on_sent = on_sent
        self.on_progress = on_progress
        self.cut_notice = cut_notice
        self._journal: set[asyncio.Task[None]] = set()
        self._released = asyncio.Event()
        self._released.set()
        self.state: ConnectionState = "stopped"
        #: When the connection last came up or went down (see :class:`ConnectionStatus`).
        self.since = time.time()
        #: When the next connection attempt starts, while ``waiting``.
        self.next_attempt: float | None = None
        self.last_error: str | None = None
        self.sent = 0
        self.connects = 0
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._item_failures = 0
        self._stopping = False

    @property
    def network(self) -> str:
        return self.connection.network

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def _set_state(self, state: ConnectionState) -> None:
        if state != self.state:
            if not (state in _DOWN and self.state in _DOWN):  # one outage: the retries do not restart the clock
                self.since = time.time()
            self.state = state
        if state != "waiting":
            self.next_attempt = None
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(
            network=self.network,
            state=self.state,
            since=self.since,
            queued=len(self.queue),
            dropped=self.queue.dropped,
            sent=self.sent,
            attempts=self.backoff.attempts,
            last_error=self.last_error,
            description=self.connection.describe(),
            next_attempt=self.next_attempt,
        )

    # -- life cycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (in the background)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._supervise(), name=f"bridge {self.network}")

    async def stop(self) -> None:
        """Stop: close the connection. Items still queued are dropped (and logged)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.connection.close()
        kept = 0
        if self.on_progress is not None:
            for message in self.queue:
                if message.key is not None:
                    kept += 1
                    self._record(message)
        while self._journal:
            await asyncio.gather(*self._journal, return_exceptions=True)
        if self.queue:
            if kept == len(self.queue):
                log.info("%s: %d queued messages are kept and sent after the next start", self.network, kept)
            else:
                log.warning("%s: %d queued messages were not sent before stopping", self.network,
                            len(self.queue) - kept)
        self._set_state("stopped")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the connection is up; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def submit(self, item: RemoteSend) -> None:
        """Queue ``item`` for sending (in order), as a message of its own."""
        self.submit_message([item])

    def submit_message(
        self, items: list[RemoteSend] | tuple[RemoteSend, ...], *, key: int | None = None
    ) -> Outgoing:
        """Queue one message made of ``items`` (sent in order, one after the other); ``key``: its stored row."""
        message = Outgoing(tuple(items), key=key)
        dropped = self.queue.put(message)
        if dropped is not None:
            log.warning("%s: outgoing queue full (%d); dropped the oldest message", self.network, self.queue.maxlen)
            self._dropped(dropped)
        self._wake.set()
        return message

    def hold(self) -> None:
        """Send nothing until :meth:`restore` is called (the kept queue is not known yet)."""
        self._released.clear()

    def restore(self, messages: list[Outgoing]) -> None:
        """Put messages kept from before a restart at the head of the queue, in order (what they have not sent yet
        goes first), and end a :meth:`hold`."""
        messages = [m for m in messages if not m.done]
        if messages:
            self.queue.push_front(messages)
            self._wake.set()
        self._released.set()

    def expire(self, before: float) -> int:
        """Drop the queued messages created before ``before`` (a timestamp); returns how many."""
        old = [m for m in self.queue if m.created_at < before]
        for message in old:
            self.queue.remove(message)
            self.queue.dropped += 1
            self._dropped(message)
        return len(old)

    def _record(self, message: Outgoing) -> asyncio.Task[None] | None:
        """Run the journal for ``message`` in a task of its own (a stop waits for it, never cancels it)."""
        if self.on_progress is None or message.key is None:
            return None
        task = asyncio.get_running_loop().create_task(self._progress(message))
        self._journal.add(task)
        task.add_done_callback(self._journal.discard)
        return task

    async def _progress(self, message: Outgoing) -> None:
        assert self.on_progress is not None
        try:
            await self.on_progress(message)
        except Exception:
            log.exception("%s: recording the outgoing queue failed", self.network)

    def _dropped(self, message: Outgoing) -> None:
        """``message`` left the queue unsent: forget it, and say so remotely if it was cut short."""
        message.dropped = True
        self._record(message)
        if message.sent and message.sent < len(message.items) and self.cut_notice is not None:
            notice = self.cut_notice(message)
            if notice is not None:
                self.queue.push_front([Outgoing((notice,))])
                self._wake.set()

    # -- the loops -----------------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        conn = self.connection
        while not self._stopping:
            self._set_state("connecting")
            try:
                await asyncio.wait_for(conn.connect(), self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = _describe(exc)
                log.warning("%s: connecting failed: %s", self.network, self.last_error)
                with contextlib.suppress(Exception):
                    await conn.close()
                await self._wait_before_retry()
                continue
            self.connects += 1
            connected_at = time.monotonic()
            self._set_state("connected")
            log.info("%s: connected%s", self.network, f" ({len(self.queue)} queued)" if self.queue else "")
            sender = asyncio.create_task(self._send_loop(), name=f"bridge {self.network} sender")
            receiver = asyncio.create_task(conn.run(), name=f"bridge {self.network} receiver")
            try:
                done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        self.last_error = _describe(task.exception())
                if receiver in done and not receiver.cancelled() and receiver.exception() is None:
                    self.last_error = "connection closed"
            finally:
                for task in (sender, receiver):
                    task.cancel()
                for task in (sender, receiver):
                    with contextlib.suppress(BaseException):
                        await task
                with contextlib.suppress(Exception):
                    await conn.close()
            if self._stopping:
                break
            if time.monotonic() - connected_at >= self.stable_after:
                self.backoff.reset()  # it was up for a while: this is a new outage, not the same one going on
            log.warning("%s: disconnected (%s); reconnecting", self.network, self.last_error)
            await self._wait_before_retry()

    async def _wait_before_retry(self) -> None:
        delay = self.backoff.next()
        self._set_state("waiting")
        self.next_attempt = time.time() + delay
        log.info("%s: next connection attempt in %.1fs", self.network, delay)
        await asyncio.sleep(delay)

    async def _send_loop(self) -> None:
        """Send queued items in order; return (raise) when the connection breaks."""
        conn = self.connection
        while True:
            await self._released.wait()
            message = self.queue.peek()
            if message is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if message.done:
                self.queue.remove(message)
                continue
            item = message.items[message.sent]
            delay = self.bucket.reserve()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.queue.peek() is not message or message.done:
                continue  # dropped or expired while waiting for the bucket
            try:
                remote_id = await conn.send(item)
            except PermanentSendError as exc:
                log.warning("%s: the remote side refused a message for good: %s", self.network, exc)
                self._drop_head(message)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._item_failures += 1
                if self.max_attempts is not None and self._item_failures >= self.max_attempts:
                    log.warning(
                        "%s: giving up on a message after %d attempts: %s",
                        self.network, self._item_failures, _describe(exc),
                    )
                    self._drop_head(message)
                raise
            # Sent: count it before anything can be cancelled, then record it (a stop waits for that record).
            self._item_failures = 0
            self.backoff.reset()
            message.sent += 1
            self.sent += 1
            if message.done:
                self.queue.remove(message)
            journal = self._record(message)
            if self.on_sent is not None:
                try:
                    await self.on_sent(item, remote_id)
                except Exception:
                    log.exception("%s: recording a sent message failed", self.network)
            if journal is not None:
                await asyncio.shield(journal)

    def _drop_head(self, message: Outgoing) -> None:
        self._item_failures = 0
        if self.queue.remove(message):
            self.queue.dropped += 1
            self._dropped(message)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
