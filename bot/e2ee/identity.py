"""The bot's cross-signing identity: bootstrap, secret storage, the recovery key, device signing and status.

The pure primitives live next door (:mod:`.cross_signing`, :mod:`.ssss`, :mod:`.recoverykey`, :mod:`.backup`);
this module is the async shell that talks to the homeserver:

* **Cross-signing bootstrap** (first start with ``e2ee.cross_signing: true``, and ``ratchet cross-signing reset``):
  master, self-signing and user-signing keys from random seeds, uploaded with ``POST /keys/device_signing/upload``
  (user-interactive auth with the password when the server asks for it), then the bot's device signed by the
  self-signing key and the master key signed by the device (``POST /keys/signatures/upload``).
* **Secret storage** (SSSS, ``m.secret_storage.v1.aes-hmac-sha2``) under a new **recovery key**: the three seeds and
  the key backup key, where Element and every other client look for them. The recovery key is shown once (a WARNING
  banner, or written to ``e2ee.recovery_key_file`` with mode 0600).
* **Local secrets** (``data_dir/secrets.json``, mode 0600): the seeds, the backup key and the recovery key, each
  encrypted like an SSSS secret with a key derived from ``pickle_key`` (HKDF-SHA-256), so a restart needs no recovery
  key and ``ratchet recovery-key show`` can print it again.
* **Restarts reuse the keys**: nothing is uploaded when the account's published keys are the ones we hold. If the
  account has cross-signing keys we do not hold (made in Element, say), they are never overwritten: the log says to
  run ``ratchet verify --recovery-key KEY`` (or ``ratchet cross-signing reset``) and the bot keeps running.

Requests the nio client has no method for go through :func:`bot.matrix.requests.request_json`.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from bot.crypto.canonical import JsonSigner
from bot.crypto.cross_signing import (
    CrossSigningKeys,
    CrossSigningSeeds,
    cross_signing_public,
    master_public,
    signatures_upload_body,
    verify_device_signed,
    verify_master_signed_by_device,
    verify_self_signing_key,
)
from bot.crypto.megolm_backup import BackupKey
from bot.crypto.recoverykey import decode_recovery_key, encode_recovery_key
from bot.crypto.ssss import (
    BACKUP,
    DEFAULT_KEY_TYPE,
    MASTER,
    SELF_SIGNING,
    USER_SIGNING,
    SecretStorageError,
    check_key,
    decode_secret_key,
    decrypt_secret,
    encrypt_secret,
    key_type,
    make_key_description,
    new_key_id,
    read_secret,
    secret_content,
)
from bot.errors import IdentityError, MatrixRequestError, RecoveryKeyError
from bot.log import add_secret
from bot.matrix.requests import api_path, post_with_password_auth, request_json
from bot.storage.credentials import write_private
from bot.storage.private_files import LocalFile, PrivateFile

if TYPE_CHECKING:
    from bot.e2ee.key_backup import KeyBackup
    from bot.storage.backend import Storage

__all__ = [
    "RECOVERY_KEY_SECRET",
    "SECRETS_FILE",
    "Identity",
    "LocalSecrets",
    "OwnKeys",
    "RecoveredKeys",
    "SecretStorage",
    "VerifyResult",
    "local_secrets_key",
    "query_own_keys",
    "recover_cross_signing_keys",
    "recovery_banner",
]

log = logging.getLogger("ratchet.identity")

#: The local encrypted secrets file, inside data_dir.
SECRETS_FILE = "secrets.json"
#: Name under which the recovery key (its encoded form) is kept in the local secrets file.
RECOVERY_KEY_SECRET = "ratchet.recovery_key"
_LOCAL_FORMAT = "ratchet.local_secrets.v1"
_LOCAL_SALT = b"ratchet local secrets v1"
#: Seconds before the first retry of a failed identity set-up (from the sync loop); doubles up to RETRY_MAX.
RETRY_SECONDS = 60.0
RETRY_MAX = 3600.0
_SEEDS = (MASTER, SELF_SIGNING, USER_SIGNING)


# ----------------------------------------------------------------------------------------------- HTTP


# ----------------------------------------------------------------------------------------------- published keys


@dataclass
class OwnKeys:
    """The account's published cross-signing keys and device keys, from ``POST /keys/query``."""

    user_id: str
    master: dict[str, Any] | None = None
    self_signing: dict[str, Any] | None = None
    user_signing: dict[str, Any] | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def master_public(self) -> str:
        """The published master public key, or ``""``."""
        return master_public(self.master, self.user_id)

    @property
    def self_signing_public(self) -> str:
        """The published self-signing public key, or ``""`` (also when it is not signed by the master key)."""
        if not verify_self_signing_key(self.master, self.self_signing, self.user_id):
            return ""
        return cross_signing_public(self.self_signing, self.user_id, "self_signing")

    @property
    def user_signing_public(self) -> str:
        """The published user-signing public key, or ``""``."""
        return cross_signing_public(self.user_signing, self.user_id, "user_signing")

    def matches(self, keys: CrossSigningKeys) -> bool:
        """Whether the published master and self-signing keys (and user-signing, if shown) are ``keys``."""
        if self.master_public != keys.master_public or self.self_signing_public != keys.self_signing_public:
            return False
        return not self.user_signing or self.user_signing_public == keys.user_signing_public

    def device_signed(self, device_id: str) -> bool:
        """Whether ``device_id`` is signed by the published (and valid) self-signing key."""
        device = self.devices.get(device_id)
        return bool(self.self_signing_public) and verify_device_signed(device, self.self_signing, self.user_id)


