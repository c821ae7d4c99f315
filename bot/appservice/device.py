"""The bridge bot's device in appservice mode: created through MSC4190, kept forever, cross-signed without a password.

An appservice has no login: its bot acts with the as_token. For end-to-end encryption it still needs a device with
Olm keys. With ``io.element.msc4190: true`` in the registration the appservice creates that device itself
(``PUT /_matrix/client/v3/devices/{deviceId}`` as the bot; Synapse upserts it) and names it on its requests
(``?device_id=``, see :attr:`RatchetClient.appservice_device_id`). As in relay mode the device is one device forever:

* its id is kept with the crypto store, through the storage seam (``Storage.save_credentials``: SQLite's
  ``credentials.json`` or the PostgreSQL row; the access token field holds :data:`NO_TOKEN`, never the as_token);
* every start re-creates it (``PUT`` is an upsert: a device someone deleted comes back under the same id) and checks
  that the server still lists its keys, uploading them again if not;
* a crypto store without its credentials, or credentials without their store, is an operator error, never a reason
  to become a new device quietly.

Cross-signing: the bot's master and self-signing keys are generated once (seeds in the private file
:data:`CROSS_SIGNING_FILE`, mode 0600, or its PostgreSQL row), uploaded with ``/keys/device_signing/upload`` (Synapse
needs no user-interactive auth from an appservice, MSC4190) and the device signed with them: clients that exclude
insecure devices (MSC4153) accept the bot's room keys and messages.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import urllib.parse
from typing import Any

from bot.config import Config
from bot.crypto.canonical import JsonSigner
from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds, signatures_upload_body
from bot.e2ee.identity import query_own_keys
from bot.errors import MatrixRequestError, SessionError
from bot.matrix.client import RatchetClient, make_appservice_client
from bot.matrix.requests import api_path, request_json
from bot.matrix.session import crypto_store_class, restore_device, upload_device_keys
from bot.storage.backend import Storage
from bot.storage.credentials import Credentials

__all__ = ["CROSS_SIGNING_FILE", "NO_TOKEN", "create_device", "cross_sign", "new_device_id", "open_bot_device"]

log = logging.getLogger("ratchet.appservice")

#: What the stored login holds instead of an access token: the bot acts with the as_token, which stays in its own
#: place (the tokens file or the config).
NO_TOKEN = "appservice:as_token"
#: The private file (or PostgreSQL row) holding the bot's cross-signing seeds.
CROSS_SIGNING_FILE = "appservice-cross-signing.json"
#: Prefix of the device ids this module creates.
DEVICE_PREFIX = "RATCHETAS"


def new_device_id(prefix: str = DEVICE_PREFIX) -> str:
    """A fresh device id: ``prefix`` (:data:`DEVICE_PREFIX`) and 10 random capitals."""
    return prefix + "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


async def create_device(client: Any, device_id: str, display_name: str, *, user_id: str | None = None) -> None:
    """``PUT /devices/{device_id}`` as the bot (or the asserted ``user_id``): MSC4190 creates the device if it does
    not exist (an upsert: an existing one keeps its keys). Raises SessionError when the homeserver refuses (the
    registration lacks ``io.element.msc4190: true``)."""
    path = api_path("devices", device_id)
    if user_id is not None:
        path += "?" + urllib.parse.urlencode({"user_id": user_id})
    try:
        await request_json(client, "PUT", path, {"display_name": display_name})
    except MatrixRequestError as err:
        raise SessionError(
            f"the homeserver refused to create the appservice's device {device_id} ({err}); the registration needs "
            "io.element.msc4190: true (docs/appservice.md, Encryption)"
        ) from None


async def open_bot_device(config: Config, storage: Storage, as_token: str) -> RatchetClient:
    """The bot's client with its device and crypto store loaded, the device's keys published and cross-signed.

    Raises :class:`~bot.errors.SessionError` saying what to do when the stored identity cannot be used.
    """
    storage.prepare()
    user_id = config.user_id
    creds = storage.load_credentials()
    if creds is not None:
        if creds.user_id != user_id:
            raise SessionError(
                f"{storage} holds the login of {creds.user_id}, but the config says user_id {user_id}; use a separate "
                "data_dir for each bot"
            )
        if not storage.has_crypto_store(creds.user_id, creds.device_id):
            raise SessionError(
                f"the crypto store of the appservice's device {creds.device_id} is missing (in {storage.crypto_path});"
                " restore data_dir from a backup, or move credentials.json away to start over as a new device"
            )
        device_id = creds.device_id
    else:
        strays = storage.crypto_stores()
        if strays:
            named = ", ".join(strays[:5]) + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
            raise SessionError(
                f"{storage} holds a crypto store ({named}) but no stored login (credentials.json); "
                "restore it, or move the store away to start as a new device on purpose"
            )
        device_id = new_device_id()
    client = make_appservice_client(
        config.homeserver, user_id, as_token, store_dir=storage.crypto_path, pickle_key=config.pickle_key,
        store=crypto_store_class(storage),
    )
    try:
        await create_device(client, device_id, config.device_name)
        restore_device(client, Credentials(config.homeserver, user_id, device_id, as_token))
        client.appservice_device_id = device_id
        if creds is None:
            storage.save_credentials(Credentials(config.homeserver, user_id, device_id, NO_TOKEN))
            log.info("appservice: created the bot's device %s (MSC4190)", device_id)
        else:
            log.info("appservice: using the bot's device %s", device_id)
        await _republish_if_missing(client, user_id, device_id)
        await upload_device_keys(client)
        await ensure_cross_signed(client, storage, user_id, device_id)
    except BaseException:
        await client.close()
        raise
    return client


async def _republish_if_missing(client: RatchetClient, user_id: str, device_id: str) -> None:
    """If the server lost the device's keys (the device was deleted and has just been re-created), publish the same
    identity keys again."""
    assert client.olm is not None
    if not client.olm.account.shared:
        return
    own = await query_own_keys(client, user_id)
    if own.devices.get(device_id, {}).get("keys"):
        return
    log.warning("appservice: the homeserver lost device %s's keys; publishing them again", device_id)
    client.olm.account.shared = False
    client.olm.save_account()


async def ensure_cross_signed(client: RatchetClient, storage: Storage, user_id: str, device_id: str) -> None:
    """Give ``user_id`` cross-signing keys (once; seeds kept in :data:`CROSS_SIGNING_FILE`) and sign ``device_id``
    with them, unless the server shows that already. Failures are logged, never fatal (the bridge still works; only
    clients that exclude unsigned devices refuse the bot)."""
    try:
        seeds_file = storage.private_file(CROSS_SIGNING_FILE)
        text = seeds_file.read_text()
        if text:
            seeds = CrossSigningSeeds.from_secrets(json.loads(text))
        else:
            seeds = CrossSigningSeeds.generate()
            seeds_file.write_text(json.dumps(seeds.to_secrets()))  # kept before anything is published
        await cross_sign(client, seeds, user_id, device_id)
    except (MatrixRequestError, ValueError, KeyError) as exc:
        log.error("appservice: could not cross-sign device %s: %s", device_id, exc)


async def cross_sign(client: RatchetClient, seeds: CrossSigningSeeds, user_id: str, device_id: str) -> bool:
    """Publish ``user_id``'s cross-signing keys made from ``seeds`` unless the server has them, and sign the
    client's device ``device_id`` with them unless it is signed already; True if anything was uploaded.

    Raises MatrixRequestError, or ValueError when the server does not list the device's keys or refuses a signature.
    """
    assert client.olm is not None
    keys = CrossSigningKeys.from_seeds(user_id, seeds)
    own = await query_own_keys(client, user_id)
    uploaded = False
    if not own.matches(keys):
        upload = keys.device_signing_upload_body()
        await request_json(client, "POST", api_path("keys", "device_signing", "upload"), upload)
        log.info("appservice: published cross-signing keys for %s (master %s)", user_id, keys.master_public)
        own = await query_own_keys(client, user_id)
        uploaded = True
    if own.device_signed(device_id):
        return uploaded
    device = own.devices.get(device_id)
    ours = client.olm.account.identity_keys["ed25519"]
    if device is None or (device.get("keys") or {}).get(f"ed25519:{device_id}") != ours:
        raise ValueError(f"the homeserver does not list this device's keys for {device_id}; not signing")
    account = client.olm.account
    signer = JsonSigner(user_id, f"ed25519:{device_id}", lambda message: account.sign(message.decode()))
    body = signatures_upload_body([keys.sign_device(device), keys.master_key_signed_by_device(device_id, signer.sign)])
    answer = await request_json(client, "POST", api_path("keys", "signatures", "upload"), body)
    failures = answer.get("failures") if isinstance(answer, dict) else None
    if failures:
        raise ValueError(f"the homeserver refused the signatures: {json.dumps(failures)[:300]}")
    log.info("appservice: device %s is cross-signed by %s's self-signing key", device_id, user_id)
    return True
