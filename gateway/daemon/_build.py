"""What the daemon builds from a config, without I/O: Modbus endpoints, devices, pollers, the dispatch policy.

Also the one conversion between the fleet's view of a device (:class:`~gateway.devices.DeviceStatus`, monotonic
times) and the shared :class:`~gateway.types.DeviceState` (UNIX times) the twin and the uplinks read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import Config, DeviceConfig, SerialLink, TcpLink
from gateway.devices import (
    DeviceStatus,
    Fleet,
    ModbusEndpoint,
    Poller,
    Reading,
    RtuEndpoint,
    SunSpecDevice,
    TcpEndpoint,
    UnitIO,
)
from gateway.dispatch import DispatchPolicy
from gateway.sunspec import DEFAULT_BASES
from gateway.types import DeviceState, Measurement


@dataclass
class Gateway:
    """Everything built from one config: endpoints (one per physical link), devices, their pollers, and the
    dispatch policy (``None`` without a ``[dispatch]`` section)."""

    config: Config
    endpoints: dict[str, ModbusEndpoint] = field(default_factory=dict)
    devices: dict[str, SunSpecDevice] = field(default_factory=dict)
    fleet: Fleet[Reading] = field(default_factory=Fleet)
    policy: DispatchPolicy | None = None


def _endpoint(device: DeviceConfig) -> ModbusEndpoint:
    link = device.link
    if isinstance(link, TcpLink):
        return TcpEndpoint(link.host, link.port, timeout_s=device.timeout_s)
    assert isinstance(link, SerialLink)
    delay = device.profile.modbus.inter_frame_delay_ms
    return RtuEndpoint(link.port, baudrate=link.baudrate, parity=link.parity, stopbits=link.stopbits,
                       bytesize=link.bytesize, timeout_s=device.timeout_s,
                       inter_frame_delay_s=None if not delay else delay / 1000.0)


def _bases(device: DeviceConfig) -> tuple[int, ...]:
    return DEFAULT_BASES if device.base == "auto" else (int(device.base),)


def build(config: Config) -> Gateway:
    """Construct (no I/O) the endpoints, devices and pollers the config describes, and the dispatch policy."""
    gw = Gateway(config)
    for dev in config.devices:
        endpoint = gw.endpoints.get(dev.endpoint)
        if endpoint is None:
            endpoint = gw.endpoints[dev.endpoint] = _endpoint(dev)
        io = UnitIO(endpoint, dev.unit, write_function_code=dev.profile.modbus.write_function_code)
        device = SunSpecDevice(dev.id, io, role=dev.role or "inverter", models=set(dev.models),
                               bases=_bases(dev), max_read=dev.profile.modbus.max_read_registers,
                               known_unreadable=[(q.model, q.offset, q.length)
                                                 for q in dev.profile.quirks.unreadable])
        gw.devices[dev.id] = device
        gw.fleet.add(Poller(dev.id, dev.poll_interval_s, device.read, timeout_s=max(5.0, 4 * dev.timeout_s)))
    if config.dispatch is not None:
        gw.policy = DispatchPolicy.from_config(config.dispatch)
    return gw


def device_states(snapshot: Mapping[str, DeviceStatus[Reading]], *, now: float | None = None,
                  monotonic_now: float | None = None) -> dict[str, DeviceState]:
    """The fleet's snapshot as shared :class:`DeviceState` values (``last_success`` in UNIX seconds)."""
    wall = time.time() if now is None else now
    mono = time.monotonic() if monotonic_now is None else monotonic_now
    out = {}
    for device_id, status in snapshot.items():
        last = None if status.last_success is None else wall - (mono - status.last_success)
        measurement = None if status.latest is None else status.latest.measurement
        out[device_id] = DeviceState(device_id, measurement, status.stale, status.stale_reason, last)
    return out


def fresh_measurements(snapshot: Mapping[str, DeviceStatus[Reading]]) -> dict[str, Measurement]:
    """The latest measurement of every device that is not stale."""
    return {d: s.latest.measurement for d, s in snapshot.items() if not s.stale and s.latest is not None}
