"""Cross-signing keys: generation, signing and chain verification (pure).

Spec: client-server API, "Cross-signing", ``POST /keys/device_signing/upload``,
``POST /keys/signatures/upload`` and the ``CrossSigningKey`` definition.

Each user has three ed25519 keys, each made from a 32-byte seed
(``olm.PkSigning(seed)``):

* master (MSK) -- the user's identity; signs the other two;
* self-signing (SSK) -- signs the user's own devices;
* user-signing (USK) -- signs other users' master keys.

A cross-signing key object is ``{"user_id", "usage": [...], "keys":
{"ed25519:<pub>": "<pub>"}, "signatures"?: ...}`` where ``<pub>`` is the
unpadded base64 public key.

Objects meant for ``/keys/signatures/upload`` (:meth:`CrossSigningKeys.sign_device`,
:meth:`~CrossSigningKeys.sign_user`,
:meth:`~CrossSigningKeys.master_key_signed_by_device`) carry **only the new
signature**: Synapse strips ``signatures``/``unsigned`` before comparing the
object with its stored copy, and for a master key it re-verifies *every*
signature listed under the uploader as a device signature, so forwarding
signatures we did not make can only cause a 400.

All ``verify_*`` helpers and :func:`master_public` accept arbitrary (untrusted)
input and never raise: malformed input simply does not verify.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import olm

from bot.crypto.canonical import JsonSigner, Signer, b64decode, sign_json, signable, verify_json
from bot.crypto.ssss import MASTER, SELF_SIGNING, USER_SIGNING, decode_secret_key, encode_secret_key

__all__ = [
    "USAGE_MASTER",
    "USAGE_SELF_SIGNING",
    "USAGE_USER_SIGNING",
    "CrossSigningKeys",
    "CrossSigningSeeds",
    "cross_signing_key",
    "cross_signing_public",
    "master_public",
    "signatures_upload_body",
    "verify_device_self_signed",
    "verify_device_signed",
    "verify_master_signed_by_device",
    "verify_self_signing_key",
    "verify_user_signed",
    "verify_user_signing_key",
]

USAGE_MASTER = "master"
USAGE_SELF_SIGNING = "self_signing"
USAGE_USER_SIGNING = "user_signing"

_SEED_LENGTH = 32


# --------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class CrossSigningSeeds:
    """The three private ed25519 seeds (32 bytes each)."""

    master: bytes
    self_signing: bytes
    user_signing: bytes

    def __post_init__(self) -> None:
        for field in ("master", "self_signing", "user_signing"):
            value = getattr(self, field)
            if not isinstance(value, bytes) or len(value) != _SEED_LENGTH:
                raise ValueError(f"{field} seed must be {_SEED_LENGTH} bytes")

    def __repr__(self) -> str:
        return "CrossSigningSeeds(<redacted>)"

    @classmethod
    def generate(cls) -> CrossSigningSeeds:
        """Three fresh random seeds."""
        return cls(
            secrets.token_bytes(_SEED_LENGTH),
            secrets.token_bytes(_SEED_LENGTH),
            secrets.token_bytes(_SEED_LENGTH),
        )

    def to_secrets(self) -> dict[str, str]:
        """Secret name -> secret value, ready for secret storage.

        Each value is the unpadded base64 of the raw 32-byte seed (what
        matrix-rust-sdk stores; see :mod:`bot.crypto.ssss`).
        """
        return {
            MASTER: encode_secret_key(self.master),
            SELF_SIGNING: encode_secret_key(self.self_signing),
            USER_SIGNING: encode_secret_key(self.user_signing),
        }

    @classmethod
    def from_secrets(cls, values: Mapping[str, str]) -> CrossSigningSeeds:
        """Inverse of :meth:`to_secrets`; accepts padded or unpadded base64.

        Raises :class:`KeyError` if a secret is missing and
        :class:`bot.crypto.ssss.SecretStorageError` if one is malformed.
        """
        return cls(
            decode_secret_key(values[MASTER]),
            decode_secret_key(values[SELF_SIGNING]),
            decode_secret_key(values[USER_SIGNING]),
        )


def cross_signing_key(user_id: str, usage: str, public_key: str) -> dict[str, Any]:
    """An unsigned ``CrossSigningKey`` object."""
    return {
        "user_id": user_id,
        "usage": [usage],
        "keys": {f"ed25519:{public_key}": public_key},
    }


# --------------------------------------------------------------------------
# Our own keys
# --------------------------------------------------------------------------


class CrossSigningKeys:
    """A user's cross-signing key pairs, able to build and sign the JSON objects."""

    def __init__(self, user_id: str, seeds: CrossSigningSeeds) -> None:
        if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
            raise ValueError(f"not a Matrix user ID: {user_id!r}")
        self.user_id = user_id
        self.seeds = seeds
        self._master = olm.PkSigning(seeds.master)
        self._self_signing = olm.PkSigning(seeds.self_signing)
        self._user_signing = olm.PkSigning(seeds.user_signing)

    @classmethod
    def from_seeds(cls, user_id: str, seeds: CrossSigningSeeds) -> CrossSigningKeys:
        """Build from seeds (e.g. :meth:`CrossSigningSeeds.generate` or secret storage)."""
        return cls(user_id, seeds)

    def __repr__(self) -> str:
        return f"CrossSigningKeys({self.user_id!r}, master={self.master_public!r})"

    # public keys ----------------------------------------------------------

    @property
    def master_public(self) -> str:
        """Unpadded base64 ed25519 public key of the master key."""
        return str(self._master.public_key)

    @property
    def self_signing_public(self) -> str:
        """Unpadded base64 ed25519 public key of the self-signing key."""
        return str(self._self_signing.public_key)

    @property
    def user_signing_public(self) -> str:
        """Unpadded base64 ed25519 public key of the user-signing key."""
        return str(self._user_signing.public_key)

    @property
    def master_key_id(self) -> str:
        """``ed25519:<master public key>``."""
        return f"ed25519:{self.master_public}"

    @property
    def self_signing_key_id(self) -> str:
        """``ed25519:<self-signing public key>``."""
        return f"ed25519:{self.self_signing_public}"

    @property
    def user_signing_key_id(self) -> str:
        """``ed25519:<user-signing public key>``."""
        return f"ed25519:{self.user_signing_public}"

    # signers --------------------------------------------------------------

    def master_signer(self) -> JsonSigner:
        """Signs a JSON object with the master key (e.g. key backup ``auth_data``)."""
        return JsonSigner(self.user_id, self.master_key_id, self._master.sign)

    def self_signing_signer(self) -> JsonSigner:
        """Signs a JSON object with the self-signing key."""
        return JsonSigner(self.user_id, self.self_signing_key_id, self._self_signing.sign)

    def user_signing_signer(self) -> JsonSigner:
        """Signs a JSON object with the user-signing key."""
        return JsonSigner(self.user_id, self.user_signing_key_id, self._user_signing.sign)

    # key objects ----------------------------------------------------------

    def master_key(self) -> dict[str, Any]:
        """Our master key object (unsigned)."""
        return cross_signing_key(self.user_id, USAGE_MASTER, self.master_public)

    def self_signing_key(self) -> dict[str, Any]:
        """Our self-signing key object, signed by the master key."""
        unsigned = cross_signing_key(self.user_id, USAGE_SELF_SIGNING, self.self_signing_public)
        return self.master_signer()(unsigned)

    def user_signing_key(self) -> dict[str, Any]:
        """Our user-signing key object, signed by the master key."""
        unsigned = cross_signing_key(self.user_id, USAGE_USER_SIGNING, self.user_signing_public)
        return self.master_signer()(unsigned)

    def device_signing_upload_body(self) -> dict[str, Any]:
        """Body of ``POST /_matrix/client/v3/keys/device_signing/upload`` (no ``auth``).

        The master key is uploaded unsigned; have the device sign it afterwards
        with :meth:`master_key_signed_by_device` via ``/keys/signatures/upload``.
        """
        return {
            "master_key": self.master_key(),
            "self_signing_key": self.self_signing_key(),
            "user_signing_key": self.user_signing_key(),
        }

    # signing other things -------------------------------------------------

    def sign_device(self, device_keys: Mapping[str, Any]) -> dict[str, Any]:
        """Sign one of our devices' keys with the self-signing key.

        ``device_keys`` is the device's ``DeviceKeys`` object (as from
        ``/keys/query``).  Returns it without ``unsigned`` and with only the
        SSK signature, the form for ``/keys/signatures/upload``
        (``{user_id: {device_id: <this>}}``).

        Raises :class:`ValueError` if it is not a device of ``self.user_id``.
        """
        if not _device_fields(device_keys, self.user_id):
            raise ValueError("device_keys is not a well-formed device of this user")
        return sign_json(signable(device_keys), self.user_id, self.self_signing_key_id, self._self_signing.sign)

    def master_key_signed_by_device(self, device_id: str, device_sign: Signer) -> dict[str, Any]:
        """Our master key signed by one of our devices' ed25519 keys.

        ``device_sign`` is the device's signing primitive (bytes -> unpadded
        base64), e.g. ``olm.Account.sign`` or a vodozemac wrapper.  The
        signature goes under ``signatures[user_id]["ed25519:<device_id>"]``.
        Upload as ``{user_id: {<master public key>: <this>}}``.
        """
        if not isinstance(device_id, str) or not device_id:
            raise ValueError("device_id must be a non-empty string")
        return sign_json(self.master_key(), self.user_id, f"ed25519:{device_id}", device_sign)

    def sign_user(self, master_key_of_other_user: Mapping[str, Any]) -> dict[str, Any]:
        """Sign another user's master key with our user-signing key.

        Returns the key without ``unsigned`` and with only our signature; upload
        as ``{other_user_id: {<their master public key>: <this>}}``.

        Raises :class:`ValueError` if it is not a well-formed master key of
        another user.
        """
        other_user = master_key_of_other_user.get("user_id") if isinstance(master_key_of_other_user, Mapping) else None
        if not isinstance(other_user, str) or not master_public(master_key_of_other_user, other_user):
            raise ValueError("not a well-formed master key")
        if other_user == self.user_id:
            raise ValueError("the user-signing key signs other users' master keys, not our own")
        return sign_json(
            signable(master_key_of_other_user),
            self.user_id,
            self.user_signing_key_id,
            self._user_signing.sign,
        )


