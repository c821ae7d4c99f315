"""``ratchet demo``: a scripted encrypted conversation against a throwaway Synapse, printed step by step.

Everything lives in a temporary directory and on 127.0.0.1; the homeserver, the bot and the demo user are shut down
and removed at the end, even on failure.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["run_demo"]


def _step(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run_demo() -> int:
    """Run the demo; returns 0 when the bot's encrypted ``pong`` came back."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        ok = asyncio.run(_demo())
    except KeyboardInterrupt:
        return 130
    return 0 if ok else 1


async def _demo() -> bool:
    from bot.config import parse_config
    from bot.runtime.runtime import Runtime
    from bot.testing.member import Member
    from bot.testing.synapse import SynapseServer

    with tempfile.TemporaryDirectory(prefix="ratchet-demo-") as tmp:
        root = Path(tmp)
        _step("starting a throwaway Synapse on 127.0.0.1 (SQLite, in a temp dir) ...")
        server = SynapseServer(root / "synapse")
        t0 = time.monotonic()
        await asyncio.to_thread(server.start)
        _step(f"Synapse is up at {server.url} ({time.monotonic() - t0:.1f}s)")
        bot_task = None
        member = None
        try:
            bot_pw, demo_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
            bot_user = server.register_user("ratchet", bot_pw)
            demo_user = server.register_user("demo", demo_pw)
            _step(f"registered the bot {bot_user.user_id} and the demo user {demo_user.user_id}")

            config = parse_config(
                f"""
homeserver: {server.url}
user_id: "{bot_user.user_id}"
password: "{bot_pw}"
data_dir: {root / "bot-data"}
pickle_key: "{secrets.token_urlsafe(24)}"
invites:
  accept_from: ["@*:{server.server_name}"]
plugins:
  ping: {{}}
""",
                source="<demo>",
            )
            bot = await Runtime.open(config)
            bot_task = asyncio.create_task(bot.run(install_signal_handlers=False))
            await asyncio.wait_for(bot.ready.wait(), 60)
            _step(f"the bot is running as device {bot.client.device_id}")

            member = Member(server.url, demo_user.user_id, demo_pw, root / "member-store")
            await member.start()
            room_id = await member.create_room(invite=[bot_user.user_id], encrypted=True, name="Ratchet demo")
            _step(f"the demo user created the encrypted room {room_id} and invited the bot")
            await member.wait_joined(room_id, bot_user.user_id)
            _step("the bot accepted the invite and joined")

            event_id = await member.send(room_id, "!ping")
            _step("the demo user sent an encrypted '!ping'")
            reply = await member.expect_reply(room_id, event_id, sender=bot_user.user_id, timeout=30)
            encrypted = bool(getattr(reply, "decrypted", False))
            how = "encrypted, decrypted by the demo user" if encrypted else "NOT encrypted"
            _step(f"the bot answered {reply.body!r} ({how})")
            return encrypted and reply.body.startswith("pong")
        except Exception as exc:
            print(f"[demo] failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            return False
        finally:
            _step("shutting down ...")
            if member is not None:
                await member.close()
            if bot_task is not None:
                bot.request_stop()
                try:
                    await asyncio.wait_for(bot_task, 15)
                except Exception as exc:
                    print(f"[demo] bot stopped with {exc.__class__.__name__}: {exc}", file=sys.stderr)
            await asyncio.to_thread(server.stop)
            _step("done; everything was removed")
