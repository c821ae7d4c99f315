"""Scenario 5 (issue 20, target 2): event-loop lag while the bot does heavy work.

A sampler task wakes every 5 ms on the bot's event loop and records how late it woke (what
:class:`bot.metrics.LoopLagProbe` does every 250 ms in the running bot). Each piece of work runs alone on that loop,
one after another, and the samples taken while it runs are its figures (p50, p99, max of the lateness):

* ``upload``: ``MatrixActions.send_file`` of a 100 MB file into an encrypted room (read, encrypt, upload to
  Synapse, send the event);
* ``download``: ``MatrixActions.download`` of that event's file (download from Synapse, verify, decrypt; the bytes are
  checked against the original after the measurement);
* ``restore``: ``KeyBackup.restore`` of the 50,000 room keys in the server-side backup into a new device's empty
  crypto store (what ``ratchet verify`` does after a lost store): download, decrypt every key, import into nio's store;
* ``startup``: the key work of a restarting bot whose store holds 50,000 room keys, all backed up: the backup's
  upload tracker is loaded and its first ``upload_new`` after start-up scans the stored sessions;
* ``burst``: one sync batch of 500 Megolm-encrypted ``!noop`` messages (5 rooms, from ``bench/.cache/offline-v2``)
  handled by Ratchet's runtime as the sync loop does it (nio parses and decrypts, the runtime routes, a no-op handler
  runs, exactly-once bookkeeping), no homeserver involved;
* ``idle``: one second of nothing (the sampler's floor on this machine).

The Synapse, its 500 rooms and the 50,000 backed-up keys are those of the start-up scenario
(``bench/.cache/startup-v2-500r-50000s``, built by ``bench/startup.py`` if missing), copied to a temporary directory
for each invocation, with ``max_upload_size`` raised to 200 MB. Each run is a fresh process (``python -m bench.looplag
run VARIANT``); ``before`` is the same process with the code paths this issue changed patched back to what they were
(``bench/looplag_before.py``), ``after`` is the code as it is. Runs alternate between the two, three of each in a full
run (one in the smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, PYTHON, QUICK, log, percentile, run_json, summary

INTERVAL = 0.005
MEDIA_BYTES = 100 * 1000 * 1000
BURST_ROOMS = 5  # x 100 messages per room in the offline batch = 500
ITEMS = ("idle", "upload", "download", "restore", "startup", "burst")
VARIANTS = ("before", "after")
#: Histogram bucket edges (ms) for the plot and the tables.
EDGES_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
TARGET_P99_MS = 20.0
TARGET_MAX_MS = 50.0
SCALE = (500, 50_000)


class LagSampler:
    """Wakes every ``interval`` seconds and records how late it woke; a sample belongs to every work item whose
    time window overlaps the sample's wait (so a stall at the very start or end of an item counts for it)."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        #: (wait began, woke, how late) of every sample
        self.all: list[tuple[float, float, float]] = []
        self.duration = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            woke = time.perf_counter()
            self.all.append((before, woke, max(0.0, woke - before - self.interval)))

    def window(self, t0: float, t1: float) -> list[float]:
        return [late for before, woke, late in self.all if woke >= t0 and before <= t1]

    def window_outside_gc(self, t0: float, t1: float, pauses: list[tuple[float, float]]) -> list[float]:
        """The window's samples with the time full garbage collections took during each sample's wait taken off:
        the lag the work itself caused."""
        out = []
        for before, woke, late in self.all:
            if woke >= t0 and before <= t1:
                in_gc = sum(max(0.0, min(woke, start + length) - max(before, start)) for start, length in pauses)
                out.append(max(0.0, late - in_gc))
        return out


    @contextlib.asynccontextmanager
    async def measure(self, collections: FullCollections):
        gc.collect()
        await asyncio.sleep(0.3)  # settle: whatever ran before is not this item's
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            self.duration = t1 - t0
            await asyncio.sleep(self.interval * 3)  # the sample that straddles the end
            self.samples = self.window(t0, t1)
            self.pauses = collections.window(t0, t1)
            self.outside_gc = self.window_outside_gc(t0, t1, self.pauses)


