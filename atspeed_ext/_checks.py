"""Argument checks shared by the public classes (no imports from the package: every module may use them)."""

from __future__ import annotations

import dataclasses
import numbers

import numpy


def is_int(value) -> bool:
    """An integer, Python's or numpy's (``np.int64(3)``), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    """``value`` as a Python int if it is an integer >= 1 (numpy's too); a ValueError naming ``name`` otherwise."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def check_field_types(config) -> None:
    """Refuse a dataclass field whose value is not of its default's kind (bool, int, float or str), naming it:
    a wrong type was silently reinterpreted (``on_policy="no"`` is true) or failed deep inside training. numpy
    numbers and bools become Python ones (they would not serialise to JSON), and so do integral floats given
    for an int (``max_steps=1e4``)."""
    for f in dataclasses.fields(config):
        default, value = f.default, getattr(config, f.name)
        if isinstance(default, bool):
            ok, kind = isinstance(value, (bool, numpy.bool_)), "a bool"
            value = bool(value) if ok else value
        elif isinstance(default, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            ok, kind = is_int(value), "an int"
            value = int(value) if ok else value
        elif isinstance(default, float):
            ok, kind = isinstance(value, numbers.Real) and not isinstance(value, (bool, numpy.bool_)), "a number"
            try:
                value = float(value) if ok else value
            except OverflowError:
                ok = False
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a str"
        else:
            continue
        if not ok:
            raise ValueError(f"{type(config).__name__}.{f.name} must be {kind}, got {value!r}")
        object.__setattr__(config, f.name, value)  # (frozen dataclasses too)
