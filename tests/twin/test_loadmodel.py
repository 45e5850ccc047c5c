"""OpenDSS load voltage dependence: the coefficient table, regime boundaries and continuity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.twin import LoadModel, Loads, Regime
from gateway.twin._loadmodel import classify, coefficients, power_factor
from tests.twin._data import opendss_factor


def one_load(model: LoadModel, vmin: float = 0.95, vmax: float = 1.05, vlow: float = 0.5) -> Loads:
    return Loads.create(name=["x"], bus=[0], p_w=[1.0], model=[model], vmin_pu=[vmin], vmax_pu=[vmax], vlow_pu=[vlow])


@pytest.mark.parametrize(("v", "regime"), [
    (1.0, Regime.BAND), (1.05, Regime.BAND), (1.0501, Regime.HIGH), (0.9501, Regime.BAND), (0.95, Regime.LOW),
    (0.6, Regime.LOW), (0.5, Regime.ZLOW), (0.1, Regime.ZLOW),
])
def test_regimes_follow_opendss_order_and_edges(v: float, regime: Regime) -> None:
    ld = one_load(LoadModel.PQ)
    assert classify(np.array([v]), ld.vmin_pu, ld.vmax_pu, ld.vlow_pu)[0] == regime


def test_absent_band_edges_never_switch() -> None:
    ld = Loads.create(name=["x"], bus=[0], p_w=[1.0])
    v = np.array([0.0001, 0.3, 1.0, 2.0])
    assert (classify(v, ld.vmin_pu, ld.vmax_pu, np.nan_to_num(ld.vlow_pu)) == Regime.BAND).all()
    table = coefficients(ld)
    assert (table == table[:, :1]).all()  # one piece: constant power everywhere


@pytest.mark.parametrize(("model", "v", "expected"), [
    (LoadModel.PQ, 1.0, 1.0), (LoadModel.PQ, 1.1, 1.1**2 / 1.05**2), (LoadModel.PQ, 0.4, 0.16),
    (LoadModel.I, 1.0, 1.0), (LoadModel.I, 0.97, 0.97), (LoadModel.I, 1.1, 1.1**2 / 1.05),
    (LoadModel.Z, 0.9, 0.81), (LoadModel.Z, 1.1, 1.21),
])
def test_power_drawn_at_a_voltage(model: LoadModel, v: float, expected: float) -> None:
    ld = one_load(model)
    regime = classify(np.array([v]), ld.vmin_pu, ld.vmax_pu, ld.vlow_pu)
    assert power_factor(coefficients(ld)[0, regime[0]], np.array(v)) == pytest.approx(expected, rel=1e-12)


@given(model=st.sampled_from([LoadModel.PQ, LoadModel.I, LoadModel.Z]),
       vlow=st.floats(0.0, 0.6), width=st.floats(0.05, 0.5), vmax=st.floats(1.0, 1.3), v=st.floats(0.01, 1.6))
def test_the_table_is_opendss_and_continuous(model: LoadModel, vlow: float, width: float, vmax: float,
                                             v: float) -> None:
    vmin = min(vlow + width, 0.99)
    ld = one_load(model, vmin, vmax, vlow)
    table = coefficients(ld)[0]

    def drawn(x: float) -> float:
        return float(power_factor(table[classify(np.array([x]), ld.vmin_pu, ld.vmax_pu, ld.vlow_pu)[0]],
                                  np.array(x)))

    assert drawn(v) == pytest.approx(opendss_factor(model, v, vmin, vmax, vlow), rel=1e-9, abs=1e-12)
    for edge in (vlow, vmin, vmax):
        if edge > 0:
            assert drawn(edge * (1 - 1e-9)) == pytest.approx(drawn(edge * (1 + 1e-9)), rel=1e-6, abs=1e-9)
