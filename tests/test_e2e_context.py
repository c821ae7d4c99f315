"""Context and BotAPI actions end to end, as a member of an encrypted room sees them *decrypted*: Markdown replies,
threads, encrypted reactions, edits, redactions, encrypted DMs (readable once the invite is accepted) and encrypted
media both ways."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nio import InviteEvent, InviteMemberEvent, MemoryDownloadResponse, RoomCreateResponse, UploadResponse
from nio.crypto.attachments import encrypt_attachment

from bot.errors import MatrixError
from bot.matrix.direct import DirectRooms
from bot.testing.harness import InProcessBot, write_bot_config
from bot.testing.member import Member, MemberError
from bot.testing.synapse import RegisteredUser, SynapseServer

pytestmark = pytest.mark.e2e

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
TEXT = b"Ratchet test file\nsecond line\n"


def png_1x1() -> bytes:
    """A valid 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


class DemoMember(Member):
    """A member that can also grant power, send encrypted files, read media and see invites' stripped state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (room id, stripped state event) of every invite (nio's InviteEvents are not Events, so not in .events).
        self.invites: list[tuple[str, InviteEvent]] = []

    async def start(self) -> DemoMember:
        async def on_invite(room, event: InviteEvent) -> None:
            async with self._changed:
                self.invites.append((room.room_id, event))
                self._changed.notify_all()

        self.client.add_event_callback(on_invite, (InviteEvent,))
        await super().start()
        return self

    async def create_room_with_power(self, invite: list[str], power: dict[str, int]) -> str:
        encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        resp = await self.client.room_create(
            invite=invite,
            initial_state=[encryption],
            power_level_override={"users": dict(power)},  # (room v12: the creator must not be listed)
        )
        if not isinstance(resp, RoomCreateResponse):
            raise MemberError(f"room creation failed: {resp}")
        await self.wait_for(lambda: resp.room_id in self.client.rooms, 30, "the new room to sync")
        return resp.room_id

    async def download_raw(self, mxc: str) -> bytes:
        resp = await self.client.download(mxc=mxc)
        if not isinstance(resp, MemoryDownloadResponse):
            raise MemberError(f"download of {mxc} failed: {resp}")
        return resp.body

    async def from_bot(self, room_id: str, bot_id: str, check, what: str):
        return await self.expect(lambda rid, e: rid == room_id and e.sender == bot_id and check(e.source), 30, what)


@dataclass
class Env:
    bot: InProcessBot
    bot_user: RegisteredUser
    member: DemoMember
    room: str
    text_path: Path
    image_path: Path
    synapse: SynapseServer

    @property
    def api(self):
        return self.bot.runtime.api


def _register(synapse: SynapseServer, prefix: str) -> RegisteredUser:
    return synapse.register_user(f"{prefix}-{secrets.token_hex(4)}", secrets.token_urlsafe(16))


@pytest.fixture(scope="module")
async def env(synapse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctx")
    bot_user, alice = _register(synapse, "ctxbot"), _register(synapse, "alice")
    text_path, image_path = tmp / "notes.txt", tmp / "pixel.png"
    text_path.write_bytes(TEXT)
    image_path.write_bytes(png_1x1())
    cfg = write_bot_config(
        tmp / "bot.yaml",
        server=synapse,
        user=bot_user,
        data_dir=tmp / "data",
        plugins={"ctxdemo": {"file": str(text_path), "image": str(image_path)}},
        plugin_dirs=[str(PLUGINS_DIR)],
    )
    bot = InProcessBot(cfg)
    member = DemoMember(synapse.url, alice.user_id, alice.password, tmp / "alice")
    try:
        await member.start()
        await bot.start()
        # the bot may redact others' messages (power 50)
        room = await member.create_room_with_power([bot_user.user_id], {bot_user.user_id: 50})
        await member.wait_joined(room, bot_user.user_id)
        yield Env(bot, bot_user, member, room, text_path, image_path, synapse)
    finally:
        await bot.stop()
        await member.close()


async def test_markdown_thread_and_encrypted_reaction(env: Env):
    m, room, bot_id = env.member, env.room, env.bot_user.user_id

    md_cmd = await m.send(room, "!md")
    reply = await m.expect_reply(room, md_cmd, sender=bot_id)
    assert reply.decrypted
    content = reply.source["content"]
    assert content["body"].startswith("**bold** and `code`")  # the body is the Markdown source
    assert content["format"] == "org.matrix.custom.html"
    html = content["formatted_body"]
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<li>one</li>" in html and '<a href="https://matrix.org">link</a>' in html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert content["m.mentions"] == {"user_ids": [m.user_id]}

    thread_cmd = await m.send(room, "!thread")
    in_thread = await m.expect_reply(room, thread_cmd, sender=bot_id)
    rel = in_thread.source["content"]["m.relates_to"]
    assert rel["rel_type"] == "m.thread" and rel["event_id"] == thread_cmd
    assert in_thread.decrypted and in_thread.body == "in a thread"

    react_cmd = await m.send(room, "!react")
    reaction = await m.from_bot(room, bot_id, lambda src: src.get("type") == "m.reaction", "the bot's reaction")
    assert reaction.decrypted, "reactions in encrypted rooms are sent encrypted"
    assert reaction.source["content"]["m.relates_to"] == {
        "rel_type": "m.annotation",
        "event_id": react_cmd,
        "key": "✅",
    }


async def test_edit_and_redaction(env: Env):
    m, room, bot_id = env.member, env.room, env.bot_user.user_id

    await m.send(room, "!edit")
    edit = await m.from_bot(room, bot_id, lambda src: "m.new_content" in src.get("content", {}), "the bot's edit")
    content = edit.source["content"]
    assert edit.decrypted
    assert content["m.new_content"]["body"] == "final *text*"
    assert content["m.new_content"]["formatted_body"] == "<p>final <em>text</em></p>"
    assert content["body"] == "* final *text*"
    drafts = [e for e in m.messages(room, sender=bot_id) if e.source["content"].get("body") == "draft"]
    assert len(drafts) == 1
    assert content["m.relates_to"] == {"rel_type": "m.replace", "event_id": drafts[0].event_id}

    cmd = await m.send(room, "!redact")

    def redacts_cmd(src: dict) -> bool:
        redacts = (src.get("redacts"), src.get("content", {}).get("redacts"))  # room v11 moved it into content
        return src.get("type") == "m.room.redaction" and cmd in redacts

    redaction = await m.from_bot(room, bot_id, redacts_cmd, "the bot's redaction of the command")
    assert redaction.source["content"].get("reason") == "ctxdemo"
    # The server now serves the command redacted.
    fetched = await m.client.room_get_event(room, cmd)
    assert "redacted_because" in fetched.event.source.get("unsigned", {})


async def test_dm_is_encrypted_direct_and_readable_after_joining(env: Env):
    m, room, bot_id, api = env.member, env.room, env.bot_user.user_id, env.api

    await m.send(room, "!dmme")

    def dm_invite() -> str | None:
        for rid, e in m.invites:
            if (
                isinstance(e, InviteMemberEvent)
                and e.state_key == m.user_id
                and e.sender == bot_id
                and e.membership == "invite"
                and e.content.get("is_direct") is True
            ):
                return rid
        return None

    await m.wait_for(lambda: dm_invite() is not None, 30, "an is_direct invite from the bot")
    dm = dm_invite()
    assert dm in m.client.invited_rooms
    # While only invited, the member's device already gets the room key of the bot's message...
    await m.wait_for(
        lambda: any(session.room_id == dm for session in m.client.olm.inbound_group_store),
        30,
        "the DM's Megolm key while invited",
    )
    assert dm not in m.client.rooms
    # ...so the message decrypts once they join.
    join = await m.client.join(dm)
    assert getattr(join, "room_id", None) == dm, join
    hello = await m.from_bot(dm, bot_id, lambda src: src.get("type") == "m.room.message", "the DM message")
    assert hello.decrypted and hello.body == "hello in private"
    assert m.client.rooms[dm].encrypted
    assert m.undecryptable(dm) == []
    state = await m.client.room_get_state_event(dm, "m.room.encryption")
    assert state.content["algorithm"] == "m.megolm.v1.aes-sha2"
    join_rules = await m.client.room_get_state_event(dm, "m.room.join_rules")
    assert join_rules.content["join_rule"] == "invite"

    # The same DM afterwards, also for concurrent calls, and when looked up again from m.direct (a restart).
    assert await asyncio.gather(api.dm(m.user_id), api.dm(m.user_id)) == [dm, dm]
    assert await DirectRooms(env.bot.runtime.client).room_for(m.user_id) == dm

    # Concurrent calls for a user without a DM create exactly one room, recorded in m.direct.
    bob = _register(env.synapse, "bob")
    first, second = await asyncio.gather(api.dm(bob.user_id), api.dm(bob.user_id))
    assert first == second and first != dm
    direct = await env.bot.runtime.client.list_direct_rooms()
    assert direct.rooms[m.user_id] == [dm]
    assert direct.rooms[bob.user_id] == [first]
    with pytest.raises(MatrixError):
        await api.dm(bot_id)


async def test_encrypted_media_both_ways(env: Env):
    m, room, bot_id = env.member, env.room, env.bot_user.user_id

    cmd = await m.send(room, "!file")
    reply = await m.expect_reply(room, cmd, sender=bot_id)
    content = reply.source["content"]
    assert reply.decrypted
    assert content["msgtype"] == "m.file" and content["body"] == "notes.txt"
    assert "url" not in content and content["file"]["v"] == "v2"
    assert set(content["file"]) == {"url", "key", "iv", "hashes", "v"}
    assert content["info"] == {"mimetype": "text/plain", "size": len(TEXT)}
    assert await m.download_raw(content["file"]["url"]) != TEXT, "the server must only see ciphertext"
    assert await m.download_media(content) == TEXT

    cmd = await m.send(room, "!image")
    reply = await m.expect_reply(room, cmd, sender=bot_id)
    content = reply.source["content"]
    assert content["msgtype"] == "m.image" and "file" in content
    assert content["info"]["mimetype"] == "image/png" and content["info"]["size"] == len(png_1x1())
    try:
        import PIL  # noqa: F401
    except ImportError:
        pass
    else:
        assert (content["info"]["w"], content["info"]["h"]) == (1, 1)
    assert await m.download_media(content) == png_1x1()

    # A file the member sends, read by the plugin through ctx.download() (the command replies to the file).
    data = os.urandom(5000)
    file_event = await m.send_file(room, data, name="blob.bin", mimetype="application/octet-stream")
    cmd = await m.send(room, "!echo-file", reply_to=file_event)
    reply = await m.expect_reply(room, cmd, sender=bot_id)
    assert reply.body == f"size={len(data)} sha256={hashlib.sha256(data).hexdigest()}"


async def test_plain_media_in_unencrypted_room_and_size_limit(env: Env, tmp_path):
    m, bot_id, api = env.member, env.bot_user.user_id, env.api
    room = await m.create_room(invite=[bot_id], encrypted=False)
    await m.wait_joined(room, bot_id)

    cmd = await m.send(room, "!file")
    reply = await m.expect_reply(room, cmd, sender=bot_id)
    content = reply.source["content"]
    assert not reply.decrypted and "file" not in content
    assert content["url"].startswith("mxc://")
    assert await m.download_media(content) == TEXT
    assert await api.download(content) == TEXT

    limit = await api.upload_limit()
    assert isinstance(limit, int) and limit > 0
    big = tmp_path / "big.bin"
    big.write_bytes(b"")
    os.truncate(big, limit + 1)  # sparse: refused before it is read
    with pytest.raises(MatrixError) as err:
        await api.send_file(room, big)
    assert err.value.errcode == "M_TOO_LARGE" and str(limit) in str(err.value)


async def test_media_downloads_are_capped(env: Env, monkeypatch):
    """Issue 12, finding 7: ``download`` reads no file over its cap (``max_bytes``, 50 MiB by default), whatever the
    event says: the declared size, the server's Content-Length and the bytes received are each checked."""
    m, api = env.member, env.api
    data = os.urandom(5000)
    ciphertext, keys = encrypt_attachment(data)
    resp, _ = await m.client.upload(
        lambda *_: ciphertext, content_type="application/octet-stream", filesize=len(ciphertext)
    )
    assert isinstance(resp, UploadResponse), resp
    content = {"msgtype": "m.file", "body": "blob.bin", "info": {"size": len(data)},
               "file": {"url": resp.content_uri, **keys}}
    assert await api.download(content) == data  # well under the default cap
    assert await api.download(content, max_bytes=len(data)) == data
    for lying_size in (len(data), 10, None):  # honest, understated, not given: all refused
        claimed = dict(content, info={"size": lying_size}) if lying_size is not None else {
            k: v for k, v in content.items() if k != "info"}
        with pytest.raises(MatrixError) as err:
            await api.download(claimed, max_bytes=1000)
        assert err.value.errcode == "M_TOO_LARGE" and "at most 1000" in str(err.value), err.value

    # A server that sends no Content-Length: the transfer is cut as soon as it passes the cap.
    class Endless:
        status, reason, content_length = 200, "OK", None
        read = 0
        closed = False

        def __init__(self) -> None:
            self.content = self

        async def iter_chunked(self, n: int):
            while True:
                Endless.read += n
                yield b"x" * n

        def close(self) -> None:
            Endless.closed = True

        def release(self) -> None:
            raise AssertionError("an oversized body must not be kept for reuse")

    async def endless_send(*args, **kwargs):
        return Endless()

    monkeypatch.setattr(api._client, "send", endless_send)
    with pytest.raises(MatrixError) as err:
        await api.download({"msgtype": "m.file", "body": "x", "url": "mxc://localhost/endless"}, max_bytes=200_000)
    assert err.value.errcode == "M_TOO_LARGE"
    assert Endless.closed and Endless.read <= 200_000 + (1 << 16)
