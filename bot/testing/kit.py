"""The test kit's main object: a real bot with the plugins under test, and members talking to it in rooms.

Used through the ``ratchet`` pytest fixture::

    async def test_hello(ratchet):
        room = await ratchet.room(plugins={"hello": {}}, plugin_dirs=[Path(__file__).parent])
        reply = await room.ask("!hello")
        assert reply.body == "Hello!"

Everything is real: the homeserver is the session's Synapse, the bot is a full Ratchet runtime with its own device
and crypto store, and the member is a separate nio client that encrypts, decrypts and verifies what it sees.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nio import Event

from bot.testing.harness import InProcessBot, write_bot_config
from bot.testing.member import Member
from bot.testing.synapse import RegisteredUser, SynapseServer

__all__ = ["RatchetKit", "TestRoom"]


class TestRoom:
    """A room with a member and the bot in it, seen from the member's side."""

    __test__ = False  # not a pytest test class

    def __init__(self, room_id: str, member: Member, bot_user_id: str) -> None:
        self.room_id = room_id
        self.member = member
        self.bot_user_id = bot_user_id

    async def send(self, text: str, **kwargs: Any) -> str:
        """Send a message as the member (encrypted if the room is); returns its event id."""
        return await self.member.send(self.room_id, text, **kwargs)

    async def ask(self, text: str, *, timeout: float = 30, **kwargs: Any) -> Event:
        """Send ``text`` and return the bot's reply to it (decrypted)."""
        event_id = await self.send(text, **kwargs)
        return await self.expect_reply(event_id, timeout=timeout)

    async def expect_reply(self, event_id: str, *, timeout: float = 30) -> Event:
        """Wait for the bot's rich reply to ``event_id``."""
        return await self.member.expect_reply(self.room_id, event_id, sender=self.bot_user_id, timeout=timeout)

    async def expect(
        self, predicate: Callable[[Event], bool] | None = None, *, body_startswith: str | None = None,
        timeout: float = 30,
    ) -> Event:
        """Wait for an event from the bot in this room matching ``predicate`` and/or starting with a text."""

        def match(room_id: str, event: Event) -> bool:
            if room_id != self.room_id or event.sender != self.bot_user_id:
                return False
            if body_startswith is not None and not str(getattr(event, "body", "")).startswith(body_startswith):
                return False
            return predicate(event) if predicate is not None else True

        return await self.member.expect(match, timeout, "a matching event from the bot")

    def bot_messages(self) -> list[Event]:
        """Every message the bot sent in this room so far (decrypted)."""
        return self.member.messages(self.room_id, sender=self.bot_user_id)


class RatchetKit:
    """Creates users, the bot and rooms for one test, and cleans them up afterwards."""

    def __init__(self, synapse: SynapseServer, new_user: Callable[..., RegisteredUser], tmp_path: Path) -> None:
        self.synapse = synapse
        self._new_user = new_user
        self.tmp_path = tmp_path
        self.bot: InProcessBot | None = None
        self.bot_user: RegisteredUser | None = None
        self._pickle_key = secrets.token_urlsafe(24)  # one per bot: restarts must reopen the same store
        self._members: list[Member] = []

    async def start_bot(
        self, plugins: dict[str, dict[str, Any] | None], *, plugin_dirs: Sequence[str | Path] = (), **config: Any
    ) -> InProcessBot:
        """Start a bot with ``plugins`` (name -> options); ``config`` adds any other config keys."""
        if self.bot is not None:
            raise RuntimeError("the bot is already running; stop it first")
        if self.bot_user is None:
            self.bot_user = self._new_user("bot")
        path = write_bot_config(
            self.tmp_path / "bot.yaml",
            server=self.synapse,
            user=self.bot_user,
            data_dir=self.tmp_path / "bot-data",
            plugins=plugins,
            plugin_dirs=[str(d) for d in plugin_dirs],
            pickle_key=self._pickle_key,
            **config,
        )
        bot = await InProcessBot(path).start()
        failed = dict(bot.runtime.host.errors) if bot.runtime else {}
        if failed:
            await bot.stop()
            raise RuntimeError("plugins failed to load:\n" + "\n".join(failed.values()))
        self.bot = bot
        return self.bot

    async def stop_bot(self) -> None:
        """Stop the bot (its data dir stays, so ``start_bot`` again is a restart)."""
        if self.bot is not None:
            await self.bot.stop()
            self.bot = None

    async def member(self, name: str = "member") -> Member:
        """A new user with its own E2EE device, syncing."""
        user = self._new_user(name)
        member = await Member(self.synapse.url, user.user_id, user.password, self.tmp_path / f"{name}-store").start()
        self._members.append(member)
        return member

    async def room(
        self,
        plugins: dict[str, dict[str, Any] | None] | None = None,
        *,
        plugin_dirs: Sequence[str | Path] = (),
        member: Member | None = None,
        encrypted: bool = True,
        **config: Any,
    ) -> TestRoom:
        """A room (encrypted by default) created by ``member`` (a new one if not given) with the bot joined.

        Starts the bot with ``plugins`` first if it is not running yet.
        """
        if self.bot is None:
            await self.start_bot(plugins or {}, plugin_dirs=plugin_dirs, **config)
        assert self.bot_user is not None
        member = member or await self.member()
        room_id = await member.create_room(invite=[self.bot_user.user_id], encrypted=encrypted)
        await member.wait_joined(room_id, self.bot_user.user_id)
        return TestRoom(room_id, member, self.bot_user.user_id)

    async def close(self) -> None:
        """Stop the bot and the members."""
        with contextlib.suppress(Exception):
            await self.stop_bot()
        for member in self._members:
            with contextlib.suppress(Exception):
                await member.close()
