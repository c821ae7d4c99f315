"""Scenario 1: CPU time per Megolm-encrypted event, offline (no network, no homeserver).

A sync response of 20 rooms x 100 encrypted ``!noop`` messages (real Megolm encryption with vodozemac; 5 senders per
room, each with its own session) is generated once into ``bench/.cache/offline-v1/`` together with the bot's nio
crypto store holding the 100 inbound sessions. Each variant then handles the same raw JSON bytes:

* ``floor``: ``json.loads`` of the batch, then for each event vodozemac's Megolm decryption and ``json.loads`` of the
  plaintext: nothing can do less and still read the messages;
* ``nio``: bare matrix-nio, as a nio bot does it: ``json.loads``, ``SyncResponse.from_dict``, ``receive_response``
  (decryption, room state, callbacks) with a no-op callback for text messages;
* ``ratchet``: Ratchet **as shipped** (``e2ee`` defaults: ``trust: tofu``, cross-signing and key backup on), its full
  pipeline as the sync loop runs it (the client from ``make_client``, so with the fast path and the lazy store;
  ``Runtime._handle_sync`` filtering, routing, the sender trust check, the dispatcher, the exactly-once bookkeeping in
  ``state.db``) down to a no-op command handler (``bench/plugins/benchnoop``), until every handler has finished and
  the sync token is committed. The senders have cross-signing identities and cross-signed devices; the trust policy
  has seen their ``/keys/query`` answer (and pinned them) before the timed pass, as it has in a room after the first
  message. There is no homeserver here, so cross-signing and key backup do no per-sync work in this scenario (their
  requests are measured in the others);
* ``ratchet-peer``: the same with the settings the peers run with (``trust: all``, no cross-signing, no key backup):
  ``ratchet`` / ``ratchet-peer`` is the cost of the tofu trust check per event;
* ``ratchet-before``: ``ratchet-peer`` with nio's own validation and store (``bot.matrix.schemas`` uninstalled), i.e.
  what Ratchet cost before issue 8.

``ratchet-nio-part`` is ``ratchet`` stopped once nio has handled the batch (``json.loads``, ``SyncResponse.from_dict``,
``receive_response`` through Ratchet's client: fast path, lazy store, the state-event guard, decryption), before
Ratchet routes anything: ``ratchet`` minus ``ratchet-nio-part`` is the runtime's share per event (routing, trust,
dispatch, handler, exactly-once records), ``ratchet-nio-part`` minus ``floor`` nio's event objects and checks.

A diagnostic variant splits the difference: ``ratchet-fastpath-only`` (the fast path with nio's plain
``SqliteStore``). (``ratchet-proposed``, the experiment with one transaction per loop turn for the handled records
and no task per handler job, became Ratchet's code in issue 20 and was removed.)

``ratchet-protections`` (issue 19) is ``ratchet`` with the bundled protections plugin loaded beside the no-op handler,
every message checked and none breaking a limit: its ratio to ``ratchet`` is the protections' cost on the hot path.

Each variant runs in its own process (so the fast path patch of one cannot leak into another), a few passes per
process after one warm-up pass; the figure is ``time.process_time()`` per event.

Run one variant by hand: ``python -m bench.offline run ratchet --passes 5 [--profile out.prof]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import gc
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, PLUGINS, PYTHON, QUICK, log, ratio_summary, run_json, summary

VERSION = "offline-v2"  # v2: the senders have cross-signing keys (keys_query.json)
DATA = CACHE / VERSION
BOT_USER = "@benchbot:localhost"
BOT_DEVICE = "BENCHBOTDEV"
PICKLE_KEY = "bench-offline-pickle-key-0123456789"
HOMESERVER = "http://127.0.0.1:9"  # never contacted
N_ROOMS = 20
PER_ROOM = 100
SENDERS_PER_ROOM = 5
N_SENDERS = 10
BASE_TS = 1_760_000_000_000
VARIANTS = ("floor", "nio", "ratchet", "ratchet-peer", "ratchet-before", "ratchet-nio-part")
#: Diagnostic variants (``python -m bench.offline run NAME``; ``scenario(extra=True)``): where the cost goes.
EXTRA_VARIANTS = ("ratchet-fastpath-only", "ratchet-protections")


def _event_id(*parts: Any) -> str:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def generate(data: Path = DATA) -> dict[str, Any]:
    """Build (once) the encrypted sync batch, a warm-up sync with the rooms' state, and the bot's crypto store."""
    meta_path = data / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    import vodozemac
    from nio import AsyncClient, AsyncClientConfig
    from nio.crypto import InboundGroupSession, OlmDevice
    from nio.store import SqliteStore

    from bot.crypto.canonical import canonical_json
    from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds

    log(f"offline: generating {N_ROOMS * PER_ROOM} Megolm-encrypted events into {data}")
    tmp = data.with_name(data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "store").mkdir(parents=True)
    client = AsyncClient(
        HOMESERVER,
        BOT_USER,
        device_id=BOT_DEVICE,
        store_path=str(tmp / "store"),
        config=AsyncClientConfig(store=SqliteStore, encryption_enabled=True, pickle_key=PICKLE_KEY),
    )
    client.restore_login(BOT_USER, BOT_DEVICE, "unused-token")
    assert client.olm and client.store

    senders = []
    devices: dict[str, dict[str, Any]] = {}
    keys_query: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}, "failures": {}}
    for i in range(N_SENDERS):
        account = vodozemac.Account()
        user = f"@sender{i:02d}:localhost"
        device = f"SENDER{i:02d}"
        keys = {"ed25519": account.ed25519_key.to_base64(), "curve25519": account.curve25519_key.to_base64()}
        senders.append((user, device, keys))
        devices[user] = {device: OlmDevice(user, device, keys)}
        # what /keys/query says about the sender: a self-signed device, cross-signed by the sender's identity
        device_keys: dict[str, Any] = {
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"{alg}:{device}": key for alg, key in keys.items()},
        }
        own_sig = account.sign(canonical_json(device_keys)).to_base64()
        cross = CrossSigningKeys.from_seeds(user, CrossSigningSeeds.generate())
        ssk_sigs = cross.sign_device(device_keys)["signatures"][user]
        device_keys["signatures"] = {user: {f"ed25519:{device}": own_sig, **ssk_sigs}}
        keys_query["device_keys"][user] = {device: device_keys}
        keys_query["master_keys"][user] = cross.master_key()
        keys_query["self_signing_keys"][user] = cross.self_signing_key()
    client.store.save_device_keys(devices)

    warm_rooms: dict[str, Any] = {}
    batch_rooms: dict[str, Any] = {}
    n = 0
    for r in range(N_ROOMS):
        room_id = f"!benchroom{r:02d}:localhost"
        members = [senders[(r + k) % N_SENDERS] for k in range(SENDERS_PER_ROOM)]
        sessions = []
        for user, device, keys in members:
            outbound = vodozemac.GroupSession()
            inbound = InboundGroupSession(
                outbound.session_key.to_base64(), keys["ed25519"], keys["curve25519"], room_id
            )
            client.olm.inbound_group_store.add(inbound)
            client.store.save_inbound_group_session(inbound)
            sessions.append((user, device, keys, outbound))
        creator = members[0][0]
        state = [
            _state(room_id, "m.room.create", "", creator, {"creator": creator, "room_version": "10"}, 0),
            _state(room_id, "m.room.member", creator, creator, {"membership": "join"}, 1),
            _state(
                room_id, "m.room.power_levels", "", creator, {"users": {creator: 100}, "users_default": 0}, 2
            ),
            _state(room_id, "m.room.join_rules", "", creator, {"join_rule": "invite"}, 3),
            _state(room_id, "m.room.encryption", "", creator, {"algorithm": "m.megolm.v1.aes-sha2"}, 4),
            _state(room_id, "m.room.member", BOT_USER, BOT_USER, {"membership": "join"}, 5),
        ]
        for k, (user, _d, _k) in enumerate(members[1:]):
            state.append(_state(room_id, "m.room.member", user, user, {"membership": "join"}, 6 + k))
        warm_rooms[room_id] = _room(state, [])
        events = []
        for k in range(PER_ROOM):
            user, device, keys, outbound = sessions[k % len(sessions)]
            plaintext = json.dumps(
                {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "!noop"}, "room_id": room_id},
                separators=(",", ":"),
            )
            ciphertext = outbound.encrypt(plaintext.encode()).to_base64()
            events.append(
                {
                    "type": "m.room.encrypted",
                    "sender": user,
                    "event_id": _event_id(room_id, k),
                    "origin_server_ts": BASE_TS + n,
                    "unsigned": {"age": 120},
                    "content": {
                        "algorithm": "m.megolm.v1.aes-sha2",
                        "sender_key": keys["curve25519"],
                        "ciphertext": ciphertext,
                        "session_id": outbound.session_id,
                        "device_id": device,
                    },
                }
            )
            n += 1
        batch_rooms[room_id] = _room([], events)
    warm = _sync("s0", warm_rooms)
    batch = _sync("s1", batch_rooms)
    (tmp / "warm.json").write_text(json.dumps(warm, separators=(",", ":")))
    (tmp / "batch.json").write_text(json.dumps(batch, separators=(",", ":")))
    (tmp / "keys_query.json").write_text(json.dumps(keys_query))
    meta = {"version": VERSION, "events": n, "rooms": N_ROOMS, "sessions": N_ROOMS * SENDERS_PER_ROOM}
    (tmp / "meta.json").write_text(json.dumps(meta))
    with contextlib.suppress(Exception):
        client.store.database.close()
    shutil.rmtree(data, ignore_errors=True)
    tmp.rename(data)
    return meta


def _state(room_id: str, etype: str, state_key: str, sender: str, content: dict, k: int) -> dict:
    return {
        "type": etype,
        "state_key": state_key,
        "sender": sender,
        "content": content,
        "event_id": _event_id(room_id, "state", k),
        "origin_server_ts": BASE_TS - 1000 + k,
        "unsigned": {"age": 5000},
    }


def _room(state: list, timeline: list) -> dict:
    return {
        "timeline": {"events": timeline, "limited": False, "prev_batch": "p0"},
        "state": {"events": state},
        "ephemeral": {"events": []},
        "account_data": {"events": []},
        "summary": {},
        "unread_notifications": {"notification_count": 0, "highlight_count": 0},
    }


def _sync(next_batch: str, rooms: dict) -> dict:
    return {
        "next_batch": next_batch,
        "rooms": {"join": rooms, "invite": {}, "leave": {}},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {"signed_curve25519": 50},
        "presence": {"events": []},
        "account_data": {"events": []},
    }


def _batches(passes: int) -> list[bytes]:
    raw = (DATA / "batch.json").read_bytes()
    marker = b'"next_batch":"s1"'
    assert marker in raw
    return [raw.replace(marker, b'"next_batch":"s1-%d"' % k) for k in range(passes)]


# -- the variants (each in its own process) -------------------------------------------------------------------------


async def _run_floor(passes: int) -> tuple[list[float], dict]:
    import vodozemac
    from nio.store import SqliteStore

    store = SqliteStore(BOT_USER, BOT_DEVICE, str(DATA / "store"), PICKLE_KEY)
    sessions = {s.id: s._session for s in store.load_inbound_group_sessions()}
    loads = json.loads
    from_b64 = vodozemac.MegolmMessage.from_base64
    out = []
    n_events = 0
    for raw in _batches(passes):
        gc.collect()
        t0 = time.process_time()
        batch = loads(raw)
        n_events = 0
        for room in batch["rooms"]["join"].values():
            for event in room["timeline"]["events"]:
                content = event["content"]
                decrypted = sessions[content["session_id"]].decrypt(from_b64(content["ciphertext"]))
                payload = loads(decrypted.plaintext)
                assert payload["content"]["body"] == "!noop"
                n_events += 1
        out.append((time.process_time() - t0) / n_events * 1e6)
    return out, {"events": n_events}


async def _run_nio(passes: int, work: Path) -> tuple[list[float], dict]:
    from nio import AsyncClient, AsyncClientConfig, RoomMessageText, SyncResponse
    from nio.store import SqliteStore

    shutil.copytree(DATA / "store", work / "store")
    client = AsyncClient(
        HOMESERVER,
        BOT_USER,
        device_id=BOT_DEVICE,
        store_path=str(work / "store"),
        config=AsyncClientConfig(store=SqliteStore, encryption_enabled=True, pickle_key=PICKLE_KEY),
    )
    client.restore_login(BOT_USER, BOT_DEVICE, "unused-token")
    seen = [0]

    async def on_text(room, event) -> None:
        seen[0] += 1

    client.add_event_callback(on_text, RoomMessageText)
    await client.receive_response(SyncResponse.from_dict(json.loads((DATA / "warm.json").read_bytes())))
    out = []
    for raw in _batches(passes):
        seen[0] = 0
        gc.collect()
        t0 = time.process_time()
        resp = SyncResponse.from_dict(json.loads(raw))
        await client.receive_response(resp)
        elapsed = time.process_time() - t0
        assert seen[0] == N_ROOMS * PER_ROOM, seen[0]
        out.append(elapsed / seen[0] * 1e6)
    await client.close()
    return out, {"events": seen[0]}


class OfflineBot:
    """Ratchet's runtime pieces wired as ``Runtime.run()`` wires them, fed with raw sync JSON instead of the network."""

    def __init__(self, work: Path, *, fast: bool, lazy: bool = True, extra_plugins: str = "",
                 peer_settings: bool = False) -> None:
        self.work = work
        self.fast = fast
        self.lazy = lazy
        self.extra_plugins = extra_plugins
        #: the e2ee settings the peers run with instead of Ratchet's defaults (see docs/performance.md)
        self.peer_settings = peer_settings
        self.bot: Any = None

    def config_text(self) -> str:
        return (
            f"homeserver: {HOMESERVER}\nuser_id: '{BOT_USER}'\naccess_token: unused-token\n"
            f"data_dir: {self.work / 'data'}\npickle_key: {PICKLE_KEY}\n"
            f"plugins: {{benchnoop: {{}}{self.extra_plugins}}}\nplugin_dirs: ['{PLUGINS}']\nlog_level: WARNING\n"
            + ("e2ee: {trust: all, cross_signing: false, key_backup: false}\n" if self.peer_settings else "")
        )

    async def open(self) -> None:
        import dataclasses

        from nio.store import SqliteStore

        from bot.config import parse_config
        from bot.matrix import schemas as fastpath
        from bot.matrix.client import make_client

        cfg = parse_config(self.config_text())
        (self.work / "data" / "crypto").mkdir(parents=True)
        shutil.copy(DATA / "store" / f"{BOT_USER}_{BOT_DEVICE}.db", self.work / "data" / "crypto")
        client = make_client(HOMESERVER, BOT_USER, self.work / "data" / "crypto", PICKLE_KEY, BOT_DEVICE)
        if not self.fast:
            fastpath.uninstall()
        if not self.lazy:
            client.config = dataclasses.replace(client.config, store=SqliteStore)
        client.restore_login(BOT_USER, BOT_DEVICE, "unused-token")
        self.cfg = cfg
        self.client = client
        self.bot = None
        from nio import SyncResponse

        await client.receive_response(SyncResponse.from_dict(json.loads((DATA / "warm.json").read_bytes())))
        if self.fast:  # what the runtime does once its first sync is handled (not in 'before': it did not)
            from bot.runtime.runtime import freeze_long_lived

            freeze_long_lived()

    async def fresh_state(self, k: int) -> None:
        """A new state.db, plugin host and dispatcher (so no event counts as handled already)."""
        from bot.runtime.runtime import Runtime
        from bot.storage.backend import SqliteStorage

        if self.bot is not None:
            await self.bot.host.unload_all()
            await self.bot.dispatcher.close()
            self.bot.state.close()
        self.bot = bot = Runtime(self.cfg, self.client, SqliteStorage(self.work / f"run-{k}"))
        await bot.manager.start_all()
        assert "benchnoop" in bot.host.plugins and not bot.host.errors, bot.host.errors
        # the senders' /keys/query answer, as nio's sync loop fetches it for the rooms' members (the trust policy
        # pins their identities from it); not timed
        from nio import KeysQueryResponse

        body = json.loads((DATA / "keys_query.json").read_bytes())
        resp = KeysQueryResponse.from_dict(body)
        resp.ratchet_body = body
        await self.client.receive_response(resp)
        assert not self.client.olm.users_for_key_query & set(body["device_keys"]), "senders still outdated"

    async def feed(self, raw: bytes, *, route: bool = True) -> int:
        """What the sync loop does with one response: parse, let nio handle it, route, wait until handled.

        ``route=False`` stops after nio (``ratchet-nio-part``); returns how many timeline events nio decrypted."""
        from nio import SyncResponse

        from bot.matrix.sync import SyncBatch

        bot = self.bot
        resp = SyncResponse.from_dict(json.loads(raw))
        await bot.client.receive_response(resp)
        decrypted = sum(
            1 for room in resp.rooms.join.values() for e in room.timeline.events if getattr(e, "decrypted", False)
        )
        if not route:
            return decrypted
        await bot._handle_sync(SyncBatch.from_response(resp, BOT_USER), initial=False, resumed=False)
        while bot._background:
            await asyncio.gather(*list(bot._background))
        return decrypted

    async def close(self) -> None:
        bot = self.bot
        if bot is not None:
            await bot.host.unload_all()
            await bot.dispatcher.close()
            bot.state.close()
        await self.client.close()


