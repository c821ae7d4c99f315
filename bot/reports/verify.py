"""``ratchet verify-report FILE [-c CONFIG] [--key ED25519]``: check an evidence bundle from the report plugin.

A bundle names its signer (``attested_by``), but anyone can sign a bundle with a fresh key, or with their own real
device, and name whatever they like in it: the signer counts as verified only against a key that comes from
*outside* the bundle.

* Always: the format, the signature over the whole bundle, and the consistency of its parts.
* ``-c CONFIG`` (online, with the bot's stored session): the signer must be the configured bot, ``user_id`` from the
  config and the device from its stored credentials; the signing key must be the key the homeserver publishes for
  that device of the bot's account (never of whichever account the bundle names), that device must be cross-signed
  by the bot's identity, and the reported event (id, sender, time, ciphertext) must still be what the server holds.
* ``--key ED25519``: the signature must verify under this key (the bot device's ed25519 key in unpadded base64, as
  clients show it as the bot's session key); works offline, and for bundles made by an earlier device of the bot.

Exit codes (:data:`EXIT_VERIFIED`, :data:`EXIT_NOT_VERIFIED`, :data:`EXIT_SIGNER_UNKNOWN`): 0 verified; 1 not
verified (altered, signed by someone other than the bot, or not what the homeserver holds); 3 intact and
self-consistent, but the signer is not verified because neither ``-c`` nor ``--key`` was given.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

from bot.crypto.cross_signing import verify_device_signed, verify_self_signing_key
from bot.reports.evidence import verify_bundle
from bot.storage.backend import open_storage

__all__ = ["EXIT_NOT_VERIFIED", "EXIT_SIGNER_UNKNOWN", "EXIT_VERIFIED", "verify_report"]

#: Every check passed and the signer is the bot (checked online or against ``--key``).
EXIT_VERIFIED = 0
#: Some check failed: the bundle does not verify.
EXIT_NOT_VERIFIED = 1
#: Offline without ``--key``: intact and self-consistent, but nothing says who signed it.
EXIT_SIGNER_UNKNOWN = 3


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"ratchet: cannot read {path}: {exc}") from None


async def _bot_device(http: aiohttp.ClientSession, user_id: str, device_id: str) -> tuple[str | None, list, list]:
    """The published ed25519 key of the bot's ``device_id`` (None if not published), and (passed, problems)."""
    passed: list[str] = []
    problems: list[str] = []
    async with http.post("/_matrix/client/v3/keys/query", json={"device_keys": {user_id: []}}) as resp:
        keys = await resp.json(content_type=None)
    device = ((keys.get("device_keys") or {}).get(user_id) or {}).get(device_id)
    if not isinstance(device, dict):
        problems.append(f"the homeserver does not publish the bot's device {device_id} of {user_id}")
        return None, passed, problems
    published = (device.get("keys") or {}).get(f"ed25519:{device_id}")
    master = (keys.get("master_keys") or {}).get(user_id)
    ssk = (keys.get("self_signing_keys") or {}).get(user_id)
    if master and ssk and verify_self_signing_key(master, ssk, user_id) and verify_device_signed(device, ssk, user_id):
        passed.append(f"the bot's device {device_id} is cross-signed by the bot's identity")
    else:
        problems.append(f"the bot's device {device_id} is not cross-signed by the bot's identity")
    return (published if isinstance(published, str) else None), passed, problems


async def _server_event(http: aiohttp.ClientSession, bundle: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Is the reported event still what the homeserver holds? Returns (passed, problems)."""
    q = urllib.parse.quote
    room_id, event_id = str(bundle.get("room_id")), str(bundle.get("event_id"))
    async with http.get(f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/event/{q(event_id, safe='')}") as resp:
        server_event = await resp.json(content_type=None)
        status = resp.status
    if status != 200:
        return [], [f"the homeserver cannot return the event ({server_event.get('errcode', status)})"]
    held = (bundle.get("reported") or {}).get("event") or {}
    fields = ("event_id", "sender", "origin_server_ts", "type", "content")
    if all(server_event.get(f) == held.get(f) for f in fields):
        return ["the event and its ciphertext match what the homeserver holds"], []
    if not server_event.get("content"):
        return [], ["the event was redacted on the homeserver since (content gone)"]
    return [], ["the event differs from what the homeserver holds"]


async def verify_report(path: Path, config_path: Path | None, key: str | None = None) -> int:
    """Print each check and return the exit code (see the module docs)."""
    bundle = _load(path)
    passed: list[str] = []
    problems: list[str] = []
    unverified: list[str] = []
    signer_verified = False
    if key is not None:
        key = key.strip().rstrip("=")
        offline = verify_bundle(bundle, trusted_device_key=key)
        signer_verified = offline.signer_verified
    else:
        offline = verify_bundle(bundle)
        unverified += offline.unverified
    passed += offline.checks
    problems += offline.problems
    if config_path is not None:
        from bot.config import load_config

        config = load_config(config_path)
        storage = open_storage(config)
        creds = storage.load_credentials()
        if creds is None:
            print(f"FAILED: no login stored in {storage} (start the bot once first)")
            print(f"{path}: NOT VERIFIED")
            return EXIT_NOT_VERIFIED
        bot_user, bot_device = config.user_id, creds.device_id
        headers = {"Authorization": f"Bearer {creds.access_token}"}
        try:
            async with aiohttp.ClientSession(config.homeserver, headers=headers) as http:
                published, more_passed, more_problems = await _bot_device(http, bot_user, bot_device)
                passed += more_passed
                problems += more_problems
                if published is not None:
                    online = verify_bundle(
                        bundle, trusted_device_key=published, expected_user_id=bot_user, expected_device_id=bot_device
                    )
                    passed += [c for c in online.checks if c not in passed]
                    problems += [p for p in online.problems if p not in problems]
                    if online.signer_verified:
                        passed.append(f"the signer is the bot: {bot_user} device {bot_device}, key as published")
                        unverified.clear()
                        signer_verified = key is None or signer_verified
                    else:
                        signer_verified = False
                event_passed, event_problems = await _server_event(http, bundle)
                passed += event_passed
                problems += event_problems
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            problems.append(f"cannot check against the homeserver {config.homeserver}: {exc.__class__.__name__}")
    for line in passed:
        print(f"ok: {line}")
    for line in problems:
        print(f"FAILED: {line}")
    if problems:
        print(f"{path}: NOT VERIFIED (the evidence does not verify)")
        return EXIT_NOT_VERIFIED
    if not signer_verified:
        for line in unverified or ["the signer is NOT verified"]:
            print(f"NOT VERIFIED: {line}")
        print(
            f"{path}: NOT VERIFIED: the bundle is intact and self-consistent, but who signed it is not verified "
            "(exit 3)"
        )
        return EXIT_SIGNER_UNKNOWN
    scope = "offline and online" if config_path else "offline, against the given key"
    print(f"{path}: verified ({scope})")
    return EXIT_VERIFIED
