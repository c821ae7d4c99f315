"""``!ping``: answers ``pong`` as a reply, with how long the command took to reach the bot."""

import time

from bot import Context, Plugin, command


class Ping(Plugin):
    """Check that the bot is alive and can talk in this room."""

    @command("ping", help="Check that the bot is alive")
    async def ping(self, ctx: Context) -> None:
        sent = getattr(ctx.event, "server_timestamp", 0) or 0
        lag = f" ({max(0, int(time.time() * 1000) - sent)} ms)" if sent else ""
        await ctx.reply(f"pong{lag}")
