"""``e2ee.trust: verified`` (bot/e2ee/trust.py): a device is trusted only when its owner's master key carries the
bot's user-signing signature (what the bot uploads after a successful interactive verification, issue 18) and the
device is cross-signed by that master key; the bot's own cross-signed devices count. Network-free."""

from __future__ import annotations

from typing import Any

import vodozemac

from bot.crypto.canonical import sign_json
from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds
from bot.crypto.withheld import CODE_UNVERIFIED
from bot.e2ee.trust import TRUST_MODES, TrustPolicy

BOT, ALICE, MALLORY = "@bot:x", "@alice:x", "@mallory:x"


class Device:
    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id, self.device_id = user_id, device_id
        self.account = vodozemac.Account()

    def keys(self, xs: CrossSigningKeys | None = None) -> dict[str, Any]:
        unsigned = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"ed25519:{self.device_id}": self.account.ed25519_key.to_base64(),
                f"curve25519:{self.device_id}": self.account.curve25519_key.to_base64(),
            },
        }
        sign = lambda m: self.account.sign(m).to_base64()  # noqa: E731
        keys = sign_json(unsigned, self.user_id, f"ed25519:{self.device_id}", sign)
        if xs is not None:
            keys["signatures"][self.user_id].update(xs.sign_device(keys)["signatures"][self.user_id])
        return keys


def _xs(user_id: str) -> CrossSigningKeys:
    return CrossSigningKeys(user_id, CrossSigningSeeds.generate())


def _body(bot: CrossSigningKeys, users: dict[str, tuple[CrossSigningKeys, dict[str, Any], dict[str, Any] | None]]):
    body: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {}}
    for user_id, (xs, devices, master) in users.items():
        body["device_keys"][user_id] = devices
        body["master_keys"][user_id] = master or xs.master_key()
        body["self_signing_keys"][user_id] = xs.self_signing_key()
    body["user_signing_keys"][BOT] = bot.user_signing_key()
    return body


def test_verified_mode():
    assert "verified" in TRUST_MODES
    bot, alice, mallory = _xs(BOT), _xs(ALICE), _xs(MALLORY)
    bot_dev, alice_dev, alice_plain, mallory_dev = (
        Device(BOT, "BOTDEV"), Device(ALICE, "ADEV"), Device(ALICE, "APLAIN"), Device(MALLORY, "MDEV"),
    )
    policy = TrustPolicy("verified", own_user_id=BOT)
    users = {
        BOT: (bot, {"BOTDEV": bot_dev.keys(bot)}, None),
        ALICE: (alice, {"ADEV": alice_dev.keys(alice), "APLAIN": alice_plain.keys()}, None),
        MALLORY: (mallory, {"MDEV": mallory_dev.keys(mallory)}, None),
    }
    policy.observe_keys_query(_body(bot, users))
    # Before any verification: only the bot's own cross-signed device.
    assert policy.device_verdict(BOT, "BOTDEV").trusted
    assert not policy.user_verified(ALICE)
    verdict = policy.device_verdict(ALICE, "ADEV")
    assert not verdict.trusted and not verdict.share and verdict.code == CODE_UNVERIFIED
    assert verdict.reason == "owner not verified by the bot"

    # The bot verified alice and signed her master key with its user-signing key (as the server then shows it).
    signed_master = alice.master_key()
    signed_master["signatures"] = bot.sign_user(alice.master_key())["signatures"]
    users[ALICE] = (alice, users[ALICE][1], signed_master)
    _changes, changed = policy.observe_keys_query(_body(bot, users))
    assert ALICE in changed
    assert policy.user_verified(ALICE)
    assert policy.device_verdict(ALICE, "ADEV").trusted
    assert not policy.device_verdict(ALICE, "APLAIN").trusted  # not cross-signed by her
    assert not policy.device_verdict(MALLORY, "MDEV").trusted

    # A signature by another user-signing key (mallory's, claiming to be the bot's) does not count.
    forged = mallory.master_key()
    forged["signatures"] = {BOT: mallory.sign_user(alice.master_key())["signatures"][MALLORY]}
    users[MALLORY] = (mallory, users[MALLORY][1], None)
    users[ALICE] = (alice, users[ALICE][1], alice.master_key() | {"signatures": forged["signatures"]})
    policy.observe_keys_query(_body(bot, users))
    assert not policy.user_verified(ALICE) and not policy.device_verdict(ALICE, "ADEV").trusted

    # Alice resets her identity: the bot's signature was on the old master key, so she is unverified again.
    new_alice = _xs(ALICE)
    users[ALICE] = (new_alice, {"ADEV": alice_dev.keys(new_alice)}, None)
    policy.observe_keys_query(_body(bot, users))
    assert not policy.user_verified(ALICE) and not policy.device_verdict(ALICE, "ADEV").trusted
