"""TcpEndpoint / UnitIO against a real pymodbus server and against a scripted misbehaving server."""

from __future__ import annotations

import asyncio
import struct

import pytest

from gateway.devices import TcpEndpoint, UnitIO
from gateway.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from tests.devices.conftest import BASE, ScriptedServer, SimServer, free_port, unit_values


# -- against pymodbus's server -------------------------------------------------------------------------------------
async def test_read_holding_returns_the_registers(sim_server: SimServer) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        assert await endpoint.read_holding(1, BASE + 10, 5) == unit_values(1)[10:15]
        assert await endpoint.read_holding(1, BASE, 125) == unit_values(1)[:125]


async def test_read_holding_bytes_returns_the_register_bytes(sim_server: SimServer) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        assert await endpoint.read_holding_bytes(1, BASE + 10, 5) == struct.pack(">5H", *unit_values(1)[10:15])
        assert await UnitIO(endpoint, 2).read_bytes(BASE, 125) == struct.pack(">125H", *unit_values(2)[:125])
        with pytest.raises(DeviceExceptionResponse) as caught:
            await endpoint.read_holding_bytes(1, 100, 5)
        assert caught.value.reason == "exception 2 (illegal data address) reading 100+5"


@pytest.mark.parametrize(("function_code", "reason"), [
    (16, "exception 2 (illegal data address) writing 100+2 (fc16)"),
    (6, "exception 2 (illegal data address) writing 100+1 (fc6)"),
])
async def test_write_exception_names_the_request(sim_server: SimServer, function_code: int, reason: str) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        with pytest.raises(DeviceExceptionResponse) as caught:
            await UnitIO(endpoint, 1, write_function_code=function_code).write(100, [1, 2])
        assert caught.value.reason == reason


async def test_unit_io_write_fc16_then_read_back(sim_server: SimServer) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        io = UnitIO(endpoint, 1)
        await io.write(BASE + 3, [0, 65535, 1234])
        assert await io.read(BASE + 2, 5) == [1002, 0, 65535, 1234, 1006]
    assert sim_server.function_codes == [16, 3]


async def test_unit_io_write_fc6_writes_one_register_at_a_time(sim_server: SimServer) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        io = UnitIO(endpoint, 2, write_function_code=6)
        await io.write(BASE + 7, [11, 12, 13])
        assert await io.read(BASE + 6, 5) == [2006, 11, 12, 13, 2010]
    assert sim_server.function_codes == [6, 6, 6, 3]


async def test_exception_reply_becomes_device_exception_response_and_keeps_connection(sim_server: SimServer) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        with pytest.raises(DeviceExceptionResponse) as caught:
            await endpoint.read_holding(1, 100, 5)
        assert caught.value.code == 2
        assert caught.value.reason == "exception 2 (illegal data address) reading 100+5"
        assert endpoint.connected
        assert await endpoint.read_holding(1, BASE, 2) == unit_values(1)[:2]
    assert sim_server.connects == 1


async def test_two_units_share_one_connection_concurrently(sim_server: SimServer) -> None:
    async with TcpEndpoint("127.0.0.1", sim_server.port) as endpoint:
        one, two = UnitIO(endpoint, 1), UnitIO(endpoint, 2)
        results = await asyncio.gather(*(io.read(BASE + k, 3) for k in range(4) for io in (one, two)))
    expected = [unit_values(unit)[k : k + 3] for k in range(4) for unit in (1, 2)]
    assert results == expected
    assert sim_server.connects == 1


# -- faults ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("behaviour", "error", "reason"),
    [
        ("silent", DeviceTimeout, "timeout after 0.2 s reading 40000+10"),
        ("close_mid", DeviceDisconnected, "connection closed by 127.0.0.1:"),
        ("bad_count", DeviceProtocolError, "malformed reply (byte count 18, 18 data bytes, expected 20) reading"),
        ("garbage_length", DeviceProtocolError, "malformed MBAP header"),
        ("wrong_unit", DeviceProtocolError, "reply from unit 2, expected 1, reading 40000+10"),
    ],
)
async def test_fault_raises_device_error_then_next_request_reconnects(
    behaviour: str, error: type[DeviceError], reason: str
) -> None:
    async with ScriptedServer([behaviour]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=0.2) as ep:
        with pytest.raises(error) as caught:
            await ep.read_holding(1, 40000, 10)
        assert reason in caught.value.reason
        assert not ep.connected
        assert await ep.read_holding(1, 40000, 10) == list(range(40000, 40010))
        assert server.connects == 2


