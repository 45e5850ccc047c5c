"""From an estimate to the operating point the power flow and the envelope start from."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.twin import (
    EnvelopeRequest,
    EstimateOptions,
    EstimationError,
    Feeder,
    FlowResult,
    Measurements,
    PowerFlow,
    Reading,
    ScenarioError,
    StateEstimator,
    certify_envelope,
    load_priors,
    operating_point,
)
from tests.twin._data import small_feeder


def measure(feeder: Feeder, engine: PowerFlow, sigma: float, seed: int) -> tuple[Measurements, dict[str, np.ndarray],
                                                                             FlowResult]:
    """A true state solved by ``engine`` (loads drawn around nominal, DERs at random output) and noisy readings of
    every DER and the head bus voltages (relative sigma ``sigma``; no head P/Q: FlowResult has the source's, which
    sits upstream of the head transformer)."""
    rng = np.random.default_rng(seed)
    truth = {
        "der_p_w": rng.uniform(0, 1, (1, len(feeder.ders))) * feeder.ders.rating_w,
        "der_q_var": rng.uniform(-0.1, 0.1, (1, len(feeder.ders))) * feeder.ders.rating_w,
        "load_p_w": feeder.loads.p_w * rng.uniform(0.7, 1.3, (1, len(feeder.loads))),
        "load_q_var": feeder.loads.q_var * rng.uniform(0.7, 1.3, (1, len(feeder.loads))),
        "source_v_pu": np.array([1.02]),
    }
    res = engine.solve_batch(truth["der_p_w"], der_q_var=truth["der_q_var"], load_p_w=truth["load_p_w"],
                             load_q_var=truth["load_q_var"], source_v_pu=truth["source_v_pu"])
    s_pq = sigma * feeder.ders.rating_w + 1.0
    head = 1  # the transformer's secondary
    m = Measurements.create(
        feeder, der_p=(truth["der_p_w"] + rng.normal(size=(1, 3)) * s_pq, s_pq[None, :]),
        der_q=(truth["der_q_var"] + rng.normal(size=(1, 3)) * s_pq, s_pq[None, :]),
        head_v=(res.v_pu[:, head, :] + rng.normal(size=(1, 3)) * sigma * 0.1, sigma * 0.1))
    return m, truth, res


def test_a_power_flow_at_the_operating_point_gives_back_the_estimate() -> None:
    """Balanced feeder whose loads draw constant current and constant impedance (OpenDSS models 5 and 2, banded):
    the point's nominal loads draw the estimated powers at the estimated voltages, so a power flow there lands on
    the estimate. Feeding it the drawn powers as nominal instead misses visibly."""
    feeder = small_feeder(unbalanced=False, banded=True)
    engine = PowerFlow(feeder)
    m, _, _ = measure(feeder, engine, 0.01, seed=1)
    est = StateEstimator(feeder).estimate(m)
    op = operating_point(engine, est)
    assert op.head_v_pu == pytest.approx(est.v_pu[0, est.head_bus].mean())
    res = engine.solve_batch(op.der_p_w[None], der_q_var=op.der_q_var[None], load_p_w=op.load_p_w[None],
                             load_q_var=op.load_q_var[None], source_v_pu=np.array([op.source_v_pu]))
    estimated = np.isfinite(est.v_pu[0, :, 0])
    np.testing.assert_allclose(res.v_pu[0, estimated], est.v_pu[0, estimated], atol=1e-6)
    naive = engine.solve_batch(op.der_p_w[None], der_q_var=op.der_q_var[None], load_p_w=est.load_p_w,
                               load_q_var=est.load_q_var, source_v_pu=np.array([op.source_v_pu]))
    assert np.abs(naive.v_pu[0, estimated] - est.v_pu[0, estimated]).max() > 1e-4
    k = 2.0
    np.testing.assert_allclose((op.load_p_max_w - op.load_p_min_w) * (est.load_p_w[0] / op.load_p_w),
                               2 * k * est.load_p_sigma_w[0], rtol=1e-9)


def test_the_envelope_starts_from_the_estimate() -> None:
    """With accurate readings the envelope certified at the estimated point matches the one certified at the
    true point; the point's feeder (every load an interval: estimate +- 2 sigma) is a valid feeder that
    certify_envelope accepts, and its looser intervals give a no larger envelope."""
    feeder = small_feeder(unbalanced=False, banded=True)
    engine = PowerFlow(feeder)
    m, truth, _ = measure(feeder, engine, 1e-4, seed=2)
    tight = load_priors(feeder, fraction=0.01)  # loads known to 1 %
    est = StateEstimator(feeder, priors=dataclasses.replace(
        tight, p=Reading(truth["load_p_w"], tight.p.sigma), q=Reading(truth["load_q_var"], tight.q.sigma))).estimate(m)
    op = operating_point(engine, est)
    request = EnvelopeRequest()
    at_estimate = certify_envelope(engine, request, load_p_w=op.load_p_w, load_q_var=op.load_q_var,
                                   source_v_pu=op.source_v_pu)
    at_truth = certify_envelope(engine, request, load_p_w=truth["load_p_w"][0], load_q_var=truth["load_q_var"][0],
                                source_v_pu=float(truth["source_v_pu"][0]))
    assert at_estimate.certified
    assert at_truth.certified
    np.testing.assert_allclose(at_estimate.export_w, at_truth.export_w, rtol=0.01)
    np.testing.assert_allclose(at_estimate.import_w, at_truth.import_w, rtol=0.01)
    wide = operating_point(engine, StateEstimator(feeder).estimate(m), k_sigma=2.0)
    with_intervals = certify_envelope(PowerFlow(wide.feeder()), request)
    assert np.isfinite(wide.feeder().loads.p_min_w).all()
    assert with_intervals.certificate.export.certified
    assert (with_intervals.export_w <= at_truth.export_w * 1.002).all()


def test_operating_point_refuses_what_it_cannot_use() -> None:
    feeder = small_feeder(unbalanced=False, banded=True)
    engine = PowerFlow(feeder)
    m, _, _ = measure(feeder, engine, 0.01, seed=3)
    der_p = np.vstack([m.der_p.value, [[1e9, 0.0, 0.0]]])
    two = Measurements(*(Reading(np.vstack([getattr(m, f).value, getattr(m, f).value]),
                                 np.vstack([getattr(m, f).sigma, getattr(m, f).sigma]))
                         for f in Measurements.__slots__))
    two = dataclasses.replace(two, der_p=Reading(der_p, two.der_p.sigma))
    est = StateEstimator(feeder).estimate(two)
    assert est.converged.tolist() == [True, False]
    with pytest.raises(EstimationError, match="scenario 1 was not estimated"):
        operating_point(engine, est, row=1)
    with pytest.raises(ScenarioError, match="row"):
        operating_point(engine, est, row=2)
    loads = feeder.loads
    fewer = dataclasses.replace(feeder, loads=type(loads)(**{f.name: getattr(loads, f.name)[:-1]
                                                             for f in dataclasses.fields(loads)}))
    with pytest.raises(ScenarioError, match="another feeder"):
        operating_point(PowerFlow(fewer), est)


def test_an_estimate_without_uncertainty_gives_the_same_point_and_no_intervals() -> None:
    """The point (loads, DERs, source voltage) is the one the full estimate gives; the intervals, which need the
    sigmas, are NaN, and the point's feeder is refused naming the option rather than built with loads that would
    silently take the request's load_bound."""
    feeder = small_feeder(unbalanced=False, banded=True)
    engine = PowerFlow(feeder)
    m, _, _ = measure(feeder, engine, 0.01, seed=4)
    full = operating_point(engine, StateEstimator(feeder).estimate(m))
    bare = operating_point(engine, StateEstimator(feeder, EstimateOptions(uncertainty=False)).estimate(m))
    for name in ("load_p_w", "load_q_var", "der_p_w", "der_q_var", "source_v_pu", "head_v_pu"):
        np.testing.assert_allclose(getattr(bare, name), getattr(full, name), rtol=1e-12, err_msg=name)
    assert full.intervals
    assert not bare.intervals
    assert np.isfinite(full.load_p_min_w).all()
    assert np.isnan(bare.load_p_min_w).all()
    assert np.isnan(bare.load_p_max_w).all()
    assert np.isfinite(full.feeder().loads.p_min_w).all()
    with pytest.raises(ScenarioError, match=r"EstimateOptions\(uncertainty=False\)"):
        bare.feeder()
