"""Offline reproduction of target 4's "RSS at rest" (bench/scale.py): what a bot in N encrypted rooms keeps after
its initial sync, without a homeserver.

A synthetic ``/sync`` body of N rooms shaped like the scale set-up (room version 12; the bot and two of ten members
per room, each room's state: create, power levels, join rules, history visibility, guest access, encryption, name,
three joins of which two replaced an invite; one undecryptable Megolm message) is generated once per shape into
``/tmp/memrooms/``:

* ``nio``: what a bare nio bot asks for (no filter, ``full_state``): Synapse's default timeline of 10 events (the last
  10 of the room's 13: join rules .. the Megolm message), the rest in ``state``;
* ``ratchet``: Ratchet's initial sync (``INITIAL_SYNC_FILTER``: no timeline, every room's state in ``state``).

Variants (each in its own process, ``python -m bench.memrooms run VARIANT N [--trace] [--trim]``):

* ``nio``: a bare nio ``AsyncClient`` with encryption and its ``SqliteStore`` (as ``bench/bots/nio_echo.py``), the
  body handed to ``client.sync()`` through a fake transport (nio parses it as it parses aiohttp's answer);
* ``ratchet``: Ratchet's runtime as ``Runtime.run()`` wires it (``make_client``, state.db, plugin ``benchping``,
  shipped e2ee defaults), its first sync loop turn done by hand: ``SyncSource.fetch`` (the rooms' state saved to
  ``room_state``), ``_handle_sync`` (initial), ``_retry_pending``, ``freeze_long_lived()`` with the batch still
  referenced (as the loop does), then the batch dropped;
* ``restart``: the ``ratchet`` bot restarted on the data dir a ``ratchet`` run left (``MEMROOMS_KEEP=DIR`` on both
  runs): its rooms loaded from state.db (``SyncSource.restore_rooms``), as a restart does before its first sync.

``--after clear|rebuild|reload`` (ratchet) are experiments run after the first sync: drop nio's rooms (what do they
pin?), rebuild them from state.db without dropping anything else, or drop every per-room structure found holding the
response's strings (rooms, encrypted room ids, LazySqliteStore's saved set, creators, rotation periods) and load the
rooms again as a restart does.

After the response is dropped and ``gc.collect()``, the process reports VmRSS, pymalloc's arenas
(``sys._debugmallocstats``), per-type object counts (``gc.get_objects()``) and, with ``--trace``, tracemalloc's view
of what the sync left allocated (tracemalloc started just before the sync), by category and by line. ``--trim`` also
calls glibc's ``malloc_trim(0)`` and reports VmRSS after it.

``python -m bench.memrooms compare`` runs nio and ratchet at 2,000 and 10,000 rooms, 3 times interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import ctypes
import gc
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("MEMROOMS_CACHE", "/tmp/memrooms"))
BOT = "@scalebot:localhost"
DEVICE = "MEMBOTDEV"
MEMBERS = [f"@scalemember{i}:localhost" for i in range(10)]
PICKLE_KEY = "memrooms-pickle-key-0123456789"
HOMESERVER = "http://127.0.0.1:9"  # never contacted
BASE_TS = 1_796_135_515_515
NOW_TS = BASE_TS + 20_000_000
PL_CONTENT = {
    "ban": 50,
    "events": {
        "m.room.avatar": 50, "m.room.canonical_alias": 50, "m.room.encryption": 100,
        "m.room.history_visibility": 100, "m.room.name": 50, "m.room.power_levels": 100,
        "m.room.server_acl": 100, "m.room.tombstone": 150,
    },
    "events_default": 0, "historical": 100, "invite": 0, "kick": 50, "redact": 50, "state_default": 50,
    "users": {}, "users_default": 0,
}


def _b64id(*parts: Any) -> str:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _room_events(i: int) -> tuple[str, list[dict[str, Any]]]:
    """Room i's 13 events in order (as Synapse sends them in /sync: no room_id, unsigned with age)."""
    room_id = "!" + _b64id("room", i)
    creator = MEMBERS[i % len(MEMBERS)]
    other = MEMBERS[(i + 1) % len(MEMBERS)]
    ts = BASE_TS + i * 1000
    events: list[dict[str, Any]] = []

    def ev(etype: str, sender: str, content: dict, state_key: str | None = "", **unsigned: Any) -> dict[str, Any]:
        k = len(events)
        e: dict[str, Any] = {"type": etype, "sender": sender, "content": content, "origin_server_ts": ts + k * 37}
        if state_key is not None:
            e["state_key"] = state_key
        e["unsigned"] = {"age": NOW_TS - (ts + k * 37), **unsigned}
        e["event_id"] = "$" + (room_id[1:] if k == 0 else _b64id("event", i, k))
        events.append(e)
        return e

    def name(user: str) -> str:
        return user[1:].split(":")[0]

    ev("m.room.create", creator, {"room_version": "12"})
    ev("m.room.member", creator, {"displayname": name(creator), "membership": "join"}, creator)
    ev("m.room.power_levels", creator, PL_CONTENT)
    ev("m.room.join_rules", creator, {"join_rule": "invite"})
    ev("m.room.history_visibility", creator, {"history_visibility": "shared"})
    ev("m.room.guest_access", creator, {"guest_access": "can_join"})
    ev("m.room.encryption", creator, {"algorithm": "m.megolm.v1.aes-sha2"})
    ev("m.room.name", creator, {"name": f"Room {i}"})
    inv_bot = ev("m.room.member", creator, {"displayname": name(BOT), "membership": "invite"}, BOT)
    inv_other = ev("m.room.member", creator, {"displayname": name(other), "membership": "invite"}, other)
    ev("m.room.member", BOT, {"displayname": name(BOT), "membership": "join"}, BOT,
       replaces_state=inv_bot["event_id"], prev_content=inv_bot["content"], prev_sender=creator)
    ev("m.room.member", other, {"displayname": name(other), "membership": "join"}, other,
       replaces_state=inv_other["event_id"], prev_content=inv_other["content"], prev_sender=creator)
    ciphertext = base64.b64encode(hashlib.sha512(f"c{i}".encode()).digest() * 4).decode().rstrip("=")
    ev("m.room.encrypted", creator, {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": ciphertext,
        "device_id": "CZZRDMJQBS",
        "sender_key": base64.b64encode(hashlib.sha256(creator.encode()).digest()).decode().rstrip("="),
        "session_id": base64.b64encode(hashlib.sha256(f"s{i}".encode()).digest()).decode().rstrip("="),
    }, None)
    return room_id, events


