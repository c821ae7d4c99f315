"""Transaction ids derived from the handling: the same on a re-run, different for anything else (issue 13, part 1)."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

from nio import RoomRedactResponse, RoomSendResponse

from bot import Context, Plugin, on_message
from bot.matrix.actions import MatrixActions
from bot.matrix.events import parse_event
from bot.matrix.idempotency import (
    current_scope,
    idempotency_key,
    next_txn_id,
    scope_key,
    send_scope,
    txn_id,
)
from bot.plugin.base import collect_handlers
from bot.plugin.dispatch import Dispatcher
from bot.plugin.routing import LoadedPlugin, Router

ROOM = "!room:example.org"


def test_txn_ids_are_stable_short_url_safe_and_distinct():
    key = scope_key("$event1", "ack")
    ids = [txn_id(key, n) for n in range(5)]
    assert ids == [txn_id(scope_key("$event1", "ack"), n) for n in range(5)], "the same on every run"
    assert len(set(ids)) == 5, "each send of one handling has its own id"
    assert all(re.fullmatch(r"[A-Za-z0-9]{1,64}", i) for i in ids), ids
    others = {txn_id(scope_key("$event2", "ack"), 0), txn_id(scope_key("$event1", "echo"), 0)}
    assert ids[0] not in others and len(others) == 2, "another event or plugin, other ids"
    # The separator cannot be forged by names: ("$a", "b:c") and ("$a:b", "c") differ.
    assert txn_id(scope_key("$a", "b:c"), 0) != txn_id(scope_key("$a:b", "c"), 0)


def test_a_scope_numbers_its_sends_and_a_rerun_repeats_them():
    def run() -> list[str]:
        with send_scope(scope_key("$e", "p")):
            return [next_txn_id() for _ in range(3)]

    first, again = run(), run()
    assert first == again == [txn_id(scope_key("$e", "p"), n) for n in range(3)]
    # Outside a scope every id is new.
    assert current_scope() is None
    assert next_txn_id() != next_txn_id()


async def test_scopes_belong_to_tasks_and_close_for_tasks_left_running():
    seen: dict[str, list[str]] = {}
    release = asyncio.Event()
    leftovers: list[asyncio.Task[str]] = []

    async def handling(event: str) -> None:
        with send_scope(scope_key(event, "p")):
            await asyncio.sleep(0)  # interleave with the other handling
            seen[event] = [next_txn_id()]
            await asyncio.sleep(0)
            seen[event].append(next_txn_id())

            async def later() -> str:
                await release.wait()
                return next_txn_id()

            leftovers.append(asyncio.create_task(later()))

    await asyncio.gather(handling("$a"), handling("$b"))
    for event in ("$a", "$b"):
        assert seen[event] == [txn_id(scope_key(event, "p"), n) for n in range(2)]
    release.set()
    late = await asyncio.gather(*leftovers)
    derived = {txn_id(scope_key(e, "p"), n) for e in ("$a", "$b") for n in range(10)}
    assert not set(late) & derived, "a task still running after its handling ended sends with random ids"


def test_idempotency_key_is_stable_per_event_and_plugin():
    assert idempotency_key("$e", "p") == idempotency_key("$e", "p")
    assert len({idempotency_key("$e", "p"), idempotency_key("$e", "q"), idempotency_key("$f", "p")}) == 3
    assert idempotency_key("$e", "p") not in {txn_id(scope_key("$e", "p"), n) for n in range(10)}


class FakeClient:
    """Records the transaction ids of sends and redactions; the room is unencrypted."""

    user_id = "@bot:example.org"
    device_id = "BOTDEVICE"
    olm = None

    def __init__(self) -> None:
        self.rooms = {ROOM: SimpleNamespace(encrypted=False)}
        self.txn_ids: list[tuple[str, str]] = []

    async def room_send(self, room_id, message_type, content, tx_id=None, ignore_unverified_devices=False):
        self.txn_ids.append((message_type, tx_id))
        return RoomSendResponse(f"$sent{len(self.txn_ids)}", room_id)

    async def room_redact(self, room_id, event_id, reason=None, tx_id=None):
        self.txn_ids.append(("redact", tx_id))
        return RoomRedactResponse(f"$redaction{len(self.txn_ids)}", room_id)


async def test_actions_take_their_txn_ids_from_the_scope():
    client = FakeClient()
    actions = MatrixActions(client)  # type: ignore[arg-type]

    async def handler() -> None:
        await actions.send_text(ROOM, "ack one", reply_to="$e")
        await actions.react(ROOM, "$e", "👍")
        await actions.edit(ROOM, "$sent1", "ack one (edited)")
        await actions.redact(ROOM, "$e2")

    for _ in range(2):
        with send_scope(scope_key("$e", "ack")):
            await handler()
    first, again = client.txn_ids[:4], client.txn_ids[4:]
    assert first == again
    assert [tid for _, tid in first] == [txn_id(scope_key("$e", "ack"), n) for n in range(4)]
    assert [kind for kind, _ in first] == ["m.room.message", "m.reaction", "m.room.message", "redact"]

    client.txn_ids.clear()
    await actions.send_text(ROOM, "unprompted")
    await actions.send_text(ROOM, "unprompted")
    assert client.txn_ids[0][1] != client.txn_ids[1][1], "outside a handling, random ids"
    await actions.send(ROOM, {"body": "x", "msgtype": "m.text"}, txn_id="bridge-1")
    assert client.txn_ids[-1] == ("m.room.message", "bridge-1"), "an explicit id wins"


class Ack(Plugin):
    @on_message(r"^ack ")
    async def ack(self, ctx: Context, match) -> None:
        self.keys.append(ctx.idempotency_key)
        await ctx.reply(f"ack {ctx.body}")
        await ctx.send("second")


class FakeState:
    def __init__(self) -> None:
        self.handled: set[tuple[str, str]] = set()

    def is_handled(self, event_id: str, plugin: str) -> bool:
        return (event_id, plugin) in self.handled

    def mark_handled(self, event_id: str, plugin: str) -> None:
        self.handled.add((event_id, plugin))


async def test_the_router_gives_a_replayed_handling_the_same_txn_ids():
    """A handling run again (the bot crashed before its handled-record) sends with the ids of the first run."""
    client = FakeClient()
    api = MatrixActions(client)  # type: ignore[arg-type]
    plugin = Ack()
    plugin.name = "ack"
    plugin.keys = []  # type: ignore[attr-defined]
    loaded = LoadedPlugin("ack", plugin, collect_handlers(plugin))
    dispatcher = Dispatcher(timeout=5)
    event = parse_event(
        {
            "type": "m.room.message",
            "event_id": "$msg",
            "sender": "@alice:example.org",
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "ack hello"},
        }
    )
    runs = []
    for _ in range(2):  # two processes: a fresh state (the record was lost) and a fresh router each time
        router = Router({"ack": loaded}, api, FakeState(), dispatcher, prefix="!")  # type: ignore[arg-type]
        futures = router.route(ROOM, event)
        assert len(futures) == 1 and (await futures[0]).status == "ok"
        runs.append(list(client.txn_ids))
        client.txn_ids.clear()
    assert runs[0] == runs[1]
    assert [tid for _, tid in runs[0]] == [txn_id(scope_key("$msg", "ack"), n) for n in range(2)]
    assert plugin.keys == [idempotency_key("$msg", "ack")] * 2  # type: ignore[attr-defined]
    await dispatcher.close()


async def test_a_bridge_post_retried_after_an_error_keeps_its_txn_id():
    """The bridge retries a failed post into Matrix: if the failed attempt reached the homeserver after all, the retry
    must be its repeat, not a second message. A remote message's own id (when the network has one) fixes the key."""
    import logging

    from bot.bridge import RemoteMessage
    from bot.bridge.core import Bridge, _txn_key
    from bot.errors import MatrixError

    sent: list[str] = []
    failures = [MatrixError("the answer was lost")]

    async def post() -> str:
        sent.append(next_txn_id())
        if failures:
            raise failures.pop()
        return "$posted"

    owner = SimpleNamespace(log=logging.getLogger("test"))
    assert await Bridge._to_matrix(owner, post) == "$posted"  # type: ignore[arg-type]
    assert len(sent) == 2 and sent[0] == sent[1]
    sent.clear()
    await Bridge._to_matrix(owner, post)  # type: ignore[arg-type]
    await Bridge._to_matrix(owner, post)  # type: ignore[arg-type]
    assert sent[0] != sent[1], "another post, another id"

    with_id = RemoteMessage("net", "#chan", "nick", "nick", "hi", remote_id="msg-1")
    assert _txn_key(with_id, "post") == _txn_key(with_id, "post"), "delivered again: the same id"
    assert _txn_key(with_id, "post") != _txn_key(with_id, "edit")
    assert _txn_key(RemoteMessage("net", "#other", "nick", "nick", "hi", remote_id="msg-1"), "post") != _txn_key(
        with_id, "post"
    )
    without = RemoteMessage("net", "#chan", "nick", "nick", "hi")
    assert _txn_key(without, "post") != _txn_key(without, "post"), "no remote id: nothing to recognise it by"
