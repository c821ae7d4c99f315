"""An echo bot on nio-bot 1.2.1 (its README's pattern): ``!ping`` -> ``pong``.

``python niobot_echo.py HOMESERVER USER_ID PASSWORD STORE_DIR`` in bench/.venvs/niobot.
"""

import os
import sys
import time

import niobot

homeserver, user_id, password, store_dir = sys.argv[1:5]
os.makedirs(store_dir, exist_ok=True)
bot = niobot.NioBot(
    homeserver=homeserver,
    user_id=user_id,
    device_id="niobot-echo",
    store_path=store_dir,
    command_prefix="!",
)
mark = os.environ.get("BENCH_MARK_FILE")


@bot.command()
async def ping(ctx: niobot.Context):
    if mark:
        with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
            fh.write(f"{time.time()}\n")
    await ctx.respond("pong")


print("READY", flush=True)
bot.run(password=password)
