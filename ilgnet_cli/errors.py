"""The errors ilgnet raises on purpose. The CLI turns them into one line on stderr:
``UsageError`` exits 2 (the command was given wrong), any other ``IlgnetError`` exits 1
(it could not be done: missing data, a failed download, a corrupt file). Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class IlgnetError(Exception):
    """Something ilgnet could not do, said in one line."""


class UsageError(IlgnetError, ValueError):
    """The request itself is wrong (a bad option value, a conflicting combination)."""


class DataError(IlgnetError):
    """The data needed is missing or unusable (no images, no AVA folder, a stale cache)."""
