"""Fixed (off-nominal) transformer taps: the same tapped feeder in our engine, OpenDSS and pandapower; bad taps are
refused naming the field; the feeder file keeps taps through a dump and load."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.twin import (
    Feeder,
    FeederError,
    PowerFlow,
    Side,
    dumps_feeder,
    feeder_from_dict,
    from_opendss,
    from_pandapower,
    load_feeder,
)
from tests.twin._data import needs

#: 11/0.416 kV Dyn1, 2.5 % per step on the 11 kV winding, one step up: OpenDSS ``taps=[1.025 1]``.
TAP_STEP = 0.025
FEEDER: dict[str, Any] = {
    "name": "tapped",
    "bus": [{"name": "mv", "u_rated_v": 11000.0}, {"name": "lv", "u_rated_v": 416.0},
            {"name": "c1", "u_rated_v": 416.0}],
    "line": [{"name": "l1", "from_bus": "lv", "to_bus": "c1", "r1_ohm": 0.02, "x1_ohm": 0.008, "r0_ohm": 0.08,
              "x0_ohm": 0.03, "i_rated_a": 400.0}],
    "transformer": [{"name": "t1", "from_bus": "mv", "to_bus": "lv", "sn_va": 250e3, "u1_v": 11000.0,
                     "u2_v": 416.0, "uk": 0.04, "pk_w": 2500.0, "winding_from": "delta", "winding_to": "wye_n",
                     "clock": 1, "tap_side": "from", "tap_pos": 1, "tap_min": -2, "tap_max": 2, "tap_nom": 0,
                     "tap_size_v": TAP_STEP * 11000.0}],
    "load": [{"name": "house", "bus": "c1", "p_w": 60e3, "q_var": 15e3}],
    "source": {"bus": "mv", "v_pu": 1.0},
}


def tapped(**changes: Any) -> dict[str, Any]:
    """The feeder's structure with the transformer's fields changed."""
    return {**FEEDER, "transformer": [{**FEEDER["transformer"][0], **changes}]}


def voltages(feeder: Feeder) -> dict[str, float]:
    res = PowerFlow(feeder).solve()
    assert res.converged[0]
    return {str(n): float(res.v_pu[0, k, 0]) for k, n in enumerate(feeder.buses.name)}


def dss_script(taps: str, extra: str = "") -> str:
    r_pct = 2500.0 / 250e3 * 100
    x_pct = math.sqrt(4.0**2 - r_pct**2)
    return "\n".join([
        "clear", "set defaultbasefrequency=50",
        "new circuit.tapped basekv=11 pu=1.0 bus1=mv mvasc3=1e9 mvasc1=1e9 x1r1=10 x0r0=10",
        f"new transformer.t1 phases=3 windings=2 buses=[mv lv] conns=[delta wye] kvs=[11 0.416] kvas=[250 250] "
        f"xhl={x_pct:.15g} %rs=[{r_pct / 2:.15g} {r_pct / 2:.15g}] taps=[{taps}]", extra,
        "new line.l1 bus1=lv bus2=c1 phases=3 r1=0.02 x1=0.008 r0=0.08 x0=0.03 c1=0 c0=0 units=none length=1",
        "new load.house bus1=c1 phases=3 kv=0.416 kw=60 kvar=15 model=1 vminpu=0 vmaxpu=100 vlowpu=0",
        "set voltagebases=[11 0.416]", "calcvoltagebases", "set tolerance=1e-10 maxiterations=100", "solve", "",
    ])


def opendss_voltages(master: Path) -> dict[str, float]:
    """OpenDSS's per-unit voltage of each bus's first node."""
    dss = needs("dss")
    ctx = dss.DSS.NewContext()
    ctx.AllowChangeDir = False
    ctx.Text.Command = f'compile "{master}"'
    circuit = ctx.ActiveCircuit
    assert circuit.Solution.Converged
    values = np.asarray(circuit.AllBusVmagPu)
    return {str(k).lower().split(".")[0]: float(v) for k, v in zip(circuit.AllNodeNames, values, strict=True)
            if str(k).endswith(".1")}


def assert_close(ours: dict[str, float], theirs: dict[str, float], tol: float) -> float:
    assert set(ours) == set(theirs)
    error = max(abs(ours[b] - theirs[b]) for b in ours)
    assert error < tol, (ours, theirs)
    return error


def test_the_tap_moves_the_voltage_it_should() -> None:
    """Guards the comparisons below: one step up on the 11 kV winding lowers the LV side by about 2.5 %."""
    with_tap, without = voltages(feeder_from_dict(FEEDER)), voltages(feeder_from_dict(tapped(tap_pos=0)))
    assert with_tap["mv"] == pytest.approx(without["mv"], abs=1e-9)
    assert with_tap["lv"] / without["lv"] == pytest.approx(1 / (1 + TAP_STEP), rel=2e-3)


def test_a_tapped_feeder_matches_opendss_with_the_equivalent_taps(tmp_path: Path) -> None:
    master = tmp_path / "tapped.dss"
    master.write_text(dss_script("1.025 1"))
    assert_close(voltages(feeder_from_dict(FEEDER)), opendss_voltages(master), 1e-7)


@pytest.mark.parametrize("taps", ["1.025 1", "1 0.975", "1.025 0.99", "1.0131 1"])
def test_imported_opendss_taps_solve_as_opendss_does(tmp_path: Path, taps: str) -> None:
    """Either winding, both (the second folded into its voltage), and a tap off OpenDSS's 0.00625 grid."""
    master = tmp_path / "tapped.dss"
    master.write_text(dss_script(taps))
    feeder = from_opendss(master)
    assert_close(voltages(feeder), opendss_voltages(master), 1e-7)
    t = feeder.transformers
    tap1, tap2 = (float(x) for x in taps.split())
    ratio = ((t.u1_v + (t.tap_pos - t.tap_nom) * t.tap_size_v * (t.tap_side == Side.FROM))
             / (t.u2_v + (t.tap_pos - t.tap_nom) * t.tap_size_v * (t.tap_side == Side.TO)))
    assert ratio[0] == pytest.approx(11.0 * tap1 / (0.416 * tap2), rel=1e-12)


