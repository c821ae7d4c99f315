"""What an interop test starts (js peers, bots, members), closed at the end of the test whatever happened."""

from __future__ import annotations

import contextlib
from pathlib import Path

from bot.testing.harness import InProcessBot
from bot.testing.member import Member

from .jspeer import JsPeer


class InteropStack(contextlib.AsyncExitStack):
    """``async with InteropStack(tmp_path / "logs") as stack``: ``await stack.peer(...)``, ``stack.bot(cfg)``..."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = log_dir

    async def peer(self, synapse, user, name: str) -> JsPeer:
        """A matrix-js-sdk (Rust crypto) client logged in as ``user``."""
        peer = JsPeer(self.log_dir, name=name)
        self.push_async_callback(peer.close)
        await peer.start()
        await peer.login(synapse.url, user.user_id, user.password, device_name=f"interop {name}")
        return peer

    async def bot(self, cfg: Path) -> InProcessBot:
        """A bot from the config file ``cfg``, started (first sync handled)."""
        bot = InProcessBot(cfg)
        self.push_async_callback(bot.stop)
        return await bot.start()

    async def member(self, synapse, user, store: Path) -> Member:
        """A matrix-nio member with its own device and store."""
        member = Member(synapse.url, user.user_id, user.password, store)
        self.push_async_callback(member.close)
        return await member.start()
