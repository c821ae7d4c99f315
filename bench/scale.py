"""Scenario "scale" (issue 20, target 4, "ten times the rooms"): one bot account joined to 2,000 encrypted rooms.

The set-up, built once and cached in ``bench/.cache/scale-v1-<rooms>r/`` (a pristine Synapse directory and
``meta.json``):

* a bot account, a busy-room member (``scaleping``), an admin (deletes devices between runs) and
  :data:`MEMBERS` ordinary member accounts;
* R encrypted rooms (``m.room.encryption`` in the initial state, preset ``private_chat``, a name). Room i is created
  by member ``i % MEMBERS``, who invites the bot and member ``(i + 1) % MEMBERS``; both join, so every room has the
  bot and two human members. The creator then sends one Megolm-encrypted message whose key nobody else ever gets (a
  fresh device sees history it cannot decrypt, as in real rooms). Room 0 is the busy room: ``scaleping`` is in it too;
* before any room exists, one Ratchet run with the shipped defaults bootstraps the account's cross-signing keys,
  secret storage and key backup version; its ``secrets.json`` is kept. Every measured Ratchet run gets a copy of it
  in an otherwise empty data dir: a fresh login that holds the account's keys (it signs its new device and backs up
  its keys), so every Ratchet run does the same work, not the bootstrap once and the "foreign keys" path after.

Fairness: the three bots use **the same account** (same rooms, same state, same server-side work), each run with a
**fresh login** (a new device, no sync token, empty stores): Ratchet (shipped defaults: ``log_level: INFO``, tofu
trust, cross-signing, key backup; plugin ``benchping``) logs in itself, the bare-nio echo bot
(``bench/bots/nio_echo.py``) too, maubot (standalone, ``ignore_initial_sync: true`` as its sample config) gets a
token from a password login made just before its process starts. After each run all the account's devices are
deleted (admin API), so no bot inherits another's device list. Each scenario invocation copies the pristine Synapse
directory and starts it once; a warm-up initial sync (a throwaway device) comes before the first measured run.

Per run (the bot's process start is t0):

* **first sync**: t0 → the bot's first sync handled. Ratchet: its ``synced; N rooms`` log line (INFO, printed once
  the first batch is handled), seen by polling the log every 10 ms; nio: a response callback on the first
  ``SyncResponse`` (nio runs response callbacks after its own handling and the event callbacks) writes the time to
  ``BENCH_SYNC_MARK_FILE``; maubot: a ``SYNC_SUCCESSFUL`` handler (with ``ignore_initial_sync`` maubot never handles
  the initial sync, so that is when it is done with it). A fresh login: an initial sync without a token;
* **first handled message**: right after the first sync, the busy-room member queries the bot's devices and pings
  (3 s per try, new Megolm session when the device list changed) until the bot answers: t0 → the bot's handler ran
  (``BENCH_MARK_FILE``);
* **RSS at rest**: VmRSS 10 s after that; **peak RSS**: VmHWM then (it includes the initial sync), and at the end
  of the run;
* **CPU per idle sync**: Synapse's access log (``synapse.access.http`` at INFO, this scenario only) names each
  finished ``GET …/sync`` of the bot's user. The window starts 1 s after one of them finished and ends 1 s after the
  :data:`IDLE_SYNCS`-th next one finished, so it holds the handling of exactly that many syncs; bot CPU (the run time
  of all its threads, ``/proc/PID/task/*/schedstat``, ns resolution) over the window / the syncs. Nothing is sent
  meanwhile;
* **round trip**: :data:`PINGS` encrypted ``!ping`` → ``pong`` in the busy room, one after the other (at the member,
  :class:`bench.member.BenchMember`), p50/p99;
* from the access log too: Synapse's time for the bot's initial sync and the bytes it sent (the filters differ:
  Ratchet's initial sync asks for no timeline, ``bot.matrix.sync.INITIAL_SYNC_FILTER``; maubot for 50 events per
  room, nio for none, i.e. Synapse's 10).

Three runs of each bot (one in quick mode), interleaved, the order reversed each repetition. 10,000 rooms are measured
if their set-up is cached (``python -m bench.scale build 10000`` builds it however long it takes), or if the measured
room creation rate builds them in :data:`MAX_BUILD_S` (otherwise the result says why); quick mode uses 200 rooms.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    QUICK,
    log,
    percentile,
    proc_cpu_seconds,
    proc_peak_rss_mb,
    ratio_summary,
    summary,
)
from bench.homeserver import BenchSynapse
from bench.member import BenchMember
from bench.peers import LABELS, BotSetup, free_port, prepare_bot, ratchet_config

BOTS = ("ratchet", "nio", "maubot")
MEMBERS = 10
BOT = "scalebot"
BOT_PASSWORD = "scalebot-password-123"
PING = "scaleping"
PING_PASSWORD = "scaleping-password-123"
ADMIN = "scaleadmin"
MEMBER_PASSWORD = "scalemember-password-123"
#: Give up on building (or on measuring) a scale whose set-up would take longer than this.
MAX_BUILD_S = 25 * 60
PINGS = 50
IDLE_SYNCS = 2
REST_S = 10.0
HTTP_TIMEOUT = 900.0
SYNC_LINE = re.compile(r"\{(?P<who>[^}]*)\} Processed request: (?P<secs>[\d.]+)sec/.*? (?P<bytes>\d+)B (?P<code>\S+) "
                       r'"GET (?P<path>/_matrix/client/(?:v3|r0)/sync\S*)')


class ScaleSynapse(BenchSynapse):
    """BenchSynapse plus its access log (one INFO line per finished request): the /sync requests are counted."""

    def _log_config(self) -> dict[str, Any]:
        config = super()._log_config()
        config["loggers"]["synapse.access.http"] = {"level": "INFO"}
        return config


def _cache_dir(rooms: int) -> Path:
    return CACHE / f"scale-v1-{rooms}r"


def _server(base: Path) -> ScaleSynapse:
    server = ScaleSynapse(base, port=free_port())
    server.start(timeout=180)
    return server


def _http(server: BenchSynapse, method: str, path: str, token: str | None, body: Any = None,
          timeout: float = HTTP_TIMEOUT) -> dict[str, Any]:
    """One JSON request with a long timeout (an initial sync of thousands of rooms takes minutes)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else {}


