"""An attacking client for the security scenarios: a room member (a real nio client with its own device, through
:class:`~bot.testing.member.Member`) who does what well-behaved clients never do.

* :func:`send_encrypted_plaintext` Megolm-encrypts an arbitrary plaintext (a state type with a ``state_key``, forged
  relations...) with the member's own session, shared with the room as usual;
* :func:`send_encrypted_bytes` Megolm-encrypts any bytes at all (not UTF-8, not JSON, nested too deeply...) in the
  same way;
* :func:`send_in_the_clear` sends an event unencrypted into an encrypted room (as the server, or anyone holding an
  access token but no device keys, could);
* :func:`publish_copycat_device` logs the attacker in on a second device and publishes device keys whose curve25519
  key is a copy of someone else's (signed by a key of the attacker's own).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import aiohttp
import vodozemac
from nio import RoomSendResponse
from nio.api import Api

from bot.crypto.canonical import sign_json
from bot.testing.member import Member, MemberError


async def _share_room_key(member: Member, room_id: str) -> None:
    client = member.client
    await member.wait_for(lambda: room_id in client.rooms, 30, f"{room_id} to sync")
    if not client.rooms[room_id].members_synced:
        await client.joined_members(room_id)
    if client.should_query_keys:
        await client.keys_query()
    if client.olm.should_share_group_session(room_id):
        await client.share_group_session(room_id, ignore_unverified_devices=True)


async def _send_raw(member: Member, room_id: str, event_type: str, content: dict[str, Any]) -> str:
    client = member.client
    method, path, data = Api.room_send(client.access_token, room_id, event_type, content, str(uuid.uuid4()))
    resp = await client._send(RoomSendResponse, method, path, data, (room_id,))
    if not isinstance(resp, RoomSendResponse):
        raise MemberError(f"send failed: {resp}")
    return resp.event_id


async def send_encrypted_plaintext(member: Member, room_id: str, plaintext: dict[str, Any]) -> str:
    """Encrypt ``plaintext`` (any keys: ``type``, ``content``, ``state_key``...) with the member's Megolm session for
    the room and send it as an ordinary ``m.room.encrypted`` message event; returns its event id."""
    await _share_room_key(member, room_id)
    payload = member.client.olm.group_encrypt(room_id, plaintext)
    return await _send_raw(member, room_id, "m.room.encrypted", payload)


async def send_encrypted_bytes(member: Member, room_id: str, payload: bytes) -> str:
    """Encrypt ``payload`` as it is with the member's Megolm session for the room (shared as usual) and send it as an
    ``m.room.encrypted`` event; returns its event id. Only the session protects a payload: the server sees none of
    it and cannot refuse it."""
    await _share_room_key(member, room_id)
    olm = member.client.olm
    session = olm.outbound_group_sessions[room_id]
    ciphertext = session._session.encrypt(payload).to_base64()
    session.message_count += 1
    content = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": olm.account.identity_keys["curve25519"],
        "ciphertext": ciphertext,
        "session_id": session.id,
        "device_id": olm.device_id,
    }
    return await _send_raw(member, room_id, "m.room.encrypted", content)


async def send_in_the_clear(member: Member, room_id: str, text: str) -> str:
    """An ``m.text`` message sent unencrypted, even though the room is encrypted."""
    return await _send_raw(member, room_id, "m.room.message", {"msgtype": "m.text", "body": text})


async def publish_copycat_device(homeserver: str, user_id: str, password: str, copied_curve25519: str) -> str:
    """Log ``user_id`` in on a new device (no E2EE client) and upload device keys for it whose curve25519 key is
    ``copied_curve25519`` (someone else's); the ed25519 key is fresh and signs the keys. Returns the device id."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{homeserver}/_matrix/client/v3/login",
            json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
                  "password": password, "initial_device_display_name": "copycat"},
        ) as resp:
            login = await resp.json()
            if resp.status != 200:
                raise MemberError(f"copycat login failed: {login}")
        device_id, token = login["device_id"], login["access_token"]
        signing = vodozemac.Account()
        ed25519 = signing.ed25519_key.to_base64()
        keys = {
            "user_id": user_id,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{device_id}": copied_curve25519, f"ed25519:{device_id}": ed25519},
        }
        signed = sign_json(keys, user_id, f"ed25519:{device_id}", lambda data: signing.sign(data).to_base64())
        async with http.post(
            f"{homeserver}/_matrix/client/v3/keys/upload",
            json={"device_keys": signed},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise MemberError(f"copycat key upload refused: {answer}")
    return device_id


def random_text() -> str:
    """A unique marker to look for in the bot's answers and logs."""
    return f"marker-{secrets.token_hex(6)}"
