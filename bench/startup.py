"""Scenario 3: start-up time and peak memory with a large store.

The set-up, built once and cached in ``bench/.cache/startup-<rooms>r-<sessions>s/``:

* a Synapse whose bot account has created R encrypted rooms (it is joined to all of them), plus a member joined to
  the first one;
* the bot's data dir as Ratchet keeps it (``credentials.json``, nio's SQLite crypto store, ``state.db`` with the
  sync token of a first run), whose crypto store then gets S inbound Megolm sessions (100 per room by default, from
  50 senders), written directly with nio's SqliteStore models. One of them is the member's session for the first
  room: the member sends with it (raw ``m.room.encrypted``), so every run can decrypt without a key exchange;
* Ratchet runs with its shipped defaults: its first run creates the account's cross-signing keys and a key backup
  version, and a second run, after the sessions are written, backs all of them up (as a bot that has been running
  has), so the data dir is that of a bot restarting in its steady state.

Each run restores that data dir (so every run starts from the same state), the member sends an encrypted
``!ping``, and the bot process starts; the figure is the time from the process's start to the moment its handler
ran (the handler appends the time to ``BENCH_MARK_FILE``), and the process's peak RSS (VmHWM) at that moment. The
bare-nio bot opens the *same* device, store and sync token (a copy): same keys, same server-side state. Both resume
with a full-state sync, as after any restart. ``ratchet`` runs with the shipped defaults (tofu trust, cross-signing,
key backup), ``ratchet-peer`` with the peers' settings (``trust: all``, neither of the others) on the same data dir;
``ratchet-before`` is the latter without the issue-8 changes (``bench/bots/ratchet_before.py``), for the
before/after figure. The order of the bots alternates between repetitions.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from bench.common import CACHE, QUICK, log, proc_cpu_seconds, proc_peak_rss_mb, ratio_summary, summary
from bench.homeserver import BenchSynapse
from bench.peers import BOTS_DIR, BotSetup, free_port, prepare_bot, ratchet_config

PICKLE_KEY = "bench-ratchet-pickle-key-0123456789"  # what bench.peers.ratchet_config writes
SENDERS = 50
BOT_PASSWORD = "startbot-password-123"
MEMBER_PASSWORD = "startmember-password-123"
BOT_TIMEOUT = 120.0
BACKUP_TIMEOUT = 1200.0
BOTS = ("ratchet", "nio", "ratchet-peer", "ratchet-before")


def _cache_dir(rooms: int, sessions: int) -> Path:
    return CACHE / f"startup-v2-{rooms}r-{sessions}s"  # v2: Ratchet's defaults, every session backed up


def _server(base: Path) -> BenchSynapse:
    server = BenchSynapse(base / "synapse", port=free_port())
    server.start(timeout=120)
    return server


def _create_rooms(server: BenchSynapse, token: str, count: int, invite: str | None) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        body: dict[str, Any] = {
            "preset": "private_chat",
            "initial_state": [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ],
        }
        if i == 0 and invite:
            body["invite"] = [invite]
        return server.admin_request("POST", "/_matrix/client/v3/createRoom", token, body)["room_id"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def _inject_sessions(store_dir: Path, user_id: str, device_id: str, rooms: list[str], per_room: int,
                     member_session: tuple[str, str, Any]) -> int:
    """Write ``per_room`` inbound group sessions per room into the bot's crypto store (nio's models, one
    transaction); the member's session for ``rooms[0]`` is one of them."""
    import vodozemac
    from nio.crypto.sessions import derive_pickle_key
    from nio.store import SqliteStore
    from nio.store.models import MegolmInboundSessions

    store = SqliteStore(user_id, device_id, str(store_dir), PICKLE_KEY)
    account = store._get_account()
    assert account is not None
    key = derive_pickle_key(PICKLE_KEY)
    senders = []
    for _ in range(SENDERS):
        acc = vodozemac.Account()
        senders.append((acc.curve25519_key.to_base64(), acc.ed25519_key.to_base64()))
    rows = []
    m_curve, m_ed, m_outbound = member_session
    inbound = vodozemac.InboundGroupSession(m_outbound.session_key)
    rows.append(dict(sender_key=m_curve, account=account.id, fp_key=m_ed, room_id=rooms[0],
                     session=inbound.pickle(key).encode(), session_id=inbound.session_id))
    n = 0
    for room in rooms:
        for _ in range(per_room - (1 if room == rooms[0] else 0)):
            curve, ed = senders[n % SENDERS]
            session = vodozemac.InboundGroupSession(vodozemac.GroupSession().session_key)
            rows.append(dict(sender_key=curve, account=account.id, fp_key=ed, room_id=room,
                             session=session.pickle(key).encode(), session_id=session.session_id))
            n += 1
    with store.database.bind_ctx(store.models), store.database.atomic():
        for i in range(0, len(rows), 500):
            MegolmInboundSessions.insert_many(rows[i : i + 500]).on_conflict_ignore().execute()
    store.database.close()
    return len(rows)


