"""The twin benchmark's reference: the same feeder, DERs and envelope problem in OpenDSS (dss-python), by bisection.

Owns :class:`OpenDssFeeder` (a compiled circuit with the benchmark's DERs added, solved element by element through
the dss-python API) and :func:`dss_commands` (a :class:`Feeder` written as OpenDSS commands, for a fresh clone where
only pandapower's copies of the feeders exist).

The DERs: DER ``k`` is ``Generator.der{k}`` (export) and ``Load.der{k}_in`` (import) at its bus and phase, both
constant P at unity power factor inside a 0.5-1.5 pu band (power-grid-model's generators are constant power at any
voltage). The feeder's own loads keep their OpenDSS model; the reference sets their kW and kvar to the problem's
(``LoadMult`` 1), so both engines see the same numbers. The check of a solve is the envelope's: converged, every node
voltage (``AllBusVmagPu``) inside ``[v_low, v_high]``, every rated line's largest conductor current at either end
(``PDElements.AllMaxCurrents(True)``) over its ``normamps`` and every transformer's worst phase apparent power
(times 3 when the feeder is unbalanced) over its rating at most ``loading_high``.

Bisection (equal policy: every DER at ``min(level, rating)``): the level 0 must pass (else the direction cannot be
certified), the largest rating is tried next, then the bracket is halved until ``hi <= lo * (1 + rtol)``, the
envelope's own stopping rule. Every step is a full OpenDSS ``Solve`` (warm-started from the previous solution, at
OpenDSS's default tolerance, as OpenDSS is normally run).

Replay (:meth:`OpenDssFeeder.replay`): the scenarios another search solved, one by one, judged the same way: the
engines compared on the same AC work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.twin import Feeder, LoadModel, Phase, Winding

FloatArray = NDArray[np.float64]
SQRT3 = math.sqrt(3.0)
#: The band inside which the DERs' generators and loads stay constant power.
DER_BAND = "vminpu=0.5 vmaxpu=1.5"


@dataclass(frozen=True, slots=True)
class Problem:
    """One envelope problem, as both engines solve it: limits with margins applied, the worst-case loads
    ``(2, n_load)`` (row 0 export, row 1 import), the DER ratings (W) and the search's relative tolerance."""

    v_low: float
    v_high: float
    loading_high: float
    load_p_w: FloatArray
    load_q_var: FloatArray
    rating_w: FloatArray
    rtol: float


@dataclass(frozen=True, slots=True)
class Bisection:
    """One direction's answer: the level (W per DER before the rating cap; NaN: even 0 W fails) and the solves."""

    level_w: float
    solves: int


def _kv(feeder: Feeder, bus: int, phase: int) -> float:
    line_kv = float(feeder.buses.u_rated_v[bus]) / 1e3
    return line_kv if phase == Phase.ABC else line_kv / SQRT3


def _terminal(name: str, phase: int) -> str:
    return name if phase == Phase.ABC else f"{name}.{phase}"


def _band(vmin: float, vmax: float, vlow: float) -> str:
    """OpenDSS's load band; NaN edges (no band) become edges no voltage reaches."""
    low = 0.01 if math.isnan(vlow) else vlow
    below = max(low + 0.01, 0.02) if math.isnan(vmin) else vmin
    above = 100.0 if math.isnan(vmax) else vmax
    return f"vminpu={below:.6g} vmaxpu={above:.6g} vlowpu={low:.6g}"