class FullCollections:
    """Records CPython's full (generation 2) garbage collections: (start, duration). A collection stops every thread,
    so it stalls the event loop wherever the work runs; the report separates those stalls from the work's own."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif info.get("generation") == 2:
            self.pauses.append((self._start, time.perf_counter() - self._start))

    def window(self, t0: float, t1: float) -> list[tuple[float, float]]:
        return [(s, d) for s, d in self.pauses if s + d >= t0 and s <= t1]


def lag_figures(lags: list[float], duration: float, pauses: list[tuple[float, float]] | None = None,
                outside_gc: list[float] | None = None) -> dict[str, Any]:
    ms = [v * 1000 for v in lags]
    hist = [0] * (len(EDGES_MS) + 1)
    for v in ms:
        i = 0
        while i < len(EDGES_MS) and v > EDGES_MS[i]:
            i += 1
        hist[i] += 1
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "duration_s": duration,
        "hist": hist,
        "gc2_n": len(pauses or []),
        "gc2_max_ms": max((d * 1000 for _, d in pauses or []), default=0.0),
        "max_outside_gc_ms": max((v * 1000 for v in outside_gc or []), default=0.0),
        "p99_outside_gc_ms": percentile([v * 1000 for v in outside_gc or []], 99),
    }


# -- set-up (in the scenario process) ----------------------------------------------------------------------------


def _server_copy(tmp: Path):
    """A Synapse on a copy of the start-up scenario's database (500 rooms, 50,000 keys in the backup)."""
    from bench.homeserver import BenchSynapse
    from bench.peers import free_port
    from bench.startup import _cache_dir, build

    rooms, sessions = SCALE
    meta = build(rooms, sessions)
    base = _cache_dir(rooms, sessions)
    shutil.copytree(base / "synapse", tmp / "synapse")
    server = BenchSynapse(tmp / "synapse", port=free_port(),
                          extra_config={"max_upload_size": "200M", "rc_login": {"address": {"per_second": 100,
                                        "burst_count": 100}, "account": {"per_second": 100, "burst_count": 100}}})
    server.start(timeout=120)
    return server, meta, base


# -- one run (a fresh process) --------------------------------------------------------------------------------------


