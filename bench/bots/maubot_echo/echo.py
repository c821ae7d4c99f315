"""An echo plugin for maubot 0.6 (standalone mode): ``!ping`` -> ``pong``."""

import os
import time

from maubot import MessageEvent, Plugin
from maubot.handlers import command


class EchoBot(Plugin):
    @command.new("ping")
    async def ping(self, evt: MessageEvent) -> None:
        mark = os.environ.get("BENCH_MARK_FILE")
        if mark:
            with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
                fh.write(f"{time.time()}\n")
        await evt.respond("pong")
