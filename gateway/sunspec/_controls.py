"""Control writes with read-after-write verification: curtailment, active power, storage, power factor, volt-var.

Every write reads the model first (scale factors come from the device, applied in reverse), writes the
settings, then the enable flag, and reads back what it wrote: a device that accepts a write but does not hold
the value raises :class:`WriteVerificationError`. Whenever a limit is written, the model's reversion timer is
programmed with it (704 ``*RvrtTms``, 123 ``WMaxLimPct_RvrtTms``, 124 ``InOutWRte_RvrtTms``, 126/705
``RvrtTms``), so the inverter falls back by itself if the gateway dies. Model 7xx is preferred over 12x where
a device has both.

What the device falls back *to*: 704 holds a reversion value beside each timer (``WMaxLimPctRvrt`` with
``WMaxLimPctEnaRvrt``, ``WSetRvrt`` with ``WSetEnaRvrt``); the caller may program them with the limit
(``revert_pct`` / ``revert_w``), in the same write as the timer, when the device implements them (all or none).
123 and 124 have no reversion value: their timers hand the function back to the device's own default (123
``WMaxLim_Ena`` off: typically uncapped), which nothing written over Modbus can change.

Storage (124) is a **limit window**, as the hybrid-inverter vendor documentation for SunSpec storage control
describes it ("Modbus TCP & RTU" operating instructions 42,0410,2649, Basic Storage Control Model 124; SunSpec:
``OutWRte`` "percent of max discharge rate", ``InWRte`` "percent of max charging rate", signed int16 with
``InOutWRte_SF``). The battery's power P (W, discharge positive) is kept inside
``[-InWRte % * WChaMax, +OutWRte % * WChaMax]``; ``StorCtl_Mod`` bit 0 (CHARGE) enables the ``InWRte`` side, bit 1
(DISCHARGE) the ``OutWRte`` side, and a side whose bit is off stays at the full rate. A negative ``InWRte``
therefore forces a minimum discharge, a negative ``OutWRte`` a minimum charge; inside the window the battery's own
logic decides. :meth:`SunSpecControls.set_storage_window_pct` writes a window (a cap),
:meth:`SunSpecControls.set_storage_rate_pct` a setpoint: the single-point window ``OutWRte = p``, ``InWRte = -p``.
An empty window (``OutWRte + InWRte < 0``) is refused here (that firmware is reported to answer it with exception 3).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import UnsupportedControl, WriteVerificationError
from gateway.sunspec._decode import Instance, ModelBlock
from gateway.sunspec._defs import GroupDef, ModelDef, PointDef, model_def
from gateway.sunspec._discover import DeviceMap, ModelLocation
from gateway.sunspec._encode import encode_point
from gateway.sunspec._io import RegisterIO
from gateway.sunspec._reader import SunSpecReader

MAX_WRITE = 123  # FC16 carries at most 123 registers
ENABLED = 1
WATTS = 1  # 704 WSetMod
VAR_MAX_PCT = 1  # 705 DeptRef
VARMAX_126 = 2  # 126 DeptRef: var as % of VArMax
ADOPT_COMPLETED, ADOPT_FAILED = 1, 2
CHARGE_BIT, DISCHARGE_BIT = 1, 2  # 124 StorCtl_Mod bits

GroupPath = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What a control call wrote: the model used, the points, and whether a reversion timer was programmed."""

    model: int
    points: tuple[str, ...]
    reversion_s: int | None
    #: the reversion value programmed with the timer, in the point's units (704 ``WMaxLimPctRvrt`` %, ``WSetRvrt``
    #: W); None when none was asked for or the device has none (123, 124, or the points unimplemented)
    reversion_value: float | None = None


def _group_by_name(group: GroupDef, name: str) -> GroupDef:
    for g in group.groups:
        if g.name == name:
            return g
    raise UnsupportedControl(f"group {name!r} is not in {group.name!r}")


