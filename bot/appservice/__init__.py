"""Appservice mode: Ratchet as a Matrix application service (docs/appservice.md).

Layer: above ``bot.matrix``/``bot.storage``/``bot.e2ee``, below ``bot.plugin`` (plugins reach ghosts through
``self.bot.ghost(...)``) and ``bot.runtime`` (which pumps transactions through the same routing as ``/sync``).

* :mod:`bot.appservice.registration`: tokens, namespaces, the registration file (sans I/O but one file);
* :mod:`bot.appservice.transactions`: auth, parsing, handled ids, transaction -> sync body (sans I/O);
* :mod:`bot.appservice.source`: the transaction-fed :class:`~bot.matrix.sync.EventSource`;
* :mod:`bot.appservice.server`: the endpoints the homeserver calls;
* :mod:`bot.appservice.ghosts`: ghosts acting with ``?user_id=``;
* :mod:`bot.appservice.service`: all of it assembled for the runtime.
"""

from bot.appservice.ghosts import Ghost, Ghosts
from bot.appservice.service import Appservice

__all__ = ["Appservice", "Ghost", "Ghosts"]
