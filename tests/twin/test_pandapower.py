"""The pandapower importer: Baran-Wu's published answer, and the bundled IEEE European LV network."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.twin import FeederError, Phase, PowerFlow, from_pandapower
from tests.twin._data import needs, shared_json


@pytest.fixture(scope="module")
def networks() -> object:
    return needs("pandapower.networks")


def test_baran_wu_through_pandapower_meets_the_published_answer(networks: object) -> None:
    feeder = from_pandapower(networks.case33bw())  # type: ignore[attr-defined]
    assert len(feeder.buses) == 33
    assert len(feeder.lines) == 32
    res = PowerFlow(feeder).solve()
    assert res.losses_w[0] / 1e3 == pytest.approx(202.67, abs=0.1)
    assert res.vmin_pu[0] == pytest.approx(0.9131, abs=1e-4)
    assert res.vmin_bus[0] + 1 == 18


def test_baran_wu_through_pandapower_matches_pandapowers_own_solution(networks: object) -> None:
    ref = shared_json("baran-wu-33/reference.json")
    res = PowerFlow(from_pandapower(networks.case33bw())).solve()  # type: ignore[attr-defined]
    np.testing.assert_allclose(res.v_pu[0, :, 0], ref["bus_vm_pu_pandapower"], atol=1e-6)
    assert res.losses_w[0] / 1e3 == pytest.approx(ref["pandapower"]["loss_kw"], abs=1e-4)


def test_the_bundled_european_lv_network_loads_and_solves(networks: object) -> None:
    """The default feeder the product can use without ../shared: pandapower ships it."""
    net = networks.ieee_european_lv_asymmetric("on_peak_566")  # type: ignore[attr-defined]
    feeder = from_pandapower(net)
    assert len(feeder.buses) == 907
    assert len(feeder.lines) == 905
    assert len(feeder.transformers) == 1
    assert len(feeder.loads) == 55
    assert not feeder.balanced
    assert set(feeder.loads.phase.tolist()) <= {Phase.A, Phase.B, Phase.C}
    res = PowerFlow(feeder).solve()
    assert res.converged[0]
    assert 0.99 < res.vmin_pu[0] < res.vmax_pu[0] < 1.08


def test_unsupported_elements_are_refused_by_name(networks: object) -> None:
    pp = needs("pandapower")
    net = networks.case33bw()  # type: ignore[attr-defined]
    pp.create_shunt(net, bus=5, q_mvar=0.3, name="cap5")
    pp.create_gen(net, bus=9, p_mw=0.5, vm_pu=1.0, name="gen9")
    with pytest.raises(FeederError) as caught:
        from_pandapower(net)
    found = {(i.component, i.field): set(i.ids) for i in caught.value.issues}
    assert found == {("shunt", ""): {"cap5"}, ("gen", ""): {"gen9"}}


def test_static_generators_become_der_connection_points(networks: object) -> None:
    pp = needs("pandapower")
    net = networks.case33bw()  # type: ignore[attr-defined]
    pp.create_sgen(net, bus=17, p_mw=0.2, sn_mva=0.25, name="pv18")
    feeder = from_pandapower(net)
    assert feeder.ders.name.tolist() == ["pv18"]
    assert feeder.ders.bus[0] == 17
    assert feeder.ders.rating_w[0] == pytest.approx(250e3)
    engine = PowerFlow(feeder)
    export = engine.solve_batch(np.array([[200e3]]))
    assert export.vmin_pu[0] > engine.solve().vmin_pu[0]
