"""The envelope against the AC truth: on random scenarios (load level, source voltage, DER sites and ratings) each
DER's published limit is never above the truth (it passes an AC solve with every DER at its limit at once, under
the worst-case loads) and never more than 0.5 % below it. The truth is found by the test's own scan and plain
bisection with full AC solves on an unreduced engine (tests/twin/_oracle.py), for ``equal`` the largest common limit
(every lower one passing too), for ``proportional`` the largest common fraction of rating; import and export
both. ``max-total``: its point passes AC and its total is no less than the best ``equal`` and ``proportional``
totals. OpenDSS, as an independent engine, solves the published envelope of the 33-bus .dss (../shared).

Feeders: Baran-Wu 33-bus (pandapower's case33bw, balanced) and the IEEE European LV feeder (pandapower's
asymmetric model: single-phase DERs on their customers' phases), both from pandapower so they run on a fresh clone;
the OpenDSS Master.dss of the European LV feeder too when ../shared is present.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.twin import (
    Criteria,
    EnvelopeRequest,
    Feeder,
    FlowOptions,
    Phase,
    Policy,
    PowerFlow,
    certify_envelope,
    from_pandapower,
    load_feeder,
    with_ders,
)
from tests.twin._data import needs, shared
from tests.twin._oracle import (
    BELOW,
    EXPORT,
    IMPORT,
    Oracle,
    Rules,
    assert_matches_truth,
    opendss_solution,
    worst_loads,
)

RULES = Rules()
CRITERIA = Criteria(margin_v_pu=RULES.margin_v_pu, margin_loading=RULES.margin_loading, load_bound=RULES.load_bound)
SETTINGS: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow],
                            "derandomize": False}


@pytest.fixture(scope="module")
def baran_wu() -> Feeder:
    pn = needs("pandapower.networks")
    return from_pandapower(pn.case33bw())


@pytest.fixture(scope="module")
def european_lv() -> Feeder:
    pn = needs("pandapower.networks")
    return from_pandapower(pn.ieee_european_lv_asymmetric())


def scenario_33(feeder: Feeder, data: st.DataObject) -> tuple[Feeder, np.ndarray, np.ndarray, float]:
    n = data.draw(st.integers(1, 6), label="DERs")
    buses = data.draw(st.lists(st.integers(1, 32), min_size=n, max_size=n, unique=True), label="buses")
    rating_kw = data.draw(st.lists(st.floats(50.0, 2500.0), min_size=n, max_size=n), label="ratings kW")
    level = data.draw(st.floats(0.1, 0.7), label="load level")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    source = data.draw(st.floats(0.98, 1.04), label="source pu")
    jitter = np.random.default_rng(seed).uniform(0.5, 1.5, len(feeder.loads))
    fed = with_ders(feeder, [f"d{k}" for k in range(n)], buses, rating_w=np.array(rating_kw) * 1e3)
    return fed, feeder.loads.p_w * level * jitter, feeder.loads.q_var * level * jitter, source


@settings(max_examples=25, **SETTINGS)
@given(data=st.data(), policy=st.sampled_from([Policy.EQUAL, Policy.PROPORTIONAL]))
def test_baran_wu_envelopes_match_the_ac_truth(baran_wu: Feeder, data: st.DataObject, policy: Policy) -> None:
    fed, p, q, source = scenario_33(baran_wu, data)
    engine = PowerFlow(fed)
    result = certify_envelope(engine, EnvelopeRequest(policy=policy, criteria=CRITERIA), load_p_w=p, load_q_var=q,
                              source_v_pu=source)
    assert_matches_truth(engine, result, policy, p, q, source, RULES)


def scenario_lv(feeder: Feeder, data: st.DataObject) -> tuple[Feeder, np.ndarray, np.ndarray, float]:
    loads = feeder.loads
    n = data.draw(st.integers(1, 8), label="DERs")
    sites = data.draw(st.lists(st.integers(0, len(loads) - 1), min_size=n, max_size=n, unique=True), label="sites")
    three = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="three-phase")
    rating_kw = data.draw(st.lists(st.floats(2.0, 30.0), min_size=n, max_size=n), label="ratings kW")
    level = data.draw(st.floats(0.2, 2.0), label="load level")
    source = data.draw(st.floats(1.0, 1.04), label="source pu")
    sites_a = np.array(sites)
    phase = np.where(three, Phase.ABC, loads.phase[sites_a])
    fed = with_ders(feeder, [f"pv{k}" for k in range(n)], loads.bus[sites_a], phase=phase,
                    rating_w=np.array(rating_kw) * 1e3)
    return fed, loads.p_w * level, loads.q_var * level, source


@settings(max_examples=12, **SETTINGS)
@given(data=st.data(), policy=st.sampled_from([Policy.EQUAL, Policy.PROPORTIONAL]))
def test_european_lv_envelopes_match_the_ac_truth(european_lv: Feeder, data: st.DataObject, policy: Policy) -> None:
    fed, p, q, source = scenario_lv(european_lv, data)
    engine = PowerFlow(fed)
    result = certify_envelope(engine, EnvelopeRequest(policy=policy, criteria=CRITERIA), load_p_w=p, load_q_var=q,
                              source_v_pu=source)
    assert_matches_truth(engine, result, policy, p, q, source, RULES)


@pytest.mark.parametrize("policy", [Policy.EQUAL, Policy.PROPORTIONAL])
def test_european_lv_from_opendss_matches_the_ac_truth(policy: Policy) -> None:
    """The OpenDSS model as shipped (loads above vmaxpu: impedances), eight single-phase PVs, source at 1.02 pu."""
    needs("dss")
    feeder = load_feeder(shared("ieee-european-lv/Master.dss"))
    loads = feeder.loads
    sites = np.arange(0, 55, 7)
    rating = np.linspace(4e3, 18e3, sites.size)
    fed = with_ders(feeder, [f"pv{k}" for k in sites], loads.bus[sites], phase=loads.phase[sites], rating_w=rating)
    engine = PowerFlow(fed)
    p, q = loads.p_w * 2.0, loads.q_var * 2.0
    result = certify_envelope(engine, EnvelopeRequest(policy=policy, criteria=CRITERIA), load_p_w=p, load_q_var=q,
                              source_v_pu=1.02)
    assert result.certified
    assert_matches_truth(engine, result, policy, p, q, 1.02, RULES)


def assert_max_total_beats_the_others(engine: PowerFlow, p: np.ndarray, q: np.ndarray, source: float) -> None:
    truth_engine = PowerFlow(engine.feeder, FlowOptions(reduce=False))
    kwargs: dict[str, Any] = {"load_p_w": p, "load_q_var": q, "source_v_pu": source}
    results = {policy: certify_envelope(engine, EnvelopeRequest(policy=policy, criteria=CRITERIA), **kwargs)
               for policy in Policy}
    best = results[Policy.MAX_TOTAL]
    for direction, attr in ((EXPORT, "export_w"), (IMPORT, "import_w")):
        oracle = Oracle(truth_engine, p, q, RULES, direction, source)
        published = getattr(best, attr)
        if not oracle.passes(np.zeros(len(engine.feeder.ders))):
            assert not (best.certificate.export, best.certificate.import_)[direction].certified
            continue
        assert (published <= engine.feeder.ders.rating_w * (1 + 1e-12)).all()
        assert oracle.passes(published), f"max-total {attr} fails AC"
        others = max(getattr(results[p], attr).sum() for p in (Policy.EQUAL, Policy.PROPORTIONAL))
        assert published.sum() >= others * (1 - BELOW), f"max-total {attr} total {published.sum():.0f} W < {others:.0f}"


@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_baran_wu_max_total_passes_ac_and_beats_equal_and_proportional(baran_wu: Feeder, data: st.DataObject) -> None:
    fed, p, q, source = scenario_33(baran_wu, data)
    assert_max_total_beats_the_others(PowerFlow(fed), p, q, source)


@settings(max_examples=8, **SETTINGS)
@given(data=st.data())
def test_european_lv_max_total_passes_ac_and_beats_equal_and_proportional(european_lv: Feeder,
                                                                           data: st.DataObject) -> None:
    fed, p, q, source = scenario_lv(european_lv, data)
    assert_max_total_beats_the_others(PowerFlow(fed), p, q, source)


@pytest.mark.parametrize("policy", list(Policy))
def test_baran_wu_envelope_holds_in_opendss(policy: Policy) -> None:
    """OpenDSS as an independent engine: the published envelope, solved by OpenDSS on the shared case33bw.dss with
    its loads at the worst end of the bound, keeps every node inside the band (and touches the binding limit)."""
    needs("dss")
    path = shared("baran-wu-33/case33bw.dss")
    feeder = with_ders(load_feeder(path), ["pv1", "pv2", "pv3", "pv4"], ["b12", "b17", "b24", "b31"],
                       rating_w=[1200e3, 900e3, 2700e3, 1800e3])
    p, q = feeder.loads.p_w * 0.4, feeder.loads.q_var * 0.4
    result = certify_envelope(PowerFlow(feeder), EnvelopeRequest(policy=policy, criteria=CRITERIA), load_p_w=p,
                              load_q_var=q)
    assert result.certified
    cert = result.certificate
    for direction, published, binding in ((EXPORT, result.export_w, cert.export.binding),
                                          (IMPORT, result.import_w, cert.import_.binding)):
        seen = opendss_solution(path, feeder, *worst_loads(feeder, p, q, RULES, direction), published, direction)
        v_high, v_low = RULES.vmax_pu - RULES.margin_v_pu, RULES.vmin_pu + RULES.margin_v_pu
        assert v_low - 1e-6 <= seen["vmin"]
        assert seen["vmax"] <= v_high + 1e-6
        # What our engine says binds, OpenDSS sees at the limit too: the envelope is not timid either.
        assert binding.startswith(("vmax at bus", "vmin at bus")[direction])
        assert (seen["vmax"], seen["vmin"])[direction] == pytest.approx((v_high, v_low)[direction], abs=1e-4)
