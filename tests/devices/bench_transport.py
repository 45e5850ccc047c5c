"""Client CPU per Modbus-TCP request: our TcpEndpoint beside a bare asyncio client and pymodbus's AsyncModbusTcpClient.

Run: ``.venv/bin/python -m tests.devices.bench_transport [--requests 5000] [--rounds 3] [--fleet 1000 --seconds 10]``.

A minimal raw asyncio Modbus-TCP server runs in a separate process, so only client CPU is counted
(``time.process_time`` around N sequential 125-register reads, after a warm-up). The fleet mode polls N devices (one
connection each) at 1 Hz with 3 reads of 125 registers per poll through ``Fleet``/``Poller``/``UnitIO`` and reports the
share of one core the whole client process used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

from pymodbus.client import AsyncModbusTcpClient

from gateway.devices import Fleet, Poller, TcpEndpoint, UnitIO

_REGS = struct.pack(">125H", *range(125))
ADDRESS, COUNT = 40000, 125


class _ServerProtocol(asyncio.Protocol):
    """Answers FC3 with up to 125 registers and FC16 with the echo; nothing else."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while len(self.buf) >= 8:
            tid, _pid, length, unit = struct.unpack_from(">HHHB", self.buf)
            if len(self.buf) < 6 + length:
                return
            pdu, self.buf = self.buf[7 : 6 + length], self.buf[6 + length :]
            if pdu[0] == 3:
                count = struct.unpack_from(">H", pdu, 3)[0]
                body = bytes((3, count * 2)) + _REGS[: count * 2]
            elif pdu[0] == 16:
                body = pdu[:5]
            else:
                body = bytes((pdu[0] | 0x80, 1))
            self.transport.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_ServerProtocol, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def _server_process() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.devices.bench_transport", "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.terminate()
        proc.wait()


class _BareClient(asyncio.Protocol):
    """The anchor: the least a Modbus-TCP client can do (struct MBAP, one future per request, tid check)."""

    def __init__(self) -> None:
        self.buf = b""
        self.tid = 0
        self.fut: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 6:
            end = 6 + struct.unpack_from(">H", self.buf, 4)[0]
            if len(self.buf) >= end and self.fut is not None:
                frame, self.buf = self.buf[:end], self.buf[end:]
                if not self.fut.done():  # a reply to a cancelled request: dropped (set_result would raise)
                    self.fut.set_result(frame)

    async def read(self, address: int, count: int) -> list[int]:
        assert self.transport is not None
        self.tid = (self.tid + 1) & 0xFFFF
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(struct.pack(">HHHBBHH", self.tid, 0, 6, 1, 3, address, count))
        frame = await self.fut
        assert struct.unpack_from(">H", frame)[0] == self.tid
        return list(struct.unpack_from(f">{count}H", frame, 9))


async def _bench_clients(port: int, n: int, rounds: int) -> dict[str, float]:
    """Median over rounds of CPU us per request; inside a round the clients take turns in blocks of 250 requests so
    that machine noise (frequency changes, the server process's scheduling) falls on all of them alike."""
    loop = asyncio.get_running_loop()
    _, bare = await loop.create_connection(_BareClient, "127.0.0.1", port)
    pym = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay=0, retries=0, timeout=2)
    await pym.connect()
    ours = TcpEndpoint("127.0.0.1", port, timeout_s=2.0)
    io = UnitIO(ours, 1)

    async def pym_read() -> list[int]:
        reply = await pym.read_holding_registers(ADDRESS, count=COUNT, device_id=1)
        assert not reply.isError()
        return list(reply.registers)

    clients: dict[str, Callable[[], Awaitable[list[int]]]] = {
        "bare": lambda: bare.read(ADDRESS, COUNT),
        "pymodbus": pym_read,
        "gridedge": lambda: io.read(ADDRESS, COUNT),
    }
    for read in clients.values():
        assert await read() == list(range(COUNT))
        for _ in range(200):
            await read()
    block = 250
    results: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        spent = dict.fromkeys(clients, 0.0)
        for _ in range(max(1, n // block)):
            for name, read in clients.items():
                start = time.process_time()
                for _ in range(block):
                    await read()
                spent[name] += time.process_time() - start
        for name, seconds in spent.items():
            results[name].append(seconds / (max(1, n // block) * block) * 1e6)
    pym.close()
    await ours.close()
    assert bare.transport is not None
    bare.transport.close()
    return {name: statistics.median(values) for name, values in results.items()}


async def _bench_fleet(port: int, devices: int, seconds: float) -> float:
    endpoints = [TcpEndpoint("127.0.0.1", port, timeout_s=2.0) for _ in range(devices)]

    def reader(io: UnitIO) -> Callable[[], Awaitable[tuple[list[int], ...]]]:
        async def read() -> tuple[list[int], ...]:
            return (await io.read(40000, 125), await io.read(40125, 125), await io.read(40250, 60))

        return read

    fleet: Fleet[tuple[list[int], ...]] = Fleet(
        Poller(f"dev{i}", 1.0, reader(UnitIO(ep, 1)), timeout_s=5.0) for i, ep in enumerate(endpoints)
    )
    task = asyncio.create_task(fleet.run())
    await asyncio.sleep(3.0)  # connect and settle
    polls_before = sum(p.last_success is not None for p in fleet)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stale = sum(status.stale for status in fleet.snapshot().values())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for ep in endpoints:
        await ep.close()
    print(f"fleet: {devices} devices x 3 reads at 1 Hz: {cpu / wall:.3f} core ({stale} stale, {polls_before} up)")
    return cpu / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=0, help="also poll this many devices at 1 Hz")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    with _server_process() as port:
        cpu = asyncio.run(_bench_clients(port, args.requests, args.rounds))
        bare = cpu["bare"]
        print(f"client CPU per read of {COUNT} registers, median of {args.rounds} x {args.requests}:")
        for name, value in cpu.items():
            print(f"  {name:9s} {value:7.1f} us  ({value / bare:.2f}x bare)")
        if args.fleet:
            asyncio.run(_bench_fleet(port, args.fleet, args.seconds))


if __name__ == "__main__":
    main()
