"""``ratchet verification list|show|confirm|mismatch|cancel`` and ``ratchet verify-user``: the operator's side of
interactive verification, talking to the running bot through its control socket (``data_dir/control.sock``).

The short codes are printed as Element shows them: seven emoji with their names (and the three numbers), to be
compared with what the other person's client shows before ``confirm``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "add_parsers", "format_fingerprints", "format_flow", "run"]

COMMANDS = ("verification", "verify-user", "fingerprint", "trust-user")
EXIT_CONFIG = 2


def add_parsers(sub: Any) -> None:
    """Add ``verification`` and ``verify-user`` to the ``ratchet`` subcommands."""
    ver = sub.add_parser(
        "verification",
        help="list, show, confirm or cancel the running bot's interactive verifications",
        description="Talk to the running bot (its control socket in data_dir): list the verifications in progress, "
        "show one's emoji, confirm that they match what the other side shows, or cancel.",
    )
    actions = ver.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("list", "verifications in progress (--all: also finished ones)"),
        ("show", "one verification, with its emoji and their names"),
        ("confirm", "the emoji match what the other side shows: finish the verification"),
        ("mismatch", "the emoji differ: cancel (m.mismatched_sas)"),
        ("cancel", "cancel the verification (m.user)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
        action.add_argument("--json", action="store_true", help="print JSON")
        if name == "list":
            action.add_argument("--all", action="store_true", help="also finished and cancelled verifications")
        else:
            action.add_argument("id", metavar="ID", help="the verification's id (a unique prefix is enough)")
    user = sub.add_parser(
        "verify-user",
        help="ask a user to verify the bot (emoji), in their DM with the bot or to-device",
        description="The running bot asks USER to verify: with --room in that room (user verification, what "
        "Element does in a DM), else to-device to USER's devices (--device to pick some).",
    )
    user.add_argument("user", metavar="USER", help="the user id")
    user.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    user.add_argument("--room", help="the DM room to verify in")
    user.add_argument("--device", action="append", help="a device of USER (repeatable); to-device only")
    user.add_argument("--json", action="store_true", help="print JSON")
    fp = sub.add_parser(
        "fingerprint",
        help="print the running bot's device and master keys (and a user's, with the safety number)",
        description="The running bot's device ed25519 key and its account's cross-signing master key, in groups of "
        "four as Element shows them. With --user, that user's master key too, and the 60-digit safety number of the "
        "two master keys (Signal's algorithm): read aloud and compared, it proves both hold each other's current key.",
    )
    fp.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    fp.add_argument("--user", help="also this user's master key and the safety number")
    fp.add_argument("--json", action="store_true", help="print JSON")
    tu = sub.add_parser(
        "trust-user",
        help="accept a user's identity on a fingerprint compared out of band",
        description="If FINGERPRINT (the user's master key, or the safety number 'ratchet fingerprint --user' prints) "
        "matches the user's current master key, the running bot pins it and signs it with its user-signing key, as "
        "after an emoji verification. A wrong fingerprint is refused and nothing changes (exit 1).",
    )
    tu.add_argument("user", metavar="USER", help="the user id")
    tu.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    tu.add_argument("--fingerprint", required=True, help="the master key or safety number (spaces allowed)")


def format_flow(flow: dict[str, Any]) -> str:
    """A verification as the operator reads it."""
    where = f"in {flow['room_id']}" if flow.get("room_id") else "to-device"
    who = f"{flow['other_user']}" + (f" (device {flow['other_device']})" if flow.get("other_device") else "")
    started = "the bot asked" if flow.get("we_requested") else "they asked"
    lines = [f"verification {flow['id']}", f"  with {who}, {where}, {started}", f"  state: {flow['state']}"]
    if flow.get("emoji"):
        lines.append("  emoji:")
        lines += [f"    {symbol}  {name}" for symbol, name in flow["emoji"]]
    if flow.get("decimals"):
        lines.append("  numbers: " + " ".join(str(n) for n in flow["decimals"]))
    if flow["state"] == "keys":
        lines.append(
            f"  Compare them with what {flow['other_user']} sees; if they are the same: "
            f"ratchet verification confirm {flow['id']} (if not: ratchet verification mismatch {flow['id']})"
        )
    if flow["state"] == "cancelled":
        by = "the bot" if flow.get("cancelled_by_us") else flow["other_user"]
        lines.append(f"  cancelled by {by}: {flow.get('cancel_code')} ({flow.get('cancel_reason')})")
    if flow.get("verified_keys"):
        lines.append("  verified: " + ", ".join(sorted(flow["verified_keys"])))
    return "\n".join(lines)


def format_fingerprints(fp: dict[str, Any]) -> str:
    """``ratchet fingerprint``'s text (the same lines ``!fingerprint`` shows in a room)."""
    from bot.crypto.fingerprint import fingerprint_lines

    return "\n".join(fingerprint_lines(fp))


def run(args: argparse.Namespace) -> int:
    """Run ``verification ...`` or ``verify-user``; exit 0, 1 when the bot answered with an error or cannot be
    reached, 2 for a config error."""
    from bot.config import load_config
    from bot.e2ee.control import CONTROL_SOCKET, ControlError, call
    from bot.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"ratchet: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    path = config.data_dir / CONTROL_SOCKET
    try:
        if args.command == "fingerprint":
            result = call(path, "fingerprint", user=args.user)
            print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else format_fingerprints(result))
            return 0
        if args.command == "trust-user":
            result = call(path, "trust-user", user=args.user, fingerprint=args.fingerprint)
            signed = " and signed it with the bot's user-signing key" if result.get("signed") else ""
            print(f"{result['user_id']}: pinned master key {result['master_key']}{signed}")
            return 0
        if args.command == "verify-user":
            result = call(path, "verification.request", user=args.user, room=args.room, devices=args.device)
        elif args.action == "list":
            result = call(path, "verification.list", all=True if args.all else None)
        else:
            result = call(path, f"verification.{args.action}", id=args.id)
    except ControlError as err:
        print(f"ratchet: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif isinstance(result, list):
        print("\n\n".join(format_flow(f) for f in result) if result else "no verifications in progress")
    else:
        print(format_flow(result))
    return 0
