"""The registration: what the homeserver is told about the appservice, and the two tokens both sides share.

Sans-I/O apart from :func:`load_tokens` / :func:`create_tokens` (one small file, mode 0600). The registration is built
from the config (:func:`build_registration`): ``id``, ``url``, the tokens, ``sender_localpart`` (the bot), the
namespaces (:class:`Namespaces`: the ghosts' ``@{ghost_prefix}...:{server}`` and aliases ``#{alias_prefix}...``, both
exclusive), ``rate_limited`` and the flags the E2EE work uses (MSC2409 ephemeral and to-device events, MSC3202 device
lists and key counts, MSC4190 device management).

Where the tokens live: ``appservice.as_token``/``hs_token`` in the config (``${VAR}``, for deployments whose secrets
come from the environment, e.g. an active/standby pair on PostgreSQL), else the file
``appservice.tokens_file`` (default ``data_dir/appservice-tokens.json``) that ``ratchet appservice registration``
creates once and reuses: the registration it writes and the bot that runs always hold the same tokens.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.config import AppserviceConfig, Config
from bot.errors import ConfigError

__all__ = [
    "AppserviceTokens",
    "Namespaces",
    "build_registration",
    "create_tokens",
    "load_tokens",
    "registration_yaml",
    "resolve_tokens",
]


@dataclass(frozen=True)
class AppserviceTokens:
    """``as_token`` (we authenticate at the homeserver) and ``hs_token`` (the homeserver authenticates at us)."""

    as_token: str
    hs_token: str

    def __repr__(self) -> str:
        return "AppserviceTokens(<redacted>)"

    @classmethod
    def generate(cls) -> AppserviceTokens:
        """Two fresh random tokens (256 bits each)."""
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))


class Namespaces:
    """Which user ids are the appservice's: the bot (``sender``) and the ghosts (``@{prefix}...:{server}``)."""

    def __init__(self, server_name: str, sender_localpart: str, ghost_prefix: str | None, alias_prefix: str | None):
        self.server_name = server_name
        self.sender = f"@{sender_localpart}:{server_name}"
        self.ghost_prefix = ghost_prefix
        self.alias_prefix = alias_prefix
        server = re.escape(server_name)
        self._ghost_re = re.compile(rf"@{re.escape(ghost_prefix)}[^:]+:{server}") if ghost_prefix else None
        self._alias_re = re.compile(rf"#{re.escape(alias_prefix)}[^:]+:{server}") if alias_prefix else None

    @classmethod
    def from_config(cls, config: Config) -> Namespaces:
        """The namespaces of ``config`` (which must have an ``appservice`` section)."""
        section = _section(config)
        localpart, server_name = config.user_id[1:].split(":", 1)
        return cls(server_name, localpart, section.ghost_prefix, section.alias_prefix)

    def user_regex(self) -> str | None:
        """The registration's user namespace regex, or None without ghosts."""
        return self._ghost_re.pattern if self._ghost_re is not None else None

    def alias_regex(self) -> str | None:
        """The registration's alias namespace regex, or None."""
        return self._alias_re.pattern if self._alias_re is not None else None

    def is_ghost(self, user_id: str) -> bool:
        """True for a ghost's user id (in the namespace, not the bot)."""
        return self._ghost_re is not None and self._ghost_re.fullmatch(user_id) is not None

    def is_ours(self, user_id: str) -> bool:
        """True for the bot or one of its ghosts."""
        return user_id == self.sender or self.is_ghost(user_id)

    def is_our_alias(self, alias: str) -> bool:
        """True for a room alias in the appservice's alias namespace."""
        return self._alias_re is not None and self._alias_re.fullmatch(alias) is not None

    def ghost_id(self, name: str) -> str:
        """The user id of the ghost ``name``: a full user id, a localpart with the prefix, or the part after it.

        Raises ValueError for a name outside the namespace or one that is not a valid localpart.
        """
        if self.ghost_prefix is None:
            raise ValueError("this appservice has no ghosts: set appservice.ghost_prefix in the config")
        if name.startswith("@"):
            user_id = name
        else:
            localpart = name if name.startswith(self.ghost_prefix) else self.ghost_prefix + name
            user_id = f"@{localpart}:{self.server_name}"
        localpart = user_id[1:].split(":", 1)[0]
        if not self.is_ghost(user_id) or not re.fullmatch(r"[a-z0-9._=/+-]+", localpart):
            raise ValueError(
                f"{name!r} is not a ghost of this appservice (user ids @{self.ghost_prefix}...:{self.server_name}, "
                "localparts of lowercase a-z, 0-9 and ._=-/+)"
            )
        return user_id


