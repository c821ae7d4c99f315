"""Recovery keys: the spec's "cryptographic key representation" and ``m.pbkdf2``.

* :func:`encode_recovery_key` / :func:`decode_recovery_key` implement the
  appendix "Cryptographic key representation": ``0x8B 0x01 || key || parity``
  (parity = XOR of every preceding byte, header included), base58 with the
  Bitcoin alphabet, a space after every 4th character.  The same format is
  used for secret storage keys and for backup decryption keys.
* :func:`key_from_passphrase` implements ``m.pbkdf2`` from "Deriving keys from
  passphrases" (PBKDF2-HMAC-SHA-512, salt and passphrase as UTF-8).

Base58 is implemented here (a few lines) rather than adding a dependency.
"""

from __future__ import annotations

import hashlib
import secrets

from bot.errors import RecoveryKeyError

__all__ = [
    "BASE58_ALPHABET",
    "KEY_LENGTH",
    "RECOVERY_KEY_PREFIX",
    "RecoveryKeyError",
    "base58_decode",
    "base58_encode",
    "decode_recovery_key",
    "encode_recovery_key",
    "generate_recovery_key",
    "key_from_passphrase",
]

#: Bitcoin base58 alphabet (no 0, O, I, l).
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {char: index for index, char in enumerate(BASE58_ALPHABET)}

#: Header bytes of an encoded key.
RECOVERY_KEY_PREFIX = b"\x8b\x01"
#: Length of the raw key carried in a recovery key.
KEY_LENGTH = 32
_DECODED_LENGTH = len(RECOVERY_KEY_PREFIX) + KEY_LENGTH + 1
_GROUP = 4


# --------------------------------------------------------------------------
# Base58 (Bitcoin alphabet)
# --------------------------------------------------------------------------


def base58_encode(data: bytes) -> str:
    """Encode bytes with the Bitcoin base58 alphabet (leading zero bytes -> ``1``)."""
    data = bytes(data)
    zeros = len(data) - len(data.lstrip(b"\x00"))
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(BASE58_ALPHABET[remainder])
    return "1" * zeros + "".join(reversed(digits))


def base58_decode(text: str) -> bytes:
    """Decode Bitcoin-alphabet base58; raises :class:`RecoveryKeyError` on a bad character."""
    number = 0
    for position, char in enumerate(text):
        digit = _BASE58_INDEX.get(char)
        if digit is None:
            raise RecoveryKeyError(
                f"invalid character {char!r} at position {position + 1}: recovery keys use "
                "the base58 alphabet (no 0, O, I or l)"
            )
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body


# --------------------------------------------------------------------------
# Recovery key encoding
# --------------------------------------------------------------------------


def _parity(data: bytes) -> int:
    parity = 0
    for byte in data:
        parity ^= byte
    return parity


def encode_recovery_key(key: bytes) -> str:
    """Encode a 32-byte key in the spec's human-readable form.

    Example shape: ``"EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d"``.
    """
    key = bytes(key)
    if len(key) != KEY_LENGTH:
        raise RecoveryKeyError(f"a recovery key encodes exactly {KEY_LENGTH} bytes, got {len(key)}")
    raw = RECOVERY_KEY_PREFIX + key
    encoded = base58_encode(raw + bytes([_parity(raw)]))
    return " ".join(encoded[i : i + _GROUP] for i in range(0, len(encoded), _GROUP))


def decode_recovery_key(text: str) -> bytes:
    """Decode a recovery key typed or pasted by a user; returns the 32 raw key bytes.

    Whitespace anywhere is ignored (spec: "clients should disregard
    whitespace").  Raises :class:`RecoveryKeyError` with a specific message for:
    an empty key, a non-base58 character, a wrong decoded length, a wrong
    prefix, or a parity mismatch (in that order of checking).
    """
    if not isinstance(text, str):
        raise RecoveryKeyError(f"recovery key must be a string, not {type(text).__name__}")
    compact = "".join(text.split())
    if not compact:
        raise RecoveryKeyError("recovery key is empty")
    decoded = base58_decode(compact)
    if len(decoded) != _DECODED_LENGTH:
        raise RecoveryKeyError(
            f"recovery key has the wrong length: it decodes to {len(decoded)} bytes, expected "
            f"{_DECODED_LENGTH} (is part of the key missing, or is it a different kind of key?)"
        )
    if decoded[:2] != RECOVERY_KEY_PREFIX:
        raise RecoveryKeyError(
            f"recovery key has the wrong prefix: expected 8b01, got {decoded[:2].hex()} "
            "(this is not a Matrix recovery key)"
        )
    expected = _parity(decoded[:-1])
    if decoded[-1] != expected:
        raise RecoveryKeyError(
            "recovery key parity check failed: it was probably mistyped "
            f"(parity byte {decoded[-1]:02x}, computed {expected:02x})"
        )
    return decoded[2:-1]


def generate_recovery_key() -> tuple[bytes, str]:
    """Generate a random 32-byte key; return ``(key, encoded_recovery_key)``."""
    key = secrets.token_bytes(KEY_LENGTH)
    return key, encode_recovery_key(key)


# --------------------------------------------------------------------------
# m.pbkdf2
# --------------------------------------------------------------------------


def key_from_passphrase(
    passphrase: str | bytes,
    salt: str | bytes,
    iterations: int,
    bits: int = 256,
) -> bytes:
    """Derive a key from a passphrase per ``m.pbkdf2``.

    PBKDF2 with HMAC-SHA-512, ``iterations`` rounds, output ``bits`` long
    (default 256).  ``passphrase`` and ``salt`` (the ``salt`` string from the
    key description) are encoded as UTF-8, as matrix-js-sdk and
    matrix-rust-sdk do.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 8 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
    password = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
    salt_bytes = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    return hashlib.pbkdf2_hmac("sha512", password, salt_bytes, iterations, dklen=bits // 8)
