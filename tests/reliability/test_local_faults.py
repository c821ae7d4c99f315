"""Faults on the bot's own side: misbehaving plugins, a read-only or full disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import ledger_lines, wait_handled_then_sentinels, wait_lines

pytestmark = pytest.mark.e2e

#: Fault 12's handler timeout: long enough that five pings fit before the hanging handler is cancelled, even on a
#: busy machine (the pings are checked against that moment, not against a clock).
HANG_TIMEOUT = 15


async def test_faulty_plugins_do_not_slow_the_others_and_the_blocker_is_named(
    synapse, test_plugins_dir, bot_in_room
):
    """Fault 12: a plugin that raises, one that blocks the loop for 2 s, one that never returns and one that floods
    replies; ping keeps answering without waiting for them, and the log names the plugin that blocked the loop."""
    t = await bot_in_room(
        synapse, plugins={"ping": {}, "faulty": {}}, plugin_dirs=[test_plugins_dir], handler_timeout=HANG_TIMEOUT,
    )
    proc, member, room, bot_user = t.proc, t.member, t.room, t.bot_user
    hang_timed_out = f"command hang did not finish within {HANG_TIMEOUT}s"

    async def ping_latency() -> float:
        t0 = time.monotonic()
        ping = await member.send(room, "!ping")
        await member.expect_reply(room, ping, sender=bot_user.user_id, timeout=30)
        return time.monotonic() - t0

    normal = max([await ping_latency() for _ in range(3)])

    boom = await member.send(room, "!boom")
    failed = await member.expect_reply(room, boom, sender=bot_user.user_id)
    assert "failed (RuntimeError)" in failed.body
    await member.send(room, "!block")
    await proc.wait_for_log("blocked the event loop", timeout=30)
    flood = await member.send(room, "!flood 60")
    await member.send(room, "!hang")
    await member.expect(lambda r, e: r == room and getattr(e, "body", "") == "flood 5", 30, "the flood")
    # Order, not speed: every ping is answered while faulty's !hang (queued behind its flood) has not timed out
    # yet, so ping never waits for the flood or the hang (a ping behind them would come after the timeout).
    during = []
    for _ in range(5):
        during.append(await ping_latency())
        assert hang_timed_out not in proc.log_text(), "a ping waited for the hanging plugin"
    await proc.wait_for_log(hang_timed_out, timeout=HANG_TIMEOUT + 30)
    assert await proc.stop() == 0
    print(f"ping latency: normal {normal:.2f}s, while flooding and hanging {max(during):.2f}s")
    log = proc.log_text()
    assert "plugin faulty: command block blocked the event loop for 2." in log
    assert "plugin faulty: command boom raised" in log
    flood_replies = [e for e in member.messages(room, sender=bot_user.user_id) if e.body.startswith("flood ")]
    assert len(flood_replies) == 60 and flood


# -- disk trouble ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_disk(path: Path, size: str = "32m"):
    """A tmpfs of ``size`` mounted at ``path`` (needs root; skipped elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def _integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _stores(data_dir: Path) -> list[Path]:
    return [data_dir / "state.db", *sorted((data_dir / "crypto").glob("*.db"))]


def _run_once(cfg: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", "-c", str(cfg)], capture_output=True, text=True, timeout=timeout
    )


async def test_read_only_data_dir_at_start_is_a_clear_error_and_changes_nothing(synapse, tmp_path, bot_in_room):
    with _small_disk(tmp_path / "disk") as disk:
        data_dir = disk / "data"
        t = await bot_in_room(synapse, data_dir=data_dir, member=False, room=False)
        proc, cfg = t.proc, t.config_path
        try:
            assert await proc.stop() == 0
            device_id = json.loads((data_dir / "credentials.json").read_text())["device_id"]
            before = {p: p.read_bytes() for p in _stores(data_dir)}

            _remount(disk, "ro")
            try:
                res = await asyncio.to_thread(_run_once, cfg)
            finally:
                _remount(disk, "rw")
            assert res.returncode == 1, res.stderr
            assert "data_dir" in res.stderr and "Read-only file system" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
            assert {p: p.read_bytes() for p in _stores(data_dir)} == before, "nothing was touched"

            await proc.run_ready()
            assert json.loads((data_dir / "credentials.json").read_text())["device_id"] == device_id
            member = await t.add_member(name="alice")
            room = await t.create_room(member)
            ping = await member.send(room, "!ping")
            reply = await member.expect_reply(room, ping, sender=t.bot_user.user_id)
            assert reply.decrypted
            assert await proc.stop() == 0
        finally:
            await t.close()  # before the tmpfs goes away


async def test_disk_full_mid_run_stops_cleanly_and_the_next_start_loses_nothing(
    synapse, tmp_path, test_plugins_dir, bot_in_room
):
    ledger = tmp_path / "ledger.tsv"
    with _small_disk(tmp_path / "disk") as disk:
        data_dir = disk / "data"
        t = await bot_in_room(
            synapse, data_dir=data_dir, plugins={"ping": {}, "ledger": {"path": str(ledger)}},
            plugin_dirs=[test_plugins_dir],
        )
        proc, member, room = t.proc, t.member, t.room
        sent: list[str] = []
        try:
            sent.append(await member.send(room, "count before"))
            await wait_lines(ledger, 1)
            device_id = json.loads((data_dir / "credentials.json").read_text())["device_id"]

            filler = disk / "filler"
            with open(filler, "wb", buffering=0) as fh:  # noqa: ASYNC230 -- filling a tmpfs takes milliseconds
                for size in (1 << 20, 4096):
                    with contextlib.suppress(OSError):
                        while True:
                            fh.write(b"\0" * size)

            for i in range(40):
                if proc.proc.poll() is not None:
                    break
                sent.append(await member.send(room, f"count full-{i}"))
            deadline = time.monotonic() + 30
            while proc.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            code = proc.proc.poll()
            assert code == 1, f"the bot must stop with exit code 1 on a full disk, not {code}"

            filler.unlink()
            for db in _stores(data_dir):
                assert _integrity(db) == "ok", db
            await proc.run_ready()
            assert json.loads((data_dir / "credentials.json").read_text())["device_id"] == device_id
            lines = await wait_handled_then_sentinels(ledger, {room: sent}, member)
            assert await proc.stop() == 0
        finally:
            await t.close()  # before the tmpfs goes away
    log = proc.log_text()
    assert "storage failure" in log and "disk is full" in log
    handled = [event_id for event_id, _, _ in lines]
    assert set(handled) == set(sent), "nothing lost"
    again = len(handled) - len(set(handled))
    assert again <= 1, "at most the one event in flight when the disk filled is handled again"
    assert ledger_lines(ledger)


async def test_files_are_private_and_the_log_holds_no_body_or_secret(synapse, tmp_path, test_plugins_dir, bot_in_room):
    """Fault 16: after a full run every file in data_dir is 0600 and every folder 0700; the INFO log of the whole run
    holds no message body, access token, password, pickle key or recovery key."""
    data_dir = tmp_path / "data"
    pickle_key = "a-pickle-key-for-the-log-scan"
    t = await bot_in_room(
        synapse, pickle_key=pickle_key,
        plugins={"ping": {}, "ledger": {"path": str(tmp_path / "ledger.tsv")}, "reminders": {}},
        plugin_dirs=[test_plugins_dir], e2ee={"recovery_key_file": str(data_dir / "recovery-key.txt")},
    )
    proc, member, room, bot_user = t.proc, t.member, t.room, t.bot_user
    bodies = ["count a secret-looking body 1234", "!ping", "count another body 5678"]
    for body in bodies:
        await member.send(room, body)
    await wait_lines(tmp_path / "ledger.tsv", 2)
    assert await proc.stop() == 0
    await proc.run_ready()  # and a restart
    assert await proc.stop() == 0
    wrong = []
    for path in [data_dir, *data_dir.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if (path.is_dir() and mode != 0o700) or (path.is_file() and mode != 0o600):
            wrong.append(f"{oct(mode)} {path.relative_to(tmp_path)}")
    assert not wrong, wrong
    assert (data_dir / "plugins").is_dir() and list((data_dir / "crypto").glob("*.db"))
    secrets = [
        json.loads((data_dir / "credentials.json").read_text())["access_token"],
        bot_user.password,
        pickle_key,
    ]
    recovery = data_dir / "recovery-key.txt"
    if recovery.exists():
        secrets.append(recovery.read_text().strip())
    text = proc.log_text()
    for body in bodies:
        assert body not in text, f"message body in the log: {body!r}"
    assert "pong" not in text
    for secret in secrets:
        assert secret not in text, "a secret is in the log"
