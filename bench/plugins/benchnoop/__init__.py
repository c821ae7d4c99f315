"""``!noop``: the no-op command the offline benchmark routes every message to."""

from bot import Context, Plugin, command


class BenchNoop(Plugin):
    """Does nothing, so that the benchmark measures the framework, not a handler."""

    @command("noop", help="Do nothing (benchmark)")
    async def noop(self, ctx: Context) -> None:
        return None
