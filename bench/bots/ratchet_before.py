"""Ratchet as it was before issue 8, for the benchmarks' before/after figures: ``python -m bot`` with nio's own schema
validation and nio's plain ``SqliteStore`` (``make_client`` otherwise unchanged). Arguments as for ``python -m bot``.
"""

import sys

from nio.store import SqliteStore

import bot.matrix.schemas
import bot.matrix.store

bot.matrix.schemas.install = lambda: None  # keep nio's validate_json
bot.matrix.store.LazySqliteStore = SqliteStore  # make_client imports it by name when it builds the client

from bot.cli.main import main  # noqa: E402

sys.argv[0] = "ratchet"
sys.exit(main())