def dss_commands(feeder: Feeder) -> list[str]:
    """``feeder`` as OpenDSS commands (buses ``b{index}``, loads ``ld{index}``): what the reference compiles when
    there is no OpenDSS master (a fresh clone: the feeders come from pandapower). Lines by sequence impedance;
    two-winding transformers delta or grounded wye (the tap applied to the tapped winding's voltage); the
    source as a Thevenin impedance with power-grid-model's convention (``Z0`` with the R/X of ``Z1``)."""
    b, s = feeder.buses, feeder.source
    kv = b.u_rated_v / 1e3
    z1 = float(b.u_rated_v[s.bus]) ** 2 / s.sk_va
    x1 = z1 / math.sqrt(1.0 + s.rx_ratio**2)
    r1, r0, x0 = s.rx_ratio * x1, s.rx_ratio * x1 * s.z01_ratio, x1 * s.z01_ratio
    out = ["clear", f"set defaultbasefrequency={feeder.frequency_hz:g}",
           f"new circuit.bench bus1=b{s.bus} basekv={kv[s.bus]:.9g} pu={s.v_pu:.9g} phases=3 "
           f"z1=[{r1:.9g}, {x1:.9g}] z0=[{r0:.9g}, {x0:.9g}]"]
    ln = feeder.lines
    for k in range(len(ln)):
        r0k = ln.r1_ohm[k] if math.isnan(ln.r0_ohm[k]) else ln.r0_ohm[k]
        x0k = ln.x1_ohm[k] if math.isnan(ln.x0_ohm[k]) else ln.x0_ohm[k]
        amps = f" normamps={ln.i_rated_a[k]:.9g}" if np.isfinite(ln.i_rated_a[k]) else ""
        out.append(f"new line.l{k} bus1=b{ln.from_bus[k]} bus2=b{ln.to_bus[k]} phases=3 units=none length=1 "
                   f"r1={ln.r1_ohm[k]:.9g} x1={ln.x1_ohm[k]:.9g} r0={r0k:.9g} x0={x0k:.9g} "
                   f"c1={ln.c1_f[k] * 1e9:.9g} c0={ln.c0_f[k] * 1e9:.9g}{amps}")
    t = feeder.transformers
    conn = {Winding.DELTA: "delta", Winding.WYE_N: "wye"}
    for k in range(len(t)):
        if t.winding_from[k] not in conn or t.winding_to[k] not in conn:
            raise ValueError(f"transformer {t.name[k]}: only delta and grounded-wye windings are written")
        u = [float(t.u1_v[k]), float(t.u2_v[k])]
        u[int(t.tap_side[k])] += (int(t.tap_pos[k]) - int(t.tap_nom[k])) * float(t.tap_size_v[k])
        r_pct = float(t.pk_w[k] / t.sn_va[k]) * 100.0
        x_pct = math.sqrt(max((float(t.uk[k]) * 100.0) ** 2 - r_pct**2, 0.0))
        kva = float(t.sn_va[k]) / 1e3
        out.append(f"new transformer.t{k} phases=3 windings=2 buses=[b{t.from_bus[k]}, b{t.to_bus[k]}] "
                   f"conns=[{conn[Winding(t.winding_from[k])]}, {conn[Winding(t.winding_to[k])]}] "
                   f"kvs=[{u[0] / 1e3:.9g}, {u[1] / 1e3:.9g}] kvas=[{kva:.9g}, {kva:.9g}] xhl={x_pct:.9g} "
                   f"%rs=[{r_pct / 2:.9g}, {r_pct / 2:.9g}] %noloadloss={float(t.p0_w[k] / t.sn_va[k]) * 100:.9g} "
                   f"%imag={float(t.i0[k]) * 100:.9g}")
    ld = feeder.loads
    for k in range(len(ld)):
        phase = int(ld.phase[k])
        rated = _kv(feeder, int(ld.bus[k]), phase) if math.isnan(ld.u_rated_v[k]) else ld.u_rated_v[k] / 1e3
        out.append(f"new load.ld{k} bus1={_terminal(f'b{ld.bus[k]}', phase)} phases={3 if phase == Phase.ABC else 1} "
                   f"kv={rated:.9g} kw={ld.p_w[k] / 1e3:.9g} kvar={ld.q_var[k] / 1e3:.9g} "
                   f"model={int(ld.model[k])} {_band(ld.vmin_pu[k], ld.vmax_pu[k], ld.vlow_pu[k])}")
    bases = ", ".join(f"{v:.9g}" for v in sorted(set(kv.tolist()), reverse=True))
    out += [f"set voltagebases=[{bases}]", "calcvoltagebases"]
    return out


