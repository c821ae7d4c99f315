"""Test plugin: replies ``ack <body>`` to every ``ack ...`` message (and reacts 👍 when the body says ``react``).

With the option ``hold`` (a file path), the first message whose body says ``hold`` is answered, then the handler
writes that file and blocks: the fault tests kill the bot while it is blocked, after the member saw the answer and
before the handling was recorded. Once the file exists, no handler blocks again.
"""

import asyncio
from pathlib import Path

from bot import Context, Plugin, on_message


class Acker(Plugin):
    @on_message(r"^ack ")
    async def ack(self, ctx: Context, match) -> None:
        await ctx.reply(f"ack {ctx.body}")
        if "react" in ctx.body:
            await ctx.react("👍")
        hold = self.config.get("hold")
        if hold and "hold" in ctx.body and not Path(hold).exists():  # noqa: ASYNC240 -- a tiny test file
            Path(hold).write_text(ctx.event_id)  # noqa: ASYNC240
            await asyncio.sleep(3600)
