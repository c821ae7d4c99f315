"""``!help``: the commands you may use here, grouped by plugin; ``!help NAME`` for one command's usage."""

from bot import Context, Plugin, Rest, command


class Help(Plugin):
    """Lists commands, filtered by what the caller may run in this room."""

    @command("help", aliases=["commands"], help="List the commands you can use here, or show how to use one")
    async def help(self, ctx: Context, name: Rest = "") -> None:
        manager = self.bot.plugins
        if name:
            info = manager.command(" ".join(name.split()))
            if info is None:
                await ctx.reply(f"No command called {name}. Try {manager.prefix}help.", notice=True)
                return
            lines = [f"`{info.usage}`", info.help or ""]
            if info.aliases:
                lines.append("Aliases: " + ", ".join(f"`{manager.prefix}{a}`" for a in info.aliases))
            if info.admin_only:
                lines.append("Only the bot's admins can use it.")
            if info.power_level is not None:
                lines.append(f"Needs power level {info.power_level} in the room.")
            if info.subcommands:
                lines.append("Subcommands:\n" + "\n".join(f"- `{usage}`" for usage in info.subcommands))
            await ctx.reply("\n".join(line for line in lines if line), notice=True, markdown=True)
            return
        by_plugin: dict[str, list[str]] = {}
        for info in manager.commands(room_id=ctx.room_id, user_id=ctx.sender):
            summary = f"`{manager.prefix}{info.name}`" + (f": {info.help}" if info.help else "")
            by_plugin.setdefault(info.plugin, []).append(summary)
        if not by_plugin:
            await ctx.reply("There are no commands you can use here.", notice=True)
            return
        parts = []
        for plugin, lines in by_plugin.items():
            parts.append(f"**{plugin}**\n" + "\n".join(f"- {line}" for line in sorted(lines)))
        parts.append(f"`{manager.prefix}help NAME` shows how to use a command.")
        await ctx.reply("\n\n".join(parts), notice=True, markdown=True)
