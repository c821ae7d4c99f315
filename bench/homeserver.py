"""The benchmarks' Synapse: the test harness's :class:`~bot.testing.synapse.SynapseServer` with its log at WARNING
(an INFO line per request would be part of every measured round trip), plus the few admin calls the benchmarks
make."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from bot.testing.synapse import RegisteredUser, SynapseServer


class BenchSynapse(SynapseServer):
    """A SynapseServer that logs warnings only."""

    def _log_config(self) -> dict[str, Any]:
        config = super()._log_config()
        config["root"]["level"] = "WARNING"
        config["loggers"] = {"synapse.storage.SQL": {"level": "WARNING"}}
        return config

    def join(self, user: RegisteredUser, room_id: str) -> None:
        """Join ``user`` to ``room_id`` (they must be invited) with the token from their registration."""
        self.admin_request("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}", user.access_token, {})


def start_server(base: Path) -> BenchSynapse:
    server = BenchSynapse(base)
    server.start(timeout=120)
    return server
