"""An echo plugin for maubot 0.6 (standalone mode): ``!ping`` -> ``pong``.

With BENCH_MARK_FILE set, the wall-clock time of each handled ``!ping`` is appended to that file; with
BENCH_SYNC_MARK_FILE set, the wall-clock time at which the client's first sync succeeded (mautrix's
``SYNC_SUCCESSFUL``, dispatched before the sync is handled; with ``ignore_initial_sync`` an initial sync is not handled
at all) is written to that file.
"""

import os
import time

from maubot import MessageEvent, Plugin
from maubot.handlers import command
from mautrix.client import InternalEventType


class EchoBot(Plugin):
    async def start(self) -> None:
        if os.environ.get("BENCH_SYNC_MARK_FILE"):
            self.client.add_event_handler(InternalEventType.SYNC_SUCCESSFUL, self._on_sync)

    async def _on_sync(self, data: dict) -> None:
        mark = os.environ.get("BENCH_SYNC_MARK_FILE")
        info = (data.get("data") or {}).get("net.maunium.mautrix") or {}
        if mark and info.get("is_first"):
            with open(mark, "w") as fh:  # noqa: ASYNC230 - once
                fh.write(f"{time.time()}\n")

    @command.new("ping")
    async def ping(self, evt: MessageEvent) -> None:
        mark = os.environ.get("BENCH_MARK_FILE")
        if mark:
            with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
                fh.write(f"{time.time()}\n")
        await evt.respond("pong")
