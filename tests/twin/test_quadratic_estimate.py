"""The envelope's first estimate (gateway.twin._sensitivity.quadratic_step) and what it buys: each quantity fitted
by a quadratic in a power of itself finds the crossing exactly when that power of it is quadratic in the level;
on the Baran-Wu feeder it lands close enough that a typical envelope is two AC batches (the finite-difference one
and one pair of levels per direction), and still the AC truth to ``rtol``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.twin import (
    Criteria,
    EnvelopeRequest,
    Feeder,
    Policy,
    PowerFlow,
    certify_envelope,
    from_pandapower,
    with_ders,
)
from gateway.twin._sensitivity import linear_step, quadratic_step
from tests.twin._data import needs
from tests.twin._oracle import Rules, assert_matches_truth


def _through(z0: float, b: float, a: float, levels: np.ndarray, power: float) -> np.ndarray:
    """Quantities ``(3,)`` whose ``power`` is ``z0 + b t + a t**2`` at ``levels``."""
    result: np.ndarray = (z0 + b * levels + a * levels**2) ** (1.0 / power)
    return result


@pytest.mark.parametrize("power", [1.0, 2.0, 4.0])
def test_a_quadratic_in_the_fitted_power_is_found_exactly(power: float) -> None:
    levels = np.array([0.0, 1.0, 2.0])
    rising = _through(1.0, 0.05, 0.004, levels, power)  # reaches 1.21**(1/power) at t = 3.32
    falling = _through(1.0, -0.03, -0.002, levels, power)  # reaches 0.9**(1/power) first, at t = 2.81
    x = np.stack([rising, falling], axis=1)[None]  # (1, 3, 2)
    upper = np.array([1.21 ** (1 / power), 5.0])
    lower = np.array([0.0, 0.9 ** (1 / power)])
    got = quadratic_step(levels[None], x, lower, upper, np.full(2, power))
    roots = [(-0.05 + np.sqrt(0.05**2 + 4 * 0.004 * 0.21)) / (2 * 0.004),
             (-0.03 + np.sqrt(0.03**2 + 4 * 0.002 * 0.1)) / (2 * 0.002)]  # 0.002 t^2 + 0.03 t - 0.1 = 0
    assert got[0] == pytest.approx(min(roots), rel=1e-9)


def test_it_starts_from_the_first_level_given_and_reports_past_and_never() -> None:
    levels = np.array([[10.0, 11.0, 9.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    x = np.array([[[1.0], [1.1], [0.9]],  # linear: 0.1 per unit from t = 10; the limit 1.25 at t = 12.5
                  [[1.3], [1.4], [1.5]],  # already above 1.25 at the first level
                  [[1.0], [1.0], [1.0]]])  # flat: never
    got = quadratic_step(levels, x, np.array([0.5]), np.array([1.25]), np.ones(1))
    np.testing.assert_allclose(got, [12.5, 0.0, np.inf])


def test_nan_quantities_never_bind() -> None:
    levels = np.array([[0.0, 1.0, 2.0]])
    x = np.array([[[np.nan, 1.0], [np.nan, 1.1], [np.nan, 1.2]]])
    got = quadratic_step(levels, x, np.array([-np.inf, 0.0]), np.array([1.0, 1.5]), np.array([2.0, 1.0]))
    assert got[0] == pytest.approx(5.0)


@pytest.fixture(scope="module")
def baran_wu_ten_ders() -> Feeder:
    """The benchmark's case: case33bw at 1.03 pu, ten 300 kW DERs along the feeder."""
    pn = needs("pandapower.networks")
    feeder = from_pandapower(pn.case33bw())
    feeder = dataclasses.replace(feeder, source=dataclasses.replace(feeder.source, v_pu=1.03))
    buses = np.array([3, 6, 9, 12, 16, 19, 22, 25, 29, 32])
    return with_ders(feeder, [f"pv{b}" for b in buses], buses, rating_w=np.full(10, 300e3))


def test_the_quadratic_estimate_is_far_closer_than_the_linear_one(baran_wu_ten_ders: Feeder) -> None:
    """From the same three solves (0, s, 2s), voltages to the 4th power against the quantities themselves."""
    engine = PowerFlow(baran_wu_ten_ders)
    result = certify_envelope(engine, EnvelopeRequest(criteria=Criteria(vmin_pu=0.90, vmax_pu=1.05)))
    truth = result.export_w.max()  # within rtol (0.2 %) below the AC limit
    rating = baran_wu_ten_ders.ders.rating_w
    step = 0.02 * 1.2 * baran_wu_ten_ders.loads.p_w.sum() / rating.size  # the envelope's step
    levels = np.array([0.0, step, 2 * step])
    loads = baran_wu_ten_ders.loads  # export: every load at the low end of the default bound, 20 %
    res = engine.solve_batch(np.minimum(levels[:, None], rating), load_p_w=np.tile(0.2 * loads.p_w, (3, 1)),
                             load_q_var=np.tile(0.2 * loads.q_var, (3, 1)))
    v = res.v_pu[:, :, 0]
    lower, upper = np.full(v.shape[1], 0.902), np.full(v.shape[1], 1.048)
    fitted = quadratic_step(levels[None], v[None], lower, upper, np.full(v.shape[1], 4.0))[0]
    plain = quadratic_step(levels[None], v[None], lower, upper, np.ones(v.shape[1]))[0]
    linear = linear_step(v[:1], v[1:2], np.array([step]), lower, upper)[0][0]
    assert abs(fitted / truth - 1) < 0.003
    assert abs(fitted / truth - 1) < abs(plain / truth - 1) < abs(linear / truth - 1)
    assert abs(linear / truth - 1) > 0.02


@pytest.mark.parametrize("policy", [Policy.EQUAL, Policy.PROPORTIONAL])
def test_a_typical_envelope_is_two_batches_and_the_truth(baran_wu_ten_ders: Feeder, policy: Policy) -> None:
    engine = PowerFlow(baran_wu_ten_ders)
    criteria = Criteria(vmin_pu=0.90, vmax_pu=1.05)
    result = certify_envelope(engine, EnvelopeRequest(policy=policy, criteria=criteria))
    assert result.certified
    assert result.certificate.batches == 2  # the finite-difference batch, then one pair per direction
    assert result.certificate.ac_solves == 10
    loads = baran_wu_ten_ders.loads
    assert_matches_truth(engine, result, policy, loads.p_w, loads.q_var, None, Rules(vmin_pu=0.90, vmax_pu=1.05))