async def query_own_keys(client: Any, user_id: str) -> OwnKeys:
    """The published keys of ``user_id`` (our own account: the user-signing key is included)."""
    resp = await request_json(client, "POST", api_path("keys", "query"), {"device_keys": {user_id: []}})
    resp = resp if isinstance(resp, dict) else {}

    def pick(section: str) -> dict[str, Any] | None:
        value = (resp.get(section) or {}).get(user_id)
        return value if isinstance(value, dict) else None

    devices = (resp.get("device_keys") or {}).get(user_id) or {}
    return OwnKeys(
        user_id,
        master=pick("master_keys"),
        self_signing=pick("self_signing_keys"),
        user_signing=pick("user_signing_keys"),
        devices={k: v for k, v in devices.items() if isinstance(v, dict)},
    )


# ----------------------------------------------------------------------------------------------- secret storage


class SecretStorage:
    """The account's secret storage (SSSS) in account data, read and written through the client."""

    def __init__(self, client: Any, user_id: str) -> None:
        self.client = client
        self.user_id = user_id

    async def get_account_data(self, event_type: str) -> dict[str, Any] | None:
        """Global account data ``event_type``, or None if it is not set."""
        try:
            content = await request_json(
                self.client, "GET", api_path("user", self.user_id, "account_data", event_type)
            )
        except MatrixRequestError as err:
            if err.status == 404:
                return None
            raise
        return content if isinstance(content, dict) and content else None

    async def put_account_data(self, event_type: str, content: dict[str, Any]) -> None:
        """Set global account data ``event_type``."""
        await request_json(self.client, "PUT", api_path("user", self.user_id, "account_data", event_type), content)

    async def default_key_id(self) -> str | None:
        """The id of the default secret storage key, or None."""
        content = await self.get_account_data(DEFAULT_KEY_TYPE)
        key_id = (content or {}).get("key")
        return key_id if isinstance(key_id, str) and key_id else None

    async def open(self, recovery_key: str) -> tuple[str, bytes]:
        """Check ``recovery_key`` against the default key; returns ``(key_id, key)`` or raises IdentityError."""
        try:
            key = decode_recovery_key(recovery_key)
        except RecoveryKeyError as exc:
            raise IdentityError(f"that is not a valid recovery key: {exc}") from None
        key_id = await self.default_key_id()
        if key_id is None:
            raise IdentityError(
                f"{self.user_id} has no secret storage (no {DEFAULT_KEY_TYPE} account data): nothing to recover; "
                "start the bot with e2ee.cross_signing: true to create cross-signing keys and a recovery key"
            )
        description = await self.get_account_data(key_type(key_id))
        if description is None:
            raise IdentityError(f"the default secret storage key {key_id} has no description in account data")
        if not check_key(key, description):
            raise IdentityError(
                f"the recovery key does not match {self.user_id}'s secret storage key {key_id} "
                "(a typo, or a key from another account or an older reset?)"
            )
        return key_id, key

    async def create_key(self) -> tuple[str, bytes, dict[str, Any]]:
        """A new random secret storage key: ``(key_id, key, description)``; nothing is uploaded yet."""
        key = _random_key()
        return new_key_id(), key, make_key_description(key)

    async def publish_key(self, key_id: str, description: dict[str, Any], *, make_default: bool = True) -> None:
        """Upload a key description (and make it the default key)."""
        await self.put_account_data(key_type(key_id), description)
        if make_default:
            await self.put_account_data(DEFAULT_KEY_TYPE, {"key": key_id})

    async def read(self, name: str, key_id: str, key: bytes) -> str | None:
        """Decrypt secret ``name`` with ``key_id``/``key``; None if the secret is not stored (for that key)."""
        content = await self.get_account_data(name)
        if content is None:
            return None
        encrypted = content.get("encrypted")
        if not isinstance(encrypted, dict) or key_id not in encrypted:
            return None
        try:
            return read_secret(content, key_id, key, name)
        except SecretStorageError as exc:
            raise IdentityError(f"secret {name} in secret storage does not decrypt: {exc}") from None

    async def store(self, name: str, value: str, key_id: str, key: bytes) -> None:
        """Encrypt ``value`` as secret ``name`` with ``key_id``/``key`` (replacing copies under other keys)."""
        await self.put_account_data(name, secret_content(key_id, key, name, value))


