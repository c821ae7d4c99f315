"""The ``ratchet`` command (also ``python -m bot``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot import __version__
from bot.cli import appservice as appservice_cli
from bot.cli import db as db_cli
from bot.cli import verification as verification_cli
from bot.errors import ConfigError, ScaffoldError, SessionError

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratchet",
        description="Ratchet: Matrix bots and bridges for end-to-end-encrypted rooms.",
    )
    parser.add_argument("--version", action="version", version=f"ratchet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the bot", description="Log in (once), sync and run the plugins.")
    run.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    run.add_argument("--log-format", choices=["text", "json"], help="override log_format from the config")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log_level")

    check = sub.add_parser(
        "check-config",
        help="validate a config file and exit",
        description="Validate the config without connecting; exit 0 if valid, 2 with a message naming the key if not.",
    )
    check.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")

    verify_report = sub.add_parser(
        "verify-report",
        help="check an evidence bundle from the report plugin",
        description="Check a report's evidence bundle: its signature and consistency; with -c, that the signer is "
        "the configured bot (its user and stored device, key as the homeserver publishes it, cross-signed) and that "
        "the event still matches the homeserver's copy; with --key, that the signature verifies under that key. "
        "Exit 0: verified; 1: not verified; 3: intact but the signer is not verified (neither -c nor --key).",
    )
    verify_report.add_argument("file", type=Path, help="the evidence-*.json file")
    verify_report.add_argument("-c", "--config", type=Path, help="the bot's config (for the online checks)")
    verify_report.add_argument(
        "--key", metavar="ED25519", help="the bot device's ed25519 key (unpadded base64) the bundle must be signed with"
    )

    new = sub.add_parser(
        "new-plugin",
        help="write a working plugin and its test",
        description="Create DIR/NAME/__init__.py (a plugin with a typed command and a config schema), "
        "DIR/NAME/tests/test_NAME.py (an end-to-end test using Ratchet's test kit) and DIR/NAME/pytest.ini; run "
        "`pytest` in DIR/NAME (needs matrix-ratchet[testing]), or try it by hand with `ratchet dev DIR/NAME`.",
    )
    new.add_argument("name", help="plugin name: lowercase letters, digits, underscores")
    new.add_argument("--dir", type=Path, default=Path("plugins"), help="folder to create it in (default: plugins)")

    recovery = sub.add_parser(
        "recovery-key",
        help="the recovery key of the bot's secret storage",
        description="Commands about the recovery key that unlocks the bot's cross-signing keys and key backup.",
    )
    recovery_sub = recovery.add_subparsers(dest="action", metavar="ACTION")
    recovery_sub.required = True
    show = recovery_sub.add_parser(
        "show",
        help="print the recovery key kept in data_dir",
        description="Print the recovery key if data_dir holds it (it is kept there encrypted with pickle_key).",
    )
    show.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")

    verify = sub.add_parser(
        "verify",
        help="cross-sign the bot's device with the account's recovery key and restore the key backup",
        description="Read the account's cross-signing keys from secret storage with the recovery key (one made by "
        "Ratchet or by Element), keep them in data_dir, sign the bot's device with them and restore the key backup. "
        "If the crypto store was lost, the bot logs in as a new device (the old credentials are moved aside). "
        "Run it while the bot is stopped.",
    )
    verify.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    key_source = verify.add_mutually_exclusive_group(required=True)
    key_source.add_argument("--recovery-key", metavar="KEY", help="the recovery key (spaces allowed; '-' reads stdin)")
    key_source.add_argument("--recovery-key-file", metavar="PATH", type=Path, help="read the recovery key from a file")

    cross = sub.add_parser(
        "cross-signing",
        help="manage the bot account's cross-signing keys",
        description="Commands about the bot account's cross-signing keys.",
    )
    cross_sub = cross.add_subparsers(dest="action", metavar="ACTION")
    cross_sub.required = True
    reset = cross_sub.add_parser(
        "reset",
        help="replace the cross-signing keys, secret storage key and recovery key",
        description="Make new cross-signing keys (replacing the account's, with the password for user-interactive "
        "auth), a new secret storage key and recovery key and a new key backup, and sign the bot's device. Other "
        "users who verified the bot must verify it again. Run it while the bot is stopped.",
    )
    reset.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")

    sub.add_parser(
        "demo",
        help="run a scripted encrypted conversation against a throwaway local Synapse",
        description="Start a temporary Synapse on 127.0.0.1, a bot and a demo user in an encrypted room; the user "
        "sends !ping and the bot answers pong, then everything is shut down.",
    )

    dev = sub.add_parser(
        "dev",
        help="try a plugin by hand: a local Synapse, a bot with the plugin, reloaded when its files change",
        description="Start (or reuse) a local Synapse on 127.0.0.1 kept in a state directory, a bot with the "
        "plugin(s) in PLUGIN_DIR loaded (options from PLUGIN_DIR/dev.yaml or --options: plugin name -> options) "
        "and an encrypted room with the bot and a member; print the member's login details (for Element or any "
        "client) and reload the plugin whenever its files change. Ctrl-C stops the bot; the Synapse keeps "
        "running for the next run.",
    )
    dev.add_argument(
        "plugin_dir",
        nargs="?",
        type=Path,
        metavar="PLUGIN_DIR",
        help="a plugin package (a folder with __init__.py), a plugin module (name.py) or a folder of plugins",
    )
    dev.add_argument(
        "--state-dir",
        type=Path,
        help="where the Synapse, the accounts and the bot's data live "
        "(default: $XDG_STATE_HOME/ratchet/dev or ~/.local/state/ratchet/dev)",
    )
    dev.add_argument("--options", type=Path, metavar="FILE", help="the plugins' options (default: PLUGIN_DIR/dev.yaml)")
    dev.add_argument("--stop-synapse", action="store_true", help="stop the Synapse too when stopping")
    dev.add_argument("--stop", action="store_true", help="stop the dev Synapse left running, and exit")
    dev.add_argument(
        "--member-shell",
        action="store_true",
        help="also talk to the bot from this terminal as the member (lines read from stdin are sent to the room)",
    )
    dev.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="INFO", help="the bot's log level"
    )
    verification_cli.add_parsers(sub)  # ratchet verification ..., ratchet verify-user (bot/cli/verification.py)
    db_cli.add_parsers(sub)  # ratchet db migrate (bot/cli/db.py)
    appservice_cli.add_parsers(sub)  # ratchet appservice registration (bot/cli/appservice.py)
    return parser


def _load(path: Path):
    """Load and validate the config and every configured plugin's options; exit 2 with the errors if any."""
    from bot.config import load_config
    from bot.plugin.host import check_plugin_options

    try:
        config = load_config(path)
    except ConfigError as err:
        print(f"ratchet: config error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    errors = check_plugin_options(config)
    if errors:
        for error in errors:
            print(f"ratchet: config error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return config


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ratchet`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in verification_cli.COMMANDS:
        return verification_cli.run(args)
    if args.command == "check-config":
        config = _load(args.config)
        plugins = ", ".join(config.plugins) or "none"
        print(f"{args.config}: OK ({config.user_id} on {config.homeserver}, plugins: {plugins})")
        return 0
    if args.command == "run":
        config = _load(args.config)
        from bot.log import setup_logging

        setup_logging(args.log_level or config.log_level, args.log_format or config.log_format)
        return _run(config)
    if args.command == "verify-report":
        from bot.reports.verify import verify_report

        return asyncio.run(verify_report(args.file, args.config, args.key))
    if args.command == "new-plugin":
        from bot.cli.scaffold import new_plugin

        try:
            files = new_plugin(args.name, args.dir)
        except ScaffoldError as err:
            print(f"ratchet: {err}", file=sys.stderr)
            return EXIT_CONFIG
        for path in files:
            print(f"created {path}")
        print(f"Add it to your config under plugins: ({args.name}: {{}}) and plugin_dirs: [{args.dir}]")
        return 0
    if args.command == "demo":
        from bot.cli.demo import run_demo

        return run_demo()
    if args.command == "dev":
        from bot.cli.dev import DevArgs, run_dev

        return run_dev(
            DevArgs(
                plugin_dir=args.plugin_dir,
                state_dir=args.state_dir,
                options=args.options,
                stop=args.stop,
                stop_synapse=args.stop_synapse,
                member_shell=args.member_shell,
                log_level=args.log_level,
            )
        )
    if args.command in ("recovery-key", "verify", "cross-signing"):
        return _identity_command(args)
    if args.command == "db":
        return db_cli.run(args, _load(args.config))
    if args.command == "appservice":
        return appservice_cli.run(args, _load(args.config))
    return EXIT_CONFIG


def _identity_command(args: argparse.Namespace) -> int:
    """``recovery-key show``, ``verify`` and ``cross-signing reset``: one line on error, exit 1 (2 for usage)."""
    from bot.e2ee.offline import (
        RecoveryError,
        read_local_recovery_key,
        reset_cross_signing,
        verify_with_recovery_key,
    )
    from bot.log import setup_logging

    config = _load(args.config)
    if args.command == "recovery-key":
        try:
            key = read_local_recovery_key(config)
        except RecoveryError as err:
            print(f"ratchet: {err}", file=sys.stderr)
            return EXIT_RUNTIME
        if key is None:
            print(
                f"ratchet: no recovery key is stored in {config.data_dir}. It is kept there when the bot creates its "
                "cross-signing keys or after `ratchet verify`; if it was lost, `ratchet cross-signing reset` makes a "
                "new one",
                file=sys.stderr,
            )
            return EXIT_RUNTIME
        print(key)
        return 0

    setup_logging(config.log_level, config.log_format)
    if args.command == "verify":
        recovery_key = _read_recovery_key(args)
        if recovery_key is None:
            return EXIT_CONFIG
        procedure = verify_with_recovery_key(config, recovery_key)
    else:
        if not args.yes and sys.stdin.isatty():
            answer = input(
                f"Replace the cross-signing keys of {config.user_id}? Everyone who verified it must verify it again. "
                "Type 'reset' to go on: "
            )
            if answer.strip() != "reset":
                print("ratchet: cancelled", file=sys.stderr)
                return EXIT_RUNTIME
        procedure = reset_cross_signing(config)
    try:
        report = asyncio.run(procedure)
    except RecoveryError as err:
        print(f"ratchet: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception as err:  # network failures and the like: one line, no traceback
        print(f"ratchet: {args.command} failed: {err.__class__.__name__}: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    for line in report.lines():
        print(line)
    return 0


def _read_recovery_key(args: argparse.Namespace) -> str | None:
    if args.recovery_key_file is not None:
        try:
            text = args.recovery_key_file.read_text()
        except OSError as exc:
            print(f"ratchet: cannot read {args.recovery_key_file}: {exc.strerror or exc}", file=sys.stderr)
            return None
    elif args.recovery_key == "-":
        text = sys.stdin.read()
    else:
        text = args.recovery_key
    if not text.strip():
        print("ratchet: the recovery key is empty", file=sys.stderr)
        return None
    return text.strip()


def _run(config) -> int:
    from bot.runtime.runtime import Runtime

    async def open_and_run() -> None:
        bot = await Runtime.open(config)
        await bot.run()

    try:
        asyncio.run(open_and_run())
    except SessionError as err:
        logging.getLogger("ratchet").error("%s", err)
        print(f"ratchet: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        pass
    return 0
