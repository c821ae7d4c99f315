"""SAS (short authentication string) verification maths, ``m.sas.v1``: pure functions, no I/O, no state.

What the spec (Client-Server API, "Short Authentication String (SAS) verification") defines, and nothing else:

* **Key agreement** ``curve25519-hkdf-sha256``: an ephemeral X25519 key pair per verification
  (:class:`SasKeyPair`); the shared secret is the raw X25519 output (an all-zero result, from a low-order public key,
  is refused as the spec's libraries do).
* **Commitment** (in ``m.key.verification.accept``): unpadded base64 of
  SHA-256(accepting device's ephemeral public key, unpadded base64 || canonical JSON of the ``start`` content).
* **Short codes**: HKDF-SHA-256 over the shared secret, no salt, info
  ``MATRIX_KEY_VERIFICATION_SAS|<start user>|<start device>|<start key>|<accept user>|<accept device>|<accept key>|
  <flow id>`` (:func:`sas_info`); 6 bytes give seven 6-bit emoji indices (:func:`emoji_indices`, the 64-emoji table
  :data:`EMOJI` with the spec's English names, which is what Element shows), 5 bytes give three 13-bit numbers + 1000
  (:func:`decimals`).
* **MAC** ``hkdf-hmac-sha256.v2``: HMAC-SHA-256 keyed by HKDF(shared secret, info
  ``MATRIX_KEY_VERIFICATION_MAC<sender user><sender device><receiver user><receiver device><flow id><key id>``), over
  the key's unpadded base64 (or over the sorted, comma-joined key ids with key id ``KEY_IDS``), sent as unpadded
  base64 (:func:`mac_content`, :func:`check_mac_content`). The deprecated ``hkdf-hmac-sha256`` (libolm's broken
  base64) is not offered and not accepted.

The flow id is the ``transaction_id`` for to-device verification and the request event's id in a room.

Implementation: pycryptodome (already a dependency through matrix-nio) for X25519, HKDF, HMAC and SHA-256, so that
every value can be computed from fixed inputs and checked against published vectors; the unit tests cross-check it
against vodozemac's ``Sas`` (the Rust implementation Element's crypto uses) and python-olm's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from Crypto.Hash import SHA256
from Crypto.Protocol import DH
from Crypto.Protocol.KDF import HKDF

from bot.crypto.canonical import b64decode, b64encode, canonical_json

__all__ = [
    "EMOJI",
    "HASH_SHA256",
    "KEY_AGREEMENT",
    "MAC_V2",
    "METHOD_SAS",
    "SAS_DECIMAL",
    "SAS_EMOJI",
    "SUPPORTED_SAS",
    "SasError",
    "SasKeyPair",
    "check_mac_content",
    "commitment",
    "decimals",
    "emoji_for",
    "emoji_indices",
    "hkdf_bytes",
    "mac_content",
    "mac_info",
    "sas_bytes",
    "sas_info",
]

METHOD_SAS = "m.sas.v1"
KEY_AGREEMENT = "curve25519-hkdf-sha256"
HASH_SHA256 = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
SAS_EMOJI = "emoji"
SAS_DECIMAL = "decimal"
SUPPORTED_SAS = (SAS_DECIMAL, SAS_EMOJI)

#: The spec's 64 emoji (data-definitions/sas-emoji.json in matrix-org/matrix-spec): (emoji, English description).
EMOJI: tuple[tuple[str, str], ...] = (
    ("\U0001f436", "Dog"),
    ("\U0001f431", "Cat"),
    ("\U0001f981", "Lion"),
    ("\U0001f40e", "Horse"),
    ("\U0001f984", "Unicorn"),
    ("\U0001f437", "Pig"),
    ("\U0001f418", "Elephant"),
    ("\U0001f430", "Rabbit"),
    ("\U0001f43c", "Panda"),
    ("\U0001f413", "Rooster"),
    ("\U0001f427", "Penguin"),
    ("\U0001f422", "Turtle"),
    ("\U0001f41f", "Fish"),
    ("\U0001f419", "Octopus"),
    ("\U0001f98b", "Butterfly"),
    ("\U0001f337", "Flower"),
    ("\U0001f333", "Tree"),
    ("\U0001f335", "Cactus"),
    ("\U0001f344", "Mushroom"),
    ("\U0001f30f", "Globe"),
    ("\U0001f319", "Moon"),
    ("\u2601\ufe0f", "Cloud"),
    ("\U0001f525", "Fire"),
    ("\U0001f34c", "Banana"),
    ("\U0001f34e", "Apple"),
    ("\U0001f353", "Strawberry"),
    ("\U0001f33d", "Corn"),
    ("\U0001f355", "Pizza"),
    ("\U0001f382", "Cake"),
    ("\u2764\ufe0f", "Heart"),
    ("\U0001f600", "Smiley"),
    ("\U0001f916", "Robot"),
    ("\U0001f3a9", "Hat"),
    ("\U0001f453", "Glasses"),
    ("\U0001f527", "Spanner"),
    ("\U0001f385", "Santa"),
    ("\U0001f44d", "Thumbs Up"),
    ("\u2602\ufe0f", "Umbrella"),
    ("\u231b", "Hourglass"),
    ("\u23f0", "Clock"),
    ("\U0001f381", "Gift"),
    ("\U0001f4a1", "Light Bulb"),
    ("\U0001f4d5", "Book"),
    ("\u270f\ufe0f", "Pencil"),
    ("\U0001f4ce", "Paperclip"),
    ("\u2702\ufe0f", "Scissors"),
    ("\U0001f512", "Lock"),
    ("\U0001f511", "Key"),
    ("\U0001f528", "Hammer"),
    ("\u260e\ufe0f", "Telephone"),
    ("\U0001f3c1", "Flag"),
    ("\U0001f682", "Train"),
    ("\U0001f6b2", "Bicycle"),
    ("\u2708\ufe0f", "Aeroplane"),
    ("\U0001f680", "Rocket"),
    ("\U0001f3c6", "Trophy"),
    ("\u26bd", "Ball"),
    ("\U0001f3b8", "Guitar"),
    ("\U0001f3ba", "Trumpet"),
    ("\U0001f514", "Bell"),
    ("\u2693", "Anchor"),
    ("\U0001f3a7", "Headphones"),
    ("\U0001f4c1", "Folder"),
    ("\U0001f4cc", "Pin"),
)


class SasError(ValueError):
    """A SAS value cannot be computed or checked; ``code`` is the ``m.key.verification.cancel`` code to send."""

    def __init__(self, message: str, code: str = "m.invalid_message") -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------------ key agreement


class SasKeyPair:
    """An ephemeral X25519 key pair for one verification (``curve25519-hkdf-sha256``)."""

    def __init__(self, private: bytes | None = None) -> None:
        seed = private if private is not None else secrets.token_bytes(32)
        if len(seed) != 32:
            raise ValueError("an X25519 private key is 32 bytes")
        self._key = DH.import_x25519_private_key(seed)

    @property
    def public_key(self) -> str:
        """The public key, unpadded base64 (what ``m.key.verification.key`` carries)."""
        return b64encode(self._key.public_key().export_key(format="raw"))

    def shared_secret(self, their_public_key: str) -> bytes:
        """The raw X25519 shared secret with ``their_public_key`` (unpadded base64).

        Raises :class:`SasError` (``m.invalid_message``) for a malformed key or a non-contributory (all-zero) result.
        """
        try:
            raw = b64decode(their_public_key)
        except ValueError:
            raise SasError("the other side's SAS public key is not base64") from None
        if len(raw) != 32:
            raise SasError("the other side's SAS public key is not 32 bytes")
        try:
            theirs = DH.import_x25519_public_key(raw)
            secret = DH.key_agreement(static_priv=self._key, static_pub=theirs, kdf=lambda x: x)
        except ValueError as exc:
            raise SasError(f"the other side's SAS public key is unusable: {exc}") from None
        if not any(secret):
            raise SasError("the key agreement gave an all-zero secret (a low-order public key)")
        return bytes(secret)


def commitment(public_key: str, start_content: Mapping[str, Any]) -> str:
    """The ``commitment`` of ``m.key.verification.accept``: unpadded base64 of
    SHA-256(``public_key`` (unpadded base64) || canonical JSON of the ``start`` content)."""
    digest = hashlib.sha256(public_key.encode("ascii") + canonical_json(dict(start_content))).digest()
    return b64encode(digest)


# ------------------------------------------------------------------------------------------------ short codes


def hkdf_bytes(shared_secret: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869) with no salt (32 zero bytes, as RFC 5869 says for an absent salt)."""
    return HKDF(shared_secret, length, b"\x00" * 32, SHA256, context=info)