class OpenDssFeeder:
    """``feeder`` compiled in OpenDSS from ``master`` (or from :func:`dss_commands`), with its DERs added."""

    def __init__(self, feeder: Feeder, master: Path | None) -> None:
        import dss  # the opendss extra

        if any(m not in (LoadModel.PQ, LoadModel.Z, LoadModel.I) for m in feeder.loads.model.tolist()):
            raise ValueError("load models other than 1, 2 and 5 are not written")
        self.feeder = feeder
        ctx = dss.DSS.NewContext()
        ctx.AllowChangeDir = False
        ctx.AllowForms = False
        self.ctx = ctx
        if master is not None:
            self._text(f'compile "{master}"')
            bus_names = [str(n) for n in feeder.buses.name]
            load_names = [str(n).removeprefix("load.") for n in feeder.loads.name]
        else:
            for command in dss_commands(feeder):
                self._text(command)
            bus_names = [f"b{k}" for k in range(len(feeder.buses))]
            load_names = [f"ld{k}" for k in range(len(feeder.loads))]
        ckt = ctx.ActiveCircuit
        self.circuit, self.solution = ckt, ckt.Solution
        if ckt.Vsources.Count != 1 or not ckt.Vsources.First:
            raise ValueError("the reference expects exactly one Vsource")
        ckt.Vsources.pu = feeder.source.v_pu  # the operating point's source voltage
        self.solution.LoadMult = 1.0  # the reference sets every load's kW and kvar itself
        d = feeder.ders
        for k in range(len(d)):
            bus, phase = int(d.bus[k]), int(d.phase[k])
            where = (f"bus1={_terminal(bus_names[bus], phase)} phases={3 if phase == Phase.ABC else 1} "
                     f"kv={_kv(feeder, bus, phase):.9g} kw=0 pf=1 model=1 {DER_BAND}")
            self._text(f"new generator.der{k} {where}")
            self._text(f"new load.der{k}_in {where} vlowpu=0.4")
        self.load_idx = self._indices(ckt.Loads, load_names)
        self.der_load_idx = self._indices(ckt.Loads, [f"der{k}_in" for k in range(len(d))])
        self.gen_idx = self._indices(ckt.Generators, [f"der{k}" for k in range(len(d))])
        pd = ckt.PDElements
        names = [str(n).lower() for n in pd.AllNames]
        normamps: dict[str, float] = {}
        for name in ckt.Lines.AllNames:
            ckt.Lines.Name = name
            normamps[f"line.{name.lower()}"] = float(ckt.Lines.NormAmps)
        self.line_at = np.array([k for k, n in enumerate(names) if n in normamps], dtype=np.intp)
        self.line_amps = np.array([normamps[names[k]] for k in self.line_at])
        self.transformers = [n for n in names if n.startswith("transformer.")]
        self.transformer_va: list[float] = []
        for name in self.transformers:
            ckt.Transformers.Name = name.removeprefix("transformer.")
            self.transformer_va.append(float(ckt.Transformers.kVA) * 1e3)
        self.unbalanced = not feeder.balanced
        self.set_loads(feeder.loads.p_w, feeder.loads.q_var)
        self.set_ders(np.zeros(len(d)))
        self.solution.Solve()
        if not self.solution.Converged:
            raise RuntimeError("OpenDSS did not converge at the operating point")

    @staticmethod
    def _indices(collection: Any, names: list[str]) -> list[int]:
        found: dict[str, int] = {}
        i = collection.First
        while i:
            found[str(collection.Name).lower()] = int(collection.idx)
            i = collection.Next
        return [found[n.lower()] for n in names]

    def _text(self, command: str) -> None:
        self.ctx.Text.Command = command

    # -- one solve ---------------------------------------------------------------------------------------------
    def set_loads(self, p_w: FloatArray, q_var: FloatArray) -> None:
        loads = self.circuit.Loads
        for i, p, q in zip(self.load_idx, (p_w / 1e3).tolist(), (q_var / 1e3).tolist(), strict=True):
            loads.idx = i
            loads.kW = p
            loads.kvar = q

    def set_ders(self, output_w: FloatArray) -> None:
        """DER outputs, W (+ export through the generators, - import through the DER loads)."""
        gens, loads = self.circuit.Generators, self.circuit.Loads
        kw = (output_w / 1e3).tolist()
        for i, j, p in zip(self.gen_idx, self.der_load_idx, kw, strict=True):
            gens.idx = i
            gens.kW = max(p, 0.0)
            loads.idx = j
            loads.kW = max(-p, 0.0)

    def voltages(self) -> FloatArray:
        """Solve and return every node's voltage magnitude, pu (NaN when OpenDSS did not converge)."""
        self.solution.Solve()
        v = np.asarray(self.circuit.AllBusVmagPu, dtype=float)
        return v if self.solution.Converged else np.full_like(v, np.nan)

    def worst(self) -> tuple[bool, float, float, float]:
        """Solve; ``(converged, vmax_pu, vmin_pu, max_loading)`` (loading NaN when nothing is rated)."""
        v = self.voltages()
        loading = [np.asarray(self.circuit.PDElements.AllMaxCurrents(True))[self.line_at] / self.line_amps]
        for name, rating in zip(self.transformers, self.transformer_va, strict=True):
            self.circuit.SetActiveElement(name)
            element = self.circuit.ActiveCktElement
            s = np.asarray(element.Powers).reshape(element.NumTerminals, element.NumConductors, 2)[:, :3] * 1e3
            if self.unbalanced:  # the worst phase against a third of the rating
                worst = float(np.hypot(s[..., 0], s[..., 1]).max()) * 3.0
            else:
                total = s.sum(axis=1)  # (terminal, [P, Q])
                worst = float(np.hypot(total[:, 0], total[:, 1]).max())
            loading.append(np.array([worst / rating]))
        every = np.concatenate(loading)
        rated = every[np.isfinite(every)]
        return (bool(self.solution.Converged), float(v.max()), float(v.min()),
                float(rated.max()) if rated.size else math.nan)

    # -- the envelope by bisection -----------------------------------------------------------------------------
    def passes(self, problem: Problem, level: float, sign: float) -> bool:
        self.set_ders(sign * np.minimum(level, problem.rating_w))
        converged, vmax, vmin, loading = self.worst()
        return converged and vmax <= problem.v_high and vmin >= problem.v_low and not (
            loading > problem.loading_high)

    def bisect(self, problem: Problem, direction: int) -> Bisection:
        """The largest common level of ``direction`` (0 export, 1 import) that passes, by bisection."""
        sign = 1.0 if direction == 0 else -1.0
        self.set_loads(problem.load_p_w[direction], problem.load_q_var[direction])
        t_max = float(problem.rating_w.max())
        if not self.passes(problem, 0.0, sign):
            return Bisection(math.nan, 1)
        if self.passes(problem, t_max, sign):
            return Bisection(t_max, 2)
        lo, hi, solves = 0.0, t_max, 2
        while hi > lo * (1.0 + problem.rtol) and hi - lo > 1e-9 * t_max:
            mid = 0.5 * (lo + hi)
            if self.passes(problem, mid, sign):
                lo = mid
            else:
                hi = mid
            solves += 1
        return Bisection(lo, solves)

    def envelope(self, problem: Problem) -> tuple[Bisection, Bisection]:
        """Export and import, each from the operating point's source voltage."""
        return self.bisect(problem, 0), self.bisect(problem, 1)

    def replay(self, scenarios: list[tuple[FloatArray, FloatArray, FloatArray]], problem: Problem) -> int:
        """Solve and judge, one by one, scenarios given as batches of DER outputs (W, + export) and load P and Q
        ``(S, n)`` each (the loads set only when they change); how many passed."""
        passed = 0
        last: FloatArray | None = None
        for der, p, q in scenarios:
            for k in range(der.shape[0]):
                if last is None or not np.array_equal(p[k], last):
                    self.set_loads(p[k], q[k])
                    last = p[k]
                self.set_ders(der[k])
                converged, vmax, vmin, loading = self.worst()
                passed += converged and vmax <= problem.v_high and vmin >= problem.v_low and not (
                    loading > problem.loading_high)
        return passed

    def operating_point(self) -> FloatArray:
        """One power flow at the operating point: nominal loads, every DER at 0 W."""
        self.set_loads(self.feeder.loads.p_w, self.feeder.loads.q_var)
        self.set_ders(np.zeros(len(self.feeder.ders)))
        return self.voltages()
