"""Test plugin: ``!karma`` with subcommands (``top``, admin-only ``reset``), points kept in the plugin's storage."""

from bot import Context, Plugin, UserId, command, on_message


class Karma(Plugin):
    @on_message(r"@?(\w+)\+\+")
    async def plus(self, ctx: Context, match) -> None:
        who = match.group(1)
        points = int(await self.storage.get(who) or 0) + 1
        await self.storage.set(who, str(points))
        await ctx.react("👍")

    @command("karma", help="Show karma")
    async def karma(self, ctx: Context, who: str | None = None) -> None:
        if who is None:
            await ctx.reply("karma: try !karma top")
            return
        await ctx.reply(f"{who}: {int(await self.storage.get(who) or 0)}")

    @karma.subcommand("top", aliases=["best"], help="The users with the most karma")
    async def top(self, ctx: Context, n: int = 3) -> None:
        await ctx.reply(f"top {n}")

    @karma.subcommand("reset", admin=True, help="Reset someone's karma")
    async def reset(self, ctx: Context, who: UserId) -> None:
        await ctx.reply(f"reset {who}")
