"""What the appservice end-to-end tests share (``tests/test_e2e_appservice*.py``): a free port, a Synapse that loads
the registration written by ``ratchet appservice registration`` (with the appservice encryption features or not),
and waiting for a condition.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bot.testing.synapse import SynapseServer

#: Synapse's appservice encryption features (docs/appservice.md, "Encryption"): MSC2409 to-device events, MSC3202
#: device lists and key counts, MSC3983 key claims.
EXPERIMENTAL = {
    "msc2409_to_device_messages_enabled": True,
    "msc3202_transaction_extensions": True,
    "msc3983_appservice_otk_claims": True,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def appservice_synapse(
    base_dir: Path, port: int, config: Path, registration: Path, *, encryption: bool = False
) -> SynapseServer:
    """Write ``registration`` from the bridge's ``config`` with ``ratchet appservice registration`` (asserting that it
    succeeds), and return a Synapse on ``port`` (in ``base_dir``, not started yet) that loads it; ``encryption``: with
    :data:`EXPERIMENTAL` on."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "appservice", "registration", "-c", str(config), "-o", str(registration)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    extra: dict = {"app_service_config_files": [str(registration)]}
    if encryption:
        extra["experimental_features"] = EXPERIMENTAL
    return SynapseServer(base_dir, port=port, extra_config=extra)


async def until(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until ``condition()`` is true, checking every 0.1 s; AssertionError after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
