"""Fingerprints people can read aloud: key groups and Signal-style safety numbers. Pure functions.

* :func:`key_groups`: an unpadded base64 key in groups of four characters, as Element shows a session key
  (``abcd efgh ijkl ...``).
* :func:`safety_number`: Signal's numeric fingerprint (libsignal ``NumericFingerprintGenerator``, version 0 input,
  5200 iterations). For each party: ``H = SHA-512`` iterated 5200 times over ``0x0000 || key || identifier``, each
  round hashing ``H || key``; the first 30 bytes become six 5-digit numbers (5 bytes each, big-endian, mod 100000).
  The two 30-digit halves are shown smaller first, so both parties see the same 60 digits (12 groups of 5). For
  Matrix the key is a user's cross-signing master key (32 raw bytes) and the identifier the user id: two people
  reading the same 60 digits hold each other's current master keys, which is what an emoji verification proves
  interactively. (Signal's own vectors use its 33-byte keys with a type prefix; the algorithm is the same.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from bot.crypto.canonical import b64decode

__all__ = ["ITERATIONS", "fingerprint_lines", "group_digits", "key_groups", "numeric_half", "safety_number"]

#: Signal's iteration count for the numeric fingerprint.
ITERATIONS = 5200


def key_groups(key: str, size: int = 4) -> str:
    """``key`` in space-separated groups of ``size`` characters."""
    return " ".join(key[i : i + size] for i in range(0, len(key), size))


def numeric_half(key: bytes, identifier: bytes, iterations: int = ITERATIONS) -> str:
    """One party's 30 digits."""
    digest = b"\x00\x00" + key + identifier
    for _ in range(iterations):
        digest = hashlib.sha512(digest + key).digest()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(key_a: bytes | str, id_a: str | bytes, key_b: bytes | str, id_b: str | bytes) -> str:
    """The 60-digit safety number of two parties (the same whichever side computes it).

    Keys may be raw bytes or unpadded base64; identifiers str (UTF-8) or bytes.
    """
    halves = sorted(
        numeric_half(_raw(key), ident.encode() if isinstance(ident, str) else ident)
        for key, ident in ((key_a, id_a), (key_b, id_b))
    )
    return "".join(halves)


def group_digits(number: str, size: int = 5) -> str:
    """``number`` in space-separated groups of ``size`` digits (Signal shows 12 groups of 5)."""
    return " ".join(number[i : i + size] for i in range(0, len(number), size))


def fingerprint_lines(found: Mapping[str, Any]) -> list[str]:
    """What people compare, one line each, from a fingerprints mapping (``user_id``, ``device_id``,
    ``device_ed25519``, ``master_key`` and optionally ``other``: ``user_id``, ``master_key``, ``safety_number``):
    keys in groups of four, the safety number in groups of five. ``ratchet fingerprint`` and ``!fingerprint`` show
    these lines."""

    def show(key: str | None) -> str:
        return key_groups(key) if key else "(none)"

    lines = [
        f"{found['user_id']}, device {found['device_id']}",
        f"device key (ed25519): {show(found.get('device_ed25519'))}",
        f"master key: {show(found.get('master_key'))}",
    ]
    other = found.get("other")
    if other:
        lines.append(f"{other['user_id']} master key: {show(other.get('master_key'))}")
        number = other.get("safety_number")
        lines.append(
            f"safety number: {group_digits(number)}" if number else "safety number: none (both need a master key)"
        )
    return lines


def _raw(key: bytes | str) -> bytes:
    return b64decode(key) if isinstance(key, str) else key
