"""The runtime: start, sync, hand events to plugins, stop cleanly.

``Runtime.run()`` opens the session (one device forever), loads the configured plugins and syncs until asked to stop.
Each sync batch goes through the same steps:

1. invites are accepted or rejected by ``invites.accept_from`` and the plugins' invite guards (``bot.invites``);
2. room keys that arrived as to-device messages unlock events that were waiting for them;
3. each joined room's new events are filtered (history, own messages, catch-up window) and routed to plugins;
   events that cannot be decrypted yet are persisted and their keys requested;
4. the batch's sync token is persisted once its events, and those of every earlier batch, are handled.

In appservice mode (an ``appservice`` config section, docs/appservice.md) there is no sync loop: a transaction pump
(``Runtime._transaction_pump``) takes the homeserver's transactions from bot/appservice and runs each through steps
1 and 3; instead of step 4, the transaction's id is recorded and the homeserver answered once its events are handled.

SIGINT/SIGTERM stop the loop, give running handlers a few seconds, save state and exit within 10 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable
from typing import Any

from bot.appservice import Appservice  # [appservice]
from bot.config import Config
from bot.e2ee.control import CONTROL_SOCKET  # [verification]
from bot.e2ee.identity import Identity  # [identity]
from bot.e2ee.trust import TrustPolicy, install_trust
from bot.e2ee.verification_service import VerificationService, accept_from_config  # [verification]
from bot.errors import IdentityError, SessionError, StateError
from bot.http_listener import HttpListener, ListenerError
from bot.matrix.client import RatchetClient, backoff_delay
from bot.matrix.events import Event, is_room_state, is_state_shaped
from bot.matrix.events import event_type as event_type_of
from bot.matrix.power import creators_from_create_event
from bot.matrix.session import open_session
from bot.matrix.sync import EventSource, SyncBatch, SyncFailed, SyncSource, describe, is_storage_error, is_undecrypted
from bot.metrics import LoopLagProbe, Metrics
from bot.plugin.api import BotAPI
from bot.plugin.dispatch import Dispatcher, JobOutcome
from bot.plugin.host import PluginHost, PluginManager
from bot.runtime.endpoints import install_endpoints
from bot.runtime.status_page import ActivityHistory
from bot.runtime.timeline import CatchUpPolicy, TokenCommitter, own_join_index, select_events
from bot.stats import BotStats
from bot.storage.backend import Storage, open_storage
from bot.storage.lease import LeaseLost, is_fenced
from bot.storage.state import StateStore
from bot.timeslice import TimeSlice

__all__ = ["Runtime"]

log = logging.getLogger("ratchet")

#: Long-poll timeout of /sync, in milliseconds.
SYNC_TIMEOUT_MS = 30_000
#: How far back a gap in a room's timeline is filled after downtime: pages of 100 events.
MAX_BACKFILL_PAGES = 20
#: Clock skew tolerated between the bot and the homeserver when filling gaps, in ms.
BACKFILL_MARGIN_MS = 60_000
#: Seconds that running handlers get to finish when the bot is stopped.
SHUTDOWN_GRACE = 6.0
#: Seconds between attempts to bind the HTTP listener when its port was taken.
HTTP_RETRY = 30.0
#: Seconds past the shutdown grace after which a process that lost its lease and could not stop exits hard.
LEASE_LOSS_EXIT_MARGIN = 5.0
#: How often an event whose sender's device keys cannot be fetched yet is retried before it is given up.
SENDER_CHECK_ATTEMPTS = 12


class Runtime:
    """The running bot: one account's session, its plugins and its sync loop (plugins see it as ``self.bot``,
    a :class:`~bot.plugin.api.BotAPI`, never this object).

    Built whole: the constructor wires every collaborator (trust policy, identity, dispatcher, plugin host and the
    :class:`~bot.plugin.api.BotAPI` plugins see), so nothing is filled in later and plugins see all of it from their
    first ``start()``. :meth:`open` is the usual way in: it opens the session (one device forever) and ``state.db``
    first. :meth:`run` starts the plugins, syncs until asked to stop and shuts down.
    """

    def __init__(
        self, config: Config, client: RatchetClient, storage: Storage, *, appservice: Appservice | None = None
    ) -> None:
        """Raises :class:`~bot.errors.StateError` if the runtime state cannot be opened.

        With ``appservice`` (appservice mode, docs/appservice.md) events come from its transactions instead of
        ``/sync`` and the bot has no device (no cross-signing identity).
        """
        self.config = config
        self.client = client
        #: Where everything that survives a restart lives (SQLite files under data_dir by default).
        self.storage = storage
        #: Sync token, handled-event records, waiting events, trust pins, the rooms' state.
        self.state: StateStore = storage.open_state()
        self.state.on_write_error = self._storage_failed
        #: Appservice mode: transactions, ghosts (bot/appservice); None in relay mode (one account's /sync).
        self.appservice = appservice
        #: How events come in: this account's /sync, or the appservice's transactions.
        self.source: EventSource = (
            SyncSource(client, self.state) if appservice is None else appservice.bind(self.state, self._invite_allowed)
        )
        self.stats = BotStats()
        #: Prometheus metrics (served at ``/metrics`` when the ``http`` listener is on).
        self.metrics = Metrics()
        client.metrics = self.metrics
        #: The optional HTTP listener (metrics, health, status page; plugins mount routes on it).
        self.http: HttpListener | None = (
            HttpListener(config.http.host, config.http.port) if config.http is not None else None
        )
        #: Whose devices get room keys and whose messages count as trusted (bot/e2ee/trust.py).
        self.trust: TrustPolicy = install_trust(client, self.state, config.e2ee.trust)
        #: Cross-signing, secret storage and key backup (bot/e2ee/identity.py); None when its local secrets cannot
        #: be read (logged: cross-signing and key backup are off for this run).
        self.identity: Identity | None = _open_identity(client, config, storage) if appservice is None else None
        #: Interactive (SAS) verification, requests accepted from the admins (and e2ee.verification.accept_from); the
        #: operator confirms through data_dir/control.sock (``ratchet verification ...``). Issue 18.
        self.verifications = VerificationService(
            client,
            trust=self.trust,
            identity=self.identity,
            accept_from=accept_from_config(config.admins, config.e2ee.verification.accept_from),
            auto_confirm=frozenset(config.e2ee.verification.auto_confirm),
        )
        self.dispatcher = Dispatcher(max_concurrency=config.max_concurrency, timeout=config.handler_timeout)
        self.host = PluginHost(
            client,
            self.state,
            storage,
            self.dispatcher,
            config,
            stats=self.stats,
            trust=self.trust,
            identity=self.identity,
            metrics=self.metrics,
            http=self.http,
            verifications=self.verifications,
            appservice=appservice,
        )
        #: What plugins see as ``self.bot``.
        self.api: BotAPI = self.host.api
        #: The configured plugins (reload, enable, disable).
        self.manager: PluginManager = self.host.manager
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._committer: TokenCommitter[tuple[str, int]] = TokenCommitter()
        self._background: set[asyncio.Task[Any]] = set()
        self._invites_done: set[str] = set()
        self._policy = CatchUpPolicy(config.catch_up, int(config.catch_up_max_age * 1000))
        #: The storage failure that stopped the bot, if any (run() raises it as a SessionError).
        self._fatal: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: ``ratchet run``'s own runtime exits the process if it cannot stop after losing the lease (see _lease_lost).
        self._exit_hard_on_lease_loss = False
        #: How late the event loop wakes a sleeping task (the worst is shown by /health/live and the status page).
        self.lag_probe = LoopLagProbe(self.metrics)
        #: Events and handler latency over the last hour, for the status page's charts (bot/runtime/status_page.py).
        self.activity = ActivityHistory(self.stats, self.metrics)
        install_endpoints(self, long_poll=SYNC_TIMEOUT_MS / 1000)

    @classmethod
    async def open(cls, config: Config) -> Runtime:
        """Open the bot's session (logging in only the first time) and ``state.db``, and build the bot.

        Raises :class:`~bot.errors.SessionError` with what to do when the identity on disk cannot be used.
        """
        os.umask(0o077)  # everything the bot writes (stores, plugin databases, keys) is private to its user
        storage = open_storage(config)
        await _hold_storage(storage)  # PostgreSQL: a standby waits here until the active one stops or dies
        if config.appservice is not None:
            return await cls._open_appservice(config, storage)
        try:
            client = await open_session(
                homeserver=config.homeserver,
                user_id=config.user_id,
                storage=storage,
                pickle_key=config.pickle_key,
                password=config.password,
                access_token=config.access_token,
                device_name=config.device_name,
            )
            storage.fence()  # nio created its tables (first start): fence them too
        except BaseException:
            storage.release()
            raise
        try:
            return cls(config, client, storage)
        except StateError as exc:
            await client.close()
            storage.release()
            raise SessionError(str(exc)) from exc

    @classmethod
    async def _open_appservice(cls, config: Config, storage: Storage) -> Runtime:
        """Appservice mode: the bot acts with the as_token (no login); its device (MSC4190, with
        ``appservice.encryption``) is fed by the transactions, which bring the events instead of ``/sync``."""
        try:
            storage.prepare()
            appservice = await Appservice.open(config, storage)
            storage.fence()  # nio created its tables (first start): fence them too
        except BaseException:
            storage.release()
            raise
        try:
            return cls(config, appservice.client, storage, appservice=appservice)
        except StateError as exc:
            await appservice.client.close()
            storage.release()
            raise SessionError(str(exc)) from exc

    # -- lifecycle -------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the sync loop to stop; ``run()`` then shuts down cleanly."""
        self._stop.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start the plugins, sync until stopped, shut down (closing the session and ``state.db``).

        Raises :class:`~bot.errors.SessionError` when storage failed while running.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._exit_hard_on_lease_loss = install_signal_handlers  # the process is this bot's
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            self.storage.keep_lease(self._lease_lost)  # PostgreSQL: renew the lease; losing it stops the bot
            self.lag_probe.start()
            self.activity.start()
            await self._start_http()
            if self.identity is not None:
                await self.identity.setup()  # never raises: problems are logged and retried from the sync loop
            await self.manager.start_all()
            self._spawn(self.verifications.serve(self.config.data_dir / CONTROL_SOCKET))  # [verification]
            if self.client.should_upload_keys:
                await self.client.keys_upload()
            if self.appservice is None:
                await self._sync_loop()
            else:
                await self._transaction_pump(self.appservice)
            if self._fatal is not None:
                if is_fenced(self._fatal):
                    raise SessionError(
                        f"stopped: {self._fatal}. Another process runs the bot now; this one wrote nothing after "
                        "losing the lease. Start it again to be the standby"
                    ) from self._fatal
                raise SessionError(
                    f"stopped: {self._fatal}. Nothing was lost: events not recorded as handled are handled at the "
                    "next start. Free disk space or fix the permissions of data_dir (or reach the database), then "
                    "start the bot again"
                ) from self._fatal
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self._shutdown()

    async def _crypto_after_sync(self) -> None:
        """Per-sync E2EE work (e.g. backing up new room keys); failures are logged, never fatal."""
        await self.trust.after_sync(self.state)  # explain withheld keys of waiting events
        if self.identity is not None:
            await self.identity.after_sync()

    async def _start_http(self) -> None:
        """Start the HTTP listener; if its port is taken, log it and keep trying in the background (the bot's
        Matrix work never waits for it)."""
        if self.http is None:
            return
        try:
            await self.http.start()
        except ListenerError as exc:
            log.error("%s; metrics, health and the status page are unavailable until it is free (retrying)", exc)
            self._spawn(self._retry_http())

    async def _retry_http(self) -> None:
        assert self.http is not None
        while True:
            await asyncio.sleep(HTTP_RETRY)
            try:
                await self.http.start()
            except ListenerError:
                continue
            return

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading plugins")
        self._spawn(self.manager.reload_all())

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_GRACE
        finished = await self.dispatcher.drain(SHUTDOWN_GRACE)
        if not finished:
            log.warning("stopping: handlers still running after %.0fs were cancelled", SHUTDOWN_GRACE)
        await self.dispatcher.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.host.unload_all(), max(0.5, deadline + 2 - time.monotonic()))
        await self.lag_probe.stop()
        await self.activity.stop()
        if self.http is not None:
            await self.http.close()
        await self.client.close()
        try:
            self.state.close()
        except Exception as exc:  # sqlite3 or psycopg
            log.error("could not close the state store %s cleanly: %s", self.state.path, exc)
        self.storage.release()  # PostgreSQL: a standby takes over at once
        log.info("stopped")

    def _spawn(self, coro) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- the sync loop ---------------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        state = self.state
        token = state.sync_token
        initial = token is None
        first = True
        failures = 0
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            # the rooms as the last run left them; without them a restart asks for every room's full state
            restored = False
            if not initial:
                try:
                    restored = self.source.restore_rooms(self._note_restored_room) is not None
                except Exception as exc:
                    if not is_storage_error(exc):
                        raise
                    self._storage_failed(exc)
                    return
            while not self._stop.is_set():
                fetch_started = time.monotonic()
                fetch = self.source.fetch(
                    token,
                    timeout_ms=0 if first else SYNC_TIMEOUT_MS,
                    full_state=True if first and not initial and not restored else None,
                )
                try:
                    batch = await self._unless_stopped(fetch, stop_wait)
                except SyncFailed as exc:
                    failures += 1
                    self.stats.sync_errors += 1
                    self.metrics.sync_failed()
                    delay = backoff_delay(failures)
                    log.warning("sync failed (%s); retrying in %.1fs", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_wait), delay)
                    continue
                except Exception as exc:
                    if not is_storage_error(exc):
                        raise
                    self._storage_failed(exc)  # the crypto store could not be written: memory and disk disagree
                    break
                if batch is None:
                    break  # stopping
                failures = 0
                self.metrics.sync_succeeded(time.monotonic() - fetch_started)
                self.stats.rooms = self.source.room_count()
                try:
                    await self._handle_sync(batch, initial=initial and first, resumed=first and not initial)
                except StateError:
                    break  # reported by _storage_failed; stop before handling anything that cannot be recorded
                await self._crypto_after_sync()
                token = batch.token
                if first:
                    first = False
                    await self._retry_pending(None)  # keys stored before a restart or crash
                    self.ready.set()
                    log.info("synced; %d rooms, handling events", self.source.room_count())
                    freeze_long_lived()
                await self.source.maintain_keys()
        finally:
            stop_wait.cancel()

    @staticmethod
    async def _unless_stopped(fetch: Awaitable[SyncBatch], stop_wait: asyncio.Future[Any]) -> SyncBatch | None:
        """What ``fetch`` returns (or raises), or None if ``stop_wait`` (the runtime is stopping) comes first: the
        fetch is then cancelled. The sync loop's and the transaction pump's wait for their next batch."""
        task = asyncio.ensure_future(fetch)
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return None
        return task.result()

    # -- appservice mode: transactions instead of the sync loop ---------------------------------------------------

    async def _transaction_pump(self, appservice: Appservice) -> None:
        """Handle the appservice's transactions one by one (the homeserver sends them so) until stopped.

        Each goes through the same steps as a sync batch (invites, routing, handled records); its id is recorded and
        the homeserver answered 200 only once every handler job of it has ended. Cut short by shutdown, it is answered
        503 and comes again: what was handled is skipped then, the rest runs with the same transaction ids.
        """
        source = appservice.source
        assert source is not None and source is self.source
        await appservice.start()
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            await self._retry_pending(None)
            self.ready.set()
            log.info("synced; appservice mode, handling transactions as %s", source.own_user_id)
            freeze_long_lived()
            while not self._stop.is_set():
                try:
                    batch = await self._unless_stopped(source.fetch(None, timeout_ms=SYNC_TIMEOUT_MS), stop_wait)
                except SyncFailed as exc:
                    self.stats.sync_errors += 1
                    self.metrics.sync_failed()
                    log.warning("could not read a transaction (%s); answered 503, the homeserver sends it again", exc)
                    continue
                if batch is None:
                    break  # stopping
                self.metrics.sync_succeeded(0.0)  # the event source is alive (quiet times bring no transactions)
                if not batch.token:
                    continue
                self.stats.rooms = source.room_count()
                try:
                    futures = await self._route_batch(batch, initial=False, resumed=False)
                except StateError:
                    source.reject(batch.token, "storage failed")
                    break
                handled = asyncio.ensure_future(asyncio.gather(*futures))
                handled.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.wait({handled, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not handled.done():  # stopping: the handlers get their grace in _shutdown, the transaction a 503
                    source.reject(batch.token, "the bot is stopping")
                    break
                outcomes = handled.result()
                if any(o.status == "cancelled" for o in outcomes) or self._fatal is not None:
                    source.reject(batch.token, "the bot is stopping")
                    continue
                try:
                    source.acknowledge(batch.token)
                except StateError:
                    break  # reported by _storage_failed
                if appservice.encrypted:  # as after a sync: withheld notes, one-time keys, key queries and claims
                    await self._crypto_after_sync()
                    await source.maintain_keys()
        finally:
            stop_wait.cancel()
            await appservice.close()

    def _invite_allowed(self, inviter: str) -> bool:
        """The invite policy for ghosts' invites: the admins and ``invites.accept_from``."""
        return inviter in self.config.admins or self.config.invites.allows(inviter)

    async def _handle_sync(self, batch: SyncBatch, *, initial: bool, resumed: bool) -> None:
        now_ms = int(time.time() * 1000)  # when the batch came (kept with its token)
        futures = await self._route_batch(batch, initial=initial, resumed=resumed)
        step = self._committer.begin((batch.token, now_ms))
        if futures:
            self._spawn(self._commit_when_done(step, futures))
        else:
            self._commit(step)

    async def _route_batch(
        self, batch: SyncBatch, *, initial: bool, resumed: bool
    ) -> list[asyncio.Future[JobOutcome]]:
        """Answer the batch's invites and route its events; returns the handler jobs started."""
        await self._handle_invites(batch)
        futures: list[asyncio.Future[JobOutcome]] = []
        if batch.room_keys:
            futures += await self._retry_pending(batch.room_keys)
        now_ms = int(time.time() * 1000)
        own_user_id = self.source.own_user_id
        # which plugin handled which of the batch's events before (a redelivery after a crash): one query, not one
        # per event and plugin
        self.state.prefetch_handled(getattr(event, "event_id", None) for room in batch.rooms for event in room.events)
        turn = TimeSlice()
        for room in batch.rooms:
            self._note_room_state(room.room_id, room.state, room.events)
            timeline = room.events
            self.metrics.events_received.inc(len(timeline))
            if (
                room.limited
                and not initial
                and room.prev_batch
                and own_join_index(timeline, own_user_id) < 0  # a new room: its past is history
            ):
                timeline = await self._backfill(room.room_id, room.prev_batch, now_ms) + list(timeline)
            events = select_events(
                timeline,
                own_user_id=own_user_id,
                initial_sync=initial,
                resumed=resumed,
                now_ms=now_ms,
                policy=self._policy,
            )
            for event in events:
                futures += await self._deliver(room.room_id, event)
                if turn.due():  # a burst of hundreds of events: let the handlers already submitted run meanwhile
                    await turn.pause()
        return futures

    def _note_restored_room(self, room_id: str, state: list[Event]) -> None:
        self._note_room_state(room_id, state, [])

    def _note_room_state(self, room_id: str, state: list[Event], events: list[Event]) -> None:
        """What the runtime keeps of a room's state besides nio's room: its creators and Megolm rotation period."""
        self._note_creators(room_id, state, events)
        self._note_encryption(room_id, state, events)

    def _note_creators(self, room_id: str, state: list[Event], events: list[Event]) -> None:
        """Room v12 creators, only from the real ``m.room.create`` (in the clear, empty state key)."""
        for event in _clear_state(state, events, "m.room.create"):
            if event.source.get("state_key") == "":
                self.api.creators[room_id] = creators_from_create_event(event.source)

    async def _commit_when_done(self, batch: int, futures: list[asyncio.Future[JobOutcome]]) -> None:
        # one after another rather than asyncio.gather: most jobs have ended by the time their turn comes, and awaiting
        # a finished future does not suspend, while gather schedules a callback for every one of them
        outcomes = [await future for future in futures]
        if any(o.status == "cancelled" for o in outcomes) or self._fatal is not None:
            return  # shutting down: leave the token where it is, the events come again
        with contextlib.suppress(StateError):  # reported by _storage_failed
            self._commit(batch)

    def _lease_lost(self, exc: Exception) -> None:
        """Called from the lease's thread: another process took over, or the lease could not be renewed.

        The bot stops as after any storage failure. A process whose event loop is stuck (waiting on a database that
        stopped answering) cannot stop itself: when this runtime is the process's own (``ratchet run``), it exits
        hard after the shutdown grace. Its writes are refused by the fence either way."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._storage_failed, exc)
        if self._exit_hard_on_lease_loss:
            timer = threading.Timer(SHUTDOWN_GRACE + LEASE_LOSS_EXIT_MARGIN, _exit_after_lease_loss)
            timer.daemon = True
            timer.start()

    def _storage_failed(self, exc: Exception) -> None:
        """state.db or the crypto store cannot be written: stop cleanly rather than handle what cannot be recorded."""
        if self._fatal is None:
            self._fatal = exc
            log.error(
                "storage failure: %s; stopping so that no event is handled twice and no key is lost", describe(exc)
            )
        self.request_stop()

    # -- Megolm rotation -----------------------------------------------------------------------------------------

    def _note_encryption(self, room_id: str, state: list[Event], events: list[Event]) -> None:
        for event in _clear_state(state, events, "m.room.encryption"):
            content = event.source.get("content")
            content = content if isinstance(content, dict) else {}
            msgs, ms = content.get("rotation_period_msgs"), content.get("rotation_period_ms")
            period = (
                max(1, msgs) if isinstance(msgs, int) and not isinstance(msgs, bool) else None,
                max(1000, ms) if isinstance(ms, int) and not isinstance(ms, bool) else None,
            )
            if self.client.olm is not None:
                self.client.olm.set_rotation_period(room_id, *period)

    def _commit(self, batch: int) -> None:
        done = self._committer.finish(batch)
        if done is not None:
            self.state.save_sync_token(*done)

    async def _backfill(self, room_id: str, prev_batch: str, now_ms: int) -> list[Event]:
        """Fetch what a limited timeline left out since the last handled batch (oldest first)."""
        last = self.state.sync_token_ms or now_ms
        stop_ms = max(last - BACKFILL_MARGIN_MS, now_ms - self._policy.max_age_ms)
        collected = await self.source.backfill(room_id, prev_batch, stop_ms, MAX_BACKFILL_PAGES)
        if collected:
            log.info("filled a timeline gap in %s with %d events", room_id, len(collected))
        return collected

    async def _deliver(self, room_id: str, event: Event) -> list[asyncio.Future[JobOutcome]]:
        if is_undecrypted(event):
            self.metrics.events_undecryptable.inc()
            await self._wait_for_key(room_id, event)
            return []
        if getattr(event, "decrypted", False):
            self.metrics.events_decrypted.inc()
        if not hasattr(event, "event_id") or not hasattr(event, "sender"):
            log.warning("skipping a malformed event in %s", room_id)
            return []
        self.stats.events_routed += 1
        return await self._route_checked(room_id, event)

    async def _route_checked(self, room_id: str, event: Event) -> list[asyncio.Future[JobOutcome]]:
        """Route ``event``; a decrypted one only once its claimed sender is proven to own the sending device.

        A decrypted event that claims to be state (it has a ``state_key``) is a forgery: state is never encrypted.
        It changed nothing in the bot's view of the room (see ``RatchetClient._handle_timeline_event``) and is not
        handed to plugins either.
        """
        if getattr(event, "decrypted", False) and is_state_shaped(event):
            log.warning("not handling %s in %s: an encrypted event claiming to be room state", event.event_id, room_id)
            return []
        check = await self.trust.check_sender(room_id, event)
        if check.owned is False:
            return []
        if check.owned is None:
            log.warning(
                "cannot check the device that sent %s yet (%s's keys could not be fetched); will retry",
                event.event_id,
                event.sender,
            )
            return [self._spawn(self._route_when_sender_known(room_id, event))]
        return self.host.router.route(room_id, event, trusted=check.trusted)

    async def _route_when_sender_known(self, room_id: str, event: Event) -> JobOutcome:
        """Route ``event`` once its sender's device keys can be fetched (bounded retries with backoff)."""
        for attempt in range(1, SENDER_CHECK_ATTEMPTS + 1):
            await asyncio.sleep(backoff_delay(attempt, base=1.0))
            check = await self.trust.check_sender(room_id, event)
            if check.owned is None:
                continue
            if check.owned is False:
                return JobOutcome("ok")
            outcomes = await asyncio.gather(*self.host.router.route(room_id, event, trusted=check.trusted))
            return JobOutcome("cancelled" if any(o.status == "cancelled" for o in outcomes) else "ok")
        log.warning("giving up on %s: the device keys of %s could not be fetched", event.event_id, event.sender)
        return JobOutcome("ok")

    # -- undecryptable events --------------------------------------------------------------------------------

    async def _wait_for_key(self, room_id: str, event: Event) -> None:
        source = dict(event.source)
        source.setdefault("room_id", room_id)
        if not self.state.add_pending(event.event_id, room_id, event.session_id, source):
            return
        self.stats.utd_total += 1
        self.stats.utd_waiting = self.state.count_pending()
        log.warning(
            "cannot decrypt %s in %s yet (session %s from %s); requested its key and will handle it when it arrives",
            event.event_id,
            room_id,
            event.session_id,
            event.sender,
        )
        await self.source.request_key(room_id, event)

    async def _retry_pending(self, session_ids: set[str] | None) -> list[asyncio.Future[JobOutcome]]:
        """Try again to decrypt waiting events (those of ``session_ids``, or all); route the ones that work."""
        futures: list[asyncio.Future[JobOutcome]] = []
        now_ms = int(time.time() * 1000)
        for pending in self.state.pending(session_ids):
            try:
                decrypted = self.source.decrypt(pending.room_id, pending.source)
            except ValueError:
                self.state.remove_pending(pending.event_id)
                continue
            if decrypted is None:
                if now_ms - pending.received_ts > self._policy.max_age_ms:
                    log.warning("giving up on %s: no key within the catch-up window", pending.event_id)
                    self.state.remove_pending(pending.event_id)
                continue
            self.stats.utd_recovered += 1
            self.metrics.events_recovered.inc()
            log.info("decrypted %s after its key arrived", pending.event_id)
            futs = await self._route_checked(pending.room_id, decrypted)
            futures += futs
            self._spawn(self._forget_pending_when_done(pending.event_id, futs))
        self.stats.utd_waiting = self.state.count_pending()
        return futures

    async def _forget_pending_when_done(self, event_id: str, futures: list[asyncio.Future[JobOutcome]]) -> None:
        outcomes = await asyncio.gather(*futures)
        if not any(o.status == "cancelled" for o in outcomes):
            self.state.remove_pending(event_id)
            self.stats.utd_waiting = self.state.count_pending()

    # -- invites ---------------------------------------------------------------------------------------------

    async def _handle_invites(self, batch: SyncBatch) -> None:
        for invite in batch.invites:
            room_id, inviter = invite.room_id, invite.inviter
            if room_id in self._invites_done:
                continue
            self._invites_done.add(room_id)
            if inviter and inviter in self.config.admins:
                refusal = None  # the admins' invites are never vetoed
            else:
                allowed = bool(inviter) and self.config.invites.allows(inviter)
                refusal = await self.api.invites.refusal(room_id, inviter, allowed) if self.api.invites else None
                if refusal is None and not allowed:
                    refusal = "not in invites.accept_from"
            if refusal is None:
                problem = await self.source.join(room_id)
                if problem is None:
                    log.info("joined %s on invite from %s", room_id, inviter)
                else:
                    log.warning("could not join %s: %s", room_id, problem)
            else:
                log.info("rejected invite to %s from %s (%s)", room_id, inviter, refusal)
                await self.source.leave(room_id)


def _clear_state(state: list[Event], events: list[Event], event_type: str) -> list[Event]:
    """The state events of ``event_type`` among ``state`` and ``events``: in the clear, with a state key."""
    return [
        event
        for event in (*state, *events)
        if event_type_of(event) == event_type and is_room_state(event)
    ]


def freeze_long_lived() -> None:
    """Take what start-up built (modules, nio's rooms and loaded sessions, plugins) out of the garbage collector's
    full collections (``gc.freeze()``).

    A full collection walks every tracked object; in a bot that has loaded its rooms and keys that is some 50 ms in
    which the event loop stands still, at a random moment (measured during a 500-message burst, issue 20). Frozen
    objects are still freed by reference counting when nothing uses them any more; only a reference cycle among them
    would be kept (the few cycles still waiting for a collection at that moment: measured in the tens of objects).
    """
    gc.freeze()


def _exit_after_lease_loss() -> None:
    log.critical("lost the database lease and could not stop within %.0f s (is the database answering?): exiting",
                 SHUTDOWN_GRACE + LEASE_LOSS_EXIT_MARGIN)
    logging.shutdown()
    os._exit(1)


async def _hold_storage(storage: Storage) -> None:
    """Wait until this process may write to ``storage`` (PostgreSQL: it holds the lease); SIGTERM or SIGINT while
    waiting ends the wait with a :class:`~bot.errors.SessionError` ("stopped while on standby")."""
    if storage.database_url is None:
        return
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    installed: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (a bot in a test task)
            pass
    try:
        await asyncio.to_thread(storage.acquire, stop)
    except LeaseLost as exc:
        raise SessionError("stopped while on standby") from exc
    except asyncio.CancelledError:
        stop.set()
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _open_identity(client: RatchetClient, config: Config, storage: Storage | None = None) -> Identity | None:
    try:
        return Identity.from_config(client, config, storage)
    except IdentityError as exc:
        log.error("cross-signing and key backup are off for this run: %s", exc)
        return None
