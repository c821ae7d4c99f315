"""Karma points: ``python++`` gives python a point, ``!karma python`` shows them, ``!karma top`` the leaderboard.

A Ratchet plugin packaged on its own (see ``pyproject.toml``): it is found through the ``ratchet.plugins`` entry point
and brings its own dependency, ``sortedcontainers``, which keeps the leaderboard sorted in memory.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from sortedcontainers import SortedKeyList

from bot import Context, Plugin, command, on_message

__all__ = ["Karma"]


def _rank(entry: tuple[str, int]) -> tuple[int, str]:
    """Most points first, then by name."""
    return -entry[1], entry[0]


class Karma(Plugin):
    """Karma points for anything: ``name++``."""

    @dataclass(frozen=True)
    class Config:
        #: What gives a point: regular expressions whose first group is the name (``on_message(config=...)``).
        patterns: list[str] = field(default_factory=lambda: [r"(\w[\w.-]*)\+\+"])
        #: How many names ``!karma top`` shows at most.
        max_top: int = 10

        def __post_init__(self) -> None:
            # A check of the plugin's own: `ratchet check-config` reports it with its line, exit code 2.
            if self.max_top < 1:
                raise ValueError("max_top must be at least 1")

    migrations = (
        "CREATE TABLE karma (name TEXT PRIMARY KEY, points INTEGER NOT NULL)",
        # Which messages gave a point already: a handler run again after a crash does not give it twice.
        "CREATE TABLE counted (event_key TEXT PRIMARY KEY)",
    )

    async def start(self) -> None:
        rows = await self.storage.fetchall("SELECT name, points FROM karma")
        self.board: SortedKeyList = SortedKeyList(((name, points) for name, points in rows), key=_rank)
        self.points = dict(rows)

    @on_message(config="patterns")
    async def plus(self, ctx: Context, match) -> None:
        name = match.group(1).lower()
        key = ctx.idempotency_key

        def give(conn: sqlite3.Connection) -> int:
            if conn.execute("INSERT OR IGNORE INTO counted (event_key) VALUES (?)", (key,)).rowcount:
                conn.execute(
                    "INSERT INTO karma (name, points) VALUES (?, 1) "
                    "ON CONFLICT (name) DO UPDATE SET points = points + 1",
                    (name,),
                )
            return conn.execute("SELECT points FROM karma WHERE name = ?", (name,)).fetchone()[0]

        points = await self.storage.transaction(give)
        old = self.points.get(name)
        if old is not None:
            self.board.discard((name, old))
        self.board.add((name, points))
        self.points[name] = points
        await ctx.reply(f"{name} now has {points} point{'' if points == 1 else 's'}")

    @command("karma", help="Show the karma of a name")
    async def karma(self, ctx: Context, name: str | None = None) -> None:
        if name is None:
            await ctx.reply(f"Give a point with name++; {self.bot.plugins.prefix}karma top shows the leaders")
            return
        await ctx.reply(f"{name.lower()}: {self.points.get(name.lower(), 0)}")

    @karma.subcommand("top", help="The names with the most karma")
    async def top(self, ctx: Context, n: int | None = None) -> None:
        n = max(1, min(n or self.config.max_top, self.config.max_top))
        leaders = list(self.board.islice(0, n))
        if not leaders:
            await ctx.reply("no karma yet")
            return
        await ctx.reply("\n".join(f"{i}. {name} ({points})" for i, (name, points) in enumerate(leaders, 1)))