def test_the_opendss_importer_maps_a_tap_onto_its_step_grid(tmp_path: Path) -> None:
    master = tmp_path / "tapped.dss"
    master.write_text(dss_script("1.025 1"))
    t = from_opendss(master).transformers
    step = (1.1 - 0.9) / 32  # OpenDSS's defaults: MinTap 0.9, MaxTap 1.1, NumTaps 32
    assert (t.tap_side[0], t.tap_pos[0], t.tap_nom[0], t.tap_min[0], t.tap_max[0]) == (Side.FROM, 4, 0, -16, 16)
    assert t.tap_size_v[0] == pytest.approx(step * 11000.0)
    assert t.u1_v[0] == pytest.approx(11000.0)


def test_a_second_winding_tap_uses_that_windings_step_grid(tmp_path: Path) -> None:
    master = tmp_path / "tapped.dss"
    master.write_text(dss_script("1 0.98", "edit transformer.t1 wdg=2 mintap=0.95 maxtap=1.05 numtaps=10"))
    feeder = from_opendss(master)
    t = feeder.transformers
    assert (t.tap_side[0], t.tap_pos[0], t.tap_min[0], t.tap_max[0]) == (Side.TO, -2, -5, 5)
    assert t.tap_size_v[0] == pytest.approx(0.01 * 416.0)
    assert_close(voltages(feeder), opendss_voltages(master), 1e-7)


