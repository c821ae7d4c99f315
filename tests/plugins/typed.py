"""Test plugin: typed command arguments, aliases, permissions."""

from typing import Literal

from bot import Context, Plugin, Rest, RoomRef, UserId, command


class Typed(Plugin):
    @command("add", aliases=["plus"], help="Add two integers")
    async def add(self, ctx: Context, a: int, b: int) -> None:
        await ctx.reply(f"sum={a + b}")

    @command("scale")
    async def scale(self, ctx: Context, x: float, factor: float = 2.0) -> None:
        await ctx.reply(f"scaled={x * factor:g}")

    @command("who")
    async def who(self, ctx: Context, user: UserId, room: RoomRef | None = None) -> None:
        await ctx.reply(f"user={user} server={user.server_name} room={room}")

    @command("mode")
    async def mode(self, ctx: Context, value: Literal["on", "off"], loud: bool = False) -> None:
        await ctx.reply(f"mode={value} loud={loud}")

    @command("say")
    async def say(self, ctx: Context, times: int, text: Rest) -> None:
        await ctx.reply(" | ".join([str(text)] * times))

    @command("secret", help="Admins only", admin=True)
    async def secret(self, ctx: Context) -> None:
        await ctx.reply("the secret is 42")

    @command("mods", help="Moderators only", power_level=50)
    async def mods(self, ctx: Context) -> None:
        await ctx.reply("hello moderator")