def signatures_upload_body(signed_objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Group signed objects into a ``POST /keys/signatures/upload`` body.

    Device keys are filed under their ``device_id``; cross-signing keys under
    their public key, as the endpoint expects.  Raises :class:`ValueError` for
    an object that is neither.
    """
    body: dict[str, dict[str, Any]] = {}
    for obj in signed_objects:
        user_id = obj.get("user_id") if isinstance(obj, Mapping) else None
        if not isinstance(user_id, str):
            raise ValueError("signed object has no user_id")
        device_id = obj.get("device_id")
        if isinstance(device_id, str) and device_id:
            target = device_id
        else:
            target = cross_signing_public(obj)
            if not target:
                raise ValueError("signed object is neither device keys nor a cross-signing key")
        body.setdefault(user_id, {})[target] = dict(obj)
    return body


# --------------------------------------------------------------------------
# Verifying other users' (or our own, as seen from the server) keys
# --------------------------------------------------------------------------


def cross_signing_public(
    keyobj: Any,
    user_id: str | None = None,
    usage: str | None = None,
) -> str:
    """The ed25519 public key of a ``CrossSigningKey`` object, or ``""`` if malformed.

    Well-formed means: an object whose ``keys`` has exactly one entry, named
    ``ed25519:<pub>`` with value ``<pub>``, where ``<pub>`` is base64 of 32
    bytes; ``user_id`` equal to ``user_id`` (if given); ``usage`` a list of
    strings containing ``usage`` (if given).
    """
    try:
        if not isinstance(keyobj, Mapping):
            return ""
        if user_id is not None and keyobj.get("user_id") != user_id:
            return ""
        if not isinstance(keyobj.get("user_id"), str):
            return ""
        usages = keyobj.get("usage")
        if not isinstance(usages, list) or not all(isinstance(u, str) for u in usages):
            return ""
        if usage is not None and usage not in usages:
            return ""
        keys = keyobj.get("keys")
        if not isinstance(keys, Mapping) or len(keys) != 1:
            return ""
        ((key_id, value),) = keys.items()
        if not isinstance(key_id, str) or not isinstance(value, str):
            return ""
        if key_id != f"ed25519:{value}":
            return ""
        if len(b64decode(value)) != 32:
            return ""
        return value
    except Exception:
        return ""


def master_public(keyobj: Any, user_id: str | None = None) -> str:
    """Public key of a well-formed master key (usage ``master``), else ``""``.

    ``""`` is falsy, so ``if not master_public(obj): ...`` reads naturally.
    """
    return cross_signing_public(keyobj, user_id, USAGE_MASTER)


def _device_fields(device_keys: Any, user_id: str) -> str:
    """``device_id`` if ``device_keys`` looks like a device of ``user_id``, else ``""``."""
    if not isinstance(device_keys, Mapping) or device_keys.get("user_id") != user_id:
        return ""
    device_id = device_keys.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        return ""
    keys = device_keys.get("keys")
    if not isinstance(keys, Mapping) or not isinstance(keys.get(f"ed25519:{device_id}"), str):
        return ""
    return device_id


def _signed_by(obj: Any, signer_user: str, public_key: str) -> bool:
    return bool(public_key) and verify_json(obj, signer_user, f"ed25519:{public_key}", public_key)


def verify_self_signing_key(master_key: Any, ssk: Any, user_id: str) -> bool:
    """Whether ``ssk`` is ``user_id``'s self-signing key, validly signed by ``master_key``."""
    try:
        master = master_public(master_key, user_id)
        own = cross_signing_public(ssk, user_id, USAGE_SELF_SIGNING)
        return bool(own) and own != master and _signed_by(ssk, user_id, master)
    except Exception:
        return False


def verify_user_signing_key(master_key: Any, usk: Any, user_id: str) -> bool:
    """Whether ``usk`` is ``user_id``'s user-signing key, validly signed by ``master_key``."""
    try:
        master = master_public(master_key, user_id)
        own = cross_signing_public(usk, user_id, USAGE_USER_SIGNING)
        return bool(own) and own != master and _signed_by(usk, user_id, master)
    except Exception:
        return False


def verify_device_signed(device_keys: Any, ssk: Any, user_id: str) -> bool:
    """Whether ``device_keys`` (a device of ``user_id``) is signed by self-signing key ``ssk``.

    Checks only this link: combine with :func:`verify_self_signing_key` for
    the chain up to the master key.  A device whose ID equals the SSK's public
    key is refused (spec: device IDs and cross-signing keys share a namespace
    and clients must refuse such collisions).
    """
    try:
        device_id = _device_fields(device_keys, user_id)
        ssk_public = cross_signing_public(ssk, user_id, USAGE_SELF_SIGNING)
        if not device_id or not ssk_public or device_id == ssk_public:
            return False
        return _signed_by(device_keys, user_id, ssk_public)
    except Exception:
        return False


def verify_device_self_signed(device_keys: Any, user_id: str) -> bool:
    """Whether ``device_keys`` carries a valid signature by its own ed25519 key."""
    try:
        device_id = _device_fields(device_keys, user_id)
        if not device_id:
            return False
        key_id = f"ed25519:{device_id}"
        return verify_json(device_keys, user_id, key_id, device_keys["keys"][key_id])
    except Exception:
        return False


def verify_master_signed_by_device(master_key: Any, device_keys: Any, user_id: str) -> bool:
    """Whether ``user_id``'s master key is signed by the ed25519 key of ``device_keys``."""
    try:
        device_id = _device_fields(device_keys, user_id)
        master = master_public(master_key, user_id)
        if not device_id or not master or device_id == master:
            return False
        key_id = f"ed25519:{device_id}"
        return verify_json(master_key, user_id, key_id, device_keys["keys"][key_id])
    except Exception:
        return False


def verify_user_signed(other_master_key: Any, our_usk: Any, our_user_id: str) -> bool:
    """Whether another user's master key is signed by our user-signing key ``our_usk``.

    Callers should also have checked our USK against our master key with
    :func:`verify_user_signing_key`.
    """
    try:
        other_user = other_master_key.get("user_id") if isinstance(other_master_key, Mapping) else None
        if not isinstance(other_user, str) or other_user == our_user_id:
            return False
        if not master_public(other_master_key, other_user):
            return False
        usk_public = cross_signing_public(our_usk, our_user_id, USAGE_USER_SIGNING)
        return _signed_by(other_master_key, our_user_id, usk_public)
    except Exception:
        return False