def pandapower_net(**trafo: Any) -> Any:
    pp = needs("pandapower")
    net = pp.create_empty_network(f_hz=50.0)
    mv, lv, c1 = (pp.create_bus(net, vn_kv=kv, name=n) for n, kv in (("mv", 11.0), ("lv", 0.416), ("c1", 0.416)))
    pp.create_ext_grid(net, mv, vm_pu=1.0)
    pp.create_transformer_from_parameters(
        net, mv, lv, sn_mva=0.25, vn_hv_kv=11.0, vn_lv_kv=0.416, vkr_percent=1.0, vk_percent=4.0, pfe_kw=0.0,
        i0_percent=0.0, shift_degree=30, vector_group="Dyn", name="t1", **trafo)
    pp.create_line_from_parameters(net, lv, c1, length_km=1.0, r_ohm_per_km=0.02, x_ohm_per_km=0.008,
                                   c_nf_per_km=0.0, max_i_ka=0.4, name="l1")
    pp.create_load(net, c1, p_mw=0.06, q_mvar=0.015, name="house")
    return net


def pandapower_voltages(net: Any) -> dict[str, float]:
    pp = needs("pandapower")
    pp.runpp(net, tolerance_mva=1e-12, calculate_voltage_angles=True)
    return {str(net.bus.at[i, "name"]): float(v) for i, v in net.res_bus.vm_pu.items()}


RATIO_TAP = {"tap_side": "hv", "tap_neutral": 0, "tap_min": -2, "tap_max": 2, "tap_step_percent": 2.5,
             "tap_pos": 1, "tap_changer_type": "Ratio"}


@pytest.mark.parametrize("trafo", [
    RATIO_TAP,
    {**RATIO_TAP, "tap_side": "lv", "tap_pos": -2, "tap_neutral": 1, "tap_min": -3, "tap_max": 3},
    {**RATIO_TAP, "tap_changer_type": "Symmetrical"},
], ids=["hv", "lv-neutral-1", "symmetrical"])
def test_a_tapped_pandapower_net_solves_as_pandapower_does(trafo: dict[str, Any]) -> None:
    net = pandapower_net(**trafo)
    feeder = from_pandapower(net)
    t = feeder.transformers
    side = Side.TO if trafo["tap_side"] == "lv" else Side.FROM
    assert (t.tap_side[0], t.tap_pos[0], t.tap_nom[0]) == (side, trafo["tap_pos"], trafo["tap_neutral"])
    assert_close(voltages(feeder), pandapower_voltages(net), 1e-7)


def test_the_hand_written_feeder_matches_pandapower_with_the_equivalent_tap_pos() -> None:
    assert_close(voltages(feeder_from_dict(FEEDER)), pandapower_voltages(pandapower_net(**RATIO_TAP)), 1e-7)


def test_a_pandapower_tap_without_a_changer_type_is_no_tap_as_in_pandapower() -> None:
    """pandapower 3 applies ``tap_pos`` only with a ``tap_changer_type``: the importer must not invent one."""
    net = pandapower_net(**{**RATIO_TAP, "tap_changer_type": None})
    feeder = from_pandapower(net)
    assert_close(voltages(feeder), pandapower_voltages(net), 1e-7)
    assert voltages(feeder)["lv"] == pytest.approx(voltages(feeder_from_dict(tapped(tap_pos=0)))["lv"], abs=1e-9)


@pytest.mark.parametrize(("trafo", "field"), [
    ({**RATIO_TAP, "tap_changer_type": "Ideal"}, "tap_changer_type"),
    ({**RATIO_TAP, "tap_pos": 1.5}, "tap_pos"),
    ({**RATIO_TAP, "tap_pos": 300, "tap_max": 300}, "tap_pos"),
], ids=["ideal-phase-shifter", "fractional", "beyond-int8"])
def test_pandapower_taps_the_engine_cannot_carry_are_refused_by_name(trafo: dict[str, Any], field: str) -> None:
    with pytest.raises(FeederError) as caught:
        from_pandapower(pandapower_net(**trafo))
    assert ("transformer", field, ("t1",)) in {(i.component, i.field, i.ids) for i in caught.value.issues}


