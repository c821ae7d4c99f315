"""The bot's login (``credentials.json``) and private files: written atomically, mode 0600 from the first byte."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bot.errors import SessionError

__all__ = ["Credentials", "write_private"]


@dataclass(frozen=True)
class Credentials:
    """What ``credentials.json`` holds."""

    homeserver: str
    user_id: str
    device_id: str
    access_token: str

    @classmethod
    def load(cls, path: Path) -> Credentials:
        """Read credentials; a damaged file is a :class:`SessionError`."""
        try:
            data = json.loads(path.read_text())
            return cls(
                homeserver=str(data["homeserver"]),
                user_id=str(data["user_id"]),
                device_id=str(data["device_id"]),
                access_token=str(data["access_token"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SessionError(f"{path}: unreadable credentials file ({exc.__class__.__name__})") from exc

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (the file never exists with wider permissions)."""
        write_private(path, json.dumps(asdict(self), indent=2) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
