"""The certified envelope beyond random scenarios: the default envelope when it cannot certify, limit overrides
(request and feeder file), interval and voltage-dependent loads, the value types it publishes, bad requests."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from gateway.twin import (
    Criteria,
    EnvelopeError,
    EnvelopeRequest,
    Feeder,
    FlowOptions,
    Phase,
    Policy,
    PowerFlow,
    ScenarioError,
    certify_envelope,
    dump_feeder,
    from_pandapower,
    load_feeder,
    with_ders,
)
from gateway.types import DerLimit, Envelope, EnvelopeCertificate
from tests.twin._data import small_feeder
from tests.twin._oracle import EXPORT, IMPORT, Oracle, Rules, acceptable, assert_matches_truth


def sized(feeder: Feeder, factor: float = 8.0) -> Feeder:
    """The small feeder with DER ratings large enough for the network, not the ratings, to bind."""
    return dataclasses.replace(feeder, ders=dataclasses.replace(feeder.ders, rating_w=feeder.ders.rating_w * factor))


@pytest.mark.parametrize("unbalanced", [True, False], ids=["unbalanced", "balanced"])
@pytest.mark.parametrize("policy", [Policy.EQUAL, Policy.PROPORTIONAL])
def test_interval_and_voltage_dependent_loads_match_the_truth(unbalanced: bool, policy: Policy) -> None:
    """The small feeder: OpenDSS-banded loads, one load with an interval [0, 8 kW] (its ends are the worst case,
    not the load bound), a rated transformer and lines; balanced, the import side is bound by line l0's rating."""
    feeder = sized(small_feeder(unbalanced=unbalanced))
    engine = PowerFlow(feeder)
    result = certify_envelope(engine, EnvelopeRequest(policy=policy))
    assert result.certified
    assert_matches_truth(engine, result, policy, feeder.loads.p_w, feeder.loads.q_var, None, Rules())
    if not unbalanced:
        assert result.certificate.import_.binding == "loading of line l0"
        assert result.certificate.import_.max_loading == pytest.approx(0.99, abs=0.003)


def test_the_interval_ends_are_the_worst_case_not_the_load_bound() -> None:
    """Give the interval load a high floor: the export envelope shrinks less than when the floor is 0 (a load that
    is surely there absorbs export), the import side is bound by the interval's top end."""
    feeder = sized(small_feeder(unbalanced=False))
    base = certify_envelope(PowerFlow(feeder))
    loads = feeder.loads
    floored = dataclasses.replace(feeder, loads=dataclasses.replace(loads, p_min_w=np.where(
        np.isnan(loads.p_min_w), np.nan, 8e3)))
    lifted = certify_envelope(PowerFlow(floored))
    assert lifted.export_w.sum() > base.export_w.sum()
    assert lifted.import_w.sum() == pytest.approx(base.import_w.sum(), rel=0.005)  # same top end: 8 kW


def test_a_load_drawing_negative_power_is_bounded_at_its_worst_end() -> None:
    """An operating point (an estimate, say) where a load draws negative power (net generation): the export check
    takes its most negative end (operating point times the bound's high end), the import check its least, and
    the envelope holds at both against the AC truth."""
    feeder = sized(small_feeder(unbalanced=False))
    engine = PowerFlow(feeder)
    p, q = feeder.loads.p_w.copy(), feeder.loads.q_var.copy()
    k = int(np.argmax(p))
    p[k], q[k] = -p[k], -q[k]
    result = certify_envelope(engine, EnvelopeRequest(), load_p_w=p, load_q_var=q)
    assert result.certificate.export.certified
    assert_matches_truth(engine, result, Policy.EQUAL, p, q, None, Rules())


def test_the_linear_estimate_is_corrected_by_ac() -> None:
    """Import from the linear estimate alone would break the voltage floor; the certified envelope does not."""
    feeder = sized(small_feeder(unbalanced=True))
    engine = PowerFlow(feeder)
    result = certify_envelope(engine, EnvelopeRequest(policy=Policy.EQUAL))
    assert (result.import_linear_w > result.import_w * 1.02).all()  # the linear estimate is too generous
    oracle = Oracle(PowerFlow(feeder, FlowOptions(reduce=False)), feeder.loads.p_w, feeder.loads.q_var, Rules(),
                    IMPORT)
    assert not oracle.passes(result.import_linear_w)
    assert oracle.passes(result.import_w)
    assert result.certificate.ac_solves > 4  # the linear batch, then AC corrections


