"""Test plugin: ``slow N`` sleeps N seconds, then records the event (for shutdown tests)."""

import asyncio

import aiofiles

from bot import Context, Plugin, on_message


class Slow(Plugin):
    @on_message(r"^slow (\d+(?:\.\d+)?)$")
    async def slow(self, ctx: Context, match) -> None:
        await asyncio.sleep(float(match.group(1)))
        async with aiofiles.open(self.config["path"], "a", encoding="utf-8") as fh:
            await fh.write(f"{ctx.event_id}\t{ctx.body}\n")