async def test_reply_with_another_transaction_id_is_ignored() -> None:
    async with ScriptedServer(["stale_tid"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=0.5) as ep:
        assert await ep.read_holding(1, 100, 4) == [100, 101, 102, 103]
        assert await ep.read_holding(1, 200, 2) == [200, 201]
        assert server.connects == 1


async def test_reply_arriving_a_byte_at_a_time_is_reassembled() -> None:
    async with ScriptedServer(["dribble"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=2.0) as ep:
        assert await ep.read_holding(1, 100, 4) == [100, 101, 102, 103]
        assert await ep.read_holding_bytes(1, 300, 2) == struct.pack(">2H", 300, 301)
        assert server.connects == 1


async def test_late_reply_after_timeout_is_not_taken_for_the_next_one() -> None:
    async with ScriptedServer(["late"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=0.1) as ep:
        with pytest.raises(DeviceTimeout):
            await ep.read_holding(1, 100, 4)
        await asyncio.sleep(0.3)  # the late (0xeeee) reply arrives on the old connection, which is closed
        assert await ep.read_holding(1, 100, 4) == [100, 101, 102, 103]
        assert server.connects == 2


async def test_connection_refused_is_device_disconnected() -> None:
    port = free_port()
    async with TcpEndpoint("127.0.0.1", port) as endpoint:
        with pytest.raises(DeviceDisconnected) as caught:
            await endpoint.read_holding(1, 0, 1)
    assert caught.value.reason == f"connection refused by 127.0.0.1:{port}"


async def test_cancelled_request_propagates_cancellation_and_drops_the_connection() -> None:
    async with ScriptedServer(["silent"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=5.0) as ep:
        task = asyncio.create_task(ep.read_holding(1, 0, 1))
        await server.got_request.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not ep.connected
        assert await ep.read_holding(1, 7, 1) == [7]


async def test_outer_timeout_cancels_the_request_and_is_not_converted() -> None:
    async with ScriptedServer(["silent"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=5.0) as ep:
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(0.05):
                await ep.read_holding(1, 0, 1)
        assert not isinstance(caught.value, DeviceError)
        assert await ep.read_holding(1, 7, 1) == [7]


async def test_close_fails_the_request_in_flight() -> None:
    async with ScriptedServer(["silent"]) as server:
        endpoint = TcpEndpoint("127.0.0.1", server.port, timeout_s=5.0)
        task = asyncio.create_task(endpoint.read_holding(1, 0, 1))
        await server.got_request.wait()
        await endpoint.close()
        with pytest.raises(DeviceDisconnected):
            await task


async def test_each_request_gets_its_full_timeout_on_a_reused_connection() -> None:
    """The timer is armed once per connection and re-armed lazily: it must not cut a later request short."""
    async with ScriptedServer(["once"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=0.2) as ep:
        loop = asyncio.get_running_loop()
        assert await ep.read_holding(1, 5, 1) == [5]  # arms the timer for now + 0.2 s
        await asyncio.sleep(0.1)
        start = loop.time()
        with pytest.raises(DeviceTimeout):
            await ep.read_holding(1, 0, 1)  # the server is silent from now on
        assert 0.19 <= loop.time() - start < 0.35
        assert server.connects == 1


def test_constructor_does_no_io_and_needs_no_loop() -> None:
    endpoint = TcpEndpoint("127.0.0.1", free_port())
    assert not endpoint.connected
    assert UnitIO(endpoint, 1).unit == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ep: ep.read_holding(1, 0, 126), "count 126"),
        (lambda ep: ep.read_holding(1, 0, 0), "count 0"),
        (lambda ep: ep.read_holding(256, 0, 1), "unit id 256"),
        (lambda ep: ep.read_holding(1, 65535, 2), "65535+2"),
        (lambda ep: ep.write_registers(1, 0, [70000]), "0..65535"),
        (lambda ep: ep.write_registers(1, 0, [1] * 124), "count 124"),
        (lambda ep: ep.write_registers(1, 0, [1], function_code=5), "function_code"),
    ],
)
async def test_bad_arguments_are_value_errors_before_any_io(call: object, message: str) -> None:
    endpoint = TcpEndpoint("127.0.0.1", free_port())
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        await call(endpoint)  # type: ignore[operator]
    assert not endpoint.connected
