"""Clamping to bounds: the most restrictive bound on the value's side wins and is named; table-tested."""

from __future__ import annotations

import math

import pytest

from gateway.dispatch import Bound, clamp

CUSTOMER = Bound("customer", 5000, 0)
ENVELOPE = Bound("envelope", 3000, 2000)
DEFAULT = Bound("default-envelope", 1500, 1500)
BATTERY = Bound("customer", 3000, 3000)


@pytest.mark.parametrize(
    ("value", "bounds", "w", "binding"),
    [
        (2000, [CUSTOMER, ENVELOPE], 2000, None),  # inside everything
        (4000, [CUSTOMER, ENVELOPE], 3000, "envelope-export"),  # the envelope is tighter than the customer
        (9000, [CUSTOMER, Bound("envelope", 6000, 0)], 5000, "customer-export"),  # the customer limit is tighter
        (-500, [CUSTOMER, ENVELOPE], 0, "customer-import"),  # the customer may not import at all
        (-2500, [BATTERY, ENVELOPE], -2000, "envelope-import"),
        (-2500, [BATTERY, DEFAULT], -1500, "default-envelope-import"),
        (5000, [Bound("customer", 3000, 0), Bound("envelope", 3000, 0)], 3000, "customer-export"),  # tie: first
        (0, [CUSTOMER, ENVELOPE], 0, None),
        (1234.5, [], 1234.5, None),  # nothing binds
    ],
)
def test_clamp_table(value: float, bounds: list[Bound], w: float, binding: str | None) -> None:
    out = clamp(value, bounds)
    assert (out.w, out.binding) == (w, binding)
    assert math.copysign(1, out.w) == (1 if w >= 0 else -1)  # never -0.0


def test_tightest_limits_are_reported() -> None:
    out = clamp(100, [BATTERY, ENVELOPE, DEFAULT])
    assert (out.export_w, out.import_w) == (1500, 1500)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        clamp(bad, [CUSTOMER])


@pytest.mark.parametrize(("export_w", "import_w"), [(-1, 0), (0, math.nan), (math.inf, 0)])
def test_a_bound_is_a_finite_magnitude(export_w: float, import_w: float) -> None:
    with pytest.raises(ValueError, match="magnitude"):
        Bound("customer", export_w, import_w)
