"""The code paths issue 20 (target 2) changed, as they were before, for ``python -m bench.looplag run before``."""


def install() -> None:
    """Patch the old code paths back in (nothing changed yet)."""
