"""The OpenDSS importer and the engine against OpenDSS itself: the reference feeders in ../shared/feeders, and
the hand-made feeder written as an OpenDSS script and solved by dss-python in every load regime."""

from __future__ import annotations

import builtins
import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.twin import Feeder, FeederError, LoadModel, Phase, PowerFlow, Regime, from_opendss, load_feeder
from tests.twin._data import needs, shared, shared_json, small_feeder

SQRT3 = math.sqrt(3.0)


def node_voltages(feeder: Feeder, v_pu: np.ndarray, keys: list[str]) -> np.ndarray:
    """Our per-unit voltages at OpenDSS node names (``"bus.phase"``)."""
    index = feeder.bus_lookup()
    out = []
    for key in keys:
        bus, phase = key.rsplit(".", 1)
        out.append(v_pu[index[bus], int(phase) - 1])
    return np.array(out)


# -- Baran & Wu 33-bus: the published answer ----------------------------------------------------------------------
def test_baran_wu_through_opendss_meets_the_published_answer() -> None:
    needs("dss")
    published = shared_json("baran-wu-33/reference.json")["published"]
    feeder = load_feeder(shared("baran-wu-33/case33bw.dss"))
    assert feeder.balanced
    assert len(feeder.buses) == 33
    assert len(feeder.lines) == 32
    res = PowerFlow(feeder).solve()
    assert res.converged[0]
    assert res.losses_w[0] / 1e3 == pytest.approx(published["loss_kw"], abs=0.1)
    assert res.vmin_pu[0] == pytest.approx(published["vmin_pu"], abs=1e-4)
    assert res.vmin_bus[0] + 1 == published["vmin_bus_1based"] == 18  # b17 is bus 18 in the published numbering
    assert feeder.buses.name[res.vmin_bus[0]] == "b17"


def test_baran_wu_through_opendss_matches_opendss_itself() -> None:
    needs("dss")
    ref = shared_json("baran-wu-33/reference.json")
    res = PowerFlow(load_feeder(shared("baran-wu-33/case33bw.dss"))).solve()
    assert res.losses_w[0] / 1e3 == pytest.approx(ref["opendss"]["loss_kw"], abs=1e-5)
    assert res.vmin_pu[0] == pytest.approx(ref["opendss"]["vmin"], abs=1e-8)
    np.testing.assert_allclose(res.v_pu[0, :, 0], ref["bus_vm_pu_pandapower"], atol=2e-6)  # 6-decimal table


# -- IEEE European LV: OpenDSS's own solution ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def european_lv() -> Feeder:
    needs("dss")
    return load_feeder(shared("ieee-european-lv/Master.dss"))


def test_european_lv_matches_opendss_at_every_node(european_lv: Feeder) -> None:
    ref = shared_json("ieee-european-lv/reference-opendss.json")
    assert not european_lv.balanced
    assert len(european_lv.loads) == 55
    res = PowerFlow(european_lv).solve()
    keys = list(ref["node_vm_pu"])
    assert len(keys) == 3 * len(european_lv.buses) == 2721
    ours = node_voltages(european_lv, res.v_pu[0], keys)
    error = np.abs(ours - np.array([ref["node_vm_pu"][k] for k in keys]))
    assert error.max() < 1e-3  # the issue's bound
    assert error.max() < 1e-6  # what OpenDSS's load semantics reach: the table's 6-decimal rounding (5.3e-7)
    assert res.losses_w[0] / 1e3 == pytest.approx(ref["total_losses_kw"], rel=1e-6)
    assert res.source_p_w[0] / 1e3 == pytest.approx(ref["total_input_kw"], rel=1e-6)
    assert res.vmin_pu[0] == pytest.approx(ref["vmin_pu"], abs=1e-6)
    assert res.vmax_pu[0] == pytest.approx(ref["vmax_pu"], abs=1e-6)


def test_european_lv_loads_sit_above_vmaxpu_so_a_constant_power_model_misses(european_lv: Feeder) -> None:
    """Rated 0.23 kV at ~1.04 pu of 240 V: above vmaxpu, OpenDSS draws them as impedances (Yeq105)."""
    ref = shared_json("ieee-european-lv/reference-opendss.json")
    engine = PowerFlow(european_lv)
    assert (engine._base_regime[np.arange(55), european_lv.loads.phase - 1] == Regime.HIGH).all()
    n = len(european_lv.loads)
    plain = dataclasses.replace(european_lv, loads=dataclasses.replace(
        european_lv.loads, vmin_pu=np.full(n, np.nan), vmax_pu=np.full(n, np.nan), vlow_pu=np.full(n, np.nan)))
    keys = list(ref["node_vm_pu"])
    expected = np.array([ref["node_vm_pu"][k] for k in keys])
    miss = np.abs(node_voltages(plain, PowerFlow(plain).solve().v_pu[0], keys) - expected).max()
    hit = np.abs(node_voltages(european_lv, engine.solve().v_pu[0], keys) - expected).max()
    assert 0.9e-3 < miss < 1.3e-3  # constant power everywhere: ~1.07e-3 pu off
    assert hit < miss / 1000


