"""Modbus RTU over a pseudo-terminal link, several units on one bus, read with a plain pymodbus client."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException

from gateway.sim import SimulatedDevice, build_image, pty_link, serve_rtu
from gateway.sunspec import decode


async def test_rtu_bus_over_a_pty_link() -> None:
    devices = [
        SimulatedDevice(build_image("inverter", "RTU-1"), unit=1),
        SimulatedDevice(build_image("meter", "RTU-2"), unit=2),
    ]
    async with pty_link() as (sim_end, gateway_end), serve_rtu(devices, sim_end, baudrate=19200, tick=0):
        client = AsyncModbusSerialClient(gateway_end, baudrate=19200, timeout=0.5, retries=0)
        assert await client.connect()
        try:
            for dev, serial in ((devices[0], "RTU-1"), (devices[1], "RTU-2")):
                reply = await client.read_holding_registers(40000, count=70, device_id=dev.unit)
                assert not reply.isError(), reply
                assert reply.registers[:2] == [0x5375, 0x6E53]
                assert decode(1, reply.registers[2:70]).points["SN"] == serial
            span = next(s for s in devices[0].spans if s.id == 103)
            reply = await client.read_holding_registers(span.addr, count=span.length + 2, device_id=1)
            assert decode(103, reply.registers).points["W"] is not None
            # a write, answered on the bus
            addr = devices[0].address_of(123, "WMaxLim_Ena")
            assert not (await client.write_register(addr, 1, device_id=1)).isError()
            reply = await client.write_register(span.addr + 2, 1, device_id=1)  # 103 A: read-only
            assert reply.isError()
            assert reply.exception_code == 2
            # past the end marker: exception 2
            reply = await client.read_holding_registers(devices[1].image.end, count=1, device_id=2)
            assert reply.isError()
            assert reply.exception_code == 2
        finally:
            client.close()


async def test_absent_unit_is_silent_on_the_bus() -> None:
    devices = [SimulatedDevice(build_image("meter", "RTU-3"), unit=5)]
    async with pty_link() as (sim_end, gateway_end), serve_rtu(devices, sim_end, tick=0):
        client = AsyncModbusSerialClient(gateway_end, baudrate=19200, timeout=0.3, retries=0)
        assert await client.connect()
        try:
            with pytest.raises(ModbusIOException):  # no reply at all: the client times out
                await client.read_holding_registers(40000, count=2, device_id=6)
            reply = await client.read_holding_registers(40000, count=2, device_id=5)
            assert reply.registers == [0x5375, 0x6E53]
        finally:
            client.close()
