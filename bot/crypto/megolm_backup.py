"""Server-side key backup, ``m.megolm_backup.v1.curve25519-aes-sha2`` (pure).

Spec: client-server API, "Server-side key backups".  ``session_data`` is made
by:

1. serialising a ``BackedUpSessionData`` JSON object;
2. an ephemeral curve25519 key, ECDH with the backup public key
   (``ephemeral`` = the ephemeral public key, unpadded base64);
3. HKDF-SHA-256 over the shared secret, salt 32 zero bytes (libolm passes an
   empty salt: identical, HMAC zero-pads its key), empty info, 80 bytes ->
   AES-256 key | HMAC-SHA-256 key | AES IV;
4. AES-256-CBC with PKCS#7 padding (``ciphertext``, unpadded base64);
5. ``mac`` = first 8 bytes of HMAC-SHA-256 **over the empty string**, unpadded
   base64.

About step 5 (what we found)
----------------------------
The MAC was meant to cover the ciphertext, but libolm's ``olm_pk_encrypt``
passes a zero-length buffer to the HMAC, so every implementation MACs the
empty string; the current spec text says so explicitly in a warning and
points to MSC4048 for a fix.  matrix-rust-sdk (``backups/keys/compat.rs``:
``hmac.finalize()`` with no input) and vodozemac keep this for compatibility.
Consequence: the MAC only proves knowledge of the ECDH shared secret (i.e. the
ephemeral key matches), **not the ciphertext's integrity**; tampering is
caught only by PKCS#7/UTF-8/JSON failures, if at all.  Treat decrypted backup
data as at most as trustworthy as the backup (``is_verified`` etc. are
server-controlled).

Implementation: encryption uses ``olm.PkEncryption`` (python-olm / libolm,
the reference implementation of this format).  python-olm cannot build a
``PkDecryption`` from an existing private key, so decryption uses vodozemac's
libolm-compatible ``PkDecryption`` (installed with matrix-nio[e2e]).  The
tests decrypt our output with an independent X25519/HKDF/AES-CBC/HMAC
implementation (``cryptography``) and decrypt a backup produced by another
client (matrix-rust-sdk's test vector).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import olm
import vodozemac

from bot.crypto.canonical import b64decode, verify_json
from bot.crypto.recoverykey import decode_recovery_key, encode_recovery_key
from bot.crypto.ssss import decode_secret_key, encode_secret_key
from bot.errors import BackupError

__all__ = [
    "ALGORITHM",
    "MEGOLM_ALGORITHM",
    "BackupError",
    "BackupKey",
    "backup_session_data",
    "key_backup_body",
    "key_backup_data",
    "merge_key_backup_bodies",
    "verify_auth_data",
]

#: The backup algorithm implemented here.
ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
#: The room encryption algorithm whose sessions are backed up.
MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"

_KEY_LENGTH = 32
_MAC_LENGTH = 8
_AES_BLOCK = 16

JsonSignerFn = Callable[[Mapping[str, Any]], dict[str, Any]]


class BackupKey:
    """A backup (curve25519) key pair: encrypts sessions for, and decrypts, a backup."""

    def __init__(self, private_key: bytes) -> None:
        """Use :meth:`generate` or :meth:`from_private` rather than this directly."""
        if not isinstance(private_key, bytes) or len(private_key) != _KEY_LENGTH:
            raise ValueError(f"backup private key must be {_KEY_LENGTH} bytes")
        self._private = private_key
        self._secret = vodozemac.Curve25519SecretKey.from_bytes(private_key)
        self._public = self._secret.public_key().to_base64()

    @classmethod
    def generate(cls) -> BackupKey:
        """A fresh random backup key."""
        return cls(secrets.token_bytes(_KEY_LENGTH))

    @classmethod
    def from_private(cls, private_key: bytes) -> BackupKey:
        """From the raw 32-byte curve25519 private key."""
        return cls(bytes(private_key))

    @classmethod
    def from_secret(cls, value: str) -> BackupKey:
        """From the ``m.megolm_backup.v1`` secret (base64, padded or not)."""
        return cls(decode_secret_key(value))

    @classmethod
    def from_recovery_key(cls, text: str) -> BackupKey:
        """From the key in the spec's base58 "cryptographic key representation"."""
        return cls(decode_recovery_key(text))

    def __repr__(self) -> str:
        return f"BackupKey(public_key={self._public!r})"

    @property
    def private_key(self) -> bytes:
        """The raw 32-byte private key."""
        return self._private

    @property
    def public_key(self) -> str:
        """The curve25519 public key, unpadded base64 (``auth_data.public_key``)."""
        return self._public

    def to_secret(self) -> str:
        """Value for the ``m.megolm_backup.v1`` secret: unpadded base64 of the private key."""
        return encode_secret_key(self._private)

    def to_recovery_key(self) -> str:
        """The private key in base58 form, for showing to a user."""
        return encode_recovery_key(self._private)

    # auth_data ------------------------------------------------------------

    def auth_data(self, *signers: JsonSignerFn) -> dict[str, Any]:
        """``auth_data`` for ``POST /room_keys/version``: ``public_key`` plus signatures.

        Each signer is a callable ``obj -> obj with a signature added``, such
        as a :class:`bot.crypto.canonical.JsonSigner` for the device
        (``JsonSigner(user_id, "ed25519:<device_id>", account_sign)``) and/or
        ``CrossSigningKeys.master_signer()``.  Signatures accumulate.
        """
        data: dict[str, Any] = {"public_key": self._public}
        for sign in signers:
            data = sign(data)
        return data

    def version_body(self, *signers: JsonSignerFn) -> dict[str, Any]:
        """Whole body of ``POST /_matrix/client/v3/room_keys/version``."""
        return {"algorithm": ALGORITHM, "auth_data": self.auth_data(*signers)}

    def matches(self, backup_info: Mapping[str, Any]) -> bool:
        """Whether a backup version (``GET /room_keys/version``) uses this key."""
        try:
            auth = backup_info.get("auth_data")
            if backup_info.get("algorithm") != ALGORITHM or not isinstance(auth, Mapping):
                return False
            public_key = auth.get("public_key")
            return isinstance(public_key, str) and b64decode(public_key) == b64decode(self._public)
        except Exception:
            return False

    # session data ---------------------------------------------------------

    def encrypt_session(self, session_data: Mapping[str, Any]) -> dict[str, str]:
        """Encrypt a ``BackedUpSessionData`` object; returns ``{ephemeral, ciphertext, mac}``."""
        if not isinstance(session_data, Mapping):
            raise TypeError("session_data must be a JSON object")
        plaintext = json.dumps(dict(session_data), ensure_ascii=False, separators=(",", ":"))
        message = olm.PkEncryption(self._public).encrypt(plaintext.encode("utf-8"))
        return {
            "ephemeral": message.ephemeral_key,
            "ciphertext": message.ciphertext,
            "mac": message.mac,
        }

    def decrypt_session(self, encrypted: Mapping[str, Any]) -> dict[str, Any]:
        """Decrypt a backup's ``session_data``; returns the ``BackedUpSessionData`` object.

        Raises :class:`BackupError` if fields are malformed, the MAC (see the
        module docstring) does not match, or the plaintext is not a JSON object.
        """
        if not isinstance(encrypted, Mapping):
            raise BackupError("session_data must be a JSON object")
        ephemeral = _field(encrypted, "ephemeral")
        ciphertext = _field(encrypted, "ciphertext")
        mac = _field(encrypted, "mac")
        if len(ephemeral) != _KEY_LENGTH:
            raise BackupError(f"'ephemeral' must be a {_KEY_LENGTH}-byte key")
        if len(mac) != _MAC_LENGTH:
            raise BackupError(f"'mac' must be {_MAC_LENGTH} bytes")
        if not ciphertext or len(ciphertext) % _AES_BLOCK:
            raise BackupError("'ciphertext' is not a whole number of AES blocks")
        try:
            decryption = vodozemac.PkDecryption.from_key(self._secret)
            plaintext = decryption.decrypt(vodozemac.Message(ciphertext, mac, ephemeral))
        except Exception as exc:  # vodozemac.PkDecodeException and friends
            raise BackupError(f"could not decrypt backed-up session: {exc}") from exc
        try:
            result = json.loads(bytes(plaintext).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BackupError("decrypted session data is not JSON") from exc
        if not isinstance(result, dict):
            raise BackupError("decrypted session data is not a JSON object")
        return result


def _field(encrypted: Mapping[str, Any], name: str) -> bytes:
    value = encrypted.get(name)
    if not isinstance(value, str):
        raise BackupError(f"'{name}' is missing or not a string")
    try:
        return b64decode(value)
    except ValueError as exc:
        raise BackupError(f"'{name}' is not valid base64") from exc


def verify_auth_data(auth_data: Mapping[str, Any], user_id: str, key_id: str, public_key: str) -> bool:
    """Whether ``auth_data`` carries a valid signature by ``key_id``/``public_key`` of ``user_id``.

    E.g. ``key_id="ed25519:<master pub>"`` for the master key, or
    ``"ed25519:<device_id>"`` with that device's ed25519 key.  Never raises.
    """
    return verify_json(auth_data, user_id, key_id, public_key)


# --------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------


def backup_session_data(inbound_session_export: Mapping[str, Any]) -> dict[str, Any]:
    """Build ``BackedUpSessionData`` (the plaintext to encrypt) from a session export.

    ``inbound_session_export`` is a key-export style object (``algorithm``,
    ``sender_key``, ``session_key`` (session-export format, unpadded base64),
    ``sender_claimed_keys``, ``forwarding_curve25519_key_chain``, and
    optionally ``shared_history``, added in spec v1.19); ``room_id`` and
    ``session_id`` are not part of the backed-up data (they are the URL/body
    keys) and are dropped.  Raises :class:`ValueError` on malformed input.
    """
    export = inbound_session_export
    if not isinstance(export, Mapping):
        raise ValueError("session export must be a JSON object")
    algorithm = export.get("algorithm", MEGOLM_ALGORITHM)
    if algorithm != MEGOLM_ALGORITHM:
        raise ValueError(f"only {MEGOLM_ALGORITHM} sessions can be backed up, not {algorithm!r}")
    sender_key = export.get("sender_key")
    session_key = export.get("session_key")
    if not isinstance(sender_key, str) or not sender_key:
        raise ValueError("session export lacks 'sender_key'")
    if not isinstance(session_key, str) or not session_key:
        raise ValueError("session export lacks 'session_key'")
    claimed = export.get("sender_claimed_keys") or {}
    chain = export.get("forwarding_curve25519_key_chain") or []
    if not isinstance(claimed, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in claimed.items()
    ):
        raise ValueError("'sender_claimed_keys' must map algorithm names to keys")
    if not isinstance(chain, list | tuple) or not all(isinstance(k, str) for k in chain):
        raise ValueError("'forwarding_curve25519_key_chain' must be a list of keys")
    data: dict[str, Any] = {
        "algorithm": MEGOLM_ALGORITHM,
        "sender_key": sender_key,
        "session_key": session_key,
        "sender_claimed_keys": dict(claimed),
        "forwarding_curve25519_key_chain": list(chain),
    }
    shared_history = export.get("shared_history")
    if isinstance(shared_history, bool):
        data["shared_history"] = shared_history
    return data


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def key_backup_data(
    first_message_index: int,
    forwarded_count: int,
    is_verified: bool,
    session_data: Mapping[str, Any],
) -> dict[str, Any]:
    """One ``KeyBackupData`` object (``session_data`` = :meth:`BackupKey.encrypt_session` output)."""
    if not isinstance(is_verified, bool):
        raise ValueError("is_verified must be a bool")
    if not isinstance(session_data, Mapping):
        raise ValueError("session_data must be a JSON object")
    return {
        "first_message_index": _non_negative_int(first_message_index, "first_message_index"),
        "forwarded_count": _non_negative_int(forwarded_count, "forwarded_count"),
        "is_verified": is_verified,
        "session_data": dict(session_data),
    }


def key_backup_body(
    room_id: str,
    session_id: str,
    first_message_index: int,
    forwarded_count: int,
    is_verified: bool,
    session_data: Mapping[str, Any],
) -> dict[str, Any]:
    """Body of ``PUT /_matrix/client/v3/room_keys/keys?version=<v>`` for one session.

    ``{"rooms": {room_id: {"sessions": {session_id: KeyBackupData}}}}``; combine
    several with :func:`merge_key_backup_bodies` to upload in batches.
    """
    if not isinstance(room_id, str) or not room_id:
        raise ValueError("room_id must be a non-empty string")
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("session_id must be a non-empty string")
    data = key_backup_data(first_message_index, forwarded_count, is_verified, session_data)
    return {"rooms": {room_id: {"sessions": {session_id: data}}}}


def merge_key_backup_bodies(bodies: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge :func:`key_backup_body` results into one ``PUT /room_keys/keys`` body."""
    rooms: dict[str, dict[str, dict[str, Any]]] = {}
    for body in bodies:
        for room_id, room in body["rooms"].items():
            sessions = rooms.setdefault(room_id, {"sessions": {}})["sessions"]
            sessions.update(room["sessions"])
    return {"rooms": rooms}
