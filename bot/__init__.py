"""Ratchet: a framework for Matrix bots and bridges that live in end-to-end-encrypted rooms.

Everything a plugin or bridge may use is exported here; the rest of the package is internal.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
