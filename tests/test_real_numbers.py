"""One definition of "a real number" for every value a user hands us."""

from __future__ import annotations

import math

import pytest

from datamodules.real_numbers import finite_real, real_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3.0), (-2.5, -2.5), (0, 0.0), (10**400, math.inf), (-(10**400), -math.inf),
     (math.inf, math.inf)],
)  # fmt: skip
def test_real_value_numbers(value: object, expected: float) -> None:
    assert real_value(value) == expected


@pytest.mark.parametrize("value", [True, False, "1", None, [1.0], {"a": 1}, 1j, b"1"])
def test_real_value_refuses_what_is_not_a_number(value: object) -> None:
    assert real_value(value) is None
    assert finite_real(value) is None


def test_nan_is_a_real_value_but_not_finite() -> None:
    assert math.isnan(real_value(math.nan))
    assert finite_real(math.nan) is None
    assert finite_real(10**400) is None and finite_real(-math.inf) is None
    assert finite_real(2**1023) == float(2**1023)
