"""Invites to the bot, seen by plugins before the runtime answers them: ``self.bot.invites``.

The runtime accepts an invite from the ``admins`` and from users matching ``invites.accept_from``, and rejects the
rest. Before it answers an invite from anyone but an admin, it asks every registered **invite guard**: a guard sees the
room and the inviter (from the invite's stripped state; nothing else is known before joining), may count it, and
returns a reason to refuse it or None. Any reason rejects the invite (the bot leaves the room, as for an inviter not
in ``accept_from``). Guards are asked for every non-admin invite, the ones ``accept_from`` already rejects included,
so a plugin can notice an inviter who spams invites whoever they are. The admins' invites are never vetoed.

A plugin registers in ``start()`` and unregisters in ``stop()``::

    self.bot.invites.add_guard(self.name, self.check_invite)

    async def check_invite(self, room_id: str, inviter: str | None, allowed: bool) -> str | None: ...

``allowed`` says whether ``accept_from`` accepts the inviter. A guard that raises is logged and counts as no veto:
a broken plugin never decides for the bot. The protections plugin uses this for invite spam to the bot and for rooms
a policy list bans (docs/protections.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

__all__ = ["InviteGuard", "InviteGuards"]

log = logging.getLogger(__name__)

#: ``guard(room_id, inviter, allowed)`` -> a reason to refuse the invite, or None.
InviteGuard = Callable[[str, "str | None", bool], Awaitable["str | None"]]


class InviteGuards:
    """The plugins' invite guards, asked in the order they were added."""

    def __init__(self) -> None:
        self._guards: list[tuple[str, InviteGuard]] = []

    def add_guard(self, plugin: str, guard: InviteGuard) -> None:
        """Ask ``guard`` about every non-admin invite (a reloaded plugin's new guard replaces nothing: the old one is
        removed by its ``stop()``)."""
        self._guards.append((plugin, guard))

    def remove_guard(self, plugin: str, guard: InviteGuard | None = None) -> None:
        """Drop ``plugin``'s guards (only ``guard``, if given)."""
        self._guards = [(p, g) for p, g in self._guards if not (p == plugin and (guard is None or g == guard))]

    def __len__(self) -> int:
        return len(self._guards)

    async def refusal(self, room_id: str, inviter: str | None, allowed: bool) -> str | None:
        """The first reason a guard gives to refuse this invite, or None. Every guard is asked (each may count the
        invite), a failing one is logged and ignored."""
        reason = None
        for plugin, guard in list(self._guards):
            try:
                said = await guard(room_id, inviter, allowed)
            except Exception:
                log.exception("invite guard of plugin %s failed on the invite to %s; ignored", plugin, room_id)
                continue
            if said and reason is None:
                reason = f"{said} ({plugin})"
        return reason
