"""Test plugin: records the order in which it sees each room's messages; sleeps a little, varying, to interleave.

``barrier N`` proves that rooms are handled at the same time: each such handler waits (up to 10 s) until handlers
of N different rooms have all entered it, then records ``barrier met`` (or ``barrier alone`` if it gave up). A bot
that handled one room at a time could never let N of them meet.
"""

import asyncio
import random

import aiofiles

from bot import Context, Plugin, on_message

BARRIER_TIMEOUT = 10.0


class Order(Plugin):
    async def start(self) -> None:
        self._inside: set[str] = set()
        self._all_inside = asyncio.Event()

    @on_message(r"^seq \d+$")
    async def record(self, ctx: Context, match) -> None:
        await asyncio.sleep(random.uniform(0, 0.05))
        await self._write(f"{ctx.room_id}\t{ctx.body}\n")

    @on_message(r"^barrier (\d+)$")
    async def barrier(self, ctx: Context, match) -> None:
        self._inside.add(ctx.room_id)
        if len(self._inside) >= int(match.group(1)):
            self._all_inside.set()
        try:
            await asyncio.wait_for(self._all_inside.wait(), BARRIER_TIMEOUT)
            outcome = "met"
        except TimeoutError:
            outcome = "alone"
        await self._write(f"{ctx.room_id}\tbarrier {outcome}\n")

    async def _write(self, line: str) -> None:
        async with aiofiles.open(self.config["path"], "a", encoding="utf-8") as fh:
            await fh.write(line)
