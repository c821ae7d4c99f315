"""Test plugin: a handler that raises, on every message and as a command."""

from bot import Context, Plugin, command, on_message


class Crashy(Plugin):
    @on_message(r".", commands=True)
    async def explode(self, ctx: Context, match) -> None:
        raise RuntimeError("crashy plugin bug (on purpose)")

    @command("crash")
    async def crash(self, ctx: Context) -> None:
        raise ValueError("crash command bug (on purpose)")
