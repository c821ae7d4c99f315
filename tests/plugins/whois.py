"""Test plugin: ``!whois <who: UserId>`` answers with the user id the argument resolved to, mentioning that user."""

from bot import Context, Plugin, UserId, command


class Whois(Plugin):
    @command("whois", help="Which user a mention, a display name or an @localpart means")
    async def whois(self, ctx: Context, who: UserId) -> None:
        await ctx.reply(f"that is {who}", mentions=[who])
