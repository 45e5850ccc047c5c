"""Hosting capacity per bus against the test's own bisection with full AC solves (tests/twin/_oracle.py): the largest
new DER at a bus, today's envelope holders at their published limits, export (generation) and import; never above
the truth, never more than 0.5 % below it."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.twin import (
    Criteria,
    EnvelopeError,
    EnvelopeRequest,
    Feeder,
    FeederError,
    FlowOptions,
    HostingRequest,
    HostingResult,
    Phase,
    PowerFlow,
    certify_envelope,
    from_pandapower,
    hosting_capacity,
    with_ders,
)
from tests.twin._data import needs
from tests.twin._oracle import BELOW, EXPORT, IMPORT, Oracle, Rules, acceptable

RULES = Rules()


@pytest.fixture(scope="module")
def baran_wu() -> Feeder:
    pn = needs("pandapower.networks")
    return from_pandapower(pn.case33bw())


def assert_hosting_matches_truth(feeder: Feeder, result: HostingResult, p: np.ndarray, q: np.ndarray,
                                 source_v_pu: float | None, phase: Phase = Phase.ABC, top: float = 50e6) -> None:
    held = np.zeros((2, len(feeder.ders))) if result.holders is None else np.stack(
        [result.holders.export_w, result.holders.import_w])
    for k, bus in enumerate(result.bus):
        fed = with_ders(feeder, ["new"], [str(bus)], phase=[phase], keep=True)
        engine = PowerFlow(fed, FlowOptions(reduce=False))
        for direction, hosting, binding in ((EXPORT, result.export_w, result.export_binding),
                                            (IMPORT, result.import_w, result.import_binding)):
            oracle = Oracle(engine, p, q, RULES, direction, source_v_pu)
            row = held[direction]

            def outputs(t: float, row: np.ndarray = row) -> np.ndarray:
                return np.append(row, t)

            truth = oracle.bisect(outputs, top, grid=6, rtol=1e-4)  # one new DER: a short scan
            name = f"bus {bus} {('export', 'import')[direction]}"
            assert np.isfinite(truth.hi), f"{name}: the oracle's range is too small"
            assert np.isfinite(truth.lo), f"{name}: the holders alone fail"
            assert acceptable(oracle.solve(np.append(held[direction], hosting[k])), RULES)[0], f"{name} fails AC"
            assert hosting[k] <= truth.hi, f"{name}: above the truth"
            assert hosting[k] >= truth.lo * (1 - BELOW), (f"{name}: {hosting[k]:.0f} W, truth {truth.lo:.0f} W "
                                                          f"({binding[k]})")
            assert binding[k] not in ("search bound", "fails without a new DER")


@pytest.mark.parametrize("holders", [True, False], ids=["holders", "no-holders"])
def test_baran_wu_hosting_matches_the_truth(baran_wu: Feeder, holders: bool) -> None:
    feeder = with_ders(baran_wu, ["pv17", "pv32"], ["17", "32"], rating_w=[300e3, 800e3]) if holders else baran_wu
    p, q = baran_wu.loads.p_w * 0.4, baran_wu.loads.q_var * 0.4
    request = HostingRequest(buses=("5", "12", "17", "24", "30"))
    result = hosting_capacity(feeder, request, load_p_w=p, load_q_var=q)
    assert result.bus.tolist() == ["5", "12", "17", "24", "30"]
    assert result.certified == (True, True)
    assert result.tolerance_met.all()
    if holders:
        assert result.holders is not None
        assert result.holders.certified
        assert (result.holders.export_w > 0).all()
        assert (result.holders.import_w > 0).all()
    else:
        assert result.holders is None
    assert_hosting_matches_truth(feeder, result, p, q, None)


def test_hosting_falls_as_the_holders_take_the_room(baran_wu: Feeder) -> None:
    p, q = baran_wu.loads.p_w * 0.4, baran_wu.loads.q_var * 0.4
    request = HostingRequest(buses=("17", "32"))
    alone = hosting_capacity(baran_wu, request, load_p_w=p, load_q_var=q)
    held = hosting_capacity(with_ders(baran_wu, ["pv"], ["17"], rating_w=[200e3]), request, load_p_w=p,
                            load_q_var=q)
    assert (held.export_w < alone.export_w).all()
    assert (held.import_w < alone.import_w).all()


def test_european_lv_hosting_matches_the_truth() -> None:
    pn = needs("pandapower.networks")
    feeder = from_pandapower(pn.ieee_european_lv_asymmetric())
    loads = feeder.loads
    sites = [str(feeder.buses.name[loads.bus[k]]) for k in (0, 30, 54)]
    p, q = loads.p_w, loads.q_var
    for phase in (Phase.ABC, Phase.B):
        result = hosting_capacity(feeder, HostingRequest(buses=tuple(sites), phase=phase), load_p_w=p,
                                  load_q_var=q, source_v_pu=1.02)
        assert result.certified == (True, True)
        assert_hosting_matches_truth(feeder, result, p, q, 1.02, phase=phase, top=2e6)


def test_holders_given_are_used_as_published(baran_wu: Feeder) -> None:
    feeder = with_ders(baran_wu, ["pv17"], ["17"], rating_w=[300e3])
    p, q = baran_wu.loads.p_w * 0.4, baran_wu.loads.q_var * 0.4
    envelope = certify_envelope(PowerFlow(feeder), EnvelopeRequest(default_import_w=0.0), load_p_w=p, load_q_var=q)
    result = hosting_capacity(feeder, HostingRequest(buses=("24",)), holders=envelope, load_p_w=p, load_q_var=q)
    assert result.holders is envelope
    assert_hosting_matches_truth(feeder, result, p, q, None)
    other = certify_envelope(PowerFlow(with_ders(baran_wu, ["x"], ["17"])), load_p_w=p, load_q_var=q)
    with pytest.raises(EnvelopeError, match="holders' envelope is for DERs"):
        hosting_capacity(feeder, holders=other)


def test_when_nothing_passes_every_bus_hosts_0_w_and_says_why(baran_wu: Feeder) -> None:
    result = hosting_capacity(baran_wu, HostingRequest(buses=("5", "17"), criteria=Criteria(vmax_pu=1.0)),
                              source_v_pu=1.02)
    assert result.certified == (False, False)
    assert result.reason is not None
    assert "fails with the holders at their limits and no new DER" in result.reason
    assert "vmax at bus" in result.reason
    np.testing.assert_array_equal(result.export_w, 0.0)
    np.testing.assert_array_equal(result.import_w, 0.0)
    assert set(result.export_binding) == {"fails without a new DER"}
    document = result.as_json()
    assert document["certified"] is False
    assert document["buses"]["5"]["hosting_kw"] == 0.0


def test_every_bus_but_the_source_by_default_and_bad_buses_refused(baran_wu: Feeder) -> None:
    p, q = baran_wu.loads.p_w * 0.4, baran_wu.loads.q_var * 0.4
    result = hosting_capacity(baran_wu, load_p_w=p, load_q_var=q)
    assert result.bus.tolist() == [str(b) for b in range(1, 33)]
    assert result.certified == (True, True)
    # Further from the source, less room: the end of the main feeder hosts least.
    assert result.export_w[16] == result.export_w[:17].min()
    document = result.as_json()
    assert list(document["buses"]) == result.bus.tolist()
    assert document["buses"]["17"]["hosting_kw"] == pytest.approx(result.export_w[16] / 1e3)
    assert document["ac_solves"] == result.ac_solves > 64
    with pytest.raises(FeederError, match=r"unknown bus \(hosting candidate\) \[nowhere\]"):
        hosting_capacity(baran_wu, HostingRequest(buses=("5", "nowhere")))
