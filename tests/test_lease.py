"""The active/standby lease and its fence (bot/storage/lease.py) against a real PostgreSQL: who holds it, when a
standby takes over, and that a process which lost it cannot write any more."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from bot.errors import StateError
from bot.storage.lease import EPOCH_SETTING, Lease, LeaseLost, fence_schema, is_fenced
from bot.storage.pg_connection import connect
from bot.storage.state import StateStore

TTL = 3.0
POLL = 0.2


def _lease(url: str, holder: str) -> Lease:
    return Lease(url, ttl=TTL, poll=POLL, holder=holder)


def _fenced_state(url: str, lease: Lease) -> StateStore:
    state = StateStore.open_postgres(url, lease.settings)
    with connect(url) as conn:
        fence_schema(conn, "ratchet")
    return state


def test_the_first_holds_it_a_second_waits_and_a_clean_release_hands_over_at_once(postgres_dsn):
    a = _lease(postgres_dsn, "a")
    a.acquire()
    assert (a.epoch, a.taken_because) == (1, "new")
    b = _lease(postgres_dsn, "b")
    assert not b.try_acquire()
    a.renew()  # still ours
    a.release()
    started = time.monotonic()
    assert b.try_acquire()
    assert time.monotonic() - started < 1
    assert (b.epoch, b.taken_because) == (2, "released")
    b.release()


def test_a_dead_holder_is_replaced_at_the_next_poll_not_after_the_ttl(postgres_dsn):
    a = _lease(postgres_dsn, "a")
    a.acquire()
    a.start_renewing(lambda exc: None)
    a._stop.set()  # the process dies: no more renewals, and its connection closes
    a._reset_connection()
    b = _lease(postgres_dsn, "b")
    started = time.monotonic()
    b.acquire()
    assert time.monotonic() - started < TTL / 2
    assert (b.epoch, b.taken_because) == (2, "holder gone")
    b.release()


def test_a_frozen_holder_loses_it_at_expiry_and_its_writes_are_refused_after(postgres_dsn):
    a = _lease(postgres_dsn, "a")
    a.acquire()
    state = _fenced_state(postgres_dsn, a)
    state.mark_handled("$before", "ping")
    # "a" freezes: it neither renews nor closes its lease connection (which keeps the advisory lock)
    b = _lease(postgres_dsn, "b")
    started = time.monotonic()
    b.acquire()
    waited = time.monotonic() - started
    assert b.taken_because == "expired" and b.epoch == 2
    assert waited > TTL / 2
    # "a" wakes up: every write fails, reads still work, its renewal says it lost the lease
    with pytest.raises(StateError) as refused:
        state.mark_handled("$zombie", "ping")
    assert is_fenced(refused.value) and "does not hold the lease" in str(refused.value)
    assert state.is_handled("$before", "ping") and not state.is_handled("$zombie", "ping")
    with pytest.raises(LeaseLost):
        a.renew()
    # the new holder writes
    state_b = StateStore.open_postgres(postgres_dsn, b.settings)
    state_b.mark_handled("$after", "ping")
    assert state_b.is_handled("$after", "ping")
    b.release()


def test_the_fence_refuses_a_connection_without_an_epoch_and_after_expiry(postgres_dsn):
    a = _lease(postgres_dsn, "a")
    a.acquire()
    _fenced_state(postgres_dsn, a).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as plain:
        with pytest.raises(psycopg.Error) as no_epoch:
            plain.execute("INSERT INTO ratchet.kv (key, value) VALUES ('x', 'y')")
        assert is_fenced(no_epoch.value)
        # reads are never fenced
        assert plain.execute("SELECT count(*) FROM ratchet.kv").fetchone()[0] >= 0
    with connect(postgres_dsn, settings={EPOCH_SETTING: str(a.epoch)}) as mine:
        mine.execute("INSERT INTO ratchet.kv (key, value) VALUES ('x', 'y')")
        time.sleep(TTL + 0.2)  # not renewed: expired, even though nobody took over
        with pytest.raises(psycopg.Error) as expired:
            mine.execute("UPDATE ratchet.kv SET value = 'z' WHERE key = 'x'")
        assert is_fenced(expired.value)


def test_renewals_keep_it_and_losing_it_is_reported_once_from_the_renewal_thread(postgres_dsn):
    a = _lease(postgres_dsn, "a")
    a.acquire()
    lost: list[LeaseLost] = []
    told = threading.Event()
    a.start_renewing(lambda exc: (lost.append(exc), told.set()))
    time.sleep(TTL * 1.5)  # several renewals: still held
    assert not _lease(postgres_dsn, "b").try_acquire()
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:  # an operator takes it away
        admin.execute("UPDATE ratchet.lease SET epoch = epoch + 1")
    assert told.wait(TTL * 2)
    assert len(lost) == 1 and a.lost is lost[0]
    a.release()  # never raises, and does not release what it no longer holds
    with psycopg.connect(postgres_dsn) as admin:
        assert admin.execute("SELECT expires_at > clock_timestamp() FROM ratchet.lease").fetchone()[0]


def test_a_standby_can_be_stopped_while_waiting(postgres_dsn):
    a = _lease(postgres_dsn, "a")
    a.acquire()
    b = _lease(postgres_dsn, "b")
    stop = threading.Event()
    waits: list[str] = []
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(LeaseLost, match="stopped while waiting"):
        b.acquire(stop=stop, on_wait=waits.append)
    assert waits and "a holds the lease" in waits[0]
    a.release()


def test_a_lease_shorter_than_three_polls_is_refused(postgres_dsn):
    with pytest.raises(ValueError):
        Lease(postgres_dsn, ttl=1, poll=1)
