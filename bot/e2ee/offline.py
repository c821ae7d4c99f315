"""The operator's identity procedures behind ``ratchet verify``, ``ratchet recovery-key show`` and
``ratchet cross-signing reset``.

Run them while the bot is stopped (they open the same crypto store).

``verify`` (:func:`verify_with_recovery_key`) is the explicit recovery path:

* data_dir intact: the bot's own device is cross-signed with the account's keys from secret storage (e.g. keys an
  operator made in Element) and the key backup is restored into its store;
* crypto store lost (``credentials.json`` is there, the store is not): the recovery key is checked first, with the
  old access token, so a wrong key changes nothing; then the bot logs in as a NEW device on purpose
  (:func:`bot.matrix.session.start_new_device`: the old credentials and store files are moved aside, never
  deleted), the new device is cross-signed, and every room key in the backup is imported, so old messages decrypt again;
* empty data_dir: the first login happens here, then the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bot.e2ee.identity import (
    SECRETS_FILE,
    Identity,
    IdentityError,
    LocalSecrets,
    recover_cross_signing_keys,
)
from bot.e2ee.key_backup import KeyBackup, RestoreResult
from bot.errors import RecoveryError, SessionError, StorageError
from bot.matrix.session import open_session, plain_client, start_new_device, upload_device_keys
from bot.storage.backend import Storage, open_storage
from bot.storage.credentials import Credentials

__all__ = [
    "RecoveryError",
    "ResetReport",
    "VerifyReport",
    "read_local_recovery_key",
    "reset_cross_signing",
    "verify_with_recovery_key",
]

log = logging.getLogger("ratchet.recovery")


@dataclass
class VerifyReport:
    """What ``ratchet verify`` did."""

    user_id: str
    device_id: str
    new_device: bool
    master_key: str
    signed_now: bool
    moved: list[Path] = field(default_factory=list)
    backup_version: str | None = None
    restore: RestoreResult | None = None
    old_device: str | None = None

    def lines(self) -> list[str]:
        """Operator-facing summary."""
        out = []
        for path in self.moved:
            out.append(f"moved aside: {path}")
        what = "new device" if self.new_device else "device"
        state = "is now cross-signed" if self.signed_now else "was already cross-signed"
        out.append(f"{what} {self.device_id} of {self.user_id} {state} (master key {self.master_key})")
        if self.old_device and self.old_device != self.device_id:
            out.append(f"the old device {self.old_device} still exists on the homeserver; sign it out from a client "
                       "(e.g. Element's session list) when convenient")
        if self.restore is not None:
            r = self.restore
            out.append(
                f"key backup version {r.version}: restored {r.imported} new room keys of {r.total}"
                + (f" ({r.failed} did not decrypt)" if r.failed else "")
            )
        else:
            out.append("no key backup to restore (none, or its key is not in secret storage)")
        return out


@dataclass
class ResetReport:
    """What ``ratchet cross-signing reset`` did."""

    user_id: str
    device_id: str
    master_key: str
    backup_version: str | None
    recovery_key_file: Path | None

    def lines(self) -> list[str]:
        out = [
            f"new cross-signing keys for {self.user_id} (master key {self.master_key}); device {self.device_id} "
            "is signed with them",
            "other users who verified the bot must verify it again",
        ]
        if self.backup_version:
            out.append(f"new key backup version {self.backup_version}")
        if self.recovery_key_file:
            out.append(f"the new recovery key is in {self.recovery_key_file}")
        else:
            out.append("the new recovery key was shown above (logged once): store it now")
        return out


# ----------------------------------------------------------------------------------------------- helpers


def _held_storage(config: Any) -> Storage:
    """The bot's storage, ready to write: on PostgreSQL this process takes the lease, so a bot running elsewhere
    on the same database is refused (stop it first); call ``release()`` when done."""
    storage = open_storage(config)
    if storage.database_url is None:
        return storage
    try:
        storage.prepare()
        taken = storage.lease.try_acquire()  # type: ignore[attr-defined]
    except (SessionError, StorageError) as err:
        raise RecoveryError(str(err)) from None
    if not taken:
        raise RecoveryError(f"the bot is running on {storage} (it holds the database lease): stop it first")
    return storage


def _local_store_state(storage: Storage) -> tuple[Credentials | None, bool]:
    """``(credentials or None, whether their crypto store exists)``."""
    try:
        creds = storage.load_credentials()
    except SessionError as err:
        raise RecoveryError(str(err)) from None
    if creds is None:
        return None, False
    return creds, storage.has_crypto_store(creds.user_id, creds.device_id)


async def _precheck_with_old_token(config: Any, creds: Credentials, recovery_key: str) -> None:
    """Check the recovery key with the old device's token before anything is moved (skipped if the token is dead)."""
    client = plain_client(config.homeserver, creds.user_id, creds.device_id, creds.access_token)
    try:
        await recover_cross_signing_keys(client, config.user_id, recovery_key)
    except IdentityError as err:
        if getattr(err, "status", None) in (401, 403):
            log.info("the old access token no longer works; the recovery key is checked after the new login")
            return
        raise RecoveryError(f"{err} (nothing was changed)") from None
    finally:
        await client.close()


