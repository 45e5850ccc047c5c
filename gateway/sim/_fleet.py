"""Fleets of simulated devices: the kinds on offer, how they spread over TCP endpoints, and the entry points
``gridedge simulate`` / ``make demo`` (:func:`run_simulator`) and the tests and benchmarks
(:func:`simulated_fleet`) use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gateway.errors import ConfigError, SunSpecError
from gateway.sim._device import SimulatedDevice
from gateway.sim._image import RegisterImage, image_from_dump, image_from_models
from gateway.sim._physics import PhysicsSettings
from gateway.sim._server import serve_tcp, stepping
from gateway.sunspec import all_model_ids

_BATTERY_VALUES: dict[int, dict[str, Any]] = {
    120: {"DERTyp": 82, "WHRtg": 10000, "AhrRtg": 25, "MaxChaRte": 5000, "MaxDisChaRte": 5000},
}

#: Device kinds: the SunSpec models each holds (model 1 is always first) and overrides of the defaults.
KINDS: dict[str, tuple[tuple[int, ...], dict[int, dict[str, Any]]]] = {
    "inverter": ((1, 103, 120, 121, 122, 123, 126, 160), {}),
    "inverter-7xx": ((1, 701, 702, 704, 705), {}),
    "battery": ((1, 103, 120, 124, 802), _BATTERY_VALUES),
    "meter": ((1, 203), {}),
}


class Endpoint(NamedTuple):
    """Where one simulated device answers: ``host, port, unit = endpoint``."""

    host: str
    port: int
    unit: int


class Served(NamedTuple):
    """One device a fleet serves: its kind (a key of :data:`KINDS`, or ``"dump"``) and its endpoint."""

    kind: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """``count`` devices of ``kind`` (a key of :data:`KINDS`, or ``"dump"`` with ``dump`` a JSON path).

    ``animate`` runs the physics; by default on for synthetic kinds, off for dumps (served as recorded).
    """

    kind: str = "inverter"
    count: int = 1
    dump: str | None = None
    animate: bool | None = None

    @classmethod
    def parse(cls, text: str) -> DeviceSpec:
        """``KIND[:COUNT]`` or ``dump:PATH`` (e.g. ``inverter:10``, ``meter``, ``dump:/tmp/x.json``)."""
        kind, _, rest = text.partition(":")
        if kind == "dump":
            if not rest:
                raise ConfigError("a dump spec needs a path: dump:PATH")
            return cls("dump", 1, rest)
        if kind not in KINDS:
            raise ConfigError(f"unknown device kind {kind!r}; choose from {', '.join([*KINDS, 'dump'])}")
        try:
            count = int(rest) if rest else 1
        except ValueError as exc:
            raise ConfigError(f"device count in {text!r} is not a number") from exc
        if count < 1:
            raise ConfigError(f"device count in {text!r} must be at least 1")
        return cls(kind, count)


def kind_models(kind: str) -> tuple[int, ...]:
    """The model ids a device of ``kind`` holds (models pysunspec2 does not define are left out)."""
    defined = set(all_model_ids())
    return tuple(m for m in KINDS[kind][0] if m in defined)


def build_image(kind: str, serial: str, unit: int = 1) -> RegisterImage:
    """A fresh register image for one device of a synthetic ``kind``."""
    _, overrides = KINDS[kind]
    values = {m: dict(v) for m, v in overrides.items()}
    values[1] = {"DA": unit, **values.get(1, {})}
    return image_from_models(kind_models(kind), values, serial=serial)


_TEMPLATES: dict[str, RegisterImage] = {}


def _image_for(kind: str, index: int) -> RegisterImage:
    """A device image: the kind's template copied, with this device's model 1 (serial number) patched in."""
    template = _TEMPLATES.get(kind)
    if template is None:
        template = _TEMPLATES[kind] = build_image(kind, "SIM-TEMPLATE")
    common = image_from_models((), serial=f"SIM-{kind[:3].upper()}-{index:06d}").regs[:-2]
    image = template.copy()
    image.regs[: len(common)] = common
    return image


def make_devices(
    specs: Sequence[DeviceSpec | str],
    *,
    physics: PhysicsSettings | None = None,
    first_index: int = 0,
) -> list[tuple[str, SimulatedDevice]]:
    """(kind, device) for every device the specs ask for, unit 1 each (the caller assigns units)."""
    template = physics or PhysicsSettings()
    out: list[tuple[str, SimulatedDevice]] = []
    index = first_index
    for raw in specs:
        spec = DeviceSpec.parse(raw) if isinstance(raw, str) else raw
        for _ in range(spec.count):
            if spec.kind == "dump":
                if spec.dump is None:
                    raise ConfigError("a dump spec needs a path")
                try:
                    image = image_from_dump(Path(spec.dump))
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"cannot load dump {spec.dump}: {exc}") from exc
                animate = bool(spec.animate)
            else:
                image = _image_for(spec.kind, index)
                animate = True if spec.animate is None else spec.animate
            settings = dataclasses.replace(template, seed=template.seed * 100003 + index)
            try:
                device = SimulatedDevice(image, 1, animate=animate, physics=settings)
            except SunSpecError as exc:
                raise ConfigError(f"device {index} ({spec.kind}): {exc}") from exc
            out.append((spec.kind, device))
            index += 1
    return out


def _assign(devices: list[tuple[str, SimulatedDevice]], units_per_port: int) -> list[list[tuple[str, SimulatedDevice]]]:
    """Split devices into groups of ``units_per_port``, giving them unit ids 1, 2, ... within each group.

    A synthetic device's model 1 ``DA`` (device address) is set to its unit id; a dump keeps its own.
    """
    if not 1 <= units_per_port <= 247:
        raise ConfigError(f"units_per_port {units_per_port} is outside 1..247")
    groups = [devices[i : i + units_per_port] for i in range(0, len(devices), units_per_port)]
    for group in groups:
        for unit, (kind, device) in enumerate(group, start=1):
            device.unit = unit
            if kind != "dump":
                device.image.regs[device.address_of(1, "DA") - device.image.base] = unit
    return groups


@contextlib.asynccontextmanager
async def serve_fleet(
    devices: list[tuple[str, SimulatedDevice]],
    *,
    host: str = "127.0.0.1",
    port_base: int = 0,
    units_per_port: int = 1,
    tick: float = 1.0,
) -> AsyncIterator[list[Served]]:
    """Serve ``devices`` on TCP ports from ``port_base`` up (0: free ports), ``units_per_port`` per port."""
    groups = _assign(devices, units_per_port)
    served: list[Served] = []
    async with contextlib.AsyncExitStack() as stack:
        for i, group in enumerate(groups):
            port = await stack.enter_async_context(
                serve_tcp([d for _, d in group], host, port_base + i if port_base else 0, tick=0)
            )
            served += [Served(kind, Endpoint(host, port, d.unit)) for kind, d in group]
        await stack.enter_async_context(stepping([d for _, d in devices], tick))  # one stepper for the fleet
        yield served


@contextlib.asynccontextmanager
async def simulated_fleet(
    n_devices: int,
    kind: str = "inverter",
    units_per_port: int = 1,
    *,
    host: str = "127.0.0.1",
    port_base: int = 0,
    physics: PhysicsSettings | None = None,
    tick: float = 1.0,
) -> AsyncIterator[list[Endpoint]]:
    """``n_devices`` simulated devices of ``kind`` served in-process; yields their endpoints."""
    devices = make_devices([DeviceSpec(kind, n_devices)], physics=physics)
    async with serve_fleet(devices, host=host, port_base=port_base, units_per_port=units_per_port,
                           tick=tick) as served:
        yield [s.endpoint for s in served]


async def run_simulator(
    specs: Sequence[DeviceSpec | str],
    host: str = "127.0.0.1",
    port: int = 5020,
    *,
    units_per_port: int = 1,
    physics: PhysicsSettings | None = None,
    tick: float = 1.0,
    ready: Callable[[list[Served]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the devices ``specs`` ask for on ``host`` from ``port`` up until ``stop`` is set (or cancelled).

    ``ready`` is called once with what is served (kind and endpoint of each device) when every server listens.
    """
    devices = make_devices(specs, physics=physics)
    if not devices:
        raise ConfigError("no devices to simulate")
    async with serve_fleet(devices, host=host, port_base=port, units_per_port=units_per_port,
                           tick=tick) as served:
        if ready is not None:
            ready(served)
        await (stop or asyncio.Event()).wait()
