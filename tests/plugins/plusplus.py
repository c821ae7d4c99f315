"""Test plugin: a passive ``@name++`` handler, one whose patterns come from the config, and a command.

Used to show that passive handlers see the message as its author wrote it (no quoted reply fallback) and, by
default, not messages that run a command.
"""

from bot import Context, Plugin, command, on_message


class PlusPlus(Plugin):
    @on_message(r"@(\w+)\+\+")
    async def point(self, ctx: Context, match) -> None:
        await ctx.reply(f"point for {match.group(1)}")

    @on_message(config="patterns")
    async def configured(self, ctx: Context, match) -> None:
        await ctx.reply(f"configured pattern matched: {match.group(0)}")

    @on_message(r"^!pp\b", commands=True)
    async def sees_commands(self, ctx: Context, match) -> None:
        await ctx.react("👀")

    @command("pp")
    async def pp(self, ctx: Context, what: str = "") -> None:
        await ctx.reply("pp command")
