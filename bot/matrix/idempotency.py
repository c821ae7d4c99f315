"""Deterministic transaction ids, so a handler run again after a crash does not send its messages twice.

Every event the bot sends goes out as ``PUT /rooms/{room}/send/{type}/{txnId}`` (or ``/redact/{event}/{txnId}``), and
the homeserver answers a repeated transaction id of the same device with the event it already made instead of making a
new one (Synapse: for at least 24 hours, see docs/reliability.md). The bot keeps one device forever, so a send whose
transaction id depends only on *what is being handled* is deduplicated when the handling is repeated.

The router opens a :func:`send_scope` around each handler job, keyed by the event and the plugin
(:func:`scope_key`); inside it, the n-th send takes the n-th id of that key (:func:`txn_id`). A handler replayed after a
``kill -9`` (its send done, its handled-record not yet written) therefore sends with the same ids and the homeserver
returns the first events: the room shows each reply once. Outside a scope (timers, start(), bridges' own tasks) and
after the scope has ended (a task a handler left running), :func:`next_txn_id` gives a random id, as before.

The scope lives in a :class:`contextvars.ContextVar`, so it belongs to the asyncio task that runs the handler (and to
tasks the handler starts, which copy it): concurrent handlers never share a counter. Sends that one handler runs
concurrently (``asyncio.gather``) are numbered in the order they start; keep that order the same from run to run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import uuid4

__all__ = ["SendScope", "current_scope", "idempotency_key", "next_txn_id", "scope_key", "send_scope", "txn_id"]

#: Transaction ids Ratchet derives start with this, random ones do not (nio's are uuid4 strings).
PREFIX = "rt1"


def scope_key(event_id: str, plugin: str) -> str:
    """The key of one plugin's handling of one event (stable across restarts)."""
    return f"{event_id}\x1f{plugin}"


def txn_id(key: str, n: int) -> str:
    """The transaction id of the ``n``-th send (from 0) under ``key``: short, URL-safe, the same on every run."""
    digest = hashlib.sha256(f"{key}\x1e{n}".encode()).hexdigest()[:40]
    return f"{PREFIX}{digest}"


def idempotency_key(event_id: str, plugin: str) -> str:
    """A key for side effects outside Matrix (an HTTP call with an ``Idempotency-Key``, a row keyed by it): the same
    whenever ``plugin`` handles ``event_id`` again, different for every other event or plugin."""
    return hashlib.sha256(f"idempotency\x1e{scope_key(event_id, plugin)}".encode()).hexdigest()[:40]


class SendScope:
    """The sends of one handling: a key and how many ids it has given out."""

    __slots__ = ("closed", "key", "sent")

    def __init__(self, key: str) -> None:
        self.key = key
        self.sent = 0
        self.closed = False

    def next(self) -> str:
        tid = txn_id(self.key, self.sent)
        self.sent += 1
        return tid


_scope: ContextVar[SendScope | None] = ContextVar("ratchet_send_scope", default=None)


@contextmanager
def send_scope(key: str) -> Iterator[SendScope]:
    """Number the sends of the current task (and the tasks it starts meanwhile) under ``key`` until the block ends."""
    scope = SendScope(key)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        scope.closed = True  # a task the handler left running sends with random ids from now on
        _scope.reset(token)


def current_scope() -> SendScope | None:
    """The open send scope of the current task, if any."""
    scope = _scope.get()
    return scope if scope is not None and not scope.closed else None


def next_txn_id() -> str:
    """The transaction id for the next send: the scope's next one inside a scope, else a random one."""
    scope = current_scope()
    return scope.next() if scope is not None else uuid4().hex