def _instance_len(group: GroupDef, counts: Mapping[str, Any]) -> int:
    return group.fixed_len({k: v for k, v in counts.items() if isinstance(v, int)})


def _locate(mdef: ModelDef, block: ModelBlock, path: GroupPath) -> tuple[int, GroupDef, Instance]:
    """Register offset (from ``ID``), definition and current values of the group instance at ``path``."""
    group, offset = mdef.root, 0
    values: dict[str, Any] = {**block.points, **block.groups}
    counts = block.points
    for name, index in path:
        offset += group.points_len
        for sub in group.groups:
            present = values.get(sub.name)
            n = len(present) if isinstance(present, list) else 0 if present is None else 1
            if sub.name == name:
                if index >= n:
                    raise UnsupportedControl(f"{mdef.id} {name}[{index}] does not exist (device has {n})")
                offset += index * _instance_len(sub, counts)
                items: list[dict[str, Any]] = present if isinstance(present, list) else [present or {}]
                group, values = sub, items[index]
                break
            offset += n * _instance_len(sub, counts)
        else:
            raise UnsupportedControl(f"group {name!r} is not in model {mdef.id}")
    return offset, group, values


def _scale_factor(p: PointDef, group_values: Mapping[str, Any], model_values: Mapping[str, Any]) -> int | None:
    if p.sf is None or isinstance(p.sf, int):
        return p.sf
    sf = group_values.get(p.sf, model_values.get(p.sf))
    if sf is None and p.type != "float32":
        raise UnsupportedControl(f"{p.name}: its scale factor {p.sf} is not implemented on the device")
    return sf if isinstance(sf, int) else None


def _runs(regs: Mapping[int, int]) -> list[tuple[int, list[int]]]:
    """Contiguous runs of (address, values), each at most MAX_WRITE long."""
    runs: list[tuple[int, list[int]]] = []
    for addr in sorted(regs):
        if runs and runs[-1][0] + len(runs[-1][1]) == addr and len(runs[-1][1]) < MAX_WRITE:
            runs[-1][1].append(regs[addr])
        else:
            runs.append((addr, [regs[addr]]))
    return runs


