"""Scenario 5: Ratchet on PostgreSQL against Ratchet on SQLite, same machine, same run (issue 17's bench figure,
issue 20 item 6). Two parts, each a scenario of its own (``--only pg-offline,pg-startup``):

**pg-offline: CPU per handled encrypted event.** The offline scenario's method (``bench/offline.py``: the same
cached batch of 2,000 Megolm-encrypted ``!noop`` messages in 20 rooms, the same no-op plugin, Ratchet's full pipeline
with its shipped defaults down to the handler, until every handler finished and the sync token is committed) with the
storage engine as the only variable:

* ``sqlite``: as shipped (the crypto store is nio's SQLite file through ``LazySqliteStore``, the runtime state a fresh
  ``state.db`` per pass: WAL, ``synchronous=NORMAL``); this is ``bench/offline.py``'s ``ratchet`` variant;
* ``postgresql``: ``database: postgresql://...``: the crypto store in schema ``ratchet_crypto``
  (``PostgresCryptoStore``, the same 100 sessions, device keys and account, copied from the cached SQLite store by
  ``bot.matrix.store_copy`` as ``ratchet db migrate`` copies them), the runtime state in schema ``ratchet`` (emptied
  before each pass), the lease held and renewed as ``ratchet run`` holds it, every write fenced by the lease trigger;
* ``pg-state`` (diagnostic): ``postgresql`` with nio's crypto store left in its SQLite file: the runtime state, the
  plugins' storage and the lease on PostgreSQL. ``pg-state`` / ``sqlite`` is the runtime state's share of the
  difference, ``postgresql`` / ``pg-state`` the crypto store's.

The PostgreSQL server is a throwaway cluster on this machine (``bench/pgserver.py``) with PostgreSQL's shipped
durability settings (``fsync``, ``synchronous_commit`` and ``full_page_writes`` on; read back and recorded), reached
over TCP on 127.0.0.1. Each pass records the bot process's CPU time per event (``time.process_time()``, as the offline
scenario), the server's CPU time over the same pass (the postmaster and all its children, from ``/proc``) and the wall
time. The warm-up pass (not in the figures) also counts the SQL statements both stores send (sqlite3's trace
callback; psycopg's ``Cursor.execute``), which is what explains the figures.

**pg-startup: start-up with 50,000 inbound Megolm sessions.** ``bench/startup.py``'s set-up (500 encrypted rooms on
Synapse, 50,000 sessions, every one backed up: a bot restarting in its steady state), its member sending one
encrypted ``!ping`` per run and its figure (process start to the handler running, and peak RSS then), with
``sqlite`` = the cached data dir (``startup.py``'s ``ratchet``) and ``postgresql`` = the same data dir moved to
PostgreSQL once by ``ratchet db migrate`` (into a template database; each run gets a fresh copy of it, as each
SQLite run gets a fresh copy of the data dir, and an empty ``data_dir`` for its control socket). Both run Ratchet's
defaults; ``sqlite-peer`` and ``postgresql-peer`` run both with the peers' settings (``trust: all``, no
cross-signing, no key backup), which shows what the defaults' start-up work (key backup's scan of the stored
sessions' ids, the cross-signing check) costs on each engine. The server's CPU time from the bot's start to its first
handled message is recorded too, and all of it again 6 s after the process started (``SETTLE``): work the bot does
at start-up but not on the way to its first message (key backup's scan of the stored sessions runs after the first
sync, in the background) shows there.

Both parts: at least three repetitions in full mode, each running both engines, in alternating order; ratios are
PostgreSQL / SQLite, medians with the spread of the per-repetition ratios. The machine's load average is recorded
at the start and the end (other engineers' tests share its two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    PYTHON,
    QUICK,
    ROOT,
    log,
    proc_cpu_seconds,
    proc_peak_rss_mb,
    ratio_summary,
    run_json,
    summary,
)
from bench.pgserver import BenchPostgres, describe, loadavg, server_cpu_seconds

ENGINES = ("sqlite", "postgresql")
#: pg-offline's variants: the two engines, and a diagnostic split: everything on PostgreSQL but nio's crypto store,
#: which stays the SQLite file (``postgresql`` / ``pg-state`` is the crypto store's share of the difference).
OFFLINE_VARIANTS = ("sqlite", "postgresql", "pg-state")
#: pg-startup's bots: the two engines with Ratchet's defaults, and with the peers' settings (no key backup, no
#: cross-signing, trust all): the difference is what the defaults' start-up work costs on each engine.
STARTUP_BOTS = ("sqlite", "postgresql", "sqlite-peer", "postgresql-peer")
#: Seconds after the process's start at which pg-startup takes its second reading (the work after the first message).
SETTLE = 6.0
TEMPLATE_OFFLINE = "bench_offline_template"
TEMPLATE_STARTUP = "bench_startup_template"


def _provenance(start: dict[str, Any] | None = None) -> dict[str, Any]:
    """The commit measured, and the files of bot/ with uncommitted changes (the tree is shared while the bench runs).
    Called at a scenario's start, then at its end with the start's record: the commits of both are kept, and every
    file that had changes at either time."""
    import subprocess

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return proc.stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "bot").splitlines() if line.strip()]
    out = {"finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git("rev-parse", "--short", "HEAD").strip(),
           "bot_uncommitted": dirty}
    if start is not None:
        out["bot_uncommitted"] = list(dict.fromkeys(start["bot_uncommitted"] + dirty))
        if start["commit"] != out["commit"]:
            out["commit"] = f"{start['commit']} (at the start; {out['commit']} at the end)"
    return out


# ============================================================================================ per event, offline


def _counting_statements() -> tuple[Counter, Any]:
    """Count the SQL statements psycopg sends (every PostgreSQL connection of the process); returns the counter and
    a function that stops counting."""
    import psycopg

    counts: Counter = Counter()
    original_execute = psycopg.Cursor.execute
    original_many = psycopg.Cursor.executemany

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        counts[_kind(query)] += 1
        return original_execute(self, query, *args, **kwargs)

    def executemany(self: Any, query: Any, params_seq: Any, *args: Any, **kwargs: Any) -> Any:
        rows = list(params_seq)
        counts[_kind(query)] += len(rows)
        return original_many(self, query, rows, *args, **kwargs)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    psycopg.Cursor.executemany = executemany  # type: ignore[method-assign]

    def stop() -> None:
        psycopg.Cursor.execute = original_execute  # type: ignore[method-assign]
        psycopg.Cursor.executemany = original_many  # type: ignore[method-assign]

    return counts, stop


def _kind(query: Any) -> str:
    text = query.decode() if isinstance(query, bytes) else str(getattr(query, "_obj", query))
    if not isinstance(text, str):
        text = str(text)
    word = text.lstrip().split(None, 1)[0].upper() if text.strip() else "?"
    return word if word in ("SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK", "SET") else "other"


async def _run_offline(engine: str, passes: int, work: Path, url: str | None, postmaster: int | None) -> dict:
    """One variant in this process: a warm-up pass and ``passes - 1`` measured ones (see the module docstring)."""
    pg_crypto = engine == "postgresql"
    from bench.offline import BOT_USER, DATA, N_ROOMS, PER_ROOM, OfflineBot, _batches

    class EngineBot(OfflineBot):
        """``bench.offline.OfflineBot`` (defaults) on the engine asked for."""

        def __init__(self) -> None:
            super().__init__(work, fast=True)
            self.storage: Any = None
            self.lost: list[Exception] = []

        def config_text(self) -> str:
            return super().config_text() + (f"database: '{url}'\n" if url else "")

        async def open(self) -> None:
            if url is None:
                await super().open()
                return
            if not pg_crypto:  # pg-state: nio's SQLite crypto store (as on SQLite), everything else on PostgreSQL
                from bot.storage.backend import open_storage

                await super().open()
                self.storage = open_storage(self.cfg)
                self.storage.acquire()
                self.storage.keep_lease(self.lost.append)
                return
            from nio import SyncResponse

            from bench.offline import BOT_DEVICE, HOMESERVER, PICKLE_KEY
            from bot.config import parse_config
            from bot.matrix.client import make_client
            from bot.matrix.session import crypto_store_class
            from bot.storage.backend import open_storage

            cfg = parse_config(self.config_text())
            storage = open_storage(cfg)  # PostgresStorage, as Runtime.open makes it
            storage.acquire()
            storage.keep_lease(self.lost.append)  # renewed on its own thread, as `ratchet run` does
            client = make_client(HOMESERVER, BOT_USER, storage.crypto_path, PICKLE_KEY, BOT_DEVICE,
                                 store=crypto_store_class(storage))
            client.restore_login(BOT_USER, BOT_DEVICE, "unused-token")
            self.cfg, self.client, self.storage, self.bot = cfg, client, storage, None
            await client.receive_response(SyncResponse.from_dict(json.loads((DATA / "warm.json").read_bytes())))

        async def fresh_state(self, k: int) -> None:
            if url is None:
                await super().fresh_state(k)
                return
            from nio import KeysQueryResponse

            from bot.runtime.runtime import Runtime
            from bot.storage.pg_connection import STATE_SCHEMA, connect

            if self.bot is not None:
                await self.bot.host.unload_all()
                await self.bot.dispatcher.close()
                self.bot.state.close()
            # a fresh state (as the SQLite variant's new state.db): nothing handled, no token, no pins
            with connect(url, schema=STATE_SCHEMA, settings=self.storage.connection_settings) as conn:
                conn.execute("TRUNCATE handled, kv, pending_utd")
            self.bot = bot = Runtime(self.cfg, self.client, self.storage)
            await bot.manager.start_all()
            assert "benchnoop" in bot.host.plugins and not bot.host.errors, bot.host.errors
            body = json.loads((DATA / "keys_query.json").read_bytes())
            resp = KeysQueryResponse.from_dict(body)
            resp.ratchet_body = body
            await self.client.receive_response(resp)
            assert not self.client.olm.users_for_key_query & set(body["device_keys"]), "senders still outdated"

        async def close(self) -> None:
            await super().close()
            if self.storage is not None:
                self.storage.release()

    def server() -> float:
        return server_cpu_seconds(postmaster) if postmaster else 0.0

    ob = EngineBot()
    await ob.open()
    bot_us: list[float] = []
    server_us: list[float] = []
    wall_us: list[float] = []
    statements: dict[str, int] = {}
    for k, raw in enumerate(_batches(passes)):
        await ob.fresh_state(k)
        before = ob.bot.stats.events_routed
        counting = k == 0  # the warm-up pass (not in the figures) counts the statements
        if counting:
            if url is None:
                counts: Counter = Counter()
                for db in (ob.bot.state._db, ob.client.store.database.connection()):
                    db.set_trace_callback(lambda sql, counts=counts: counts.update([_kind(sql)]))
                stop = None
            else:
                counts, stop = _counting_statements()
        gc.collect()
        s0 = server()
        w0 = time.perf_counter()
        t0 = time.process_time()
        await ob.feed(raw)
        elapsed = time.process_time() - t0
        wall = time.perf_counter() - w0
        s1 = server()
        handled = ob.bot.stats.events_routed - before
        if counting:
            if url is None:
                for db in (ob.bot.state._db, ob.client.store.database.connection()):
                    db.set_trace_callback(None)
            elif stop is not None:
                stop()
            statements = {key: round(v / handled, 3) for key, v in sorted(counts.items())}
        rows = ob.bot.state._db.execute("SELECT count(*) FROM handled WHERE plugin = 'benchnoop'").fetchone()[0]
        assert handled == N_ROOMS * PER_ROOM and rows == handled, (handled, rows)
        assert ob.bot.state.sync_token == f"s1-{k}", ob.bot.state.sync_token
        assert not ob.lost, ob.lost
        bot_us.append(elapsed / handled * 1e6)
        server_us.append((s1 - s0) / handled * 1e6)
        wall_us.append(wall / handled * 1e6)
    store_class = type(ob.client.store).__name__
    if url is None:
        from bot.storage.state import StateStore

        probe_state = StateStore.open(work / "probe.db")
    else:
        probe_state = ob.storage.open_state()  # fenced by the lease, as the runtime's
    probe = _storage_probe(probe_state, server, plain_url=url if engine == "postgresql" else None)
    probe_state.close()
    await ob.close()
    return {
        "engine": engine,
        "bot_us": bot_us[1:],
        "server_us": server_us[1:],
        "total_us": [b + s for b, s in zip(bot_us[1:], server_us[1:], strict=True)],
        "wall_us": wall_us[1:],
        "warmup": {"bot_us": bot_us[0], "server_us": server_us[0], "wall_us": wall_us[0]},
        "statements_per_event": statements,
        "events": N_ROOMS * PER_ROOM,
        "crypto_store": store_class,
        "probe": probe,
    }


#: Calls per probe (each of mark_handled and is_handled).
PROBE_CALLS = 2000


def _storage_probe(state: Any, server: Any, *, plain_url: str | None, n: int = PROBE_CALLS) -> dict[str, Any]:
    """The runtime's two per-event storage calls alone, ``n`` of each on ``state`` (a ``StateStore``): bot CPU,
    server CPU and wall time per call, in µs. With ``plain_url`` (PostgreSQL) also the same INSERT through the same
    connection class into a copy of the ``handled`` table (same key and index) without the lease's fence trigger (the
    trigger's cost is the difference)."""

    def timed(fn: Any) -> dict[str, float]:
        gc.collect()
        s0 = server()
        w0 = time.perf_counter()
        t0 = time.process_time()
        for i in range(n):
            fn(i)
        cpu = time.process_time() - t0
        wall = time.perf_counter() - w0
        return {"bot_us": cpu / n * 1e6, "server_us": (server() - s0) / n * 1e6, "wall_us": wall / n * 1e6}

    out = {
        "mark_handled": timed(lambda i: state.mark_handled(f"$probe{i}", "benchnoop")),
        "is_handled": timed(lambda i: state.is_handled(f"$probe{i}", "benchnoop")),
    }
    if plain_url:
        from bot.storage.pg_connection import SqlConnection, connect

        conn = SqlConnection(connect(plain_url))
        # the state's table with its keys and indexes (LIKE copies no triggers): the fence is the only difference
        conn.execute("CREATE TABLE public.handled_probe (LIKE ratchet.handled INCLUDING ALL)")
        out["insert_unfenced"] = timed(lambda i: conn.execute(
            "INSERT INTO public.handled_probe (event_id, plugin, ts) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (f"$probe{i}", "benchnoop", i)))
        conn.close()
    return out


def _offline_template(pg: BenchPostgres) -> dict[str, Any]:
    """The PostgreSQL twin of the offline scenario's cached crypto store, in a template database."""
    from bench.offline import BOT_DEVICE, BOT_USER, DATA, PICKLE_KEY
    from bot.matrix.store_copy import copy_crypto_store
    from bot.storage.postgres import PostgresStorage

    url = pg.create_database(TEMPLATE_OFFLINE)
    storage = PostgresStorage(url, pickle_key=PICKLE_KEY)
    storage.prepare()
    assert storage.lease.try_acquire()
    try:
        copies = copy_crypto_store(DATA / "store" / f"{BOT_USER}_{BOT_DEVICE}.db", url, storage.connection_settings)
        storage.fence()
    finally:
        storage.release()
    return {c.table: c.copied for c in copies if c.copied}


def offline_scenario(quick: bool = QUICK) -> dict[str, Any]:
    """CPU per handled event, SQLite vs PostgreSQL, alternating processes (see the module docstring)."""
    from bench.offline import generate

    meta = generate()
    started = _provenance()
    procs = 1 if quick else 4
    passes = 3 if quick else 4
    load_start = loadavg()
    samples: dict[str, dict[str, list[float]]] = {
        e: {"bot_us": [], "server_us": [], "total_us": [], "wall_us": []} for e in OFFLINE_VARIANTS
    }
    extras: dict[str, Any] = {}
    probes: dict[str, list[dict[str, Any]]] = {e: [] for e in OFFLINE_VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-pg-") as tmp, BenchPostgres(Path(tmp) / "pg") as pg:
        settings = pg.settings()
        if settings["fsync"] != "on":
            raise RuntimeError(f"the bench's PostgreSQL must run with fsync on: {describe(settings)}")
        copied = _offline_template(pg)
        for rep in range(procs):
            order = OFFLINE_VARIANTS if rep % 2 == 0 else OFFLINE_VARIANTS[::-1]
            for engine in order:
                args = [PYTHON, "-m", "bench.postgres", "run-offline", engine, "--passes", str(passes)]
                if engine != "sqlite":
                    url = pg.clone_database(TEMPLATE_OFFLINE, f"bench_offline_{rep}")
                    args += ["--url", url, "--postmaster", str(pg.postmaster_pid)]
                res = run_json(args, timeout=600)
                if engine != "sqlite":
                    pg.drop_database(f"bench_offline_{rep}")
                for key in samples[engine]:
                    samples[engine][key].extend(res[key])
                probes[engine].append(res.pop("probe"))
                extras[engine] = {k: v for k, v in res.items() if k not in samples[engine]}
                log(f"pg-offline {engine}: bot {', '.join(f'{v:.0f}' for v in res['bot_us'])} µs/event, server "
                    f"{', '.join(f'{v:.0f}' for v in res['server_us'])} µs/event")
    load_end = loadavg()
    s, p, h = samples["sqlite"], samples["postgresql"], samples["pg-state"]
    return {
        **_provenance(started),
        "meta": meta,
        "passes": passes - 1,
        "processes": procs,
        "postgres": settings,
        "template_rows": copied,
        "probe_us": {e: {call: {k: summary([p[call][k] for p in probes[e]]) for k in probes[e][0][call]}
                         for call in probes[e][0]} for e in ("sqlite", "postgresql") if probes[e]},
        "loadavg": {"start": load_start, "end": load_end},
        "samples": samples,
        "extras": extras,
        "us_per_event": {e: {k: summary(v) for k, v in samples[e].items()} for e in OFFLINE_VARIANTS},
        "ratios": {
            "bot CPU postgresql/sqlite": ratio_summary(p["bot_us"], s["bot_us"]),
            "bot+server CPU postgresql/sqlite": ratio_summary(p["total_us"], s["total_us"]),
            "wall postgresql/sqlite": ratio_summary(p["wall_us"], s["wall_us"]),
            "bot CPU pg-state/sqlite": ratio_summary(h["bot_us"], s["bot_us"]),
            "bot+server CPU pg-state/sqlite": ratio_summary(h["total_us"], s["total_us"]),
            "bot CPU postgresql/pg-state": ratio_summary(p["bot_us"], h["bot_us"]),
            "bot+server CPU postgresql/pg-state": ratio_summary(p["total_us"], h["total_us"]),
        },
    }


# ============================================================================================ start-up, 50,000 sessions


def _stored_sessions(crypto_dir: Path) -> int:
    """How many inbound Megolm sessions the SQLite crypto store in ``crypto_dir`` holds (the injected ones, and the
    bot's own from the runs that made the data dir)."""
    import sqlite3

    (path,) = crypto_dir.glob("*.db")
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM megolminboundsessions").fetchone()[0]
    finally:
        db.close()


def _startup_template(pg: BenchPostgres, base: Path, meta: dict[str, Any], work: Path, server_url: str) -> dict:
    """``ratchet db migrate`` of the cached data dir into the template database (once per scenario run)."""
    import subprocess

    from bench.peers import ratchet_config
    from bench.startup import BOT_PASSWORD

    source = work / "source"
    shutil.copytree(base / "pristine", source)
    expected = _stored_sessions(source / "crypto")
    url = pg.create_database(TEMPLATE_STARTUP)
    cfg = ratchet_config(work / "migrate.yaml", homeserver=server_url, user_id=meta["bot"]["user_id"],
                         password=BOT_PASSWORD, data_dir=source, plugins={"benchping": {}})
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "bot", "db", "migrate", "-c", str(cfg), "--from", str(source), "--to", url],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ratchet db migrate exited {proc.returncode}: {proc.stderr[-2000:]}")
    shutil.rmtree(source, ignore_errors=True)
    sessions = int(pg.psql(TEMPLATE_STARTUP, "SELECT count(*) FROM ratchet_crypto.megolminboundsessions"))
    uploaded = int(pg.psql(TEMPLATE_STARTUP, "SELECT count(*) FROM ratchet.uploaded"))
    if sessions != expected:
        raise RuntimeError(f"the migrated store holds {sessions} sessions, not {expected}")
    return {"migrate_s": round(took, 1), "sessions": sessions, "backed_up": uploaded,
            "database_mb": round(pg.database_size_mb(TEMPLATE_STARTUP), 1),
            "sqlite_data_dir_mb": round(sum(f.stat().st_size for f in (base / "pristine").rglob("*") if f.is_file())
                                      / 2**20, 1)}


def _startup_run(engine: str, rep: int, base: Path, server: Any, meta: dict[str, Any], work: Path,
                 pg: BenchPostgres) -> dict[str, Any]:
    from bench.peers import BotSetup, ratchet_config
    from bench.startup import BOT_PASSWORD, BOT_TIMEOUT, _prepare_run, _send_ping

    on_sqlite = engine.startswith("sqlite")
    if on_sqlite:  # startup.py's Ratchet (defaults) or Ratchet (peers' settings), as it runs them
        setup = _prepare_run("ratchet" if engine == "sqlite" else "ratchet-peer", base, work, server, meta)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        url = pg.clone_database(TEMPLATE_STARTUP, f"bench_startup_{rep}")
        cfg = ratchet_config(work / "config.yaml", homeserver=server.url, user_id=meta["bot"]["user_id"],
                             password=BOT_PASSWORD, data_dir=work / "data", plugins={"benchping": {}}, database=url,
                             peer_settings=engine.endswith("-peer"))
        setup = BotSetup(engine, [sys.executable, "-m", "bot", "run", "-c", str(cfg)], work)
    _send_ping(server, base, meta)
    mark = work / "mark.txt"
    s0 = server_cpu_seconds(pg.postmaster_pid)
    t0 = time.time()
    run = setup.start(work / "bot.log", mark_file=mark)
    try:
        deadline = time.monotonic() + BOT_TIMEOUT
        while not (mark.exists() and mark.read_text().strip()):
            if not run.alive():
                raise RuntimeError(f"{engine} exited with {run.proc.returncode}: {run.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{engine} handled nothing within {BOT_TIMEOUT:.0f}s: {run.log_tail()}")
            time.sleep(0.005)
        rss = proc_peak_rss_mb(run.proc.pid)
        cpu = proc_cpu_seconds(run.proc.pid)
        server_cpu = server_cpu_seconds(pg.postmaster_pid) - s0
        first = float(mark.read_text().split()[0])
        # the start-up work that is not on the way to the first message (key backup's scan of the stored sessions):
        # the same figures SETTLE seconds after the process started
        time.sleep(max(0.0, t0 + SETTLE - time.time()))
        if not run.alive():
            raise RuntimeError(f"{engine} exited with {run.proc.returncode}: {run.log_tail()}")
        settled = {"settled_peak_rss_mb": proc_peak_rss_mb(run.proc.pid),
                   "settled_cpu_s": proc_cpu_seconds(run.proc.pid),
                   "settled_server_cpu_s": server_cpu_seconds(pg.postmaster_pid) - s0}
        if on_sqlite:  # the server idles meanwhile: recorded for reference, not the bot's cost
            return {"startup_s": first - t0, "peak_rss_mb": rss, "cpu_s": cpu, "server_cpu_s": 0.0,
                    "total_cpu_s": cpu, "idle_server_cpu_s": server_cpu, **settled,
                    "idle_settled_server_cpu_s": settled["settled_server_cpu_s"], "settled_server_cpu_s": 0.0,
                    "settled_total_cpu_s": settled["settled_cpu_s"]}
        return {"startup_s": first - t0, "peak_rss_mb": rss, "cpu_s": cpu, "server_cpu_s": server_cpu,
                "total_cpu_s": cpu + server_cpu, **settled,
                "settled_total_cpu_s": settled["settled_cpu_s"] + settled["settled_server_cpu_s"]}
    finally:
        run.stop()
        if not on_sqlite:
            pg.drop_database(f"bench_startup_{rep}")


def startup_scenario(quick: bool = QUICK) -> dict[str, Any]:
    """Start-up with 50,000 sessions (quick: 5,000), SQLite vs PostgreSQL (see the module docstring)."""
    from bench import startup

    rooms, sessions = (50, 5_000) if quick else (500, 50_000)
    repeats = 1 if quick else 4
    meta = startup.build(rooms, sessions)
    base = startup._cache_dir(rooms, sessions)
    started = _provenance()
    load_start = loadavg()
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in STARTUP_BOTS}
    errors: dict[str, str] = {}
    server = startup._server(base, measuring=True)  # its sync response cache off, as in bench/startup.py
    try:
        startup._warm_synapse(server, base, meta)
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-pgstart-", dir=CACHE) as tmp, \
                BenchPostgres(Path(tmp) / "pg") as pg:
            settings = pg.settings()
            if settings["fsync"] != "on":
                raise RuntimeError(f"the bench's PostgreSQL must run with fsync on: {describe(settings)}")
            template = _startup_template(pg, base, meta, Path(tmp) / "migrate", server.url)
            log(f"pg-startup: migrated {template['sessions']:,} sessions in {template['migrate_s']} s "
                f"({template['database_mb']} MiB in PostgreSQL)")
            for rep in range(repeats):
                order = STARTUP_BOTS if rep % 2 == 0 else STARTUP_BOTS[::-1]
                for engine in order:
                    try:
                        res = _startup_run(engine, rep, base, server, meta, Path(tmp) / engine, pg)
                    except Exception as exc:
                        errors[engine] = str(exc)[:1500]
                        log(f"pg-startup {engine}: {str(exc)[:300]}")
                        continue
                    runs[engine].append(res)
                    log(f"pg-startup {rooms} rooms/{meta['sessions']} sessions {engine}: {res['startup_s']:.2f}s, "
                        f"peak RSS {res['peak_rss_mb']:.0f} MiB, CPU bot {res['cpu_s']:.2f}s server "
                        f"{res['server_cpu_s']:.2f}s; at {SETTLE:g} s: peak RSS {res['settled_peak_rss_mb']:.0f} MiB, "
                        f"CPU bot {res['settled_cpu_s']:.2f}s server {res['settled_server_cpu_s']:.2f}s")
    finally:
        server.stop()
    load_end = loadavg()

    def col(engine: str, key: str) -> list[float]:
        return [r[key] for r in runs[engine]]

    keys = ("startup_s", "peak_rss_mb", "cpu_s", "server_cpu_s", "total_cpu_s", "settled_peak_rss_mb",
            "settled_cpu_s", "settled_server_cpu_s", "settled_total_cpu_s")

    def ratio(a: str, b: str, key: str) -> dict[str, float]:
        return ratio_summary(col(a, key), col(b, key))

    return {
        **_provenance(started),
        "rooms": rooms,
        "sessions": meta["sessions"],
        "repeats": repeats,
        "settle_s": SETTLE,
        "postgres": settings,
        "template": template,
        "loadavg": {"start": load_start, "end": load_end},
        "errors": errors,
        "runs": runs,
        **{key: {e: summary(col(e, key)) for e in STARTUP_BOTS} for key in keys},
        "ratios": {
            "startup postgresql/sqlite": ratio("postgresql", "sqlite", "startup_s"),
            "peak RSS postgresql/sqlite": ratio("postgresql", "sqlite", "peak_rss_mb"),
            "bot CPU postgresql/sqlite": ratio("postgresql", "sqlite", "cpu_s"),
            "bot+server CPU postgresql/sqlite": ratio("postgresql", "sqlite", "total_cpu_s"),
            "settled peak RSS postgresql/sqlite": ratio("postgresql", "sqlite", "settled_peak_rss_mb"),
            "settled bot CPU postgresql/sqlite": ratio("postgresql", "sqlite", "settled_cpu_s"),
            "settled bot+server CPU postgresql/sqlite": ratio("postgresql", "sqlite", "settled_total_cpu_s"),
            "startup postgresql-peer/sqlite-peer": ratio("postgresql-peer", "sqlite-peer", "startup_s"),
            "peak RSS postgresql-peer/sqlite-peer": ratio("postgresql-peer", "sqlite-peer", "peak_rss_mb"),
            "bot+server CPU postgresql-peer/sqlite-peer": ratio("postgresql-peer", "sqlite-peer", "total_cpu_s"),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run-offline", help="one engine of pg-offline in this process; prints its JSON result")
    run.add_argument("engine", choices=OFFLINE_VARIANTS)
    run.add_argument("--passes", type=int, default=4, help="passes including the warm-up pass")
    run.add_argument("--url", help="the PostgreSQL database (a copy of the template; postgresql only)")
    run.add_argument("--postmaster", type=int, help="the server's postmaster pid (its CPU time is counted)")
    sub.add_parser("offline", help="the whole pg-offline scenario")
    sub.add_parser("startup", help="the whole pg-startup scenario")
    args = parser.parse_args(argv)
    if args.cmd == "run-offline":
        if (args.engine != "sqlite") != bool(args.url):
            parser.error("--url is for (and required by) the PostgreSQL variants")
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as tmp:
            result = asyncio.run(_run_offline(args.engine, args.passes, Path(tmp), args.url, args.postmaster))
        print(json.dumps(result))
    elif args.cmd == "offline":
        print(json.dumps(offline_scenario(), default=str))
    else:
        print(json.dumps(startup_scenario(), default=str))


if __name__ == "__main__":
    sys.exit(main())
