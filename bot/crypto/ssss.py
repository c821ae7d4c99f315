"""Secret storage ("SSSS"/"4S") with ``m.secret_storage.v1.aes-hmac-sha2``.

Pure implementation of the client-server spec section "Secrets" -> "Storage":

* key derivation: HKDF-SHA-256, salt = 32 zero bytes, info = secret name,
  64 bytes out -> (AES-256 key, HMAC-SHA-256 key);
* encryption: AES-256-CTR with a random 16-byte IV whose bit 63 is cleared
  (``iv[8] &= 0x7f``), MAC = HMAC-SHA-256 over the raw ciphertext;
* key description (``m.secret_storage.key.<id>`` account data) carries the
  ``iv`` and ``mac`` of encrypting 32 zero bytes under the secret name ``""``,
  so a client can tell whether a user typed the right key.

Base64 in the encrypted payloads -- a resolved ambiguity
--------------------------------------------------------
The spec says ``iv``/``ciphertext``/``mac`` SHOULD be unpadded base64, but adds
that "some existing implementations ... use standard RFC4648-compliant base64
with padding, so clients must accept either encoding".  That existing
implementation is matrix-js-sdk (``encryptAESSecretStorageItem`` and
``calculateKeyCheck`` use ``encodeBase64``, i.e. ``Buffer#toString("base64")``
/ ``btoa``: padded), and it is still the code Element Web runs for secret
storage even on the Rust crypto backend.  matrix-rust-sdk (ruma) emits
unpadded and accepts both; js-sdk accepts both (and its ``checkKey`` strips
``=`` before comparing MACs).  We therefore:

* **decode** leniently everywhere (padded, unpadded, URL-safe) and compare
  MACs as bytes, never as strings;
* **emit padded by default**, byte-for-byte what matrix-js-sdk emits, since a
  padded payload is the form every deployed reader has handled for years;
  pass ``padded=False`` for the spec's preferred unpadded form.

What the secrets themselves contain
-----------------------------------
The spec says the cross-signing private keys and the backup key "are
base64-encoded before being encrypted".  Concretely the secret is the base64
of the *raw 32 bytes*: for cross-signing keys the ed25519 **seed** (what
``olm.PkSigning(seed)`` takes), for ``m.megolm_backup.v1`` the curve25519
private key.  matrix-rust-sdk (Element's current crypto) stores these
*unpadded* (``export_seed``/``BackupDecryptionKey::to_base64``); the legacy
matrix-js-sdk crypto stored them *padded*.  :func:`encode_secret_key` emits
unpadded; :func:`decode_secret_key` accepts both, plus the comma-separated
byte list an old js-sdk migration bug wrote for the backup key (js-sdk's
``fixBackupKey``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from collections.abc import Mapping
from typing import Any

from Crypto.Cipher import AES

from bot.crypto.canonical import b64decode, b64encode
from bot.crypto.recoverykey import key_from_passphrase
from bot.errors import SecretStorageError

__all__ = [
    "AES_HMAC_SHA2",
    "BACKUP",
    "DEFAULT_KEY_TYPE",
    "DEFAULT_PBKDF2_ITERATIONS",
    "KEY_TYPE_PREFIX",
    "MASTER",
    "PBKDF2",
    "SELF_SIGNING",
    "USER_SIGNING",
    "SecretStorageError",
    "check_key",
    "decode_secret_key",
    "decrypt_secret",
    "derive_keys",
    "encode_secret_key",
    "encrypt_secret",
    "key_from_description",
    "key_type",
    "make_key_description",
    "new_key_id",
    "passphrase_info",
    "read_secret",
    "secret_content",
]

#: The only secret storage algorithm in the spec.
AES_HMAC_SHA2 = "m.secret_storage.v1.aes-hmac-sha2"
#: The only passphrase algorithm in the spec.
PBKDF2 = "m.pbkdf2"
#: Account data type naming the default key: content ``{"key": "<key id>"}``.
DEFAULT_KEY_TYPE = "m.secret_storage.default_key"
#: Prefix of the account data type holding a key description.
KEY_TYPE_PREFIX = "m.secret_storage.key."
#: Secret names (= account data types) of the cross-signing private keys.
MASTER = "m.cross_signing.master"
SELF_SIGNING = "m.cross_signing.self_signing"
USER_SIGNING = "m.cross_signing.user_signing"
#: Secret name of the ``m.megolm_backup.v1.curve25519-aes-sha2`` decryption key.
BACKUP = "m.megolm_backup.v1"

#: Iterations used by matrix-js-sdk and matrix-rust-sdk for new passphrase keys.
DEFAULT_PBKDF2_ITERATIONS = 500_000

_IV_LENGTH = 16
_MAC_LENGTH = 32
_KEY_ID_ALPHABET = string.ascii_letters + string.digits
_KEY_ID_LENGTH = 32
_ZERO_MESSAGE = "\0" * 32  # the key-check plaintext: 32 bytes of 0


# --------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


def derive_keys(key: bytes, name: str) -> tuple[bytes, bytes]:
    """Derive ``(aes_key, hmac_key)`` for secret ``name`` from a secret storage key.

    HKDF-SHA-256, salt of 32 zero bytes, info = the UTF-8 secret name, 64
    bytes of output split 32/32.  (matrix-js-sdk passes an 8-byte zero salt;
    HMAC zero-pads its key to the block size, so any all-zero salt up to 64
    bytes gives the same result.)
    """
    if not isinstance(key, bytes | bytearray) or not key:
        raise SecretStorageError("secret storage key must be non-empty bytes")
    if not isinstance(name, str):
        raise SecretStorageError("secret name must be a string")
    okm = _hkdf_sha256(bytes(key), b"\x00" * 32, name.encode("utf-8"), 64)
    return okm[:32], okm[32:]


def _aes_ctr(aes_key: bytes, iv: bytes, data: bytes) -> bytes:
    # Full 128-bit big-endian counter starting at the IV, as in matrix-rust-sdk
    # and Android.  matrix-js-sdk uses WebCrypto with a 64-bit counter; the two
    # only differ if the low 64 bits wrap, which clearing IV bit 63 prevents.
    cipher = AES.new(aes_key, AES.MODE_CTR, nonce=b"", initial_value=iv)
    return cipher.encrypt(data)


def _encode(data: bytes, padded: bool) -> str:
    return base64.b64encode(data).decode("ascii") if padded else b64encode(data)


def _decode_field(value: Any, field: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise SecretStorageError(f"'{field}' is missing or not a string")
    try:
        raw = b64decode(value)
    except ValueError as exc:
        raise SecretStorageError(f"'{field}' is not valid base64") from exc
    if length is not None and len(raw) != length:
        raise SecretStorageError(f"'{field}' must be {length} bytes, got {len(raw)}")
    return raw


# --------------------------------------------------------------------------
# Encrypting and decrypting secrets
# --------------------------------------------------------------------------


def encrypt_secret(
    key: bytes,
    name: str,
    plaintext: str,
    iv: bytes | None = None,
    *,
    padded: bool = True,
) -> dict[str, str]:
    """Encrypt ``plaintext`` as secret ``name``; return ``{"iv", "ciphertext", "mac"}``.

    ``iv``: normally omitted (16 random bytes with bit 63 cleared).  When given
    it is used verbatim, as for the key check, which must reproduce a stored IV.
    ``padded``: see the module docstring; default matches matrix-js-sdk.
    """
    if not isinstance(plaintext, str):
        raise SecretStorageError("secrets are strings; encode binary data (e.g. base64) first")
    if iv is None:
        buf = bytearray(secrets.token_bytes(_IV_LENGTH))
        buf[8] &= 0x7F  # clear bit 63 (spec step 2)
        iv = bytes(buf)
    elif not isinstance(iv, bytes | bytearray) or len(iv) != _IV_LENGTH:
        raise SecretStorageError(f"iv must be {_IV_LENGTH} bytes")
    aes_key, hmac_key = derive_keys(key, name)
    ciphertext = _aes_ctr(aes_key, bytes(iv), plaintext.encode("utf-8"))
    mac = hmac.new(hmac_key, ciphertext, hashlib.sha256).digest()
    return {
        "iv": _encode(bytes(iv), padded),
        "ciphertext": _encode(ciphertext, padded),
        "mac": _encode(mac, padded),
    }


def decrypt_secret(key: bytes, name: str, encrypted: Mapping[str, Any]) -> str:
    """Decrypt one ``encrypted[<key id>]`` payload of secret ``name``.

    The MAC is checked (constant time) before decrypting.  Raises
    :class:`SecretStorageError` on a MAC mismatch (wrong key, wrong secret
    name, or tampering), malformed fields, or a plaintext that is not UTF-8.
    """
    if not isinstance(encrypted, Mapping):
        raise SecretStorageError("encrypted secret must be a JSON object")
    iv = _decode_field(encrypted.get("iv"), "iv", _IV_LENGTH)
    ciphertext = _decode_field(encrypted.get("ciphertext"), "ciphertext")
    mac = _decode_field(encrypted.get("mac"), "mac")
    aes_key, hmac_key = derive_keys(key, name)
    expected = hmac.new(hmac_key, ciphertext, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise SecretStorageError(f"bad MAC decrypting secret {name!r}: wrong key, wrong secret name, or tampered data")
    try:
        return _aes_ctr(aes_key, iv, ciphertext).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretStorageError(f"secret {name!r} did not decrypt to UTF-8") from exc


def secret_content(
    key_id: str,
    key: bytes,
    name: str,
    plaintext: str,
    *,
    padded: bool = True,
) -> dict[str, Any]:
    """Account data content storing secret ``name`` encrypted with one key.

    Returns ``{"encrypted": {key_id: {"iv", "ciphertext", "mac"}}}``, to be PUT
    as the account data of type ``name``.
    """
    return {"encrypted": {key_id: encrypt_secret(key, name, plaintext, padded=padded)}}


def read_secret(content: Mapping[str, Any], key_id: str, key: bytes, name: str) -> str:
    """Decrypt secret ``name`` from its account data ``content`` using ``key_id``/``key``.

    Raises :class:`SecretStorageError` if the secret is not encrypted for
    ``key_id`` or does not decrypt.
    """
    encrypted = content.get("encrypted") if isinstance(content, Mapping) else None
    if not isinstance(encrypted, Mapping) or not isinstance(encrypted.get(key_id), Mapping):
        raise SecretStorageError(f"secret {name!r} is not encrypted with key {key_id!r}")
    return decrypt_secret(key, name, encrypted[key_id])


# --------------------------------------------------------------------------
# Key descriptions
# --------------------------------------------------------------------------


def new_key_id() -> str:
    """A random 32-character alphanumeric key id (as matrix-js-sdk/rust-sdk generate)."""
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(_KEY_ID_LENGTH))


def key_type(key_id: str) -> str:
    """The account data type of a key description: ``m.secret_storage.key.<key_id>``."""
    return KEY_TYPE_PREFIX + key_id


def passphrase_info(
    salt: str | None = None,
    iterations: int = DEFAULT_PBKDF2_ITERATIONS,
    bits: int = 256,
) -> dict[str, Any]:
    """The ``passphrase`` member of a key description (``m.pbkdf2``).

    ``salt`` defaults to 32 random alphanumerics (as matrix-js-sdk/rust-sdk do).
    """
    if salt is None:
        salt = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(32))
    return {"algorithm": PBKDF2, "salt": salt, "iterations": iterations, "bits": bits}


def _validate_passphrase(info: Any) -> tuple[str, int, int]:
    if not isinstance(info, Mapping) or info.get("algorithm") != PBKDF2:
        raise SecretStorageError("unsupported or missing passphrase algorithm (need m.pbkdf2)")
    salt = info.get("salt")
    iterations = info.get("iterations")
    bits = info.get("bits", 256)
    if not isinstance(salt, str):
        raise SecretStorageError("passphrase 'salt' must be a string")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise SecretStorageError("passphrase 'iterations' must be a positive integer")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 8 or bits % 8:
        raise SecretStorageError("passphrase 'bits' must be a positive multiple of 8")
    return salt, iterations, bits


def make_key_description(
    key: bytes,
    *,
    name: str | None = None,
    passphrase: Mapping[str, Any] | None = None,
    iv: bytes | None = None,
    padded: bool = True,
) -> dict[str, Any]:
    """Content for the ``m.secret_storage.key.<id>`` account data of ``key``.

    Contains ``algorithm``, and the ``iv``/``mac`` of encrypting 32 zero bytes
    with secret name ``""`` (the key check).  ``name`` is the optional
    human-readable name; ``passphrase`` the optional ``m.pbkdf2`` block (see
    :func:`passphrase_info`) if the key was derived from a passphrase.
    """
    check = encrypt_secret(key, "", _ZERO_MESSAGE, iv, padded=padded)
    description: dict[str, Any] = {"algorithm": AES_HMAC_SHA2, "iv": check["iv"], "mac": check["mac"]}
    if name is not None:
        description["name"] = name
    if passphrase is not None:
        _validate_passphrase(passphrase)
        description["passphrase"] = dict(passphrase)
    return description


def check_key(key: bytes, description: Mapping[str, Any]) -> bool:
    """Whether ``key`` matches a ``m.secret_storage.key.<id>`` description.

    Follows the spec: ``iv`` and ``mac`` are optional and, when ``mac`` is
    absent, "clients must assume that the key is valid" -> ``True`` (a wrong
    key then fails later, at :func:`decrypt_secret`'s MAC check).  A ``mac``
    without a usable ``iv``, another algorithm, or any malformed input gives
    ``False``; this never raises.
    """
    try:
        if not isinstance(description, Mapping) or description.get("algorithm") != AES_HMAC_SHA2:
            return False
        if not isinstance(key, bytes | bytearray) or not key:
            return False
        if description.get("mac") is None:
            return True
        stored_mac = _decode_field(description.get("mac"), "mac", _MAC_LENGTH)
        iv = _decode_field(description.get("iv"), "iv", _IV_LENGTH)
        computed = b64decode(encrypt_secret(bytes(key), "", _ZERO_MESSAGE, iv)["mac"])
        return hmac.compare_digest(computed, stored_mac)
    except Exception:
        return False


def key_from_description(passphrase: str, description: Mapping[str, Any]) -> bytes:
    """Derive the key for ``description`` from the user's ``passphrase`` (``m.pbkdf2``).

    Does not check the result; call :func:`check_key` afterwards.  Raises
    :class:`SecretStorageError` if the description has no usable passphrase block.
    """
    info = description.get("passphrase") if isinstance(description, Mapping) else None
    salt, iterations, bits = _validate_passphrase(info)
    return key_from_passphrase(passphrase, salt, iterations, bits)


# --------------------------------------------------------------------------
# Secret values that are keys
# --------------------------------------------------------------------------


def encode_secret_key(key: bytes) -> str:
    """Encode a raw private key/seed as a secret value: unpadded base64."""
    return b64encode(bytes(key))


def decode_secret_key(value: str, length: int = 32) -> bytes:
    """Decode a key-valued secret (padded or unpadded base64, or legacy byte list).

    Raises :class:`SecretStorageError` unless the result is ``length`` bytes.
    """
    if not isinstance(value, str):
        raise SecretStorageError("secret value must be a string")
    text = value.strip()
    if "," in text:
        # matrix-js-sdk's fixBackupKey: an old migration stored "12,34,...".
        try:
            numbers = [int(part) for part in text.split(",")]
            raw = bytes(numbers)
        except ValueError as exc:
            raise SecretStorageError("secret is neither base64 nor a byte list") from exc
    else:
        try:
            raw = b64decode(text)
        except ValueError as exc:
            raise SecretStorageError("secret is not valid base64") from exc
    if len(raw) != length:
        raise SecretStorageError(f"secret key must be {length} bytes, got {len(raw)}")
    return raw
