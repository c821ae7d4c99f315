"""An echo skill for opsdroid 0.31: ``!ping`` -> ``pong``."""

import os
import time

from opsdroid.matchers import match_regex
from opsdroid.skill import Skill


class EchoSkill(Skill):
    @match_regex(r"^!ping$")
    async def ping(self, message):
        mark = os.environ.get("BENCH_MARK_FILE")
        if mark:
            with open(mark, "a") as fh:  # noqa: ASYNC230 - a tiny append, as cheap as a log line
                fh.write(f"{time.time()}\n")
        await message.respond("pong")
