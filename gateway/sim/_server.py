"""Serving simulated devices over Modbus TCP and RTU with pymodbus's server (the ``SimDevice`` API).

Each server holds one or more units (an RS-485 bus, or a TCP gateway in front of one). A read steps a
device whose values are older than its ``min_step`` (0.2 s), so what a client reads is never staler than
that; a background task every ``tick`` seconds steps the devices no one has read for two ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.errors import DeviceDisconnected
from gateway.sim._device import SimulatedDevice


async def _tick(devices: Sequence[SimulatedDevice], tick: float) -> None:
    """Step every device every ``tick`` seconds, yielding to the server between slices of the fleet."""
    while True:
        await asyncio.sleep(tick)
        for i, dev in enumerate(devices):
            now = dev.clock()
            if now - dev.last_update >= 2 * tick:  # reads step polled devices; this keeps the rest moving
                dev.update(now)
            if i % 50 == 49:
                await asyncio.sleep(0)


async def _no_such_unit(*_: object) -> ExcCodes | None:
    raise NoSuchIdException("no simulated device has this unit id")


def _context(devices: Sequence[SimulatedDevice], *, everywhere: bool) -> list[SimDevice]:
    """The server's devices, plus a catch-all (id 0) so an absent unit behaves as on a real line.

    The catch-all raises pymodbus's ``NoSuchIdException``: a TCP server answers exception 0x0B (gateway
    target failed to respond), an RTU server stays silent (``ignore_missing_devices``). pymodbus keeps a
    list entry per address it covers, so it spans all 65536 addresses only when ``everywhere`` (an RTU bus,
    where an answer of any kind would be wrong); on TCP it spans the devices' own address range, and an absent
    unit asked outside it answers exception 2.
    """
    units = [d.unit for d in devices]
    if not units:
        raise ValueError("a server needs at least one device")
    if len(set(units)) != len(units):
        raise ValueError(f"unit ids repeat on one server: {sorted(units)}")
    first = 0 if everywhere else min(d.image.base for d in devices)
    end = 65536 if everywhere else max(d.image.end for d in devices)
    absent = SimDevice(
        0, simdata=[SimData(first, count=end - first, datatype=DataType.REGISTERS)], action=_no_such_unit
    )
    return [*(d.sim_device() for d in devices), absent]


@contextlib.asynccontextmanager
async def stepping(devices: Sequence[SimulatedDevice], tick: float) -> AsyncIterator[None]:
    """Run the background stepper over ``devices`` while the block runs (``tick <= 0``: none)."""
    ticker = asyncio.create_task(_tick(devices, tick), name="sim-tick") if tick > 0 else None
    try:
        yield
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


@contextlib.asynccontextmanager
async def _running(server: Any, devices: Sequence[SimulatedDevice], tick: float) -> AsyncIterator[None]:
    try:
        async with stepping(devices, tick):
            yield
    finally:
        await server.shutdown()


@contextlib.asynccontextmanager
async def serve_tcp(
    devices: Sequence[SimulatedDevice], host: str = "127.0.0.1", port: int = 0, *, tick: float = 1.0
) -> AsyncIterator[int]:
    """Serve ``devices`` (one unit id each) on ``host:port``; yields the bound port (``port=0``: a free one)."""
    server: Any = ModbusTcpServer(context=_context(devices, everywhere=False), address=(host, port))
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:  # pymodbus's way of saying the bind failed
        raise DeviceDisconnected(f"could not listen on {host}:{port}: {exc}") from exc
    listener = server.transport
    if not isinstance(listener, asyncio.Server) or not listener.sockets:
        await server.shutdown()
        raise DeviceDisconnected(f"could not listen on {host}:{port}")
    bound = int(listener.sockets[0].getsockname()[1])
    async with _running(server, devices, tick):
        yield bound


@contextlib.asynccontextmanager
async def serve_rtu(
    devices: Sequence[SimulatedDevice],
    serial_port_path: str,
    baudrate: int = 19200,
    *,
    parity: str = "N",
    stopbits: int = 1,
    tick: float = 1.0,
) -> AsyncIterator[None]:
    """Serve ``devices`` as units on one RTU bus at ``serial_port_path`` (a tty, e.g. a :func:`pty_link` end)."""
    server: Any = ModbusSerialServer(
        context=_context(devices, everywhere=True), framer=FramerType.RTU, port=serial_port_path, baudrate=baudrate,
        parity=parity, stopbits=stopbits, ignore_missing_devices=True,
    )
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise DeviceDisconnected(f"could not open {serial_port_path}: {exc}") from exc
    async with _running(server, devices, tick):
        yield
