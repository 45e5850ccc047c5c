"""Peers for the transport tests: a real pymodbus TCP server, a scripted misbehaving TCP server, an RTU responder on a
pseudo-terminal built on pymodbus's RTU framer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
import tty
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

BASE = 40000
SIZE = 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unit_values(unit: int) -> list[int]:
    """What the simulated unit holds at BASE..BASE+SIZE-1: distinct per unit."""
    return [unit * 1000 + i for i in range(SIZE)]


# -- a real pymodbus server ------------------------------------------------------------------------------------------
@dataclass
class SimServer:
    port: int
    function_codes: list[int] = field(default_factory=list)
    connects: int = 0


@pytest.fixture
async def sim_server() -> AsyncIterator[SimServer]:
    """pymodbus's own TCP server with units 1 and 2 (registers BASE..BASE+199 only: elsewhere is exception 2)."""
    info = SimServer(free_port())

    def trace_pdu(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            info.function_codes.append(pdu.function_code)
        return pdu

    def trace_connect(connected: bool) -> None:
        info.connects += connected

    devices = [
        SimDevice(id=unit, simdata=[SimData(BASE, values=unit_values(unit), datatype=DataType.REGISTERS)])
        for unit in (1, 2)
    ]
    server = ModbusTcpServer(
        devices, address=("127.0.0.1", info.port), trace_pdu=trace_pdu, trace_connect=trace_connect
    )
    await server.serve_forever(background=True)
    try:
        yield info
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


# -- a scripted TCP server that misbehaves -----------------------------------------------------------------------------
class ScriptedServer:
    """Modbus-TCP server whose n-th connection follows ``script[n]`` (then "healthy"); registers hold their address.

    Behaviours: healthy, silent (never answers), close_mid (half a reply, then close), bad_count (byte count and data
    one register short), garbage_length (MBAP length 0xFFFF), wrong_unit, stale_tid (a reply with the previous
    transaction id first, then the right one), late (answers after 0.3 s), once (answers the first request only),
    dribble (sends each reply a byte at a time).
    """

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.connects = 0
        self.requests = 0
        self.got_request = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        behaviour = self.script[self.connects] if self.connects < len(self.script) else "healthy"
        self.connects += 1
        task = asyncio.ensure_future(self._serve(behaviour, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                self.got_request.set()
                body = self._answer(pdu)
                frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                if behaviour == "silent" or (behaviour == "once" and self.requests > 1):
                    continue
                if behaviour == "close_mid":
                    writer.write(frame[: len(frame) // 2])
                    await writer.drain()
                    writer.close()
                    return
                if behaviour == "bad_count":
                    body = bytes((3, body[1] - 2)) + body[2:-2]
                    frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                elif behaviour == "garbage_length":
                    frame = struct.pack(">HHHB", tid, 0, 0xFFFF, unit) + body
                elif behaviour == "wrong_unit":
                    frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit + 1) + body
                elif behaviour == "stale_tid":
                    junk = bytes((3, body[1])) + b"\xee" * body[1]
                    writer.write(struct.pack(">HHHB", (tid - 1) & 0xFFFF, 0, len(junk) + 1, unit) + junk)
                elif behaviour == "dribble":
                    for i in range(len(frame)):
                        writer.write(frame[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(0.002)
                    continue
                elif behaviour == "late":
                    await asyncio.sleep(0.3)
                    body = bytes((3, body[1])) + b"\xee" * body[1]
                    frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                writer.write(frame)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(pdu: bytes) -> bytes:
        if pdu[0] == 3:
            address, count = struct.unpack_from(">HH", pdu, 1)
            return bytes((3, count * 2)) + struct.pack(f">{count}H", *((address + i) & 0xFFFF for i in range(count)))
        if pdu[0] in (6, 16):
            return pdu[:5]
        return bytes((pdu[0] | 0x80, 1))


# -- an RTU responder on a pseudo-terminal ---------------------------------------------------------------------------
class RtuResponder:
    """Answers RTU requests on the master side of a pty, decoding and encoding with pymodbus's RTU framer.

    Units 1 and 2 hold ``unit_values`` at BASE (elsewhere: exception 2) and accept writes; unit 3 never answers;
    unit 4 answers with a broken CRC. Replies go out ``reply_delay_s`` after the request, so overlapping requests
    (two masters talking at once) are seen: ``max_in_flight`` counts them. ``gaps`` holds, for each request, the
    silence since the previous reply.
    """

    def __init__(self, master: int, reply_delay_s: float = 0.005) -> None:
        self.master = master
        self.reply_delay_s = reply_delay_s
        self.framer = FramerRTU(DecodePDU(True))
        self.registers = {unit: unit_values(unit) for unit in (1, 2)}
        self.requests: list[ModbusPDU] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gaps: list[float] = []
        self._last_reply = 0.0
        self._buf = b""
        self._loop = asyncio.get_running_loop()

    def on_readable(self) -> None:
        try:
            self._buf += os.read(self.master, 1024)
        except BlockingIOError:
            return
        used, pdu = self.framer.handleFrame(self._buf, 0, 0)
        self._buf = self._buf[used:]
        if pdu is None:
            return
        now = time.monotonic()
        if self._last_reply:
            self.gaps.append(now - self._last_reply)
        self.requests.append(pdu)
        if pdu.dev_id == 3:
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._loop.call_later(self.reply_delay_s, self._reply, pdu)

    def _reply(self, request: ModbusPDU) -> None:
        self.in_flight -= 1
        frame = self.framer.buildFrame(self._response(request))
        if request.dev_id == 4:
            frame = frame[:-1] + bytes((frame[-1] ^ 0xFF,))
        os.write(self.master, frame)
        self._last_reply = time.monotonic()

    def _response(self, request: ModbusPDU) -> ModbusPDU:
        unit = request.dev_id
        regs = self.registers.get(unit, unit_values(unit))
        start = request.address - BASE
        count = request.count if request.count else len(request.registers)
        if start < 0 or start + count > SIZE:
            return ExceptionResponse(request.function_code, 2, device_id=unit)
        if isinstance(request, ReadHoldingRegistersRequest):
            return ReadHoldingRegistersResponse(registers=regs[start : start + count], dev_id=unit)
        if isinstance(request, WriteMultipleRegistersRequest):
            regs[start : start + count] = request.registers
            return WriteMultipleRegistersResponse(address=request.address, count=count, dev_id=unit)
        if isinstance(request, WriteSingleRegisterRequest):
            regs[start] = request.registers[0]
            return WriteSingleRegisterResponse(address=request.address, registers=request.registers, dev_id=unit)
        return ExceptionResponse(request.function_code, 1, device_id=unit)


@dataclass
class RtuBus:
    path: str
    responder: RtuResponder


@contextlib.contextmanager
def _pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture
async def rtu_bus() -> AsyncIterator[RtuBus]:
    """A pty: our RtuEndpoint opens the slave path, an RtuResponder answers on the master."""
    loop = asyncio.get_running_loop()
    with _pty() as (master, slave):
        tty.setraw(slave)  # the endpoint keeps it raw too; no echo, no newline mangling before it opens
        os.set_blocking(master, False)
        responder = RtuResponder(master)
        loop.add_reader(master, responder.on_readable)
        try:
            yield RtuBus(os.ttyname(slave), responder)
        finally:
            loop.remove_reader(master)
