"""One simulated Modbus unit: a SunSpec register image, its plant, and the rules for client access.

Reads of unreadable or absent addresses answer exception 2 (ILLEGAL_ADDRESS); writes must land on points
marked RW in their model definition (else exception 2) with an enum value the model defines (else exception
3, ILLEGAL_VALUE). A write takes effect at the next read: the plant is stepped first. So does the grid a
co-simulation imposes (:meth:`SimulatedDevice.impose_grid`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.sim._image import ModelSpan, RegisterImage, walk_models
from gateway.sim._layout import ModelLayout, PointLoc, layouts, writable_addresses
from gateway.sim._physics import PhysicsSettings, Plant

#: Coil and discrete-input function codes: a SunSpec device has none.
_BIT_FUNCTIONS = frozenset((1, 2, 5, 15))


class SimulatedDevice:
    """One unit id holding ``image``; ``animate`` runs the plant (off: the image is served as it is).

    ``clock`` gives the real time the plant runs on (tests pass a fake one); ``min_step`` is how stale the
    measurements may get before a read steps the plant.
    """

    def __init__(
        self,
        image: RegisterImage,
        unit: int = 1,
        *,
        animate: bool = True,
        physics: PhysicsSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_step: float = 0.2,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} is outside 1..247")
        self.unit = unit
        self.image = image
        self.clock = clock
        self.min_step = min_step
        self.spans: tuple[ModelSpan, ...] = walk_models(image)
        self.layouts: tuple[ModelLayout, ...] = tuple(layouts(image, self.spans))
        self.writable = writable_addresses(image, self.layouts)
        self._points: dict[int, PointLoc] = {}
        for lay in self.layouts:
            for loc in lay.points.values():
                for a in range(loc.addr, loc.addr + loc.pdef.size):
                    self._points[a] = loc
        now = clock()
        self.plant = Plant(image, self.layouts, physics or PhysicsSettings(seed=unit), now) if animate else None
        self.last_update = now
        self._dirty = True

    # -- what the physics and the tests use -----------------------------------------------------------------
    def update(self, now: float | None = None) -> None:
        """Step the plant to ``now`` (default: the clock) and refresh the measurements in the image."""
        t = self.clock() if now is None else now
        if self.plant is not None:
            self.plant.update(t)
        self.last_update = t
        self._dirty = False

    def impose_grid(self, v_pu: float | None, flow: tuple[float, float] | None = None, *,
                    flow_ph: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None,
                    v_ph_pu: tuple[float, float, float] | None = None) -> None:
        """Let a co-simulation set the grid this device sits on; seen from the next read (the plant is stepped).

        ``v_pu``: the voltage at its terminals, pu of the plant's nominal (:meth:`Plant.v_nom`), instead of its own
        voltage model; ``flow``: a meter's power through it (W, var; + import) instead of its household profile.
        ``None`` hands either back to the plant's own model. A three-phase meter (203/204) may be given its phases
        instead: ``flow_ph`` (W of phases A, B, C; var of A, B, C; + import; with it ``flow`` must be None, the
        totals being their sum) and ``v_ph_pu`` (pu of the plant's nominal; ``v_pu`` then only for its other
        points' sake and ignored by the meter's, which show these and their mean). Raises ``ValueError`` for a
        device that is not animated, a ``flow`` or per-phase value for a device without a (three-phase) meter
        model, or a value that is not a finite number (> 0 V).
        """
        plant = self.plant
        if plant is None:
            raise ValueError("impose_grid: this device is not animated (animate=False): there is no plant to drive")
        if v_pu is not None and not (math.isfinite(v_pu) and v_pu > 0):
            raise ValueError(f"impose_grid: v_pu must be a finite voltage > 0 pu, got {v_pu!r}")
        if flow is not None:
            if plant.meter_model is None:
                raise ValueError("impose_grid: flow is for a meter, and this device has no meter model (201-204)")
            if not all(math.isfinite(x) for x in flow):
                raise ValueError(f"impose_grid: flow must be finite (W, var), got {flow!r}")
        if flow_ph is not None or v_ph_pu is not None:
            if plant.meter_model not in (203, 204):
                raise ValueError("impose_grid: flow_ph/v_ph_pu are for a three-phase meter (203/204), and this "
                                 "device has none")
            if flow_ph is not None and flow is not None:
                raise ValueError("impose_grid: give flow (totals) or flow_ph (per phase), not both")
            if flow_ph is not None and not (len(flow_ph) == 2 and all(len(x) == 3 for x in flow_ph)
                                            and all(math.isfinite(v) for x in flow_ph for v in x)):
                raise ValueError(f"impose_grid: flow_ph must be finite ((W A, B, C), (var A, B, C)), got {flow_ph!r}")
            if v_ph_pu is not None and not (len(v_ph_pu) == 3 and all(math.isfinite(v) and v > 0 for v in v_ph_pu)):
                raise ValueError(f"impose_grid: v_ph_pu must be three finite voltages > 0 pu, got {v_ph_pu!r}")
        plant.grid_v_pu = v_pu
        plant.grid_flow = flow
        plant.grid_flow_ph = flow_ph
        plant.grid_v_ph_pu = v_ph_pu
        self._dirty = True

    def value(self, model_id: int, key: str) -> float | None:
        """The engineering value of point ``key`` of the first model ``model_id`` (``None``: unimplemented)."""
        return self._loc(model_id, key).get(self.image.regs, self.image.base)

    def address_of(self, model_id: int, key: str) -> int:
        """The Modbus address of point ``key`` of the first model ``model_id``."""
        return self._loc(model_id, key).addr

    def _loc(self, model_id: int, key: str) -> PointLoc:
        for lay in self.layouts:
            if lay.span.id == model_id:
                if key in lay.points:
                    return lay.points[key]
                break
        raise KeyError(f"model {model_id} point {key} is not in this image")

    # -- Modbus access --------------------------------------------------------------------------------------
    def read(self, address: int, count: int) -> list[int] | ExcCodes:
        """Registers as a client reads them (stepping the plant first if stale), or the exception code."""
        if not self.image.holds(address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        self._refresh()
        i = address - self.image.base
        return self.image.regs[i : i + count]

    def write(self, address: int, values: Sequence[int]) -> ExcCodes | None:
        """Apply a client's write, or say which exception it answers; the write takes effect at once."""
        count = len(values)
        if count == 0 or any(a not in self.writable for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        if any(not 0 <= v <= 0xFFFF for v in values):
            return ExcCodes.ILLEGAL_VALUE
        regs, base = self.image.regs, self.image.base
        touched: dict[int, PointLoc] = {}
        for a in range(address, address + count):
            loc = self._points.get(a)
            if loc is not None:
                touched[loc.addr] = loc
        old = regs[address - base : address - base + count]
        regs[address - base : address - base + count] = list(values)
        for loc in touched.values():
            if not self._acceptable(loc, address, count):
                regs[address - base : address - base + count] = old
                return ExcCodes.ILLEGAL_VALUE
        if self.plant is not None:
            self.plant.on_write(((loc.model, loc.key) for loc in touched.values()), self.clock())
        self._dirty = True
        return None

    def _acceptable(self, loc: PointLoc, address: int, count: int) -> bool:
        """Whether the value now in ``loc`` is one its definition allows (enums: a defined symbol)."""
        if loc.pdef.type not in ("enum16", "enum32") or not loc.pdef.symbols:
            return True
        if loc.addr < address or loc.addr + loc.pdef.size > address + count:
            return True  # a partial write of a wide point: judge it when whole
        raw = loc.raw(self.image.regs, self.image.base)
        return raw is None or raw in {v for _, v in loc.pdef.symbols}

    def _refresh(self) -> None:
        now = self.clock()
        if self._dirty or now - self.last_update >= self.min_step:
            self.update(now)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's access hook: serve reads from the image, route writes through :meth:`write`."""
        if function_code in _BIT_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is None:  # a read, or the read-back pymodbus does after a write
            self._refresh()
            i, j = address - start_address, address - self.image.base
            current_registers[i : i + count] = self.image.regs[j : j + count]
            return None
        return self.write(address, [int(v) for v in set_values])

    def sim_device(self) -> SimDevice:
        """The pymodbus :class:`SimDevice` serving this unit (a fresh one per server)."""
        blocks: list[SimData] = []
        base, regs = self.image.base, self.image.regs
        run_start: int | None = None
        run_ro = False
        for i in range(len(regs) + 1):
            a = base + i
            ok = i < len(regs) and a not in self.image.unreadable
            ro = a not in self.writable
            if run_start is not None and (not ok or ro != run_ro):
                blocks.append(SimData(run_start, values=regs[run_start - base : i], datatype=DataType.REGISTERS,
                                      readonly=run_ro))
                run_start = None
            if ok and run_start is None:
                run_start, run_ro = a, ro
        return SimDevice(self.unit, simdata=blocks, action=self._action)
