"""The plant behind a simulated device: what its registers say, moving plausibly over time and obeying writes.

A :class:`Plant` reads its controls from the register image (SunSpec 123/124/126 and 704/705), runs the IEEE
1547 function modules (``_active_power_limit``, ``_volt_var``) and the storage model, and writes the
measurements back (101-103, 122, 160, 701, 124/802, 201-204) with the image's own scale factors. Only points
the image implements are written: a point that reads "unimplemented" stays so.

Time: ``now`` is in real seconds (any monotonic origin). Reversion timers and the response times of the 1547
functions run on real seconds; the irradiance and load profiles, energy counters and state of charge run on
simulated time, ``start_hour`` plus real time times ``time_scale`` (compress a day for a demo).

Active power is limited by 123 ``WMaxLimPct`` (``WMaxLim_Ena``), 704 ``WMaxLimPct`` (``WMaxLimPctEna``) and
704 ``WSet``/``WSetPct`` (``WSetEna``), whichever is lowest; 123 ``Conn`` = 0 disconnects. Reactive power
follows the active volt-var curve (705 curve 1, else 126 ``ActCrv``) with reactive power priority.

A battery has its own intent (``PhysicsSettings.battery_intent_w``, W, discharge positive: what its own logic
would do; 0 by default) and 124 confines it to a **limit window** (the semantics are defined in
:mod:`gateway.sunspec._controls`, after the vendor's "Modbus TCP & RTU" storage-control documentation): it runs
at ``clamp(intent, -InWRte % * WChaMax, +OutWRte % * WChaMax)``, a side whose ``StorCtl_Mod`` bit (0 CHARGE,
1 DISCHARGE) is off staying at the full rate, then through the storage model (rate and state-of-charge limits).
So a setpoint (``OutWRte = p``, ``InWRte = -p``) drives it to ``p`` whatever it wants, a cap only stops it going
past the cap, and a window never moves a battery whose intent lies inside it. An empty window (never written by
the gateway) resolves to its discharge bound.

Imposed grid (a co-simulation, e.g. the demo's feeder power flow): :attr:`Plant.grid_v_pu` replaces the plant's own
voltage model (``1 + v_offset + dv_dp * p + dv_dq * q`` and a slow wander) with the voltage the grid has at its
terminals, and a meter's :attr:`Plant.grid_flow` replaces the household profile with the power through it; the
small measurement noise stays. Both ``None`` (the default): the plant's own models, as before. :attr:`Plant.output`
is what the terminals delivered at the last step, for the co-simulation to put on its grid.

A meter's per-phase points (``WphA/B/C``, ``VARphA/B/C``, ``PhVphA/B/C``): with :attr:`Plant.grid_flow_ph` and
:attr:`Plant.grid_v_ph_pu` imposed (a three-phase meter), each phase's own flow and voltage (each with its own
noise; the totals and ``PhV`` are their sum and mean); otherwise the totals split evenly over the meter's phases
(201: one, 202: two, 203/204: three) and every phase at the one voltage — the household profile says nothing of
how a house's load spreads over phases.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.sim import _active_power_limit as apl
from gateway.sim import _storage as storage
from gateway.sim import _volt_var as vv
from gateway.sim._image import RegisterImage
from gateway.sim._layout import ModelLayout, PointLoc
from gateway.sim._profiles import CloudState, clear_sky, clouds, household_load

INVERTER_MODELS = (101, 102, 103)
METER_MODELS = (201, 202, 203, 204)

# 103 St / 701 InvSt / 124 ChaSt symbol values used below.
_ST_OFF, _ST_SLEEPING, _ST_MPPT, _ST_THROTTLED, _ST_STANDBY = 1, 2, 4, 5, 8
_INV_OFF, _INV_SLEEPING, _INV_RUNNING, _INV_THROTTLED = 0, 1, 3, 4
_CHA_EMPTY, _CHA_DISCHARGING, _CHA_CHARGING, _CHA_FULL, _CHA_HOLDING = 2, 3, 4, 5, 6
_ADOPT_IN_PROGRESS, _ADOPT_COMPLETED, _ADOPT_FAILED = 0, 1, 2
#: 1-sigma measurement noise: voltage (pu), an imposed meter flow (relative; a class 0.5 meter's bound is 3 sigma)
_V_NOISE_PU = 0.001
_FLOW_NOISE = 0.001


@dataclass(frozen=True, slots=True)
class PhysicsSettings:
    """How a simulated plant behaves. ``None`` fields are taken from the image (or derived from ``seed``)."""

    start_hour: float = 12.0  # simulated time of day when the plant starts
    time_scale: float = 1.0  # simulated seconds per real second (e.g. 60 for a demo)
    sunrise: float = 6.0
    sunset: float = 18.0
    cloudiness: float = 0.15  # how deep passing clouds cut irradiance (0 = clear sky)
    noise: float = 0.005  # relative noise on available power
    v_offset_pu: float | None = None  # the feeder position's steady voltage offset; None: from seed
    dv_dp: float = 0.03  # voltage rise (pu) per pu of active power injected
    dv_dq: float = 0.02  # voltage rise (pu) per pu of reactive power injected
    ap_rt: float = 0.0  # active power limit response time AP_RT (s); 0 = at once
    v_nom: float | None = None
    f_nom: float | None = None
    peak_load_w: float = 4000.0  # meters: the household's peak load
    seed: int = 0
    #: batteries: what the battery's own logic wants (W, + discharges) before 124 confines it; 0 = idle
    battery_intent_w: float = 0.0


@dataclass(frozen=True, slots=True)
class _Reversion:
    """A SunSpec reversion timer: after ``timer`` seconds without a write to ``watch``, apply ``revert``.

    ``revert`` maps a point to a constant raw value (int) or to the point whose raw value it takes (str);
    the target ``"*adopt"`` adopts the curve whose index the named point holds (705 ``RvrtCrv``).
    """

    model: int
    timer: str
    watch: tuple[str, ...]
    revert: tuple[tuple[str, int | str], ...]
    remaining: str | None = None


REVERSIONS: tuple[_Reversion, ...] = (
    _Reversion(123, "WMaxLimPct_RvrtTms", ("WMaxLimPct", "WMaxLim_Ena", "WMaxLimPct_RvrtTms"),
               (("WMaxLim_Ena", 0),)),
    _Reversion(123, "Conn_RvrtTms", ("Conn", "Conn_RvrtTms"), (("Conn", 1),)),
    _Reversion(123, "OutPFSet_RvrtTms", ("OutPFSet", "OutPFSet_Ena", "OutPFSet_RvrtTms"), (("OutPFSet_Ena", 0),)),
    _Reversion(123, "VArPct_RvrtTms", ("VArWMaxPct", "VArMaxPct", "VArAvalPct", "VArPct_Ena", "VArPct_RvrtTms"),
               (("VArPct_Ena", 0),)),
    _Reversion(124, "InOutWRte_RvrtTms", ("InWRte", "OutWRte", "StorCtl_Mod", "InOutWRte_RvrtTms"),
               (("StorCtl_Mod", 0),)),
    _Reversion(126, "RvrtTms", ("ActCrv", "ModEna", "RvrtTms"), (("ModEna", 0),)),
    _Reversion(704, "WMaxLimPctRvrtTms", ("WMaxLimPct", "WMaxLimPctEna", "WMaxLimPctRvrtTms"),
               (("WMaxLimPct", "WMaxLimPctRvrt"), ("WMaxLimPctEna", "WMaxLimPctEnaRvrt")), "WMaxLimPctRvrtRem"),
    _Reversion(704, "WSetRvrtTms", ("WSet", "WSetPct", "WSetEna", "WSetMod", "WSetRvrtTms"),
               (("WSet", "WSetRvrt"), ("WSetPct", "WSetPctRvrt"), ("WSetEna", "WSetEnaRvrt")), "WSetRvrtRem"),
    _Reversion(704, "VarSetRvrtTms", ("VarSet", "VarSetPct", "VarSetEna", "VarSetMod", "VarSetRvrtTms"),
               (("VarSet", "VarSetRvrt"), ("VarSetPct", "VarSetPctRvrt"), ("VarSetEna", "VarSetEnaRvrt")),
               "VarSetRvrtRem"),
    _Reversion(704, "PFWInjRvrtTms", ("PFWInjEna", "PFWInj.PF", "PFWInj.Ext", "PFWInjRvrtTms"),
               (("PFWInj.PF", "PFWInjRvrt.PF"), ("PFWInj.Ext", "PFWInjRvrt.Ext"), ("PFWInjEna", "PFWInjEnaRvrt")),
               "PFWInjRvrtRem"),
    _Reversion(704, "PFWAbsRvrtTms", ("PFWAbsEna", "PFWAbs.PF", "PFWAbs.Ext", "PFWAbsRvrtTms"),
               (("PFWAbs.PF", "PFWAbsRvrt.PF"), ("PFWAbs.Ext", "PFWAbsRvrt.Ext"), ("PFWAbsEna", "PFWAbsEnaRvrt")),
               "PFWAbsRvrtRem"),
    _Reversion(705, "RvrtTms", ("Ena", "AdptCrvReq", "RvrtTms"), (("*adopt", "RvrtCrv"),), "RvrtRem"),
)

# Measurement points per model -> the quantity that feeds them (see Plant._quantities).
_OUT_1XX = {
    "A": "A", "AphA": "Aph", "AphB": "Aph", "AphC": "Aph", "PhVphA": "V", "PhVphB": "V", "PhVphC": "V",
    "PPVphAB": "VLL", "PPVphBC": "VLL", "PPVphCA": "VLL", "W": "W", "Hz": "Hz", "VA": "VA", "VAr": "VAr",
    "PF": "PFpct", "WH": "WHinj", "DCA": "DCA", "DCV": "DCV", "DCW": "DCW", "TmpCab": "Tmp", "TmpSnk": "Tmp",
    "St": "St",
}
_OUT_701 = {
    "W": "W", "VA": "VA", "Var": "VAr", "PF": "PF", "A": "A", "LLV": "VLL", "LNV": "V", "Hz": "Hz",
    "TotWhInj": "WHinj", "TotWhAbs": "WHabs", "TotVarhInj": "VArhInj", "TotVarhAbs": "VArhAbs", "TmpCab": "Tmp",
    "TmpSnk": "Tmp", "St": "St701", "InvSt": "InvSt", "ConnSt": "ConnSt", "ThrotPct": "ThrotPct",
    "ThrotSrc": "ThrotSrc",
} | {
    f"{name}L{n}": q
    for n in (1, 2, 3)
    for name, q in (("W", "Wph"), ("VA", "VAph"), ("Var", "VArph"), ("PF", "PF"), ("A", "Aph"), ("V", "V"),
                    ("TotWhInj", "WHinjph"), ("TotWhAbs", "WHabsph"))
} | {"VL1L2": "VLL", "VL2L3": "VLL", "VL3L1": "VLL"}
_OUT_122 = {"WAval": "Wavail", "VArAval": "VArAval", "ActWh": "WHinj", "ActVAh": "VAh", "StActCtl": "StActCtl",
            "PVConn": "PVConn", "ECPConn": "ConnSt"}
_OUT_124 = {"ChaState": "SoC", "StorAval": "StorAvalAh", "InBatV": "Vbat", "ChaSt": "ChaSt"}
_OUT_802 = {"SoC": "SoC", "ChaSt": "ChaSt", "V": "Vbat", "A": "Abat", "W": "Wbat", "CellVAvg": "Vcell",
            "CellVMax": "VcellMax", "CellVMin": "VcellMin"}
_OUT_METER = {
    "A": "A", "AphA": "Aph", "AphB": "Aph", "AphC": "Aph", "PhV": "V", "PhVphA": "VphA", "PhVphB": "VphB",
    "PhVphC": "VphC", "PPV": "VLL", "PhVphAB": "VLL", "PhVphBC": "VLL", "PhVphCA": "VLL", "Hz": "Hz", "W": "W",
    "WphA": "WphA", "WphB": "WphB", "WphC": "WphC", "VA": "VA", "VAphA": "VAph", "VAphB": "VAph", "VAphC": "VAph",
    "VAR": "VAr", "VARphA": "VArphA", "VARphB": "VArphB", "VARphC": "VArphC", "PF": "PFpct", "PFphA": "PFpct",
    "PFphB": "PFpct", "PFphC": "PFpct", "TotWhExp": "WHexp", "TotWhImp": "WHimp",
}
_OUT_160_MODULE = {"DCA": "mDCA", "DCV": "DCV", "DCW": "mDCW", "DCWH": "mDCWH", "DCSt": "St", "Tmp": "Tmp"}
#: Quantities that are totals: a per-phase point gets the total divided by the phase count.
_PER_PHASE = frozenset(("Aph", "Wph", "VAph", "VArph", "WHinjph", "WHabsph", "mDCA", "mDCW", "mDCWH"))
_PHASES_1XX = {101: 1, 102: 2, 103: 3}
_PHASES_701 = {0: 1, 1: 2, 2: 3}
_PHASES_METER = {201: 1, 202: 2, 203: 3, 204: 3}


@dataclass(slots=True)
class _Controls:
    """The controls in effect, decoded from the image after each write (not on every step)."""

    connected: bool = True
    limit_enabled: bool = False
    limit_pct: float = 100.0
    wset_enabled: bool = False
    wset_w: float = 0.0
    vv: vv.VoltVarSettings = field(default_factory=lambda: vv.VoltVarSettings(QV_MODE_ENABLE=False))
    bat_cmd_w: float = 0.0
    rated_w: float = 5000.0
    var_max: float = 2200.0
    va_max: float = 5000.0
    v_nom: float = 230.0
    f_nom: float = 50.0
    storage: storage.StorageSettings = field(default_factory=storage.StorageSettings)


def _rated(*candidates: float | None, default: float) -> float:
    for c in candidates:
        if c is not None and c > 0:
            return c
    return default


class Plant:
    """The simulated equipment behind one register image (PV inverter, battery, meter, or what the image holds).

    Not thread-safe; one per device. :meth:`update` advances it; :meth:`on_write` is told which points a
    client wrote. :attr:`grid_v_pu` and :attr:`grid_flow` let a co-simulation impose the grid (module docstring);
    they take effect at the next :meth:`update`.
    """

    #: The voltage at the terminals, pu of :meth:`v_nom`, imposed by a co-simulation; None: the plant's own model.
    grid_v_pu: float | None
    #: Meters: the power through the meter (W, var; + import), imposed by a co-simulation; None: the household
    #: profile. Ignored by a plant without a meter model.
    grid_flow: tuple[float, float] | None
    #: Three-phase meters: the flow per phase A, B, C (W of each, var of each; + import), imposed by a
    #: co-simulation instead of :attr:`grid_flow` (module docstring); None: the totals split evenly.
    grid_flow_ph: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    #: Meters: the voltage of phases A, B, C (pu of :meth:`v_nom`) instead of :attr:`grid_v_pu` on each phase.
    grid_v_ph_pu: tuple[float, float, float] | None

    def __init__(self, image: RegisterImage, lays: Iterable[ModelLayout], settings: PhysicsSettings,
                 now: float) -> None:
        self.image = image
        self.settings = settings
        self.models: dict[int, ModelLayout] = {}
        for lay in lays:
            self.models.setdefault(lay.span.id, lay)
        ids = set(self.models)
        self.has_storage = bool(ids & {124, 802})
        self.has_inverter = bool(ids & {*INVERTER_MODELS, 701})
        self.has_pv = self.has_inverter and (not self.has_storage or 160 in ids)
        self.meter_model = next((m for m in METER_MODELS if m in ids), None) if not self.has_inverter else None
        self._rng = random.Random(settings.seed)
        self._v_offset = (
            settings.v_offset_pu if settings.v_offset_pu is not None else self._rng.uniform(-0.01, 0.03)
        )
        self._t0 = now
        self._t_last = now
        self._phase = self._rng.uniform(0.0, 1000.0)
        self._clouds = CloudState(self._rng.gauss(0.0, 0.5))
        self._apl = apl.ActivePowerLimitState()
        self._vv = vv.VoltVarState()
        self._q_pu = 0.0
        self._p_pu = 0.0
        self.grid_v_pu = None
        self.grid_flow = None
        self.grid_flow_ph = None
        self.grid_v_ph_pu = None
        self._at_terminals = (0.0, 0.0)
        self._controls = _Controls()
        self._controls_dirty = True
        self._armed: dict[_Reversion, float] = {}
        self._adopt: int | None = None
        self._outputs = self._collect_outputs()
        self._energy = self._initial_energy()
        soc = self._read(124, "ChaState") or self._read(802, "SoC")
        self._battery = storage.StorageState(soc if soc is not None else 50.0)

    # -- image access ---------------------------------------------------------------------------------------
    def _loc(self, model: int, key: str) -> PointLoc | None:
        lay = self.models.get(model)
        return lay.points.get(key) if lay is not None else None

    def _read(self, model: int, key: str) -> float | None:
        loc = self._loc(model, key)
        return loc.get(self.image.regs, self.image.base) if loc is not None else None

    def _raw(self, model: int, key: str) -> int | None:
        loc = self._loc(model, key)
        return loc.raw(self.image.regs, self.image.base) if loc is not None else None

    def _collect_outputs(self) -> list[tuple[PointLoc, str, int]]:
        """(point, quantity, divisor) for every measurement point the image implements.

        The divisor is the phase (or MPPT module) count for per-phase points fed by a total, else 1.
        """
        regs, base = self.image.regs, self.image.base
        out: list[tuple[PointLoc, str, int]] = []

        def add(model: int, table: dict[str, str], phases: int, prefix: str = "") -> None:
            lay = self.models.get(model)
            if lay is None:
                return
            for name, quantity in table.items():
                loc = lay.points.get(prefix + name)
                if loc is None or (loc.raw(regs, base) is None and loc.pdef.type not in ("float32", "float64")):
                    continue
                if model == 701 and (("L3" in name and phases < 3) or ("L2" in name and phases < 2)):
                    continue
                per_phase = quantity in _PER_PHASE
                out.append((loc, quantity, phases if per_phase else 1))

        for m in INVERTER_MODELS:
            add(m, _OUT_1XX, _PHASES_1XX[m])
        if 701 in self.models:
            add(701, _OUT_701, _PHASES_701.get(self._raw(701, "ACType") or 0, 1))
        add(122, _OUT_122, 1)
        add(124, _OUT_124, 1)
        add(802, _OUT_802, 1)
        if self.meter_model is not None:
            add(self.meter_model, _OUT_METER, _PHASES_METER[self.meter_model])
        n_modules = int(self._read(160, "N") or 0)
        for i in range(n_modules):
            add(160, _OUT_160_MODULE, n_modules, prefix=f"module[{i}].")
        return out

    def _initial_energy(self) -> dict[str, float]:
        start = 1.0e6 + self._rng.uniform(0.0, 5.0e6)
        e = {"WHinj": start, "WHabs": 0.0, "WHexp": start / 2, "WHimp": start, "VArhInj": 0.0, "VArhAbs": 0.0,
             "VAh": start}
        for model, key, name in ((103, "WH", "WHinj"), (101, "WH", "WHinj"), (102, "WH", "WHinj"),
                                 (701, "TotWhInj", "WHinj"), (701, "TotWhAbs", "WHabs")):
            value = self._read(model, key)
            if value is not None and value > 1:
                e[name] = value
        return e

    # -- controls -------------------------------------------------------------------------------------------
    def on_write(self, written: Iterable[tuple[int, str]], now: float) -> None:
        """A client wrote these (model, point key)s: arm or disarm reversion timers, queue curve adoption."""
        keys = set(written)
        self._controls_dirty = True
        for rv in REVERSIONS:
            if any((rv.model, w) in keys for w in rv.watch):
                timer = self._read(rv.model, rv.timer)
                if timer:
                    self._armed[rv] = now
                else:
                    self._armed.pop(rv, None)
        if (705, "AdptCrvReq") in keys:
            self._adopt = self._raw(705, "AdptCrvReq")
            loc = self._loc(705, "AdptCrvRslt")
            if loc is not None:
                loc.put_raw(self.image.regs, self.image.base, _ADOPT_IN_PROGRESS)

    def _adopt_curve(self, index: int | None) -> bool:
        """Copy curve ``index`` (1-based) of model 705 onto the active curve (index 1); ``False`` if invalid."""
        lay = self.models.get(705)
        n_crv = self._raw(705, "NCrv") or 0
        if lay is None or index is None or not 1 <= index <= n_crv:
            return False
        if index == 1:
            return True
        first = lay.points.get("Crv[0].ActPt")
        second = lay.points.get("Crv[1].ActPt")
        src = lay.points.get(f"Crv[{index - 1}].ActPt")
        ro = lay.points.get("Crv[0].ReadOnly")
        if first is None or second is None or src is None:
            return False
        size = second.addr - first.addr
        regs, base = self.image.regs, self.image.base
        keep = regs[ro.addr - base] if ro is not None else None
        regs[first.addr - base : first.addr - base + size] = regs[src.addr - base : src.addr - base + size]
        if ro is not None and keep is not None:
            regs[ro.addr - base] = keep
        return True

    def _run_reversions(self, now: float) -> None:
        regs, base = self.image.regs, self.image.base
        for rv, since in list(self._armed.items()):
            timer = self._read(rv.model, rv.timer) or 0.0
            elapsed = now - since
            rem = self._loc(rv.model, rv.remaining) if rv.remaining else None
            if timer <= 0:
                del self._armed[rv]
            elif elapsed >= timer:
                del self._armed[rv]
                for target, source in rv.revert:
                    if target == "*adopt":
                        self._adopt_curve(self._raw(rv.model, str(source)))
                        continue
                    loc = self._loc(rv.model, target)
                    if loc is None:
                        continue
                    if isinstance(source, int):
                        loc.put_raw(regs, base, source)
                    else:
                        src = self._loc(rv.model, source)
                        if src is not None:
                            regs[loc.addr - base : loc.addr - base + loc.pdef.size] = (
                                regs[src.addr - base : src.addr - base + src.pdef.size]
                            )
                self._controls_dirty = True
            elif rem is not None:
                rem.put(regs, base, math.ceil(timer - elapsed))
                continue
            if rem is not None:
                rem.put(regs, base, 0)

    def _rated_w(self) -> float:
        return _rated(self._read(121, "WMax"), self._read(702, "WMax"), self._read(120, "WRtg"),
                      self._read(702, "WMaxRtg"), self._read(124, "WChaMax"), default=5000.0)

    def _rated_var(self, rated_w: float) -> float:
        return _rated(self._read(121, "VArMaxQ1"), self._read(702, "VarMaxInj"), self._read(120, "VArRtgQ1"),
                      self._read(702, "VarMaxInjRtg"), default=0.44 * rated_w)

    def _rated_va(self, rated_w: float) -> float:
        return _rated(self._read(121, "VAMax"), self._read(702, "VAMax"), self._read(120, "VARtg"),
                      self._read(702, "VAMaxRtg"), default=rated_w)

    def v_nom(self) -> float:
        """Nominal line-to-neutral voltage: the settings, else 121 VRef, else 702 VNom, else 230 V (240 V 7xx)."""
        return _rated(self.settings.v_nom, self._read(121, "VRef"), self._read(702, "VNom"),
                      default=240.0 if 701 in self.models else 230.0)

    def f_nom(self) -> float:
        """Nominal frequency: the settings, else 121 ECPNomHz, else 60 Hz with 7xx models, 50 Hz otherwise."""
        return _rated(self.settings.f_nom, self._read(121, "ECPNomHz"),
                      default=60.0 if 701 in self.models else 50.0)

    def _decode_controls(self) -> _Controls:
        c = _Controls()
        rated_w = c.rated_w = self._rated_w()
        c.var_max, c.va_max = self._rated_var(rated_w), self._rated_va(rated_w)
        c.v_nom, c.f_nom = self.v_nom(), self.f_nom()
        if self.has_storage:
            c.storage = storage.StorageSettings(
                capacity_wh=_rated(self._read(802, "WHRtg"), self._read(120, "WHRtg"), default=10000.0),
                p_charge_max_w=_rated(self._read(124, "WChaMax"), self._read(802, "WChaRteMax"), default=rated_w),
                p_discharge_max_w=_rated(self._read(124, "WChaMax"), self._read(802, "WDisChaRteMax"),
                                         default=rated_w),
                soc_min_pct=self._read(124, "MinRsvPct") or self._read(802, "SoCRsvMin") or 0.0,
            )
        if self._raw(123, "Conn") == 0:
            c.connected = False
        limits: list[float] = []
        if self._raw(123, "WMaxLim_Ena") == 1:
            limits.append(self._read(123, "WMaxLimPct") or 0.0)
        if self._raw(704, "WMaxLimPctEna") == 1:
            limits.append(self._read(704, "WMaxLimPct") or 0.0)
        if limits:
            c.limit_enabled, c.limit_pct = True, min(limits)
        if self._raw(704, "WSetEna") == 1:
            c.wset_enabled = True
            if self._raw(704, "WSetMod") == 0:
                c.wset_w = (self._read(704, "WSetPct") or 0.0) / 100.0 * rated_w
            else:
                c.wset_w = self._read(704, "WSet") or 0.0
        c.vv = self._volt_var_settings(rated_w, c.var_max, c.va_max)
        c.bat_cmd_w = self._storage_window_cmd(rated_w)
        return c

    def _storage_window_cmd(self, rated_w: float) -> float:
        """The battery's own intent clamped to the 124 window ``[-InWRte, +OutWRte]`` % of WChaMax (W, + discharges).

        A ``StorCtl_Mod`` bit that is off (or its rate unimplemented) leaves that side at the full rate.
        """
        mode = self._raw(124, "StorCtl_Mod") or 0
        w_cha_max = _rated(self._read(124, "WChaMax"), self._read(802, "WChaRteMax"), default=rated_w)
        lo, hi = -w_cha_max, w_cha_max
        in_pct, out_pct = self._read(124, "InWRte"), self._read(124, "OutWRte")
        if mode & 1 and in_pct is not None:
            lo = -in_pct / 100.0 * w_cha_max
        if mode & 2 and out_pct is not None:
            hi = out_pct / 100.0 * w_cha_max
        return min(max(self.settings.battery_intent_w, lo), hi)

    def _volt_var_settings(self, rated_w: float, var_max: float, va_max: float) -> vv.VoltVarSettings:
        """The active volt-var curve from 705 (else 126) as 1547 settings (Q in pu of the VA rating)."""
        off = vv.VoltVarSettings(QV_MODE_ENABLE=False)
        pts: list[tuple[float, float]] = []
        dept = 1
        if 705 in self.models and self._raw(705, "Ena") == 1:
            n = int(self._raw(705, "Crv[0].ActPt") or 0)
            pts = [(self._read(705, f"Crv[0].Pt[{j}].V") or 0.0, self._read(705, f"Crv[0].Pt[{j}].Var") or 0.0)
                   for j in range(n)]
            dept = {0: 0, 1: 1, 2: 2, 3: 3}.get(self._raw(705, "Crv[0].DeptRef") or 1, 1)
            vref = (self._read(705, "Crv[0].VRef") or 100.0) / 100.0
            olrt = self._read(705, "Crv[0].RspTms") or 5.0
        elif 126 in self.models and (self._raw(126, "ModEna") or 0) & 1:
            act = int(self._raw(126, "ActCrv") or 0)
            if act >= 1:
                g = f"curve[{act - 1}]."
                n = int(self._raw(126, g + "ActPt") or 0)
                pts = [(self._read(126, f"{g}V{j}") or 0.0, self._read(126, f"{g}VAr{j}") or 0.0)
                       for j in range(1, n + 1)]
                # 126 DeptRef: 1 %WMax, 2 %VArMax, 3 %VArAval -> the 705 numbering (0, 1, 2)
                dept = (self._raw(126, g + "DeptRef") or 2) - 1
            vref, olrt = 1.0, 5.0
        if len(pts) < 2 or va_max <= 0:
            return off
        while len(pts) < 4:  # fewer than 4 points: repeat the last (flat beyond it)
            pts.append(pts[-1])
        pts = pts[:4]
        # the curve's Q is a percentage of its DeptRef quantity; the function works in pu of the VA rating
        k = (rated_w if dept == 0 else va_max if dept == 3 else var_max) / va_max / 100.0
        return vv.VoltVarSettings(
            QV_MODE_ENABLE=True, QV_VREF=vref, QV_OLRT=olrt,
            QV_CURVE_V1=pts[0][0] / 100.0, QV_CURVE_Q1=pts[0][1] * k,
            QV_CURVE_V2=pts[1][0] / 100.0, QV_CURVE_Q2=pts[1][1] * k,
            QV_CURVE_V3=pts[2][0] / 100.0, QV_CURVE_Q3=pts[2][1] * k,
            QV_CURVE_V4=pts[3][0] / 100.0, QV_CURVE_Q4=pts[3][1] * k,
        )

    # -- the step -------------------------------------------------------------------------------------------
    def hour(self, now: float) -> float:
        """Simulated time of day (hours) at real time ``now``."""
        return self.settings.start_hour + (now - self._t0) * self.settings.time_scale / 3600.0

    def update(self, now: float) -> None:
        """Advance the plant to ``now`` and write the measurements into the image."""
        dt = max(0.0, now - self._t_last)
        self._t_last = now
        s = self.settings
        sim_dt = dt * s.time_scale
        if self._adopt is not None:
            ok = self._adopt_curve(self._adopt)
            loc = self._loc(705, "AdptCrvRslt")
            if loc is not None:
                loc.put_raw(self.image.regs, self.image.base, _ADOPT_COMPLETED if ok else _ADOPT_FAILED)
            self._adopt = None
            self._controls_dirty = True
        self._run_reversions(now)
        if self._controls_dirty:
            self._controls = self._decode_controls()
            self._controls_dirty = False
        c = self._controls
        hour = self.hour(now)
        self._clouds, transmittance = clouds(self._clouds, self._rng.gauss(0.0, 1.0), s.cloudiness, sim_dt)
        irradiance = clear_sky(hour, s.sunrise, s.sunset) * transmittance
        q = self._quantities(c, irradiance, c.rated_w, dt, sim_dt, now)
        regs, base = self.image.regs, self.image.base
        for loc, name, divisor in self._outputs:
            value = q[name] / divisor
            loc.put(regs, base, value)

    def _quantities(self, c: _Controls, irradiance: float, rated_w: float, dt: float, sim_dt: float,
                    now: float) -> dict[str, float]:
        """Everything the measurement points show, for one step: ``dt`` real seconds (device dynamics),
        ``sim_dt`` simulated seconds (energy, state of charge)."""
        s = self.settings
        noise = 1.0 + s.noise * self._rng.gauss(0.0, 1.0)
        avail_pu = max(0.0, min(1.0, irradiance * noise)) if self.has_pv else 0.0
        ap_settings = apl.ActivePowerLimitSettings(
            AP_LIMIT_ENABLE=c.limit_enabled or c.wset_enabled,
            AP_LIMIT=min(c.limit_pct / 100.0 if c.limit_enabled else 1.0,
                         c.wset_w / rated_w if c.wset_enabled and rated_w > 0 else 1.0),
            AP_RT=s.ap_rt,
        )
        self._apl, p_pv_pu = apl.step(self._apl, apl.ActivePowerLimitInputs(avail_pu), ap_settings, dt)
        if not c.connected:
            p_pv_pu = 0.0
        p_bat = 0.0
        if self.has_storage:
            cmd = c.bat_cmd_w if c.connected else 0.0
            self._battery, p_bat = storage.step(self._battery, storage.StorageInputs(cmd), c.storage, sim_dt)
        p_w = p_pv_pu * rated_w + p_bat
        v_nom, f_nom = c.v_nom, c.f_nom
        t = now - self._t0 + self._phase
        wander = 0.004 * math.sin(t / 47.0) + 0.003 * math.sin(t / 13.0)
        meter_w = meter_var = 0.0
        phase_w = phase_var = None
        if self.meter_model is not None and self.grid_flow_ph is not None:
            phase_w = [x * (1.0 + _FLOW_NOISE * self._rng.gauss(0.0, 1.0)) for x in self.grid_flow_ph[0]]
            phase_var = [x * (1.0 + _FLOW_NOISE * self._rng.gauss(0.0, 1.0)) for x in self.grid_flow_ph[1]]
            meter_w, meter_var = sum(phase_w), sum(phase_var)
        elif self.meter_model is not None and self.grid_flow is not None:
            meter_w = self.grid_flow[0] * (1.0 + _FLOW_NOISE * self._rng.gauss(0.0, 1.0))
            meter_var = self.grid_flow[1] * (1.0 + _FLOW_NOISE * self._rng.gauss(0.0, 1.0))
        elif self.meter_model is not None:
            load = household_load(self.hour(now)) * s.peak_load_w * (1.0 + 0.05 * self._rng.gauss(0.0, 1.0))
            meter_w = load - 0.8 * s.peak_load_w * irradiance
            meter_var = meter_w * 0.33
        self._p_pu = (p_w - meter_w) / max(rated_w, s.peak_load_w)
        phase_v_pu = None
        if self.meter_model is not None and self.grid_v_ph_pu is not None:
            phase_v_pu = [x + _V_NOISE_PU * self._rng.gauss(0.0, 1.0) for x in self.grid_v_ph_pu]
            v_pu = sum(phase_v_pu) / 3.0
        else:
            if self.grid_v_pu is None:
                v_pu = 1.0 + self._v_offset + s.dv_dp * self._p_pu + s.dv_dq * self._q_pu + wander
            else:
                v_pu = self.grid_v_pu
            v_pu += _V_NOISE_PU * self._rng.gauss(0.0, 1.0)
        var_max = c.var_max
        self._vv, q_curve = vv.step(self._vv, vv.VoltVarInputs(v_pu), c.vv, dt)
        va_max = c.va_max
        q_var = q_curve * va_max if c.connected and self.has_inverter else 0.0
        q_var = max(-var_max, min(var_max, q_var))
        # reactive power priority: 1547 requires the full reactive capability at rated active power, so
        # within the VA rating active power gives way
        p_cap = math.sqrt(max(0.0, va_max * va_max - q_var * q_var))
        if abs(p_w) > p_cap:
            p_w = math.copysign(p_cap, p_w)
        self._q_pu = q_var / va_max if va_max > 0 else 0.0
        hz = f_nom + 0.02 * math.sin(t / 31.0) + 0.004 * self._rng.gauss(0.0, 1.0)
        v = v_pu * v_nom
        if self.meter_model is not None:
            p_w, q_var = meter_w, meter_var
        n_ph = _PHASES_METER.get(self.meter_model or 0, 3)
        phase_w = phase_w or [p_w / n_ph] * 3
        phase_var = phase_var or [q_var / n_ph] * 3
        phase_v = [x * v_nom for x in phase_v_pu] if phase_v_pu is not None else [v] * 3
        self._at_terminals = (p_w, q_var)
        va = math.hypot(p_w, q_var)
        pf = 1.0 if va < 1.0 else abs(p_w) / va
        pf = math.copysign(pf, -1.0 if q_var < 0 else 1.0) if va >= 1.0 and abs(pf) < 0.9995 else pf
        hours = sim_dt / 3600.0
        e = self._energy
        e["WHinj"] += max(p_w, 0.0) * hours
        e["WHabs"] += max(-p_w, 0.0) * hours
        e["WHimp"] += max(meter_w, 0.0) * hours
        e["WHexp"] += max(-meter_w, 0.0) * hours
        e["VArhInj"] += max(q_var, 0.0) * hours
        e["VArhAbs"] += max(-q_var, 0.0) * hours
        e["VAh"] += va * hours
        dcw = max(0.0, p_pv_pu * rated_w / 0.97)
        dcv = 300.0 + 100.0 * min(1.0, irradiance * 4.0) if avail_pu > 0 else 0.0
        throttled = c.limit_enabled or c.wset_enabled
        producing = p_w > 0.005 * rated_w or abs(p_bat) > 1.0
        if not c.connected:
            st, inv_st = _ST_OFF, _INV_OFF
        elif not producing:
            st, inv_st = (_ST_STANDBY if self.has_storage else _ST_SLEEPING), _INV_SLEEPING
        elif throttled and p_pv_pu < avail_pu - 0.005:
            st, inv_st = _ST_THROTTLED, _INV_THROTTLED
        else:
            st, inv_st = _ST_MPPT, _INV_RUNNING
        soc = self._battery.soc_pct
        cha_st = (_CHA_CHARGING if p_bat < -1.0 else _CHA_DISCHARGING if p_bat > 1.0
                  else _CHA_FULL if soc >= 99.9 else _CHA_EMPTY if soc <= 0.1 else _CHA_HOLDING)
        v_bat = 350.0 + soc * 0.8
        ah_rtg = c.storage.capacity_wh / v_bat
        thr_pct = 100.0 * ap_settings.AP_LIMIT if ap_settings.AP_LIMIT_ENABLE else 100.0
        thr_src = (1 if c.limit_enabled else 0) | (2 if c.wset_enabled else 0) | (16 if c.vv.QV_MODE_ENABLE else 0)
        st_act = (1 if throttled else 0) | (8 if c.vv.QV_MODE_ENABLE else 0)
        return {
            "W": p_w, "Wph": p_w, "VA": va, "VAph": va, "VAr": q_var, "VArph": q_var, "PF": pf, "PFpct": pf * 100.0,
            "A": va / v if v > 0 else 0.0, "Aph": va / v if v > 0 else 0.0, "V": v, "VLL": v * math.sqrt(3.0),
            "Hz": hz, "WHinj": e["WHinj"], "WHabs": e["WHabs"], "WHinjph": e["WHinj"], "WHabsph": e["WHabs"],
            "WHimp": e["WHimp"], "WHexp": e["WHexp"], "VArhInj": e["VArhInj"], "VArhAbs": e["VArhAbs"],
            "VAh": e["VAh"], "DCW": dcw, "DCV": dcv, "DCA": dcw / dcv if dcv > 0 else 0.0, "mDCW": dcw,
            "mDCA": dcw / dcv if dcv > 0 else 0.0, "mDCWH": e["WHinj"] / 0.97,
            "Tmp": 25.0 + 20.0 * abs(p_w) / rated_w if rated_w > 0 else 25.0,
            "St": st, "St701": 1 if c.connected else 0, "InvSt": inv_st, "ConnSt": 1 if c.connected else 0,
            "ThrotPct": thr_pct, "ThrotSrc": thr_src, "StActCtl": st_act, "PVConn": 7 if c.connected else 3,
            "Wavail": avail_pu * rated_w, "VArAval": var_max,
            "SoC": soc, "StorAvalAh": ah_rtg * soc / 100.0, "Vbat": v_bat, "Abat": p_bat / v_bat,
            "Wbat": p_bat, "ChaSt": cha_st, "Vcell": v_bat / 120.0, "VcellMax": v_bat / 120.0 + 0.01,
            "VcellMin": v_bat / 120.0 - 0.01,
            "WphA": phase_w[0], "WphB": phase_w[1], "WphC": phase_w[2], "VArphA": phase_var[0],
            "VArphB": phase_var[1], "VArphC": phase_var[2], "VphA": phase_v[0], "VphB": phase_v[1],
            "VphC": phase_v[2],
        }

    # -- introspection (tests, demo) ------------------------------------------------------------------------
    @property
    def output(self) -> tuple[float, float]:
        """(W, var) at the terminals at the last step, as the W and var points show them: + export for a DER
        (a battery: + discharge), + import for a meter; (0, 0) before the first step."""
        return self._at_terminals

    @property
    def battery(self) -> storage.StorageState:
        """The battery's state of charge (meaningful when the image holds 124 or 802)."""
        return self._battery
