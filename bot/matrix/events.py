"""The event types the layers above the Matrix layer see, and the questions they ask of them.

Events are matrix-nio's parsed event objects (``event.source`` holds the raw, decrypted JSON). They are named here so
that nothing outside :mod:`bot.matrix` imports nio: plugins and the runtime take them from this module. An
appservice transaction will hand over the same types.
"""

from __future__ import annotations

from nio import Event, MegolmEvent, RoomMessageText

__all__ = [
    "Event",
    "MegolmEvent",
    "RoomMessageText",
    "event_type",
    "is_room_state",
    "is_state_shaped",
    "is_text_message",
    "parse_event",
]


def event_type(event: Event) -> str | None:
    """The event's Matrix type (``m.room.message``, ``m.reaction``...), from its source."""
    value = event.source.get("type") if isinstance(event.source, dict) else None
    return value if isinstance(value, str) else None


def is_text_message(event: Event) -> bool:
    """True for an ``m.room.message`` nio parsed as text (``m.text``, ``m.notice``, ``m.emote``)."""
    return isinstance(event, RoomMessageText)


def parse_event(source: dict) -> Event:
    """An event object from its raw JSON (a ``MegolmEvent`` while it is still encrypted)."""
    return Event.parse_event(source)


def is_state_shaped(event: Event) -> bool:
    """True if ``event`` claims to be room state: it has a ``state_key``. Only such events that arrived in the clear
    are state; a decrypted one is a forgery by whoever sent it (state is never encrypted)."""
    source = event.source if isinstance(getattr(event, "source", None), dict) else {}
    return isinstance(source.get("state_key"), str)


def is_room_state(event: Event) -> bool:
    """True if ``event`` is room state that may change the bot's view of the room: state-shaped and not decrypted
    (a decrypted event claiming to be state is a forgery, :func:`is_state_shaped`)."""
    return is_state_shaped(event) and not getattr(event, "decrypted", False)
