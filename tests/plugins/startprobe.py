"""Test plugin: records what ``self.bot`` offers while ``start()`` runs (the runtime must be built whole by then)."""

from bot import Plugin


class StartProbe(Plugin):
    async def start(self) -> None:
        bot = self.bot
        self.at_start = {
            "trust": bot.trust,
            "identity": bot.identity,
            "stats": bot.stats,
            "plugins": bot.plugins,
            "moderation": bot.moderation,
            "user_id": bot.user_id,
            "configured": bot.plugins.configured(),
        }
