"""The status page at ``/`` on the HTTP listener (to be written: see issue 14, part 4)."""

from __future__ import annotations

from typing import Any

from bot.http_listener import HttpListener

__all__ = ["install_status_page"]


def install_status_page(runtime: Any, http: HttpListener) -> None:
    """Serve the status page on ``http`` when a status token is configured."""
    return None
