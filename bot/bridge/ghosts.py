"""Ghost mode's pure parts: which ghost stands for which remote user, and how its names are derived.

In appservice mode (docs/appservice.md) a bridge posts each remote user's messages as a *ghost*, a Matrix user of the
appservice's namespace (``@irc_alice:example.org``). This module decides, without any I/O:

* the ghost's **localpart** from the remote name (:func:`escape_localpart`): Matrix localparts allow only
  ``a-z 0-9 . _ = - /``, so a name is folded to lower case and every other character is written ``=xx`` per UTF-8
  byte (matrix-appservice-irc's escaping), deterministic and reversible (:func:`unescape_localpart`);
  ``.`` is escaped too, so a ghost a bridge numbers with a ``.N`` suffix never equals a derived one;
* **which remote user has which ghost** (:class:`GhostNames`, one per network): a user keeps their ghost when they
  change their name (IRC ``NICK``: the ghost is renamed, its display name changes, members see the same user), and a
  newcomer whose name derives a ghost that someone renamed still holds gets ``name.2`` (then ``.3``...);
* the ghost's **display name** (:func:`ghost_display_name`);
* what a remote **membership change** does to the ghost (:func:`membership_action`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from bot.bridge.relay_text import sanitize_name

__all__ = [
    "GhostIdentity",
    "GhostNames",
    "MembershipAction",
    "escape_localpart",
    "ghost_display_name",
    "membership_action",
    "unescape_localpart",
]

#: Characters a remote name keeps as they are in a ghost's localpart (after folding to lower case).
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE = re.compile(r"=([0-9a-f]{2})")

MembershipAction = Literal["join", "leave", "kick", "ban", "rename", "sync"]


def escape_localpart(name: str, fold: Callable[[str], str] = str.lower) -> str:
    """The ghost localpart part for the remote ``name``: ``fold(name)`` with every character outside ``a-z 0-9 _ -``
    written as ``=xx`` per UTF-8 byte (``Alice[m]`` -> ``alice=5bm=5d`` with ``str.lower``). Never empty."""
    out = []
    for char in fold(name):
        if char in _KEPT:
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out) or "=00"


def unescape_localpart(localpart: str) -> str:
    """The folded remote name an :func:`escape_localpart` result came from (a ``.N`` suffix is dropped)."""
    base = localpart.split(".", 1)[0]
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(base):
        raw += base[pos:match.start()].encode()
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += base[pos:].encode()
    return raw.decode("utf-8", errors="replace")


def ghost_display_name(template: str, name: str) -> str:
    """The ghost's display name: ``template`` (``{name}``, ``{name} (IRC)``...) with the remote name, one clean line."""
    return sanitize_name(template.format(name=sanitize_name(name)))


def membership_action(kind: str, *, ban: bool = False) -> MembershipAction | None:
    """What a remote event of ``kind`` does to the sender's ghost: ``join`` (IRC JOIN), ``leave`` (PART, QUIT),
    ``kick`` or ``ban`` (KICK; a ban with ``ban``), ``rename`` (NICK), ``sync`` (a channel's member list, IRC NAMES);
    None for anything else (messages, topics)."""
    if kind == "join":
        return "join"
    if kind in ("part", "quit"):
        return "leave"
    if kind == "kick":
        return "ban" if ban else "kick"
    if kind == "nick":
        return "rename"
    if kind == "members":
        return "sync"
    return None


@dataclass(frozen=True)
class GhostIdentity:
    """Who posts a remote message in ghost mode: the ghost's ``localpart`` (after the appservice's ``ghost_prefix``),
    its ``display_name`` and optional ``avatar_url`` (``mxc://``). ``relay_name`` keeps the relay's ``**name**:``
    prefix in the text (a ghost that posts for several people, e.g. a webhook relaying who pushed)."""

    localpart: str
    display_name: str
    avatar_url: str | None = None
    relay_name: bool = False


class GhostNames:
    """Remote user -> ghost localpart, for one network (see the module docstring).

    ``key`` folds a remote name to its identity (IRC: case-insensitive), ``derive`` turns a folded name into a
    localpart. Entries are added by :meth:`ghost_for`, moved by :meth:`rename` and dropped by :meth:`forget`; beyond
    ``capacity`` the least recently used entry is dropped (its user gets the derived ghost again next time).
    """

    def __init__(
        self,
        derive: Callable[[str], str],
        key: Callable[[str], str] = str.casefold,
        capacity: int = 50_000,
    ) -> None:
        self._derive = derive
        self._key = key
        self.capacity = capacity
        #: folded remote name -> localpart
        self._by_name: OrderedDict[str, str] = OrderedDict()
        #: localpart -> the remote name (as last seen) that holds it
        self._holder: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def load(self, entries: Iterable[tuple[str, str]]) -> None:
        """Restore ``(remote name, localpart)`` entries (from storage)."""
        for name, localpart in entries:
            self._set(name, localpart)

    def _set(self, name: str, localpart: str) -> None:
        folded = self._key(name)
        old = self._by_name.pop(folded, None)
        if old is not None and self._key(self._holder.get(old, "")) == folded:
            del self._holder[old]
        self._by_name[folded] = localpart
        self._holder[localpart] = name
        while len(self._by_name) > self.capacity:
            oldest, part = next(iter(self._by_name.items()))
            del self._by_name[oldest]
            if self._key(self._holder.get(part, "")) == oldest:
                del self._holder[part]

    def lookup(self, name: str) -> str | None:
        """The localpart ``name`` holds now, or None if it has none yet."""
        return self._by_name.get(self._key(name))

    def holder(self, localpart: str) -> str | None:
        """The remote name that holds ``localpart`` now (its current name, after renames), or None."""
        return self._holder.get(localpart)

    def _free(self, folded: str) -> str:
        base = self._derive(folded)
        candidate, n = base, 1
        while candidate in self._holder and self._key(self._holder[candidate]) != folded:
            n += 1
            candidate = f"{base}.{n}"
        return candidate

    def ghost_for(self, name: str) -> tuple[str, bool]:
        """The localpart of ``name``'s ghost, and whether this is a new entry (to store)."""
        folded = self._key(name)
        found = self._by_name.get(folded)
        if found is not None:
            self._by_name.move_to_end(folded)
            self._holder[found] = name
            return found, False
        localpart = self._free(folded)
        self._set(name, localpart)
        return localpart, True

    def rename(self, old: str, new: str) -> str | None:
        """``old`` is now called ``new`` and keeps their ghost; returns its localpart, or None if ``old`` had no
        ghost (nothing to rename; ``new`` gets one when first needed). Renaming twice is harmless."""
        folded_old, folded_new = self._key(old), self._key(new)
        localpart = self._by_name.get(folded_old)
        if localpart is None:
            return None
        if folded_old == folded_new:  # a change of case only
            self._holder[localpart] = new
            return localpart
        del self._by_name[folded_old]
        displaced = self._by_name.pop(folded_new, None)  # a stale entry of someone gone
        if displaced is not None and self._key(self._holder.get(displaced, "")) == folded_new:
            del self._holder[displaced]
        self._set(new, localpart)
        return localpart

    def forget(self, name: str) -> str | None:
        """``name`` left the network: their ghost is free again. Returns its localpart (None if they had none)."""
        folded = self._key(name)
        localpart = self._by_name.pop(folded, None)
        if localpart is not None and self._key(self._holder.get(localpart, "")) == folded:
            del self._holder[localpart]
        return localpart