# -- IEEE 13: refused, clearly ------------------------------------------------------------------------------------
def test_ieee13_as_shipped_is_refused_naming_the_missing_redirect() -> None:
    needs("dss")
    with pytest.raises(FeederError) as caught:
        load_feeder(shared("ieee13/IEEE13Nodeckt.dss"))
    assert "could not compile" in str(caught.value)
    assert "IEEELineCodes.DSS" in str(caught.value)


def test_ieee13_is_refused_naming_regulators_laterals_and_capacitors(tmp_path: Path) -> None:
    needs("dss")
    folder = shared("ieee13")
    for name in ("IEEE13Nodeckt.dss", "IEEE13Node_BusXY.csv"):  # a scratch copy, outside the repository
        shutil.copy(folder / name, tmp_path / name)
    (tmp_path / "IEEELineCodes.DSS").write_text("! its line codes are all defined in the master\n")
    with pytest.raises(FeederError) as caught:
        from_opendss(tmp_path / "IEEE13Nodeckt.dss")
    found = {(i.component, i.field): set(i.ids) for i in caught.value.issues}
    assert found[("regcontrol", "")] == {"regcontrol.reg1", "regcontrol.reg2", "regcontrol.reg3"}
    assert {"line.684611", "line.684652"} <= set().union(*(ids for (c, f), ids in found.items() if c == "line"))
    assert {"capacitor.cap1", "capacitor.cap2"} == found[("capacitor", "")]
    assert "transformer.reg1" in found[("transformer", "phases")]
    assert "load.646" in found[("load", "phases")]
    message = str(caught.value)
    assert "regulators are not supported" in message
    assert "1-phase lines are not supported" in message


