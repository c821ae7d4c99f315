"""``ratchet verify-report FILE [-c CONFIG]``: check an evidence bundle from the report plugin.

Offline (always): the format, the attesting device's signature over the whole bundle, and the consistency of its
parts. Online (with the bot's config, using its stored session): that the signing key is the bot's device key as the
homeserver publishes it, that this device is cross-signed by the bot's own cross-signing identity, and that the
reported event (id, sender, time, ciphertext) is still exactly what the homeserver holds.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

from bot.crypto.cross_signing import verify_device_signed, verify_self_signing_key
from bot.reports.evidence import verify_bundle
from bot.storage.backend import SqliteStorage

__all__ = ["verify_report"]


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"ratchet: cannot read {path}: {exc}") from None


async def _online(bundle: dict[str, Any], homeserver: str, token: str) -> tuple[list[str], list[str]]:
    """Checks against the homeserver; returns (passed, problems)."""
    passed: list[str] = []
    problems: list[str] = []
    who = bundle.get("attested_by") or {}
    user_id, device_id = str(who.get("user_id")), str(who.get("device_id"))
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(homeserver, headers=headers) as http:
        async with http.post("/_matrix/client/v3/keys/query", json={"device_keys": {user_id: []}}) as resp:
            keys = await resp.json(content_type=None)
        device = (keys.get("device_keys", {}).get(user_id) or {}).get(device_id)
        if not device:
            problems.append(f"the homeserver does not know device {device_id} of {user_id}")
        else:
            published = (device.get("keys") or {}).get(f"ed25519:{device_id}")
            if published != who.get("ed25519"):
                problems.append("the bundle's signing key is not the device key the homeserver publishes")
            else:
                passed.append("the signing key is the bot device's published key")
            master = (keys.get("master_keys") or {}).get(user_id)
            ssk = (keys.get("self_signing_keys") or {}).get(user_id)
            if master and ssk and verify_self_signing_key(master, ssk, user_id) and verify_device_signed(
                device, ssk, user_id
            ):
                passed.append("the device is cross-signed by the bot's identity")
            else:
                problems.append("the signing device is not cross-signed by the bot's identity")
        q = urllib.parse.quote
        room_id, event_id = str(bundle.get("room_id")), str(bundle.get("event_id"))
        async with http.get(f"/_matrix/client/v3/rooms/{q(room_id, safe='')}/event/{q(event_id, safe='')}") as resp:
            server_event = await resp.json(content_type=None)
            status = resp.status
        if status != 200:
            problems.append(f"the homeserver cannot return the event ({server_event.get('errcode', status)})")
        else:
            held = (bundle.get("reported") or {}).get("event") or {}
            fields = ("event_id", "sender", "origin_server_ts", "type", "content")
            if all(server_event.get(f) == held.get(f) for f in fields):
                passed.append("the event and its ciphertext match what the homeserver holds")
            elif not server_event.get("content"):
                problems.append("the event was redacted on the homeserver since (content gone)")
            else:
                problems.append("the event differs from what the homeserver holds")
    return passed, problems


async def verify_report(path: Path, config_path: Path | None) -> int:
    """Print each check and return the exit code: 0 if everything verified, 1 otherwise."""
    bundle = _load(path)
    offline = verify_bundle(bundle)
    passed, problems = list(offline.checks), list(offline.problems)
    if config_path is not None and offline.ok:
        from bot.config import load_config

        config = load_config(config_path)
        creds = SqliteStorage(config.data_dir).load_credentials()
        if creds is None:
            print(f"FAILED: no login stored in {config.data_dir} (start the bot once first)")
            return 1
        more_passed, more_problems = await _online(bundle, config.homeserver, creds.access_token)
        passed += more_passed
        problems += more_problems
    for line in passed:
        print(f"ok: {line}")
    for line in problems:
        print(f"FAILED: {line}")
    if not problems:
        scope = "offline and online" if config_path else "offline (add -c CONFIG to check against the homeserver)"
        print(f"{path}: the evidence verifies ({scope})")
        return 0
    print(f"{path}: the evidence does NOT verify")
    return 1