#: ``ratchet-protections``: the bundled protections plugin beside the no-op handler, every protection on, with a flood
#: burst no sender reaches in the batch (each sends 20 messages per room at once): the cost of checking every message,
#: not of acting on a violation (which waits on the homeserver anyway).
PROTECTIONS = ", protections: {flood: {burst: 100000}}"


async def _run_ratchet(passes: int, work: Path, *, fast: bool, lazy: bool = True, extra_plugins: str = "",
                       peer_settings: bool = False, route: bool = True) -> tuple[list[float], dict]:
    from bot.matrix import schemas as fastpath

    ob = OfflineBot(work, fast=fast, lazy=lazy, extra_plugins=extra_plugins, peer_settings=peer_settings)
    await ob.open()
    out = []
    handled = 0
    for k, raw in enumerate(_batches(passes)):
        await ob.fresh_state(k)
        before = ob.bot.stats.events_routed
        fastpath.stats.reset()
        gc.collect()
        t0 = time.process_time()
        decrypted = await ob.feed(raw, route=route)
        elapsed = time.process_time() - t0
        if not route:  # nio's part only: every event decrypted, nothing routed
            assert decrypted == N_ROOMS * PER_ROOM, decrypted
            handled = decrypted
            out.append(elapsed / handled * 1e6)
            continue
        handled = ob.bot.stats.events_routed - before
        rows = ob.bot.state._db.execute("SELECT count(*) FROM handled WHERE plugin = 'benchnoop'").fetchone()[0]
        assert handled == N_ROOMS * PER_ROOM and rows == handled, (handled, rows)
        assert ob.bot.state.sync_token == f"s1-{k}", ob.bot.state.sync_token
        out.append(elapsed / handled * 1e6)
    extra = {"events": handled, "fast_checks": fastpath.stats.fast, "slow_checks": fastpath.stats.slow,
             "trust": ob.bot.trust.mode, "sender_trusted": ob.bot.trust.is_device_trusted("@sender00:localhost",
                                                                                          "SENDER00")}
    await ob.close()
    return out, extra


