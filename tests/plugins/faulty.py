"""Test plugin: misbehaving commands for the isolation tests.

``!boom`` raises, ``!block`` blocks the event loop for 2 s with ``time.sleep``, ``!hang`` never returns, and
``!flood N`` sends N replies as fast as it can.
"""

import asyncio
import time

from bot import Context, Plugin, command


class Faulty(Plugin):
    @command("boom")
    async def boom(self, ctx: Context) -> None:
        raise RuntimeError("boom (on purpose)")

    @command("block")
    async def block(self, ctx: Context) -> None:
        time.sleep(2.0)  # noqa: ASYNC251 -- a plugin bug: blocking I/O on the event loop

    @command("hang")
    async def hang(self, ctx: Context) -> None:
        await asyncio.sleep(3600)

    @command("flood")
    async def flood(self, ctx: Context, n: int = 20) -> None:
        for i in range(n):
            await ctx.send(f"flood {i}", notice=True)