def sas_info(
    start_user: str,
    start_device: str,
    start_key: str,
    accept_user: str,
    accept_device: str,
    accept_key: str,
    flow_id: str,
) -> bytes:
    """The HKDF info of the short codes (``curve25519-hkdf-sha256``): the side that sent ``start`` first."""
    return (
        f"MATRIX_KEY_VERIFICATION_SAS|{start_user}|{start_device}|{start_key}|"
        f"{accept_user}|{accept_device}|{accept_key}|{flow_id}"
    ).encode()


def sas_bytes(shared_secret: bytes, info: bytes) -> bytes:
    """The 6 bytes both short codes are made of (decimal uses the first 5)."""
    return hkdf_bytes(shared_secret, info, 6)


def emoji_indices(data: bytes) -> list[int]:
    """Seven 6-bit numbers from the first 42 bits of ``data`` (at least 6 bytes), most significant first."""
    if len(data) < 6:
        raise ValueError("the emoji short code needs 6 bytes")
    number = int.from_bytes(data[:6], "big") >> 6
    return [(number >> (6 * (6 - i))) & 0x3F for i in range(7)]


def emoji_for(data: bytes) -> list[tuple[str, str]]:
    """The seven emoji (and their names) of ``data``."""
    return [EMOJI[i] for i in emoji_indices(data)]