def _random_key() -> bytes:
    return secrets.token_bytes(32)


# ----------------------------------------------------------------------------------------------- local secrets


def local_secrets_key(pickle_key: str) -> bytes:
    """The 32-byte key encrypting ``secrets.json``: HKDF-SHA-256 of the pickle key."""
    return HKDF(pickle_key.encode("utf-8"), 32, _LOCAL_SALT, SHA256, context=b"ratchet.local_secrets")


class LocalSecrets:
    """``data_dir/secrets.json``: secrets encrypted with a key derived from the pickle key, plus plain metadata.

    Each secret is encrypted exactly like an SSSS secret (AES-256-CTR + HMAC-SHA-256 keyed per secret name), so a
    value can neither be read without the pickle key nor moved to another name unnoticed. Metadata (public keys,
    versions, key ids) is not secret and stays readable.
    """

    def __init__(self, path: Path | PrivateFile, pickle_key: str) -> None:
        #: Where the secrets are: ``data_dir/secrets.json``, or a row in PostgreSQL (``Storage.private_file``).
        self.path: PrivateFile = LocalFile(path) if isinstance(path, Path) else path
        self._key = local_secrets_key(pickle_key)
        self.meta: dict[str, Any] = {}
        self._encrypted: dict[str, dict[str, str]] = {}
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise IdentityError(f"{self.path}: unreadable secrets file ({exc})") from None
        if text is not None:
            try:
                data = json.loads(text)
                if data.get("format") != _LOCAL_FORMAT:
                    raise ValueError(f"unknown format {data.get('format')!r}")
                self.meta = dict(data.get("meta") or {})
                self._encrypted = {k: dict(v) for k, v in (data.get("secrets") or {}).items()}
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                raise IdentityError(f"{path}: unreadable secrets file ({exc})") from None

    def get(self, name: str) -> str | None:
        """The decrypted secret ``name``, or None if it is not stored."""
        encrypted = self._encrypted.get(name)
        if encrypted is None:
            return None
        try:
            return decrypt_secret(self._key, name, encrypted)
        except SecretStorageError:
            raise IdentityError(
                f"{self.path}: cannot decrypt {name} (is pickle_key the one this data_dir was created with?)"
            ) from None

    def set(self, name: str, value: str) -> None:
        """Store ``value`` as secret ``name`` (call :meth:`save` to write the file)."""
        self._encrypted[name] = encrypt_secret(self._key, name, value, padded=False)

    def remove(self, name: str) -> None:
        self._encrypted.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._encrypted

    def save(self) -> None:
        """Write the file atomically with mode 0600."""
        data = {"format": _LOCAL_FORMAT, "meta": self.meta, "secrets": self._encrypted}
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    # typed accessors -------------------------------------------------------------------------------------------

    def seeds(self) -> CrossSigningSeeds | None:
        """The stored cross-signing seeds, or None if any is missing."""
        values = {name: self.get(name) for name in _SEEDS}
        if any(v is None for v in values.values()):
            return None
        try:
            return CrossSigningSeeds.from_secrets(values)  # type: ignore[arg-type]
        except (SecretStorageError, ValueError) as exc:
            raise IdentityError(f"{self.path}: malformed cross-signing seed ({exc})") from None

    def backup_key(self) -> BackupKey | None:
        value = self.get(BACKUP)
        if value is None:
            return None
        try:
            return BackupKey.from_secret(value)
        except (SecretStorageError, ValueError) as exc:
            raise IdentityError(f"{self.path}: malformed key backup key ({exc})") from None

    def recovery_key(self) -> str | None:
        return self.get(RECOVERY_KEY_SECRET)