def _login(server: BenchSynapse, user: str, password: str, device_name: str) -> dict[str, Any]:
    return _http(server, "POST", "/_matrix/client/v3/login", None, {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password,
        "initial_device_display_name": device_name,
    })


def _delete_devices(server: BenchSynapse, admin_token: str, user_id: str) -> int:
    """Delete every device of ``user_id`` (admin API); returns how many there were."""
    uid = urllib.parse.quote(user_id)
    devices = _http(server, "GET", f"/_synapse/admin/v2/users/{uid}/devices", admin_token).get("devices", [])
    ids = [d["device_id"] for d in devices]
    if ids:
        _http(server, "POST", f"/_synapse/admin/v2/users/{uid}/delete_devices", admin_token, {"devices": ids})
    return len(ids)


# -- the set-up ------------------------------------------------------------------------------------------------


def _bootstrap_ratchet(server: BenchSynapse, work: Path, user_id: str) -> Path:
    """Run Ratchet (shipped defaults) on the bot account until its cross-signing keys and key backup exist; returns
    its ``secrets.json``."""
    cfg = ratchet_config(work / "config.yaml", homeserver=server.url, user_id=user_id, password=BOT_PASSWORD,
                         data_dir=work / "data", plugins={"benchping": {}}, log_level="INFO")
    setup = BotSetup("ratchet", [sys.executable, "-m", "bot", "run", "-c", str(cfg)], work)
    logfile = work / "bootstrap.log"
    run = setup.start(logfile)
    deadline = time.monotonic() + 180
    try:
        while True:
            text = logfile.read_text(errors="replace") if logfile.exists() else ""
            if "synced;" in text and "created key backup version" in text:
                break
            if not run.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"Ratchet's bootstrap run did not finish: {run.log_tail()}")
            time.sleep(0.2)
        time.sleep(2)
    finally:
        run.stop()
    secrets = work / "data" / "secrets.json"
    if not secrets.exists():
        raise RuntimeError(f"no {secrets} after Ratchet's bootstrap run")
    return secrets


def _encrypted_junk(member: Any, session: Any, room_id: str) -> dict[str, Any]:
    plaintext = json.dumps({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hello"},
                            "room_id": room_id})
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": member["curve25519"],
        "ciphertext": session.encrypt(plaintext.encode()).to_base64(),
        "session_id": session.session_id,
        "device_id": member["device_id"],
    }


