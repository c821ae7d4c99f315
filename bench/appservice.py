"""Appservice mode vs relay mode (issue 16's load figure, issue 20 item 6): the same Ratchet, the same plugin, the
same kind of rooms on the same Synapse, in one run; the only variable is how events reach the bot (the homeserver's
transactions, ``PUT /_matrix/app/v1/transactions``, or the bot's own ``/sync``).

One Synapse loads the registration written by ``ratchet appservice registration`` (and the experimental features
appservice encryption needs: MSC2409 to-device events, MSC3202 device lists and key counts). Two bots:

* **appservice**: ``@asbench:localhost``, the registration's ``sender_localpart``, with an ``appservice:`` section
  (its own device through MSC4190, no ghosts needed: the benchmark is about inbound events);
* **relay**: ``@relaybench:localhost``, an ordinary account with a password (``/sync``).

Both run as shipped (``python -m bot run``, the ``e2ee`` defaults of ``bot/config.py``; the appservice bot has no key
backup, which appservice mode does not do) with the same two plugins: the bundled ``ping`` (used only to warm up:
every room answers before anything is measured, so room keys are exchanged) and ``asbench`` (written by this file
into the work dir): ``!asb <i>`` appends ``i`` and ``time.time()`` to a file and does nothing else, **no reply**.
Each bot has its own rooms, created by the same member the first time the bot runs: 10 unencrypted and 10 encrypted
(Megolm), so the appservice never receives the relay bot's traffic and vice versa.

A **burst**: the member's background sync is paused (it would otherwise fetch and decrypt every message it sends,
the same in both modes, on the same two cores), then the member sends N ``!asb <i>`` messages, one loop per room
sending one message after another (10 requests in flight), as fast as Synapse accepts them. The window runs from
just before the first send to the moment the bench sees the N-th handled line (polled every 50 ms); the figures are

* handled messages per second: N / (last handled time stamp - first send);
* the bot process's CPU time (user + system from ``/proc/<pid>/stat``, all threads) per handled message;
* Synapse's CPU time (its one process, the same way) per handled message: in appservice mode it includes the
  appservice sender pushing transactions, in relay mode serving the bot's ``/sync``; both include accepting the
  member's sends;
* the send rate the member achieved, and the latency from each send's answer to its handling (p50, p95).

Each bot process is started, warmed up, runs one unencrypted and one encrypted burst (their order alternating with
the repetition), and stops. Three repetitions in full mode (one with ``BENCH_QUICK``), the order of the two bots
reversed every repetition. Ratios are appservice / relay: the median of the runs and the min–max of the per-run
ratios. No target exists for them, so no verdict. The load average at the start and the end, and the commit, are
recorded (the machine is shared).

**Backlog variant, opt-in** (``BENCH_AS_BACKLOG=900``): after the bursts, the bot process is stopped (SIGSTOP) while
that many messages are sent, and continued a second later; the window (time, CPU) runs from continuing it to the last
handled message, so the sends are outside it: how fast each path hands the bot a backlog, Synapse's CPU being delivery
only. It is off by default because appservice mode cannot take such a backlog today: a transaction body that reaches
the appservice in more than one read (a hundred encrypted events did, in a smoke run) is refused as ``400 M_NOT_JSON``
(``bot/appservice/server.py`` reads it with one ``request.content.read(MAX_TRANSACTION + 1)``, which returns what is
buffered, not the whole body), and Synapse retries it with backoff until a retry happens to arrive in one piece. The
appservice's figures would measure that, and a stuck transaction would hold later bursts' events behind it.

``python -m bench --only appservice`` runs it; ``python -m bench.appservice_report --docs`` regenerates
``results.md`` and docs/performance.md's "Appservice vs relay" tables from ``results.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml
from nio import RoomCreateResponse, RoomSendResponse

from bench.common import CACHE, QUICK, ROOT, log, percentile, proc_cpu_seconds, ratio_summary, summary
from bench.homeserver import BenchSynapse
from bench.member import BenchMember
from bench.peers import BotSetup, free_port, ratchet_config

#: Seconds between the last send of a backlog and continuing the stopped bot.
BACKLOG_SETTLE = 1.0
MODES = ("appservice", "relay")
KINDS = ("plain", "encrypted")
AS_BOT = "@asbench:localhost"
RELAY_LOCALPART = "relaybench"
EXPERIMENTAL = {
    "msc2409_to_device_messages_enabled": True,
    "msc3202_transaction_extensions": True,
}

PLUGIN = '''
"""``!asb <i>``: the appservice benchmark's handler. Appends ``i`` and the time it ran to a file; no reply."""
import time

