"""Ratchet's test kit: a real Synapse, a real bot and E2EE members, for plugin tests (see docs/plugins.md).

The ``ratchet`` pytest fixture (from :mod:`bot.testing.pytest_plugin`, registered automatically) is a
:class:`RatchetKit`; its rooms are :class:`TestRoom`, its members :class:`Member`. The names below are the kit's
public API; the submodules hold the rest (the homeserver, the fault proxy, bot processes).
"""

from bot.testing.kit import BotStartError, RatchetKit, TestRoom
from bot.testing.member import Member, MemberError

__all__ = ["BotStartError", "Member", "MemberError", "RatchetKit", "TestRoom"]
