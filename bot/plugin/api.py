"""The bot as plugins see it (``self.bot``): its Matrix actions plus the admins, the other plugins, the runtime's
counters, the trust policy, the bot's own identity and the moderation tools.

:class:`BotAPI` is built once by the runtime with every collaborator in place, so a plugin sees all of them from its
first ``start()``. The actions themselves (send, reply, react, edit, redact, DMs, media, members) are
:class:`~bot.matrix.actions.MatrixActions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.matrix.actions import MatrixActions
from bot.reports.moderation import Moderation

if TYPE_CHECKING:
    from bot.e2ee.identity import Identity
    from bot.e2ee.trust import TrustPolicy
    from bot.matrix.client import RatchetClient
    from bot.plugin.info import PluginDirectory
    from bot.stats import BotStats

__all__ = ["BotAPI"]


class BotAPI(MatrixActions):
    """What a plugin's ``self.bot`` offers: :class:`~bot.matrix.actions.MatrixActions` and the attributes below."""

    def __init__(
        self,
        client: RatchetClient,
        *,
        admins: tuple[str, ...],
        plugins: PluginDirectory,
        stats: BotStats,
        trust: TrustPolicy,
        identity: Identity | None,
    ) -> None:
        super().__init__(client)
        #: The bot's admins from the config.
        self.admins = admins
        #: The plugin manager (list, reload, enable, disable plugins; their commands).
        self.plugins = plugins
        #: Runtime counters (uptime, UTDs, rooms).
        self.stats = stats
        #: The trust policy: whose devices get room keys, pinned identities (see :mod:`bot.e2ee.trust`).
        self.trust = trust
        #: The bot's own cross-signing identity and key backup (see :mod:`bot.e2ee.identity`); None when its local
        #: secrets cannot be read this run (the reason is logged).
        self.identity = identity
        #: Evidence and moderation actions (see :mod:`bot.reports.moderation`).
        self.moderation = Moderation(client, self, trust)

    def is_admin(self, user_id: str) -> bool:
        """True if ``user_id`` is one of the bot's admins from the config."""
        return user_id in self.admins