from bot import Context, Plugin, command


class Asbench(Plugin):
    @command("asb", help="benchmark no-op")
    async def asb(self, ctx: Context, i: int) -> None:
        with open(self.config["path"], "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
            fh.write(f"{i}\\t{time.time()}\\n")
'''


def _provenance(start: dict[str, Any] | None = None) -> dict[str, Any]:
    """The commit measured and the files of bot/ with uncommitted changes (the working tree is shared)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "bot").splitlines() if line.strip()]
    out = {"finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git("rev-parse", "--short", "HEAD").strip(),
           "bot_uncommitted": dirty}
    if start is not None:
        out["bot_uncommitted"] = list(dict.fromkeys(start["bot_uncommitted"] + dirty))
        if start["commit"] != out["commit"]:
            out["commit"] = f"{start['commit']} (at the start; {out['commit']} at the end)"
    return out


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


class _Member(BenchMember):
    """The bench member, whose background sync can be paused during a burst."""

    async def pause_sync(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    def resume_sync(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sync_forever())

    async def create_plain_rooms(self, count: int, invite: str) -> list[str]:
        rooms = []
        for _ in range(count):
            resp = await self.client.room_create(invite=[invite])
            if not isinstance(resp, RoomCreateResponse):
                raise RuntimeError(f"room creation failed: {resp}")
            rooms.append(resp.room_id)
        return rooms


def _read_marks(path: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 2:
                with contextlib.suppress(ValueError):
                    out.setdefault(int(parts[0]), float(parts[1]))
    return out


async def _burst(member: _Member, rooms: list[str], n: int, mark: Path, bot_pid: int, hs_pid: int,
                 timeout: float, *, backlog: bool = False) -> dict[str, Any]:
    """N ``!asb i`` messages spread over ``rooms`` (one sequential loop per room), until the bot handled them.

    With ``backlog`` the bot process is stopped (SIGSTOP) while they are sent, and the window (time and CPU) starts
    when it is continued (SIGCONT): how fast each path hands the bot a backlog, the sends outside the window."""
    mark.write_text("")  # noqa: ASYNC240 - outside the measured window, nothing else runs meanwhile
    await member.pause_sync()
    if backlog:
        os.kill(bot_pid, signal.SIGSTOP)
    sent_at: dict[int, float] = {}
    errors = 0

    async def room_loop(room: str, idxs: list[int]) -> None:
        nonlocal errors
        for i in idxs:
            try:
                resp = await member.client.room_send(
                    room, "m.room.message", {"msgtype": "m.text", "body": f"!asb {i}"},
                    ignore_unverified_devices=True,
                )
            except Exception:
                errors += 1
                continue
            if isinstance(resp, RoomSendResponse):
                sent_at[i] = time.time()
            else:
                errors += 1

    per_room = [list(range(k, n, len(rooms))) for k in range(len(rooms))]
    try:
        bot0, hs0, me0 = proc_cpu_seconds(bot_pid), proc_cpu_seconds(hs_pid), time.process_time()
        t0 = time.time()
        await asyncio.gather(*(room_loop(r, idxs) for r, idxs in zip(rooms, per_room, strict=True)))
        t_sent = time.time()
        send_s = t_sent - t0
        if backlog:
            await asyncio.sleep(BACKLOG_SETTLE)  # Synapse has persisted and queued everything
            bot0, hs0, me0 = proc_cpu_seconds(bot_pid), proc_cpu_seconds(hs_pid), time.process_time()
            t0 = time.time()
            os.kill(bot_pid, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        while True:
            marks = _read_marks(mark)
            if len(marks) >= len(sent_at) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        bot1, hs1, me1 = proc_cpu_seconds(bot_pid), proc_cpu_seconds(hs_pid), time.process_time()
        t_seen = time.time()
    finally:
        if backlog:
            with contextlib.suppress(ProcessLookupError):
                os.kill(bot_pid, signal.SIGCONT)
        member.resume_sync()
    handled = {i: t for i, t in marks.items() if i in sent_at}
    h = len(handled)
    t_last = max(handled.values()) if handled else math.nan
    lat = [(t - sent_at[i]) * 1000 for i, t in handled.items()]
    return {
        "messages": n,
        "sent": len(sent_at),
        "send_errors": errors,
        "handled": h,
        "window_s": t_last - t0,
        "send_s": send_s,
        "handled_per_s": h / (t_last - t0) if h else math.nan,
        "sent_per_s": len(sent_at) / send_s,
        "bot_cpu_us_per_msg": 1e6 * (bot1 - bot0) / h if h else math.nan,
        "synapse_cpu_us_per_msg": 1e6 * (hs1 - hs0) / h if h else math.nan,
        "total_cpu_us_per_msg": 1e6 * (bot1 - bot0 + hs1 - hs0) / h if h else math.nan,
        "member_cpu_us_per_msg": 1e6 * (me1 - me0) / h if h else math.nan,
        "bot_cpu_s": bot1 - bot0,
        "synapse_cpu_s": hs1 - hs0,
        "cpu_window_s": t_seen - t0,
        "latency_p50_ms": percentile(lat, 50),
        "latency_p95_ms": percentile(lat, 95),
        "latency_max_ms": max(lat) if lat else math.nan,
    }


def _as_config(path: Path, *, homeserver: str, data_dir: Path, plugins: dict[str, Any], plugin_dir: Path,
               port: int) -> Path:
    data = {
        "homeserver": homeserver,
        "user_id": AS_BOT,
        "data_dir": str(data_dir),
        "pickle_key": "bench-ratchet-pickle-key-0123456789",
        "invites": {"accept_from": ["@*:localhost"]},
        "plugins": plugins,
        "plugin_dirs": [str(plugin_dir)],
        "log_level": "WARNING",
        "appservice": {"id": "ratchet-bench", "port": port},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def _scenario(quick: bool) -> dict[str, Any]:
    n = int(os.environ.get("BENCH_AS_MESSAGES") or (300 if quick else 2000))
    n_rooms = 10
    # The backlog variant is opt-in (BENCH_AS_BACKLOG=900: below 100 per room, as Ratchet's sync filter asks for 100
    # timeline events per room, so /sync has no gap): see the module docstring for why it is off by default.
    n_backlog = int(os.environ.get("BENCH_AS_BACKLOG") or 0)
    repeats = 1 if quick else 3
    timeout = 120.0
    started = _provenance()
    load_start = loadavg()
    base = Path(tempfile.mkdtemp(prefix="ratchet-bench-appservice-", dir=CACHE))
    plugin_dir = base / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "asbench.py").write_text(textwrap.dedent(PLUGIN))
    registration = base / "registration.yaml"
    server = BenchSynapse(base / "synapse", extra_config={
        "app_service_config_files": [str(registration)], "experimental_features": EXPERIMENTAL,
    })
    marks = {m: base / f"{m}-handled.tsv" for m in MODES}
    plugins = {m: {"ping": {}, "asbench": {"path": str(marks[m])}} for m in MODES}
    configs = {"appservice": _as_config(base / "appservice" / "config.yaml", homeserver=server.url,
                                        data_dir=base / "appservice" / "data", plugins=plugins["appservice"],
                                        plugin_dir=plugin_dir, port=free_port())}
    registration_cmd = [sys.executable, "-m", "bot", "appservice", "registration", "-c", str(configs["appservice"]),
                        "-o", str(registration)]
    # before anything else runs in this event loop
    done = subprocess.run(registration_cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)  # noqa: ASYNC221
    if done.returncode != 0:
        raise RuntimeError(f"ratchet appservice registration failed: {done.stderr[-2000:]}")
    server.start(timeout=120)
    member = None
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {k: [] for k in KINDS} for m in MODES}
    backlog_runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {k: [] for k in KINDS} for m in MODES}
    errors: dict[str, str] = {}
    rooms: dict[str, dict[str, list[str]]] = {}
    bots = {"appservice": AS_BOT}
    try:
        relay = server.register_user(RELAY_LOCALPART, "relaybench-password-123")
        bots["relay"] = relay.user_id
        configs["relay"] = ratchet_config(
            base / "relay" / "config.yaml", homeserver=server.url, user_id=relay.user_id, password=relay.password,
            data_dir=base / "relay" / "data", plugins=plugins["relay"], plugin_dirs=[str(plugin_dir)],
        )
        mu = server.register_user("asbenchmember", "asbenchmember-password-123")
        member = _Member(server.url, mu.user_id, mu.password, base / "member")
        await member.start()
        for rep in range(repeats):
            for mode in MODES if rep % 2 == 0 else tuple(reversed(MODES)):
                bot = bots[mode]
                setup = BotSetup(mode, [sys.executable, "-m", "bot", "run", "-c", str(configs[mode])], ROOT)
                run = setup.start(base / mode / f"bot-{rep}.log")
                try:
                    if mode not in rooms:
                        await asyncio.sleep(3.0)  # let it start before it is invited (invites then reach it live)
                        rooms[mode] = {"plain": await member.create_plain_rooms(n_rooms, bot),
                                       "encrypted": await member.create_rooms(n_rooms, bot)}
                        await member.wait_rooms(rooms[mode]["plain"] + rooms[mode]["encrypted"], bot, timeout=120)
                    every = rooms[mode]["plain"] + rooms[mode]["encrypted"]
                    answered = await member.warm_up(every, bot, timeout=120)
                    if answered < len(every):
                        raise RuntimeError(f"{mode} answered in {answered} of {len(every)} rooms: "
                                           f"{run.log_tail(15)}")
                    await asyncio.sleep(1.0)
                    for kind in KINDS if rep % 2 == 0 else tuple(reversed(KINDS)):
                        res = await _burst(member, rooms[mode][kind], n, marks[mode], run.proc.pid, server.pid or 0,
                                           timeout)
                        res["rep"] = rep
                        runs[mode][kind].append(res)
                        log(f"appservice-bench {mode} {kind} run {rep + 1}: {res['handled']}/{n} handled, "
                            f"{res['handled_per_s']:.1f} msg/s (sent {res['sent_per_s']:.1f}/s), bot "
                            f"{res['bot_cpu_us_per_msg']:.0f} µs/msg, Synapse {res['synapse_cpu_us_per_msg']:.0f} "
                            f"µs/msg, latency p50 {res['latency_p50_ms']:.0f} p95 {res['latency_p95_ms']:.0f} ms")
                        if not run.alive():
                            raise RuntimeError(f"{mode} bot exited: {run.log_tail(15)}")
                        await asyncio.sleep(2.0)
                    for kind in (KINDS if rep % 2 == 0 else tuple(reversed(KINDS))) if n_backlog else ():
                        res = await _burst(member, rooms[mode][kind], n_backlog, marks[mode], run.proc.pid,
                                           server.pid or 0, timeout, backlog=True)
                        res["rep"] = rep
                        backlog_runs[mode][kind].append(res)
                        log(f"appservice-bench backlog {mode} {kind} run {rep + 1}: {res['handled']}/{n_backlog} "
                            f"handled in {res['window_s']:.2f} s, {res['handled_per_s']:.1f} msg/s, bot "
                            f"{res['bot_cpu_us_per_msg']:.0f} µs/msg, Synapse {res['synapse_cpu_us_per_msg']:.0f} "
                            f"µs/msg")
                        if not run.alive():
                            raise RuntimeError(f"{mode} bot exited: {run.log_tail(15)}")
                        await asyncio.sleep(2.0)
                except Exception as exc:
                    errors[f"{mode} run {rep + 1}"] = f"{type(exc).__name__}: {exc}"[:1500]
                    log(f"appservice-bench {mode} run {rep + 1}: {str(exc)[:300]}")
                finally:
                    run.stop()
    finally:
        if member is not None:
            await member.close()
        server.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(base, ignore_errors=True)
    out = _summarize(runs, errors, n=n, n_rooms=n_rooms, repeats=repeats)
    if n_backlog:
        backlog = _summarize(backlog_runs, {}, n=n_backlog, n_rooms=n_rooms, repeats=repeats)
        out["backlog"] = {"params": {**backlog["params"], "settle_s": BACKLOG_SETTLE}, "runs": backlog_runs,
                          "figures": backlog["figures"], "ratios": backlog["ratios"]}
    out["loadavg"] = {"start": load_start, "end": loadavg()}
    out.update(_provenance(started))
    return out


FIGURES = ("handled_per_s", "bot_cpu_us_per_msg", "synapse_cpu_us_per_msg", "total_cpu_us_per_msg", "sent_per_s",
           "latency_p50_ms", "latency_p95_ms", "member_cpu_us_per_msg")


def _summarize(runs: dict[str, dict[str, list[dict[str, Any]]]], errors: dict[str, str], *, n: int, n_rooms: int,
               repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "params": {"messages": n, "rooms": n_rooms, "repeats": repeats, "handler": "asbench (no reply)"},
        "runs": runs,
        "errors": errors,
        "figures": {m: {k: {f: summary([r[f] for r in runs[m][k]]) for f in FIGURES} for k in KINDS} for m in MODES},
    }
    ratios: dict[str, Any] = {}
    for kind in KINDS:
        a = {r["rep"]: r for r in runs["appservice"][kind]}
        b = {r["rep"]: r for r in runs["relay"][kind]}
        paired = sorted(set(a) & set(b))
        for f in FIGURES:
            ratios[f"{kind} {f} appservice/relay"] = ratio_summary([a[i][f] for i in paired],
                                                                   [b[i][f] for i in paired])
        # Synapse's CPU per message is mostly accepting the member's sends (the same in both modes): the difference
        # appservice - relay, per repetition, is what delivering to the bot costs it more (or less) per message.
        for f in ("synapse_cpu_us_per_msg", "bot_cpu_us_per_msg", "total_cpu_us_per_msg"):
            ratios[f"{kind} {f} appservice-relay"] = summary([a[i][f] - b[i][f] for i in paired])
    # Encrypted / plain within each mode: what Megolm costs each path.
    for mode in MODES:
        a = {r["rep"]: r for r in runs[mode]["encrypted"]}
        b = {r["rep"]: r for r in runs[mode]["plain"]}
        paired = sorted(set(a) & set(b))
        for f in ("bot_cpu_us_per_msg", "handled_per_s"):
            ratios[f"{mode} {f} encrypted/plain"] = ratio_summary([a[i][f] for i in paired],
                                                                  [b[i][f] for i in paired])
    out["ratios"] = ratios
    return out


def scenario(quick: bool = QUICK) -> dict[str, Any]:
    return asyncio.run(_scenario(quick))


if __name__ == "__main__":
    res = scenario()
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, default=str))
