"""Canonical JSON, unpadded base64 and ed25519 JSON signatures.

Implements the Matrix appendices "Unpadded Base64", "Canonical JSON" and
"Signing JSON" / "Checking for a Signature" (client-server spec v1.x).

Everything here is pure: no network, no global state.  Signing is delegated
to a caller-supplied ``signer`` callable (``bytes -> unpadded base64 str``), for
example ``olm.PkSigning(seed).sign``; verification uses libolm's
``olm.ed25519_verify``.

Why not matrix-org's ``canonicaljson`` / ``signedjson`` (Synapse's; issue 11, item 7):

* ``canonicaljson.encode_canonical_json`` is ``json.JSONEncoder`` with the very
  options used below (``ensure_ascii=False``, ``allow_nan=False``, compact
  separators, sorted keys), and it gives the same bytes for everything canonical
  JSON allows (``tests/test_crypto_primitives.py`` checks that on generated
  values). What it does not do is the part that matters here: it writes ``1.0``
  for a float, writes integers beyond ``2**53 - 1``, and turns ``{1: ...}`` into
  ``{"1": ...}``: all things the spec forbids (see :func:`canonical_json` for
  what a float does to a signature). Those checks (:func:`_normalise`) stay ours
  either way, so using it would swap one stdlib call for a dependency (measured:
  the encoding is 2.7 µs of ~12 µs for a device-keys object; the checks are the
  rest).
* ``signedjson`` signs with PyNaCl ``SigningKey`` objects and verifies with
  PyNaCl ``VerifyKey``. Our signers are libolm/vodozemac objects that sign and
  return base64 themselves (the device key lives in the olm ``Account``, which
  has no API to export its seed), so it would need a shim faking NaCl's key
  interface, it mutates its input where :func:`sign_json` returns a copy, it
  would add PyNaCl next to libolm's ``ed25519_verify``, and it inherits
  ``canonicaljson``'s missing number checks. Its signatures and ours are the
  same bytes and verify both ways (tested), so interoperability does not need
  it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import olm

__all__ = [
    "MAX_SAFE_INT",
    "MIN_SAFE_INT",
    "JsonSigner",
    "Signer",
    "b64decode",
    "b64encode",
    "canonical_json",
    "sign_json",
    "signable",
    "verify_json",
]

#: Largest integer allowed in canonical JSON (``2**53 - 1``).
MAX_SAFE_INT = 2**53 - 1
#: Smallest integer allowed in canonical JSON (``-(2**53) + 1``).
MIN_SAFE_INT = -(2**53) + 1

#: A signing primitive: takes the canonical bytes, returns an unpadded base64
#: ed25519 signature (e.g. ``olm.PkSigning(seed).sign``).
Signer = Callable[[bytes], str]

_ED25519_PUBLIC_KEY_LEN = 32
_ED25519_SIGNATURE_LEN = 64


# --------------------------------------------------------------------------
# Unpadded base64
# --------------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    """Encode ``data`` as *unpadded* standard base64 (spec appendix "Unpadded Base64")."""
    return base64.b64encode(bytes(data)).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """Decode base64 leniently, as the spec recommends for interoperability.

    Accepts input with or without ``=`` padding, and the URL-safe alphabet
    (``-``/``_``) as well as the standard one (matrix-js-sdk's ``decodeBase64``
    does the same).  Anything else -- whitespace, stray characters, an
    impossible length -- raises :class:`ValueError`.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ValueError("base64 input is not ASCII") from exc
    if not isinstance(text, str):
        raise ValueError(f"base64 input must be str, not {type(text).__name__}")
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2:
        raise ValueError("too much base64 padding")
    if len(stripped) % 4 == 1:
        raise ValueError("invalid base64 length")
    normalised = stripped.replace("-", "+").replace("_", "/")
    normalised += "=" * (-len(normalised) % 4)
    try:
        return base64.b64decode(normalised.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


# --------------------------------------------------------------------------
# Canonical JSON
# --------------------------------------------------------------------------


def _normalise(value: Any, allow_integral_floats: bool, path: str) -> Any:
    """Validate ``value`` for canonical JSON and return a json.dumps-ready copy."""
    # bool is a subclass of int: test it first.
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not MIN_SAFE_INT <= value <= MAX_SAFE_INT:
            raise ValueError(f"integer out of canonical JSON range at {path}: {value}")
        return int(value)
    if isinstance(value, float):
        if not allow_integral_floats:
            raise ValueError(f"floats are not allowed in canonical JSON (at {path}: {value!r})")
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"non-integral number not allowed in canonical JSON at {path}")
        as_int = int(value)  # also turns -0.0 into 0
        if not MIN_SAFE_INT <= as_int <= MAX_SAFE_INT:
            raise ValueError(f"integer out of canonical JSON range at {path}: {value!r}")
        return as_int
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"object keys must be strings (at {path}: {key!r})")
            out[key] = _normalise(item, allow_integral_floats, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item, allow_integral_floats, f"{path}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"type {type(value).__name__} is not JSON serialisable (at {path})")


def canonical_json(obj: Any, *, allow_integral_floats: bool = False) -> bytes:
    """Encode ``obj`` as Matrix canonical JSON (UTF-8 bytes).

    Keys are sorted by Unicode code point, there is no insignificant
    whitespace, non-ASCII characters are emitted as UTF-8 rather than
    ``\\u`` escapes, and the only numbers allowed are integers in
    ``[-(2**53)+1, 2**53-1]``.

    Raises:
        ValueError: a float (see below), an out-of-range integer, a non-string
            object key, or a string that cannot be encoded as UTF-8 (a lone
            surrogate).
        TypeError: a value that is not JSON at all.

    ``allow_integral_floats``: the spec's last canonical-JSON example maps the
    JSON text ``{"a": -0, "b": 1e10}`` to ``{"a":0,"b":10000000000}``.  Python's
    ``json.loads`` turns ``1e10`` into a float, so to reproduce that example a
    caller may opt in to accepting floats whose value is an integer (they are
    emitted as integers).  The default is strict -- any float is rejected --
    because Python's own ``json.dumps`` would put ``1.0`` on the wire while we
    signed ``1``, which Synapse and Rust verifiers would reject.
    """
    normalised = _normalise(obj, allow_integral_floats, "$")
    text = json.dumps(
        normalised,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string is not valid Unicode (lone surrogate?): {exc}") from exc


# --------------------------------------------------------------------------
# Signing JSON
# --------------------------------------------------------------------------


def signable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Return a shallow copy of ``obj`` without ``signatures`` and ``unsigned``.

    This is the part of a JSON object that a signature covers.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def sign_json(
    obj: Mapping[str, Any],
    user_id: str,
    key_id: str,
    signer: Signer,
) -> dict[str, Any]:
    """Return a deep copy of ``obj`` with a signature added.

    The signature is computed over the canonical JSON of :func:`signable`
    ``(obj)`` and stored under ``signatures[user_id][key_id]``.  Existing
    signatures and the ``unsigned`` section are preserved.

    Args:
        obj: the JSON object to sign.
        user_id: the signing entity (a Matrix user ID for client-side keys).
        key_id: the full *signing key identifier*, e.g. ``"ed25519:DEVICEID"``
            or ``"ed25519:<unpadded base64 public key>"``.
        signer: ``bytes -> str`` returning the unpadded base64 signature.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    if not isinstance(key_id, str) or ":" not in key_id:
        raise ValueError("key_id must look like '<algorithm>:<identifier>'")
    result = copy.deepcopy(dict(obj))
    signatures = result.pop("signatures", None)
    if signatures is None:
        signatures = {}
    if not isinstance(signatures, dict):
        raise ValueError("existing 'signatures' member is not an object")
    unsigned = result.pop("unsigned", None)
    signature = signer(canonical_json(result))
    if isinstance(signature, bytes | bytearray):
        signature = bytes(signature).decode("ascii")
    if not isinstance(signature, str) or not signature:
        raise TypeError("signer must return the base64 signature as a string")
    per_user = signatures.setdefault(user_id, {})
    if not isinstance(per_user, dict):
        raise ValueError(f"existing signatures[{user_id!r}] is not an object")
    per_user[key_id] = signature
    result["signatures"] = signatures
    if unsigned is not None:
        result["unsigned"] = unsigned
    return result


def verify_json(
    obj: Mapping[str, Any],
    user_id: str,
    key_id: str,
    public_key_b64: str,
) -> bool:
    """Check the ed25519 signature ``signatures[user_id][key_id]`` on ``obj``.

    Returns ``False`` -- never raises -- when the signature is missing, the key
    id is not an ``ed25519:`` id, the key or signature is not valid base64 of
    the right length, the object cannot be canonicalised, or the signature does
    not verify.  Padded and unpadded base64 are both accepted for the key and
    the signature.
    """
    try:
        if not isinstance(obj, Mapping) or not isinstance(key_id, str):
            return False
        if not key_id.startswith("ed25519:"):
            return False
        signatures = obj.get("signatures")
        if not isinstance(signatures, Mapping):
            return False
        per_user = signatures.get(user_id)
        if not isinstance(per_user, Mapping):
            return False
        signature_b64 = per_user.get(key_id)
        if not isinstance(signature_b64, str) or not isinstance(public_key_b64, str):
            return False
        signature = b64decode(signature_b64)
        public_key = b64decode(public_key_b64)
        if len(signature) != _ED25519_SIGNATURE_LEN or len(public_key) != _ED25519_PUBLIC_KEY_LEN:
            return False
        message = canonical_json(signable(obj))
        # Hand libolm its own (unpadded) encodings so its strict base64 parser
        # never sees padding or URL-safe characters.
        olm.ed25519_verify(b64encode(public_key), message, b64encode(signature))
    except Exception:  # olm.OlmVerifyError, ValueError, TypeError, ...
        return False
    return True


class JsonSigner(NamedTuple):
    """A bound ``(user_id, key_id, signer)`` triple, callable as ``obj -> signed obj``.

    Handy wherever an API accepts "something that signs a JSON object", e.g.
    :meth:`bot.crypto.megolm_backup.BackupKey.auth_data`.
    """

    user_id: str
    key_id: str
    sign: Signer

    def __call__(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``obj`` signed with this key (see :func:`sign_json`)."""
        return sign_json(obj, self.user_id, self.key_id, self.sign)
