"""``!remind 10m stretch your legs``: reminders that survive restarts.

The example to copy: it shows a typed config with defaults, its own storage with a versioned table, a command with
typed arguments, a reaction handler (react ❌ to the confirmation to cancel) and a scheduled task (delivering due
reminders), all through the public API in ``bot``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from bot import Context, Plugin, Rest, command, every, on_event

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delay(text: str) -> float | None:
    """Seconds in ``90s``, ``10m``, ``1h30m``, ``2d``; None if it is not a delay."""
    parts = re.fullmatch(r"(?:\d+[smhd])+", text.lower())
    if not parts:
        return None
    return float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text.lower())))


class Reminders(Plugin):
    """Remind people of things later, in the room where they asked."""

    @dataclass(frozen=True)
    class Config:
        #: How often due reminders are looked for, in seconds.
        check_interval: float = 15.0
        #: Most pending reminders one person may have.
        max_per_user: int = 10
        #: Reacting with this to the bot's confirmation cancels the reminder.
        cancel_reaction: str = "❌"

    migrations = (
        """
        CREATE TABLE reminder (
            id INTEGER PRIMARY KEY,
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            due REAL NOT NULL,
            text TEXT NOT NULL,
            confirmation TEXT
        );
        CREATE INDEX reminder_due ON reminder (due);
        """,
    )

    @command("remind", aliases=["remindme"], help="Remind you later: !remind 10m text")
    async def remind(self, ctx: Context, delay: str, text: Rest) -> None:
        seconds = parse_delay(delay)
        if seconds is None or seconds <= 0:
            await ctx.reply(f"'{delay}' is not a delay; try 90s, 10m, 1h30m or 2d.", notice=True)
            return
        pending = await self.storage.fetchone("SELECT count(*) FROM reminder WHERE user_id = ?", (ctx.sender,))
        if pending and pending[0] >= self.config.max_per_user:
            await ctx.reply(f"You already have {pending[0]} reminders pending.", notice=True)
            return
        # RETURNING gives the new row's id on both engines (cursor.lastrowid is SQLite's only).
        row_id = await self.storage.transaction(
            lambda db: db.execute(
                "INSERT INTO reminder (room_id, user_id, due, text) VALUES (?, ?, ?, ?) RETURNING id",
                (ctx.room_id, ctx.sender, time.time() + seconds, str(text)),
            ).fetchone()[0]
        )
        confirmation = await ctx.reply(
            f"⏰ I will remind you in {delay}. React {self.config.cancel_reaction} to cancel.", notice=True
        )
        await self.storage.execute("UPDATE reminder SET confirmation = ? WHERE id = ?", (confirmation, row_id))
        await self.storage.incr("created")

    @on_event("m.reaction")
    async def cancel(self, ctx: Context) -> None:
        relates = ctx.content.get("m.relates_to") or {}
        if relates.get("key") != self.config.cancel_reaction:
            return
        deleted = await self.storage.execute(
            "DELETE FROM reminder WHERE confirmation = ? AND user_id = ?", (relates.get("event_id"), ctx.sender)
        )
        if deleted:
            await ctx.reply("Reminder cancelled.", notice=True)

    @every("check_interval")
    async def deliver(self) -> None:
        due = await self.storage.fetchall(
            "SELECT id, room_id, user_id, text FROM reminder WHERE due <= ? ORDER BY due", (time.time(),)
        )
        for row_id, room_id, user_id, text in due:
            await self.bot.send_text(room_id, f"⏰ {user_id}: {text}", mentions=[user_id])
            await self.storage.execute("DELETE FROM reminder WHERE id = ?", (row_id,))
            await self.storage.incr("delivered")
