"""Argument checks shared by the public classes (no imports from the package: every module may use them)."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """An integer, Python's or numpy's (``np.int64(3)``), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
