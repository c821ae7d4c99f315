"""``ratchet appservice registration -c CONFIG [-o FILE]``: write the registration file the homeserver loads.

The tokens come from the config (``appservice.as_token``/``hs_token``, e.g. ``${VAR}``) or from
``appservice.tokens_file`` (default ``data_dir/appservice-tokens.json``), which is created with fresh random tokens
the first time (mode 0600) and reused afterwards: running the command again rewrites the same registration, and the
bot reads the same tokens when it runs. The file written holds the tokens: it is created with mode 0600 and never
printed unless ``-o -`` asks for standard output.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.errors import ConfigError

__all__ = ["add_parsers", "run"]

DESCRIPTION = (
    "Write the appservice registration YAML for the homeserver (app_service_config_files in Synapse's "
    "homeserver.yaml) from the config's appservice section. Tokens come from the config, or are generated once into "
    "appservice.tokens_file (default DATA_DIR/appservice-tokens.json, mode 0600) and reused. See docs/appservice.md."
)


def add_parsers(sub: Any) -> None:
    """Add ``appservice registration`` to the ``ratchet`` subcommands."""
    parser = sub.add_parser("appservice", help="appservice mode: the registration file", description=DESCRIPTION)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    reg = actions.add_parser("registration", help="write the registration YAML", description=DESCRIPTION)
    reg.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config")
    reg.add_argument(
        "-o", "--output", default="registration.yaml", metavar="FILE",
        help="where to write it (default: registration.yaml; '-' for standard output); written with mode 0600",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """``ratchet appservice ACTION`` with the loaded ``config``; returns the exit code."""
    from bot.appservice.registration import build_registration, registration_yaml, resolve_tokens

    if config.appservice is None:
        print(
            f"ratchet: config error: {config.source}: the config has no appservice section (docs/appservice.md)",
            file=sys.stderr,
        )
        return 2
    try:
        tokens = resolve_tokens(config, create=True)
    except ConfigError as err:
        print(f"ratchet: config error: {err}", file=sys.stderr)
        return 2
    except OSError as exc:
        path = config.appservice.tokens_path(config.data_dir)
        print(f"ratchet: cannot write the tokens file {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    assert tokens is not None
    text = registration_yaml(build_registration(config, tokens))
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    try:
        _write_private(out, text)
    except OSError as exc:
        print(f"ratchet: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    where = "the config" if config.appservice.as_token else str(config.appservice.tokens_path(config.data_dir))
    print(
        f"wrote {out} (appservice {config.appservice.id}, tokens from {where}). Add it to app_service_config_files "
        "in homeserver.yaml and restart the homeserver; then `ratchet run -c CONFIG`."
    )
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (an existing file is replaced and made 0600 too)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