async def _run(variant: str, homeserver: str, base: Path, meta: dict[str, Any], work: Path,
               items: list[str]) -> dict[str, Any]:
    from bench.startup import BOT_PASSWORD, PICKLE_KEY

    if variant == "before":
        from bench import looplag_before

        looplag_before.install()
    from bot.e2ee.identity import LocalSecrets
    from bot.e2ee.key_backup import KeyBackup
    from bot.matrix.actions import MatrixActions
    from bot.matrix.session import open_session
    from bot.storage.backend import SqliteStorage

    user = meta["bot"]["user_id"]
    shutil.copytree(base / "pristine", work / "data")
    secrets = LocalSecrets(work / "data" / "secrets.json", PICKLE_KEY)
    backup_key = secrets.backup_key()
    version = secrets.meta.get("backup_version")
    assert backup_key is not None and version, "the start-up cache has no key backup"
    out: dict[str, Any] = {"variant": variant, "items": {}}
    sampler = LagSampler()
    sampler.start()
    collections = FullCollections()

    async def item(name: str, work_fn) -> Any:
        async with sampler.measure(collections):
            result = await work_fn()
        out["items"][name] = lag_figures(sampler.samples, sampler.duration, sampler.pauses, sampler.outside_gc)
        fig = out["items"][name]
        log(f"looplag {variant} {name}: {sampler.duration:.2f}s, p50 {fig['p50_ms']:.1f} ms, "
            f"p99 {fig['p99_ms']:.1f} ms, max {fig['max_ms']:.1f} ms; {fig['gc2_n']} full GCs (longest "
            f"{fig['gc2_max_ms']:.0f} ms), max outside them {fig['max_outside_gc_ms']:.1f} ms")
        return result

    if "idle" in items:
        await item("idle", lambda: asyncio.sleep(1.0))

    client = await open_session(homeserver=homeserver, user_id=user, storage=SqliteStorage(work / "data"),
                                pickle_key=PICKLE_KEY, password=BOT_PASSWORD, access_token=None,
                                device_name="looplag")
    try:
        if "startup" in items:
            async def startup() -> int:
                backup = KeyBackup(client, backup_key, version, work / "data" / "key_backup.db")
                return await backup.upload_new()

            uploaded = await item("startup", startup)
            out["startup_uploaded"] = uploaded
        if "upload" in items or "download" in items:
            out.update(await _media(client, work, item, MatrixActions, items))
    finally:
        await client.close()

    if "restore" in items:
        fresh = SqliteStorage(work / "fresh")
        client2 = await open_session(homeserver=homeserver, user_id=user, storage=fresh, pickle_key=PICKLE_KEY,
                                     password=BOT_PASSWORD, access_token=None, device_name="looplag-restore")
        try:
            backup = KeyBackup(client2, backup_key, version, work / "fresh" / "key_backup.db")
            result = await item("restore", backup.restore)
            out["restore"] = {"total": result.total, "imported": result.imported, "failed": result.failed}
            # what was imported is really in the store (read back through a new store object)
            store = client2.store
            count = store.database.execute_sql("SELECT count(*) FROM megolminboundsessions").fetchone()[0]
            out["restore"]["rows"] = count
            # the start-up scenario's runs add a few keys to this backup (its pongs), so at least 50,000
            assert result.imported == result.total == count >= SCALE[1], out["restore"]
        finally:
            await client2.close()

    if "burst" in items:
        out["burst"] = await _burst(work, item)
    await sampler.stop()
    return out


