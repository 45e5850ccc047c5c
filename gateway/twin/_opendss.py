"""Import an OpenDSS model (a ``.dss`` master file) as a :class:`Feeder`, through dss-python.

Owns :func:`from_opendss`. It compiles the master in a fresh dss-python engine context (so nothing is shared
with other users of ``dss.DSS``), then reads the circuit element by element. It does not solve: the element data
and the bus voltage bases (``set voltagebases`` + ``calcvoltagebases`` in the master) are all it needs.
dss-python is the optional extra ``opendss``; it is imported here, lazily.

Mapping (anything else that changes a snapshot power flow is refused with a :class:`FeederError` naming every
element, so an imported feeder never silently differs from the model):

- buses: three-phase buses only; ``u_rated_v`` = the bus ``kVBase`` (line-to-neutral) x sqrt(3);
- ``Vsource`` (exactly one, three-phase): ``v_pu`` on the bus base, ``sk_va = u_rated**2 / |Z1|``,
  ``rx_ratio = R1/X1``, ``z01_ratio = |Z0|/|Z1|`` (power-grid-model gives Z0 the R/X of Z1);
- ``Line`` (three-phase, phases in order 1.2.3): sequence impedances from the phase matrices times the length,
  ``Z1 = Zs - Zm``, ``Z0 = Zs + 2 Zm`` with ``Zs``/``Zm`` the mean diagonal/off-diagonal (exact for lines given
  by sequence impedances; a transposition average for others); likewise ``C``; ``i_rated_a`` = ``normamps``;
- ``Transformer`` (three-phase, two windings): ``uk`` from ``XHL`` and both ``%R`` (on winding 1's kVA),
  ``pk``, ``p0`` (``%noloadloss``), ``i0`` (``%imag``); delta or grounded wye; OpenDSS's phase shift for
  delta-wye and wye-delta (low side lags 30 degrees: clock 1); the taps as a tap changer on the tapped winding
  (its step grid; a remainder, or a second tapped winding, stays in the winding voltage);
- ``Load`` (three-phase, or single-phase phase-to-neutral; models 1, 2, 5): ``kW``/``kvar`` x ``LoadMult``,
  ``model``, ``kV`` (``u_rated_v``), ``vminpu``/``vmaxpu``/``vlowpu``. A three-phase delta load is modelled as its
  balanced wye equivalent;
- ``Generator``/``PVSystem`` -> DER connection points (rating: ``kVArated``); their dispatch is not kept;
- ``Settings.NormVminpu``/``NormVmaxpu`` -> :class:`Limits`; the solution frequency -> ``frequency_hz``.

Ignored (no effect on a snapshot power flow): ``EnergyMeter``, ``Monitor``, ``Fuse``, ``Recloser``, ``Relay``,
``SwtControl``. Refused: regulators (``RegControl``), capacitors, reactors, storage, and everything else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import (
    Buses,
    Ders,
    Feeder,
    Limits,
    Lines,
    LoadModel,
    Loads,
    Phase,
    Side,
    Source,
    Transformers,
    Winding,
)
from gateway.twin._validate import validate_feeder

SQRT3 = math.sqrt(3.0)
_IGNORED = {"energymeter", "monitor", "fuse", "recloser", "relay", "swtcontrol"}
_SUPPORTED = {"vsource", "line", "transformer", "load", "generator", "pvsystem"}


def _split(spec: str) -> tuple[str, list[int]]:
    """``"bus.1.2.3"`` -> (``"bus"``, [1, 2, 3]); no nodes -> []."""
    name, *nodes = spec.lower().split(".")
    return name, [int(n) for n in nodes if n]


def _engine() -> Any:
    try:
        import dss  # the optional extra, imported only to read OpenDSS files
    except ImportError as exc:
        raise FeederError((FeederIssue("feeder", "", (), "reading OpenDSS files needs dss-python: install the "
                                       "'opendss' extra (pip install 'gridedge[opendss]')"),)) from exc
    ctx = dss.DSS.NewContext()
    ctx.AllowChangeDir = False  # never change this process's working directory
    ctx.AllowForms = False
    return ctx


class _Reader:
    def __init__(self, ctx: Any, path: Path) -> None:
        self.ctx = ctx
        self.circuit = ctx.ActiveCircuit
        self.path = path
        self.issues: list[FeederIssue] = []
        self.bus_index: dict[str, int] = {}
        self.bus_u_rated: list[float] = []

    def refuse(self, component: str, field: str, name: str, message: str) -> None:
        self.issues.append(FeederIssue(component, field, (name,), message))

    def prop(self, name: str) -> str:
        return str(self.circuit.ActiveCktElement.Properties(name).Val)

    def buses(self) -> Buses:
        c = self.circuit
        names: list[str] = []
        u_rated: list[float] = []
        for name in c.AllBusNames:
            c.SetActiveBus(name)
            bus = c.ActiveBus
            nodes = sorted(set(bus.Nodes) - {0})
            if nodes[:3] != [1, 2, 3]:
                self.refuse("bus", "", name, "not a three-phase bus: single- and two-phase sections are not "
                            "supported (power-grid-model buses are three-phase)")
            if not bus.kVBase > 0:
                self.refuse("bus", "u_rated_v", name, "has no voltage base: the master needs "
                            "'set voltagebases=[...]' and 'calcvoltagebases'")
            self.bus_index[name.lower()] = len(names)
            names.append(name.lower())
            u_rated.append(round(bus.kVBase * 1e3 * SQRT3, 6))  # 11 kV, not 10999.999999999998 V
        self.bus_u_rated = u_rated
        return Buses.create(names, u_rated)

    def bus(self, spec: str, component: str, name: str) -> tuple[int, list[int]]:
        bus, nodes = _split(spec)
        index = self.bus_index.get(bus)
        if index is None:
            self.refuse(component, "bus", name, f"connects to unknown bus {bus!r}")
            return -1, nodes
        return index, nodes

    def elements(self) -> dict[str, list[str]]:
        """Enabled circuit elements by lower-case class; unsupported classes become issues."""
        c = self.circuit
        found: dict[str, list[str]] = {}
        for full in c.AllElementNames:
            cls, _, name = full.partition(".")
            c.SetActiveElement(full)
            if not c.ActiveCktElement.Enabled:
                continue
            kind = cls.lower()
            if kind in _IGNORED:
                continue
            if kind not in _SUPPORTED:
                what = "regulators" if kind == "regcontrol" else f"{cls} elements"
                self.refuse(kind, "", f"{cls}.{name}".lower(), f"{what} are not supported")
                continue
            found.setdefault(kind, []).append(name)
        return found

    def lines(self, names: list[str]) -> Lines:
        c, lines = self.circuit, self.circuit.Lines
        cols: dict[str, list[Any]] = {k: [] for k in (
            "name", "from_bus", "to_bus", "r1_ohm", "x1_ohm", "c1_f", "r0_ohm", "x0_ohm", "c0_f", "i_rated_a")}
        for name in names:
            lines.Name = name
            c.SetActiveElement(f"Line.{name}")
            label = f"line.{name}".lower()
            if lines.Phases != 3:
                self.refuse("line", "phases", label, f"{lines.Phases}-phase lines are not supported")
                continue
            a, nodes_a = self.bus(lines.Bus1, "line", label)
            b, nodes_b = self.bus(lines.Bus2, "line", label)
            if nodes_a not in ([], [1, 2, 3]) or nodes_b not in ([], [1, 2, 3]):
                self.refuse("line", "bus", label, "connects phases out of order (only .1.2.3)")
                continue
            seq = {}
            for key, flat in (("r", lines.Rmatrix), ("x", lines.Xmatrix), ("c", lines.Cmatrix)):
                m = np.asarray(flat, dtype=float).reshape(3, 3) * lines.Length
                zs, zm = np.trace(m) / 3.0, (m.sum() - np.trace(m)) / 6.0
                seq[key] = (zs - zm, zs + 2.0 * zm)
            amps = float(lines.NormAmps)
            for key, value in (("name", label), ("from_bus", a), ("to_bus", b), ("r1_ohm", seq["r"][0]),
                               ("x1_ohm", seq["x"][0]), ("c1_f", seq["c"][0] * 1e-9), ("r0_ohm", seq["r"][1]),
                               ("x0_ohm", seq["x"][1]), ("c0_f", seq["c"][1] * 1e-9),
                               ("i_rated_a", amps if amps > 0 else math.nan)):
                cols[key].append(value)
        return Lines.create(**cols)

    def winding(self, label: str, spec: str, delta: bool) -> Winding:
        if delta:
            return Winding.DELTA
        _, nodes = _split(spec)
        neutral = nodes[3] if len(nodes) > 3 else 0
        rneut, xneut = float(self.prop("RNeut") or -1), float(self.prop("XNeut") or 0)
        if neutral != 0:
            return Winding.WYE
        if rneut > 0 or xneut != 0:
            self.refuse("transformer", "rneut", label, "neutral impedance is not supported")
        return Winding.WYE_N

    def transformers(self, names: list[str]) -> Transformers:
        c, tr = self.circuit, self.circuit.Transformers
        cols: dict[str, list[Any]] = {k: [] for k in (
            "name", "from_bus", "to_bus", "sn_va", "u1_v", "u2_v", "uk", "pk_w", "i0", "p0_w", "winding_from",
            "winding_to", "clock", "tap_side", "tap_pos", "tap_min", "tap_max", "tap_nom", "tap_size_v")}
        for name in names:
            tr.Name = name
            c.SetActiveElement(f"Transformer.{name}")
            label = f"transformer.{name}".lower()
            e = c.ActiveCktElement
            if e.NumPhases != 3 or tr.NumWindings != 2:
                self.refuse("transformer", "phases", label,
                            f"{e.NumPhases}-phase, {tr.NumWindings}-winding transformers are not supported")
                continue
            specs = list(e.BusNames)
            wdg = []
            for w in (1, 2):
                tr.Wdg = w
                wdg.append((float(tr.kV), float(tr.kVA), float(tr.R), bool(tr.IsDelta), float(tr.Tap),
                            float(tr.MinTap), float(tr.MaxTap), int(tr.NumTaps)))
            (kv1, kva1, r1, d1, tap1, *grid1), (kv2, kva2, r2, d2, tap2, *grid2) = wdg
            a, _ = self.bus(specs[0], "transformer", label)
            b, _ = self.bus(specs[1], "transformer", label)
            sn = kva1 * 1e3
            r_pct = r1 + r2 * kva1 / kva2
            w_from, w_to = self.winding(label, specs[0], d1), self.winding(label, specs[1], d2)
            side = Side.TO if tap1 == 1.0 and tap2 != 1.0 else Side.FROM
            lo, hi, steps = grid2 if side == Side.TO else grid1  # the tapped winding's MinTap, MaxTap, NumTaps
            step = (hi - lo) / steps if steps > 0 else 0.0
            tap, kv_tap = (tap2, kv2) if side == Side.TO else (tap1, kv1)
            pos = round((tap - 1.0) / step) if step > 0 else 0
            u_tap = kv_tap * 1e3 * (tap - pos * step)  # any remainder off the tap grid stays in the voltage
            u_other = (kv1 * tap1 if side == Side.TO else kv2 * tap2) * 1e3
            tap_min, tap_max = (round((lo - 1.0) / step), round((hi - 1.0) / step)) if step > 0 else (0, 0)
            if max(abs(tap_min), abs(tap_max), abs(pos)) > 127:
                self.refuse("transformer", "numtaps", label, "more than 127 tap steps each side")
                continue
            values = {
                "name": label, "from_bus": a, "to_bus": b, "sn_va": sn,
                "u1_v": u_tap if side == Side.FROM else u_other, "u2_v": u_other if side == Side.FROM else u_tap,
                "uk": math.hypot(r_pct, float(tr.Xhl)) / 100.0, "pk_w": r_pct / 100.0 * sn,
                "i0": float(self.prop("%imag") or 0) / 100.0, "p0_w": float(self.prop("%noloadloss") or 0) / 100 * sn,
                "winding_from": w_from, "winding_to": w_to,
                "clock": 1 if (w_from == Winding.DELTA) != (w_to == Winding.DELTA) else 0,
                "tap_side": side, "tap_pos": pos, "tap_min": tap_min, "tap_max": tap_max, "tap_nom": 0,
                "tap_size_v": step * kv_tap * 1e3,
            }
            for key, value in values.items():
                cols[key].append(value)
        return Transformers.create(**cols)

    def source(self, names: list[str]) -> Source:
        c = self.circuit
        if len(names) != 1:
            self.issues.append(FeederIssue("vsource", "", tuple(f"vsource.{n}" for n in names),
                                           f"need exactly one Vsource, found {len(names)}"))
            return Source(bus=0)
        label = f"vsource.{names[0]}".lower()
        c.SetActiveElement(f"Vsource.{names[0]}")
        e = c.ActiveCktElement
        if e.NumPhases != 3:
            self.refuse("vsource", "phases", label, "the source must be three-phase")
        bus, _ = self.bus(e.BusNames[0], "vsource", label)
        z1 = complex(float(self.prop("R1")), float(self.prop("X1")))
        z0 = complex(float(self.prop("R0")), float(self.prop("X0")))
        c.Vsources.Name = names[0]
        base_v = float(c.Vsources.BasekV) * 1e3
        u_rated = self.bus_u_rated[bus] if bus >= 0 and self.bus_u_rated[bus] > 0 else base_v
        v_pu = float(c.Vsources.pu) * base_v / u_rated
        return Source(bus=bus, v_pu=v_pu, sk_va=u_rated**2 / abs(z1) if abs(z1) > 0 else math.inf,
                      rx_ratio=z1.real / z1.imag if z1.imag else math.inf,
                      z01_ratio=abs(z0) / abs(z1) if abs(z1) > 0 else 1.0)

    def loads(self, names: list[str]) -> Loads:
        c, loads = self.circuit, self.circuit.Loads
        mult = float(c.Solution.LoadMult)
        cols: dict[str, list[Any]] = {k: [] for k in (
            "name", "bus", "phase", "p_w", "q_var", "model", "u_rated_v", "vmin_pu", "vmax_pu", "vlow_pu")}
        for name in names:
            loads.Name = name
            c.SetActiveElement(f"Load.{name}")
            label = f"load.{name}".lower()
            spec = c.ActiveCktElement.BusNames[0]
            bus, nodes = self.bus(spec, "load", label)
            model = int(loads.Model)
            if model not in (LoadModel.PQ, LoadModel.Z, LoadModel.I):
                self.refuse("load", "model", label, f"load model {model} is not supported (only 1, 2 and 5)")
                continue
            phases = int(loads.Phases)
            if phases == 3 and nodes[:3] in ([], [1, 2, 3]):
                phase = Phase.ABC
            elif phases == 1 and not loads.IsDelta and len(nodes) >= 1 and nodes[0] in (1, 2, 3) and (
                    len(nodes) == 1 or nodes[1] == 0):
                phase = Phase(nodes[0])
            else:
                conn = "delta" if loads.IsDelta else "wye"
                self.refuse("load", "phases", label, f"{phases}-phase {conn} load: only three-phase and "
                            "single-phase phase-to-neutral loads are supported")
                continue
            vlow = float(self.prop("Vlowpu") or 0.5)
            for key, value in (("name", label), ("bus", bus), ("phase", phase), ("p_w", loads.kW * 1e3 * mult),
                               ("q_var", loads.kvar * 1e3 * mult), ("model", model),
                               ("u_rated_v", loads.kV * 1e3), ("vmin_pu", loads.Vminpu),
                               ("vmax_pu", loads.Vmaxpu), ("vlow_pu", vlow)):
                cols[key].append(value)
        return Loads.create(**cols)

    def ders(self, kinds: dict[str, list[str]]) -> Ders:
        c = self.circuit
        cols: dict[str, list[Any]] = {"name": [], "bus": [], "phase": [], "rating_w": []}
        for kind, cls in (("generator", "Generator"), ("pvsystem", "PVSystem")):
            for name in kinds.get(kind, []):
                c.SetActiveElement(f"{cls}.{name}")
                e = c.ActiveCktElement
                label = f"{kind}.{name}".lower()
                bus, nodes = self.bus(e.BusNames[0], kind, label)
                if e.NumPhases == 3:
                    phase = Phase.ABC
                elif e.NumPhases == 1 and nodes and nodes[0] in (1, 2, 3) and (len(nodes) == 1 or nodes[1] == 0):
                    phase = Phase(nodes[0])
                else:
                    self.refuse(kind, "phases", label, "only three-phase and phase-to-neutral DERs are supported")
                    continue
                rating = float(self.prop("kVA") or "nan") * 1e3
                for key, value in (("name", label), ("bus", bus), ("phase", phase), ("rating_w", rating)):
                    cols[key].append(value)
        return Ders.create(**cols)


def from_opendss(path: str | Path) -> Feeder:
    """A validated :class:`Feeder` from an OpenDSS master file (see the module docstring for the mapping)."""
    master = Path(path).resolve()
    ctx = _engine()
    try:
        try:
            ctx.Text.Command = f'compile "{master}"'
        except Exception as exc:  # dss-python raises DSSException (a bare Exception subclass)
            message = " ".join(str(exc).split())
            raise FeederError((FeederIssue("feeder", "", (), f"OpenDSS could not compile it: {message}"),),
                              str(master)) from exc
        reader = _Reader(ctx, master)
        circuit = ctx.ActiveCircuit
        if circuit is None or not circuit.Name:
            raise FeederError((FeederIssue("feeder", "", (), "the file defines no circuit"),), str(master))
        buses = reader.buses()
        kinds = reader.elements()
        settings = circuit.Settings
        feeder = Feeder(
            name=str(circuit.Name), buses=buses, source=reader.source(kinds.get("vsource", [])),
            lines=reader.lines(kinds.get("line", [])), transformers=reader.transformers(kinds.get("transformer", [])),
            loads=reader.loads(kinds.get("load", [])), ders=reader.ders(kinds),
            limits=Limits(vmin_pu=float(settings.NormVminpu), vmax_pu=float(settings.NormVmaxpu)),
            frequency_hz=float(circuit.Solution.Frequency),
        )
    finally:
        ctx.ClearAll()
    issues = reader.issues or list(validate_feeder(feeder))
    if issues:
        raise FeederError(issues, str(master))
    return feeder
