"""OpenDSS load voltage dependence, as piecewise ZIP coefficients over voltage regimes.

Owns the mapping from a load's model and its OpenDSS voltage band to the power it draws at a voltage
(``Load.pas``, ``DoConstantPQLoad``/``DoConstantILoad``/``DoConstantZLoad``, dss_capi Version8). With ``v`` the
load's terminal voltage in pu of its own rating (:class:`gateway.twin.Loads` ``u_rated_v``) and ``S`` its
nominal power, the drawn power is ``S * (a_pq + a_i * v + a_z * v**2)`` with the coefficients of its regime:

=============  ===================  ================================  ============================
regime         where                model 1 (PQ)                      model 5 (I)
=============  ===================  ================================  ============================
``BAND``       vmin < v <= vmax     ``a_pq = 1``                      ``a_i = 1``
``HIGH``       v > vmax             ``a_z = 1 / vmax**2`` (Yeq105)    ``a_z = 1 / vmax`` (Yeq105I)
``LOW``        vlow < v <= vmin     current falls linearly from its   the same, from 1 at vmin to
                                    value at vmin to ``vlow`` at vlow ``vlow`` at vlow
``ZLOW``       v <= vlow            ``a_z = 1`` (Yeq)                 ``a_z = 1``
=============  ===================  ================================  ============================

Model 2 (Z) is ``a_z = 1`` everywhere. In ``LOW`` the current magnitude is ``vlow + m * (v - vlow)`` (pu of
``S / V_rated``) with ``m = (1/vmin - vlow) / (vmin - vlow)`` (PQ) or ``(1 - vlow) / (vmin - vlow)`` (I), i.e.
``a_i = vlow * (1 - m)``, ``a_z = m`` (OpenDSS ``InterpolateY95_YLow``, ``M95``). Every piece meets its
neighbour, so power is continuous in ``v``. A NaN band edge means "no edge" (``vlow`` NaN acts as 0, which
makes ``LOW`` the constant impedance ``Yeq95`` of older OpenDSS versions).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from gateway.twin._feeder import CODE, FLOAT, LoadModel, Loads


class Regime(IntEnum):
    """Which piece of a load's voltage characteristic applies."""

    BAND = 0
    HIGH = 1
    LOW = 2
    ZLOW = 3


def classify(v_pu: NDArray[np.float64], vmin_pu: NDArray[np.float64], vmax_pu: NDArray[np.float64],
             vlow_pu: NDArray[np.float64]) -> NDArray[np.int8]:
    """The regime at ``v_pu`` (pu of the load rating); band edges broadcast against it, NaN = no edge.

    The order of the tests is OpenDSS's: ``v <= vlow`` first, then ``v <= vmin``, then ``v > vmax``. Give
    ``vlow_pu`` with NaN replaced by 0.
    """
    regime = np.zeros(np.shape(v_pu), dtype=CODE)
    regime[v_pu > vmax_pu] = Regime.HIGH
    regime[v_pu <= vmin_pu] = Regime.LOW
    regime[v_pu <= vlow_pu] = Regime.ZLOW
    return regime


def coefficients(loads: Loads) -> NDArray[np.float64]:
    """``(n_load, 4 regimes, 3)`` table of ``(a_pq, a_i, a_z)`` per load and :class:`Regime`."""
    n = len(loads)
    table = np.zeros((n, len(Regime), 3), dtype=FLOAT)
    model = loads.model
    vmin, vmax = loads.vmin_pu, loads.vmax_pu
    vlow = np.nan_to_num(loads.vlow_pu, nan=0.0)
    pq, cur = model == LoadModel.PQ, model == LoadModel.I
    table[:, Regime.ZLOW, 2] = 1.0
    table[model == LoadModel.Z, :, 2] = 1.0
    table[pq, Regime.BAND, 0] = 1.0
    table[cur, Regime.BAND, 1] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        high = np.where(pq, 1.0 / vmax**2, 1.0 / vmax)
        at_vmin = np.where(pq, 1.0 / vmin, 1.0)  # current at vmin, pu of S / V_rated
        slope = (at_vmin - vlow) / (vmin - vlow)
    banded = pq | cur
    usable_high = banded & np.isfinite(high)
    table[usable_high, Regime.HIGH, 2] = high[usable_high]
    usable_low = banded & np.isfinite(slope)
    table[usable_low, Regime.LOW, 1] = vlow[usable_low] * (1.0 - slope[usable_low])
    table[usable_low, Regime.LOW, 2] = slope[usable_low]
    # A regime :func:`classify` cannot reach (its band edge is absent) repeats BAND, so a load with no band
    # has one piece only, and the engine neither gives it PGM loads it cannot use nor re-classifies it.
    reachable = np.stack([np.ones(n, dtype=bool), np.isfinite(vmax), np.isfinite(vmin) & (vmin > vlow), vlow > 0],
                         axis=1)
    table[~reachable] = np.broadcast_to(table[:, Regime.BAND:Regime.BAND + 1, :], table.shape)[~reachable]
    return table


def power_factor(coef: NDArray[np.float64], v_pu: NDArray[np.float64]) -> NDArray[np.float64]:
    """``a_pq + a_i v + a_z v**2``: the fraction of nominal power drawn at ``v_pu`` (``coef[..., 3]``)."""
    result: NDArray[np.float64] = coef[..., 0] + v_pu * (coef[..., 1] + v_pu * coef[..., 2])
    return result
