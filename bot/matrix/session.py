"""One device identity, forever: login once, reuse ``credentials.json`` and the crypto store on every start.

The first start logs in with the password and writes ``data_dir/credentials.json`` (mode 0600). Later starts restore
that login, so the device id (and with it the device's Olm identity and room keys) never changes. A rejected token
is renewed by logging in again *with the same device id*. A crypto store that does not match the credentials is an
operator error with a clear message, never a reason to quietly become a new device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, KeysUploadResponse, LoginResponse, WhoamiError, WhoamiResponse

from bot.errors import SessionError, StorageError
from bot.log import add_secret
from bot.matrix.client import RatchetClient, make_client
from bot.storage.backend import Storage
from bot.storage.credentials import Credentials

__all__ = [
    "crypto_store_class",
    "open_session",
    "plain_client",
    "restore_device",
    "start_new_device",
    "upload_device_keys",
]

log = logging.getLogger(__name__)


async def open_session(
    *,
    homeserver: str,
    user_id: str,
    storage: Storage,
    pickle_key: str,
    password: str | None,
    access_token: str | None,
    device_name: str,
) -> RatchetClient:
    """Return a logged-in client whose crypto store is loaded, reusing the stored device if there is one."""
    storage.prepare()
    add_secret(password)
    add_secret(access_token)
    add_secret(pickle_key)

    creds = storage.load_credentials()
    if creds is not None:
        add_secret(creds.access_token)
        if creds.user_id != user_id:
            raise SessionError(
                f"{storage} holds the login of {creds.user_id}, but the config says user_id {user_id}; "
                "use a separate data_dir for each bot account"
            )
        if not storage.has_crypto_store(creds.user_id, creds.device_id):
            raise SessionError(
                f"the crypto store for device {creds.device_id} is missing (in {storage.crypto_path}). Restore "
                "data_dir from a backup, or recover the identity with `ratchet verify --recovery-key KEY`; to start "
                "over as a new device on purpose, move credentials.json away"
            )
        client = make_client(
            homeserver, user_id, storage.crypto_path, pickle_key, creds.device_id, store=crypto_store_class(storage)
        )
        _restore(client, creds)
        await _ensure_token_valid(client, creds, storage, password, device_name)
        return client

    strays = storage.crypto_stores()
    if strays:
        raise SessionError(
            f"{storage.crypto_path if storage.database_url is None else storage} holds a crypto store "
            f"({', '.join(strays)}) but the stored login (credentials.json) is missing; restore it, or move the store "
            "away to start as a new device on purpose (`ratchet verify`)"
        )

    client = make_client(homeserver, user_id, storage.crypto_path, pickle_key, store=crypto_store_class(storage))
    if password:
        resp = await client.login(password=password, device_name=device_name)
        if not isinstance(resp, LoginResponse):
            await client.close()
            raise SessionError(f"login as {user_id} failed: {getattr(resp, 'message', resp)}")
        creds = Credentials(homeserver, resp.user_id, resp.device_id, resp.access_token)
        log.info("logged in as %s, new device %s", creds.user_id, creds.device_id)
    else:
        assert access_token
        client.access_token = access_token
        who = await client.whoami()
        if not isinstance(who, WhoamiResponse) or not who.device_id:
            await client.close()
            raise SessionError(f"the access_token for {user_id} was rejected or has no device")
        if who.user_id != user_id:
            await client.close()
            raise SessionError(f"the access_token belongs to {who.user_id}, not {user_id}")
        creds = Credentials(homeserver, who.user_id, who.device_id, access_token)
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
        log.info("using access token for %s, device %s", creds.user_id, creds.device_id)
    add_secret(creds.access_token)
    storage.save_credentials(creds)
    return client


async def start_new_device(
    *,
    homeserver: str,
    user_id: str,
    storage: Storage,
    pickle_key: str,
    password: str | None,
    device_name: str,
) -> tuple[RatchetClient, list[Path]]:
    """Start over as a NEW device, on purpose: the operator's explicit recovery path (``ratchet verify``).

    Moves the login and the crypto store aside (:meth:`~bot.storage.backend.Storage.move_aside`: nothing is
    deleted), then logs in with the password as a new device. Returns the client and the paths things were moved
    to. :func:`open_session` never does this by itself.
    """
    if not password:
        raise SessionError(
            "starting as a new device needs the account password in the config (an access token belongs to the old "
            "device)"
        )
    storage.prepare()
    moved = storage.move_aside()
    if moved:
        log.warning("starting as a new device on purpose; moved aside: %s", ", ".join(str(p) for p in moved))
    client = await open_session(
        homeserver=homeserver,
        user_id=user_id,
        storage=storage,
        pickle_key=pickle_key,
        password=password,
        access_token=None,
        device_name=device_name,
    )
    return client, moved


def crypto_store_class(storage: Storage) -> type[Any] | None:
    """The crypto store for ``storage``: None (nio's SQLite file under ``crypto_path``) or the PostgreSQL store bound
    to its database and the lease's connection settings."""
    if storage.database_url is None:
        return None
    from bot.matrix.pg_store import postgres_crypto_store

    return postgres_crypto_store(storage.database_url, storage.connection_settings)


def restore_device(client: RatchetClient, creds: Credentials) -> None:
    """Load the crypto store of ``creds``' device into ``client`` (an appservice's bot device,
    bot/appservice/device.py); raises :class:`~bot.errors.SessionError` saying why it cannot be opened."""
    _restore(client, creds)


def _restore(client: RatchetClient, creds: Credentials) -> None:
    try:
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
    except StorageError as exc:  # the database server cannot be reached
        raise SessionError(f"cannot open the crypto store for device {creds.device_id}: {exc}") from exc
    except Exception as exc:  # vodozemac/peewee raise assorted errors for a wrong key or a damaged file
        if any(cls.__module__.startswith(("psycopg", "peewee")) and "Operational" in cls.__name__
               for cls in type(exc).__mro__):
            raise SessionError(f"cannot open the crypto store for device {creds.device_id}: {exc}") from exc
        raise SessionError(
            f"cannot open the crypto store for device {creds.device_id}: {exc.__class__.__name__}. "
            "Is pickle_key the one this store was created with?"
        ) from exc
    if client.olm is None or client.olm.account is None:
        raise SessionError(f"the crypto store for device {creds.device_id} has no Olm account")


async def _ensure_token_valid(
    client: RatchetClient,
    creds: Credentials,
    storage: Storage,
    password: str | None,
    device_name: str,
) -> None:
    who = await client.whoami()
    if isinstance(who, WhoamiResponse):
        if who.device_id and who.device_id != creds.device_id:
            raise SessionError(
                f"the stored access token is for device {who.device_id}, but credentials.json says "
                f"{creds.device_id}"
            )
        log.info("restored session %s, device %s", creds.user_id, creds.device_id)
        return
    if isinstance(who, WhoamiError) and who.status_code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        if not password:
            raise SessionError("the stored access token was rejected and no password is configured")
        log.warning("stored access token rejected; logging in again as device %s", creds.device_id)
        resp = await client.login(password=password, device_name=device_name)
        if not isinstance(resp, LoginResponse):
            raise SessionError(f"login as {creds.user_id} failed: {getattr(resp, 'message', resp)}")
        if resp.device_id != creds.device_id:
            raise SessionError(
                f"the homeserver gave device {resp.device_id} instead of {creds.device_id}"
            )
        add_secret(resp.access_token)
        storage.save_credentials(Credentials(creds.homeserver, creds.user_id, creds.device_id, resp.access_token))
        return
    raise SessionError(f"cannot check the session with the homeserver: {getattr(who, 'message', who)}")


def plain_client(homeserver: str, user_id: str, device_id: str, access_token: str) -> AsyncClient:
    """A client without E2EE for one-shot requests with an existing login (gives up after 3 timeouts)."""
    client = AsyncClient(
        homeserver, user_id, device_id=device_id, config=AsyncClientConfig(encryption_enabled=False, max_timeouts=3)
    )
    client.access_token = access_token
    return client


async def upload_device_keys(client: RatchetClient) -> None:
    """Publish the device's identity and one-time keys if they are not yet; raises SessionError if that fails."""
    if client.should_upload_keys:
        resp = await client.keys_upload()
        if not isinstance(resp, KeysUploadResponse):
            raise SessionError(f"could not upload the device's keys: {getattr(resp, 'message', resp)}")
