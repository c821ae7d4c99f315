"""Test plugin: records the order in which it sees each room's messages; sleeps a little, varying, to interleave."""

import asyncio
import random

import aiofiles

from bot import Context, Plugin, on_message


class Order(Plugin):
    @on_message(r"^seq \d+$")
    async def record(self, ctx: Context, match) -> None:
        await asyncio.sleep(random.uniform(0, 0.05))
        async with aiofiles.open(self.config["path"], "a", encoding="utf-8") as fh:
            await fh.write(f"{ctx.room_id}\t{ctx.body}\n")
