"""Pytest plugin of Ratchet's test kit (registered through the ``pytest11`` entry point)."""