def _section(config: Config) -> AppserviceConfig:
    if config.appservice is None:
        raise ConfigError("the config has no appservice section (docs/appservice.md)", key="appservice",
                          file=config.source)
    return config.appservice


def listen_url(section: AppserviceConfig) -> str:
    """Where the homeserver reaches the appservice: ``url``, else ``http://host:port``."""
    if section.url is not None:
        return section.url
    host = f"[{section.host}]" if ":" in section.host else section.host
    return f"http://{host}:{section.port}"


def build_registration(config: Config, tokens: AppserviceTokens) -> dict[str, Any]:
    """The registration of ``config``'s appservice, as the homeserver's ``app_service_config_files`` entry reads."""
    section = _section(config)
    ns = Namespaces.from_config(config)
    users = [{"exclusive": True, "regex": ns.user_regex()}] if ns.user_regex() else []
    aliases = [{"exclusive": True, "regex": ns.alias_regex()}] if ns.alias_regex() else []
    registration: dict[str, Any] = {
        "id": section.id,
        "url": listen_url(section),
        "as_token": tokens.as_token,
        "hs_token": tokens.hs_token,
        "sender_localpart": ns.sender[1:].split(":", 1)[0],
        "namespaces": {"users": users, "aliases": aliases, "rooms": []},
        "rate_limited": section.rate_limited,
    }
    if section.receive_ephemeral:
        registration.update(
            {
                "receive_ephemeral": True,
                "de.sorunome.msc2409.push_ephemeral": True,
                "org.matrix.msc3202": True,
                "io.element.msc4190": True,
            }
        )
    return registration


def registration_yaml(registration: dict[str, Any]) -> str:
    """The registration as YAML, with a header saying what it is."""
    header = (
        "# Appservice registration written by `ratchet appservice registration`. It holds the appservice's tokens:\n"
        "# keep it private (mode 0600), add its path to app_service_config_files in homeserver.yaml, restart\n"
        "# Synapse. Regenerating keeps the tokens (they live in the bot's config or tokens file).\n"
    )
    return header + yaml.safe_dump(registration, sort_keys=False)


def load_tokens(path: Path) -> AppserviceTokens | None:
    """The tokens kept in ``path``; None if the file does not exist. Raises ConfigError for an unreadable one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", key="appservice.tokens_file") from None
    try:
        data = json.loads(text)
        tokens = AppserviceTokens(str(data["as_token"]), str(data["hs_token"]))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path} is not an appservice tokens file (JSON with as_token and hs_token)", key="appservice.tokens_file"
        ) from None
    if len(tokens.as_token) < 32 or len(tokens.hs_token) < 32 or tokens.as_token == tokens.hs_token:
        raise ConfigError(f"{path} holds tokens that are too short or equal", key="appservice.tokens_file")
    return tokens


def create_tokens(path: Path) -> AppserviceTokens:
    """Generate tokens into a new file ``path`` (mode 0600 from its creation; never overwrites one)."""
    tokens = AppserviceTokens.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"as_token": tokens.as_token, "hs_token": tokens.hs_token}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    return tokens


def resolve_tokens(config: Config, *, create: bool) -> AppserviceTokens | None:
    """The tokens of ``config``: from the config itself, else from its tokens file (created when ``create``).

    None when neither has them and ``create`` is false.
    """
    section = _section(config)
    if section.as_token is not None and section.hs_token is not None:
        return AppserviceTokens(section.as_token, section.hs_token)
    path = section.tokens_path(config.data_dir)
    tokens = load_tokens(path)
    if tokens is None and create:
        tokens = create_tokens(path)
    return tokens