async def run_variant(variant: str, passes: int, profile: str | None = None) -> dict[str, Any]:
    generate()
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as tmp:
        work = Path(tmp)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        if variant == "floor":
            values, extra = await _run_floor(passes + 1)
        elif variant == "nio":
            values, extra = await _run_nio(passes + 1, work)
        elif variant == "ratchet":
            values, extra = await _run_ratchet(passes + 1, work, fast=True)
        elif variant == "ratchet-peer":
            values, extra = await _run_ratchet(passes + 1, work, fast=True, peer_settings=True)
        elif variant == "ratchet-before":
            values, extra = await _run_ratchet(passes + 1, work, fast=False, lazy=False, peer_settings=True)
        elif variant == "ratchet-nio-part":
            values, extra = await _run_ratchet(passes + 1, work, fast=True, route=False)
        elif variant == "ratchet-fastpath-only":
            values, extra = await _run_ratchet(passes + 1, work, fast=True, lazy=False)
        elif variant == "ratchet-protections":
            values, extra = await _run_ratchet(passes + 1, work, fast=True, extra_plugins=PROTECTIONS)
        else:
            raise SystemExit(f"unknown variant {variant}")
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
    return {"variant": variant, "us_per_event": values[1:], "warmup": values[0], **extra}


# -- the scenario -------------------------------------------------------------------------------------------------


