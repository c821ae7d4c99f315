"""The ``ratchet`` command (also ``python -m bot``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot import __version__

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
        description="Check a report's evidence bundle: its signature and consistency offline; with -c, also that "
        "the signing device is the bot's and cross-signed, and that the event still matches the homeserver's copy.",
    )
    verify_report.add_argument("file", type=Path, help="the evidence-*.json file")
    verify_report.add_argument("-c", "--config", type=Path, help="the bot's config (for the online checks)")

    new = sub.add_parser(
        "new-plugin",
        help="write a working plugin and its test",
        description="Create DIR/NAME/__init__.py (a plugin with a typed command and a config schema) and "
        "DIR/NAME/tests/test_NAME.py (an end-to-end test using Ratchet's test kit).",
    )
    new.add_argument("name", help="plugin name: lowercase letters, digits, underscores")
    new.add_argument("--dir", type=Path, default=Path("plugins"), help="folder to create it in (default: plugins)")

    sub.add_parser(
        "demo",
        help="run a scripted encrypted conversation against a throwaway local Synapse",
        description="Start a temporary Synapse on 127.0.0.1, a bot and a demo user in an encrypted room; the user "
        "sends !ping and the bot answers pong, then everything is shut down.",
    )
    return parser


def _load(path: Path):
    """Load and validate the config and every configured plugin's options; exit 2 with the errors if any."""
    from bot.config import ConfigError, load_config
    from bot.host import check_plugin_options

    try:
        config = load_config(path)
    except ConfigError as err:
        print(f"ratchet: config error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    errors = check_plugin_options(config)
    if errors:
        for error in errors:
            print(f"ratchet: config error: {path}: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return config


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ratchet`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
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
        from bot.verify_report import verify_report

        return asyncio.run(verify_report(args.file, args.config))
    if args.command == "new-plugin":
        from bot.scaffold import ScaffoldError, new_plugin

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
        from bot.demo import run_demo

        return run_demo()
    return EXIT_CONFIG


def _run(config) -> int:
    from bot.runtime import Bot
    from bot.session import SessionError

    bot = Bot(config)
    try:
        asyncio.run(bot.run())
    except SessionError as err:
        logging.getLogger("ratchet").error("%s", err)
        print(f"ratchet: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        pass
    return 0