def test_a_missing_dss_python_is_a_clear_feeder_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_dss(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "dss":
            raise ImportError("No module named 'dss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dss)
    master = tmp_path / "m.dss"
    master.write_text("clear\n")
    with pytest.raises(FeederError, match=r"dss-python.*'opendss' extra"):
        load_feeder(master)


def test_a_dss_file_that_does_not_compile_is_a_feeder_error(tmp_path: Path) -> None:
    needs("dss")
    master = tmp_path / "bad.dss"
    master.write_text("clear\nnew circuit.x basekv=11\nnew line.l1 bus1=sourcebus bus2=b phases=3 linecode=nope\n")
    with pytest.raises(FeederError, match="could not compile"):
        load_feeder(master)


# -- the hand-made feeder, solved by OpenDSS in every regime ------------------------------------------------------
def to_dss(feeder: Feeder, *, der_p_w: np.ndarray, source_v_pu: float, load_scale: float) -> str:
    """An OpenDSS script of ``feeder`` (DER output as negative constant-power loads)."""
    b, s = feeder.buses.name, feeder.source
    x_over_r = 1.0 / s.rx_ratio
    out = ["clear", f"set defaultbasefrequency={feeder.frequency_hz:g}",
           f"new circuit.{feeder.name} basekv={feeder.buses.u_rated_v[s.bus] / 1e3:.12g} pu={source_v_pu:.12g} "
           f"bus1={b[s.bus]} mvasc3={s.sk_va / 1e6:.12g} mvasc1={3 * s.sk_va / 1e6 / (2 + s.z01_ratio):.12g} "
           f"x1r1={x_over_r:.12g} x0r0={x_over_r:.12g}"]
    t = feeder.transformers
    for k in range(len(t)):
        r_pct = t.pk_w[k] / t.sn_va[k] * 100
        x_pct = math.sqrt((t.uk[k] * 100) ** 2 - r_pct**2)
        out.append(f"new transformer.{t.name[k]} phases=3 windings=2 buses=[{b[t.from_bus[k]]} {b[t.to_bus[k]]}] "
                   f"conns=[delta wye] kvs=[{t.u1_v[k] / 1e3:.12g} {t.u2_v[k] / 1e3:.12g}] "
                   f"kvas=[{t.sn_va[k] / 1e3:.12g} {t.sn_va[k] / 1e3:.12g}] xhl={x_pct:.15g} "
                   f"%rs=[{r_pct / 2:.15g} {r_pct / 2:.15g}]")
    ln = feeder.lines
    out += [f"new line.{ln.name[k]} bus1={b[ln.from_bus[k]]} bus2={b[ln.to_bus[k]]} phases=3 "
            f"r1={ln.r1_ohm[k]:.17g} x1={ln.x1_ohm[k]:.17g} r0={ln.r0_ohm[k]:.17g} x0={ln.x0_ohm[k]:.17g} "
            f"c1=0 c0=0 units=none length=1 normamps={ln.i_rated_a[k]:.12g}" for k in range(len(ln))]
    ld = feeder.loads
    for k in range(len(ld)):
        node = "" if ld.phase[k] == Phase.ABC else f".{ld.phase[k]}"
        phases = 3 if ld.phase[k] == Phase.ABC else 1
        out.append(f"new load.{ld.name[k]} bus1={b[ld.bus[k]]}{node} phases={phases} "
                   f"kv={ld.u_rated_v[k] / 1e3:.12g} kw={ld.p_w[k] * load_scale / 1e3:.15g} "
                   f"kvar={ld.q_var[k] * load_scale / 1e3:.15g} model={ld.model[k]} vminpu={ld.vmin_pu[k]:.12g} "
                   f"vmaxpu={ld.vmax_pu[k]:.12g} vlowpu={ld.vlow_pu[k]:.12g}")
    d = feeder.ders
    for k in range(len(d)):
        single = d.phase[k] != Phase.ABC
        kv = feeder.buses.u_rated_v[d.bus[k]] / 1e3 / (SQRT3 if single else 1)
        out.append(f"new load.{d.name[k]} bus1={b[d.bus[k]]}{f'.{d.phase[k]}' if single else ''} "
                   f"phases={1 if single else 3} kv={kv:.12g} kw={-der_p_w[k] / 1e3:.15g} kvar=0 model=1 "
                   "vminpu=0 vmaxpu=100 vlowpu=0")
    volts = sorted({round(u / 1e3, 6) for u in feeder.buses.u_rated_v})
    out += [f"set voltagebases=[{' '.join(f'{v:g}' for v in volts)}]", "calcvoltagebases",
            "set tolerance=1e-10 maxiterations=100", "solve"]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("unbalanced", [True, False], ids=["unbalanced", "balanced"])
@pytest.mark.parametrize(("source_v_pu", "der_share", "load_scale"), [
    (1.06, 1.0, 0.2),    # export at a high source voltage: above vmaxpu
    (1.0, 0.0, 1.0),     # the base case
    (0.97, -1.0, 3.0),   # heavy import: below vminpu
    (1.04, 0.3, 1.5),    # a mix of regimes
    (0.97, -1.0, 40.0),  # collapse: below vlowpu, where constant power has no solution
], ids=["high", "band", "low", "mixed", "collapse"])
def test_the_engine_matches_opendss_in_every_load_regime(tmp_path: Path, unbalanced: bool, source_v_pu: float,
                                                         der_share: float, load_scale: float) -> None:
    dss = needs("dss")
    feeder = small_feeder(unbalanced=unbalanced)
    der = feeder.ders.rating_w * der_share
    master = tmp_path / "small.dss"
    master.write_text(to_dss(feeder, der_p_w=der, source_v_pu=source_v_pu, load_scale=load_scale))
    ctx = dss.DSS.NewContext()
    ctx.AllowChangeDir = False
    ctx.Text.Command = f'compile "{master}"'
    circuit = ctx.ActiveCircuit
    assert circuit.Solution.Converged
    keys = [k.lower() for k in circuit.AllNodeNames]
    expected = np.asarray(circuit.AllBusVmagPu)
    res = PowerFlow(feeder).solve_batch(der[None], source_v_pu=np.array([source_v_pu]),
                                        load_scale=np.array([load_scale]))
    assert res.converged[0]
    error = np.abs(node_voltages(feeder, res.v_pu[0], keys) - expected).max()
    assert error < 1e-7  # measured 1.6e-8 to 2.3e-8
    assert res.losses_w[0] == pytest.approx(circuit.Losses[0], rel=1e-5)


def test_importing_the_written_script_gives_back_the_feeder(tmp_path: Path) -> None:
    needs("dss")
    feeder = small_feeder()
    master = tmp_path / "small.dss"
    master.write_text(to_dss(feeder, der_p_w=np.zeros(3), source_v_pu=1.03, load_scale=1.0))
    back = from_opendss(master)
    assert back.buses.name.tolist() == feeder.buses.name.tolist()
    np.testing.assert_allclose(back.buses.u_rated_v, feeder.buses.u_rated_v)
    for field in ("from_bus", "to_bus", "r1_ohm", "x1_ohm", "r0_ohm", "x0_ohm", "i_rated_a"):
        np.testing.assert_allclose(getattr(back.lines, field), getattr(feeder.lines, field), rtol=1e-12,
                                   err_msg=field)
    real = np.char.startswith(back.loads.name, "load.load")
    for field in ("bus", "phase", "p_w", "q_var", "model", "u_rated_v", "vmin_pu", "vmax_pu", "vlow_pu"):
        np.testing.assert_allclose(getattr(back.loads, field)[real], getattr(feeder.loads, field), rtol=1e-12,
                                   err_msg=field)
    t, u = back.transformers, feeder.transformers
    for field in ("sn_va", "u1_v", "u2_v", "uk", "pk_w", "winding_from", "winding_to", "clock"):
        np.testing.assert_allclose(getattr(t, field), getattr(u, field), rtol=1e-12, err_msg=field)
    assert back.source.v_pu == pytest.approx(1.03)
    assert back.source.sk_va == pytest.approx(feeder.source.sk_va, rel=1e-9)
    assert back.source.rx_ratio == pytest.approx(feeder.source.rx_ratio, rel=1e-9)
    assert back.loads.model.tolist()[:6] == [int(m) for m in feeder.loads.model]
    assert LoadModel.I in back.loads.model
