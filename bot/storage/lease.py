"""The active/standby lease on PostgreSQL, and the fence that stops a process that lost it from writing.

Two ``ratchet run`` processes may share one database: one holds the lease and runs the bot, the other waits. The
lease is one row, ``ratchet.lease``, with an **epoch** (bumped at every takeover), its holder and an expiry time. The
holder renews it every ``ttl / 3`` seconds from a thread of its own (so a busy event loop cannot lose it); a process
that cannot renew it in time, or finds the epoch changed, has lost it and stops.

A standby takes the lease over when it expired (the holder is paused, cut off or gone), or at once when the holder's
session-level advisory lock is free: the holder's lease connection is closed, which on a ``kill -9`` happens
immediately. Taking over bumps the epoch.

**Fencing.** A process that was paused (``SIGSTOP``, a VM freeze) may wake up after the standby took over, still
believing it is active, with writes in flight. Every connection of the active process carries its epoch as the
session setting ``ratchet.epoch``, and every table in the bot's schemas has a statement-level trigger
(:func:`fence_schema`) that refuses a write unless that epoch is the lease's and the lease has not expired. The
trigger takes a share lock on the lease row, so a takeover waits for writes in flight to commit, and a write that
starts after a takeover fails: the zombie's writes never land. Connections also get
``idle_in_transaction_session_timeout``, so a transaction left open by a paused process cannot hold the lease row
(and the takeover) forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bot.errors import StorageError
from bot.storage.pg_connection import STATE_SCHEMA, connect, ensure_schema, redact_url

__all__ = [
    "EPOCH_SETTING",
    "FENCE_SQLSTATE",
    "Lease",
    "LeaseLost",
    "fence_schema",
    "install_lease_schema",
    "is_fenced",
]

log = logging.getLogger(__name__)

#: The session setting each connection of the active process carries.
EPOCH_SETTING = "ratchet.epoch"
#: The SQLSTATE the fence raises (class R0: Ratchet's own).
FENCE_SQLSTATE = "R0001"
#: The advisory lock the holder keeps on its lease connection (any constant; the database is the bot's).
_ADVISORY_KEY = 0x5261746368  # "Ratch"
_TRIGGER = "ratchet_fence"

_LEASE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.lease (
    name TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE OR REPLACE FUNCTION {STATE_SCHEMA}.fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
DECLARE
    mine TEXT := current_setting('{EPOCH_SETTING}', true);
    lease_epoch BIGINT;
    live BOOLEAN;
BEGIN
    SELECT epoch, expires_at > clock_timestamp() INTO lease_epoch, live
      FROM {STATE_SCHEMA}.lease WHERE name = 'active' FOR SHARE;
    IF mine IS NULL OR mine = '' OR lease_epoch IS NULL OR lease_epoch <> mine::BIGINT OR NOT live THEN
        RAISE EXCEPTION 'ratchet: write refused, this process does not hold the lease (its epoch %, the lease''s %)',
            coalesce(nullif(mine, ''), 'none'), coalesce(lease_epoch::TEXT, 'none')
            USING ERRCODE = '{FENCE_SQLSTATE}';
    END IF;
    RETURN NULL;
END
$fence$;
"""


class LeaseLost(StorageError):
    """This process no longer holds the lease: another one took over, or it could not be renewed in time."""


def is_fenced(exc: BaseException | None) -> bool:
    """True if ``exc`` (or what caused it) is the fence refusing a write, or the lease being lost."""
    while exc is not None:
        if isinstance(exc, LeaseLost) or getattr(exc, "sqlstate", None) == FENCE_SQLSTATE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def install_lease_schema(conn: Any) -> None:
    """Create the lease table and the fence function if missing (``conn``: an autocommit psycopg connection)."""
    ensure_schema(conn, STATE_SCHEMA)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY + 1,))  # concurrent installs would race
    conn.execute(_LEASE_SCHEMA.encode())