def build(rooms: int, sessions: int) -> dict[str, Any]:
    """Create (once) the Synapse state and the bot's pristine data dir for this scale."""
    base = _cache_dir(rooms, sessions)
    meta_path = base / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    import vodozemac

    tmp = base.with_name(base.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    server = _server(tmp)
    try:
        t0 = time.monotonic()
        bot = server.register_user("startbot", BOT_PASSWORD)
        member = server.register_user("startmember", MEMBER_PASSWORD)
        room_ids = _create_rooms(server, bot.access_token, rooms, member.user_id)
        server.admin_request(
            "POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_ids[0])}", member.access_token, {}
        )
        created = time.monotonic() - t0
        log(f"startup: created {rooms} rooms in {created:.1f}s")
        # A first Ratchet run makes the data dir: login, keys, the sync token of the initial sync.
        cfg = ratchet_config(tmp / "ratchet" / "config.yaml", homeserver=server.url, user_id=bot.user_id,
                             password=BOT_PASSWORD, data_dir=tmp / "ratchet" / "data", plugins={"benchping": {}},
                             log_level="INFO")
        setup = BotSetup("ratchet", [sys.executable, "-m", "bot", "run", "-c", str(cfg)], tmp / "ratchet")
        run = setup.start(tmp / "ratchet" / "setup.log")
        deadline = time.monotonic() + BOT_TIMEOUT
        while "synced;" not in (tmp / "ratchet" / "setup.log").read_text(errors="replace"):
            if not run.alive() or time.monotonic() > deadline:
                run.stop()
                raise RuntimeError(f"the set-up run of Ratchet did not sync: {run.log_tail()}")
            time.sleep(0.2)
        time.sleep(2)  # let it finish its key upload
        run.stop()
        data = tmp / "ratchet" / "data"
        creds = json.loads((data / "credentials.json").read_text())
        member_account = vodozemac.Account()
        _upload_device_keys(server, member, member_account)
        outbound = vodozemac.GroupSession()
        t1 = time.monotonic()
        injected = _inject_sessions(
            data / "crypto", creds["user_id"], creds["device_id"], room_ids, max(1, sessions // rooms),
            (member_account.curve25519_key.to_base64(), member_account.ed25519_key.to_base64(), outbound),
        )
        log(f"startup: wrote {injected} inbound sessions in {time.monotonic() - t1:.1f}s")
        t2 = time.monotonic()
        _back_up_everything(tmp / "ratchet", cfg, injected)
        log(f"startup: Ratchet backed up {injected} sessions in {time.monotonic() - t2:.1f}s")
        shutil.move(str(data), str(tmp / "pristine"))
        shutil.rmtree(tmp / "ratchet", ignore_errors=True)
        meta = {
            "rooms": rooms,
            "sessions": injected,
            "rooms_created_s": created,
            "bot": {"user_id": bot.user_id, "device_id": creds["device_id"]},
            "member": {"user_id": member.user_id, "token": member.access_token,
                       "curve25519": member_account.curve25519_key.to_base64(), "device_id": member.device_id},
            "room": room_ids[0],
            "token": _state_token(tmp / "pristine" / "state.db"),
        }
        (tmp / "outbound.pickle").write_text(outbound.pickle(bytes(32)))
        (tmp / "meta.json").write_text(json.dumps(meta))
    finally:
        server.stop()
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    return meta


def _back_up_everything(work: Path, cfg: Path, sessions: int) -> None:
    """Run Ratchet (defaults) until its key backup holds every session of the store, then stop it."""
    setup = BotSetup("ratchet", [sys.executable, "-m", "bot", "run", "-c", str(cfg)], work)
    run = setup.start(work / "backup.log")
    tracker = work / "data" / "key_backup.db"
    deadline = time.monotonic() + BACKUP_TIMEOUT
    try:
        while True:
            done = 0
            if tracker.exists():
                try:
                    db = sqlite3.connect(tracker)
                    done = db.execute("SELECT count(*) FROM uploaded").fetchone()[0]
                    db.close()
                except sqlite3.Error:
                    done = 0
            if done >= sessions:
                return
            if not run.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"Ratchet backed up {done} of {sessions} sessions: {run.log_tail()}")
            time.sleep(1)
    finally:
        run.stop()


def _upload_device_keys(server: BenchSynapse, member: Any, account: Any) -> None:
    """Publish the member's device keys (so that the bot can tell its messages really come from it)."""
    from nio.api import Api

    dev = member.device_id
    keys = {
        "user_id": member.user_id,
        "device_id": dev,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{dev}": account.curve25519_key.to_base64(),
                 f"ed25519:{dev}": account.ed25519_key.to_base64()},
    }
    signature = account.sign(Api.to_canonical_json(keys).encode()).to_base64()
    keys["signatures"] = {member.user_id: {f"ed25519:{dev}": signature}}
    server.admin_request("POST", "/_matrix/client/v3/keys/upload", member.access_token, {"device_keys": keys})


