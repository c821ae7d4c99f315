"""Test plugin: remembers (in memory) every event it is handed, by handler, for the routing tests without a network."""

from bot import Context, Plugin, command, on_event, on_message


class Recorder(Plugin):
    async def start(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    @on_message(r"", commands=True)  # every message, commands included
    async def any_message(self, ctx: Context, match) -> None:
        self.seen.append(("message", ctx.room_id, ctx.sender, ctx.event_id))

    @on_event("m.room.member")
    async def member(self, ctx: Context) -> None:
        self.seen.append(("member", ctx.room_id, ctx.sender, ctx.event_id))

    @command("sudo", admin=True)
    async def sudo(self, ctx: Context) -> None:
        self.seen.append(("sudo", ctx.room_id, ctx.sender, ctx.event_id))

    @command("mod", power_level=50)
    async def mod(self, ctx: Context) -> None:
        self.seen.append(("mod", ctx.room_id, ctx.sender, ctx.event_id))