@dataclass(frozen=True)
class RecoveredKeys:
    """Cross-signing keys read from secret storage with a recovery key, checked against the published ones."""

    key_id: str
    key: bytes = field(repr=False)
    keys: CrossSigningKeys
    own: OwnKeys


async def recover_cross_signing_keys(client: Any, user_id: str, recovery_key: str) -> RecoveredKeys:
    """Open secret storage with ``recovery_key``, read the three seeds and check them against the published keys.

    Changes nothing anywhere; raises :class:`IdentityError` (with what to do) on a wrong key or a mismatch.
    """
    ssss = SecretStorage(client, user_id)
    key_id, key = await ssss.open(recovery_key)
    values: dict[str, str] = {}
    for name in _SEEDS:
        value = await ssss.read(name, key_id, key)
        if value is None:
            raise IdentityError(f"{name} is not in secret storage (key {key_id}): nothing to sign the device with")
        values[name] = value
    try:
        seeds = CrossSigningSeeds.from_secrets(values)
    except (SecretStorageError, ValueError) as exc:
        raise IdentityError(f"a cross-signing seed in secret storage is malformed: {exc}") from None
    keys = CrossSigningKeys(user_id, seeds)
    own = await query_own_keys(client, user_id)
    if own.master is None:
        raise IdentityError(f"{user_id} has no published cross-signing keys")
    if not own.matches(keys):
        raise IdentityError(
            f"the cross-signing keys in secret storage (master {keys.master_public}) are not the account's "
            f"published keys (master {own.master_public or 'malformed'}); refusing to use them"
        )
    return RecoveredKeys(key_id, key, keys, own)


# ----------------------------------------------------------------------------------------------- the identity


def recovery_banner(user_id: str, recovery_key: str) -> str:
    """The one-time banner that shows a new recovery key to the operator."""
    line = "=" * 78
    return (
        f"\n{line}\n"
        f"NEW RECOVERY KEY for {user_id}. It is shown this once; store it somewhere safe (a password manager):\n\n"
        f"    {recovery_key}\n\n"
        "It unlocks this bot's cross-signing keys and key backup on the homeserver (secret storage). You need it if\n"
        "data_dir is lost: `ratchet verify -c CONFIG --recovery-key KEY`. While data_dir is intact,\n"
        "`ratchet recovery-key show -c CONFIG` prints it again. Set e2ee.recovery_key_file to get it in a file.\n"
        f"{line}"
    )


@dataclass(frozen=True)
class VerifyResult:
    """What :meth:`Identity.verify_with_recovery_key` did."""

    master_key: str
    device_id: str
    device_signed_now: bool
    backup_key: BackupKey | None
    backup_version: str | None


