"""An echo bot on simplematrixbotlib 2.13.1 (its README's pattern): ``!ping`` -> ``pong``.

``python smbl_echo.py HOMESERVER USER_ID PASSWORD STORE_DIR`` in bench/.venvs/smbl.
"""

import os
import sys
import time

import simplematrixbotlib as botlib

homeserver, user_id, password, store_dir = sys.argv[1:5]
os.makedirs(store_dir, exist_ok=True)
os.chdir(store_dir)
creds = botlib.Creds(homeserver, user_id, password, session_stored_file=os.path.join(store_dir, "session.txt"))
config = botlib.Config()
config.encryption_enabled = True
config.ignore_unverified_devices = True
config.emoji_verify = False
config.store_path = os.path.join(store_dir, "crypto_store")
bot = botlib.Bot(creds, config)
mark = os.environ.get("BENCH_MARK_FILE")


@bot.listener.on_message_event
async def echo(room, message):
    match = botlib.MessageMatch(room, message, bot, "!")
    if match.is_not_from_this_bot() and match.prefix() and match.command("ping"):
        if mark:
            with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
                fh.write(f"{time.time()}\n")
        await bot.api.send_text_message(room.room_id, "pong")


print("READY", flush=True)
bot.run()
