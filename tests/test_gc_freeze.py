"""freeze_long_lived (issue 20): start-up's objects leave the full collections but are still freed when unused."""

from __future__ import annotations

import gc
import weakref

from bot.runtime.runtime import freeze_long_lived


class _Thing:
    pass


def test_frozen_objects_are_skipped_by_collections_and_still_freed_by_reference_counting() -> None:
    before = gc.get_freeze_count()
    kept = [_Thing() for _ in range(1000)]
    gone: list[int] = []
    probe = _Thing()
    ref = weakref.ref(probe, lambda _: gone.append(1))
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() >= before + 1000, "start-up's objects are in the permanent generation"
        del probe  # no cycle: reference counting frees it although it is frozen
        assert gone == [1] and ref() is None
        assert len(kept) == 1000
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
