"""Every exception Ratchet raises, in one place.

Each names what went wrong in words an operator or plugin author can act on. The modules that raise them import
them from here; plugins catch them through ``bot`` (:class:`MatrixError`, :class:`UsageError`) and bridges through
``bot.bridge`` (:class:`PermanentSendError`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentError",
    "BackupError",
    "ConfigError",
    "EvidenceError",
    "IdentityError",
    "KeyBackupError",
    "MatrixError",
    "MatrixRequestError",
    "PermanentSendError",
    "PluginConfigError",
    "PluginLoadError",
    "RecoveryError",
    "RecoveryKeyError",
    "ScaffoldError",
    "SecretStorageError",
    "SessionError",
    "StateError",
    "StorageError",
    "UsageError",
    "plugin_option_path",
]


# -- bot.config --

class ConfigError(Exception):
    """A configuration problem, reported as one line: ``FILE:LINE: KEY: what is wrong``.

    Attributes:
        message: the description without the ``FILE:LINE:`` prefix.
        key: dotted path of the offending key, e.g. ``invites.accept_from[1]`` or
            ``plugins.ping``; None when the problem is not about one key (a YAML syntax error,
            an unreadable file).
        file: the config file's name as given (or the ``source`` passed to :func:`parse_config`).
        line: the 1-based line of the offending YAML node, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.key = key
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (self.message, self.key, self.file, self.line))


# -- bot.plugin.loader --

class PluginLoadError(Exception):
    """A plugin could not be found, imported or instantiated; the message names the plugin."""


# -- bot.plugin.options --

class PluginConfigError(Exception):
    """A problem with a plugin's options, reported as one line: ``plugins.NAME.KEY: what is wrong``.

    Attributes:
        message: the whole line (also ``str(error)``).
        plugin: the plugin's name.
        key: dotted path of the offending option inside the plugin's options, e.g. ``max_items``, ``db.host``,
            ``rooms.allow[1]`` (for a missing or unknown option, that option's path); None when the problem is about
            the options as a whole.
        parts: the same path as option names and list indexes, e.g. ``("rooms", "allow", 1)`` (``()`` for the
            options as a whole): what finds the option's line in the config file (``Config.plugin_line``).
    """

    def __init__(
        self, message: str, *, plugin: str, key: str | None = None, parts: tuple[str | int, ...] = ()
    ) -> None:
        self.message = message
        self.plugin = plugin
        self.key = key
        self.parts = parts
        super().__init__(message)

    @property
    def path(self) -> str:
        """Full dotted path of the offending key in the config file, e.g. ``plugins.reminders.max_items``."""
        return plugin_option_path(self.plugin, self.key or "")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_plugin_config_error, (self.message, self.plugin, self.key, self.parts))


def _rebuild_config_error(message: str, key: str | None, file: str | None, line: int | None) -> ConfigError:
    return ConfigError(message, key=key, file=file, line=line)


def _rebuild_plugin_config_error(
    message: str, plugin: str, key: str | None, parts: tuple[str | int, ...] = ()
) -> PluginConfigError:
    return PluginConfigError(message, plugin=plugin, key=key, parts=parts)


def plugin_option_path(plugin: str, key: str) -> str:
    """Where a plugin option sits in the config file: ``plugins.NAME.KEY`` (``plugins.NAME[0]`` for an index)."""
    if not key:
        return f"plugins.{plugin}"
    return f"plugins.{plugin}{key}" if key.startswith("[") else f"plugins.{plugin}.{key}"


# -- bot.plugin.commands --

class ArgumentError(ValueError):
    """One argument could not be read: an unclosed quote, or a value of the wrong type.

    The message names the parameter and what was expected, e.g.
    ``count: expected an integer, got 'abc'``.
    """

    def __init__(self, message: str, *, param: str | None = None, value: str | None = None) -> None:
        """Create the error; ``param`` and ``value`` are kept as attributes for callers."""
        super().__init__(message)
        #: The message, as given.
        self.message: str = message
        #: Name of the parameter the argument was for, when known.
        self.param: str | None = param
        #: The offending raw text, when known.
        self.value: str | None = value


class UsageError(Exception):
    """A command was invoked wrongly. ``str(err)`` is the message followed by the usage line.

    The dispatcher is expected to send ``str(err)`` back to the room as is.
    """

    def __init__(self, message: str, usage: str) -> None:
        """Create the error from a specific ``message`` and the command's ``usage`` string."""
        super().__init__(message, usage)
        #: What went wrong, e.g. ``missing argument <minutes: int>``.
        self.message: str = message
        #: The command's usage line, e.g. ``!remind <who: user> <minutes: int> <text...>``.
        self.usage: str = usage

    def __str__(self) -> str:
        """The message and the usage line, on two lines."""
        return f"{self.message}\nUsage: {self.usage}"


# -- bot.plugin.api --

class MatrixError(Exception):
    """A request to the homeserver failed; ``errcode`` is the Matrix error code if there was one."""

    def __init__(self, message: str, errcode: str | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


# -- bot.storage.state --

class StateError(Exception):
    """``state.db`` cannot be written (disk full, read-only, I/O error): the bot must stop rather than go on
    handling events it can no longer record."""


# -- bot.storage.plugin_storage --

class StorageError(Exception):
    """The plugin's database could not be opened or migrated, or the storage is closed."""


# -- bot.matrix.session --

class SessionError(Exception):
    """The bot cannot start with the identity it has on disk; the message says what to do."""


# -- bot.e2ee.identity --

class IdentityError(Exception):
    """The identity cannot be set up or recovered; the message says why and what to do."""


class MatrixRequestError(IdentityError):
    """A homeserver request failed: ``status`` (0 for a transport error), ``errcode`` and the JSON ``body``."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method = method
        self.path = path.split("?", 1)[0]
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.errcode = self.body.get("errcode")
        detail = self.body.get("error") or (body if isinstance(body, str) else "")
        super().__init__(f"{method} {self.path}: {status} {self.errcode or ''} {detail}".strip())


# -- bot.e2ee.key_backup --

class KeyBackupError(Exception):
    """The key backup cannot be used (wrong key, version gone, malformed server data)."""


# -- bot.e2ee.offline --

class RecoveryError(Exception):
    """A recovery procedure failed; the message is one line for the operator."""


# -- bot.crypto.megolm_backup --

class BackupError(Exception):
    """Backup data could not be decrypted or is malformed."""


# -- bot.crypto.recoverykey --

class RecoveryKeyError(ValueError):
    """A recovery key could not be decoded (bad character, length, prefix or parity)."""


# -- bot.crypto.ssss --

class SecretStorageError(Exception):
    """A secret could not be decrypted or a secret storage input is malformed."""


# -- bot.reports.evidence --

class EvidenceError(ValueError):
    """A bundle cannot be built from what was given."""


# -- bot.bridge.connection --

class PermanentSendError(Exception):
    """Raised by :meth:`RemoteConnection.send` for an item the remote side refuses for good (it is dropped, not
    retried; the connection stays up). Any other exception means the link is broken: reconnect and retry."""


# -- bot.cli.scaffold --

class ScaffoldError(Exception):
    """The plugin cannot be created (bad name, or it exists)."""

