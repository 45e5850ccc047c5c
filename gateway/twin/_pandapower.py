"""Import a pandapower network as a :class:`Feeder`.

Owns :func:`from_pandapower`. It reads the net's tables (pandas DataFrames) by column name and never imports
pandapower itself, so the twin does not depend on it. Mapping:

- ``bus`` (in service) -> buses, named by ``name`` (or the index when names are missing or repeated);
- ``line`` -> lines: ``r/x_ohm_per_km * length_km / parallel``, ``c_nf_per_km * length_km * parallel``,
  zero sequence from ``r0/x0/c0`` when present, ``i_rated_a = max_i_ka * df * parallel``;
- ``trafo`` -> transformers (``vector_group``, ``shift_degree`` as the clock, the ratio tap where pandapower
  applies it: ``tap_changer_type`` ``Ratio``/``Symmetrical``; phase shifters and tap tables are refused);
- ``ext_grid`` (exactly one) -> the source (``s_sc_max_mva``, ``rx_max``, ``x0x_max``/``r0x0_max`` when given);
- ``load`` -> balanced loads (pure constant power, impedance or current; mixed ZIP is refused);
  ``asymmetric_load`` -> single-phase loads (one per loaded phase) or a balanced one when the phases are equal;
- ``sgen``/``asymmetric_sgen`` -> DER connection points (rating ``sn_mva``, else ``p_mw``). Their present
  output is not kept: DER output is an input of every solve.

Anything that changes the power flow and is not mapped (shunts, PV generators, 3-winding transformers, closed
bus-bus switches, phase shifters, ...) is refused with a :class:`FeederError` naming the elements.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import (
    IDEAL_SK_VA,
    Buses,
    Ders,
    Feeder,
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

#: Tables whose in-service rows change the power flow but have no mapping here.
_UNSUPPORTED = ("shunt", "gen", "trafo3w", "impedance", "ward", "xward", "dcline", "storage", "motor",
                "asymmetric_shunt", "svc", "tcsc", "ssc", "vsc", "b2b_vsc", "source_dc", "load_dc")


def _table(net: Any, name: str) -> Any:
    try:
        table = net[name]
    except (KeyError, AttributeError):
        return None
    if "in_service" in table.columns:
        table = table[table["in_service"].astype(bool)]
    return table


def _col(table: Any, name: str, default: float = math.nan) -> np.ndarray[Any, np.dtype[np.float64]]:
    if name in table.columns:
        return np.asarray(table[name].to_numpy(dtype=float, na_value=math.nan), dtype=np.float64)
    return np.full(len(table), default, dtype=np.float64)


def _names(table: Any, prefix: str) -> list[str]:
    names = [None if n is None or (isinstance(n, float) and math.isnan(n)) else str(n) for n in table.get("name", [])]
    if len(names) != len(table):
        names = [None] * len(table)
    out = [n if n else f"{prefix}{i}" for n, i in zip(names, table.index, strict=True)]
    if len(set(out)) != len(out):
        out = [f"{prefix}{i}" for i in table.index]
    return out


def _float(value: Any, default: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(result) else result


class _Import:
    def __init__(self, net: Any) -> None:
        self.net = net
        self.issues: list[FeederIssue] = []
        buses = _table(net, "bus")
        if buses is None or not len(buses):
            raise FeederError((FeederIssue("bus", "", (), "the net has no bus"),), "pandapower")
        self.buses = buses
        self.bus_pos = {int(idx): pos for pos, idx in enumerate(buses.index)}
        self.bus_names = _names(buses, "bus")

    def refuse(self, component: str, field: str, ids: list[str], message: str) -> None:
        if ids:
            self.issues.append(FeederIssue(component, field, tuple(ids), message))

    def bus(self, table: Any, column: str, component: str, names: list[str]) -> np.ndarray[Any, np.dtype[np.int32]]:
        raw = table[column].to_numpy()
        pos = np.array([self.bus_pos.get(int(b), -1) for b in raw], dtype=np.int32)
        self.refuse(component, column, [n for n, p in zip(names, pos, strict=True) if p < 0],
                    "connected to a bus that is missing or out of service")
        return pos

    def closed_switch_issues(self) -> set[tuple[str, int]]:
        """Open line/trafo switches take their element out; closed bus-bus switches are refused."""
        switches = _table(self.net, "switch")
        opened: set[tuple[str, int]] = set()
        if switches is None or not len(switches):
            return opened
        closed = switches["closed"].astype(bool).to_numpy()
        et = switches["et"].astype(str).to_numpy()
        elem = switches["element"].to_numpy()
        names = _names(switches, "switch")
        self.refuse("switch", "closed", [n for n, c, e in zip(names, closed, et, strict=True) if c and e == "b"],
                    "closed bus-bus switches are not supported: merge the buses")
        for c, e, el in zip(closed, et, elem, strict=True):
            if not c and e in ("l", "t"):
                opened.add((e, int(el)))
        return opened

    def lines(self, opened: set[tuple[str, int]]) -> Lines:
        t = _table(self.net, "line")
        t = t.loc[np.array([("l", int(i)) not in opened for i in t.index], dtype=bool)]
        names = _names(t, "line")
        length, par = _col(t, "length_km"), _col(t, "parallel", 1.0)
        g = _col(t, "g_us_per_km", 0.0)
        self.refuse("line", "g_us_per_km", [n for n, x in zip(names, g, strict=True) if x != 0],
                    "shunt conductance is not supported")
        return Lines.create(
            name=names, from_bus=self.bus(t, "from_bus", "line", names), to_bus=self.bus(t, "to_bus", "line", names),
            r1_ohm=_col(t, "r_ohm_per_km") * length / par, x1_ohm=_col(t, "x_ohm_per_km") * length / par,
            c1_f=_col(t, "c_nf_per_km", 0.0) * 1e-9 * length * par,
            r0_ohm=_col(t, "r0_ohm_per_km") * length / par, x0_ohm=_col(t, "x0_ohm_per_km") * length / par,
            c0_f=_col(t, "c0_nf_per_km", 0.0) * 1e-9 * length * par,
            i_rated_a=_col(t, "max_i_ka") * 1e3 * _col(t, "df", 1.0) * par,
        )

    def transformers(self, opened: set[tuple[str, int]]) -> Transformers:
        t = _table(self.net, "trafo")
        if t is None:
            return Transformers.create(name=[], from_bus=[], to_bus=[], sn_va=[], u1_v=[], u2_v=[], uk=[], pk_w=[])
        t = t.loc[np.array([("t", int(i)) not in opened for i in t.index], dtype=bool)]
        names = _names(t, "trafo")
        self.refuse("transformer", "parallel", [n for n, p in zip(names, _col(t, "parallel", 1.0), strict=True)
                                                if p != 1], "parallel transformers: give one row per unit")
        self.refuse("transformer", "tap_step_degree",
                    [n for n, d in zip(names, np.nan_to_num(_col(t, "tap_step_degree", 0.0)), strict=True) if d],
                    "phase-shifting taps are not supported")
        sn = _col(t, "sn_mva") * 1e6
        u1, u2 = _col(t, "vn_hv_kv") * 1e3, _col(t, "vn_lv_kv") * 1e3
        shift = np.nan_to_num(_col(t, "shift_degree", 0.0))
        clock = np.round(shift / 30.0).astype(int) % 12
        groups = t["vector_group"].tolist() if "vector_group" in t.columns else [None] * len(t)
        w_from, w_to = [], []
        for name, group, c in zip(names, groups, clock, strict=True):
            hv, lv = _vector_group(group, int(c))
            if hv is None or lv is None:
                self.refuse("transformer", "vector_group", [name], f"vector group {group!r} is not supported")
                hv, lv = Winding.WYE_N, Winding.WYE_N
            w_from.append(hv)
            w_to.append(lv)
        taps = self.taps(t, names)
        return Transformers.create(
            name=names, from_bus=self.bus(t, "hv_bus", "transformer", names),
            to_bus=self.bus(t, "lv_bus", "transformer", names), sn_va=sn, u1_v=u1, u2_v=u2,
            uk=_col(t, "vk_percent") / 100.0, pk_w=_col(t, "vkr_percent") / 100.0 * sn,
            i0=np.nan_to_num(_col(t, "i0_percent", 0.0)) / 100.0, p0_w=np.nan_to_num(_col(t, "pfe_kw", 0.0)) * 1e3,
            winding_from=w_from, winding_to=w_to, clock=clock, tap_side=taps["tap_side"], tap_pos=taps["tap_pos"],
            tap_min=taps["tap_min"], tap_max=taps["tap_max"], tap_nom=taps["tap_neutral"],
            tap_size_v=taps["step"] * np.where(taps["tap_side"] == Side.TO, u2, u1),
        )

    def taps(self, t: Any, names: list[str]) -> dict[str, np.ndarray[Any, Any]]:
        """The ratio tap changers pandapower's power flow applies, as power-grid-model's integer tap fields.

        pandapower 3 applies a tap only with ``tap_changer_type`` ``"Ratio"`` or ``"Symmetrical"`` (nets without
        that column: wherever ``tap_pos`` and ``tap_step_percent`` are given); every other row gets no tap.
        """
        n = len(t)
        pos, neutral = _col(t, "tap_pos"), _col(t, "tap_neutral")
        step = _col(t, "tap_step_percent") / 100.0
        given = np.isfinite(pos) & np.isfinite(step)
        if "tap_changer_type" in t.columns:
            kinds = ["" if k is None or (isinstance(k, float) and math.isnan(k)) else str(k)
                     for k in t["tap_changer_type"].tolist()]
            table = (np.asarray(t["tap_dependency_table"].fillna(False), dtype=bool)
                     if "tap_dependency_table" in t.columns else np.zeros(n, dtype=bool))
            self.refuse("transformer", "tap_dependency_table",
                        [m for m, k, x in zip(names, kinds, table, strict=True) if k and x],
                        "tap-dependent characteristic tables are not supported")
            self.refuse("transformer", "tap_changer_type",
                        [m for m, k, g in zip(names, kinds, given, strict=True)
                         if g and k not in ("", "Ratio", "Symmetrical")],
                        "only ratio tap changers (Ratio, Symmetrical without tap_step_degree) are supported")
            active = given & np.isin(kinds, ["Ratio", "Symmetrical"]) & ~table
        else:
            shifter = (np.asarray(t["tap_phase_shifter"].fillna(False), dtype=bool)
                       if "tap_phase_shifter" in t.columns else np.zeros(n, dtype=bool))
            self.refuse("transformer", "tap_phase_shifter", [m for m, s in zip(names, shifter & given, strict=True)
                                                             if s], "phase-shifting taps are not supported")
            active = given & ~shifter
        self.refuse("transformer", "tap_neutral", [m for m, a, x in zip(names, active, neutral, strict=True)
                                                   if a and not np.isfinite(x)], "missing: give the neutral position")
        active &= np.isfinite(neutral)
        lo, hi = _col(t, "tap_min"), _col(t, "tap_max")
        lo = np.where(np.isfinite(lo), lo, np.minimum(pos, neutral))
        hi = np.where(np.isfinite(hi), hi, np.maximum(pos, neutral))
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # pandapower's ratio ignores the order; pgm's flips on it
        values = np.stack([pos, neutral, lo, hi])
        whole = np.all(values == np.round(values), axis=0)
        small = np.all(np.abs(values) <= 127, axis=0)
        self.refuse("transformer", "tap_pos", [m for m, a, w in zip(names, active, whole, strict=True) if a and not w],
                    "tap positions must be whole steps")
        self.refuse("transformer", "tap_pos", [m for m, a, w, s in zip(names, active, whole, small, strict=True)
                                               if a and w and not s],
                    "tap positions must be within -127..127 (power-grid-model's int8)")
        active &= whole & small
        sides = t["tap_side"].tolist() if "tap_side" in t.columns else ["hv"] * n
        out = {"tap_side": np.array([Side.TO if s == "lv" else Side.FROM for s in sides], dtype=np.int8),
               "step": np.where(active, step, 0.0)}
        for key, value in (("tap_pos", pos), ("tap_neutral", neutral), ("tap_min", lo), ("tap_max", hi)):
            out[key] = np.where(active, np.nan_to_num(value), 0.0).astype(np.int8)
        return out

    def source(self) -> Source:
        grids = _table(self.net, "ext_grid")
        if grids is None or len(grids) != 1:
            count = 0 if grids is None else len(grids)
            self.issues.append(FeederIssue("ext_grid", "", (), f"need exactly one ext_grid in service, found {count}"))
            return Source(bus=0)
        g = grids.iloc[0]
        sk = _float(g.get("s_sc_max_mva"), math.nan) * 1e6
        rx = _float(g.get("rx_max"), 0.1)
        x0x, r0x0 = _float(g.get("x0x_max"), math.nan), _float(g.get("r0x0_max"), math.nan)
        z01 = 1.0
        if not math.isnan(x0x):
            r0x0 = 0.0 if math.isnan(r0x0) else r0x0
            z01 = x0x * math.hypot(1.0, r0x0) / math.hypot(1.0, rx)
        return Source(bus=self.bus_pos.get(int(g["bus"]), -1), v_pu=_float(g.get("vm_pu"), 1.0),
                      sk_va=sk if sk > 0 else IDEAL_SK_VA, rx_ratio=rx, z01_ratio=z01)

    def loads(self) -> Loads:
        cols: dict[str, list[Any]] = {k: [] for k in ("name", "bus", "phase", "p_w", "q_var", "model")}

        def add(name: str, bus: int, phase: Phase, p: float, q: float, model: LoadModel) -> None:
            for key, value in zip(cols, (name, bus, phase, p, q, model), strict=True):
                cols[key].append(value)

        t = _table(self.net, "load")
        if t is not None and len(t):
            names = _names(t, "load")
            bus = self.bus(t, "bus", "load", names)
            scale = _col(t, "scaling", 1.0)
            p, q = _col(t, "p_mw") * 1e6 * scale, _col(t, "q_mvar") * 1e6 * scale
            z = [np.nan_to_num(_col(t, c, 0.0)) for c in ("const_z_p_percent", "const_z_q_percent")]
            i = [np.nan_to_num(_col(t, c, 0.0)) for c in ("const_i_p_percent", "const_i_q_percent")]
            if "const_z_percent" in t.columns:  # pandapower 2.x
                z = [np.nan_to_num(_col(t, "const_z_percent", 0.0))] * 2
                i = [np.nan_to_num(_col(t, "const_i_percent", 0.0))] * 2
            for k, name in enumerate(names):
                zp, zq, ip, iq = z[0][k], z[1][k], i[0][k], i[1][k]
                if (zp, zq, ip, iq) == (0, 0, 0, 0):
                    model = LoadModel.PQ
                elif (zp, zq, ip, iq) == (100, 100, 0, 0):
                    model = LoadModel.Z
                elif (zp, zq, ip, iq) == (0, 0, 100, 100):
                    model = LoadModel.I
                else:
                    self.refuse("load", "const_z_p_percent", [name], "mixed ZIP loads are not supported")
                    model = LoadModel.PQ
                add(name, int(bus[k]), Phase.ABC, float(p[k]), float(q[k]), model)
        t = _table(self.net, "asymmetric_load")
        if t is not None and len(t):
            names = _names(t, "asymmetric_load")
            bus = self.bus(t, "bus", "load", names)
            scale = _col(t, "scaling", 1.0)
            pp = np.stack([_col(t, f"p_{x}_mw", 0.0) for x in "abc"], axis=1) * 1e6 * scale[:, None]
            qq = np.stack([_col(t, f"q_{x}_mvar", 0.0) for x in "abc"], axis=1) * 1e6 * scale[:, None]
            kinds = t["type"].astype(str).tolist() if "type" in t.columns else ["wye"] * len(t)
            self.refuse("load", "type", [n for n, k in zip(names, kinds, strict=True) if k == "delta"],
                        "phase-to-phase (delta) asymmetric loads are not supported")
            for k, name in enumerate(names):
                loaded = [j for j in range(3) if pp[k, j] or qq[k, j]]
                if not loaded or (np.allclose(pp[k], pp[k, 0]) and np.allclose(qq[k], qq[k, 0])):
                    add(name, int(bus[k]), Phase.ABC, float(pp[k].sum()), float(qq[k].sum()), LoadModel.PQ)
                elif len(loaded) == 1:
                    j = loaded[0]
                    add(name, int(bus[k]), Phase(j + 1), float(pp[k, j]), float(qq[k, j]), LoadModel.PQ)
                else:
                    for j in loaded:
                        add(f"{name}.{'abc'[j]}", int(bus[k]), Phase(j + 1), float(pp[k, j]), float(qq[k, j]),
                            LoadModel.PQ)
        return Loads.create(name=cols["name"], bus=np.array(cols["bus"], dtype=np.int32),
                            phase=np.array(cols["phase"], dtype=np.int8), p_w=np.array(cols["p_w"], dtype=float),
                            q_var=np.array(cols["q_var"], dtype=float), model=np.array(cols["model"], dtype=np.int8))

    def ders(self) -> Ders:
        names: list[str] = []
        bus: list[int] = []
        phase: list[Phase] = []
        rating: list[float] = []
        t = _table(self.net, "sgen")
        if t is not None and len(t):
            n = _names(t, "sgen")
            names += n
            bus += self.bus(t, "bus", "der", n).tolist()
            phase += [Phase.ABC] * len(n)
            sn, p = _col(t, "sn_mva") * 1e6, _col(t, "p_mw") * 1e6
            rating += np.where(np.isfinite(sn), sn, np.abs(p)).tolist()
        t = _table(self.net, "asymmetric_sgen")
        if t is not None and len(t):
            n = _names(t, "asymmetric_sgen")
            b = self.bus(t, "bus", "der", n)
            pp = np.stack([_col(t, f"p_{x}_mw", 0.0) for x in "abc"], axis=1) * 1e6
            sn = _col(t, "sn_mva") * 1e6
            for k, name in enumerate(n):
                loaded = [j for j in range(3) if pp[k, j]]
                names.append(name)
                bus.append(int(b[k]))
                phase.append(Phase(loaded[0] + 1) if len(loaded) == 1 else Phase.ABC)
                rating.append(float(sn[k]) if math.isfinite(sn[k]) else float(np.abs(pp[k]).sum()))
        return Ders.create(name=names, bus=np.array(bus, dtype=np.int32), phase=np.array(phase, dtype=np.int8),
                           rating_w=np.array(rating, dtype=float))

    def unsupported(self) -> None:
        for name in _UNSUPPORTED:
            t = _table(self.net, name)
            if t is not None and len(t):
                self.refuse(name, "", _names(t, name), f"pandapower '{name}' elements are not supported")


def _vector_group(group: Any, clock: int) -> tuple[Winding | None, Winding | None]:
    if not isinstance(group, str) or not group:
        return (Winding.DELTA, Winding.WYE_N) if clock % 2 else (Winding.WYE_N, Winding.WYE_N)
    text = group.strip()
    lv_at = next((k for k in range(1, len(text)) if text[k].islower()), None)
    if lv_at is None:
        return None, None
    hv, lv = text[:lv_at].upper(), text[lv_at:].rstrip("0123456789").upper()
    table = {"D": Winding.DELTA, "Y": Winding.WYE, "YN": Winding.WYE_N}
    return table.get(hv), table.get(lv)


def from_pandapower(net: Any) -> Feeder:
    """A validated :class:`Feeder` from a pandapower net (``pandapower.networks.case33bw()``, ...)."""
    imp = _Import(net)
    opened = imp.closed_switch_issues()
    imp.unsupported()
    feeder = Feeder(
        name=str(getattr(net, "name", "") or "pandapower"),
        buses=Buses.create(imp.bus_names, _col(imp.buses, "vn_kv") * 1e3),
        source=imp.source(), lines=imp.lines(opened), transformers=imp.transformers(opened),
        loads=imp.loads(), ders=imp.ders(), frequency_hz=_float(getattr(net, "f_hz", 50.0), 50.0),
    )
    issues = imp.issues or list(validate_feeder(feeder))
    if issues:
        raise FeederError(issues, f"pandapower net {feeder.name!r}")
    return feeder