class SunSpecControls:
    """Writes controls to one device through its :class:`RegisterIO`. One call at a time per device."""

    def __init__(self, io: RegisterIO, device_map: DeviceMap, *, adopt_timeout_s: float = 5.0) -> None:
        self._io = io
        self._map = device_map
        self._adopt_timeout_s = adopt_timeout_s

    def has(self, model_id: int) -> bool:
        return self._map.find(model_id) is not None

    def _location(self, model_id: int) -> ModelLocation:
        loc = self._map.find(model_id)
        if loc is None:
            raise UnsupportedControl(f"the device has no model {model_id}")
        return loc

    async def read_model(self, model_id: int) -> ModelBlock:
        reader = SunSpecReader(self._io, self._map, {model_id})
        blocks = await reader.read()
        self._map = reader.map
        return blocks[0]

    async def write_points(self, model_id: int, values: Mapping[str, Any], path: GroupPath = ()) -> tuple[str, ...]:
        """Write engineering ``values`` to points of one group instance of ``model_id``, then verify them.

        Values are scaled with the device's current scale factors; ``None`` writes the unimplemented sentinel.
        """
        return await self.write_many(model_id, [(path, values)])

    async def write_many(self, model_id: int, writes: Sequence[tuple[GroupPath, Mapping[str, Any]]]) -> tuple[str, ...]:
        """As :meth:`write_points` for several group instances at once: one model read, contiguous writes."""
        loc = self._location(model_id)
        mdef = model_def(model_id)
        block = await self.read_model(model_id)
        regs: dict[int, int] = {}
        names: list[str] = []
        for path, values in writes:
            base, group, current = _locate(mdef, block, path)
            for name, value in values.items():
                try:
                    p = group.point(name)
                except KeyError:
                    raise UnsupportedControl(f"model {model_id} has no point {name!r}") from None
                if not p.writable:
                    raise UnsupportedControl(f"model {model_id} point {name} is read-only")
                raw = encode_point(p, value, _scale_factor(p, current, block.points))
                start = loc.addr + base + p.offset
                regs.update(zip(range(start, start + p.size), raw, strict=True))
                names.append(name)
        for addr, run in _runs(regs):
            await self._io.write(addr, run)
        for addr, run in _runs(regs):
            back = await self._io.read(addr, len(run))
            if back != run:
                raise WriteVerificationError(
                    f"model {model_id} {', '.join(names)}: wrote {run} at {addr}, read back {back}")
        return tuple(names)

    async def _with_timer(self, model_id: int, settings: Mapping[str, Any], timer: str, revert_s: int,
                          enable: Mapping[str, Any], path: GroupPath = (),
                          reversion: Mapping[str, Any] | None = None) -> ControlResult:
        """Settings (with the reversion timer, when the device implements it), then the enable flags.

        ``reversion``: top-level points that say what the device reverts to (the first one is the value
        reported in the result), written with the timer when the device implements every one of them.
        """
        if revert_s <= 0:
            raise ValueError("a limit needs a positive reversion time: the device must fall back if we die")
        block = await self.read_model(model_id)
        has_timer = block.points.get(timer) is not None  # a timer reading as the sentinel is not implemented
        writes: list[tuple[GroupPath, Mapping[str, Any]]] = [(path, settings)]
        top: dict[str, Any] = {}
        if has_timer:  # timers sit at the model's top level, settings maybe in a group
            top[timer] = revert_s
        programmed = bool(reversion) and all(block.points.get(name) is not None for name in reversion or {})
        if programmed and reversion:
            top.update(reversion)
        if top:
            writes.append(((), top))
        done = await self.write_many(model_id, writes)
        done += await self.write_points(model_id, enable)
        value = float(next(iter(reversion.values()))) if programmed and reversion else None
        return ControlResult(model_id, done, revert_s if has_timer else None, value)

    # --- active power -------------------------------------------------------------------------------------
    async def limit_active_power_pct(self, pct: float, revert_s: int, *,
                                     revert_pct: float | None = None) -> ControlResult:
        """Curtail output to ``pct`` % of WMax (704 WMaxLimPct, else 123 WMaxLimPct).

        ``revert_pct``: on 704, the limit (% of WMax) the device keeps, enabled, when the timer runs out
        (``WMaxLimPctRvrt``, ``WMaxLimPctEnaRvrt`` = 1). 123 has no such point: its timer disables the limit.
        """
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"active power limit {pct} % is outside 0..100")
        if revert_pct is not None and not 0.0 <= revert_pct <= 100.0:
            raise ValueError(f"reversion limit {revert_pct} % is outside 0..100")
        if self.has(704):
            reversion = None if revert_pct is None else {"WMaxLimPctRvrt": revert_pct, "WMaxLimPctEnaRvrt": ENABLED}
            return await self._with_timer(704, {"WMaxLimPct": pct}, "WMaxLimPctRvrtTms", revert_s,
                                          {"WMaxLimPctEna": ENABLED}, reversion=reversion)
        if self.has(123):
            return await self._with_timer(123, {"WMaxLimPct": pct}, "WMaxLimPct_RvrtTms", revert_s,
                                          {"WMaxLim_Ena": ENABLED})
        raise UnsupportedControl("the device has neither model 704 nor 123: it cannot be curtailed")

    async def release_active_power_limit(self) -> ControlResult:
        if self.has(704):
            return ControlResult(704, await self.write_points(704, {"WMaxLimPctEna": 0}), None)
        if self.has(123):
            return ControlResult(123, await self.write_points(123, {"WMaxLim_Ena": 0}), None)
        raise UnsupportedControl("the device has neither model 704 nor 123")

    async def set_active_power_w(self, watts: float, revert_s: int, *, revert_w: float | None = None,
                                 revert_enabled: bool = False) -> ControlResult:
        """An active power setpoint in W (704 WSet; negative charges a storage device).

        ``revert_w``: what ``WSet`` becomes when the timer runs out (``WSetRvrt``), with ``WSetEnaRvrt`` =
        ``revert_enabled``: off (the default) hands the device back to its limits when the setpoint lapses.
        """
        if not self.has(704):
            return _unsupported("WSet", 704)
        reversion = None if revert_w is None else {"WSetRvrt": revert_w,
                                                   "WSetEnaRvrt": ENABLED if revert_enabled else 0}
        return await self._with_timer(704, {"WSetMod": WATTS, "WSet": watts}, "WSetRvrtTms", revert_s,
                                      {"WSetEna": ENABLED}, reversion=reversion)

    # --- storage ------------------------------------------------------------------------------------------
    async def set_storage_window_pct(self, out_pct: float, in_pct: float, revert_s: int) -> ControlResult:
        """Confine the battery to ``[-in_pct, +out_pct]`` % of WChaMax (124 ``OutWRte``/``InWRte``, both
        ``StorCtl_Mod`` bits; see the module docstring): the battery's own logic chooses inside the window.

        Either bound may be negative (a minimum discharge or charge), but the window must not be empty.
        """
        for name, value in (("OutWRte", out_pct), ("InWRte", in_pct)):
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"storage {name} {value} % is outside -100..100")
        if out_pct + in_pct < 0:
            raise ValueError(f"storage window [{-in_pct:g}, {out_pct:g}] % is empty: the discharge bound OutWRte "
                             "must not be below the charge bound -InWRte")
        if not self.has(124):
            return _unsupported("storage window", 124)
        return await self._with_timer(124, {"OutWRte": out_pct, "InWRte": in_pct}, "InOutWRte_RvrtTms", revert_s,
                                      {"StorCtl_Mod": CHARGE_BIT | DISCHARGE_BIT})

    async def set_storage_rate_pct(self, pct: float, revert_s: int) -> ControlResult:
        """Storage power as % of WChaMax: positive discharges, negative charges, 0 holds the battery at 0 W.

        Written as the single-point window ``OutWRte = pct``, ``InWRte = -pct`` with both ``StorCtl_Mod`` bits.
        """
        if not -100.0 <= pct <= 100.0:
            raise ValueError(f"storage rate {pct} % is outside -100..100")
        return await self.set_storage_window_pct(pct, 0.0 - pct, revert_s)

    async def set_storage_reserve_pct(self, soc_min: float, soc_max: float) -> ControlResult:
        """The state-of-charge band the battery keeps (802 SoCRsvMin / SocRsvMax)."""
        if not 0.0 <= soc_min < soc_max <= 100.0:
            raise ValueError(f"reserve band {soc_min}..{soc_max} % is not inside 0..100")
        if not self.has(802):
            return _unsupported("storage reserve", 802)
        return ControlResult(802, await self.write_points(802, {"SoCRsvMin": soc_min, "SocRsvMax": soc_max}), None)

    # --- reactive power -----------------------------------------------------------------------------------
    async def set_power_factor(self, pf: float, revert_s: int, *, absorbing: bool = False) -> ControlResult:
        """A fixed power factor while injecting (704 PFWInj, else 123 OutPFSet); ``absorbing`` = under-excited."""
        if not 0.0 < pf <= 1.0:
            raise ValueError(f"power factor {pf} is outside (0, 1]")
        if self.has(704):
            ext = 1 if absorbing else 0
            return await self._with_timer(704, {"PF": pf, "Ext": ext}, "PFWInjRvrtTms", revert_s,
                                            {"PFWInjEna": ENABLED}, path=(("PFWInj", 0),))
        if self.has(123):
            return await self._with_timer(123, {"OutPFSet": -pf if absorbing else pf}, "OutPFSet_RvrtTms",
                                          revert_s, {"OutPFSet_Ena": ENABLED})
        raise UnsupportedControl("the device has neither model 704 nor 123: no power factor control")

    async def set_volt_var(self, curve: Sequence[tuple[float, float]], revert_s: int) -> ControlResult:
        """A volt-var curve: points of (V as % of nominal, var as % of max var) (705 with adopt, else 126)."""
        if len(curve) < 2 or any(b[0] <= a[0] for a, b in itertools.pairwise(curve)):
            raise ValueError("a volt-var curve needs at least two points with rising voltage")
        if self.has(705):
            return await self._volt_var_705(curve, revert_s)
        if self.has(126):
            return await self._volt_var_126(curve, revert_s)
        raise UnsupportedControl("the device has neither model 705 nor 126: no volt-var control")

    async def _volt_var_705(self, curve: Sequence[tuple[float, float]], revert_s: int) -> ControlResult:
        block = await self.read_model(705)
        n_pt = block.points.get("NPt")
        crvs = block.groups.get("Crv")
        writable = [i for i, c in enumerate(crvs) if i > 0 and c.get("ReadOnly") == 0] if isinstance(
            crvs, list) else []
        if not isinstance(n_pt, int) or len(curve) > n_pt or not writable:
            raise UnsupportedControl(f"model 705 holds {n_pt} points per curve and no writable curve")
        index = writable[0]
        pts = [{"V": v, "Var": q} for v, q in curve] + [{"V": None, "Var": None}] * (n_pt - len(curve))
        writes: list[tuple[GroupPath, Mapping[str, Any]]] = [
            ((("Crv", index),), {"ActPt": len(curve), "DeptRef": VAR_MAX_PCT})]
        writes += [((("Crv", index), ("Pt", i)), pt) for i, pt in enumerate(pts)]
        await self.write_many(705, writes)
        await self.write_points(705, {"AdptCrvReq": index + 1})  # curves are numbered from 1
        await self._await_adoption()
        return await self._with_timer(705, {}, "RvrtTms", revert_s, {"Ena": ENABLED})

    async def _await_adoption(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._adopt_timeout_s
        while True:
            result = (await self.read_model(705)).points.get("AdptCrvRslt")
            if result == ADOPT_COMPLETED:
                return
            if result == ADOPT_FAILED:
                raise WriteVerificationError("model 705: the device refused the volt-var curve (AdptCrvRslt=FAILED)")
            if loop.time() > deadline:
                raise WriteVerificationError(f"model 705: curve not adopted within {self._adopt_timeout_s} s")
            await asyncio.sleep(0.1)

    async def _volt_var_126(self, curve: Sequence[tuple[float, float]], revert_s: int) -> ControlResult:
        block = await self.read_model(126)
        curves = block.groups.get("curve")
        if not isinstance(curves, list) or not curves:
            raise UnsupportedControl("model 126 holds no curves")
        index = len(curves) - 1  # the last curve: the first is often the device's own default
        size = sum(1 for p in model_def(126).root.groups[0].points if p.name.startswith("V") and p.name[1:].isdigit())
        if len(curve) > size:
            raise UnsupportedControl(f"model 126 curves hold {size} points, not {len(curve)}")
        values: dict[str, Any] = {"ActPt": len(curve), "DeptRef": VARMAX_126}
        for i, (v, q) in enumerate(curve, start=1):
            values[f"V{i}"] = v
            values[f"VAr{i}"] = q
        await self.write_points(126, values, (("curve", index),))
        return await self._with_timer(126, {"ActCrv": index + 1}, "RvrtTms", revert_s, {"ModEna": ENABLED})


def _unsupported(what: str, model_id: int) -> ControlResult:
    raise UnsupportedControl(f"{what} needs model {model_id}, which the device does not have")
