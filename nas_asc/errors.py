"""Errors for problems with user input.

Every message names the problem, the offending value and the fix. The CLI prints them as one line
and exits non-zero; library users catch them as ``ValueError``.
"""

from __future__ import annotations

__all__ = ["NasAscError", "DatasetError", "SpaceError", "BudgetError"]


class NasAscError(ValueError):
    """Base class for user-facing errors (bad input, missing data, bad configuration)."""


class DatasetError(NasAscError):
    """A dataset root, metadata file or audio file is missing or malformed."""


class SpaceError(NasAscError):
    """A search space YAML is malformed or names unknown dimensions."""


class BudgetError(NasAscError):
    """A budget specification is malformed (unknown preset, non-positive limit)."""
