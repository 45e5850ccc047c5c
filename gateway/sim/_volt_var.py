"""Voltage-reactive power (volt-var) mode, IEEE 1547-2018 clause 5.3.3 (defaults: Table 8, category B).

The reactive power reference is a piecewise-linear function of the applicable voltage through four points
(V1, Q1) .. (V4, Q4), flat outside them; the curve shifts with the reference voltage VRef
(OpenDER Eq. 3.8.1-5 and 3.8.1-6). The output follows the reference with the open-loop response time
``QV_OLRT`` (clause 5.3.3: 1 s .. 90 s, default 5 s). Voltages are per unit of nominal, reactive power per
unit of the DER's nameplate apparent power (as in Table 8 and OpenDER); positive is injection.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from gateway.sim._dynamics import lag


@dataclass(frozen=True, slots=True)
class VoltVarSettings:
    """The standard's volt-var settings (names as in IEEE 1547-2018 Table 8 / the OpenDER common file)."""

    QV_MODE_ENABLE: bool = True
    QV_VREF: float = 1.0
    QV_CURVE_V1: float = 0.92
    QV_CURVE_Q1: float = 0.44
    QV_CURVE_V2: float = 0.98
    QV_CURVE_Q2: float = 0.0
    QV_CURVE_V3: float = 1.02
    QV_CURVE_Q3: float = 0.0
    QV_CURVE_V4: float = 1.08
    QV_CURVE_Q4: float = -0.44
    QV_OLRT: float = 5.0

    def points(self) -> tuple[tuple[float, float], ...]:
        """The curve as (V, Q) pairs, shifted by VRef (Eq. 3.8.1-5)."""
        shift = self.QV_VREF - 1.0
        return (
            (self.QV_CURVE_V1 + shift, self.QV_CURVE_Q1),
            (self.QV_CURVE_V2 + shift, self.QV_CURVE_Q2),
            (self.QV_CURVE_V3 + shift, self.QV_CURVE_Q3),
            (self.QV_CURVE_V4 + shift, self.QV_CURVE_Q4),
        )


@dataclass(frozen=True, slots=True)
class VoltVarInputs:
    """The applicable voltage, per unit of nominal."""

    v_pu: float


@dataclass(frozen=True, slots=True)
class VoltVarState:
    """The filtered reactive power output (``None`` before the first step)."""

    q_pu: float | None = None


def reference(v_pu: float, settings: VoltVarSettings) -> float:
    """The steady-state reactive power for voltage ``v_pu`` (Eq. 3.8.1-6): flat outside V1..V4."""
    pts = settings.points()
    if v_pu <= pts[0][0]:
        return pts[0][1]
    for (v_a, q_a), (v_b, q_b) in itertools.pairwise(pts):
        if v_pu < v_b:
            return q_a if v_b <= v_a else q_a + (v_pu - v_a) / (v_b - v_a) * (q_b - q_a)
    return pts[-1][1]


def step(
    state: VoltVarState, inputs: VoltVarInputs, settings: VoltVarSettings, dt: float
) -> tuple[VoltVarState, float]:
    """Advance by ``dt`` seconds; returns the new state and the reactive power output (pu, + injects).

    Disabled, the output falls to 0 with the same response time (OpenDER resets to 0 on trip, Eq. 3.8.1-8).
    """
    target = reference(inputs.v_pu, settings) if settings.QV_MODE_ENABLE else 0.0
    q = lag(state.q_pu, target, settings.QV_OLRT, dt)
    return VoltVarState(q), q
