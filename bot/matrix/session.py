"""One device identity, forever: login once, reuse ``credentials.json`` and the crypto store on every start.

The first start logs in with the password and writes ``data_dir/credentials.json`` (mode 0600). Later starts restore
that login, so the device id (and with it the device's Olm identity and room keys) never changes. A rejected token
is renewed by logging in again *with the same device id*. A crypto store that does not match the credentials is an
operator error with a clear message, never a reason to quietly become a new device.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, KeysUploadResponse, LoginResponse, WhoamiError, WhoamiResponse

from bot.errors import SessionError
from bot.log import add_secret
from bot.matrix.client import RatchetClient, make_client

__all__ = ["Credentials", "SessionError", "open_session", "prepare_data_dir", "start_new_device"]

log = logging.getLogger(__name__)


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


def prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` and its ``crypto`` folder with mode 0700; fail clearly if not writable."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (data_dir / "crypto").mkdir(exist_ok=True, mode=0o700)
        probe = data_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SessionError(f"data_dir {data_dir} is not usable: {exc.strerror or exc}") from exc


def _store_file(crypto_dir: Path, user_id: str, device_id: str) -> Path:
    # nio's SqliteStore names its file "<user_id>_<device_id>.db" inside store_path.
    return crypto_dir / f"{user_id}_{device_id}.db"


async def open_session(
    *,
    homeserver: str,
    user_id: str,
    data_dir: Path,
    pickle_key: str,
    password: str | None,
    access_token: str | None,
    device_name: str,
) -> RatchetClient:
    """Return a logged-in client whose crypto store is loaded, reusing the stored device if there is one."""
    prepare_data_dir(data_dir)
    crypto_dir = data_dir / "crypto"
    creds_path = data_dir / "credentials.json"
    add_secret(password)
    add_secret(access_token)
    add_secret(pickle_key)

    if creds_path.exists():
        creds = Credentials.load(creds_path)
        add_secret(creds.access_token)
        if creds.user_id != user_id:
            raise SessionError(
                f"{creds_path} belongs to {creds.user_id}, but the config says user_id {user_id}; "
                "use a separate data_dir for each bot account"
            )
        store = _store_file(crypto_dir, creds.user_id, creds.device_id)
        if not store.exists():
            raise SessionError(
                f"the crypto store for device {creds.device_id} is missing ({store}). Restore data_dir from a "
                "backup, or recover the identity with `ratchet verify --recovery-key KEY`; to start over as a new "
                f"device on purpose, move {creds_path} away"
            )
        client = make_client(homeserver, user_id, crypto_dir, pickle_key, creds.device_id)
        _restore(client, creds)
        await _ensure_token_valid(client, creds, creds_path, password, device_name)
        return client

    strays = sorted(p.name for p in crypto_dir.glob("*.db"))
    if strays:
        raise SessionError(
            f"{crypto_dir} holds a crypto store ({', '.join(strays)}) but {creds_path} is missing; restore the "
            "credentials file, or move the store away to start as a new device on purpose"
        )

    client = make_client(homeserver, user_id, crypto_dir, pickle_key)
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
    creds.save(creds_path)
    return client


async def start_new_device(
    *,
    homeserver: str,
    user_id: str,
    data_dir: Path,
    pickle_key: str,
    password: str | None,
    device_name: str,
) -> tuple[RatchetClient, list[Path]]:
    """Start over as a NEW device, on purpose: the operator's explicit recovery path (``ratchet verify``).

    Moves ``credentials.json`` to ``credentials.json.replaced-<UTC timestamp>`` and any crypto store files to
    ``crypto/replaced-<timestamp>/`` (nothing is deleted), then logs in with the password as a new device. Returns
    the client and the paths things were moved to. :func:`open_session` never does this by itself.
    """
    if not password:
        raise SessionError(
            "starting as a new device needs the account password in the config (an access token belongs to the old "
            "device)"
        )
    prepare_data_dir(data_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved: list[Path] = []
    creds_path = data_dir / "credentials.json"
    if creds_path.exists():
        target = data_dir / f"credentials.json.replaced-{stamp}"
        os.replace(creds_path, target)
        moved.append(target)
    crypto_dir = data_dir / "crypto"
    stores = sorted(p for p in crypto_dir.iterdir() if p.is_file() and ".db" in p.name)
    if stores:
        aside = crypto_dir / f"replaced-{stamp}"
        aside.mkdir(mode=0o700)
        for store in stores:
            os.replace(store, aside / store.name)
        moved.append(aside)
    if moved:
        log.warning("starting as a new device on purpose; moved aside: %s", ", ".join(str(p) for p in moved))
    client = await open_session(
        homeserver=homeserver,
        user_id=user_id,
        data_dir=data_dir,
        pickle_key=pickle_key,
        password=password,
        access_token=None,
        device_name=device_name,
    )
    return client, moved


def _restore(client: RatchetClient, creds: Credentials) -> None:
    try:
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
    except Exception as exc:  # vodozemac/peewee raise assorted errors for a wrong key or a damaged file
        raise SessionError(
            f"cannot open the crypto store for device {creds.device_id}: {exc.__class__.__name__}. "
            "Is pickle_key the one this store was created with?"
        ) from exc
    if client.olm is None or client.olm.account is None:
        raise SessionError(f"the crypto store for device {creds.device_id} has no Olm account")


async def _ensure_token_valid(
    client: RatchetClient,
    creds: Credentials,
    creds_path: Path,
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
        Credentials(creds.homeserver, creds.user_id, creds.device_id, resp.access_token).save(creds_path)
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
