"""State estimation: exact readings give back the truth; noisy readings land within the stated uncertainty on
Baran-Wu's 33-bus feeder and the IEEE European LV feeder; more readings shrink it; unobservable and unsolvable
scenarios; a batch equals its scenarios one by one.

The coverage tests draw true states the way the estimator's assumptions say they are drawn (module docstring of
gateway.twin._estimate): every load from its prior, every reading the truth plus Gaussian noise of the sigma it is
given with. Each draw is solved by power-grid-model's power flow of the whole feeder (tests/twin/_estimate_data.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gateway.twin import (
    Estimate,
    EstimateOptions,
    Feeder,
    LoadPriors,
    Measurements,
    ObservabilityError,
    PowerFlow,
    Reading,
    StateEstimator,
    from_pandapower,
    load_priors,
)
from tests.twin._data import needs, small_feeder
from tests.twin._estimate_data import Sigmas, Truth, head_bus, readings, to_pandapower, true_states

#: Fraction of a standard normal within 1 and 2 sigma.
WITHIN = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}
PRIOR_FRACTION = 0.3


@pytest.fixture(scope="module")
def baran_wu() -> Feeder:
    """Baran-Wu's 33-bus feeder with three 500 kVA DERs (pandapower's case33bw: runs on a fresh clone)."""
    pp, networks = needs("pandapower"), needs("pandapower.networks")
    net = networks.case33bw()
    for bus, name in ((17, "pv18"), (24, "pv25"), (32, "pv33")):
        pp.create_sgen(net, bus=bus, p_mw=0.0, sn_mva=0.5, name=name)
    return from_pandapower(net)


@pytest.fixture(scope="module")
def european_lv() -> Feeder:
    """The IEEE European LV feeder (pandapower's asymmetric version) with DERs on phase a, on phase b and on
    three phases."""
    pp, networks = needs("pandapower"), needs("pandapower.networks")
    net = networks.ieee_european_lv_asymmetric("on_peak_566")
    bus = net.asymmetric_load.bus.to_numpy()
    pp.create_asymmetric_sgen(net, bus=bus[5], p_a_mw=0.004, sn_mva=0.005, name="pv_a")
    pp.create_asymmetric_sgen(net, bus=bus[20], p_b_mw=0.004, sn_mva=0.005, name="pv_b")
    pp.create_sgen(net, bus=bus[40], p_mw=0.01, sn_mva=0.01, name="pv_abc")
    return from_pandapower(net)


def draw(feeder: Feeder, size: int, seed: int) -> tuple[Truth, LoadPriors, np.random.Generator]:
    """``size`` true states: loads from their priors, DERs anywhere in [0, rating] W and +-20 % var, source
    voltage in [1.0, 1.05] pu."""
    rng = np.random.default_rng(seed)
    priors = load_priors(feeder, fraction=PRIOR_FRACTION)
    n_load, rating = len(feeder.loads), feeder.ders.rating_w
    load_p = priors.p.value + rng.normal(size=(size, n_load)) * priors.p.sigma
    load_q = priors.q.value + rng.normal(size=(size, n_load)) * priors.q.sigma
    der_p = rng.uniform(0.0, 1.0, (size, len(rating))) * rating
    der_q = rng.uniform(-0.2, 0.2, (size, len(rating))) * rating
    return true_states(feeder, load_p, load_q, der_p, der_q, rng.uniform(1.0, 1.05, size)), priors, rng


def errors(est: Estimate, truth: Truth) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per kind of output: (estimate - truth, stated sigma), each (draws, quantities)."""
    cut = np.isfinite(est.v_pu[0, :, 0])
    size = truth.v.shape[0]
    return {
        "voltage": ((est.v_pu - truth.v)[:, cut].reshape(size, -1), est.v_sigma_pu[:, cut].reshape(size, -1)),
        "load P": (est.load_p_w - truth.load_p, est.load_p_sigma_w),
        "load Q": (est.load_q_var - truth.load_q, est.load_q_sigma_var),
        "DER P": (est.der_p_w - truth.der_p, est.der_p_sigma_w),
        "DER Q": (est.der_q_var - truth.der_q, est.der_q_sigma_var),
        "head P": ((est.head_p_w - truth.head_p.sum(axis=1))[:, None], est.head_p_sigma_w[:, None]),
        "head Q": ((est.head_q_var - truth.head_q.sum(axis=1))[:, None], est.head_q_sigma_var[:, None]),
        "losses": ((est.losses_w - truth.losses)[:, None], est.losses_sigma_w[:, None]),
    }


def coverage_failures(err: np.ndarray, sigma: np.ndarray) -> list[str]:
    """Check z = err / sigma against a standard normal: the fraction within 1 and 2 sigma, the mean of z**2 and
    the mean of z, each to 4 standard errors. The draws are independent; the quantities of one draw are not
    (one head-voltage error moves every bus), so the standard error comes from the spread of the per-draw
    statistic over the draws, and is never taken below its value for independent quantities."""
    z = err / sigma
    draws, k = z.shape
    failures = []
    checks = [(f"within {n} sigma", np.abs(z) < n, WITHIN[n], WITHIN[n] * (1 - WITHIN[n])) for n in (1, 2)]
    checks += [("mean z**2", z**2, 1.0, 2.0), ("mean z", z, 0.0, 1.0)]
    for name, values, expected, variance in checks:
        per_draw = values.mean(axis=1)
        se = max(per_draw.std(ddof=1) / math.sqrt(draws), math.sqrt(variance / (draws * k)))
        if abs(per_draw.mean() - expected) > 4 * se:
            failures.append(f"{name} = {per_draw.mean():.3f}, expected {expected:.3f} +- {4 * se:.3f}")
    return failures


def test_exact_readings_give_back_the_true_state_balanced(baran_wu: Feeder) -> None:
    truth, priors, _ = draw(baran_wu, 3, seed=1)
    tiny = 1e-3  # W, var; pu / 1e4 for voltages
    m = Measurements.create(baran_wu, der_p=(truth.der_p, tiny), der_q=(truth.der_q, tiny),
                            head_p=(truth.head_p, tiny), head_q=(truth.head_q, tiny),
                            head_v=(truth.v[:, 0, :], tiny * 1e-4), load_p=(truth.load_p, tiny),
                            load_q=(truth.load_q, tiny))
    est = StateEstimator(baran_wu, priors=priors).estimate(m)
    assert est.converged.all()
    np.testing.assert_allclose(est.v_pu, truth.v, atol=1e-9)
    np.testing.assert_allclose(est.load_p_w, truth.load_p, atol=1e-3)
    np.testing.assert_allclose(est.der_q_var, truth.der_q, atol=1e-3)
    np.testing.assert_allclose(est.head_p_w, truth.head_p.sum(axis=1), atol=1e-2)
    np.testing.assert_allclose(est.losses_w, truth.losses, rtol=1e-8)
    assert (est.v_sigma_pu < 1e-6).all()


def test_exact_readings_give_back_the_true_state_unbalanced() -> None:
    """Unbalanced, with a Dyn1 transformer upstream of the head meter: the estimate holds the head bus's phase
    angles at 0/-120/+120 degrees (assumption 2); the truth's differ a little, and that is all that is left."""
    feeder = small_feeder(unbalanced=True, banded=False)
    truth, priors, _ = draw(feeder, 3, seed=2)
    tiny = 1e-3
    ders = feeder.ders
    der_v = np.stack([truth.v[:, b, :][:, [0, 1, 2] if ph == 0 else [ph - 1]].mean(axis=1)
                      for b, ph in zip(ders.bus, ders.phase, strict=True)], axis=1)
    head, _ = head_bus(feeder)
    m = Measurements.create(feeder, der_p=(truth.der_p, tiny), der_q=(truth.der_q, tiny), der_v=(der_v, 1e-7),
                            head_p=(truth.head_p, tiny), head_q=(truth.head_q, tiny),
                            head_v=(truth.v[:, head, :], 1e-7), load_p=(truth.load_p, tiny),
                            load_q=(truth.load_q, tiny))
    est = StateEstimator(feeder, priors=priors).estimate(m)
    assert est.converged.all()
    assert est.head_bus == head
    assert np.isnan(est.v_pu[:, feeder.source.bus]).all()  # upstream of the head meter: not estimated
    downstream = np.arange(len(feeder.buses)) != feeder.source.bus
    np.testing.assert_allclose(est.v_pu[:, downstream], truth.v[:, downstream], atol=5e-5)
    np.testing.assert_allclose(est.load_p_w, truth.load_p, atol=0.1)
    np.testing.assert_allclose(est.head_q_var, truth.head_q.sum(axis=1), atol=0.1)
    np.testing.assert_allclose(est.losses_w, truth.losses, atol=0.2)


@pytest.mark.filterwarnings("ignore::pandas.errors.SettingWithCopyWarning")  # inside pandapower.estimation
def test_the_estimate_is_the_wls_optimum_pandapower_finds(baran_wu: Feeder) -> None:
    """pandapower's own WLS state estimator (an independent implementation), given the same readings and weights,
    finds the same state."""
    pp, networks = needs("pandapower"), needs("pandapower.networks")
    estimation = needs("pandapower.estimation")
    truth, priors, rng = draw(baran_wu, 1, seed=13)
    m = readings(baran_wu, truth, rng, der_v=False)  # DER voltages: PGM sensors here, not bus injections there
    est = StateEstimator(baran_wu, priors=priors).estimate(m)
    net = networks.case33bw()
    for bus, name in ((17, "pv18"), (24, "pv25"), (32, "pv33")):
        pp.create_sgen(net, bus=bus, p_mw=0.0, sn_mva=0.5, name=name)
    to_pandapower(net, baran_wu, m, priors.p, priors.q)
    assert estimation.estimate(net, algorithm="wls", init="flat", tolerance=1e-10, maximum_iterations=50)["success"]
    np.testing.assert_allclose(net.res_bus_est.vm_pu.to_numpy(), est.v_pu[0, :, 0], atol=1e-9)
    assert -net.res_bus_est.p_mw[0] * 1e6 == pytest.approx(est.head_p_w[0], rel=1e-8)


def test_the_oracle_is_the_projects_power_flow(baran_wu: Feeder) -> None:
    """The test oracle agrees with gateway.twin.PowerFlow (voltages, and the source's power less the losses)."""
    truth, _, _ = draw(baran_wu, 4, seed=3)
    res = PowerFlow(baran_wu).solve_batch(truth.der_p, der_q_var=truth.der_q, load_p_w=truth.load_p,
                                          load_q_var=truth.load_q, source_v_pu=truth.source_v)
    np.testing.assert_allclose(res.v_pu, truth.v, atol=1e-9)
    np.testing.assert_allclose(res.source_p_w, truth.head_p.sum(axis=1), rtol=1e-8)
    np.testing.assert_allclose(res.source_p_ph_w, truth.head_p, rtol=1e-8)
    np.testing.assert_allclose(res.source_q_ph_var, truth.head_q, rtol=1e-8)
    np.testing.assert_allclose(res.losses_w, truth.losses, rtol=1e-8)


def test_baran_wu_estimates_lie_within_their_stated_uncertainty(baran_wu: Feeder) -> None:
    """200 noisy draws: for every kind of output, the errors divided by the stated sigmas are standard normal
    (within 1 and 2 sigma as often as they should be, mean square 1, no bias). The same check fails when the
    sigmas are 25 % too small or too large, so it can tell."""
    truth, priors, rng = draw(baran_wu, 200, seed=11)
    est = StateEstimator(baran_wu, priors=priors).estimate(readings(baran_wu, truth, rng))
    assert est.converged.all()
    failures = {name: coverage_failures(e, s) for name, (e, s) in errors(est, truth).items()}
    assert not any(failures.values()), failures
    for name in ("voltage", "load P"):
        e, s = errors(est, truth)[name]
        assert coverage_failures(e, 0.75 * s), f"{name}: sigmas 25 % too small passed"
        assert coverage_failures(e, 1.33 * s), f"{name}: sigmas 25 % too large passed"


def test_european_lv_estimates_lie_within_their_stated_uncertainty(european_lv: Feeder) -> None:
    """The same on the unbalanced 907-bus feeder (asymmetric estimate, single- and three-phase DERs whose
    voltage readings are applied after the solve), over 16 draws (each costs ~130 asymmetric estimates)."""
    truth, priors, rng = draw(european_lv, 16, seed=5)
    est = StateEstimator(european_lv, priors=priors).estimate(readings(european_lv, truth, rng))
    assert est.converged.all()
    failures = {name: coverage_failures(e, s) for name, (e, s) in errors(est, truth).items()}
    assert not any(failures.values()), failures
    e, s = errors(est, truth)["load P"]
    assert coverage_failures(e, 0.75 * s)
    assert coverage_failures(e, 1.33 * s)


def test_ami_readings_shrink_the_uncertainty_and_the_error(baran_wu: Feeder) -> None:
    """AMI (2 %) on every third load: those loads' sigma falls below the reading's own (an AMI reading replaces the
    load's prior; the head meter adds a little) and far below the prior's; no sigma anywhere grows; over 100 draws
    their errors shrink as much."""
    truth, priors, _ = draw(baran_wu, 100, seed=7)
    ami = np.arange(0, len(baran_wu.loads), 3)
    others = np.setdiff1d(np.arange(len(baran_wu.loads)), ami)
    estimator = StateEstimator(baran_wu, priors=priors)
    without = estimator.estimate(readings(baran_wu, truth, np.random.default_rng(8)))
    with_ami = estimator.estimate(readings(baran_wu, truth, np.random.default_rng(8), ami=ami))
    ami_sigma = Sigmas().ami * np.abs(truth.load_p[:, ami]) + 1.0
    assert (with_ami.load_p_sigma_w[:, ami] <= ami_sigma).all()
    assert (with_ami.load_p_sigma_w[:, ami] < 0.2 * without.load_p_sigma_w[:, ami]).all()
    # Not the losses: quadratic in the currents, their sigma scales with the estimated currents, which the AMI
    # readings move; the rest is near-linear, where added readings can only shrink the covariance.
    for name in ("v_sigma_pu", "load_p_sigma_w", "load_q_sigma_var", "head_p_sigma_w", "der_p_sigma_w"):
        before, after = getattr(without, name), getattr(with_ami, name)
        assert (after <= before * (1 + 1e-6)).all(), name
    assert (with_ami.v_sigma_pu[:, 1:] < without.v_sigma_pu[:, 1:]).all()  # every bus but the head is surer

    def rms(est: Estimate, index: np.ndarray) -> float:
        return float(np.sqrt(np.mean((est.load_p_w[:, index] - truth.load_p[:, index]) ** 2)))

    assert rms(with_ami, ami) < 0.2 * rms(without, ami)
    assert rms(with_ami, others) <= rms(without, others) * 1.05  # the rest: no worse (the head meter's share)


def test_der_voltage_readings_shrink_the_voltage_uncertainty_of_an_unbalanced_feeder() -> None:
    """No single-phase voltage sensor in PGM: DER voltages are applied after the solve. They make the voltage
    at the DER's bus and phase surer, and nothing less sure."""
    feeder = small_feeder(unbalanced=True, banded=False)
    truth, priors, _ = draw(feeder, 4, seed=9)
    estimator = StateEstimator(feeder, priors=priors)
    without = estimator.estimate(readings(feeder, truth, np.random.default_rng(1), der_v=False))
    with_v = estimator.estimate(readings(feeder, truth, np.random.default_rng(1), der_v=True))
    assert (with_v.v_sigma_pu <= without.v_sigma_pu * (1 + 1e-9))[np.isfinite(without.v_sigma_pu)].all()
    for bus, phase in zip(feeder.ders.bus, feeder.ders.phase, strict=True):
        if phase == 0:  # a three-phase DER reads the mean of its phases: each phase gains a little
            assert (with_v.v_sigma_pu[:, bus] < without.v_sigma_pu[:, bus]).all()
        else:
            assert (with_v.v_sigma_pu[:, bus, phase - 1] < 0.9 * without.v_sigma_pu[:, bus, phase - 1]).all()


def test_an_unobservable_pattern_names_what_is_missing(baran_wu: Feeder, european_lv: Feeder) -> None:
    truth, priors, rng = draw(baran_wu, 3, seed=4)
    full = readings(baran_wu, truth, rng)
    estimator = StateEstimator(baran_wu, priors=priors)
    # Scenario 1 lacks two DERs' P and the head meter's P/Q: three injections nothing separates.
    der_p = full.der_p.value.copy()
    der_p[1, :2] = np.nan
    head_p = full.head_p.value.copy()
    head_p[1] = np.nan
    m = dataclasses.replace(full, der_p=Reading(der_p, full.der_p.sigma), head_p=Reading(head_p, full.head_p.sigma))
    with pytest.raises(ObservabilityError) as caught:
        estimator.estimate(m)
    (issue,) = caught.value.issues
    assert (issue.component, issue.field) == ("measurements", "power")
    assert issue.ids == ("der pv18", "der pv25", "head meter")
    assert "scenario rows 1)" in issue.message
    assert "at most one may be missing" in issue.message
    # No voltage anywhere (balanced): the estimate has no reference.
    no_v = dataclasses.replace(full, head_v=Reading(np.full((3, 3), np.nan), np.full((3, 3), np.nan)),
                               der_v=Reading(np.full((3, 3), np.nan), np.full((3, 3), np.nan)))
    with pytest.raises(ObservabilityError, match="no voltage measurement"):
        estimator.estimate(no_v)
    # Unbalanced: the head meter's voltages are required.
    truth_lv, priors_lv, rng_lv = draw(european_lv, 1, seed=4)
    lv = readings(european_lv, truth_lv, rng_lv)
    lv = dataclasses.replace(lv, head_v=Reading(np.full((1, 3), np.nan), np.full((1, 3), np.nan)))
    with pytest.raises(ObservabilityError) as caught:
        StateEstimator(european_lv, priors=priors_lv).estimate(lv)
    assert [(i.component, i.field) for i in caught.value.issues] == [("head", "head_v")]


def test_a_scenario_the_estimator_cannot_solve_comes_back_unconverged() -> None:
    """An impossible reading (a 1 GW DER on an LV feeder) fails that scenario alone, as NaN; the rest stand."""
    feeder = small_feeder(unbalanced=True, banded=False)
    truth, priors, rng = draw(feeder, 3, seed=6)
    m = readings(feeder, truth, rng)
    der_p = m.der_p.value.copy()
    der_p[1, 0] = 1e9
    est = StateEstimator(feeder, priors=priors).estimate(dataclasses.replace(m, der_p=Reading(der_p, m.der_p.sigma)))
    np.testing.assert_array_equal(est.converged, [True, False, True])
    assert np.isnan(est.load_p_w[1]).all()
    assert np.isnan(est.v_sigma_pu[1]).all()
    assert np.isfinite(est.load_p_w[[0, 2]]).all()


@pytest.mark.parametrize("unbalanced", [True, False], ids=["unbalanced", "balanced"])
def test_a_batch_equals_its_scenarios_estimated_one_by_one(unbalanced: bool) -> None:
    """Six scenarios, three reading patterns (a DER without P; no head P/Q) and AMI missing in some."""
    feeder = small_feeder(unbalanced=unbalanced, banded=False)
    truth, priors, rng = draw(feeder, 6, seed=10)
    m = readings(feeder, truth, rng, ami=np.array([0, 3]))
    der_p, load_p, head_p = m.der_p.value.copy(), m.load_p.value.copy(), m.head_p.value.copy()
    der_p[1, 2] = np.nan
    load_p[2:4, 0] = np.nan
    head_p[4] = np.nan
    m = dataclasses.replace(m, der_p=Reading(der_p, m.der_p.sigma), load_p=Reading(load_p, m.load_p.sigma),
                            head_p=Reading(head_p, m.head_p.sigma))
    estimator = StateEstimator(feeder, priors=priors)
    batch = estimator.estimate(m)
    assert batch.converged.all()
    assert len(set(batch.readings.tolist())) > 1  # the patterns really differ
    for k in range(6):
        one = estimator.estimate(Measurements(*(Reading(getattr(m, f).value[k : k + 1],
                                                        getattr(m, f).sigma[k : k + 1])
                                                for f in Measurements.__slots__)))
        for field in ("v_pu", "v_sigma_pu", "load_p_w", "load_p_sigma_w", "der_q_var", "der_q_sigma_var",
                      "head_p_w", "head_q_sigma_var", "losses_w", "losses_sigma_w"):
            np.testing.assert_allclose(getattr(batch, field)[k], getattr(one, field)[0], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{field} of scenario {k}")


def test_iterative_linear_is_a_slightly_less_efficient_estimate_of_the_same_state(baran_wu: Feeder) -> None:
    """PGM's iterative linear method linearises power readings as currents: not the WLS optimum Newton-Raphson
    finds, but an estimate of the same state within the same uncertainty, its sigmas (propagated through it)
    no smaller than Newton-Raphson's and at most a few per cent larger."""
    truth, priors, rng = draw(baran_wu, 20, seed=12)
    m = readings(baran_wu, truth, rng)
    nr = StateEstimator(baran_wu, priors=priors).estimate(m)
    il = StateEstimator(baran_wu, EstimateOptions(method="iterative_linear"), priors=priors).estimate(m)
    assert il.converged.all()
    assert "iterative_linear" in il.method
    for value, sigma in (("v_pu", "v_sigma_pu"), ("load_p_w", "load_p_sigma_w"), ("head_p_w", "head_p_sigma_w")):
        assert (np.abs(getattr(il, value) - getattr(nr, value)) < getattr(nr, sigma)).all(), value
        ratio = getattr(il, sigma) / getattr(nr, sigma)
        assert ratio.min() > 0.999, sigma
        assert ratio.max() < 1.1, sigma


# -- without the uncertainty ----------------------------------------------------------------------------------------
def assert_same_values_without_sigmas(full: Estimate, bare: Estimate) -> None:
    """``bare`` (uncertainty off) has every value of ``full`` (to 1e-12), every sigma and the expected losses NaN,
    and says so; ``full`` had them all."""
    assert full.uncertainty
    assert not bare.uncertainty
    assert "uncertainty=False" in bare.method
    assert full.converged.all()
    for f in dataclasses.fields(Estimate):
        a, b = getattr(full, f.name), getattr(bare, f.name)
        if f.name in ("method", "uncertainty"):
            continue
        if "_sigma" in f.name or f.name == "losses_w":
            assert np.isnan(b).all(), f.name
            assert np.isfinite(a).any(), f.name
        elif np.asarray(a).dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f.name)
        else:
            np.testing.assert_array_equal(b, a, err_msg=f.name)


def pgm_estimates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many PGM state estimates each call of the (real) estimation model runs."""
    from gateway.twin._estimate_pgm import SeModel

    counts: list[int] = []
    run = SeModel.run

    def counting(self: SeModel, value: np.ndarray, sigma: np.ndarray) -> object:
        counts.append(value.shape[0])
        return run(self, value, sigma)

    monkeypatch.setattr(SeModel, "run", counting)
    return counts


def test_without_uncertainty_baran_wu_gives_the_same_values_from_one_pgm_estimate_per_scenario(
        baran_wu: Feeder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five noisy scenarios with AMI on some loads: the same estimate, no sigmas, and one PGM estimate per
    scenario instead of 1 + m (DER voltages are PGM sensors in a symmetric estimate: nothing needs the
    covariance)."""
    truth, priors, rng = draw(baran_wu, 5, seed=14)
    m = readings(baran_wu, truth, rng, ami=np.array([2, 9]))
    counts = pgm_estimates(monkeypatch)
    full = StateEstimator(baran_wu, priors=priors).estimate(m)
    assert sum(counts) == 5 * (1 + int(full.readings[0]))
    counts.clear()
    bare = StateEstimator(baran_wu, EstimateOptions(uncertainty=False), priors=priors).estimate(m)
    assert sum(counts) == 5
    assert_same_values_without_sigmas(full, bare)


def test_without_uncertainty_the_european_lv_feeder_gives_the_same_values(
        european_lv: Feeder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asymmetric estimate, two scenarios. Without DER voltage readings: one PGM estimate per scenario. With them
    (applied after the solve through the covariance) the finite differences still run, for the same values."""
    truth, priors, rng = draw(european_lv, 2, seed=15)
    full_est = StateEstimator(european_lv, priors=priors)
    bare_est = StateEstimator(european_lv, EstimateOptions(uncertainty=False), priors=priors)
    counts = pgm_estimates(monkeypatch)
    for der_v in (False, True):
        m = readings(european_lv, truth, rng, der_v=der_v)
        counts.clear()
        full = full_est.estimate(m)
        with_sigmas = sum(counts)
        counts.clear()
        bare = bare_est.estimate(m)
        assert sum(counts) == (with_sigmas if der_v else 2), f"der_v={der_v}"
        assert_same_values_without_sigmas(full, bare)
