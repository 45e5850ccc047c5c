"""What the state estimator accepts: malformed measurement sets are refused naming the field and the ids; NaN
means "not measured" and nothing else; priors and options are checked."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.twin import (
    EstimateOptions,
    Feeder,
    LoadPriors,
    MeasurementError,
    Measurements,
    PowerFlow,
    Reading,
    StateEstimator,
    load_priors,
)
from gateway.twin._estimate_model import scale_powers
from tests.twin._data import small_feeder
from tests.twin._estimate_data import readings, true_states

FIELDS = ("v_pu", "v_sigma_pu", "load_p_w", "load_p_sigma_w", "load_q_var", "der_p_w", "der_p_sigma_w",
          "head_p_w", "head_p_sigma_w", "losses_w", "losses_sigma_w")


@pytest.fixture(scope="module")
def feeder() -> Feeder:
    return small_feeder(unbalanced=True, banded=False)


@pytest.fixture(scope="module")
def measured(feeder: Feeder) -> Measurements:
    """Two scenarios of noisy readings of every DER, the head meter and AMI on loads 0 and 3."""
    rng = np.random.default_rng(3)
    size = 2
    load_p = feeder.loads.p_w * rng.uniform(0.5, 1.5, (size, len(feeder.loads)))
    load_q = feeder.loads.q_var * rng.uniform(0.5, 1.5, (size, len(feeder.loads)))
    der_p = feeder.ders.rating_w * rng.uniform(0, 1, (size, len(feeder.ders)))
    truth = true_states(feeder, load_p, load_q, der_p, np.zeros_like(der_p), np.array([1.0, 1.03]))
    return readings(feeder, truth, rng, ami=np.array([0, 3]))


def issues_of(caught: pytest.ExceptionInfo[MeasurementError]) -> dict[tuple[str, str], set[str]]:
    """(component, field) -> every id named for it, over all its issues."""
    found: dict[tuple[str, str], set[str]] = {}
    for issue in caught.value.issues:
        found.setdefault((issue.component, issue.field), set()).update(issue.ids)
    return found


def assert_same(a: object, b: object) -> None:
    for name in FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12, err_msg=name)


# -- malformed measurement sets -------------------------------------------------------------------------------
def test_unknown_and_repeated_ids_are_named(feeder: Feeder) -> None:
    with pytest.raises(MeasurementError) as caught:
        Measurements.create(feeder, der_ids=["pv3", "nope", "pv3"], der_p=(np.zeros((1, 3)), 10.0),
                            load_ids=["load9"], load_p=(np.zeros((1, 1)), 10.0))
    found = issues_of(caught)
    assert found[("der", "id")] == {"nope", "pv3"}
    assert found[("load", "id")] == {"load9"}
    assert "no such der in the feeder [nope]" in str(caught.value)
    assert "listed more than once [pv3]" in str(caught.value)


def test_bad_sigmas_values_and_voltages_are_named_by_field_and_id(feeder: Feeder) -> None:
    p = np.array([[1e3, 2e3, 3e3]])
    with pytest.raises(MeasurementError) as caught:
        Measurements.create(feeder, der_p=(p, [[10.0, 0.0, np.nan]]), der_q=(np.array([[0.0, np.inf, 0.0]]), 10.0),
                            der_v=(np.array([[1.0, -0.2, np.nan]]), 0.01))
    found = issues_of(caught)
    assert found[("der", "der_p")] == {"pv6", "pv4"}  # sigma 0 and NaN where a value is given
    assert found[("der", "der_q")] == {"pv6"}  # inf is not "not measured"
    assert found[("der", "der_v")] == {"pv6"}  # a voltage <= 0


def test_wrong_shapes_partial_head_phases_and_disagreeing_rows_are_refused(feeder: Feeder) -> None:
    with pytest.raises(MeasurementError) as caught:
        Measurements.create(feeder, head_v=(np.ones((2, 2)), 0.01), head_p=(np.ones(3), 1.0))
    found = issues_of(caught)
    assert ("head", "head_v") in found
    assert ("head", "head_p") in found
    assert "expected shape (2, 3)" in str(caught.value) or "expected 2-D values" in str(caught.value)
    with pytest.raises(MeasurementError) as caught:
        Measurements.create(feeder, head_p=(np.array([[1e3, np.nan, 1e3], [1e3, 1e3, 1e3]]), 10.0))
    assert issues_of(caught) == {("head", "head_p"): {"0"}}  # scenario row 0: all three phases or none
    with pytest.raises(MeasurementError, match="disagree on the number of scenarios"):
        Measurements.create(feeder, head_p=(np.ones((2, 3)), 1.0), der_p=(np.ones((3, 3)), 1.0))
    with pytest.raises(MeasurementError, match=r"expected \(value, sigma\)"):
        Measurements.create(feeder, der_p=np.ones((1, 3)))  # type: ignore[arg-type]


def test_readings_of_another_feeder_and_bad_priors_are_refused(feeder: Feeder, measured: Measurements) -> None:
    estimator = StateEstimator(feeder)
    other = Measurements.create(small_feeder(unbalanced=False), scenarios=1)
    short = dataclasses.replace(other, der_p=Reading(np.ones((1, 2)), np.ones((1, 2))))
    with pytest.raises(MeasurementError) as caught:
        estimator.estimate(short)
    assert ("der", "der_p") in issues_of(caught)
    n = len(feeder.loads)
    ones = np.ones((1, n))
    bad = LoadPriors(Reading(ones, np.r_[np.ones(n - 1), 0.0][None, :]), Reading(ones, ones))
    with pytest.raises(MeasurementError) as caught:
        estimator.estimate(measured, priors=bad)
    assert issues_of(caught) == {("load", "prior_p"): {str(feeder.loads.name[-1])}}
    wrong_rows = LoadPriors(Reading(np.ones((5, n)), np.ones((5, n))), Reading(np.ones((5, n)), np.ones((5, n))))
    with pytest.raises(MeasurementError, match=r"expected shape \(1, 6\) or \(2, 6\)"):
        estimator.estimate(measured, priors=wrong_rows)


def test_options_are_checked() -> None:
    with pytest.raises(MeasurementError, match="method"):
        EstimateOptions(method="gauss")
    with pytest.raises(MeasurementError, match="step"):
        EstimateOptions(step=0.0)
    with pytest.raises(MeasurementError, match="error_tolerance"):
        EstimateOptions(error_tolerance=-1.0)
    with pytest.raises(MeasurementError, match="uncertainty"):
        EstimateOptions(uncertainty="no")  # type: ignore[arg-type]
    assert EstimateOptions(method="iterative_linear").iterations > EstimateOptions().iterations


# -- NaN means "not measured" ---------------------------------------------------------------------------------
def test_a_nan_reading_is_the_same_as_no_reading(feeder: Feeder, measured: Measurements) -> None:
    """NaN in a DER's readings estimates exactly as leaving the DER out of the set by id; NaN in an AMI reading
    exactly as giving no AMI for that load (its prior is used)."""
    estimator = StateEstimator(feeder)
    m = measured
    nan = {}
    for field in ("der_p", "der_q", "der_v"):
        value = getattr(m, field).value.copy()
        value[:, 1] = np.nan
        nan[field] = Reading(value, getattr(m, field).sigma)
    keep = [0, 2]

    def cols(r: Reading, index: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return r.value[:, index], r.sigma[:, index]

    def pair(r: Reading) -> tuple[np.ndarray, np.ndarray]:
        return r.value, r.sigma

    left_out = Measurements.create(
        feeder, der_ids=feeder.ders.name[keep], der_p=cols(m.der_p, keep), der_q=cols(m.der_q, keep),
        der_v=cols(m.der_v, keep), head_p=pair(m.head_p), head_q=pair(m.head_q), head_v=pair(m.head_v),
        load_p=pair(m.load_p), load_q=pair(m.load_q))
    assert_same(estimator.estimate(dataclasses.replace(m, **nan)), estimator.estimate(left_out))
    load_p, load_q = m.load_p.value.copy(), m.load_q.value.copy()
    load_p[:, 0] = load_q[:, 0] = np.nan
    nan_ami = estimator.estimate(dataclasses.replace(m, load_p=Reading(load_p, m.load_p.sigma),
                                                     load_q=Reading(load_q, m.load_q.sigma)))
    only_3 = Measurements.create(
        feeder, der_p=pair(m.der_p), der_q=pair(m.der_q), der_v=pair(m.der_v), head_p=pair(m.head_p),
        head_q=pair(m.head_q), head_v=pair(m.head_v), load_ids=feeder.loads.name[[3]],
        load_p=cols(m.load_p, [3]), load_q=cols(m.load_q, [3]))
    assert_same(nan_ami, estimator.estimate(only_3))
    with_ami = estimator.estimate(m)
    assert (nan_ami.load_p_sigma_w[:, 0] > 1.5 * with_ami.load_p_sigma_w[:, 0]).all()


def test_a_der_with_p_but_no_q_counts_as_unmeasured(feeder: Feeder, measured: Measurements) -> None:
    estimator = StateEstimator(feeder)
    der_q = measured.der_q.value.copy()
    der_q[:, 2] = np.nan
    der_p = measured.der_p.value.copy()
    der_p[:, 2] = np.nan
    no_q = estimator.estimate(dataclasses.replace(measured, der_q=Reading(der_q, measured.der_q.sigma)))
    neither = estimator.estimate(dataclasses.replace(measured, der_q=Reading(der_q, measured.der_q.sigma),
                                                     der_p=Reading(der_p, measured.der_p.sigma)))
    assert_same(no_q, neither)
    assert (no_q.der_p_sigma_w[:, 2] > 5 * measured.der_p.sigma[:, 2]).all()  # only the head meter tells it


# -- priors -----------------------------------------------------------------------------------------------------
def test_load_priors_read_intervals_as_two_sigma_and_floor_every_sigma(feeder: Feeder) -> None:
    loads = feeder.loads
    priors = load_priors(feeder, fraction=0.4, floor=2.0)
    bounded = np.flatnonzero(np.isfinite(loads.p_min_w))
    assert bounded.size == 1  # load1: [0, 8000] W
    k = int(bounded[0])
    assert priors.p.value[0, k] == pytest.approx(4000.0)
    assert priors.p.sigma[0, k] == pytest.approx(2000.0)
    assert priors.q.value[0, k] == pytest.approx(4000.0 * loads.q_var[k] / loads.p_w[k])
    other = np.flatnonzero(np.isnan(loads.p_min_w))
    apparent = np.hypot(loads.p_w[other], loads.q_var[other])
    np.testing.assert_allclose(priors.p.value[0, other], loads.p_w[other])
    np.testing.assert_allclose(priors.p.sigma[0, other], np.maximum(0.4 * apparent, 2.0))
    zero = dataclasses.replace(feeder, loads=dataclasses.replace(loads, p_w=np.zeros(len(loads)),
                                                                 q_var=np.zeros(len(loads))))
    assert (load_priors(zero, floor=2.0).q.sigma[0, other] == 2.0).all()
    with pytest.raises(MeasurementError, match="fraction and floor"):
        load_priors(feeder, fraction=0.0)
    with pytest.raises(MeasurementError, match="p_w and q_var must have shape"):
        load_priors(feeder, p_w=np.ones(2))


# -- the power scale the estimator solves at ----------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1e-2, 1e2, 1e4])
def test_scaling_powers_is_an_exact_similarity(alpha: float) -> None:
    """Every power times alpha, every impedance over it: the same voltages, the powers and losses times alpha
    (what lets the estimator pick the scale power-grid-model solves best at)."""
    feeder = small_feeder(unbalanced=True, banded=False)
    scaled = scale_powers(feeder, alpha)
    rng = np.random.default_rng(1)
    der_p = rng.uniform(0, 1, (3, len(feeder.ders))) * feeder.ders.rating_w
    base = PowerFlow(feeder).solve_batch(der_p)
    other = PowerFlow(scaled).solve_batch(der_p * alpha)
    np.testing.assert_allclose(other.v_pu, base.v_pu, atol=1e-9)
    np.testing.assert_allclose(other.losses_w, base.losses_w * alpha, rtol=1e-7)
    np.testing.assert_allclose(other.max_loading, base.max_loading, rtol=1e-7)
