"""Every shared dump served over Modbus TCP reads back register for register, unreadable ones as exception 2."""

from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient

from gateway.sim import SimulatedDevice, image_from_dump, serve_tcp

from ._helpers import dump_paths


def _chunks(start: int, end: int, unreadable: frozenset[int]) -> list[tuple[int, int]]:
    """Readable runs of at most 125 registers between ``start`` and ``end``."""
    runs: list[tuple[int, int]] = []
    a = start
    while a < end:
        if a in unreadable:
            a += 1
            continue
        b = a
        while b < end and b not in unreadable and b - a < 125:
            b += 1
        runs.append((a, b - a))
        a = b
    return runs


async def test_dumps_read_back_register_for_register() -> None:
    paths = dump_paths()
    # all dumps on one server, one unit id each: an RS-485 bus behind a TCP gateway
    devices = [SimulatedDevice(image_from_dump(p), unit=i, animate=False) for i, p in enumerate(paths, start=1)]
    async with serve_tcp(devices, tick=0) as port:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, timeout=5)
        assert await client.connect()
        try:
            for dev in devices:
                img = dev.image
                expected = list(img.regs)
                for addr, count in _chunks(img.base, img.end, img.unreadable):
                    reply = await client.read_holding_registers(addr, count=count, device_id=dev.unit)
                    assert not reply.isError(), (dev.unit, addr, reply)
                    assert reply.registers == expected[addr - img.base : addr - img.base + count]
                for addr in sorted(img.unreadable):
                    reply = await client.read_holding_registers(addr, count=1, device_id=dev.unit)
                    assert reply.isError()
                    assert reply.exception_code == 2
                # past the end marker, and before the base
                for addr in (img.end, img.end + 10, img.base - 1):
                    reply = await client.read_holding_registers(addr, count=1, device_id=dev.unit)
                    assert reply.isError()
                    assert reply.exception_code == 2
                # a read that spans an unreadable register fails as a whole
                if img.unreadable:
                    bad = min(img.unreadable)
                    reply = await client.read_holding_registers(bad - 1, count=3, device_id=dev.unit)
                    assert reply.isError()
                    assert reply.exception_code == 2
            # a unit id no device has: exception 0x0B (gateway target failed to respond)
            reply = await client.read_holding_registers(40000, count=1, device_id=200)
            assert reply.isError()
            assert reply.exception_code == 0x0B
        finally:
            client.close()


async def test_dump_writes_follow_the_model_definitions() -> None:
    path = next(p for p in dump_paths() if p.stem == "EmulatedDER")
    dev = SimulatedDevice(image_from_dump(path), animate=False)
    async with serve_tcp([dev], tick=0) as port:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
        await client.connect()
        try:
            addr = dev.address_of(704, "WMaxLimPct")
            assert not (await client.write_register(addr, 555, device_id=1)).isError()
            assert (await client.read_holding_registers(addr, count=1, device_id=1)).registers == [555]
            reply = await client.write_register(dev.address_of(701, "W"), 1, device_id=1)
            assert reply.isError()
            assert reply.exception_code == 2
            reply = await client.write_register(40000, 1, device_id=1)  # the SunS marker
            assert reply.isError()
            assert reply.exception_code == 2
            reply = await client.write_register(dev.address_of(704, "WMaxLimPctEna"), 7, device_id=1)
            assert reply.isError()
            assert reply.exception_code == 3
            reply = await client.read_coils(40000, count=1, device_id=1)  # SunSpec devices have no coils
            assert reply.isError()
            assert reply.exception_code == 1
        finally:
            client.close()
