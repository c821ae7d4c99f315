"""``python -m bot`` is the same as the ``ratchet`` command."""

from bot.cli.main import main

raise SystemExit(main())