async def _media(client: Any, work: Path, item: Any, actions_cls: Any, items: list[str]) -> dict[str, Any]:
    from nio import RoomCreateResponse

    resp = await client.room_create(
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    assert isinstance(resp, RoomCreateResponse), resp
    room = resp.room_id
    for _ in range(50):
        await client.sync(timeout=0, full_state=False)
        if room in client.rooms:
            break
    assert room in client.rooms, "the new room did not sync"
    path = work / "attachment.bin"
    def write() -> str:  # incompressible, written in pieces (not 100 MB of os.urandom in memory at once)
        digest = hashlib.sha256()
        with open(path, "wb") as fh:
            for size in [1 << 20] * (MEDIA_BYTES // (1 << 20)) + [MEDIA_BYTES % (1 << 20)]:
                piece = os.urandom(size)
                digest.update(piece)
                fh.write(piece)
        return digest.hexdigest()

    digest = await asyncio.to_thread(write)
    actions = actions_cls(client)
    sent: dict[str, Any] = {}
    original_send = actions.send

    async def capture(room_id: str, content: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        sent.update(content)
        return await original_send(room_id, content, *args, **kwargs)

    actions.send = capture
    await client.keys_query() if client.should_query_keys else None
    await actions.upload_limit()
    result: dict[str, Any] = {}
    gc.collect()
    await item("upload", lambda: actions.send_file(room, path, name="attachment.bin"))
    assert sent.get("file"), sent
    if "download" in items:
        data = await item("download", lambda: actions.download(sent, max_bytes=2 * MEDIA_BYTES))
        result["download_ok"] = hashlib.sha256(data).hexdigest() == digest
        assert result["download_ok"], "the downloaded file differs"
        del data
    path.unlink()
    return result


async def _burst(work: Path, item: Any) -> dict[str, Any]:
    from bench import offline

    offline.generate()
    batch = json.loads((offline.DATA / "batch.json").read_bytes())
    rooms = sorted(batch["rooms"]["join"])[:BURST_ROOMS]
    batch["rooms"]["join"] = {r: batch["rooms"]["join"][r] for r in rooms}
    batch["next_batch"] = "s1-burst"
    raw = json.dumps(batch, separators=(",", ":")).encode()
    events = sum(len(r["timeline"]["events"]) for r in batch["rooms"]["join"].values())
    ob = offline.OfflineBot(work / "burst", fast=True)
    await ob.open()
    try:
        await ob.fresh_state(0)
        before = ob.bot.stats.events_routed
        await item("burst", lambda: ob.feed(raw))
        handled = ob.bot.stats.events_routed - before
        assert handled == events, (handled, events)
        assert ob.bot.state.sync_token == "s1-burst"
    finally:
        await ob.close()
    return {"events": events, "handled": handled}


def run_variant(variant: str, homeserver: str, items: list[str]) -> dict[str, Any]:
    from bench.startup import _cache_dir

    base = _cache_dir(*SCALE)
    meta = json.loads((base / "meta.json").read_text())
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-looplag-", dir=CACHE) as tmp:
        return asyncio.run(_run(variant, homeserver, base, meta, Path(tmp), items))


# -- does a call release the GIL? ----------------------------------------------------------------------------------


def gil_check() -> dict[str, Any]:
    """For each heavy call: run it in a thread while the main thread counts in a pure-Python loop, and record the
    longest gap between the main thread's iterations. A call that releases the GIL leaves the gaps at the switch
    interval (5 ms) or below; one that holds it shows a gap as long as the call."""
    import vodozemac
    from Crypto.Cipher import AES
    from Crypto.Hash import SHA256
    from Crypto.Util import Counter
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from bot.crypto.megolm_backup import BackupKey

    big = os.urandom(32 << 20)
    key = os.urandom(32)
    backup = BackupKey.generate()
    enc = backup.encrypt_session({"algorithm": "m.megolm.v1.aes-sha2", "session_key": "x" * 300,
                                  "sender_key": "k", "sender_claimed_keys": {"ed25519": "e"}})
    group = vodozemac.GroupSession()
    plain_megolm = os.urandom(4 << 20).hex().encode()  # 8 MB of plaintext: one long Megolm encryption
    exported = vodozemac.InboundGroupSession(group.session_key).export_at(0)

    def pycryptodome_aes() -> None:
        AES.new(key, AES.MODE_CTR, counter=Counter.new(64, prefix=b"\0" * 8, initial_value=0)).encrypt(big)

    def pycryptodome_sha256() -> None:
        SHA256.new(big).digest()

    def cryptography_aes() -> None:
        c = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        c.update(big)
        c.finalize()

    def hashlib_sha256() -> None:
        hashlib.sha256(big).digest()

    def bytes_join() -> None:
        b"".join([big, big])

    def vodozemac_megolm_encrypt_8mb() -> None:
        group.encrypt(plain_megolm)

    def vodozemac_backup_decrypt_x2000() -> None:
        for _ in range(2000):
            backup.decrypt_session(enc)

    def vodozemac_session_import_x2000() -> None:
        for _ in range(2000):
            vodozemac.InboundGroupSession.import_session(exported)

    results: dict[str, Any] = {}
    for fn in (pycryptodome_aes, pycryptodome_sha256, cryptography_aes, hashlib_sha256, bytes_join,
               vodozemac_megolm_encrypt_8mb, vodozemac_backup_decrypt_x2000, vodozemac_session_import_x2000):
        t0 = time.perf_counter()
        fn()
        alone = time.perf_counter() - t0
        done = threading.Event()

        def worker(fn=fn, done=done) -> None:
            fn()
            done.set()

        th = threading.Thread(target=worker)
        gaps = []
        last = time.perf_counter()
        th.start()
        while not done.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            for _ in range(200):
                pass
        gaps.append(time.perf_counter() - last)  # the gap in which the call ended
        th.join()
        # one long call: does it let go of the GIL? (2,000 short calls in a Python loop hand it over at the 5 ms
        # switch interval whatever each call does, so there the answer is left open)
        releases = None if fn.__name__.endswith("_x2000") else max(gaps) < min(alone / 2, 0.02)
        results[fn.__name__] = {"alone_ms": alone * 1000, "longest_gap_ms": max(gaps) * 1000,
                                "releases_gil": releases}
        log(f"gil {fn.__name__}: call {alone * 1000:.1f} ms, main thread's longest gap {max(gaps) * 1000:.1f} ms")
    return results


# -- the scenario --------------------------------------------------------------------------------------------------


def _summaries(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ITEMS:
        per = [r["items"][name] for r in runs if name in r.get("items", {})]
        if not per:
            continue
        keys = ("p50_ms", "p99_ms", "max_ms", "duration_s", "gc2_n", "gc2_max_ms", "max_outside_gc_ms",
                "p99_outside_gc_ms")
        out[name] = {key: summary([p[key] for p in per if key in p]) for key in keys}
        out[name]["hist"] = [sum(p["hist"][i] for p in per) for i in range(len(EDGES_MS) + 1)]
    return out


def scenario(quick: bool = QUICK, variants: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``BENCH_LOOPLAG_VARIANTS=after`` runs one variant only (e.g. to record the code as it is before a change)."""
    if variants is None:
        env = os.environ.get("BENCH_LOOPLAG_VARIANTS")
        variants = tuple(v for v in env.split(",") if v) if env else VARIANTS
    repeats = 1 if quick else 3
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    errors: dict[str, str] = {}
    gil = run_json([PYTHON, "-m", "bench.looplag", "gil"], timeout=600)
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-looplag-hs-", dir=CACHE) as tmp:
        server, _, _ = _server_copy(Path(tmp))
        try:
            for rep in range(repeats):
                order = variants if rep % 2 == 0 else variants[::-1]
                for variant in order:
                    try:
                        res = run_json([PYTHON, "-m", "bench.looplag", "run", variant, "--homeserver", server.url],
                                       timeout=1800)
                    except Exception as exc:
                        errors[f"{variant} run {rep + 1}"] = str(exc)[-1500:]
                        log(f"looplag {variant}: {str(exc)[-300:]}")
                        continue
                    runs[variant].append(res)
        finally:
            server.stop()
    import subprocess

    root = Path(__file__).resolve().parent.parent  # "bot" is a path from the repository's root
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "bot"], capture_output=True, text=True,
                           cwd=root).stdout.strip()
    return {
        "code": {"commit": commit.stdout.strip(), "bot_changes_uncommitted": bool(dirty)},
        "params": {"interval_ms": INTERVAL * 1000, "media_bytes": MEDIA_BYTES, "restore_keys": SCALE[1],
                   "burst_events": BURST_ROOMS * 100, "repeats": repeats, "edges_ms": list(EDGES_MS),
                   "target_p99_ms": TARGET_P99_MS, "target_max_ms": TARGET_MAX_MS},
        "gil": gil,
        "runs": runs,
        "summary": {v: _summaries(r) for v, r in runs.items()},
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.looplag")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="one run of one variant against a running Synapse")
    run.add_argument("variant", choices=VARIANTS)
    run.add_argument("--homeserver", required=True)
    run.add_argument("--items", default=",".join(ITEMS))
    sub.add_parser("gil", help="which heavy calls release the GIL")
    sub.add_parser("scenario", help="the whole scenario (prints JSON)")
    serve = sub.add_parser("serve", help="start the scenario's Synapse and wait (for runs by hand)")
    serve.add_argument("--seconds", type=float, default=3600)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.cmd == "run":
        print(json.dumps(run_variant(args.variant, args.homeserver, args.items.split(",")), default=str))
    elif args.cmd == "gil":
        print(json.dumps(gil_check()))
    elif args.cmd == "scenario":
        print(json.dumps(scenario(), default=str))
    elif args.cmd == "serve":
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-looplag-hs-", dir=CACHE) as tmp:
            server, _, _ = _server_copy(Path(tmp))
            print(server.url, flush=True)
            try:
                time.sleep(args.seconds)
            finally:
                server.stop()


if __name__ == "__main__":
    sys.exit(main())
