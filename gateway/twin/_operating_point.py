"""From a state estimate to the operating point the power flow and the envelope start from.

Owns :class:`OperatingPoint` and :func:`operating_point`. The estimator reports the power each load *draws* at
its estimated voltage; :class:`~gateway.twin.PowerFlow` (and so :func:`~gateway.twin.certify_envelope`) takes each
load's *nominal* power and applies its voltage dependence (:mod:`gateway.twin._loadmodel`). :func:`operating_point`
undoes that dependence at the estimated voltage (per phase; a three-phase load by the mean of its phases' factors,
which is what the power flow applies to it), so that a power flow at the point draws the estimated powers. It also
finds the source voltage that puts the head bus where the estimate has it (two batched power flows, secant), since
the source of a feeder with a head transformer sits upstream of the meter, unestimated.

The envelope can start from the point in two ways::

    op = operating_point(engine, estimate, row=0, k_sigma=2.0)
    certify_envelope(engine, request, load_p_w=op.load_p_w, load_q_var=op.load_q_var, source_v_pu=op.source_v_pu)
    certify_envelope(PowerFlow(op.feeder()), request)   # every load's interval: its estimate +- k_sigma sigma

The first bounds loads by the request's ``load_bound`` around the estimate; the second by the estimate's own
uncertainty (unmeasured loads as intervals, ARCHITECTURE.md step 1), which is what the estimate supports. An
estimate made without its uncertainty (``EstimateOptions(uncertainty=False)``) gives the point but no intervals:
they are NaN and :meth:`OperatingPoint.feeder` refuses (a load without an interval would silently fall back to
``load_bound``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.twin._errors import ScenarioError
from gateway.twin._estimate import Estimate
from gateway.twin._estimate_pgm import EstimationError
from gateway.twin._feeder import FLOAT, Feeder, Phase
from gateway.twin._flow import PowerFlow
from gateway.twin._loadmodel import classify, coefficients, power_factor
from gateway.twin._pgm import SQRT3

FloatArray = NDArray[np.float64]

#: The source-voltage step of the secant, pu, and the head-voltage tolerance it stops at.
_STEP_PU = 0.01
_TOLERANCE_PU = 1e-7


@dataclass(frozen=True, slots=True, eq=False)
class OperatingPoint:
    """One estimated operating point in the power flow's terms (feeder order).

    ``load_p_w``/``load_q_var`` ``(n_load,)``: nominal powers that draw the estimated ones at the estimated
    voltages. ``load_p_min_w``/``load_p_max_w``: the same for the estimate -+ ``k_sigma`` sigma (an interval);
    NaN when the estimate has no uncertainty (``intervals`` False).
    ``der_p_w``/``der_q_var`` ``(n_der,)``: the estimated DER output. ``source_v_pu``: the source voltage that
    gives the estimated head-bus voltage (``head_v_pu``, the mean of its phases) under all of it.
    """

    feeder_model: Feeder
    load_p_w: FloatArray
    load_q_var: FloatArray
    load_p_min_w: FloatArray
    load_p_max_w: FloatArray
    der_p_w: FloatArray
    der_q_var: FloatArray
    source_v_pu: float
    head_v_pu: float
    k_sigma: float
    intervals: bool = True

    def feeder(self) -> Feeder:
        """The feeder at this point: loads at their nominal powers with the intervals, the source voltage. Raises
        :class:`ScenarioError` when the estimate had no uncertainty to make the intervals of."""
        if not self.intervals:
            raise ScenarioError("the operating point has no load intervals: its estimate was made with "
                                "EstimateOptions(uncertainty=False); estimate with uncertainty=True, or certify "
                                "with load_p_w/load_q_var and the request's load_bound")
        f = self.feeder_model
        loads = dataclasses.replace(f.loads, p_w=self.load_p_w, q_var=self.load_q_var, p_min_w=self.load_p_min_w,
                                    p_max_w=self.load_p_max_w)
        return dataclasses.replace(f, loads=loads, source=dataclasses.replace(f.source, v_pu=self.source_v_pu))


def _factors(feeder: Feeder, v_pu: FloatArray) -> FloatArray:
    """Per load, drawn / nominal power at the bus voltages ``v_pu`` ``(n_bus, 3)`` (see the module docstring)."""
    loads = feeder.loads
    node_base = feeder.buses.u_rated_v[loads.bus] / SQRT3
    load_base = np.where(loads.phase == Phase.ABC, loads.u_rated_v / SQRT3, loads.u_rated_v)
    k = np.where(np.isnan(load_base), 1.0, node_base / load_base)
    v = v_pu[loads.bus] * k[:, None]  # (n_load, 3), pu of each load's rating
    regime = classify(v, loads.vmin_pu[:, None], loads.vmax_pu[:, None], np.nan_to_num(loads.vlow_pu)[:, None])
    table = coefficients(loads)  # (n_load, regimes, 3)
    coef = table[np.arange(len(loads))[:, None], regime]  # (n_load, 3 phases, 3 pieces)
    per_phase = power_factor(coef, v)
    single = loads.phase != Phase.ABC
    factor: FloatArray = per_phase.mean(axis=1)
    factor[single] = per_phase[single, loads.phase[single] - 1]
    return factor


def operating_point(engine: PowerFlow, estimate: Estimate, row: int = 0, *, k_sigma: float = 2.0) -> OperatingPoint:
    """The operating point of scenario ``row`` of ``estimate`` for ``engine``'s feeder (see the module docstring).
    Raises :class:`EstimationError` when that scenario was not estimated."""
    feeder = engine.feeder
    if not 0 <= row < estimate.scenarios:
        raise ScenarioError(f"row: expected 0 <= row < {estimate.scenarios}, got {row}")
    if not (math.isfinite(k_sigma) and k_sigma >= 0):
        raise ScenarioError(f"k_sigma: must be a number >= 0, got {k_sigma!r}")
    if not estimate.converged[row]:
        raise EstimationError(f"scenario {row} was not estimated (the estimator did not solve it)")
    if estimate.v_pu.shape[1] != len(feeder.buses) or estimate.load_p_w.shape[1] != len(feeder.loads):
        raise ScenarioError("the estimate is of another feeder than the engine's")
    v = estimate.v_pu[row]
    factor = _factors(feeder, np.where(np.isfinite(v), v, 1.0))
    p, q = estimate.load_p_w[row], estimate.load_q_var[row]
    spread = k_sigma * estimate.load_p_sigma_w[row]  # NaN without the uncertainty: no intervals (feeder() refuses)
    der_p, der_q = estimate.der_p_w[row], estimate.der_q_var[row]
    head = estimate.head_bus
    target = float(np.mean(v[head]))
    source = _source_voltage(engine, p / factor, q / factor, der_p, der_q, head, target)
    return OperatingPoint(feeder, (p / factor).astype(FLOAT), (q / factor).astype(FLOAT),
                          ((p - spread) / factor).astype(FLOAT), ((p + spread) / factor).astype(FLOAT),
                          der_p.astype(FLOAT), der_q.astype(FLOAT), source, target, float(k_sigma),
                          estimate.uncertainty)


def _source_voltage(engine: PowerFlow, p: FloatArray, q: FloatArray, der_p: FloatArray, der_q: FloatArray,
                    head: int, target: float) -> float:
    """The source voltage whose power flow puts the head bus's mean phase voltage at ``target`` (secant)."""
    v0 = float(engine.feeder.source.v_pu)

    def head_voltage(points: FloatArray) -> FloatArray:
        n = points.size
        res = engine.solve_batch(np.repeat(der_p[None], n, 0), der_q_var=np.repeat(der_q[None], n, 0),
                                 load_p_w=np.repeat(p[None], n, 0), load_q_var=np.repeat(q[None], n, 0),
                                 source_v_pu=points)
        if not res.converged.all():
            raise EstimationError("the power flow at the estimated operating point did not converge")
        result: FloatArray = res.v_pu[:, head, :].mean(axis=1)
        return result

    x = np.array([v0, v0 + _STEP_PU])
    y = head_voltage(x)
    for _ in range(4):
        nxt = x[1] + (target - y[1]) * (x[1] - x[0]) / (y[1] - y[0])
        x, y = np.array([x[1], nxt]), np.array([y[1], head_voltage(np.array([nxt]))[0]])
        if abs(y[1] - target) < _TOLERANCE_PU:
            return float(x[1])
    raise EstimationError(f"no source voltage puts the head bus at {target:.4f} pu")
