"""Issue 3 end to end with the test kit: typed commands, help, permissions, isolation, order, storage, reload."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


async def test_typed_arguments_aliases_and_usage(ratchet):
    room = await ratchet.room(plugins={"typed": {}}, plugin_dirs=[TEST_PLUGINS])
    assert (await room.ask("!add 2 40")).body == "sum=42"
    assert (await room.ask("!plus -1 1")).body == "sum=0"
    assert (await room.ask("!scale 1.5")).body == "scaled=3"
    assert (await room.ask('!who @alice:example.org "#room:example.org"')).body == (
        "user=@alice:example.org server=example.org room=#room:example.org"
    )
    assert (await room.ask("!mode ON yes")).body == "mode=on loud=True"
    assert (await room.ask("!say 2 hello   world")).body == "hello   world | hello   world"
    bad = await room.ask("!add two 3")
    assert "a: expected an integer, got 'two'" in bad.body and "Usage: !add <a: int> <b: int>" in bad.body
    missing = await room.ask("!add 1")
    assert "missing" in missing.body and "Usage: !add" in missing.body
    choice = await room.ask("!mode maybe")
    assert "Usage: !mode <value: on|off>" in choice.body
    not_user = await room.ask("!who alice")
    assert "user" in not_user.body and "Usage: !who" in not_user.body


async def test_help_lists_only_what_the_caller_may_use(ratchet):
    admin = await ratchet.member("admin")
    room = await ratchet.room(
        plugins={"help": {}, "typed": {}, "ping": {}}, plugin_dirs=[TEST_PLUGINS], member=admin,
        admins=[admin.user_id],
    )
    listing = (await room.ask("!help")).body
    assert "!ping" in listing and "!add" in listing and "!secret" in listing, listing
    assert "!mods" in listing  # the room's creator has power level 100

    other = await ratchet.member("other")
    await admin.client.room_invite(room.room_id, other.user_id)
    await other.client.join(room.room_id)
    await other.wait_joined(room.room_id, other.user_id)
    event_id = await other.send(room.room_id, "!help")
    theirs = (await other.expect_reply(room.room_id, event_id, sender=room.bot_user_id)).body
    assert "!ping" in theirs and "!add" in theirs
    assert "!secret" not in theirs and "!mods" not in theirs, theirs

    denied_id = await other.send(room.room_id, "!secret")
    denied = await other.expect_reply(room.room_id, denied_id, sender=room.bot_user_id)
    assert "admins only" in denied.body and "42" not in denied.body
    low_id = await other.send(room.room_id, "!mods")
    assert "power level 50" in (await other.expect_reply(room.room_id, low_id, sender=room.bot_user_id)).body
    assert (await room.ask("!secret")).body == "the secret is 42"

    detail = (await room.ask("!help plus")).body
    assert "!add <a: int> <b: int>" in detail and "!plus" in detail
    formatted = (await room.ask("!help")).source["content"]
    assert formatted.get("format") == "org.matrix.custom.html" and "<strong>" in formatted["formatted_body"]


async def test_crashing_and_hanging_plugins_do_not_stop_others(ratchet, caplog):
    caplog.set_level(logging.ERROR, "bot.plugin.dispatch")
    hang_timeout = 6
    room = await ratchet.room(
        plugins={"crashy": {}, "hangy": {}, "ping": {}}, plugin_dirs=[TEST_PLUGINS], handler_timeout=hang_timeout
    )
    hangy_gave_up = f"plugin hangy: message handler hang did not finish within {hang_timeout}s"
    for k in range(1, 4):
        reply = await room.ask("!ping", timeout=30)
        assert reply.body.startswith("pong")
        # Order, not speed: hangy handles this room's messages one after another, each hanging until the timeout,
        # so a ping that waited for hangy's handler of its own message would come after k of them gave up.
        assert caplog.text.count(hangy_gave_up) < k, "ping must not wait for the hanging plugin"
    crash = await room.ask("!crash")
    assert "failed" in crash.body and "ValueError" in crash.body
    await _until(lambda: hangy_gave_up in caplog.text, hang_timeout + 30)  # hangy's handlers time out...
    assert (await room.ask("!ping", timeout=10)).body.startswith("pong")  # ...and the bot keeps answering


async def test_events_of_a_room_reach_a_plugin_in_order(ratchet, tmp_path):
    log = tmp_path / "order.tsv"
    first = await ratchet.room(
        plugins={"order": {"path": str(log)}}, plugin_dirs=[TEST_PLUGINS], max_concurrency=4
    )
    rooms = [first, await ratchet.room(), await ratchet.room()]
    n = 12
    for i in range(n):
        for room in rooms:
            await room.send(f"seq {i}")
    for _ in range(300):
        if log.exists() and len(log.read_text().splitlines()) >= n * len(rooms):
            break
        await asyncio.sleep(0.1)
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    assert len(lines) == n * len(rooms)
    for room in rooms:
        seen = [body for room_id, body in lines if room_id == room.room_id]
        assert seen == [f"seq {i}" for i in range(n)]
    # Rooms are handled concurrently: one handler per room waits in a barrier until all of them are inside it at
    # once. Handled one room at a time, the first would give up alone (a line "barrier alone").
    for room in rooms:
        await room.send(f"barrier {len(rooms)}")
    for _ in range(600):
        if len([line for line in log.read_text().splitlines() if "\tbarrier " in line]) >= len(rooms):
            break
        await asyncio.sleep(0.1)
    met = [line.split("\t") for line in log.read_text().splitlines() if "\tbarrier " in line]
    assert sorted(met) == sorted([room.room_id, "barrier met"] for room in rooms), met


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_storage_and_scheduled_task_survive_a_restart(ratchet):
    plugins = {"reminders": {"check_interval": 0.5}}
    room = await ratchet.room(plugins=plugins)
    confirm = await room.ask("!remind 3s stretch your legs")
    assert confirm.body.startswith("⏰ I will remind you in 3s")
    await ratchet.stop_bot()
    await ratchet.start_bot(plugins)
    reminder = await room.expect(body_startswith=f"⏰ {room.member.user_id}: stretch your legs", timeout=20)
    assert reminder.source["content"]["m.mentions"] == {"user_ids": [room.member.user_id]}
    if not ratchet.engine_config:  # SQLite: the plugin's own file, private to the bot
        db = ratchet.tmp_path / "bot-data" / "plugins" / "reminders.db"
        assert db.exists() and oct(db.stat().st_mode & 0o777) == "0o600"

    # the reaction handler: ❌ on the confirmation cancels, when the reminder's owner reacts
    reminders = ratchet.storage("reminders")
    confirm2 = await room.ask("!remind 1h drink water")
    as_bob = await room.add_member(await ratchet.member("bob"))
    not_theirs = await as_bob.react(confirm2.event_id, "❌")
    cancel = await room.react(confirm2.event_id, "❌")
    assert (await room.expect_reply(cancel)).body == "Reminder cancelled."
    # A room's events reach the plugin in order: bob's reaction was handled before, and was not answered.
    await room.expect_no_reply(not_theirs, within=0)
    assert await reminders.fetchone("SELECT count(*) FROM reminder") == (0,)
    assert await reminders.get("created") == 2 and await reminders.get("delivered") == 1
    bad = await room.ask("!remind soon do it")
    assert "not a delay" in bad.body


@pytest.mark.both_engines  # what it checks lives in the storage: run on SQLite and PostgreSQL
async def test_hot_reload_changes_behaviour_without_a_new_device(ratchet, tmp_path):
    plugin_dir = tmp_path / "hot"
    plugin_dir.mkdir()
    source = plugin_dir / "greet.py"
    code = (
        "from bot import Context, Plugin, command\n\n\n"
        "class Greet(Plugin):\n"
        "    @command('greet')\n"
        "    async def greet(self, ctx: Context) -> None:\n"
        "        await ctx.reply('{text}')\n"
    )
    source.write_text(code.format(text="version one"))
    admin = await ratchet.member("admin")
    room = await ratchet.room(
        plugins={"greet": {}, "admin": {}}, plugin_dirs=[plugin_dir], member=admin, admins=[admin.user_id]
    )
    device = ratchet.bot.device_id
    assert (await room.ask("!greet")).body == "version one"
    source.write_text(code.format(text="version two"))
    assert (await room.ask("!plugins reload greet")).body == "✅ greet reloaded."
    assert (await room.ask("!greet")).body == "version two"

    # a broken new version is refused and the old one keeps running
    source.write_text("def broken(:\n")
    refused = await room.ask("!plugins reload greet")
    assert "reload greet failed" in refused.body and "SyntaxError" in refused.body
    assert (await room.ask("!greet")).body == "version two"

    assert (await room.ask("!plugins disable greet")).body == "✅ greet disabled."
    await room.expect_no_reply(await room.send("!greet"), within=2)
    listing = (await room.ask("!plugins")).body
    assert "**greet**: disabled" in listing and "**admin**: running" in listing
    assert ratchet.bot.device_id == device
    assert room.member.undecryptable(room.room_id) == []
    status = (await room.ask("!status")).body
    assert device in status and "rooms: 1" in status and "device: cross-signed" in status


async def test_room_allow_and_deny_lists(ratchet):
    member = await ratchet.member()
    room = await ratchet.room(plugins={"ping": {}, "typed": {}}, plugin_dirs=[TEST_PLUGINS], member=member)
    other = await ratchet.room(member=member)
    # restart with ping denied in the second room
    await ratchet.stop_bot()
    await ratchet.start_bot(
        {"ping": {"rooms": {"deny": [other.room_id]}}, "typed": {}}, plugin_dirs=[TEST_PLUGINS]
    )
    assert (await room.ask("!ping")).body.startswith("pong")
    assert (await other.ask("!add 1 1")).body == "sum=2"
    ignored = await other.send("!ping")
    assert (await other.ask("!add 2 2")).body == "sum=4"
    # (typed and ping are different plugins: their order is not guaranteed, so wait for the ping's answer in full)
    await other.expect_no_reply(ignored, within=2)
    assert not [e for e in other.bot_messages() if "pong" in getattr(e, "body", "")], ignored


def test_plugin_config_errors_name_the_plugin_and_key(tmp_path):
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        "homeserver: http://127.0.0.1:1\nuser_id: '@b:localhost'\npassword: pw-123456\n"
        "pickle_key: a-long-enough-pickle-key\nplugins:\n  reminders:\n    check_interval: soon\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "plugins.reminders.check_interval" in res.stderr, res.stderr
    cfg.write_text(cfg.read_text().replace("check_interval: soon", "chek_interval: 5"))
    res = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "chek_interval" in res.stderr and "check_interval" in res.stderr


def test_scaffold_writes_a_plugin_whose_test_passes(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "bot", "new-plugin", "hello_world", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "hello_world"
    test_file = folder / "tests" / "test_hello_world.py"
    assert test_file.exists() and (folder / "pytest.ini").exists()
    assert "pytest.mark.asyncio" not in test_file.read_text()  # the pytest.ini makes that boilerplate unneeded
    again = subprocess.run(
        [sys.executable, "-m", "bot", "new-plugin", "hello_world", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    # As its author would run it: `pytest` in the plugin's folder, with the scaffold's own configuration. Any
    # warning (pytest-asyncio's unset loop scope, say) is an error, and none is printed.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-W", "error"],
        capture_output=True, text=True, timeout=240, cwd=folder,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "configfile: pytest.ini" in run.stdout and "2 passed" in run.stdout, run.stdout[-3000:]
    assert "warning" not in output.lower(), output[-3000:]
    assert not (folder / ".pytest_cache").exists()
    shutil.rmtree(folder)


async def _until(condition, timeout: float) -> None:
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s")


async def test_fingerprint_shows_the_keys_the_members_client_sees(ratchet):
    room = await ratchet.room(plugins={"admin": {}})
    bot_id, device = room.bot_user_id, ratchet.bot.device_id
    reply = (await room.ask("!fingerprint")).body
    # The member's own client knows the bot's device key from the server: the same key, in groups of four.
    if room.member.client.should_query_keys:
        await room.member.client.keys_query()
    seen = room.member.client.device_store[bot_id][device].ed25519
    grouped = " ".join(seen[i : i + 4] for i in range(0, len(seen), 4))
    assert f"{bot_id}, device {device}" in reply and f"device key (ed25519): {grouped}" in reply, reply
    master = ratchet.bot.runtime.identity.status()["master_key"]
    assert master and " ".join(master[i : i + 4] for i in range(0, len(master), 4)) in reply
    # A member without cross-signing has no master key, so there is no safety number to compare.
    about = (await room.ask(f"!fingerprint {room.member.user_id}")).body
    assert f"{room.member.user_id} master key: (none)" in about, about
    assert "safety number: none (both need a master key)" in about, about
    unknown = (await room.ask("!fingerprint nobody")).body
    assert "Usage: !fingerprint [who: user]" in unknown, unknown