def test_equal_stops_at_the_first_failing_level_where_passing_is_not_monotone() -> None:
    """European LV, unbalanced: along the ``equal`` line vmax rises until the 23.5 kW DER stops at its rating, then
    falls while the three-phase 24 kW one keeps rising (found by the property test). Every DER at its rating
    passes, but a level below it fails: the envelope is the first crossing, below the failing window."""
    pn = pytest.importorskip("pandapower.networks")
    feeder = from_pandapower(pn.ieee_european_lv_asymmetric())
    loads = feeder.loads
    sites = np.array([0, 28, 23, 12, 17])
    phase = np.where([True, False, True, False, False], Phase.ABC, loads.phase[sites])
    fed = with_ders(feeder, [f"pv{k}" for k in range(5)], loads.bus[sites], phase=phase,
                    rating_w=[23e3, 2e3, 20e3, 24e3, 23.5e3])
    p, q, source = loads.p_w * 0.25, loads.q_var * 0.25, 1.003586829816702
    engine = PowerFlow(fed)
    result = certify_envelope(engine, EnvelopeRequest(policy=Policy.EQUAL), load_p_w=p, load_q_var=q,
                              source_v_pu=source)
    oracle = Oracle(PowerFlow(fed, FlowOptions(reduce=False)), p, q, Rules(), EXPORT, source)
    rating = fed.ders.rating_w
    assert oracle.passes(rating)  # the top of the line passes ...
    assert not oracle.passes(np.minimum(23.5e3, rating))  # ... a level below it does not
    assert result.export_w.max() < 23.5e3
    assert_matches_truth(engine, result, Policy.EQUAL, p, q, source, Rules())


# -- the default envelope ---------------------------------------------------------------------------------------
def test_limits_impossible_even_at_0_w_give_the_default_envelope() -> None:
    feeder = small_feeder()  # source at 1.03 pu
    engine = PowerFlow(feeder)
    request = EnvelopeRequest(criteria=Criteria(vmax_pu=1.0), default_export_w=7e3, default_import_w=2e3)
    result = certify_envelope(engine, request)
    cert = result.certificate
    assert not result.certified
    assert not cert.export.certified
    assert not cert.import_.certified
    for direction in (cert.export, cert.import_):
        assert direction.reason is not None
        assert "fails with every DER at 0 W" in direction.reason
        assert "vmax at bus" in direction.reason
        assert direction.binding == "default envelope"
        assert math.isnan(direction.vmax_pu)
    # The configured default, capped at each DER's rating (6, 8, 15 kW).
    np.testing.assert_array_equal(result.export_w, [6e3, 7e3, 7e3])
    np.testing.assert_array_equal(result.import_w, [2e3, 2e3, 2e3])
    assert cert.reason is not None
    assert cert.reason.startswith("export: fails with every DER at 0 W")
    published = result.envelope(issuer="gw1", sequence=3, valid_from=0.0, valid_until=60.0)
    assert isinstance(published, Envelope)
    assert not published.certified
    assert published.certificate is None
    assert published.reason == cert.reason
    document = result.as_json()
    assert document["certificate"]["certified"] is False
    assert document["certificate"]["vmax_pu"] is None
    assert document["ders"]["pv6"] == pytest.approx({"export_kw": 7.0, "import_kw": 2.0, "rating_kw": 8.0,
                                                     "export_linear_kw": document["ders"]["pv6"]["export_linear_kw"],
                                                     "import_linear_kw": document["ders"]["pv6"]["import_linear_kw"]})


def test_one_direction_failing_keeps_the_other_certified() -> None:
    """vmin 1.015 pu: import (maximum loads) fails at 0 W, export (minimum loads, voltages rise) is certified."""
    feeder = sized(small_feeder())
    result = certify_envelope(PowerFlow(feeder), EnvelopeRequest(criteria=Criteria(vmin_pu=1.015)))
    assert result.certificate.export.certified
    assert not result.certificate.import_.certified
    assert "vmin at bus" in (result.certificate.import_.reason or "")
    assert (result.export_w > 0).all()
    np.testing.assert_array_equal(result.import_w, 0.0)
    assert not result.certified


