"""Fallback keys, so that running out of one-time keys never stops a new device from reaching the bot.

A device publishes one-time keys (OTKs); every new Olm session started *towards* the bot consumes one through
``POST /keys/claim``. When all are claimed (a burst of new devices, a misbehaving client, or the bot offline while
people keep starting sessions) the server has nothing to hand out and new peers cannot send the bot room keys.
A *fallback key* (spec v1.2, MSC2732) is a signed curve25519 key the server returns, marked ``"fallback": true``,
when the OTKs are gone; unlike an OTK it may be used many times.

nio 0.26 never creates one. :class:`FallbackKeys` does, with vodozemac's ``Account.generate_fallback_key()``:

* after each sync it reads ``device_unused_fallback_key_types`` (which nio does not parse; the client keeps it from
  the raw body). If ``signed_curve25519`` is missing, the bot has no unused fallback key on the server (never
  uploaded, or a peer just used it), so a new one is generated and the account saved;
* the key is uploaded with the next ``/keys/upload`` as ``fallback_keys: {"signed_curve25519:<id>": {"key",
  "fallback": true, "signatures"}}``, signed by the device like an OTK; nio's upload handling then marks it
  published and saves the account;
* vodozemac keeps the previous fallback key after a rotation, so sessions a peer started with it moments before
  still decrypt.

It also repairs a nio bug that would leave an exhausted device exhausted: nio only updates its count of uploaded
OTKs when the server reports a *non-zero* count, so after the last OTK is claimed it never uploads new ones. When
the server says 0, the count is set to 0 and the regular key maintenance uploads a fresh batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.matrix.olm import RatchetOlm


class _HasOlm(Protocol):
    olm: RatchetOlm | None

__all__ = [
    "FALLBACK_KEY_ALGORITHM",
    "FallbackKeys",
    "fallback_key_used",
    "signed_fallback_keys",
    "unused_fallback_key_types",
]

log = logging.getLogger(__name__)

FALLBACK_KEY_ALGORITHM = "signed_curve25519"
_UNUSED_FIELDS = ("device_unused_fallback_key_types", "org.matrix.msc2732.device_unused_fallback_key_types")


def signed_fallback_keys(
    keys: Mapping[str, str], *, user_id: str, device_id: str, sign: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """The ``fallback_keys`` object of ``/keys/upload`` for ``keys`` (key id -> unpadded base64 curve25519 key).

    ``sign`` returns the device's ed25519 signature of a JSON object's canonical form (nio's ``Olm.sign_json``).
    """
    out: dict[str, Any] = {}
    for key_id, key in keys.items():
        obj: dict[str, Any] = {"key": key, "fallback": True}
        signature = sign(obj)
        obj["signatures"] = {user_id: {f"ed25519:{device_id}": signature}}
        out[f"{FALLBACK_KEY_ALGORITHM}:{key_id}"] = obj
    return out


def unused_fallback_key_types(sync_body: Mapping[str, Any]) -> list[str] | None:
    """``device_unused_fallback_key_types`` of a sync body; None when the server does not report it."""
    for name in _UNUSED_FIELDS:
        value = sync_body.get(name)
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
    return None


def fallback_key_used(unused_types: list[str] | None) -> bool:
    """True when the server reports no unused ``signed_curve25519`` fallback key (so one must be uploaded).

    False when the server does not report the field at all (it does not support fallback keys).
    """
    return unused_types is not None and FALLBACK_KEY_ALGORITHM not in unused_types


class FallbackKeys:
    """Keeps one unused fallback key on the server for ``client`` (see the module docs)."""

    def __init__(self, client: _HasOlm) -> None:
        self._client = client
        #: How many fallback keys were generated in this run.
        self.generated = 0
        #: How many times the server reported ours as used (a peer started a session with it).
        self.used = 0

    def unpublished(self) -> dict[str, str]:
        """Fallback keys generated but not uploaded yet (key id -> public key)."""
        olm = self._client.olm
        return olm.unpublished_fallback_keys() if olm is not None else {}

    @property
    def pending(self) -> bool:
        """True when a generated fallback key waits for upload."""
        return bool(self.unpublished())

    def upload_content(self) -> dict[str, Any]:
        """The signed ``fallback_keys`` for the next ``/keys/upload`` (empty when nothing waits)."""
        keys = self.unpublished()
        olm = self._client.olm
        if not keys or olm is None:
            return {}
        return signed_fallback_keys(keys, user_id=olm.user_id, device_id=olm.device_id, sign=olm.sign_json)

    def generate(self) -> str | None:
        """Generate a new fallback key (unless one already waits for upload) and save the account."""
        olm = self._client.olm
        if olm is None:
            return None
        if not self.pending:
            self.generated += 1
        return olm.generate_fallback_key()

    def observe_sync(self, sync_body: Mapping[str, Any]) -> None:
        """Look at a sync body's key counts: rotate a used fallback key, unstick nio's zero OTK count."""
        olm = self._client.olm
        if olm is None or not olm.account.shared:
            return
        counts = sync_body.get("device_one_time_keys_count")
        if isinstance(counts, Mapping) and counts.get(FALLBACK_KEY_ALGORITHM) == 0 and olm.uploaded_key_count != 0:
            log.info("all one-time keys of this device were claimed; uploading new ones")
            olm.uploaded_key_count = 0
        if fallback_key_used(unused_fallback_key_types(sync_body)) and not self.pending:
            if self.generated:
                self.used += 1
                log.info("the fallback key was used by a new peer; rotating it")
            key_id = self.generate()
            log.debug("generated fallback key %s", key_id)

    def mark_published(self) -> None:
        """Called after a successful upload that carried the fallback key (nio also does this)."""
        olm = self._client.olm
        if olm is not None:
            olm.mark_keys_as_published()
            olm.save_account()
