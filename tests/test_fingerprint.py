"""Readable fingerprints (bot/crypto/fingerprint.py): libsignal's own safety-number vector
(NumericFingerprintGeneratorTest, DISPLAYABLE_FINGERPRINT_V1), symmetry, and key groups."""

from __future__ import annotations

from bot.crypto.canonical import b64encode
from bot.crypto.fingerprint import group_digits, key_groups, safety_number

ALICE_IDENTITY = bytes.fromhex("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
BOB_IDENTITY = bytes.fromhex("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")


def test_libsignal_vector():
    expected = "300354477692869396892869876765458257569162576843440918079131"
    assert safety_number(ALICE_IDENTITY, "+14152222222", BOB_IDENTITY, "+14153333333") == expected
    assert safety_number(BOB_IDENTITY, "+14153333333", ALICE_IDENTITY, "+14152222222") == expected
    assert group_digits(expected) == "30035 44776 92869 39689 28698 76765 45825 75691 62576 84344 09180 79131"


def test_matrix_keys_and_groups():
    a, b = b64encode(bytes(range(32))), b64encode(bytes(range(32, 64)))
    number = safety_number(a, "@alice:x", b, "@bot:x")
    assert len(number) == 60 and number.isdigit()
    assert number == safety_number(b, "@bot:x", a, "@alice:x")
    assert number != safety_number(a, "@alice:x", b, "@mallory:x")
    assert key_groups("abcdefghij") == "abcd efgh ij"