@pytest.mark.parametrize(("changes", "field"), [
    ({"tap_pos": 3}, "tap_pos"),                      # above tap_max
    ({"tap_pos": -3}, "tap_pos"),                     # below tap_min
    ({"tap_nom": 5}, "tap_nom"),
    ({"tap_size_v": -10.0}, "tap_size_v"),
    ({"tap_side": "hv"}, "tap_side"),
    ({"tap_pos": 1.5}, "tap_pos"),
    ({"tap_pos": 200, "tap_max": 200}, "tap_pos"),   # power-grid-model's taps are int8
    ({"tap_min": -129}, "tap_min"),
])
def test_a_bad_tap_is_refused_naming_the_transformer_and_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(FeederError) as caught:
        feeder_from_dict(tapped(**changes))
    assert ("transformer", field, ("t1",)) in {(i.component, i.field, i.ids) for i in caught.value.issues}
    assert f"transformer.{field}" in str(caught.value)


def test_a_reversed_tap_range_reverses_the_step_as_in_power_grid_model() -> None:
    """tap_min > tap_max: a higher position lowers the tap-side winding voltage (power-grid-model's convention)."""
    reversed_range = voltages(feeder_from_dict(tapped(tap_min=2, tap_max=-2)))
    assert reversed_range == pytest.approx(voltages(feeder_from_dict(tapped(tap_pos=-1))), abs=1e-12)
    assert reversed_range["lv"] > voltages(feeder_from_dict(tapped(tap_pos=0)))["lv"] + 0.02


def test_a_reversed_pandapower_tap_range_keeps_pandapowers_ratio() -> None:
    net = pandapower_net(**{**RATIO_TAP, "tap_min": 2, "tap_max": -2})
    assert_close(voltages(from_pandapower(net)), pandapower_voltages(net), 1e-7)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_dump_and_load_keep_the_taps(tmp_path: Path, fmt: str) -> None:
    feeder = feeder_from_dict(tapped(tap_side="to", tap_pos=-1, tap_min=-4, tap_max=4, tap_nom=1, tap_size_v=5.2))
    path = tmp_path / f"tapped.{fmt}"
    path.write_text(dumps_feeder(feeder, fmt))
    back = load_feeder(path)
    for field in ("tap_side", "tap_pos", "tap_min", "tap_max", "tap_nom", "tap_size_v", "u1_v", "u2_v"):
        np.testing.assert_array_equal(getattr(back.transformers, field), getattr(feeder.transformers, field),
                                      err_msg=field)
    assert voltages(back) == voltages(feeder)


def test_an_untapped_transformer_has_no_tap_by_default() -> None:
    row = {k: v for k, v in FEEDER["transformer"][0].items() if not k.startswith("tap")}
    t = feeder_from_dict({**FEEDER, "transformer": [row]}).transformers
    assert (t.tap_pos[0], t.tap_nom[0], t.tap_min[0], t.tap_max[0], t.tap_size_v[0]) == (0, 0, 0, 0, 0.0)


def test_the_documented_tap_example_is_what_it_says() -> None:
    """FEEDER_FORMAT.md's t1 sits one 275 V step below nominal on its 11 kV winding: OpenDSS ``taps=[0.975 1]``."""
    text = (Path(__file__).resolve().parents[2] / "gateway" / "twin" / "FEEDER_FORMAT.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    t = feeder_from_dict(tomllib.loads(example.group(1))).transformers
    assert (t.tap_side[0], t.tap_pos[0], t.tap_nom[0], t.tap_size_v[0]) == (Side.FROM, -1, 0, 275.0)
    assert t.u1_v[0] + (t.tap_pos[0] - t.tap_nom[0]) * t.tap_size_v[0] == pytest.approx(11000.0 * 0.975)