def _current_state(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        if "state_key" in e:
            state[(e["type"], e["state_key"])] = e
    return list(state.values())


def generate(n: int, shape: str) -> Path:
    path = CACHE / f"{shape}-{n}.json"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    join: dict[str, Any] = {}
    for i in range(n):
        room_id, events = _room_events(i)
        creator, other = MEMBERS[i % len(MEMBERS)], MEMBERS[(i + 1) % len(MEMBERS)]
        if shape == "ratchet":  # timeline limit 0: every room's state, no timeline
            timeline = {"events": [], "limited": True, "prev_batch": f"t{i}-1234_0_0_0_0_0_0_0_0_0"}
            state = _current_state(events)
        else:  # nio: Synapse's default limit (10) with full_state: the state not in the timeline
            tl = events[-10:]
            in_tl = {(e["type"], e.get("state_key")) for e in tl if "state_key" in e}
            timeline = {"events": tl, "limited": True, "prev_batch": f"t{i}-1234_0_0_0_0_0_0_0_0_0"}
            state = [e for e in _current_state(events) if (e["type"], e["state_key"]) not in in_tl]
        join[room_id] = {
            "timeline": timeline,
            "state": {"events": state},
            "account_data": {"events": []},
            "ephemeral": {"events": []},
            "unread_notifications": {"notification_count": 0, "highlight_count": 0},
            "summary": {"m.heroes": [creator, other], "m.joined_member_count": 3, "m.invited_member_count": 0},
        }
    body = {
        "next_batch": "s123456_7890_0_1_2_3_4_5_6_7",
        "account_data": {"events": [{"type": "m.push_rules", "content": {"global": {}}}]},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {"signed_curve25519": 50},
        "org.matrix.msc2732.device_unused_fallback_key_types": ["signed_curve25519"],
        "device_unused_fallback_key_types": ["signed_curve25519"],
        "presence": {"events": []},
        "rooms": {"join": join},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(json.dumps(body, separators=(",", ":")).encode())
    tmp.rename(path)
    return path


# -- measuring ------------------------------------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    """A memory field of this process's ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def hwm_mib() -> float:
    return _status_mib("VmHWM")


def malloc_trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


_STAT_LINE = r"^# (arenas allocated current|bytes in allocated blocks|bytes in available blocks)\s+=\s+([\d,]+)"


def pymalloc_stats() -> dict[str, float]:
    """pymalloc's arenas (sys._debugmallocstats, written to fd 2): MiB in arenas, in used blocks, free."""
    r, w = os.pipe()
    saved = os.dup(2)
    out = b""
    try:
        os.dup2(w, 2)
        os.close(w)
        sys._debugmallocstats()
        os.dup2(saved, 2)
        os.close(saved)
        while chunk := os.read(r, 65536):
            out += chunk
    finally:
        os.close(r)
    stats: dict[str, int] = {}
    for line in out.decode().splitlines():
        m = re.match(_STAT_LINE, line)
        if m:
            stats[m.group(1)] = int(m.group(2).replace(",", ""))
        m = re.match(r"^(\d+) unused pools \* (\d+) bytes", line)
        if m:
            stats["unused pools bytes"] = int(m.group(1)) * int(m.group(2))
    mib = 2**20
    return {
        "arenas_mib": stats.get("arenas allocated current", 0),  # 1 MiB arenas (3.11)
        "used_mib": round(stats.get("bytes in allocated blocks", 0) / mib, 1),
        "free_in_pools_mib": round(stats.get("bytes in available blocks", 0) / mib, 1),
        "unused_pools_mib": round(stats.get("unused pools bytes", 0) / mib, 1),
    }


def type_counts() -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        counts[f"{type(obj).__module__}.{type(obj).__qualname__}"] += 1
    return counts


CATEGORIES = (
    # (category, substring of a frame's filename); the innermost matching frame decides
    ("ratchet:state-store", "/bot/storage/"),
    ("ratchet:runtime", "/bot/runtime/"),
    ("ratchet:e2ee", "/bot/e2ee/"),
    ("ratchet:olm", "/bot/matrix/olm.py"),
    ("ratchet:client", "/bot/matrix/client.py"),
    ("ratchet:sync", "/bot/matrix/sync.py"),
    ("ratchet:schemas", "/bot/matrix/schemas.py"),
    ("ratchet:plugin", "/bot/plugin/"),
    ("ratchet:other", "/bot/"),
    ("nio:rooms (MatrixRoom/MatrixUser)", "/nio/rooms.py"),
    ("nio:crypto (olm machine, stores)", "/nio/crypto/"),
    ("nio:store", "/nio/store/"),
    ("nio:events (PowerLevels, ...)", "/nio/events/"),
    ("nio:responses", "/nio/responses.py"),
    ("nio:client", "/nio/client/"),
    ("peewee", "/peewee.py"),
    ("json (parsed strings kept)", "/json/"),
)


def categorize(snapshot: Any) -> dict[str, dict[str, float]]:
    """Bytes of each trace by the innermost frame of a known file (json: kept parts of the parsed body)."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0])
    for stat in snapshot.statistics("traceback"):
        category = "other"
        for frame in reversed(stat.traceback):  # tracemalloc: oldest frame first
            for name, sub in CATEGORIES:
                if sub in frame.filename:
                    category = name
                    break
            if category != "other":
                break
        out[category][0] += stat.size
        out[category][1] += stat.count
    ranked = sorted(out.items(), key=lambda kv: -kv[1][0])
    return {k: {"mib": round(v[0] / 2**20, 2), "blocks": v[1]} for k, v in ranked}


class FakeResponse:
    """What nio reads of an aiohttp ClientResponse (``json()`` as aiohttp does it: strip, decode, loads)."""

    status = 200
    content_type = "application/json"
    content_disposition = None

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def text(self) -> str:
        return self._body.decode()

    async def json(self, **_kw: Any) -> Any:
        return json.loads(self._body.strip().decode("utf-8"))

    def release(self) -> None:
        pass


def fake_transport(client: Any, body_path: Path) -> None:
    async def send(method: str, path: str, data: Any = None, headers: Any = None, trace_context: Any = None,
                   timeout: Any = None) -> FakeResponse:
        if "/sync" in path:
            return FakeResponse(body_path.read_bytes())  # noqa: ASYNC240 - a bench, nothing else runs
        return FakeResponse(b"{}")

    client.send = send


# -- the variants ---------------------------------------------------------------------------------------------------


async def run_nio(body: Path, work: Path) -> dict[str, Any]:
    from nio import AsyncClient, AsyncClientConfig, SyncResponse
    from nio.store import SqliteStore

    store = work / "store"
    store.mkdir()
    config = AsyncClientConfig(store=SqliteStore, encryption_enabled=True, pickle_key=PICKLE_KEY,
                               store_sync_tokens=True)
    client = AsyncClient(HOMESERVER, BOT, store_path=str(store), config=config)
    client.restore_login(BOT, DEVICE, "unused-token")
    fake_transport(client, body)
    hold: dict[str, Any] = {"client": client}

    async def sync() -> None:
        resp = await client.sync(timeout=0, full_state=True)
        assert isinstance(resp, SyncResponse), resp
        assert len(client.rooms) == N_ROOMS[0], len(client.rooms)

    hold["sync"] = sync
    return hold


async def run_ratchet(body: Path, work: Path, *, gc_before_freeze: bool = False, after: str = "") -> dict[str, Any]:
    from bot.config import parse_config
    from bot.matrix.client import make_client
    from bot.runtime.runtime import Runtime, freeze_long_lived
    from bot.storage.backend import SqliteStorage

    plugins = Path(__file__).resolve().parent / "plugins"  # noqa: ASYNC240
    cfg = parse_config(
        f"homeserver: {HOMESERVER}\nuser_id: '{BOT}'\naccess_token: unused-token\n"
        f"data_dir: {work / 'data'}\npickle_key: {PICKLE_KEY}\n"
        f"plugins: {{benchping: {{}}}}\nplugin_dirs: ['{plugins}']\nlog_level: INFO\n"
    )
    (work / "data" / "crypto").mkdir(parents=True)
    client = make_client(HOMESERVER, BOT, work / "data" / "crypto", PICKLE_KEY, DEVICE)
    client.restore_login(BOT, DEVICE, "unused-token")
    fake_transport(client, body)
    rt = Runtime(cfg, client, SqliteStorage(work / "data"))
    await rt.manager.start_all()
    assert "benchping" in rt.host.plugins and not rt.host.errors, rt.host.errors
    hold: dict[str, Any] = {"client": client, "runtime": rt}

    async def sync() -> None:
        batch = await rt.source.fetch(None, timeout_ms=0)
        await rt._handle_sync(batch, initial=True, resumed=False)
        while rt._background:
            await asyncio.gather(*list(rt._background))
        await rt._retry_pending(None)
        assert len(client.rooms) == N_ROOMS[0], len(client.rooms)
        if gc_before_freeze:
            gc.collect()
        freeze_long_lived()  # as the sync loop does, with its batch still referenced
        del batch
        if after:
            gc.collect()
            hold["rss_before_after"] = rss_mib()
            experiment_after(after, client, rt, hold)

    hold["sync"] = sync
    return hold


def experiment_after(what: str, client: Any, rt: Any, hold: dict[str, Any]) -> None:
    """Experiments on the rooms after the first sync: ``clear`` drops nio's rooms (what do they pin?), ``rebuild``
    drops them and builds them again room by room from state.db (as a restart loads them, one room at a time)."""
    from nio import Event, RoomInfo, Timeline

    room_ids = list(client.rooms)
    client.rooms.clear()
    if what == "reload":
        client.encrypted_rooms.clear()
        rt.api.creators.clear()
        client.olm.rotation_periods.clear()
        client.store._saved_rooms = None  # LazySqliteStore's copy of the saved encrypted rooms' ids
    gc.collect()
    hold["rss_rooms_cleared"] = rss_mib()
    if what == "clear":
        return
    if what == "reload":
        assert rt.source.restore_rooms(rt._note_restored_room) == len(room_ids)
        gc.collect()
        hold["rss_rebuilt"] = rss_mib()
        return
    db = rt.state._db
    cur = db.execute("SELECT room_id, event FROM room_state ORDER BY room_id")
    encrypted: set[str] = set()
    current: str | None = None
    events: list[Any] = []

    def flush() -> None:
        if current is not None:
            client._handle_joined_state(current, RoomInfo(Timeline([], False, None), events, [], []), encrypted)

    for room_id, text in cur:
        if room_id != current:
            flush()
            current, events = room_id, []
        events.append(Event.parse_event(json.loads(text)))
    flush()
    events = []
    assert len(client.rooms) == len(room_ids)
    gc.collect()
    hold["rss_rebuilt"] = rss_mib()


async def run_restart(body: Path, work: Path) -> dict[str, Any]:
    """A restart of the ratchet variant's bot (its data dir ``work``, kept with ``--keep``): the rooms come from
    state.db (``SyncSource.restore_rooms``, as the sync loop does before its first incremental sync)."""
    from bot.config import parse_config
    from bot.matrix.client import make_client
    from bot.runtime.runtime import Runtime, freeze_long_lived
    from bot.storage.backend import SqliteStorage

    plugins = Path(__file__).resolve().parent / "plugins"  # noqa: ASYNC240
    cfg = parse_config(
        f"homeserver: {HOMESERVER}\nuser_id: '{BOT}'\naccess_token: unused-token\n"
        f"data_dir: {work / 'data'}\npickle_key: {PICKLE_KEY}\n"
        f"plugins: {{benchping: {{}}}}\nplugin_dirs: ['{plugins}']\nlog_level: INFO\n"
    )
    client = make_client(HOMESERVER, BOT, work / "data" / "crypto", PICKLE_KEY, DEVICE)
    client.restore_login(BOT, DEVICE, "unused-token")
    fake_transport(client, body)
    rt = Runtime(cfg, client, SqliteStorage(work / "data"))
    await rt.manager.start_all()
    hold: dict[str, Any] = {"client": client, "runtime": rt}

    async def sync() -> None:
        assert rt.state.sync_token is not None
        if hasattr(rt, "_note_restored_room"):
            assert rt.source.restore_rooms(rt._note_restored_room) is not None
        else:  # the code before streaming restore
            rooms = rt.source.restore_rooms()
            assert rooms is not None
            for room in rooms:
                rt._note_room_state(room.room_id, room.state, room.events)
            del rooms
        assert len(client.rooms) == N_ROOMS[0], len(client.rooms)
        freeze_long_lived()

    hold["sync"] = sync
    return hold


N_ROOMS = [0]
TRACE_FRAMES = int(os.environ.get("MEMROOMS_FRAMES", "16"))


async def measure(variant: str, n: int, *, trace: bool, trim: bool, gc_before_freeze: bool,
                  after: str = "") -> dict[str, Any]:
    N_ROOMS[0] = n
    shape = "nio" if variant == "nio" else "ratchet"
    keep = os.environ.get("MEMROOMS_KEEP")
    body = generate(n, shape)
    result: dict[str, Any] = {"variant": variant, "rooms": n, "body_mib": round(body.stat().st_size / 2**20, 1)}
    result["rss_start"] = rss_mib()
    with tempfile.TemporaryDirectory(prefix="memrooms-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        t0 = time.monotonic()
        if variant == "nio":
            hold = await run_nio(body, work)
        elif variant == "restart":
            hold = await run_restart(body, work)
        else:
            hold = await run_ratchet(body, work, gc_before_freeze=gc_before_freeze, after=after)
        gc.collect()
        result["rss_floor"] = rss_mib()
        result["pymalloc_floor"] = pymalloc_stats()
        before_types = type_counts()
        if trace:
            import tracemalloc

            tracemalloc.start(TRACE_FRAMES)
        t1 = time.monotonic()
        await hold.pop("sync")()
        result["sync_s"] = round(time.monotonic() - t1, 2)
        gc.collect()
        result["rss_after_sync"] = rss_mib()
        for key in ("rss_before_after", "rss_rooms_cleared", "rss_rebuilt"):
            if key in hold:
                result[key] = hold.pop(key)
        result["hwm"] = hwm_mib()
        if trace:
            snap = tracemalloc.take_snapshot()
            tracemalloc.stop()
            snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            total = sum(s.size for s in snap.statistics("filename"))
            result["traced_mib"] = round(total / 2**20, 2)
            result["categories"] = categorize(snap)
            result["top_lines"] = [
                {"where": f"{s.traceback[0].filename.split('site-packages/')[-1].split('/wt-mem/')[-1]}:"
                          f"{s.traceback[0].lineno}", "mib": round(s.size / 2**20, 2), "count": s.count}
                for s in snap.statistics("lineno")[:30]
            ]
            del snap
        gc.unfreeze()  # (frozen objects are not in gc.get_objects())
        after_types = type_counts()
        delta = after_types - before_types
        result["types_per_room"] = {k: round(v / n, 2) for k, v in delta.most_common(25)}
        result["pymalloc"] = pymalloc_stats()
        if trim:
            malloc_trim()
            result["rss_after_trim"] = rss_mib()
        result["total_s"] = round(time.monotonic() - t0, 1)
        client = hold["client"]
        if client.olm is not None:
            result["olm"] = {
                "tracked_users": len(client.olm.tracked_users) if hasattr(client.olm, "tracked_users") else None,
                "users_for_key_query": len(client.olm.users_for_key_query),
            }
        result["encrypted_rooms"] = len(client.encrypted_rooms)
    return result


def compare(sizes: list[int], reps: int, extra: list[str]) -> list[dict[str, Any]]:
    rows = []
    variants = ["nio", "ratchet"]
    for n in sizes:
        generate(n, "nio")
        generate(n, "ratchet")
        for rep in range(reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            for v in order:
                out = subprocess.run([sys.executable, "-m", "bench.memrooms", "run", v, str(n), "--trim", *extra],
                                     check=True, capture_output=True, text=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps({k: res[k] for k in ("variant", "rooms", "rss_floor", "rss_after_sync",
                                                       "rss_after_trim", "hwm")}), flush=True)
                rows.append(res)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memrooms")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("variant", choices=("nio", "ratchet", "restart"))
    run.add_argument("rooms", type=int)
    run.add_argument("--trace", action="store_true")
    run.add_argument("--trim", action="store_true")
    run.add_argument("--gc-before-freeze", action="store_true")
    run.add_argument("--after", choices=("", "clear", "rebuild", "reload"), default="")
    gen = sub.add_parser("generate")
    gen.add_argument("rooms", type=int)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--sizes", default="2000,10000")
    cmp_.add_argument("--reps", type=int, default=3)
    cmp_.add_argument("--out")
    args, extra = parser.parse_known_args(argv)
    if args.cmd == "generate":
        print(generate(args.rooms, "nio"), generate(args.rooms, "ratchet"))
    elif args.cmd == "run":
        import logging

        logging.basicConfig(level=logging.WARNING)
        res = asyncio.run(measure(args.variant, args.rooms, trace=args.trace, trim=args.trim,
                                  gc_before_freeze=args.gc_before_freeze, after=args.after))
        print(json.dumps(res))
    else:
        rows = compare([int(s) for s in args.sizes.split(",")], args.reps, extra)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
