"""Test plugin: records every ``count ...`` message it handles, one line each: event id, room id, body.

Like ``counter``, but the line is written with a plain synchronous write just before the handler returns, so the
only window in which a ``kill -9`` can separate "the plugin did it" from "the framework recorded it" is the
framework's own. The file is the exactly-once observable of the fault tests.
"""

from bot import Context, Plugin, on_message


class Ledger(Plugin):
    @on_message(r"^count ")
    async def record(self, ctx: Context, match) -> None:
        with open(self.config["path"], "a", encoding="utf-8") as fh:  # noqa: ASYNC230 -- on purpose, see above
            fh.write(f"{ctx.event_id}\t{ctx.room_id}\t{ctx.body}\n")