def _warm_synapse(server: BenchSynapse, base: Path, meta: dict[str, Any]) -> None:
    """One full-state sync from the stored token before measuring: a freshly started Synapse takes seconds for the
    first one (cold caches), which would otherwise fall on whichever bot runs first."""
    token = json.loads((base / "pristine" / "credentials.json").read_text())["access_token"]
    query = urllib.parse.urlencode({"since": meta["token"], "full_state": "true", "timeout": 0})
    server.admin_request("GET", f"/_matrix/client/v3/sync?{query}", token)


def _state_token(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT value FROM kv WHERE key = 'sync_token'").fetchone()[0]
    finally:
        db.close()


def _send_ping(server: BenchSynapse, base: Path, meta: dict[str, Any]) -> None:
    """The member sends an encrypted ``!ping`` with its Megolm session (the next message index)."""
    import vodozemac

    pickle_path = base / "outbound.pickle"
    outbound = vodozemac.GroupSession.from_pickle(pickle_path.read_text(), bytes(32))
    plaintext = json.dumps(
        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "!ping"}, "room_id": meta["room"]}
    )
    content = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": meta["member"]["curve25519"],
        "ciphertext": outbound.encrypt(plaintext.encode()).to_base64(),
        "session_id": outbound.session_id,
        "device_id": meta["member"]["device_id"],
    }
    pickle_path.write_text(outbound.pickle(bytes(32)))
    room = urllib.parse.quote(meta["room"])
    server.admin_request(
        "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/{uuid.uuid4().hex}", meta["member"]["token"],
        content,
    )


def _prepare_run(name: str, base: Path, work: Path, server: BenchSynapse, meta: dict[str, Any]) -> BotSetup:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pristine = base / "pristine"
    user = meta["bot"]["user_id"]
    if name in ("ratchet", "ratchet-peer", "ratchet-before"):
        shutil.copytree(pristine, work / "data")
        cfg = ratchet_config(work / "config.yaml", homeserver=server.url, user_id=user, password=BOT_PASSWORD,
                             data_dir=work / "data", plugins={"benchping": {}}, peer_settings=name != "ratchet")
        entry = [str(BOTS_DIR / "ratchet_before.py")] if name == "ratchet-before" else ["-m", "bot"]
        return BotSetup(name, [sys.executable, *entry, "run", "-c", str(cfg)], work)
    if name == "nio":
        from nio.store import SqliteStore

        store = work / "store"
        shutil.copytree(pristine / "crypto", store)
        shutil.copy(pristine / "credentials.json", store / "credentials.json")
        nio_store = SqliteStore(user, meta["bot"]["device_id"], str(store), PICKLE_KEY)
        nio_store.save_sync_token(meta["token"])
        nio_store.database.close()
        setup = prepare_bot("nio", work, homeserver=server.url, user_id=user, password=BOT_PASSWORD, rooms=[])
        setup.env["BENCH_PICKLE_KEY"] = PICKLE_KEY
        return setup
    raise ValueError(name)


