"""Test plugin: records every ``count ...`` message it handles (event id and body) in a file, one line each.

The file is the observable for exactly-once tests: a line per handling, so a duplicate shows as a repeated id.
"""

import aiofiles

from bot import Context, Plugin, on_message


class Counter(Plugin):
    @on_message(r"^count ")
    async def record(self, ctx: Context, match) -> None:
        async with aiofiles.open(self.config["path"], "a", encoding="utf-8") as fh:
            await fh.write(f"{ctx.event_id}\t{ctx.body}\n")
