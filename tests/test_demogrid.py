"""The demo grid (``gateway._demogrid``): simulated devices on the bundled IEEE European LV feeder.

Its truth is held to an independent oracle (``tests/twin/_estimate_data.true_states``: power-grid-model's
Newton-Raphson on the whole feeder, the head meter's flow taken from the transformer's secondary), and what the
devices then show is held to that truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway._demogrid import DemoGrid, LoadProfile, Placement
from gateway.errors import ConfigError
from gateway.segment import open_feeder
from gateway.sim import PhysicsSettings, SimulatedDevice, make_devices
from gateway.twin import Feeder
from tests.twin._estimate_data import head_bus, true_states

SOURCE_V_PU = 1.025
PLACEMENTS = (Placement("inverter-1", "899", "b"), Placement("inverter-2", "886", "b"),
              Placement("inverter-3", "898", "b"), Placement("battery-1", "906", "abc"))


@pytest.fixture(scope="module")
def feeder() -> Feeder:
    """Loaded once (pandapower is slow to import and build it)."""
    return open_feeder("builtin:ieee-european-lv")


def _devices() -> dict[str, SimulatedDevice]:
    made = make_devices(["inverter:3", "battery", "meter"], physics=PhysicsSettings(v_nom=240.0))
    ids = ["inverter-1", "inverter-2", "inverter-3", "battery-1", "meter-1"]
    return {device_id: device for device_id, (_, device) in zip(ids, made, strict=True)}


async def test_a_step_is_the_feeders_power_flow_and_the_devices_show_it(feeder: Feeder) -> None:
    devices = _devices()
    for device in devices.values():
        device.update()
    grid = DemoGrid(feeder, devices, PLACEMENTS, meter="meter-1", source_v_pu=SOURCE_V_PU)
    flow = await grid.step()
    assert flow.converged
    p, q = grid.outputs()
    assert flow.der_p_w == pytest.approx(p)  # the DERs as their plants delivered
    assert flow.der_q_var == pytest.approx(q)
    assert p[:3].min() > 1000.0  # noon: the inverters export
    nominal = float(feeder.loads.p_w.sum())
    assert float(flow.load_p_w.sum()) == pytest.approx(nominal * grid.profile.common(0.0), rel=0.05)

    truth = true_states(grid.feeder, flow.load_p_w[None], flow.load_q_var[None], flow.der_p_w[None],
                        flow.der_q_var[None], np.array([SOURCE_V_PU]))
    head, _ = head_bus(grid.feeder)
    assert head == grid.head_bus
    assert flow.head_p_w == pytest.approx(float(truth.head_p.sum()), abs=2.0)
    assert flow.head_q_var == pytest.approx(float(truth.head_q.sum()), abs=2.0)
    assert flow.head_v_pu == pytest.approx(float(truth.v[0, head].mean()), abs=1e-5)
    # per phase: the voltages the whole feeder's, the flows the oracle's per phase (as exact as the totals)
    assert flow.head_v_ph_pu == pytest.approx(truth.v[0, head], abs=1e-9)
    assert flow.head_p_ph_w.sum() == pytest.approx(flow.head_p_w, abs=1e-6)
    assert flow.head_q_ph_var.sum() == pytest.approx(flow.head_q_var, abs=1e-6)
    assert flow.head_p_ph_w == pytest.approx(truth.head_p[0], abs=2.0)
    assert flow.head_q_ph_var == pytest.approx(truth.head_q[0], abs=2.0)
    assert np.ptp(truth.head_p[0]) > 100.0  # the phases do differ: an even split would fail the line above
    ders = grid.feeder.ders
    expected_v = [truth.v[0, b, 1] if name.startswith("inverter") else truth.v[0, b].mean()
                  for name, b in zip(ders.name, ders.bus, strict=True)]
    assert flow.der_v_pu == pytest.approx(expected_v, abs=3e-4)  # the head balanced: ~1e-4 pu off

    # what a client reads now: the meter the head's flow and voltage, each DER its voltage (noise: 0.001 pu)
    phase_v = 416.0 / math.sqrt(3.0)
    meter = devices["meter-1"]
    meter.update()
    assert meter.value(203, "W") == pytest.approx(flow.head_p_w, rel=0.005)
    assert meter.value(203, "VAR") == pytest.approx(flow.head_q_var, rel=0.005)
    assert meter.value(203, "PhV") == pytest.approx(flow.head_v_pu * phase_v, abs=0.005 * phase_v)
    for k, ph in enumerate("ABC"):
        assert meter.value(203, f"Wph{ph}") == pytest.approx(flow.head_p_ph_w[k], rel=0.005, abs=1.0)
        assert meter.value(203, f"VARph{ph}") == pytest.approx(flow.head_q_ph_var[k], rel=0.005, abs=1.0)
        assert meter.value(203, f"PhVph{ph}") == pytest.approx(flow.head_v_ph_pu[k] * phase_v, abs=0.005 * phase_v)
    for k, placement in enumerate(PLACEMENTS):
        device = devices[placement.device]
        device.update()
        assert device.value(103, "PhVphA") == pytest.approx(flow.der_v_pu[k] * phase_v, abs=0.005 * phase_v)


def test_the_loads_vary_slowly_around_their_mean(feeder: Feeder) -> None:
    profile = LoadProfile(mean=0.5, swing=0.1, period_s=240.0, noise=0.03, tau_s=20.0, seed=1)
    grid = DemoGrid(feeder, _devices(), PLACEMENTS, meter="meter-1", source_v_pu=SOURCE_V_PU, profile=profile)
    nominal = np.asarray(feeder.loads.p_w)
    factors = np.array([grid.loads(float(t))[0] / nominal for t in range(600)])  # (t, load)
    assert factors.mean() == pytest.approx(0.5, abs=0.02)
    common = np.array([profile.common(float(t)) for t in range(600)])
    own = factors / common[:, None] - 1.0  # each load's own noise
    assert own.std() == pytest.approx(0.03, rel=0.3)
    # slowly: a first-order process with a 20 s correlation time, its lag-1 s autocorrelation exp(-1/20)
    lag1 = float((own[1:] * own[:-1]).mean() / (own * own).mean())
    assert lag1 == pytest.approx(math.exp(-1.0 / 20.0), abs=0.03)


def test_what_the_feeder_or_the_fleet_lacks_is_named(feeder: Feeder) -> None:
    devices = _devices()
    with pytest.raises(ConfigError, match="'inverter-9': no such simulated device"):
        DemoGrid(feeder, devices, [Placement("inverter-9", "899")], meter=None, source_v_pu=1.0)
    with pytest.raises(ConfigError, match="phase 'x'"):
        DemoGrid(feeder, devices, [Placement("inverter-1", "899", "x")], meter=None, source_v_pu=1.0)
    with pytest.raises(ConfigError, match="meter 'inverter-1'"):
        DemoGrid(feeder, devices, [], meter="inverter-1", source_v_pu=1.0)
    with pytest.raises(ConfigError, match="unknown bus 'nowhere'"):
        DemoGrid(feeder, devices, [Placement("inverter-1", "nowhere")], meter=None, source_v_pu=1.0)
