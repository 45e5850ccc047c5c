"""The daemon: builds the gateway from config and runs it under one TaskGroup until told to stop.

Resources (Modbus endpoints) are async context managers entered on an ``AsyncExitStack``; every long-lived
task lives in one ``asyncio.TaskGroup``. The control loop completes a cycle every second, and only then feeds
systemd's watchdog. SIGTERM/SIGINT start an ordered shutdown bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import structlog

from gateway.config import Config, DeviceConfig, SerialLink, TcpLink
from gateway.devices import Fleet, ModbusEndpoint, Poller, Reading, RtuEndpoint, SunSpecDevice, TcpEndpoint, UnitIO
from gateway.sdnotify import Notifier
from gateway.sunspec import DEFAULT_BASES

log = structlog.get_logger("gateway.daemon")

CYCLE_S = 1.0


@dataclass
class Gateway:
    """Everything built from one config: endpoints (one per physical link), devices, and their pollers."""

    config: Config
    endpoints: dict[str, ModbusEndpoint] = field(default_factory=dict)
    devices: dict[str, SunSpecDevice] = field(default_factory=dict)
    fleet: Fleet[Reading] = field(default_factory=Fleet)


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
    """Construct (no I/O) the endpoints, devices and pollers the config describes."""
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
    return gw


async def _control_loop(gw: Gateway, notifier: Notifier) -> None:
    """Once a second: take the fleet's state, say how it is, feed the watchdog (only after a full cycle)."""
    while True:
        snapshot = gw.fleet.snapshot()
        stale = sorted(d for d, s in snapshot.items() if s.stale)
        notifier.status(f"{len(snapshot)} devices, {len(stale)} stale")
        notifier.watchdog()
        await asyncio.sleep(CYCLE_S)


async def run(config: Config, *, duration_s: float | None = None,
              on_reading: Callable[[Reading], object] | None = None, notifier: Notifier | None = None,
              gateway: Gateway | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT, or for ``duration_s`` seconds when given.

    ``gateway`` is what :func:`build` made of ``config``, when the caller needs it first (the demo does).
    """
    notifier = notifier or Notifier()
    gw = gateway or build(config)
    structlog.contextvars.bind_contextvars(site_id=config.site.id, gateway_id=config.site.gateway_id)
    if on_reading is not None:
        for poller in gw.fleet:
            poller.add_listener(on_reading)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        async with AsyncExitStack() as stack:
            for endpoint in gw.endpoints.values():
                await stack.enter_async_context(endpoint)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(gw.fleet.run(), name="fleet"),
                         tg.create_task(_control_loop(gw, notifier), name="control")]
                log.info("started", devices=len(gw.devices), endpoints=len(gw.endpoints))
                notifier.ready(f"{len(gw.devices)} devices")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=duration_s)
                notifier.stopping()
                log.info("stopping", after_s=round(time.monotonic() - started, 1))
                for task in tasks:
                    task.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped")
