"""The IEEE 1547 function modules and the dynamic primitives, table-tested, and held to EPRI's OpenDER."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.sim import _active_power_limit as apl
from gateway.sim import _storage as storage
from gateway.sim import _volt_var as vv
from gateway.sim._dynamics import lag, ramp
from gateway.sim._profiles import clear_sky, household_load

CAT_B = vv.VoltVarSettings()


@pytest.mark.parametrize(
    ("v_pu", "q_pu"),
    [
        (0.80, 0.44), (0.92, 0.44), (0.95, 0.22), (0.98, 0.0), (1.00, 0.0), (1.02, 0.0), (1.05, -0.22),
        (1.08, -0.44), (1.20, -0.44),
    ],
)
def test_volt_var_reference_category_b(v_pu: float, q_pu: float) -> None:
    assert vv.reference(v_pu, CAT_B) == pytest.approx(q_pu, abs=1e-9)


@pytest.mark.parametrize(
    ("vref", "v_pu", "q_pu"),
    [(1.02, 1.04, 0.0), (1.02, 1.07, -0.22), (0.98, 0.93, 0.22)],
)
def test_volt_var_curve_shifts_with_vref(vref: float, v_pu: float, q_pu: float) -> None:
    settings = vv.VoltVarSettings(QV_VREF=vref)
    assert vv.reference(v_pu, settings) == pytest.approx(q_pu, abs=1e-9)


@pytest.mark.parametrize(
    ("olrt", "t", "fraction"),
    [(5.0, 5.0, 0.9), (5.0, 10.0, 0.99), (10.0, 5.0, 1 - 10**-0.5), (1.0, 3.0, 0.999)],
)
def test_volt_var_open_loop_response_time(olrt: float, t: float, fraction: float) -> None:
    """A step from 1.0 to 1.05 pu: the output reaches 90 % of its change after QV_OLRT."""
    settings = vv.VoltVarSettings(QV_OLRT=olrt)
    state, q0 = vv.step(vv.VoltVarState(), vv.VoltVarInputs(1.0), settings, 0.1)
    assert q0 == 0.0
    steps = round(t / 0.1)
    q = q0
    for _ in range(steps):
        state, q = vv.step(state, vv.VoltVarInputs(1.05), settings, 0.1)
    assert q / -0.22 == pytest.approx(fraction, abs=1e-6)


def test_volt_var_uneven_steps_agree() -> None:
    settings = vv.VoltVarSettings(QV_OLRT=5.0)
    a = vv.VoltVarState(0.0)
    for _ in range(50):
        a, qa = vv.step(a, vv.VoltVarInputs(1.06), settings, 0.1)
    b, qb = vv.step(vv.VoltVarState(0.0), vv.VoltVarInputs(1.06), settings, 2.0)
    b, qb = vv.step(b, vv.VoltVarInputs(1.06), settings, 3.0)
    assert qa == pytest.approx(qb, rel=1e-9)


def test_volt_var_disabled_returns_to_zero() -> None:
    settings = vv.VoltVarSettings(QV_MODE_ENABLE=False, QV_OLRT=1.0)
    _, q = vv.step(vv.VoltVarState(-0.3), vv.VoltVarInputs(1.1), settings, 10.0)
    assert q == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("enable", "limit", "avail", "expected"),
    [
        (False, 0.5, 0.8, 0.8), (True, 0.5, 0.8, 0.5), (True, 0.5, 0.3, 0.3), (True, 0.0, 1.0, 0.0),
        (True, 1.5, 0.9, 0.9), (True, -0.2, 0.9, 0.0), (False, 0.0, 1.2, 1.0),
    ],
)
def test_active_power_limit_table(enable: bool, limit: float, avail: float, expected: float) -> None:
    settings = apl.ActivePowerLimitSettings(AP_LIMIT_ENABLE=enable, AP_LIMIT=limit)
    _, p = apl.step(apl.ActivePowerLimitState(), apl.ActivePowerLimitInputs(min(avail, 1.0)), settings, 1.0)
    assert p == pytest.approx(expected)


def test_active_power_limit_response_time() -> None:
    """With AP_RT = 10 s, a limit from 1.0 to 0.5 is reached after 5 s (full scale per AP_RT) and held."""
    settings = apl.ActivePowerLimitSettings(AP_LIMIT_ENABLE=True, AP_LIMIT=0.5, AP_RT=10.0)
    state = apl.ActivePowerLimitState(1.0)
    outputs = []
    for _ in range(8):
        state, p = apl.step(state, apl.ActivePowerLimitInputs(1.0), settings, 1.0)
        outputs.append(round(p, 6))
    assert outputs == [0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("y", "x", "t", "dt", "expected"),
    [(None, 3.0, 5.0, 1.0, 3.0), (0.0, 1.0, 0.0, 1.0, 1.0), (0.0, 1.0, 5.0, 0.0, 0.0), (0.0, 1.0, 5.0, 5.0, 0.9)],
)
def test_lag(y: float | None, x: float, t: float, dt: float, expected: float) -> None:
    assert lag(y, x, t, dt) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("y", "x", "t", "dt", "expected"),
    [(None, 0.3, 5.0, 1.0, 0.3), (1.0, 0.0, 10.0, 1.0, 0.9), (0.0, 1.0, 10.0, 20.0, 1.0), (0.5, 0.2, 0.0, 1.0, 0.2)],
)
def test_ramp(y: float | None, x: float, t: float, dt: float, expected: float) -> None:
    assert ramp(y, x, t, dt) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("soc", "cmd", "dt", "soc_after", "delivered"),
    [
        (50.0, 1000.0, 3600.0, 50.0 - 1000 / 0.95 / 10000 * 100, 1000.0),  # discharge 1 kWh
        (50.0, -1000.0, 3600.0, 50.0 + 950 / 10000 * 100, -1000.0),  # charge 1 kWh, 95 % stored
        (10.0, 1000.0, 60.0, 10.0, 0.0),  # at the reserve: nothing more
        (100.0, -1000.0, 60.0, 100.0, 0.0),  # full
        (50.0, 9000.0, 1.0, None, 5000.0),  # clipped to the rate limit
    ],
)
def test_storage(soc: float, cmd: float, dt: float, soc_after: float | None, delivered: float) -> None:
    state, p = storage.step(storage.StorageState(soc), storage.StorageInputs(cmd), storage.StorageSettings(), dt)
    assert p == pytest.approx(delivered)
    if soc_after is not None:
        assert state.soc_pct == pytest.approx(soc_after)


@pytest.mark.parametrize(("hour", "expected"), [(0.0, 0.0), (6.0, 0.0), (12.0, 1.0), (18.0, 0.0), (36.0, 1.0)])
def test_clear_sky(hour: float, expected: float) -> None:
    assert clear_sky(hour) == pytest.approx(expected)


def test_clear_sky_is_a_symmetric_bell() -> None:
    assert clear_sky(9.0) == pytest.approx(clear_sky(15.0))
    assert 0 < clear_sky(7.0) < clear_sky(9.0) < clear_sky(11.0) < 1


def test_household_load_peaks_in_the_evening() -> None:
    assert household_load(19.0) > household_load(7.5) > household_load(3.0) > 0


# -- OpenDER as the reference: the same settings must give the same steady state ---------------------------

opender = pytest.importorskip("opender")


def _opender_der(**settings: object) -> Any:
    der = opender.DER_PV(NP_VA_MAX=5000, NP_P_MAX=5000, NP_Q_MAX_INJ=2200, NP_Q_MAX_ABS=2200,
                         NP_AC_V_NOM=240, **settings)
    opender.DER.t_s = 100000  # a snapshot: filters settle in one step
    return der


@pytest.mark.parametrize("v_pu", [0.90, 0.94, 0.97, 1.0, 1.03, 1.05, 1.07, 1.085])  # 1.10 pu trips (OV1)
def test_volt_var_matches_opender(v_pu: float) -> None:
    der = _opender_der(QV_MODE_ENABLE=True)
    der.update_der_input(p_dc_pu=0.5, v_pu=v_pu, f=60)
    _, q_var = der.run()
    ours = vv.reference(v_pu, vv.VoltVarSettings())
    assert ours * 5000 == pytest.approx(q_var, abs=1e-6)


@pytest.mark.parametrize(("limit", "avail"), [(0.6, 1.0), (0.6, 0.4), (0.25, 0.8), (1.0, 0.7)])
def test_active_power_limit_matches_opender(limit: float, avail: float) -> None:
    der = _opender_der(AP_LIMIT_ENABLE=True, AP_LIMIT=limit)
    der.update_der_input(p_dc_pu=avail, v_pu=1.0, f=60)
    p_w, _ = der.run()
    settings = apl.ActivePowerLimitSettings(AP_LIMIT_ENABLE=True, AP_LIMIT=limit)
    _, ours = apl.step(apl.ActivePowerLimitState(), apl.ActivePowerLimitInputs(avail), settings, 1.0)
    assert ours * 5000 == pytest.approx(p_w, abs=1e-6)
    assert not math.isnan(p_w)