def test_a_feeder_that_does_not_converge_gives_the_default_envelope() -> None:
    feeder = small_feeder(banded=False)  # constant power at every voltage: 100 times the load has no solution
    loads = feeder.loads
    engine = PowerFlow(feeder)
    result = certify_envelope(engine, EnvelopeRequest(default_export_w=1e3, default_import_w=1e3),
                              load_p_w=loads.p_w * 600, load_q_var=loads.q_var * 600)
    assert not result.certified
    for direction in (result.certificate.export, result.certificate.import_):
        assert not direction.certified
        assert "did not converge" in (direction.reason or "")
    np.testing.assert_array_equal(result.export_w, 1e3)
    np.testing.assert_array_equal(result.import_w, 1e3)
    assert result.as_json()["certificate"]["vmin_pu"] is None


def test_non_convergence_above_the_limit_still_certifies_below_it() -> None:
    """Unrated DERs on constant-power loads: the import search runs into levels where the AC power flow has no
    solution; those count as failing, and the published level is one that converged and passed."""
    feeder = small_feeder(banded=False)
    unrated = dataclasses.replace(feeder, ders=dataclasses.replace(feeder.ders, rating_w=np.full(3, np.nan)))
    engine = PowerFlow(unrated)
    result = certify_envelope(engine, EnvelopeRequest(policy=Policy.EQUAL))
    assert result.certified
    oracle = Oracle(PowerFlow(unrated, FlowOptions(reduce=False)), feeder.loads.p_w, feeder.loads.q_var, Rules(),
                    IMPORT)
    assert oracle.passes(result.import_w)
    assert not oracle.passes(result.import_w * 1.01)


# -- limits: request, feeder file ---------------------------------------------------------------------------------
def test_feeder_file_limits_and_request_overrides(tmp_path: Path) -> None:
    feeder = sized(small_feeder(unbalanced=False))
    path = tmp_path / "limited.toml"
    dump_feeder(feeder, path)
    text = path.read_text()
    assert "vmax_pu = 1.05" in text
    path.write_text(text.replace("vmax_pu = 1.05", "vmax_pu = 1.04").replace("vmin_pu = 0.95", "vmin_pu = 0.97"))
    limited = load_feeder(path)
    engine = PowerFlow(limited)
    p, q = limited.loads.p_w, limited.loads.q_var

    from_file = certify_envelope(engine, EnvelopeRequest(policy=Policy.PROPORTIONAL))
    cert = from_file.certificate
    assert (cert.vmin_limit_pu, cert.vmax_limit_pu) == (0.97, 1.04)
    assert_matches_truth(engine, from_file, Policy.PROPORTIONAL, p, q, None, Rules(vmin_pu=0.97, vmax_pu=1.04))
    default = certify_envelope(PowerFlow(feeder), EnvelopeRequest(policy=Policy.PROPORTIONAL))
    assert from_file.export_w.sum() < default.export_w.sum()
    assert from_file.import_w.sum() < default.import_w.sum()

    overridden = certify_envelope(engine, EnvelopeRequest(policy=Policy.PROPORTIONAL,
                                                          criteria=Criteria(vmax_pu=1.045, vmin_pu=0.96)))
    cert = overridden.certificate
    assert (cert.vmin_limit_pu, cert.vmax_limit_pu) == (0.96, 1.045)
    assert_matches_truth(engine, overridden, Policy.PROPORTIONAL, p, q, None, Rules(vmin_pu=0.96, vmax_pu=1.045))


def test_the_margins_and_the_load_bound_are_kept() -> None:
    feeder = sized(small_feeder())
    engine = PowerFlow(feeder)
    rules = Rules(margin_v_pu=0.01, margin_loading=0.05, load_bound=(0.5, 1.1))
    criteria = Criteria(margin_v_pu=0.01, margin_loading=0.05, load_bound=(0.5, 1.1))
    result = certify_envelope(engine, EnvelopeRequest(criteria=criteria))
    assert result.certificate.margin_v_pu == 0.01
    assert result.certificate.export.load_scale == 0.5
    assert_matches_truth(engine, result, Policy.EQUAL, feeder.loads.p_w, feeder.loads.q_var, None, rules)
    tight = Oracle(PowerFlow(feeder), feeder.loads.p_w, feeder.loads.q_var, rules, EXPORT)
    res = tight.solve(result.export_w)
    assert acceptable(res, rules)[0]
    assert res.vmax_pu[0] <= 1.04 + 1e-9


