"""Helpers of the fault suite: the ledger observable, log checks."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from bot.testing.harness import BotProcess
from bot.testing.member import Member


def ledger_lines(path: Path) -> list[tuple[str, str, str]]:
    """The ledger plugin's records: (event id, room id, body), in handling order."""
    if not path.exists():
        return []
    return [tuple(line.split("\t", 2)) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


async def wait_lines(path: Path, n: int, timeout: float = 60.0, *, settle: float = 0.5) -> list[tuple[str, str, str]]:
    """Wait until the ledger holds ``n`` lines, then ``settle`` seconds more (to see any extra one)."""
    deadline = time.monotonic() + timeout
    while len(ledger_lines(path)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} has {len(ledger_lines(path))} lines after {timeout}s, not {n}")
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle)
    return ledger_lines(path)


async def wait_handled_then_sentinels(
    path: Path, sent: dict[str, list[str]], members: Member | Mapping[str, Member], timeout: float = 60.0
) -> list[tuple[str, str, str]]:
    """Wait until the ledger holds every event of ``sent`` (room -> event ids), then send one more ``count`` message
    per room (by ``members[room]``, or the one member) and wait until the ledger has those too.

    The bot hands a room's events to the ledger plugin in timeline order, so once a room's sentinel is in the ledger,
    any second handling of that room's earlier events is in it as well: an "exactly once" check needs no settling
    sleep after that. The sentinels are appended to ``sent``; returns the ledger's lines.
    """
    await wait_lines(path, sum(len(ids) for ids in sent.values()), timeout, settle=0)
    for room, ids in sent.items():
        member = members if isinstance(members, Member) else members[room]
        ids.append(await member.send(room, "count sentinel"))
    sentinels = {ids[-1] for ids in sent.values()}
    deadline = time.monotonic() + timeout
    while not sentinels <= {event_id for event_id, _, _ in ledger_lines(path)}:
        if time.monotonic() > deadline:
            raise AssertionError(f"the sentinels did not reach {path.name} within {timeout}s")
        await asyncio.sleep(0.1)
    return ledger_lines(path)


def assert_exactly_once_in_order(lines: list[tuple[str, str, str]], sent: dict[str, list[str]]) -> None:
    """Every event in ``sent`` (room -> event ids in sending order) was handled once, each room's in order."""
    ids = [event_id for event_id, _, _ in lines]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"handled twice: {dupes}"
    expected = {i for ids_ in sent.values() for i in ids_}
    assert set(ids) == expected, f"missing {sorted(expected - set(ids))}, unexpected {sorted(set(ids) - expected)}"
    for room, room_ids in sent.items():
        seen = [event_id for event_id, rid, _ in lines if rid == room]
        assert seen == room_ids, f"order broken in {room}"


def assert_log_clean(proc: BotProcess, *, bodies: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
    """No message body and no secret in the bot's log (INFO level run)."""
    text = proc.log_text()
    for body in bodies:
        assert body not in text, f"a message body is in the log: {body!r}"
    for secret in secrets:
        if secret:
            assert secret not in text, "a secret is in the log"


def log_count(proc: BotProcess, pattern: str) -> int:
    return len(re.findall(pattern, proc.log_text()))