async def _upload_device_keys(client: Any) -> None:
    try:
        await upload_device_keys(client)
    except SessionError as err:
        raise RecoveryError(str(err)) from None


#: Seconds the reachability check may take (the bot's client retries forever; a one-shot command should not).
REACH_TIMEOUT = 15.0


async def _check_reachable(homeserver: str) -> None:
    """Fail with one clear line if the homeserver does not answer ``GET /_matrix/client/versions``."""
    url = homeserver.rstrip("/") + "/_matrix/client/versions"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REACH_TIMEOUT)) as http,
            http.get(url) as resp,
        ):
            if resp.status != 200:
                raise RecoveryError(f"the homeserver at {homeserver} answered {resp.status} to {url}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RecoveryError(f"cannot reach the homeserver at {homeserver} ({exc.__class__.__name__}: {exc})") from None


def _session_kwargs(config: Any, storage: Storage) -> dict[str, Any]:
    return {
        "homeserver": config.homeserver,
        "user_id": config.user_id,
        "storage": storage,
        "pickle_key": config.pickle_key,
        "password": config.password,
        "device_name": config.device_name,
    }


# ----------------------------------------------------------------------------------------------- procedures


def read_local_recovery_key(config: Any) -> str | None:
    """The recovery key kept (encrypted) in data_dir or the database, or None; raises :class:`RecoveryError` if
    unreadable."""
    try:
        secrets = LocalSecrets(open_storage(config).private_file(SECRETS_FILE), config.pickle_key)
        if secrets.path.read_text() is None:
            return None
        return secrets.recovery_key()
    except (SessionError, StorageError, IdentityError) as err:
        raise RecoveryError(str(err)) from None


async def verify_with_recovery_key(config: Any, recovery_key: str) -> VerifyReport:
    """``ratchet verify``: cross-sign this bot's device (a new one if the store was lost) and restore the backup."""
    storage = _held_storage(config)
    try:
        return await _verify_with_recovery_key(config, recovery_key, storage)
    finally:
        storage.release()


async def _verify_with_recovery_key(config: Any, recovery_key: str, storage: Storage) -> VerifyReport:
    creds, store_exists = _local_store_state(storage)
    await _check_reachable(config.homeserver)
    moved: list[Path] = []
    new_device = False
    try:
        if creds is not None and not store_exists:
            if creds.user_id != config.user_id:
                raise RecoveryError(f"{config.data_dir}/credentials.json belongs to {creds.user_id}, not "
                                    f"{config.user_id}")
            await _precheck_with_old_token(config, creds, recovery_key)
            log.warning("the crypto store of device %s is gone: logging in as a new device", creds.device_id)
            client, moved = await start_new_device(**_session_kwargs(config, storage))
            new_device = True
        else:
            new_device = creds is None
            client = await open_session(**_session_kwargs(config, storage), access_token=config.access_token)
    except SessionError as err:
        raise RecoveryError(str(err)) from None
    try:
        await _upload_device_keys(client)
        identity = Identity.from_config(client, config, storage)
        result = await identity.verify_with_recovery_key(recovery_key)
        restore = None
        if result.backup_key is not None and result.backup_version is not None:
            backup = KeyBackup(client, result.backup_key, result.backup_version, storage.open_backup_tracker)
            restore = await backup.restore()
        return VerifyReport(
            user_id=config.user_id,
            device_id=client.device_id,
            new_device=new_device,
            master_key=result.master_key,
            signed_now=result.device_signed_now,
            moved=moved,
            backup_version=result.backup_version,
            restore=restore,
            old_device=creds.device_id if creds is not None else None,
        )
    except IdentityError as err:
        raise RecoveryError(str(err)) from None
    finally:
        await client.close()


async def reset_cross_signing(config: Any) -> ResetReport:
    """``ratchet cross-signing reset``: new keys, new secret storage key and recovery key, device re-signed."""
    storage = _held_storage(config)
    try:
        return await _reset_cross_signing(config, storage)
    finally:
        storage.release()


async def _reset_cross_signing(config: Any, storage: Storage) -> ResetReport:
    await _check_reachable(config.homeserver)
    try:
        client = await open_session(**_session_kwargs(config, storage), access_token=config.access_token)
    except SessionError as err:
        raise RecoveryError(str(err)) from None
    try:
        await _upload_device_keys(client)
        identity = Identity.from_config(client, config, storage)
        await identity.reset()
        status = identity.status()
        return ResetReport(
            user_id=config.user_id,
            device_id=client.device_id,
            master_key=status["master_key"],
            backup_version=status["backup_version"],
            recovery_key_file=config.e2ee.recovery_key_file,
        )
    except IdentityError as err:
        raise RecoveryError(str(err)) from None
    finally:
        await client.close()