def scenario(quick: bool = QUICK) -> dict[str, Any]:
    """Run every variant in alternating processes; returns per-variant samples and the ratios."""
    meta = generate()
    procs = 1 if quick else 3
    passes = 3 if quick else 4
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    extras: dict[str, Any] = {}
    for rep in range(procs):
        order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[: rep % len(VARIANTS)]
        for variant in order:
            res = run_json(
                [PYTHON, "-m", "bench.offline", "run", variant, "--passes", str(passes)], timeout=600
            )
            samples[variant].extend(res["us_per_event"])
            extras[variant] = {k: v for k, v in res.items() if k not in ("us_per_event", "variant")}
            log(f"offline {variant}: {', '.join(f'{v:.0f}' for v in res['us_per_event'])} us/event")
    result: dict[str, Any] = {
        "meta": meta,
        "passes": passes,
        "processes": procs,
        "us_per_event": {v: summary(samples[v]) for v in VARIANTS},
        "samples": samples,
        "extras": extras,
        "ratios": {
            "ratchet/nio": ratio_summary(samples["ratchet"], samples["nio"]),
            "ratchet/floor": ratio_summary(samples["ratchet"], samples["floor"]),
            "ratchet-peer/nio": ratio_summary(samples["ratchet-peer"], samples["nio"]),
            "ratchet-peer/floor": ratio_summary(samples["ratchet-peer"], samples["floor"]),
            "ratchet/ratchet-peer": ratio_summary(samples["ratchet"], samples["ratchet-peer"]),
            "nio/floor": ratio_summary(samples["nio"], samples["floor"]),
            "ratchet-before/nio": ratio_summary(samples["ratchet-before"], samples["nio"]),
            "ratchet-peer/ratchet-before": ratio_summary(samples["ratchet-peer"], samples["ratchet-before"]),
            "ratchet-nio-part/floor": ratio_summary(samples["ratchet-nio-part"], samples["floor"]),
        },
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.offline")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run one variant in this process and print its JSON result")
    run.add_argument("variant", choices=VARIANTS + EXTRA_VARIANTS)
    run.add_argument("--passes", type=int, default=5)
    run.add_argument("--profile", help="write cProfile stats of the whole run to this file")
    sub.add_parser("generate", help="build the cached batch")
    sub.add_parser("scenario", help="run the whole scenario and print its JSON result")
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        print(json.dumps(generate()))
    elif args.cmd == "run":
        print(json.dumps(asyncio.run(run_variant(args.variant, args.passes, args.profile))))
    else:
        print(json.dumps(scenario()))


if __name__ == "__main__":
    sys.exit(main())
