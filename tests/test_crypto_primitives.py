"""Network-free tests for bot.crypto: canonical JSON, signing, recovery keys,
secret storage, cross-signing and key backup.

Independent cross-checks use the ``cryptography`` package (a different
implementation from the pycryptodome/libolm/vodozemac code under test).

Fixed vectors come from published sources only:

* canonical JSON examples and the JSON-signing vectors: Matrix spec appendices
  (matrix-org/matrix-spec, content/appendices.md);
* recovery-key, secret-storage and backup vectors: matrix-org/matrix-rust-sdk
  tests in crates/matrix-sdk-crypto/src/secret_storage.rs and
  crates/matrix-sdk-crypto/src/backups/keys/decryption.rs.
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import olm
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.crypto import canonical, cross_signing, ssss
from bot.crypto import megolm_backup as backup
from bot.crypto import recoverykey as recovery_key
from bot.crypto.canonical import (
    JsonSigner,
    b64decode,
    b64encode,
    canonical_json,
    sign_json,
    signable,
    verify_json,
)
from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds
from bot.crypto.megolm_backup import BackupError, BackupKey
from bot.crypto.recoverykey import RecoveryKeyError, decode_recovery_key, encode_recovery_key
from bot.crypto.ssss import SecretStorageError


def pad_b64(text: str) -> str:
    """Standard (stdlib) base64 decoding needs padding."""
    return text + "=" * (-len(text) % 4)


def std_b64d(text: str) -> bytes:
    return base64.b64decode(pad_b64(text), validate=True)


# ==========================================================================
# Independent reference implementations (cryptography package)
# ==========================================================================


def ref_hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def ref_hmac(key: bytes, data: bytes) -> bytes:
    mac = c_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def ref_aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def ref_ed25519_verify(public_b64: str, message: bytes, signature_b64: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(std_b64d(public_b64)).verify(std_b64d(signature_b64), message)
    except InvalidSignature:
        return False
    return True


def ref_backup_decrypt(private: bytes, encrypted: dict[str, str]) -> tuple[bytes, bytes, bytes]:
    """Spec steps 2-5 done by hand: returns (plaintext, expected_mac, mac_over_ciphertext)."""
    ephemeral = X25519PublicKey.from_public_bytes(std_b64d(encrypted["ephemeral"]))
    shared = X25519PrivateKey.from_private_bytes(private).exchange(ephemeral)
    okm = ref_hkdf(shared, b"\x00" * 32, b"", 80)
    aes_key, mac_key, iv = okm[:32], okm[32:64], okm[64:]
    ciphertext = std_b64d(encrypted["ciphertext"])
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    plaintext = unpadder.update(padded) + unpadder.finalize()
    return plaintext, ref_hmac(mac_key, b"")[:8], ref_hmac(mac_key, ciphertext)[:8]


def ref_backup_encrypt(public_b64: str, plaintext: bytes) -> dict[str, str]:
    """Spec encryption by hand (ephemeral key, HKDF, AES-CBC, MAC over empty string)."""
    ephemeral = X25519PrivateKey.generate()
    recipient = X25519PublicKey.from_public_bytes(std_b64d(public_b64))
    okm = ref_hkdf(ephemeral.exchange(recipient), b"\x00" * 32, b"", 80)
    aes_key, mac_key, iv = okm[:32], okm[32:64], okm[64:]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "ephemeral": b64encode(ephemeral_public),
        "ciphertext": b64encode(ciphertext),
        "mac": b64encode(ref_hmac(mac_key, b"")[:8]),
    }


# ==========================================================================
# Base64
# ==========================================================================


@pytest.mark.parametrize(
    ("raw", "encoded"),
    # spec appendix "Unpadded Base64" examples
    [
        (b"", ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"fooba", "Zm9vYmE"),
        (b"foobar", "Zm9vYmFy"),
    ],
)
def test_unpadded_base64_spec_examples(raw: bytes, encoded: str) -> None:
    assert b64encode(raw) == encoded
    assert b64decode(encoded) == raw
    assert b64decode(pad_b64(encoded)) == raw


def test_b64decode_tolerance_and_rejections() -> None:
    assert b64decode("-_8") == b64decode("+/8") == b"\xfb\xff"
    for bad in ["Z", "a b", "Zg=g", "Zg===", "Zm9v\n", "é"]:
        with pytest.raises(ValueError):
            b64decode(bad)


@given(st.binary(max_size=100))
def test_base64_round_trip(data: bytes) -> None:
    encoded = b64encode(data)
    assert "=" not in encoded
    assert b64decode(encoded) == data
    assert b64decode(base64.b64encode(data).decode()) == data
    assert b64decode(base64.urlsafe_b64encode(data).decode()) == data


# ==========================================================================
# Canonical JSON
# ==========================================================================

# Every example from the spec appendix "Canonical JSON" -> "Examples".
SPEC_CANONICAL_EXAMPLES = [
    ("{}", "{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{\n    "a": "日本語"\n}', '{"a":"日本語"}'),
    ('{\n    "本": 2,\n    "日": 1\n}', '{"日":1,"本":2}'),
    ('{\n    "a": "\\u65E5"\n}', '{"a":"日"}'),
    ('{\n    "a": null\n}', '{"a":null}'),
]


@pytest.mark.parametrize(("source", "expected"), SPEC_CANONICAL_EXAMPLES)
def test_canonical_json_spec_examples(source: str, expected: str) -> None:
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


def test_canonical_json_spec_example_with_exponent() -> None:
    # Spec: {"a": -0, "b": 1e10} -> {"a":0,"b":10000000000}.  json.loads makes
    # 1e10 a float, which is only accepted with the explicit opt-in.
    value = json.loads('{\n    "a": -0,\n    "b": 1e10\n}')
    assert canonical_json(value, allow_integral_floats=True) == b'{"a":0,"b":10000000000}'
    assert canonical_json({"a": -0.0}, allow_integral_floats=True) == b'{"a":0}'
    with pytest.raises(ValueError):
        canonical_json(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1.5},
        {"a": 1.0},
        [float("nan")],
        {"a": 2**53},
        {"a": -(2**53)},
        {"a": [1, {"b": 10**20}]},
        {1: "non-string key"},
        {"a": "\ud800"},  # lone surrogate: not encodable as UTF-8
    ],
)
def test_canonical_json_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


def test_canonical_json_rejects_non_json_types() -> None:
    with pytest.raises(TypeError):
        canonical_json({"a": b"bytes"})
    with pytest.raises(ValueError):
        canonical_json({"a": 1.5}, allow_integral_floats=True)
    with pytest.raises(ValueError):
        canonical_json({"a": float("inf")}, allow_integral_floats=True)


def test_canonical_json_boundaries_and_escapes() -> None:
    assert canonical_json([2**53 - 1, -(2**53) + 1]) == b"[9007199254740991,-9007199254740991]"
    assert canonical_json([True, False, None]) == b"[true,false,null]"
    # grammar: short escapes for \b\t\n\f\r, lowercase \u00XX for other controls,
    # DEL and non-ASCII raw, " and \ escaped.
    assert canonical_json('\b\t\n\f\r\x01\x1f\x7f"\\é') == ('"\\b\\t\\n\\f\\r\\u0001\\u001f\x7f\\"\\\\é"'.encode())
    assert canonical_json({"b": 1, "a": 2, "B": 3, "é": 4, "𝄞": 5, "z": 6}) == (
        '{"B":3,"a":2,"b":1,"z":6,"é":4,"𝄞":5}'.encode()
    )


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=canonical.MIN_SAFE_INT, max_value=canonical.MAX_SAFE_INT)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)
no_space_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), max_size=10)
json_values_no_space = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=canonical.MIN_SAFE_INT, max_value=canonical.MAX_SAFE_INT)
    | no_space_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(no_space_text, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300)
@given(json_values)
def test_canonical_json_round_trips(value: Any) -> None:
    encoded = canonical_json(value)
    decoded = json.loads(encoded.decode("utf-8"))
    assert decoded == value
    assert canonical_json(decoded) == encoded  # idempotent
    assert encoded == json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


@settings(max_examples=300)
@given(json_values_no_space)
def test_canonical_json_never_emits_whitespace(value: Any) -> None:
    encoded = canonical_json(value)
    assert not any(ch in encoded for ch in b" \t\n\r")


@settings(max_examples=300)
@given(json_values)
def test_canonical_json_is_byte_for_byte_synapses(value: Any) -> None:
    # matrix-org's canonicaljson (Synapse's encoder) gives the same bytes for everything canonical JSON allows ...
    canonicaljson = pytest.importorskip("canonicaljson")
    assert canonical_json(value) == canonicaljson.encode_canonical_json(value)


def test_canonical_json_enforces_what_canonicaljson_does_not() -> None:
    # ... but it does not enforce the spec's number and key rules, which is why bot.crypto.canonical keeps its own
    canonicaljson = pytest.importorskip("canonicaljson")
    assert canonicaljson.encode_canonical_json({"a": 1.0}) == b'{"a":1.0}'  # Rust/Synapse verifiers want 1
    assert canonicaljson.encode_canonical_json({"a": 2**53}) == b'{"a":9007199254740992}'
    assert canonicaljson.encode_canonical_json({1: "x"}) == b'{"1":"x"}'
    for value in ({"a": 1.0}, {"a": 2**53}, {1: "x"}):
        with pytest.raises(ValueError):
            canonical_json(value)


# ==========================================================================
# Signing JSON
# ==========================================================================

# Spec appendix "Cryptographic Test Vectors".
SPEC_SEED = std_b64d("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
SPEC_SIG_EMPTY = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
SPEC_SIG_ONE_TWO = "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"


def test_sign_json_spec_vectors() -> None:
    signer = olm.PkSigning(SPEC_SEED)
    assert sign_json({}, "domain", "ed25519:1", signer.sign) == {
        "signatures": {"domain": {"ed25519:1": SPEC_SIG_EMPTY}}
    }
    signed = sign_json({"one": 1, "two": "Two"}, "domain", "ed25519:1", signer.sign)
    assert signed == {
        "one": 1,
        "signatures": {"domain": {"ed25519:1": SPEC_SIG_ONE_TWO}},
        "two": "Two",
    }
    assert verify_json(signed, "domain", "ed25519:1", signer.public_key)
    assert ref_ed25519_verify(signer.public_key, b'{"one":1,"two":"Two"}', SPEC_SIG_ONE_TWO)


def test_sign_verify_round_trip_and_tampering() -> None:
    signer = olm.PkSigning(olm.PkSigning.generate_seed())
    pub = signer.public_key
    original = {"user_id": "@a:x", "n": 3, "unsigned": {"age": 5}, "signatures": {"@o:x": {"k:1": "s"}}}
    signed = sign_json(original, "@a:x", "ed25519:DEV", signer.sign)
    assert original == {
        "user_id": "@a:x",
        "n": 3,
        "unsigned": {"age": 5},
        "signatures": {"@o:x": {"k:1": "s"}},
    }  # input untouched
    assert signed["unsigned"] == {"age": 5}
    assert signed["signatures"]["@o:x"] == {"k:1": "s"}  # existing signatures kept
    assert verify_json(signed, "@a:x", "ed25519:DEV", pub)
    assert ref_ed25519_verify(pub, canonical_json(signable(signed)), signed["signatures"]["@a:x"]["ed25519:DEV"])
    # padded public key is fine; unsigned/other signatures are not covered
    assert verify_json(signed, "@a:x", "ed25519:DEV", pad_b64(pub))
    assert verify_json({**signed, "unsigned": {"x": 1}}, "@a:x", "ed25519:DEV", pub)
    # tampering
    assert not verify_json({**signed, "n": 4}, "@a:x", "ed25519:DEV", pub)
    assert not verify_json({**signed, "extra": True}, "@a:x", "ed25519:DEV", pub)
    bad_sig = dict(signed, signatures={"@a:x": {"ed25519:DEV": SPEC_SIG_EMPTY}})
    assert not verify_json(bad_sig, "@a:x", "ed25519:DEV", pub)
    other = olm.PkSigning(olm.PkSigning.generate_seed()).public_key
    assert not verify_json(signed, "@a:x", "ed25519:DEV", other)
    # missing / malformed
    assert not verify_json(signed, "@b:x", "ed25519:DEV", pub)
    assert not verify_json(signed, "@a:x", "ed25519:OTHER", pub)
    assert not verify_json(signed, "@a:x", "curve25519:DEV", pub)
    assert not verify_json(signed, "@a:x", "ed25519:DEV", "not base64!")
    assert not verify_json(signed, "@a:x", "ed25519:DEV", b64encode(b"short"))
    assert not verify_json({**signed, "f": 1.5}, "@a:x", "ed25519:DEV", pub)
    for junk in (None, [], "x", {"signatures": []}, {"signatures": {"@a:x": "s"}}):
        assert not verify_json(junk, "@a:x", "ed25519:DEV", pub)  # type: ignore[arg-type]


def test_signatures_interoperate_with_signedjson() -> None:
    # Synapse's signedjson (PyNaCl keys) and ours (libolm signers) produce and accept the same signatures
    signedjson_sign = pytest.importorskip("signedjson.sign")
    signedjson_key = pytest.importorskip("signedjson.key")
    nacl_key = signedjson_key.decode_signing_key_base64("ed25519", "1", b64encode(SPEC_SEED))
    theirs = signedjson_sign.sign_json({"one": 1, "two": "Two"}, "domain", nacl_key)
    ours = sign_json({"one": 1, "two": "Two"}, "domain", "ed25519:1", olm.PkSigning(SPEC_SEED).sign)
    assert theirs == ours
    assert ours["signatures"]["domain"]["ed25519:1"] == SPEC_SIG_ONE_TWO
    verify_key = signedjson_key.get_verify_key(nacl_key)
    signedjson_sign.verify_signed_json(ours, "domain", verify_key)  # raises if it does not verify
    assert verify_json(theirs, "domain", "ed25519:1", signedjson_key.encode_verify_key_base64(verify_key))


def test_json_signer_and_sign_json_validation() -> None:
    signer = olm.PkSigning(SPEC_SEED)
    bound = JsonSigner("domain", "ed25519:1", signer.sign)
    assert bound({}) == {"signatures": {"domain": {"ed25519:1": SPEC_SIG_EMPTY}}}
    with pytest.raises(ValueError):
        sign_json({}, "", "ed25519:1", signer.sign)
    with pytest.raises(ValueError):
        sign_json({}, "domain", "nocolon", signer.sign)
    with pytest.raises(ValueError):
        sign_json({"signatures": []}, "domain", "ed25519:1", signer.sign)
    with pytest.raises(ValueError):
        sign_json({"f": 0.5}, "domain", "ed25519:1", signer.sign)


# ==========================================================================
# Recovery keys
# ==========================================================================

# matrix-rust-sdk backups/keys/decryption.rs (TEST_KEY is RFC 7748's Alice key).
RUST_TEST_KEY = bytes.fromhex("77076D0A7318A57D3C16C17251B26645DF4C2F87EBC0992AB177FBA51DB92C2A")
RUST_TEST_RECOVERY = "EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d"
# matrix-rust-sdk secret_storage.rs base58_parsing
RUST_DECODED_KEY = bytes(
    [
        159, 189, 70, 187, 52, 81, 113, 198, 246, 2, 44, 154, 37, 213, 104, 27,
        165, 78, 236, 106, 108, 73, 83, 243, 173, 192, 185, 110, 157, 145, 173, 163,
    ]
)  # fmt: skip


def test_recovery_key_known_vectors() -> None:
    assert encode_recovery_key(RUST_TEST_KEY) == RUST_TEST_RECOVERY
    assert decode_recovery_key(RUST_TEST_RECOVERY) == RUST_TEST_KEY
    assert decode_recovery_key(RUST_TEST_RECOVERY.replace(" ", "")) == RUST_TEST_KEY
    assert decode_recovery_key("\t" + RUST_TEST_RECOVERY.replace(" ", "\n  ") + " ") == RUST_TEST_KEY
    spaced = "EsT           pRvZTnjck8    YrhRAtw XLS84Nr2r9S9LGAWDaExVAPBvLRK   "
    assert decode_recovery_key(spaced) == RUST_DECODED_KEY


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4e", "parity"),
        ("EsTpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRk", "parity"),
        ("AATpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRk", "prefix"),
        ("AATpRvZTnjck8YrhRAtwXLS84Nr2r9S9", "length"),
        ("EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4dd", "length"),
        ("AATpRvZTnjck8YrhRAtwXLS84Nr0OIl", "character '0'"),
        ("EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4l", "character 'l'"),
        ("   ", "empty"),
    ],
)
def test_recovery_key_errors(text: str, match: str) -> None:
    with pytest.raises(RecoveryKeyError, match=match):
        decode_recovery_key(text)


def test_recovery_key_other_errors() -> None:
    with pytest.raises(RecoveryKeyError):
        encode_recovery_key(b"\x00" * 31)
    with pytest.raises(RecoveryKeyError):
        decode_recovery_key(None)  # type: ignore[arg-type]
    assert issubclass(RecoveryKeyError, ValueError)
    key, text = recovery_key.generate_recovery_key()
    assert len(key) == 32 and decode_recovery_key(text) == key


@given(st.binary(min_size=32, max_size=32))
def test_recovery_key_round_trip(key: bytes) -> None:
    text = encode_recovery_key(key)
    groups = text.split(" ")
    assert all(len(g) == 4 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 4
    assert set(text.replace(" ", "")) <= set(recovery_key.BASE58_ALPHABET)
    assert decode_recovery_key(text) == key


@given(st.binary(max_size=60))
def test_base58_round_trip(data: bytes) -> None:
    assert recovery_key.base58_decode(recovery_key.base58_encode(data)) == data


def test_base58_known_values() -> None:
    # Bitcoin base58 conventions: leading zero bytes become '1'.
    assert recovery_key.base58_encode(b"") == ""
    assert recovery_key.base58_encode(b"\x00\x00\x01") == "112"
    assert recovery_key.base58_encode(b"\x39") == "z"
    assert recovery_key.base58_encode(b"\x3a") == "21"


def test_key_from_passphrase_matches_independent_pbkdf2() -> None:
    for bits in (256, 512, 128):
        ours = recovery_key.key_from_passphrase("pässwörd", "saltySALT", 1000, bits)
        ref = PBKDF2HMAC(algorithm=hashes.SHA512(), length=bits // 8, salt=b"saltySALT", iterations=1000).derive(
            "pässwörd".encode()
        )
        assert ours == ref
    for bad in ({"iterations": 0}, {"bits": 7}, {"bits": 0}, {"iterations": True}):
        kwargs: dict[str, Any] = {"iterations": 10, "bits": 256, **bad}
        with pytest.raises(ValueError):
            recovery_key.key_from_passphrase("p", "s", **kwargs)


# ==========================================================================
# Secret storage
# ==========================================================================


def test_derive_keys_matches_independent_hkdf() -> None:
    key = bytes(range(32))
    aes_key, hmac_key = ssss.derive_keys(key, "m.cross_signing.master")
    expected = ref_hkdf(key, b"\x00" * 32, b"m.cross_signing.master", 64)
    assert (aes_key, hmac_key) == (expected[:32], expected[32:])
    # js-sdk's 8-byte zero salt and libolm's empty salt are the same thing.
    assert ref_hkdf(key, b"\x00" * 8, b"m.cross_signing.master", 64) == expected
    assert ref_hkdf(key, None, b"m.cross_signing.master", 64) == expected


def test_encrypt_secret_matches_independent_implementation() -> None:
    key = bytes(range(100, 132))
    name = "m.megolm_backup.v1"
    plaintext = "secret ✓ value"
    enc = ssss.encrypt_secret(key, name, plaintext)
    assert set(enc) == {"iv", "ciphertext", "mac"}
    # default output is padded, like matrix-js-sdk
    assert all(len(v) % 4 == 0 for v in enc.values())
    okm = ref_hkdf(key, b"\x00" * 32, name.encode(), 64)
    iv, ciphertext, mac = (base64.b64decode(enc[f]) for f in ("iv", "ciphertext", "mac"))
    assert len(iv) == 16 and iv[8] & 0x80 == 0
    assert mac == ref_hmac(okm[32:], ciphertext)
    assert ref_aes_ctr(okm[:32], iv, ciphertext).decode() == plaintext
    # and the other way: a payload made independently decrypts
    iv2 = bytes(16)
    ct2 = ref_aes_ctr(okm[:32], iv2, b"made elsewhere")
    foreign = {"iv": b64encode(iv2), "ciphertext": b64encode(ct2), "mac": b64encode(ref_hmac(okm[32:], ct2))}
    assert ssss.decrypt_secret(key, name, foreign) == "made elsewhere"


def test_encrypt_secret_iv_bit_63_always_cleared() -> None:
    for _ in range(64):
        iv = b64decode(ssss.encrypt_secret(b"k" * 32, "n", "x")["iv"])
        assert iv[8] & 0x80 == 0


def test_secret_round_trip_and_failures() -> None:
    key = bytes(32)
    for padded in (True, False):
        enc = ssss.encrypt_secret(key, "m.cross_signing.master", "hello", padded=padded)
        if padded:  # 16-byte iv, 5-byte ciphertext and 32-byte mac all need padding
            assert all(len(v) % 4 == 0 and v.endswith("=") for v in enc.values())
        else:
            assert not any("=" in v for v in enc.values())
        assert ssss.decrypt_secret(key, "m.cross_signing.master", enc) == "hello"
        # padding on/off in transit makes no difference
        flipped = {k: (v.rstrip("=") if padded else pad_b64(v)) for k, v in enc.items()}
        assert ssss.decrypt_secret(key, "m.cross_signing.master", flipped) == "hello"
    enc = ssss.encrypt_secret(key, "name", "hello")
    with pytest.raises(SecretStorageError, match="bad MAC"):
        ssss.decrypt_secret(b"\x01" * 32, "name", enc)
    with pytest.raises(SecretStorageError, match="bad MAC"):
        ssss.decrypt_secret(key, "other name", enc)
    ct = bytearray(b64decode(enc["ciphertext"]))
    ct[0] ^= 1
    with pytest.raises(SecretStorageError, match="bad MAC"):
        ssss.decrypt_secret(key, "name", {**enc, "ciphertext": b64encode(bytes(ct))})
    mac = bytearray(b64decode(enc["mac"]))
    mac[-1] ^= 1
    with pytest.raises(SecretStorageError, match="bad MAC"):
        ssss.decrypt_secret(key, "name", {**enc, "mac": b64encode(bytes(mac))})
    with pytest.raises(SecretStorageError, match="bad MAC"):
        ssss.decrypt_secret(key, "name", {**enc, "mac": b64encode(bytes(mac[:8]))})
    for broken in ({**enc, "iv": "AAAA"}, {**enc, "iv": 5}, {"iv": enc["iv"]}, {**enc, "mac": "!!"}, []):
        with pytest.raises(SecretStorageError):
            ssss.decrypt_secret(key, "name", broken)  # type: ignore[arg-type]
    with pytest.raises(SecretStorageError):
        ssss.encrypt_secret(key, "name", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(SecretStorageError):
        ssss.encrypt_secret(key, "name", "x", iv=b"short")


def test_decrypt_secret_rejects_non_utf8_plaintext() -> None:
    key = bytes(32)
    okm = ref_hkdf(key, b"\x00" * 32, b"n", 64)
    ct = ref_aes_ctr(okm[:32], bytes(16), b"\xff\xfe")
    payload = {"iv": b64encode(bytes(16)), "ciphertext": b64encode(ct), "mac": b64encode(ref_hmac(okm[32:], ct))}
    with pytest.raises(SecretStorageError, match="UTF-8"):
        ssss.decrypt_secret(key, "n", payload)


@given(st.binary(min_size=1, max_size=64), st.text(max_size=20), st.text(max_size=200))
@settings(max_examples=100)
def test_secret_round_trip_property(key: bytes, name: str, plaintext: str) -> None:
    assert ssss.decrypt_secret(key, name, ssss.encrypt_secret(key, name, plaintext)) == plaintext


def test_key_description_and_check() -> None:
    key = bytes(range(32))
    desc = ssss.make_key_description(key, name="Recovery key")
    assert desc["algorithm"] == "m.secret_storage.v1.aes-hmac-sha2"
    assert desc["name"] == "Recovery key"
    assert "passphrase" not in desc
    # independent computation of the key check: 32 zero bytes, secret name ""
    okm = ref_hkdf(key, b"\x00" * 32, b"", 64)
    iv = base64.b64decode(desc["iv"])
    assert base64.b64decode(desc["mac"]) == ref_hmac(okm[32:], ref_aes_ctr(okm[:32], iv, bytes(32)))
    assert ssss.check_key(key, desc)
    assert ssss.check_key(key, {k: v.rstrip("=") if isinstance(v, str) else v for k, v in desc.items()})
    assert not ssss.check_key(bytes(32), desc)
    assert not ssss.check_key(key, {**desc, "algorithm": "m.secret_storage.v2"})
    assert not ssss.check_key(key, {**desc, "iv": ssss.make_key_description(key)["iv"]})
    assert not ssss.check_key(key, {k: v for k, v in desc.items() if k != "iv"})
    assert not ssss.check_key(key, {**desc, "mac": "AAAA"})
    assert not ssss.check_key(key, {**desc, "mac": 7})
    assert not ssss.check_key(b"", desc)
    assert not ssss.check_key(key, "junk")  # type: ignore[arg-type]
    # spec: without a MAC, "clients must assume that the key is valid"
    assert ssss.check_key(bytes(32), {"algorithm": "m.secret_storage.v1.aes-hmac-sha2"})
    with_pass = ssss.make_key_description(key, passphrase=ssss.passphrase_info("salt", 10))
    assert with_pass["passphrase"] == {"algorithm": "m.pbkdf2", "salt": "salt", "iterations": 10, "bits": 256}
    with pytest.raises(SecretStorageError):
        ssss.make_key_description(key, passphrase={"algorithm": "m.scrypt"})
    unpadded = ssss.make_key_description(key, padded=False)
    assert "=" not in unpadded["iv"] + unpadded["mac"] and ssss.check_key(key, unpadded)


def test_secret_storage_rust_sdk_vectors() -> None:
    # secret_storage.rs from_account_data_and_base58 (padded, as js-sdk writes it)
    key = decode_recovery_key("EsTj 3yST y93F SLpB jJsz eAXc 2XzA ygD3 w69H fGaN TKBj jXEd")
    desc = {
        "algorithm": "m.secret_storage.v1.aes-hmac-sha2",
        "iv": "xv5b6/p3ExEw++wTyfSHEg==",
        "mac": "ujBBbXahnTAMkmPUX2/0+VTfUh63pGyVRuBcDMgmJC8=",
    }
    assert ssss.check_key(key, desc)
    assert not ssss.check_key(RUST_DECODED_KEY, desc)
    # secret_storage.rs from_account_data_and_passphrase (unpadded, as rust writes it)
    pass_desc = {
        "algorithm": "m.secret_storage.v1.aes-hmac-sha2",
        "iv": "gH2iNpiETFhApvW6/FFEJQ",
        "mac": "9Lw12m5SKDipNghdQXKjgpfdj1/K7HFI2brO+UWAGoM",
        "passphrase": {
            "algorithm": "m.pbkdf2",
            "salt": "IuLnH7S85YtZmkkBJKwNUKxWF42g9O1H",
            "iterations": 10,
        },
    }
    assert ssss.check_key(ssss.key_from_description("It's a secret to everybody", pass_desc), pass_desc)
    assert not ssss.check_key(ssss.key_from_description("It's a secret to nobody", pass_desc), pass_desc)
    with pytest.raises(SecretStorageError):
        ssss.key_from_description("x", desc)  # no passphrase block


def test_key_ids_secret_values_and_account_data() -> None:
    ids = {ssss.new_key_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) == 32 and set(i) <= set(string.ascii_letters + string.digits) for i in ids)
    assert ssss.key_type("abc") == "m.secret_storage.key.abc"
    assert ssss.DEFAULT_KEY_TYPE == "m.secret_storage.default_key"
    assert (ssss.MASTER, ssss.SELF_SIGNING, ssss.USER_SIGNING, ssss.BACKUP) == (
        "m.cross_signing.master",
        "m.cross_signing.self_signing",
        "m.cross_signing.user_signing",
        "m.megolm_backup.v1",
    )
    raw = bytes(range(32))
    encoded = ssss.encode_secret_key(raw)
    assert encoded == base64.b64encode(raw).decode().rstrip("=")
    assert ssss.decode_secret_key(encoded) == raw
    assert ssss.decode_secret_key(base64.b64encode(raw).decode()) == raw
    assert ssss.decode_secret_key(",".join(str(b) for b in raw)) == raw  # js-sdk fixBackupKey
    for bad in ("AAAA", "1,2,300", "!!", ",".join("1" * 31)):
        with pytest.raises(SecretStorageError):
            ssss.decode_secret_key(bad)
    key = bytes(32)
    content = ssss.secret_content("KEYID", key, ssss.BACKUP, encoded)
    assert set(content) == {"encrypted"} and set(content["encrypted"]) == {"KEYID"}
    assert ssss.read_secret(content, "KEYID", key, ssss.BACKUP) == encoded
    with pytest.raises(SecretStorageError):
        ssss.read_secret(content, "OTHER", key, ssss.BACKUP)
    with pytest.raises(SecretStorageError):
        ssss.read_secret(content, "KEYID", key, ssss.MASTER)


# ==========================================================================
# Cross-signing
# ==========================================================================

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def make_device(user_id: str, device_id: str) -> tuple[olm.Account, dict[str, Any]]:
    """A real device-keys object, self-signed by a libolm account."""
    account = olm.Account()
    ident = account.identity_keys
    unsigned_keys = {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device_id}": ident["curve25519"], f"ed25519:{device_id}": ident["ed25519"]},
    }
    signed = sign_json(unsigned_keys, user_id, f"ed25519:{device_id}", account.sign)
    signed["unsigned"] = {"device_display_name": "test"}
    return account, signed


def test_seeds_secrets_round_trip() -> None:
    seeds = CrossSigningSeeds.generate()
    values = seeds.to_secrets()
    assert set(values) == {ssss.MASTER, ssss.SELF_SIGNING, ssss.USER_SIGNING}
    assert std_b64d(values[ssss.MASTER]) == seeds.master and "=" not in values[ssss.MASTER]
    assert CrossSigningSeeds.from_secrets(values) == seeds
    padded = {k: pad_b64(v) for k, v in values.items()}
    assert CrossSigningSeeds.from_secrets(padded) == seeds
    assert "redacted" in repr(seeds) and values[ssss.MASTER] not in repr(seeds)
    with pytest.raises(ValueError):
        CrossSigningSeeds(b"short", seeds.self_signing, seeds.user_signing)
    with pytest.raises(KeyError):
        CrossSigningSeeds.from_secrets({ssss.MASTER: values[ssss.MASTER]})
    # round trip through secret storage proper
    ssss_key = bytes(range(32))
    stored = {name: ssss.secret_content("K", ssss_key, name, v) for name, v in values.items()}
    read = {name: ssss.read_secret(c, "K", ssss_key, name) for name, c in stored.items()}
    assert CrossSigningSeeds.from_secrets(read) == seeds


def test_device_signing_upload_body() -> None:
    seeds = CrossSigningSeeds.generate()
    keys = CrossSigningKeys.from_seeds(ALICE, seeds)
    body = keys.device_signing_upload_body()
    assert set(body) == {"master_key", "self_signing_key", "user_signing_key"}
    expected_pubs = {
        "master_key": (olm.PkSigning(seeds.master).public_key, "master"),
        "self_signing_key": (olm.PkSigning(seeds.self_signing).public_key, "self_signing"),
        "user_signing_key": (olm.PkSigning(seeds.user_signing).public_key, "user_signing"),
    }
    for field, (pub, usage) in expected_pubs.items():
        obj = body[field]
        assert obj["user_id"] == ALICE
        assert obj["usage"] == [usage]
        assert obj["keys"] == {f"ed25519:{pub}": pub}
        assert len(std_b64d(pub)) == 32
    assert "signatures" not in body["master_key"]
    master_pub = keys.master_public
    for field in ("self_signing_key", "user_signing_key"):
        obj = body[field]
        assert set(obj["signatures"]) == {ALICE}
        assert set(obj["signatures"][ALICE]) == {f"ed25519:{master_pub}"}
        assert verify_json(obj, ALICE, f"ed25519:{master_pub}", master_pub)
        sig = obj["signatures"][ALICE][f"ed25519:{master_pub}"]
        assert ref_ed25519_verify(master_pub, canonical_json(signable(obj)), sig)
    assert cross_signing.verify_self_signing_key(body["master_key"], body["self_signing_key"], ALICE)
    assert cross_signing.verify_user_signing_key(body["master_key"], body["user_signing_key"], ALICE)
    assert cross_signing.master_public(body["master_key"]) == master_pub
    assert json.loads(json.dumps(body)) == body  # plain JSON
    # same seeds -> same keys
    assert CrossSigningKeys(ALICE, seeds).device_signing_upload_body() == body


def test_chain_verification_detects_tampering() -> None:
    keys = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    other = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    master, ssk = keys.master_key(), keys.self_signing_key()
    verify = cross_signing.verify_self_signing_key
    assert verify(master, ssk, ALICE)
    assert not verify(master, ssk, BOB)
    assert not verify(other.master_key(), ssk, ALICE)  # signed by a different master
    assert not verify(master, other.self_signing_key(), ALICE)
    assert not verify(master, keys.user_signing_key(), ALICE)  # wrong usage
    assert not verify(master, {**ssk, "usage": ["self_signing", "extra"], "x": 1}, ALICE)
    forged = {**ssk, "keys": other.self_signing_key()["keys"]}
    assert not verify(master, forged, ALICE)
    two_keys = {**ssk, "keys": {**ssk["keys"], **other.self_signing_key()["keys"]}}
    assert not verify(master, two_keys, ALICE)
    mismatched_id = {**ssk, "keys": {f"ed25519:{keys.master_public}": keys.self_signing_public}}
    assert not verify(master, mismatched_id, ALICE)
    assert not verify({**master, "usage": ["self_signing"]}, ssk, ALICE)
    # user-signing key likewise
    assert not cross_signing.verify_user_signing_key(master, ssk, ALICE)
    assert not cross_signing.verify_user_signing_key(other.master_key(), keys.user_signing_key(), ALICE)


def test_device_signatures() -> None:
    keys = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    _, device = make_device(ALICE, "DEVICEA")
    ssk = keys.self_signing_key()
    assert cross_signing.verify_device_self_signed(device, ALICE)
    assert not cross_signing.verify_device_signed(device, ssk, ALICE)  # not yet
    signed = keys.sign_device(device)
    assert "unsigned" not in signed
    assert signed["signatures"] == {
        ALICE: {keys.self_signing_key_id: signed["signatures"][ALICE][keys.self_signing_key_id]}
    }
    assert signable(signed) == signable(device)
    assert cross_signing.verify_device_signed(signed, ssk, ALICE)
    # the server merges signatures; both must still verify
    merged = dict(device)
    merged["signatures"] = {ALICE: {**device["signatures"][ALICE], **signed["signatures"][ALICE]}}
    assert cross_signing.verify_device_signed(merged, ssk, ALICE)
    assert cross_signing.verify_device_self_signed(merged, ALICE)
    # tampering
    tampered = {**merged, "keys": {**merged["keys"], "curve25519:DEVICEA": b64encode(bytes(32))}}
    assert not cross_signing.verify_device_signed(tampered, ssk, ALICE)
    assert not cross_signing.verify_device_self_signed(tampered, ALICE)
    assert not cross_signing.verify_device_signed(merged, ssk, BOB)
    other_ssk = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate()).self_signing_key()
    assert not cross_signing.verify_device_signed(merged, other_ssk, ALICE)
    assert not cross_signing.verify_device_signed(merged, keys.user_signing_key(), ALICE)
    # a device whose ID collides with the SSK public key is refused
    pub = keys.self_signing_public
    collide = {**merged, "device_id": pub, "keys": {f"ed25519:{pub}": pub}}
    assert not cross_signing.verify_device_signed(collide, ssk, ALICE)
    # signing someone else's device is refused
    _, bob_device = make_device(BOB, "DEVICEB")
    with pytest.raises(ValueError):
        keys.sign_device(bob_device)
    with pytest.raises(ValueError):
        keys.sign_device({"user_id": ALICE})


def test_master_key_signed_by_device() -> None:
    keys = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    account, device = make_device(ALICE, "DEVICEA")
    signed_master = keys.master_key_signed_by_device("DEVICEA", account.sign)
    assert signable(signed_master) == keys.master_key()
    assert set(signed_master["signatures"][ALICE]) == {"ed25519:DEVICEA"}
    assert verify_json(signed_master, ALICE, "ed25519:DEVICEA", account.identity_keys["ed25519"])
    assert cross_signing.verify_master_signed_by_device(signed_master, device, ALICE)
    _, other_device = make_device(ALICE, "DEVICEA")  # same ID, different key
    assert not cross_signing.verify_master_signed_by_device(signed_master, other_device, ALICE)
    assert not cross_signing.verify_master_signed_by_device(keys.master_key(), device, ALICE)
    with pytest.raises(ValueError):
        keys.master_key_signed_by_device("", account.sign)


def test_sign_other_user() -> None:
    alice = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    bob = CrossSigningKeys.from_seeds(BOB, CrossSigningSeeds.generate())
    _, bob_device = make_device(BOB, "BOBDEV")
    bob_master_from_server = bob.master_key_signed_by_device("BOBDEV", lambda m: "x" * 86)
    bob_master_from_server["unsigned"] = {"whatever": 1}
    signed = alice.sign_user(bob_master_from_server)
    assert "unsigned" not in signed
    assert signed["signatures"] == {
        ALICE: {alice.user_signing_key_id: signed["signatures"][ALICE][alice.user_signing_key_id]}
    }
    assert signable(signed) == bob.master_key()
    usk = alice.user_signing_key()
    assert cross_signing.verify_user_signed(signed, usk, ALICE)
    assert not cross_signing.verify_user_signed(bob.master_key(), usk, ALICE)
    assert not cross_signing.verify_user_signed({**signed, "user_id": "@carol:x"}, usk, ALICE)
    assert not cross_signing.verify_user_signed(signed, alice.self_signing_key(), ALICE)
    assert not cross_signing.verify_user_signed(signed, usk, BOB)
    with pytest.raises(ValueError):
        alice.sign_user(alice.master_key())  # our own master
    with pytest.raises(ValueError):
        alice.sign_user(bob.self_signing_key())  # not a master key
    with pytest.raises(ValueError):
        alice.sign_user({"user_id": BOB})
    # full chain Alice -> Bob's device
    bob_ssk = bob.self_signing_key()
    bob_device_signed = bob.sign_device(bob_device)
    assert cross_signing.verify_user_signing_key(alice.master_key(), usk, ALICE)
    assert cross_signing.verify_user_signed(signed, usk, ALICE)
    assert cross_signing.verify_self_signing_key(signed, bob_ssk, BOB)
    assert cross_signing.verify_device_signed(bob_device_signed, bob_ssk, BOB)


def test_signatures_upload_body() -> None:
    alice = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    bob = CrossSigningKeys.from_seeds(BOB, CrossSigningSeeds.generate())
    account, device = make_device(ALICE, "DEVICEA")
    body = cross_signing.signatures_upload_body(
        [
            alice.sign_device(device),
            alice.master_key_signed_by_device("DEVICEA", account.sign),
            alice.sign_user(bob.master_key()),
        ]
    )
    assert set(body) == {ALICE, BOB}
    assert set(body[ALICE]) == {"DEVICEA", alice.master_public}
    assert set(body[BOB]) == {bob.master_public}
    with pytest.raises(ValueError):
        cross_signing.signatures_upload_body([{"user_id": ALICE}])


def test_master_public() -> None:
    keys = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    master = keys.master_key()
    assert cross_signing.master_public(master) == keys.master_public
    assert cross_signing.master_public(master, ALICE) == keys.master_public
    assert cross_signing.master_public(master, BOB) == ""
    assert cross_signing.master_public(keys.self_signing_key()) == ""
    assert cross_signing.cross_signing_public(keys.self_signing_key(), ALICE, "self_signing")
    assert cross_signing.master_public({**master, "keys": {"ed25519:abc": "abc"}}) == ""
    assert (
        cross_signing.master_public({**master, "keys": {"curve25519:" + keys.master_public: keys.master_public}}) == ""
    )
    with pytest.raises(ValueError):
        CrossSigningKeys("alice", CrossSigningSeeds.generate())


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200)
@given(junk, junk, junk)
def test_verification_helpers_never_raise(a: Any, b: Any, c: Any) -> None:
    for fn in (
        cross_signing.verify_self_signing_key,
        cross_signing.verify_user_signing_key,
        cross_signing.verify_device_signed,
        cross_signing.verify_master_signed_by_device,
        cross_signing.verify_user_signed,
    ):
        assert fn(a, b, ALICE) is False
    assert cross_signing.verify_device_self_signed(a, ALICE) is False
    assert cross_signing.master_public(a) == ""
    assert verify_json(a, ALICE, "ed25519:X", "AAAA") is False
    assert ssss.check_key(b"k" * 32, a) in (True, False)


@settings(max_examples=50)
@given(junk)
def test_verification_with_valid_keys_and_junk_never_raises(value: Any) -> None:
    keys = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32))
    master, ssk = keys.master_key(), keys.self_signing_key()
    assert cross_signing.verify_self_signing_key(master, value, ALICE) is False
    assert cross_signing.verify_self_signing_key(value, ssk, ALICE) is False
    assert cross_signing.verify_device_signed(value, ssk, ALICE) is False


# ==========================================================================
# Key backup
# ==========================================================================

SESSION_EXPORT = {
    # shape of matrix-rust-sdk's room_key() test fixture / the key-export format
    "algorithm": "m.megolm.v1.aes-sha2",
    "sender_key": "DeHIg4gwhClxzFYcmNntPNF9YtsdZbmMy8+3kzCMXHA",
    "session_id": "gM8i47Xhu0q52xLfgUXzanCMpLinoyVyH7R58cBuVBU",
    "room_id": "!DovneieKSTkdHKpIXy:morpheus.localhost",
    "session_key": "AQAAAABvWMNZjKFtebYIePKieQguozuoLgzeY6wKcyJjLJcJtQgy1dPqTBD12U+XrYLrRHn",
    "sender_claimed_keys": {"ed25519": "aj40p+aw64yPIdsxoog8jhPu9i7l7NcFRecuOQblE3Y"},
    "forwarding_curve25519_key_chain": [],
}

# matrix-rust-sdk backups/keys/decryption.rs test_decrypt_key: a real backup.
RUST_BACKUP_KEY = "Ha9cklU/9NqFo9WKdVfGzmqUL/9wlkdxfEitbSIPVXw"
RUST_BACKUP_SESSION_DATA = {
    "ephemeral": "HlLi76oV6wxHz3PCqE/bxJi6yF1HnYz5Dq3T+d/KpRw",
    "ciphertext": (
        "MuM8E3Yc6TSAvhVGb77rQ++jE6p9dRepx63/3YPD2wACKAppkZHeFrnTH6wJ/HSyrmzo"
        "7HfwqVl6tKNpfooSTHqUf6x1LHz+h4B/Id5ITO1WYt16AaI40LOnZqTkJZCfSPuE2oxa"
        "lwEHnCS3biWybutcnrBFPR3LMtaeHvvkb+k3ny9l5ZpsU9G7vCm3XoeYkWfLekWXvDhb"
        "qWrylXD0+CNUuaQJ/S527TzLd4XKctqVjjO/cCH7q+9utt9WJAfK8LGaWT/mZ3AeWjf5"
        "kiqOpKKf5Cn4n5SSil5p/pvGYmjnURvZSEeQIzHgvunIBEPtzK/MYEPOXe/P5achNGlC"
        "x+5N19Ftyp9TFaTFlTWCTi0mpD7ePfCNISrwpozAz9HZc0OhA8+1aSc7rhYFIeAYXFU3"
        "26NuFIFHI5pvpSxjzPQlOA+mavIKmiRAtjlLw11IVKTxgrdT4N8lXeMr4ndCSmvIkAzF"
        "Mo1uZA4fzjiAdQJE4/2WeXFNNpvdfoYmX8Zl9CAYjpSO5HvpwkAbk4/iLEH3hDfCVUwD"
        "fMh05PdGLnxeRpiEFWSMSsJNp+OWAA+5JsF41BoRGrxoXXT+VKqlUDONd+O296Psu8Q+"
        "d8/S618"
    ),
    "mac": "GtMrurhDTwo",
}


def test_backup_key_public_key_and_secrets() -> None:
    key = BackupKey.generate()
    ref_pub = (
        X25519PrivateKey.from_private_bytes(key.private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert key.public_key == b64encode(ref_pub)
    assert BackupKey.from_secret(key.to_secret()).public_key == key.public_key
    assert BackupKey.from_secret(pad_b64(key.to_secret())).public_key == key.public_key
    assert BackupKey.from_recovery_key(key.to_recovery_key()).private_key == key.private_key
    assert BackupKey.from_private(key.private_key).public_key == key.public_key
    assert key.public_key in repr(key) and key.to_secret() not in repr(key)
    with pytest.raises(ValueError):
        BackupKey.from_private(b"\x00" * 31)


def test_backup_round_trip_and_independent_decryption() -> None:
    key = BackupKey.generate()
    data = backup.backup_session_data(SESSION_EXPORT)
    enc = key.encrypt_session(data)
    assert set(enc) == {"ephemeral", "ciphertext", "mac"}
    assert all("=" not in v for v in enc.values())  # unpadded base64
    assert len(std_b64d(enc["ephemeral"])) == 32 and len(std_b64d(enc["mac"])) == 8
    assert key.decrypt_session(enc) == data
    plaintext, mac_over_empty, mac_over_ciphertext = ref_backup_decrypt(key.private_key, enc)
    assert json.loads(plaintext) == data
    # libolm quirk, now in the spec: MAC = HMAC-SHA-256("")[:8], not over the ciphertext
    assert std_b64d(enc["mac"]) == mac_over_empty
    assert std_b64d(enc["mac"]) != mac_over_ciphertext
    # and data encrypted independently per spec decrypts with our code
    foreign = ref_backup_encrypt(key.public_key, json.dumps(data).encode())
    assert key.decrypt_session(foreign) == data
    padded = {k: pad_b64(v) for k, v in foreign.items()}
    assert key.decrypt_session(padded) == data


def test_backup_decrypts_rust_sdk_vector() -> None:
    key = BackupKey.from_secret(RUST_BACKUP_KEY)
    result = key.decrypt_session(RUST_BACKUP_SESSION_DATA)
    assert result["algorithm"] == "m.megolm.v1.aes-sha2"
    assert set(result) >= {
        "algorithm",
        "sender_key",
        "session_key",
        "sender_claimed_keys",
        "forwarding_curve25519_key_chain",
    }
    plaintext, mac, _ = ref_backup_decrypt(key.private_key, RUST_BACKUP_SESSION_DATA)
    assert json.loads(plaintext) == result
    assert mac == std_b64d(RUST_BACKUP_SESSION_DATA["mac"])


def test_backup_decrypt_failures() -> None:
    key = BackupKey.generate()
    enc = key.encrypt_session({"a": "b"})
    with pytest.raises(BackupError):
        BackupKey.generate().decrypt_session(enc)
    bad_mac = bytearray(std_b64d(enc["mac"]))
    bad_mac[0] ^= 1
    with pytest.raises(BackupError):
        key.decrypt_session({**enc, "mac": b64encode(bytes(bad_mac))})
    for broken in (
        {**enc, "mac": b64encode(bytes(7))},
        {**enc, "ephemeral": b64encode(bytes(31))},
        {**enc, "ciphertext": b64encode(bytes(15))},
        {**enc, "ciphertext": ""},
        {**enc, "ciphertext": "@@"},
        {k: v for k, v in enc.items() if k != "mac"},
        {**enc, "mac": 5},
        "junk",
    ):
        with pytest.raises(BackupError):
            key.decrypt_session(broken)  # type: ignore[arg-type]
    for plaintext in (b"not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(BackupError):
            key.decrypt_session(ref_backup_encrypt(key.public_key, plaintext))


@settings(max_examples=30)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_backup_round_trip_property(data: dict[str, Any]) -> None:
    key = BackupKey(b"\x07" * 32)
    assert key.decrypt_session(key.encrypt_session(data)) == data


def test_backup_auth_data_signatures() -> None:
    cs = CrossSigningKeys.from_seeds(ALICE, CrossSigningSeeds.generate())
    account, _ = make_device(ALICE, "DEVICEA")
    device_signer = JsonSigner(ALICE, "ed25519:DEVICEA", account.sign)
    key = BackupKey.generate()
    auth = key.auth_data(device_signer, cs.master_signer())
    assert auth["public_key"] == key.public_key
    assert set(auth["signatures"][ALICE]) == {"ed25519:DEVICEA", cs.master_key_id}
    assert backup.verify_auth_data(auth, ALICE, "ed25519:DEVICEA", account.identity_keys["ed25519"])
    assert backup.verify_auth_data(auth, ALICE, cs.master_key_id, cs.master_public)
    assert not backup.verify_auth_data(
        {**auth, "public_key": BackupKey.generate().public_key}, ALICE, cs.master_key_id, cs.master_public
    )
    assert key.auth_data() == {"public_key": key.public_key}
    body = key.version_body(cs.master_signer())
    assert body["algorithm"] == "m.megolm_backup.v1.curve25519-aes-sha2"
    assert key.matches(body)
    assert key.matches({**body, "version": "1", "count": 0, "etag": "x"})
    assert not BackupKey.generate().matches(body)
    assert not key.matches({**body, "algorithm": "m.megolm_backup.v2"})
    assert not key.matches({"junk": 1})


def test_backup_request_bodies() -> None:
    data = backup.backup_session_data(SESSION_EXPORT)
    assert data == {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": SESSION_EXPORT["sender_key"],
        "session_key": SESSION_EXPORT["session_key"],
        "sender_claimed_keys": SESSION_EXPORT["sender_claimed_keys"],
        "forwarding_curve25519_key_chain": [],
    }
    minimal = backup.backup_session_data(
        {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "s", "session_key": "k", "shared_history": True}
    )
    assert minimal["sender_claimed_keys"] == {} and minimal["forwarding_curve25519_key_chain"] == []
    assert minimal["shared_history"] is True
    for bad in (
        {**SESSION_EXPORT, "algorithm": "m.olm.v1.curve25519-aes-sha2"},
        {k: v for k, v in SESSION_EXPORT.items() if k != "session_key"},
        {**SESSION_EXPORT, "forwarding_curve25519_key_chain": "x"},
        {**SESSION_EXPORT, "sender_claimed_keys": {"ed25519": 5}},
    ):
        with pytest.raises(ValueError):
            backup.backup_session_data(bad)
    key = BackupKey.generate()
    enc = key.encrypt_session(data)
    body = backup.key_backup_body("!room:x", "SESSION", 3, 1, True, enc)
    assert body == {
        "rooms": {
            "!room:x": {
                "sessions": {
                    "SESSION": {
                        "first_message_index": 3,
                        "forwarded_count": 1,
                        "is_verified": True,
                        "session_data": enc,
                    }
                }
            }
        }
    }
    for args in (
        ("", "S", 0, 0, False, enc),
        ("!r:x", "S", -1, 0, False, enc),
        ("!r:x", "S", 0, True, False, enc),
        ("!r:x", "S", 0, 0, 1, enc),
    ):
        with pytest.raises(ValueError):
            backup.key_backup_body(*args)  # type: ignore[arg-type]
    merged = backup.merge_key_backup_bodies(
        [
            body,
            backup.key_backup_body("!room:x", "S2", 0, 0, False, enc),
            backup.key_backup_body("!b:x", "S3", 0, 0, False, enc),
        ]
    )
    assert set(merged["rooms"]) == {"!room:x", "!b:x"}
    assert set(merged["rooms"]["!room:x"]["sessions"]) == {"SESSION", "S2"}


def test_python_olm_pk_encryption_is_the_spec_format() -> None:
    """Direct check of the primitive the backup uses (no bot code involved)."""
    private = bytes(range(1, 33))
    public = b64encode(
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    message = olm.PkEncryption(public).encrypt("It's a secret to everybody")
    plaintext, mac, _ = ref_backup_decrypt(
        private, {"ephemeral": message.ephemeral_key, "ciphertext": message.ciphertext, "mac": message.mac}
    )
    assert plaintext == b"It's a secret to everybody"
    assert std_b64d(message.mac) == mac