def _create_rooms(server: BenchSynapse, members: list[dict[str, Any]], bot: Any, ping: Any, start: int,
                  count: int) -> list[str]:
    """Rooms ``start`` .. ``start + count - 1``: created by a member, the bot and a second member invited and
    joined, one undecryptable message; 4 at a time."""
    import threading

    import vodozemac

    sessions: dict[int, Any] = {}
    lock = threading.Lock()

    def one(i: int) -> str:
        creator = members[i % MEMBERS]
        other = members[(i + 1) % MEMBERS]
        invite = [bot.user_id, other["user_id"]] + ([ping.user_id] if i == 0 else [])
        body = {
            "preset": "private_chat",
            "name": f"Room {i}",
            "invite": invite,
            "initial_state": [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ],
        }
        room_id = server.admin_request("POST", "/_matrix/client/v3/createRoom", creator["token"], body)["room_id"]
        quoted = urllib.parse.quote(room_id)
        for token in [bot.access_token, other["token"]] + ([ping.access_token] if i == 0 else []):
            server.admin_request("POST", f"/_matrix/client/v3/join/{quoted}", token, {})
        with lock:
            session = sessions.setdefault(i % MEMBERS, vodozemac.GroupSession())
            content = _encrypted_junk(creator, session, room_id)
        server.admin_request(
            "PUT", f"/_matrix/client/v3/rooms/{quoted}/send/m.room.encrypted/{uuid.uuid4().hex}", creator["token"],
            content,
        )
        return room_id

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(start, start + count)))