class Identity:
    """The bot account's cross-signing identity and key backup, as seen from one device."""

    def __init__(
        self,
        client: Any,
        *,
        data_dir: Path,
        pickle_key: str,
        password: str | None = None,
        cross_signing: bool = True,
        key_backup: bool = True,
        recovery_key_file: Path | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.client = client
        #: Where secrets.json and the key-backup tracker live (None: files under data_dir).
        self.storage = storage
        self.user_id: str = client.user_id
        self.data_dir = data_dir
        self.password = password
        self.cross_signing = cross_signing
        self.key_backup = key_backup
        self.recovery_key_file = recovery_key_file
        self.secrets = LocalSecrets(
            storage.private_file(SECRETS_FILE) if storage is not None else data_dir / SECRETS_FILE, pickle_key
        )
        self.ssss = SecretStorage(client, self.user_id)
        #: Our cross-signing keys, when we hold the account's published ones.
        self.keys: CrossSigningKeys | None = None
        self.backup: KeyBackup | None = None
        #: ``pending`` (not set up yet), ``ok``, ``foreign`` (the account's keys are not ours), ``disabled``, ``error``.
        self.state = "pending"
        self.problem: str | None = None
        self.cross_signed = False
        self.published_master: str | None = None
        #: Uploads of new cross-signing keys made by this process (a restart must make none).
        self.device_signing_uploads = 0
        self._retry_at = 0.0
        self._failures = 0
        self._backup_problem: str | None = None

    @classmethod
    def from_config(cls, client: Any, config: Any, storage: Storage | None = None) -> Identity:
        """Build from a :class:`bot.config.Config` (its ``e2ee`` section), keeping its secrets in ``storage``."""
        e2ee = config.e2ee
        return cls(
            client,
            data_dir=config.data_dir,
            pickle_key=config.pickle_key,
            password=config.password,
            cross_signing=e2ee.cross_signing,
            key_backup=e2ee.key_backup,
            recovery_key_file=e2ee.recovery_key_file,
            storage=storage,
        )

    @property
    def device_id(self) -> str:
        return self.client.device_id

    # -- status --------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The identity as the admin plugin shows it."""
        backup = self.backup
        return {
            "cross_signing": self.cross_signing,
            "state": self.state,
            "cross_signed": self.cross_signed,
            "master_key": self.published_master,
            "holds_private_keys": self.keys is not None,
            "device_id": self.device_id,
            "secret_storage_key": self.secrets.meta.get("ssss_key_id"),
            "recovery_key_stored": RECOVERY_KEY_SECRET in self.secrets,
            "key_backup": self.key_backup,
            "backup_version": backup.version if backup else None,
            "keys_backed_up": backup.keys_backed_up if backup else 0,
            "backup_problem": (backup.disabled_reason if backup else None) or self._backup_problem,
            "problem": self.problem,
        }

    # -- start-up and per sync -----------------------------------------------------------------------------------

    async def setup(self) -> None:
        """At start: make sure the device is cross-signed with keys we hold, and that key backup runs. Never raises."""
        if not self.cross_signing:
            self.state = "disabled"
            log.warning(
                "cross-signing is off (e2ee.cross_signing: false): the bot does not sign device %s, so clients that "
                "exclude insecure devices (Element) neither share room keys with it nor trust its messages",
                self.device_id,
            )
            if self.key_backup:
                log.info("key backup needs cross-signing (its key lives in secret storage); not backing up")
            return
        try:
            await self._setup()
            self.problem = None
            self._failures = 0
        except Exception as exc:  # network, server, a damaged secrets file: the bot keeps running
            self.state = "error"
            self.problem = str(exc)
            self._failures += 1
            delay = min(RETRY_MAX, RETRY_SECONDS * 2 ** min(self._failures - 1, 16))
            self._retry_at = time.monotonic() + delay
            log.error(
                "cross-signing set-up failed: %s; device %s is not cross-signed by this bot for now (retrying in "
                "%.0fs)", exc, self.device_id, delay,
            )

    async def after_sync(self) -> None:
        """Per sync: retry a failed set-up when due, back up new room keys. Never raises."""
        if self.state == "error" and time.monotonic() >= self._retry_at:
            await self.setup()
        if self.backup is None:
            return
        try:
            await self.backup.upload_new()
        except Exception as exc:
            log.warning("key backup upload failed (%s); will retry after the next sync", exc)

    async def _setup(self) -> None:
        owner = self.secrets.meta.get("user_id")
        if owner and owner != self.user_id:
            raise IdentityError(f"{self.secrets.path} belongs to {owner}, not {self.user_id}; use one data_dir per bot")
        own = await query_own_keys(self.client, self.user_id)
        seeds = self.secrets.seeds()
        local = CrossSigningKeys(self.user_id, seeds) if seeds else None
        if own.master is None:
            await self.bootstrap(keys=local)
            own = await query_own_keys(self.client, self.user_id)
        elif local is None or not own.matches(local):
            self.state = "foreign"
            self.keys = None
            self.published_master = own.master_public or None
            self.cross_signed = own.device_signed(self.device_id)
            self.problem = "the account's cross-signing keys are not held by this bot"
            log.warning(
                "%s already has cross-signing keys (master key %s) that this bot does not hold (made by another "
                "client, e.g. Element%s). They are left alone; device %s stays %s. To fix: `ratchet verify -c CONFIG "
                "--recovery-key KEY` with the account's recovery key, or `ratchet cross-signing reset -c CONFIG` to "
                "replace them (other users then have to verify the bot again).",
                self.user_id,
                own.master_public or "(malformed)",
                ", or by an earlier cross-signing reset" if local else "",
                self.device_id,
                "signed by them" if self.cross_signed else "unsigned, so clients that exclude insecure devices "
                "ignore it",
            )
            return
        else:
            self.keys = local
            log.info("cross-signing keys in place (master key %s)", local.master_public)
            if self.secrets.meta.get("ssss_stored") is False:  # a bootstrap was interrupted: finish it
                await self._finish_secret_storage()
        self.published_master = own.master_public
        await self._ensure_device_signed(own)
        self.state = "ok"
        if self.key_backup:
            await self._ensure_backup()

    # -- bootstrap -----------------------------------------------------------------------------------------------

    async def bootstrap(self, *, keys: CrossSigningKeys | None = None) -> str:
        """Publish cross-signing keys (new ones, or ``keys``) and a new secret storage key; returns the recovery key.

        Order: upload the public keys first (a refused upload changes nothing here), then keep the seeds and the
        recovery key locally, then fill secret storage and show the recovery key (:meth:`_finish_secret_storage`,
        which the next start repeats if this one was interrupted).
        """
        keys = keys or CrossSigningKeys(self.user_id, CrossSigningSeeds.generate())
        await post_with_password_auth(
            self.client,
            api_path("keys", "device_signing", "upload"),
            keys.device_signing_upload_body(),
            user_id=self.user_id,
            password=self.password,
        )
        self.device_signing_uploads += 1
        self.keys = keys
        self.published_master = keys.master_public
        key_id, ssss_key, _ = await self.ssss.create_key()
        recovery_key = encode_recovery_key(ssss_key)
        for name, value in keys.seeds.to_secrets().items():
            self.secrets.set(name, value)
        self.secrets.set(RECOVERY_KEY_SECRET, recovery_key)
        self.secrets.remove(BACKUP)  # a new secret storage: the old backup key is not in it
        self.secrets.meta.update(
            {
                "user_id": self.user_id,
                "master_key": keys.master_public,
                "ssss_key_id": key_id,
                "ssss_stored": False,
                "recovery_key_shown": False,
            }
        )
        self.secrets.meta.pop("backup_version", None)
        self.secrets.save()
        log.info("published new cross-signing keys for %s (master key %s)", self.user_id, keys.master_public)
        await self._finish_secret_storage()
        return recovery_key

    async def _finish_secret_storage(self) -> None:
        """Put the key description and the seeds in secret storage, then show the recovery key once. Idempotent."""
        assert self.keys is not None
        ssss = self._ssss_key()
        if ssss is None:
            raise IdentityError(f"{self.secrets.path} lacks the secret storage key to finish setting up with")
        key_id, key = ssss
        await self.ssss.publish_key(key_id, make_key_description(key))
        for name, value in self.keys.seeds.to_secrets().items():
            await self.ssss.store(name, value, key_id, key)
        self.secrets.meta["ssss_stored"] = True
        self.secrets.save()
        if not self.secrets.meta.get("recovery_key_shown", True):
            self._announce(self.secrets.recovery_key() or "")
            self.secrets.meta["recovery_key_shown"] = True
            self.secrets.save()

    def _announce(self, recovery_key: str) -> None:
        if self.recovery_key_file is not None:
            try:
                self.recovery_key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_private(self.recovery_key_file, recovery_key + "\n")
            except OSError as exc:
                log.error("could not write the recovery key to %s (%s)", self.recovery_key_file, exc)
                log.warning("%s", recovery_banner(self.user_id, recovery_key))
            else:
                log.warning("new recovery key written to %s (mode 0600); keep a copy somewhere safe",
                            self.recovery_key_file)
        else:
            log.warning("%s", recovery_banner(self.user_id, recovery_key))
        add_secret(recovery_key)  # shown once; masked in every later log line
        add_secret("".join(recovery_key.split()))

    async def reset(self) -> str:
        """New cross-signing keys, secret storage key and recovery key; re-sign the device; new key backup.

        Replaces whatever the account had (user-interactive auth with the password). Returns the recovery key.
        """
        recovery_key = await self.bootstrap()
        own = await query_own_keys(self.client, self.user_id)
        await self._ensure_device_signed(own)
        self.state = "ok"
        self.problem = None
        if self.key_backup:
            await self._ensure_backup(force_new=True)
        return recovery_key

    # -- device signing ------------------------------------------------------------------------------------------

    def _device_signer(self) -> JsonSigner:
        account = self.client.olm.account
        return JsonSigner(self.user_id, f"ed25519:{self.device_id}", lambda message: account.sign(message.decode()))

    async def _ensure_device_signed(self, own: OwnKeys) -> bool:
        """Sign our device with the self-signing key, and the master key with the device, unless done; True if now."""
        assert self.keys is not None
        device = own.devices.get(self.device_id)
        if device is None:
            if self.client.should_upload_keys:
                await self.client.keys_upload()
            own = await query_own_keys(self.client, self.user_id)
            device = own.devices.get(self.device_id)
            if device is None:
                raise IdentityError(f"the homeserver does not list device {self.device_id}'s keys; cannot sign it")
        ours = self.client.olm.account.identity_keys["ed25519"]
        if (device.get("keys") or {}).get(f"ed25519:{self.device_id}") != ours:
            raise IdentityError(
                f"the homeserver's keys for device {self.device_id} are not this device's keys; refusing to sign them"
            )
        to_upload = []
        if not own.device_signed(self.device_id):
            to_upload.append(self.keys.sign_device(device))
        if not verify_master_signed_by_device(own.master, device, self.user_id):
            signer = self._device_signer()
            to_upload.append(self.keys.master_key_signed_by_device(self.device_id, signer.sign))
        if to_upload:
            resp = await request_json(
                self.client, "POST", api_path("keys", "signatures", "upload"), signatures_upload_body(to_upload)
            )
            failures = (resp or {}).get("failures") if isinstance(resp, dict) else None
            if failures:
                raise IdentityError(f"the homeserver refused our signatures: {json.dumps(failures)[:300]}")
            log.info("device %s is now cross-signed by %s's self-signing key", self.device_id, self.user_id)
        self.cross_signed = True
        return bool(to_upload)

    # -- key backup ----------------------------------------------------------------------------------------------

    def _ssss_key(self) -> tuple[str, bytes] | None:
        recovery_key = self.secrets.recovery_key()
        key_id = self.secrets.meta.get("ssss_key_id")
        if not recovery_key or not key_id:
            return None
        return key_id, decode_recovery_key(recovery_key)

    def _signers(self) -> list[JsonSigner]:
        assert self.keys is not None
        return [self._device_signer(), self.keys.master_signer()]

    async def _ensure_backup(self, *, force_new: bool = False) -> None:
        """Use the account's current backup if we hold its key; create one if there is none."""
        from bot.e2ee.key_backup import TRACK_FILE, KeyBackup, create_version, get_current_version

        self._backup_problem = None
        current = None if force_new else await get_current_version(self.client)
        key = None if force_new else self.secrets.backup_key()
        if current is not None:
            if key is None or not key.matches(current):
                key = await self._backup_key_from_ssss(current)
            if key is None:
                self._backup_problem = (
                    f"the account's key backup (version {current.get('version')}) uses a key this bot does not hold"
                )
                log.warning(
                    "%s; not backing up room keys. `ratchet verify -c CONFIG --recovery-key KEY` fetches it from "
                    "secret storage", self._backup_problem,
                )
                return
            version = str(current["version"])
        else:
            ssss = self._ssss_key()
            if ssss is None:
                self._backup_problem = "no secret storage key held locally to keep a new backup key in"
                log.warning("not creating a key backup: %s", self._backup_problem)
                return
            key = BackupKey.generate()
            version = await create_version(self.client, key, *self._signers())
            await self.ssss.store(BACKUP, key.to_secret(), *ssss)
            log.info("created key backup version %s", version)
        if self.secrets.meta.get("backup_version") != version or self.secrets.get(BACKUP) != key.to_secret():
            self.secrets.set(BACKUP, key.to_secret())
            self.secrets.meta["backup_version"] = version
            self.secrets.save()
        track = self.storage.open_backup_tracker if self.storage is not None else self.data_dir / TRACK_FILE
        self.backup = KeyBackup(self.client, key, version, track)

    async def _backup_key_from_ssss(self, current: dict[str, Any]) -> BackupKey | None:
        ssss = self._ssss_key()
        if ssss is None:
            return None
        value = await self.ssss.read(BACKUP, *ssss)
        if value is None:
            return None
        try:
            key = BackupKey.from_secret(value)
        except (SecretStorageError, ValueError):
            return None
        return key if key.matches(current) else None

    # -- recovery ------------------------------------------------------------------------------------------------

    async def verify_with_recovery_key(self, recovery_key: str) -> VerifyResult:
        """Fetch the seeds from secret storage with ``recovery_key``, check them, keep them, sign this device.

        Also fetches the key backup key if secret storage holds one that matches the account's current backup.
        Raises :class:`IdentityError` with an operator-facing message on any mismatch.
        """
        recovered = await recover_cross_signing_keys(self.client, self.user_id, recovery_key)
        key_id, key, keys, own = recovered.key_id, recovered.key, recovered.keys, recovered.own
        seeds = keys.seeds
        canonical = encode_recovery_key(key)
        add_secret(canonical)
        add_secret("".join(canonical.split()))
        for name, value in seeds.to_secrets().items():
            self.secrets.set(name, value)
        self.secrets.set(RECOVERY_KEY_SECRET, canonical)
        self.secrets.meta.update(
            {
                "user_id": self.user_id,
                "master_key": keys.master_public,
                "ssss_key_id": key_id,
                "ssss_stored": True,
                "recovery_key_shown": True,  # the operator typed it
            }
        )
        self.secrets.save()
        self.keys = keys
        self.published_master = keys.master_public
        signed_now = await self._ensure_device_signed(own)
        self.state = "ok"
        self.problem = None

        from bot.e2ee.key_backup import get_current_version

        backup_key: BackupKey | None = None
        version: str | None = None
        current = await get_current_version(self.client)
        secret = await self.ssss.read(BACKUP, key_id, key)
        if current is not None and secret is not None:
            try:
                candidate = BackupKey(decode_secret_key(secret))
            except (SecretStorageError, ValueError):
                candidate = None
            if candidate is not None and candidate.matches(current):
                backup_key, version = candidate, str(current["version"])
                self.secrets.set(BACKUP, candidate.to_secret())
                self.secrets.meta["backup_version"] = version
                self.secrets.save()
            else:
                log.warning("the backup key in secret storage does not match the current key backup (version %s)",
                            current.get("version"))
        return VerifyResult(keys.master_public, self.device_id, signed_now, backup_key, version)