def decimals(data: bytes) -> tuple[int, int, int]:
    """Three numbers 1000..9191 from the first 5 bytes of ``data`` (13 bits each)."""
    if len(data) < 5:
        raise ValueError("the decimal short code needs 5 bytes")
    b = data
    return (
        ((b[0] << 5) | (b[1] >> 3)) + 1000,
        (((b[1] & 0x7) << 10) | (b[2] << 2) | (b[3] >> 6)) + 1000,
        (((b[3] & 0x3F) << 7) | (b[4] >> 1)) + 1000,
    )


# ------------------------------------------------------------------------------------------------ MACs


def mac_info(sender_user: str, sender_device: str, receiver_user: str, receiver_device: str, flow_id: str) -> str:
    """The info prefix of ``hkdf-hmac-sha256.v2``; append the key id (or ``KEY_IDS``)."""
    return f"MATRIX_KEY_VERIFICATION_MAC{sender_user}{sender_device}{receiver_user}{receiver_device}{flow_id}"


def calculate_mac(shared_secret: bytes, info: str, message: str) -> str:
    """One ``hkdf-hmac-sha256.v2`` MAC: HMAC-SHA-256 keyed by HKDF(secret, info), unpadded base64."""
    key = hkdf_bytes(shared_secret, info.encode(), 32)
    return b64encode(hmac.new(key, message.encode(), hashlib.sha256).digest())


def mac_content(shared_secret: bytes, info: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """``{"mac": {key id: MAC}, "keys": MAC of the sorted key ids}`` for ``keys`` (key id -> public key)."""
    macs = {key_id: calculate_mac(shared_secret, info + key_id, public) for key_id, public in keys.items()}
    return {"mac": macs, "keys": calculate_mac(shared_secret, info + "KEY_IDS", ",".join(sorted(macs)))}


@dataclass(frozen=True)
class CheckedMac:
    """The outcome of :func:`check_mac_content`: the key ids whose MACs matched keys we know."""

    verified: dict[str, str]
    unknown: list[str]


def check_mac_content(
    shared_secret: bytes, info: str, content: Mapping[str, Any], known_keys: Mapping[str, str]
) -> CheckedMac:
    """Check a received ``m.key.verification.mac`` content against the keys we know of the sender.

    ``info`` is :func:`mac_info` with the *sender's* ids first. ``known_keys`` maps key id -> public key (the sending
    device's ed25519 key, the sending user's master key). Raises :class:`SasError` with code ``m.key_mismatch`` when
    the key-id list MAC or the MAC of any known key is wrong, or when no known key was MAC-ed at all. Key ids we do
    not know are ignored (returned in ``unknown``), as the spec's implementations do.
    """
    macs = content.get("mac")
    keys_mac = content.get("keys")
    if not isinstance(macs, Mapping) or not isinstance(keys_mac, str) or not macs:
        raise SasError("the MAC message has no mac or keys", "m.invalid_message")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in macs.items()):
        raise SasError("the MAC message has non-string entries", "m.invalid_message")
    expected = calculate_mac(shared_secret, info + "KEY_IDS", ",".join(sorted(macs)))
    if not hmac.compare_digest(expected, keys_mac):
        raise SasError("the MAC of the key list does not match", "m.key_mismatch")
    verified: dict[str, str] = {}
    unknown: list[str] = []
    for key_id, value in macs.items():
        public = known_keys.get(key_id)
        if public is None:
            unknown.append(key_id)
            continue
        if not hmac.compare_digest(calculate_mac(shared_secret, info + key_id, public), value):
            raise SasError(f"the MAC of {key_id} does not match", "m.key_mismatch")
        verified[key_id] = public
    if not verified:
        raise SasError("no key we know of was MAC-ed", "m.key_mismatch")
    return CheckedMac(verified, unknown)