def fence_schema(conn: Any, schema: str) -> int:
    """Put the fence trigger on every table of ``schema`` that lacks it (not on the lease itself); returns how many
    tables got it. Run after the tables were created (state, crypto store, each plugin's migrations)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT EXISTS ("
        "  SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = %s)",
        (schema, _TRIGGER),
    ).fetchall()
    added = 0
    for (table,) in rows:
        if schema == STATE_SCHEMA and table == "lease":
            continue
        conn.execute(
            f'CREATE TRIGGER {_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "{schema}"."{table}" '
            f"FOR EACH STATEMENT EXECUTE FUNCTION {STATE_SCHEMA}.fence()"
        )
        added += 1
    return added


def default_holder() -> str:
    """A name for this process in the lease row: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """The lease of one bot's database. :meth:`acquire` waits until this process holds it; :meth:`start_renewing`
    keeps it; :meth:`release` hands it over at a clean stop.

    Args:
        url: the database.
        ttl: seconds the lease lasts without renewal: the longest a standby waits after the active froze or lost
            its network. A ``kill -9`` of the active is noticed at the standby's next poll instead.
        poll: seconds between a standby's attempts.
        holder: this process's name in the lease row.
    """

    def __init__(self, url: str, *, ttl: float = 10.0, poll: float = 1.0, holder: str | None = None) -> None:
        if ttl < 3 * poll:
            raise ValueError("lease ttl must be at least three polls")
        self.url = url
        self.ttl = ttl
        self.poll = poll
        self.holder = holder or default_holder()
        #: The epoch this process holds (None before :meth:`acquire`).
        self.epoch: int | None = None
        #: How the lease was taken: "new", "expired", "released" or "holder gone".
        self.taken_because: str | None = None
        self._conn: Any = None
        self._has_lock = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: LeaseLost | None = None
        self._renewed_at = 0.0

    def __repr__(self) -> str:
        return f"Lease({redact_url(self.url)!r}, epoch={self.epoch}, holder={self.holder!r})"

    @property
    def settings(self) -> dict[str, str]:
        """What every connection of the active process must carry (see :func:`~bot.storage.pg_connection.connect`)."""
        if self.epoch is None:
            raise LeaseLost("the lease is not held")
        idle = max(1, int(self.ttl * 1000 / 2))
        return {EPOCH_SETTING: str(self.epoch), "idle_in_transaction_session_timeout": str(idle)}

    @property
    def lost(self) -> LeaseLost | None:
        """Why the lease was lost, once it was."""
        return self._lost

    # -- acquiring ---------------------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """One attempt: True if this process holds the lease now."""
        if self._conn is None:
            self._conn = self._connect()
            install_lease_schema(self._conn)
        conn = self._conn
        if not self._has_lock:
            self._has_lock = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (_ADVISORY_KEY,)).fetchone()[0])
        with conn.transaction():
            row = conn.execute(
                f"SELECT epoch, holder, expires_at > clock_timestamp(), expires_at <= acquired_at "
                f"FROM {STATE_SCHEMA}.lease WHERE name = 'active' FOR UPDATE"
            ).fetchone()
            if row is None:
                epoch, reason = 1, "new"
                conn.execute(
                    f"INSERT INTO {STATE_SCHEMA}.lease (name, epoch, holder, acquired_at, expires_at) "
                    "VALUES ('active', 1, %s, clock_timestamp(), clock_timestamp() + make_interval(secs => %s))",
                    (self.holder, self.ttl),
                )
            else:
                old_epoch, old_holder, live, released = row
                if live and not self._has_lock:
                    return False
                epoch = old_epoch + 1
                reason = "released" if released else ("expired" if not live else "holder gone")
                conn.execute(
                    f"UPDATE {STATE_SCHEMA}.lease SET epoch = %s, holder = %s, acquired_at = clock_timestamp(), "
                    "expires_at = clock_timestamp() + make_interval(secs => %s) WHERE name = 'active'",
                    (epoch, self.holder, self.ttl),
                )
                if reason == "released":
                    log.info("took the lease (epoch %d), released by %s", epoch, old_holder)
                else:
                    log.warning("took over the lease (epoch %d) from %s: %s", epoch, old_holder, reason)
        self.epoch = epoch
        self.taken_because = reason
        self._renewed_at = time.monotonic()
        return True

    def acquire(self, *, stop: threading.Event | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until this process holds the lease (a standby waits here). ``stop`` ends the wait early
        (:class:`LeaseLost` is raised); ``on_wait`` is told once who holds it. Database errors are retried (logged)."""
        told = False
        while True:
            try:
                if self.try_acquire():
                    return
                if not told:
                    holder = self._conn.execute(
                        f"SELECT holder FROM {STATE_SCHEMA}.lease WHERE name = 'active'"
                    ).fetchone()
                    message = f"standby: {holder[0] if holder else 'another process'} holds the lease; waiting"
                    log.info("%s", message)
                    if on_wait is not None:
                        on_wait(message)
                    told = True
            except StorageError as exc:
                log.warning("lease: %s; retrying", exc)
                self._reset_connection()
            except Exception as exc:  # psycopg errors: the server restarting, the network
                log.warning("lease: %s: %s; retrying", type(exc).__name__, str(exc).strip())
                self._reset_connection()
            if (stop.wait(self.poll) if stop is not None else time.sleep(self.poll)) and stop is not None:
                raise LeaseLost("stopped while waiting for the lease")

    def _connect(self) -> Any:
        # a renewal stuck on a cut network fails within half the lease, while the lease can still be counted lost
        timeout = max(1000, int(self.ttl * 500))
        return connect(
            self.url,
            application_name=f"ratchet lease {self.holder}",
            network={"tcp_user_timeout": str(timeout)},
            connect_timeout=max(2, round(timeout / 1000)),
        )

    def _reset_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection
                log.debug("lease: closing the old connection failed", exc_info=True)
        self._conn = None
        self._has_lock = False

    # -- keeping -----------------------------------------------------------------------------------------------

    def renew(self) -> None:
        """Extend the lease by ``ttl``; raises :class:`LeaseLost` if another process took it or it expired."""
        if self.epoch is None:
            raise LeaseLost("the lease is not held")
        if self._conn is None:
            self._conn = self._connect()
        if not self._has_lock:
            self._has_lock = bool(
                self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_ADVISORY_KEY,)).fetchone()[0]
            )
        cur = self._conn.execute(
            f"UPDATE {STATE_SCHEMA}.lease SET expires_at = clock_timestamp() + make_interval(secs => %s) "
            "WHERE name = 'active' AND epoch = %s AND expires_at > clock_timestamp()",
            (self.ttl, self.epoch),
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"the lease (epoch {self.epoch}) was taken over or expired")
        self._renewed_at = time.monotonic()

    def start_renewing(self, on_lost: Callable[[LeaseLost], None]) -> None:
        """Renew every ``ttl / 3`` seconds on a thread of its own; ``on_lost`` is called (from that thread) once the
        lease is lost: taken over, expired, or not renewed for ``ttl`` seconds.

        Each renewal runs on a short-lived thread of its own and the lease thread only watches the clock: a database
        that accepts bytes but never answers (a frozen server, a proxy gone silent) blocks a renewal forever without
        any socket error, and the lease must still be counted lost when it expires."""
        if self._thread is not None:
            return
        failed: list[LeaseLost] = []

        def attempt() -> None:
            try:
                self.renew()
            except LeaseLost as exc:
                failed.append(exc)
            except Exception as exc:  # the connection: retried at the next tick, until the lease would expire
                self._reset_connection()
                log.warning("lease: renewal failed (%s: %s); retrying", type(exc).__name__, str(exc).strip())

        def run() -> None:
            interval = self.ttl / 3
            current: threading.Thread | None = None
            while not self._stop.wait(interval):
                if failed:
                    self._lose(failed[0], on_lost)
                    return
                if time.monotonic() - self._renewed_at >= self.ttl:
                    self._lose(LeaseLost(f"could not renew the lease for {self.ttl:g} s (the database does not "
                                         "answer)"), on_lost)
                    return
                if current is not None and current.is_alive():
                    continue  # the last renewal is still waiting for the database
                current = threading.Thread(target=attempt, name="ratchet-lease-renewal", daemon=True)
                current.start()

        self._thread = threading.Thread(target=run, name="ratchet-lease", daemon=True)
        self._thread.start()

    def _lose(self, exc: LeaseLost, on_lost: Callable[[LeaseLost], None]) -> None:
        self._lost = exc
        log.error("lost the database lease: %s", exc)
        on_lost(exc)

    def release(self) -> None:
        """Stop renewing and let a standby take over at once (a clean stop). Never raises."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.epoch is not None and self._lost is None:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.execute(
                    f"UPDATE {STATE_SCHEMA}.lease SET expires_at = acquired_at "
                    "WHERE name = 'active' AND epoch = %s",
                    (self.epoch,),
                )
            except Exception as exc:
                log.warning("could not release the lease (a standby takes over when it expires): %s", exc)
        if self._lost is None:  # after a loss a renewal may still hang on the connection: leave it to the exit
            self._reset_connection()
