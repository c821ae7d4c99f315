"""Test plugin: a handler that never returns."""

import asyncio

from bot import Context, Plugin, on_message


class Hangy(Plugin):
    @on_message(r".", commands=True)
    async def hang(self, ctx: Context, match) -> None:
        await asyncio.sleep(3600)
