"""One list of cases for every plugin that opens them: ``self.bot.cases``.

The report plugin opens cases from members' reports (ids ``R-XXXXXX``), the protections plugin from what its
protections and policy lists did (``P-XXXXXX``); moderators act on both with one command in the moderation room,
``!case ID ACTION [reason]``. Each plugin keeps its own cases in its own storage (what a case holds differs: a report's
consented text and evidence, a protection's metadata and the actions to undo); this registry only says which plugin
owns an id's prefix, so the command can hand the case to its owner.

A plugin registers in ``start()`` and unregisters in ``stop()``::

    self.bot.cases.register("P-", self.name, self.act_on_case)

    async def act_on_case(self, ctx: Context, case_id: str, action: str, reason: str | None) -> None: ...

The owner checks who may act (the moderation room, the power level, a trusted device) itself: the command only routes.
A reload registers the new version before the old one stops; the old one's ``unregister`` then leaves the new
registration in place.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CaseOwner", "CaseRegistry"]

#: ``act(ctx, case_id, action, reason)``: ``ctx`` is the :class:`~bot.Context` of the moderator's command.
CaseAction = Callable[[Any, str, str, "str | None"], Awaitable[None]]


@dataclass(frozen=True)
class CaseOwner:
    """The plugin that owns the case ids starting with ``prefix``."""

    prefix: str
    plugin: str
    act: CaseAction


class CaseRegistry:
    """Which plugin owns which case ids."""

    def __init__(self) -> None:
        self._owners: dict[str, CaseOwner] = {}

    def register(self, prefix: str, plugin: str, act: CaseAction) -> None:
        """``plugin`` owns case ids starting with ``prefix`` (letters and a dash, such as ``P-``); a new version of
        the same plugin replaces the old. Raises ValueError if another plugin holds the prefix."""
        if not re.fullmatch(r"[A-Z]{1,4}-", prefix):
            raise ValueError(f"a case prefix is 1 to 4 capital letters and a dash, not {prefix!r}")
        held = self._owners.get(prefix)
        if held is not None and held.plugin != plugin:
            raise ValueError(f"case prefix {prefix} is already owned by {held.plugin}")
        self._owners[prefix] = CaseOwner(prefix, plugin, act)

    def unregister(self, plugin: str, act: CaseAction | None = None) -> None:
        """Drop ``plugin``'s prefixes (only those registered with ``act``, if given: a reloaded plugin's old version
        does not drop the new one's)."""
        for prefix, owner in list(self._owners.items()):
            if owner.plugin == plugin and (act is None or owner.act == act):
                del self._owners[prefix]

    def owner(self, case_id: str) -> CaseOwner | None:
        """The owner of ``case_id`` (compared without case), or None."""
        case_id = case_id.upper()
        for prefix, owner in self._owners.items():
            if case_id.startswith(prefix):
                return owner
        return None

    def prefixes(self) -> dict[str, str]:
        """Each registered prefix and its plugin."""
        return {p: o.plugin for p, o in self._owners.items()}
