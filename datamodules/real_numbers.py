"""Whether a value a user handed us (YAML, JSON, a checkpoint's hyper-parameters) is a real number.

One definition for every reader: ``True`` is an int to Python but never a number here, a numeric
string is not a number, and an integer too large for a float (``1`` and 400 zeros is valid JSON
and YAML) is +-inf rather than the OverflowError ``float()`` raises on it.
"""

from __future__ import annotations

import math
from typing import Any


def real_value(value: Any) -> float | None:
    """``value`` as a float when it is an int or float (not a bool), else None; an integer too
    large for a float is +-inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return -math.inf if value < 0 else math.inf


def finite_real(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (see :func:`real_value`), else None."""
    x = real_value(value)
    return x if x is not None and math.isfinite(x) else None
