"""RtuEndpoint over a real pseudo-terminal (an RTU responder on the master side), and against pymodbus's own serial
server (RTU framing) through pyserial's ``socket://`` URL."""

from __future__ import annotations

import asyncio

import pytest
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.devices import RtuEndpoint, UnitIO
from gateway.errors import DeviceDisconnected, DeviceExceptionResponse, DeviceProtocolError, DeviceTimeout
from tests.devices.conftest import BASE, RtuBus, free_port, unit_values

GAP = 0.02


async def test_two_units_on_one_bus_read_concurrently_are_serialised(rtu_bus: RtuBus) -> None:
    async with RtuEndpoint(rtu_bus.path, baudrate=115200, inter_frame_delay_s=GAP) as endpoint:
        one, two = UnitIO(endpoint, 1), UnitIO(endpoint, 2)
        results = await asyncio.gather(*(io.read(BASE + k, 10) for k in range(3) for io in (one, two)))
    assert results == [unit_values(unit)[k : k + 10] for k in range(3) for unit in (1, 2)]
    assert [r.dev_id for r in rtu_bus.responder.requests] == [1, 2, 1, 2, 1, 2]
    assert rtu_bus.responder.max_in_flight == 1
    assert len(rtu_bus.responder.gaps) == 5
    assert min(rtu_bus.responder.gaps) >= GAP - 0.001  # the inter-frame delay is kept between frames


async def test_full_size_read_and_writes(rtu_bus: RtuBus) -> None:
    async with RtuEndpoint(rtu_bus.path, baudrate=115200) as endpoint:
        assert await endpoint.read_holding(1, BASE, 125) == unit_values(1)[:125]
        await endpoint.write_registers(2, BASE + 1, [7, 8, 9])
        await endpoint.write_registers(2, BASE + 5, [5, 6], function_code=6)
        assert await endpoint.read_holding(2, BASE, 8) == [2000, 7, 8, 9, 2004, 5, 6, 2007]
    assert [r.function_code for r in rtu_bus.responder.requests] == [3, 16, 6, 6, 3]


async def test_exception_reply(rtu_bus: RtuBus) -> None:
    async with RtuEndpoint(rtu_bus.path, baudrate=115200) as endpoint:
        with pytest.raises(DeviceExceptionResponse) as caught:
            await endpoint.read_holding(1, 100, 4)
        assert caught.value.code == 2
        assert caught.value.reason == "exception 2 (illegal data address) reading 100+4"
        assert await endpoint.read_holding(1, BASE, 1) == [1000]


@pytest.mark.parametrize(
    ("unit", "error", "reason"),
    [(3, DeviceTimeout, "timeout after 0.1"), (4, DeviceProtocolError, "CRC error in RTU reply reading 40000+2")],
)
async def test_fault_then_the_bus_recovers(rtu_bus: RtuBus, unit: int, error: type[Exception], reason: str) -> None:
    async with RtuEndpoint(rtu_bus.path, baudrate=115200, timeout_s=0.1) as endpoint:
        with pytest.raises(error) as caught:
            await endpoint.read_holding(unit, BASE, 2)
        assert reason in str(caught.value)
        assert not endpoint.connected  # the port was closed; it reopens for the next request
        assert await endpoint.read_holding(1, BASE, 2) == [1000, 1001]


async def test_missing_port_is_device_disconnected() -> None:
    async with RtuEndpoint("/dev/gridedge-no-such-port", baudrate=9600) as endpoint:
        with pytest.raises(DeviceDisconnected, match="cannot connect to /dev/gridedge-no-such-port"):
            await endpoint.read_holding(1, 0, 1)


def test_rtu_settings() -> None:
    endpoint = RtuEndpoint("/dev/ttyX", baudrate=9600, parity="E")
    assert endpoint.char_time_s == pytest.approx(11 / 9600)
    assert endpoint.inter_frame_delay_s == pytest.approx(3.5 * 11 / 9600)  # the spec's 3.5 characters
    assert RtuEndpoint("/dev/ttyX", baudrate=115200).inter_frame_delay_s == 0.00175
    assert RtuEndpoint("/dev/ttyX", inter_frame_delay_s=0.05).inter_frame_delay_s == 0.05
    with pytest.raises(ValueError, match="unit id 0"):
        UnitIO(endpoint, 0)  # broadcast: no reply ever comes
    with pytest.raises(ValueError, match="parity"):
        RtuEndpoint("/dev/ttyX", parity="X")


async def test_against_pymodbus_serial_server_rtu_framing() -> None:
    port = free_port()
    device = SimDevice(id=5, simdata=[SimData(BASE, values=unit_values(5), datatype=DataType.REGISTERS)])
    server = ModbusSerialServer(device, port=f"socket://127.0.0.1:{port}")
    await server.serve_forever(background=True)
    try:
        async with RtuEndpoint(f"socket://127.0.0.1:{port}", baudrate=115200) as endpoint:
            io = UnitIO(endpoint, 5)
            assert await io.read(BASE, 125) == unit_values(5)[:125]
            await io.write(BASE + 2, [1, 2])
            assert await io.read(BASE, 5) == [5000, 5001, 1, 2, 5004]
            with pytest.raises(DeviceExceptionResponse) as caught:
                await io.read(0, 1)
            assert caught.value.code == 2
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
