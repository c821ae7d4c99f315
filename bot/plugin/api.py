"""The bot as plugins see it (``self.bot``): its Matrix actions plus the admins, the other plugins, the runtime's
counters, the trust policy, the bot's own identity and the moderation tools, and encryption at rest under the bot's
``pickle_key`` (:meth:`BotAPI.encrypt_at_rest`).

:class:`BotAPI` is built once by the runtime with every collaborator in place, so a plugin sees all of them from its
first ``start()``. The actions themselves (send, reply, react, edit, redact, DMs, media, members) are
:class:`~bot.matrix.actions.MatrixActions`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bot.crypto.fingerprint import fingerprint_lines
from bot.crypto.ssss import SecretStorageError, decrypt_secret, encrypt_secret
from bot.e2ee.identity import local_secrets_key
from bot.errors import MatrixError, StorageError
from bot.matrix.actions import MatrixActions
from bot.reports.cases import CaseRegistry
from bot.reports.invites import InviteGuards
from bot.reports.moderation import Moderation

if TYPE_CHECKING:
    from bot.appservice import Appservice, Ghost
    from bot.e2ee.identity import Identity
    from bot.e2ee.trust import TrustPolicy
    from bot.e2ee.verification_service import VerificationService
    from bot.http_listener import HttpListener
    from bot.matrix.client import RatchetClient
    from bot.plugin.info import PluginDirectory
    from bot.stats import BotStats

__all__ = ["BotAPI"]

#: Prefix of the names :meth:`BotAPI.encrypt_at_rest` binds its data to (the local secrets' names never start so).
_AT_REST = "io.ratchet.at_rest:"


class BotAPI(MatrixActions):
    """What a plugin's ``self.bot`` offers: :class:`~bot.matrix.actions.MatrixActions` and the attributes below."""

    def __init__(
        self,
        client: RatchetClient,
        *,
        admins: tuple[str, ...],
        plugins: PluginDirectory,
        stats: BotStats,
        trust: TrustPolicy,
        identity: Identity | None,
        http: HttpListener | None = None,
        verifications: VerificationService | None = None,
        appservice: Appservice | None = None,
    ) -> None:
        super().__init__(client)
        #: The bot's admins from the config.
        self.admins = admins
        #: The plugin manager (list, reload, enable, disable plugins; their commands).
        self.plugins = plugins
        #: Runtime counters (uptime, UTDs, rooms).
        self.stats = stats
        #: The trust policy: whose devices get room keys, pinned identities (see :mod:`bot.e2ee.trust`).
        self.trust = trust
        #: The bot's own cross-signing identity and key backup (see :mod:`bot.e2ee.identity`); None when its local
        #: secrets cannot be read this run (the reason is logged).
        self.identity = identity
        #: Evidence and moderation actions (see :mod:`bot.reports.moderation`).
        self.moderation = Moderation(client, self, trust)
        #: One list of cases across plugins: which plugin owns which case ids (see :mod:`bot.reports.cases`).
        self.cases = CaseRegistry()
        #: Plugins' say on invites to the bot before the runtime answers them (see :mod:`bot.reports.invites`).
        self.invites = InviteGuards()
        #: The bot's HTTP listener (the ``http`` config section) where a plugin that serves HTTP mounts its routes
        #: (:meth:`~bot.http_listener.HttpListener.mount`) instead of opening a port of its own; None when it is off.
        self.http = http
        #: Interactive verification of the running bot (bot/e2ee/verification_service.py); None when not running.
        self.verifications = verifications
        #: Appservice mode (docs/appservice.md): ghosts and the homeserver's user/alias queries; None in relay mode.
        self.appservice = appservice

    def ghost(self, name: str) -> Ghost:
        """The appservice's ghost ``name`` (``"alice"``, ``"irc_alice"`` or ``"@irc_alice:example.org"``), to act as
        it: ``await ghost.set_display_name(...)``, ``await ghost.send_text(room_id, text, reply_to=...)``, ``join``,
        ``leave``, ``set_avatar_url``. Raises MatrixError in relay mode, ValueError for a name outside the namespace.
        """
        if self.appservice is None:
            raise MatrixError("ghosts need appservice mode: the config has no appservice section (docs/appservice.md)")
        return self.appservice.ghost(name)

    async def fingerprints(self, user_id: str | None = None) -> list[str]:
        """The bot's fingerprints as lines to show people (device ed25519 key and account master key in groups of
        four), and with ``user_id`` that user's master key and the 60-digit safety number of the two master keys
        (Signal's numeric fingerprint), for comparing out of band. Raises MatrixError if verification is not running.
        """
        if self.verifications is None:
            raise MatrixError("fingerprints are not available: the verification service is not running")
        return fingerprint_lines(await self.verifications.fingerprints(user_id))

    def is_admin(self, user_id: str) -> bool:
        """True if ``user_id`` is one of the bot's admins from the config."""
        return user_id in self.admins

    def _at_rest_key(self) -> bytes:
        key = getattr(getattr(self._client, "config", None), "pickle_key", None)
        if not isinstance(key, str) or not key:
            raise StorageError("encryption at rest needs the bot's pickle_key, which this client does not have")
        return local_secrets_key(key)

    def encrypt_at_rest(self, purpose: str, plaintext: str) -> str:
        """``plaintext`` encrypted for storage under the bot's ``pickle_key`` (a key derived from it with HKDF-SHA-256,
        the one ``data_dir/secrets.json`` uses), bound to ``purpose`` (say ``"irc_bridge.queue"``): AES-256-CTR and
        HMAC-SHA-256 with keys derived per purpose, as SSSS encrypts a secret. Returns a compact JSON string to
        store; :meth:`decrypt_at_rest` with the same purpose reads it back. Nothing readable is left on disk, and
        data moved to another purpose does not decrypt."""
        return json.dumps(encrypt_secret(self._at_rest_key(), _AT_REST + purpose, plaintext, padded=False),
                          separators=(",", ":"), sort_keys=True)

    def decrypt_at_rest(self, purpose: str, stored: str) -> str:
        """What :meth:`encrypt_at_rest` encrypted for ``purpose``. Raises :class:`~bot.errors.StorageError` if it
        does not decrypt (another ``pickle_key``, another purpose, or altered data)."""
        try:
            return decrypt_secret(self._at_rest_key(), _AT_REST + purpose, json.loads(stored))
        except (SecretStorageError, ValueError, TypeError) as exc:
            raise StorageError(f"data stored for {purpose} does not decrypt: {exc}") from None
