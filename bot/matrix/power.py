"""Power levels as the room version defines them.

From room version 12 (MSC4289) the room's creators are not listed in ``m.room.power_levels``: they outrank everyone.
nio 0.26 predates that (it does not even keep the creator) and reports 0 for them, so the runtime records each
room's creators from its ``m.room.create`` event (:func:`creators_from_create_event`) and permission checks go through
:func:`user_power_level`.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CREATOR_POWER", "creators_from_create_event", "creators_privileged", "user_power_level"]

#: The level reported for a privileged creator: above any level a power_levels event can hold (2**53 - 1).
CREATOR_POWER = 2**53


class _Room(Protocol):
    room_version: str

    @property
    def power_levels(self): ...


def creators_from_create_event(source: dict) -> set[str]:
    """The creators an ``m.room.create`` event names: its sender and ``content.additional_creators``."""
    found = set()
    sender = source.get("sender")
    if isinstance(sender, str):
        found.add(sender)
    content = source.get("content")
    extra = content.get("additional_creators") if isinstance(content, dict) else None
    if isinstance(extra, list):
        found.update(u for u in extra if isinstance(u, str))
    return found


def creators_privileged(room_version: str) -> bool:
    """True for room versions whose creators have infinite power (12 and later, and the hydra test version)."""
    if room_version == "org.matrix.hydra.11":
        return True
    return room_version.isdigit() and int(room_version) >= 12


def user_power_level(room: _Room, user_id: str, creators: set[str] | frozenset[str] = frozenset()) -> int:
    """``user_id``'s power level in ``room``, counting privileged ``creators`` (from the create event)."""
    if user_id in creators and creators_privileged(str(getattr(room, "room_version", "1"))):
        return CREATOR_POWER
    return room.power_levels.get_user_level(user_id)
