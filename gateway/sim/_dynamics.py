"""Shared dynamic primitives of the IEEE 1547 function modules: first-order lag and ramp, pure and dt-exact.

Open-loop response time (IEEE 1547-2018 clause 3.1, "open loop response time"): the time for the output to
reach 90 % of a step change. A first-order lag reaches 90 % after ``tau * ln(10)``, so ``tau = OLRT / ln 10``
(OpenDER models the same with a bilinear filter, EPRI report 3002030962 Eq. 3.12.1-2). Here the lag is
discretised exactly, ``y += (x - y) * (1 - exp(-dt / tau))``, so an uneven update interval changes nothing.
"""

from __future__ import annotations

import math

_LN10 = math.log(10.0)


def lag(y: float | None, x: float, olrt: float, dt: float) -> float:
    """One step of a first-order lag from ``y`` toward ``x`` with open-loop response time ``olrt`` (s).

    ``y is None`` (first call) or ``olrt <= 0`` returns ``x``: the output follows at once.
    """
    if y is None or olrt <= 0.0:
        return x
    if dt <= 0.0:
        return y
    return y + (x - y) * (1.0 - math.exp(-dt * _LN10 / olrt))


def ramp(y: float | None, x: float, full_scale_time: float, dt: float) -> float:
    """One step of a ramp from ``y`` toward ``x`` at 1 per-unit per ``full_scale_time`` seconds.

    ``y is None`` or ``full_scale_time <= 0`` returns ``x``.
    """
    if y is None or full_scale_time <= 0.0:
        return x
    step = max(dt, 0.0) / full_scale_time
    return min(x, y + step) if x >= y else max(x, y - step)