def build(rooms: int, *, probe_rate: float | None = None) -> dict[str, Any]:
    """Create (once) the Synapse state for ``rooms`` rooms; returns its meta (with the creation time and rate).

    With ``probe_rate`` (rooms/s measured on a smaller build) the build is refused when it would take longer than
    :data:`MAX_BUILD_S`; it is also abandoned when the first 100 rooms show so.
    """
    base = _cache_dir(rooms)
    meta_path = base / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    if probe_rate and rooms / probe_rate > MAX_BUILD_S:
        raise BuildTooSlow(f"creating {rooms} rooms at the measured {probe_rate:.2f} rooms/s would take "
                           f"{rooms / probe_rate / 60:.0f} min (limit {MAX_BUILD_S / 60:.0f} min)")
    import vodozemac

    tmp = base.with_name(base.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    server = _server(tmp / "synapse")
    try:
        t0 = time.monotonic()
        admin = server.register_user(ADMIN, "scaleadmin-password-123", admin=True)
        bot = server.register_user(BOT, BOT_PASSWORD)
        ping = server.register_user(PING, PING_PASSWORD)
        secrets = _bootstrap_ratchet(server, tmp / "bootstrap", bot.user_id)
        shutil.copy(secrets, tmp / "secrets.json")
        shutil.rmtree(tmp / "bootstrap", ignore_errors=True)
        members = []
        for m in range(MEMBERS):
            user = server.register_user(f"scalemember{m}", MEMBER_PASSWORD)
            members.append({"user_id": user.user_id, "token": user.access_token, "device_id": user.device_id,
                             "curve25519": vodozemac.Account().curve25519_key.to_base64()})
        log(f"scale: accounts and Ratchet's cross-signing bootstrap in {time.monotonic() - t0:.1f}s")
        t1 = time.monotonic()
        probe = min(100, rooms)
        room_ids = _create_rooms(server, members, bot, ping, 0, probe)
        rate = probe / (time.monotonic() - t1)
        log(f"scale: first {probe} rooms at {rate:.2f} rooms/s (estimate for {rooms}: {rooms / rate / 60:.1f} min)")
        if rooms / rate > MAX_BUILD_S * 1.2:
            raise BuildTooSlow(f"creating {rooms} rooms at {rate:.2f} rooms/s (first {probe}) would take "
                               f"{rooms / rate / 60:.0f} min (limit {MAX_BUILD_S / 60:.0f} min)")
        done = probe
        while done < rooms:
            step = min(500, rooms - done)
            room_ids += _create_rooms(server, members, bot, ping, done, step)
            done += step
            log(f"scale: {done}/{rooms} rooms, {time.monotonic() - t1:.0f}s")
        created = time.monotonic() - t1
        # the bootstrap run's device and the registrations' (they joined the rooms): no device of theirs is left
        _delete_devices(server, admin.access_token, bot.user_id)
        _delete_devices(server, admin.access_token, ping.user_id)
        meta = {
            "rooms": rooms,
            "members": MEMBERS,
            "rooms_created_s": created,
            "rooms_per_s": rooms / created,
            "admin_token": admin.access_token,
            "bot": bot.user_id,
            "ping": ping.user_id,
            "busy_room": room_ids[0],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
    finally:
        server.stop()
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    return meta


class BuildTooSlow(RuntimeError):
    """The set-up would take longer than :data:`MAX_BUILD_S`."""


# -- one run ---------------------------------------------------------------------------------------------------


class AccessLog:
    """Reads the bot user's finished /sync requests from Synapse's log as it grows."""

    def __init__(self, path: Path, user_id: str) -> None:
        self.path = path
        self.user_id = user_id
        self.offset = path.stat().st_size if path.exists() else 0
        self._rest = b""

    def new_syncs(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        data = self._rest + chunk
        lines = data.split(b"\n")
        self._rest = lines.pop()
        out = []
        for raw in lines:
            line = raw.decode(errors="replace")
            m = SYNC_LINE.search(line)
            if m and m.group("who").split("|")[-1] == self.user_id:
                out.append({"server_s": float(m.group("secs")), "bytes": int(m.group("bytes")),
                            "code": m.group("code"), "initial": "since=" not in m.group("path"), "t": time.time()})
        return out


def _vm(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """CPU seconds of all of the process's threads, in nanoseconds' resolution (``/proc/PID/task/*/schedstat``; the
    clock ticks of /proc/PID/stat are 10 ms, as much as an idle sync costs). Falls back to the ticks."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return proc_cpu_seconds(pid)
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9 if total else proc_cpu_seconds(pid)


def _prepare(name: str, work: Path, server: BenchSynapse, base: Path, meta: dict[str, Any]) -> BotSetup:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if name == "ratchet":
        data = work / "data"
        data.mkdir()
        shutil.copy(base / "secrets.json", data / "secrets.json")
        os.chmod(data / "secrets.json", 0o600)
        cfg = ratchet_config(work / "config.yaml", homeserver=server.url, user_id=meta["bot"], password=BOT_PASSWORD,
                             data_dir=data, plugins={"benchping": {}}, log_level="INFO")
        return BotSetup(name, [sys.executable, "-m", "bot", "run", "-c", str(cfg)], work)
    return prepare_bot(name, work, homeserver=server.url, user_id=meta["bot"], password=BOT_PASSWORD, rooms=[])


def _first_sync_time(name: str, run: Any, sync_mark: Path) -> float | None:
    if name == "ratchet":
        try:
            text = run.log_path.read_text(errors="replace")
        except OSError:
            return None
        return time.time() if "synced;" in text else None
    try:
        content = sync_mark.read_text().strip()
    except OSError:
        return None
    return float(content) if content else None


async def _wait(pred, timeout: float, what: str, run: Any, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if not run.alive():
            raise RuntimeError(f"{run.name} exited with {run.proc.returncode} waiting for {what}: {run.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run.name}: no {what} within {timeout:.0f}s: {run.log_tail()}")
        await asyncio.sleep(interval)


async def _one_run(name: str, work: Path, server: BenchSynapse, base: Path, meta: dict[str, Any],
                   member: BenchMember, quick: bool) -> dict[str, Any]:
    rooms = meta["rooms"]
    first_timeout = 120 + rooms * 0.25
    _delete_devices(server, meta["admin_token"], meta["bot"])
    setup = _prepare(name, work, server, base, meta)
    sync_mark = work / "sync-mark.txt"
    mark = work / "mark.txt"
    setup.env["BENCH_SYNC_MARK_FILE"] = str(sync_mark)
    access = AccessLog(server.log_path, meta["bot"])
    load_before = os.getloadavg()[0]
    t0 = time.time()
    run = setup.start(work / "bot.log", mark_file=mark)
    pid = run.proc.pid
    res: dict[str, Any] = {"load1_at_start": load_before}
    try:
        t_sync = await _wait(lambda: _first_sync_time(name, run, sync_mark), first_timeout, "first sync", run)
        res["first_sync_s"] = t_sync - t0
        res["cpu_first_sync_s"] = proc_cpu_seconds(pid)
        res["rss_at_first_sync_mb"] = _vm(pid, "VmRSS")
        # first handled message: ping the busy room until the bot answers
        room = meta["busy_room"]
        deadline = time.monotonic() + 180
        while True:
            await member.refresh_devices(meta["bot"], [room])
            lat = await member.ping(room, meta["bot"], timeout=3)
            if lat is not None:
                break
            if not run.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer in the busy room: {run.log_tail()}")
        res["first_handled_s"] = float(mark.read_text().split()[0]) - t0
        await asyncio.sleep(REST_S)
        res["rss_rest_mb"] = _vm(pid, "VmRSS")
        res["peak_rss_mb"] = proc_peak_rss_mb(pid)
        # the initial sync as Synapse saw it
        syncs = access.new_syncs()
        initial = [s for s in syncs if s["initial"]]
        if initial:
            res["initial_sync_server_s"] = initial[0]["server_s"]
            res["initial_sync_bytes"] = initial[0]["bytes"]
        # idle: from 1 s after a sync finished to 1 s after the IDLE_SYNCS-th next one
        n_idle = 1 if quick else IDLE_SYNCS
        await _wait(access.new_syncs, 90, "idle sync", run, interval=0.05)
        await asyncio.sleep(1.0)
        cpu0, w0 = _cpu_s(pid), time.monotonic()
        seen = 0
        while seen < n_idle:
            seen += len(await _wait(access.new_syncs, 90, "idle sync", run, interval=0.05))
        await asyncio.sleep(1.0)
        cpu1, w1 = _cpu_s(pid), time.monotonic()
        res.update(idle_syncs=seen, idle_window_s=w1 - w0, idle_cpu_s=cpu1 - cpu0,
                   idle_cpu_ms_per_sync=1000 * (cpu1 - cpu0) / seen,
                   idle_cpu_ms_per_min=1000 * (cpu1 - cpu0) * 60 / (w1 - w0))
        # round trip in the busy room
        n = 10 if quick else PINGS
        lats, lost = [], 0
        cpu2 = _cpu_s(pid)
        for _ in range(n):
            lat = await member.ping(room, meta["bot"], timeout=30)
            if lat is None:
                lost += 1
            else:
                lats.append(lat * 1000)
        cpu3 = _cpu_s(pid)
        res.update(ping_p50_ms=percentile(lats, 50), ping_p99_ms=percentile(lats, 99), ping_lost=lost,
                   ping_cpu_ms=1000 * (cpu3 - cpu2) / max(1, len(lats)))
        res["peak_rss_end_mb"] = proc_peak_rss_mb(pid)
        res["rss_end_mb"] = _vm(pid, "VmRSS")
        res["cpu_total_s"] = proc_cpu_seconds(pid)
        res["load1_at_end"] = os.getloadavg()[0]
        return res
    finally:
        run.stop()
        _delete_devices(server, meta["admin_token"], meta["bot"])


def _warm(server: BenchSynapse, meta: dict[str, Any]) -> float:
    """An initial sync of the bot's account from a throwaway device (Synapse's caches), deleted afterwards."""
    creds = _login(server, meta["bot"], BOT_PASSWORD, "warm-up")
    t0 = time.monotonic()
    _http(server, "GET", "/_matrix/client/v3/sync?timeout=0", creds["access_token"])
    took = time.monotonic() - t0
    _delete_devices(server, meta["admin_token"], meta["bot"])
    return took


FIGURES = ("first_sync_s", "first_handled_s", "rss_rest_mb", "peak_rss_mb", "idle_cpu_ms_per_sync",
           "idle_cpu_ms_per_min", "ping_p50_ms", "ping_p99_ms", "cpu_first_sync_s", "initial_sync_server_s",
           "initial_sync_bytes", "peak_rss_end_mb")


async def _measure_scale(meta: dict[str, Any], repeats: int, quick: bool) -> dict[str, Any]:
    base = _cache_dir(meta["rooms"])
    work = Path(tempfile.mkdtemp(prefix="ratchet-bench-scale-", dir=CACHE))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in BOTS}
    errors: dict[str, str] = {}
    member = None
    try:
        t0 = time.monotonic()
        shutil.copytree(base / "synapse", work / "synapse")
        (work / "synapse" / "homeserver.log").unlink(missing_ok=True)
        server = _server(work / "synapse")
        try:
            warm = _warm(server, meta)
            log(f"scale {meta['rooms']}: Synapse copied and started, warm-up initial sync {warm:.1f}s "
                f"({time.monotonic() - t0:.0f}s)")
            _delete_devices(server, meta["admin_token"], meta["ping"])
            member = BenchMember(server.url, meta["ping"], PING_PASSWORD, work / "member")
            await member.start()
            for rep in range(repeats):
                order = BOTS if rep % 2 == 0 else BOTS[::-1]
                for name in order:
                    try:
                        res = await _one_run(name, work / name, server, base, meta, member, quick)
                    except Exception as exc:
                        errors[name] = str(exc)[:1500]
                        log(f"scale {meta['rooms']} {name}: {str(exc)[:300]}")
                        continue
                    runs[name].append(res)
                    log(f"scale {meta['rooms']} {name}: first sync {res['first_sync_s']:.1f}s, first handled "
                        f"{res['first_handled_s']:.1f}s, RSS rest {res['rss_rest_mb']:.0f} MiB, peak "
                        f"{res['peak_rss_mb']:.0f} MiB, idle {res['idle_cpu_ms_per_sync']:.1f} ms CPU/sync "
                        f"({res['idle_syncs']} syncs), ping p50 {res['ping_p50_ms']:.0f} p99 "
                        f"{res['ping_p99_ms']:.0f} ms, load {res['load1_at_start']:.1f}")
        finally:
            if member is not None:
                await member.close()
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entry: dict[str, Any] = {
        "rooms": meta["rooms"],
        "setup": {k: meta.get(k) for k in ("rooms_created_s", "rooms_per_s", "members")},
        "warm_up_initial_sync_s": warm,
        "errors": errors,
        "runs": runs,
        "figures": {f: {b: summary([r[f] for r in rs if f in r]) for b, rs in runs.items()} for f in FIGURES},
        "ratios": {},
    }
    for other in ("nio", "maubot"):
        for f in FIGURES:
            a = [r.get(f) for r in runs["ratchet"]]
            b = [r.get(f) for r in runs[other]]
            if all(v is not None for v in a + b) and a and b:
                entry["ratios"][f"{f} ratchet/{other}"] = ratio_summary(a, b)
    return entry


def scenario(quick: bool = QUICK) -> dict[str, Any]:
    """The bot in 2,000 rooms (200 in quick mode), and 10,000 if they can be built in :data:`MAX_BUILD_S`."""
    repeats = 1 if quick else 3
    scales = [200] if quick else [2000, 10_000]
    out: dict[str, Any] = {
        "params": {"repeats": repeats, "pings": 10 if quick else PINGS, "idle_syncs": 1 if quick else IDLE_SYNCS,
                   "rest_s": REST_S, "members_per_room": 2, "member_accounts": MEMBERS},
        "labels": {b: LABELS[b] for b in BOTS},
        "scales": [],
        "skipped": {},
        "cpus": os.cpu_count(),
    }
    rate: float | None = None
    for rooms in scales:
        try:
            t0 = time.monotonic()
            meta = build(rooms, probe_rate=rate)
            if time.monotonic() - t0 > 5:
                log(f"scale: built {rooms} rooms in {time.monotonic() - t0:.0f}s")
        except BuildTooSlow as exc:
            out["skipped"][str(rooms)] = str(exc)
            log(f"scale: {rooms} rooms skipped: {exc}")
            continue
        rate = meta.get("rooms_per_s") or rate
        out["scales"].append(asyncio.run(_measure_scale(meta, repeats, quick)))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.scale`` prints the scenario's JSON; ``python -m bench.scale build ROOMS`` builds (and caches)
    one scale's set-up without the :data:`MAX_BUILD_S` limit, for a session that has the time: the scenario then
    measures it from the cache (the build's time is in its ``meta.json`` and in the results)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    sub = parser.add_subparsers(dest="cmd")
    build_cmd = sub.add_parser("build", help="build one scale's cached set-up, however long it takes")
    build_cmd.add_argument("rooms", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "build":
        global MAX_BUILD_S
        MAX_BUILD_S = float("inf")
        t0 = time.monotonic()
        meta = build(args.rooms)
        log(f"scale: {args.rooms} rooms ready ({meta['rooms_created_s']:.0f}s of room creation, "
            f"{time.monotonic() - t0:.0f}s in this call)")
        return
    print(json.dumps(scenario(), default=str))


if __name__ == "__main__":
    main()