def _one_run(name: str, base: Path, server: BenchSynapse, meta: dict[str, Any], work: Path) -> dict[str, Any]:
    setup = _prepare_run(name, base, work, server, meta)
    _send_ping(server, base, meta)
    mark = work / "mark.txt"
    t0 = time.time()
    run = setup.start(work / "bot.log", mark_file=mark)
    try:
        deadline = time.monotonic() + BOT_TIMEOUT
        while not (mark.exists() and mark.read_text().strip()):
            if not run.alive():
                raise RuntimeError(f"{name} exited with {run.proc.returncode}: {run.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} handled nothing within {BOT_TIMEOUT:.0f}s: {run.log_tail()}")
            time.sleep(0.005)
        rss = proc_peak_rss_mb(run.proc.pid)
        cpu = proc_cpu_seconds(run.proc.pid)
        first = float(mark.read_text().split()[0])
        return {"startup_s": first - t0, "peak_rss_mb": rss, "cpu_s": cpu}
    finally:
        run.stop()


def scenario(quick: bool = QUICK) -> dict[str, Any]:
    """Start-up and memory, Ratchet vs bare nio, at the large scale (and a small one, for the scaling)."""
    scales = [(50, 5_000)] if quick else [(50, 5_000), (500, 50_000)]
    repeats = 1 if quick else 3
    out: dict[str, Any] = {"scales": []}
    for rooms, sessions in scales:
        meta = build(rooms, sessions)
        base = _cache_dir(rooms, sessions)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in BOTS}
        server = _server(base)
        errors: dict[str, str] = {}
        try:
            _warm_synapse(server, base, meta)
            with tempfile.TemporaryDirectory(prefix="ratchet-bench-start-", dir=CACHE) as tmp:
                for rep in range(repeats):
                    order = BOTS if rep % 2 == 0 else BOTS[::-1]
                    for name in order:
                        try:
                            res = _one_run(name, base, server, meta, Path(tmp) / name)
                        except Exception as exc:
                            errors[name] = str(exc)[:1500]
                            log(f"startup {name}: {str(exc)[:300]}")
                            continue
                        runs[name].append(res)
                        log(f"startup {rooms} rooms/{meta['sessions']} sessions {name}: "
                            f"{res['startup_s']:.2f}s, peak RSS {res['peak_rss_mb']:.0f} MiB")
        finally:
            server.stop()
        entry = {
            "rooms": rooms,
            "sessions": meta["sessions"],
            "rooms_created_s": meta.get("rooms_created_s"),
            "errors": errors,
            "runs": runs,
            "startup_s": {k: summary([r["startup_s"] for r in v]) for k, v in runs.items()},
            "peak_rss_mb": {k: summary([r["peak_rss_mb"] for r in v]) for k, v in runs.items()},
            "cpu_s": {k: summary([r["cpu_s"] for r in v]) for k, v in runs.items()},
            "ratios": {
                "startup ratchet/nio": ratio_summary([r["startup_s"] for r in runs["ratchet"]],
                                                     [r["startup_s"] for r in runs["nio"]]),
                "peak RSS ratchet/nio": ratio_summary([r["peak_rss_mb"] for r in runs["ratchet"]],
                                                      [r["peak_rss_mb"] for r in runs["nio"]]),
                "startup ratchet-peer/nio": ratio_summary([r["startup_s"] for r in runs["ratchet-peer"]],
                                                          [r["startup_s"] for r in runs["nio"]]),
                "peak RSS ratchet-peer/nio": ratio_summary([r["peak_rss_mb"] for r in runs["ratchet-peer"]],
                                                           [r["peak_rss_mb"] for r in runs["nio"]]),
                "startup ratchet/ratchet-peer": ratio_summary([r["startup_s"] for r in runs["ratchet"]],
                                                              [r["startup_s"] for r in runs["ratchet-peer"]]),
                "startup ratchet-before/nio": ratio_summary([r["startup_s"] for r in runs["ratchet-before"]],
                                                            [r["startup_s"] for r in runs["nio"]]),
                "peak RSS ratchet-before/nio": ratio_summary([r["peak_rss_mb"] for r in runs["ratchet-before"]],
                                                             [r["peak_rss_mb"] for r in runs["nio"]]),
            },
        }
        out["scales"].append(entry)
    return out


if __name__ == "__main__":
    print(json.dumps(scenario(), default=str))
