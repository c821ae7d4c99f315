"""``!ping`` for the start-up and load benchmarks: answers ``pong`` like the bundled plugin, and with
``BENCH_MARK_FILE`` set appends the time it handled each ping to that file (as the other bots under test do)."""

import os
import time

from bot import Context, Plugin, command


class BenchPing(Plugin):
    """``!ping`` -> ``pong``, with a time stamp for the benchmark."""

    @command("ping", help="Answer pong (benchmark)")
    async def ping(self, ctx: Context) -> None:
        mark = os.environ.get("BENCH_MARK_FILE")
        if mark:
            with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
                fh.write(f"{time.time()}\n")
        await ctx.reply("pong")