@pytest.mark.parametrize("policy", [Policy.EQUAL, Policy.MAX_TOTAL])
def test_a_der_rated_0_w_gets_0_w_and_the_others_their_room(policy: Policy) -> None:
    feeder = with_ders(small_feeder(), ["off", "b", "c"], ["n3", "n6", "n8"], rating_w=[0.0, 20e3, 30e3])
    result = certify_envelope(PowerFlow(feeder), EnvelopeRequest(policy=policy))
    assert result.certified
    assert result.export_w[0] == result.import_w[0] == 0.0
    assert (result.export_w[1:] > 0).all()
    assert (result.import_w[1:] > 0).all()
    oracle = Oracle(PowerFlow(feeder, FlowOptions(reduce=False)), feeder.loads.p_w, feeder.loads.q_var, Rules(),
                    EXPORT)
    assert oracle.passes(result.export_w)


# -- what it publishes, and bad requests ------------------------------------------------------------------------
def test_it_publishes_the_shared_value_types() -> None:
    feeder = sized(small_feeder())
    result = certify_envelope(PowerFlow(feeder), EnvelopeRequest(policy=Policy.MAX_TOTAL))
    assert result.certified
    limits = result.ders()
    assert all(isinstance(limit, DerLimit) for limit in limits)
    assert [limit.der_id for limit in limits] == ["pv3", "pv6", "pv4"]
    assert [limit.export_w for limit in limits] == result.export_w.tolist()
    published = result.envelope(issuer="gw1", sequence=7, valid_from=10.0, valid_until=70.0)
    assert published.certified
    assert published.limits == limits
    summary = published.certificate
    assert isinstance(summary, EnvelopeCertificate)
    assert summary.ac_solves == result.certificate.ac_solves
    assert summary.vmax_pu == result.certificate.vmax_pu
    assert summary.margin_pu == result.certificate.margin_v_pu
    assert "max-total" in summary.method
    document = result.as_json()
    assert set(document["ders"]["pv3"]) >= {"export_kw", "import_kw"}
    assert set(document["certificate"]) >= {"vmax_pu", "vmin_pu", "max_loading", "method", "ac_solves", "certified",
                                            "margin_pu"}
    assert document["ders"]["pv4"]["export_kw"] == pytest.approx(result.export_w[2] / 1e3)


def test_requests_that_cannot_be_computed_are_refused() -> None:
    feeder = small_feeder()
    bare = dataclasses.replace(feeder, ders=dataclasses.replace(feeder.ders, name=feeder.ders.name[:0],
                                                                bus=feeder.ders.bus[:0], phase=feeder.ders.phase[:0],
                                                                rating_w=feeder.ders.rating_w[:0]))
    with pytest.raises(EnvelopeError, match="no DER"):
        certify_envelope(PowerFlow(bare))
    unrated = with_ders(feeder, ["a", "b"], ["n3", "n6"], rating_w=[5e3, np.nan])
    with pytest.raises(EnvelopeError, match=r"proportional needs every DER's rating.*missing: b"):
        certify_envelope(PowerFlow(unrated), EnvelopeRequest(policy=Policy.PROPORTIONAL))
    with pytest.raises(ScenarioError, match="leave no band"):
        certify_envelope(PowerFlow(feeder), EnvelopeRequest(criteria=Criteria(vmin_pu=1.02, vmax_pu=1.0)))
    with pytest.raises(ScenarioError, match="load_p_w"):
        certify_envelope(PowerFlow(feeder), load_p_w=np.ones(2))
    with pytest.raises(EnvelopeError, match="rtol"):
        EnvelopeRequest(rtol=0.0)
    with pytest.raises(EnvelopeError, match="default_export_w"):
        EnvelopeRequest(default_export_w=-1.0)
    with pytest.raises(ValueError, match="not a valid Policy"):
        EnvelopeRequest(policy="biggest")  # type: ignore[arg-type]
