"""Modbus transport adapter: the one place in gridedge that talks Modbus on the wire (house rule 6).

It owns one connection and one :class:`asyncio.Lock` per physical endpoint (a TCP ``host:port`` or a serial port),
shared by every unit id on it (house rule 7); request framing (MBAP for TCP, CRC-checked RTU for serial); reply
matching (transaction id, unit id, function code, exact length); per-request timeouts; the RTU inter-frame delay; and
the translation of every failure into a :class:`~gateway.errors.DeviceError` subclass.

Why not ``pymodbus.client``: measured on this machine, ``AsyncModbusTcpClient`` spends about twice the client CPU
per request of a bare asyncio Modbus-TCP client (logging calls, ``wait_for``, per-register PDU decoding), it owns a
background reconnect and a retry loop (policy belongs to our poller), and its transaction manager turns
``CancelledError`` into an I/O error. So the TCP path is a lean :class:`asyncio.BufferedProtocol` with ``struct``
framing; the RTU path uses pymodbus's serial transport (pyserial under asyncio) and its Modbus CRC
(:class:`pymodbus.framer.FramerRTU`), framed the same lean way. Nothing here retries: a failed request raises, and the
connection is closed so the next request reconnects.
"""

from __future__ import annotations

import abc
import asyncio
import struct
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import ClassVar, Final, Self

from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.transport.serialtransport import create_serial_connection

from gateway.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)

__all__ = ["MAX_READ_COUNT", "MAX_WRITE_COUNT", "ModbusEndpoint", "RtuEndpoint", "TcpEndpoint", "UnitIO"]

MAX_READ_COUNT: Final = 125  # Modbus spec: FC3 reads at most 125 registers
MAX_WRITE_COUNT: Final = 123  # Modbus spec: FC16 writes at most 123 registers

_EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_MBAP: Final = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit + PDU), unit id
_READ_PDU: Final = struct.Struct(">BHH")  # function code, address, count (also FC6: address, value)
_FC16_HEAD: Final = struct.Struct(">BHHB")  # function code, address, count, byte count
_RECV_BUFFER: Final = 2048  # > any Modbus TCP frame (260 bytes) plus what may be left of the previous one
_READ_HEAD: Final = tuple(bytes((3, 2 * n)) for n in range(MAX_READ_COUNT + 1))  # FC3 reply: code, byte count
_REGS: Final = tuple(struct.Struct(f">{n}H") for n in range(MAX_READ_COUNT + 1))

_crc16: Callable[[bytes], int] = FramerRTU.compute_CRC  # the Modbus CRC, high byte first as sent on the wire


def _describe(pdu: bytes) -> str:
    """What a request does, for messages ("reading 40000+125"): formatted from its PDU only when one is needed."""
    if len(pdu) < 5:
        return ""
    fc, address, count = _READ_PDU.unpack_from(pdu)
    if fc == 3:
        return f"reading {address}+{count}"
    if fc == 16:
        return f"writing {address}+{count} (fc16)"
    if fc == 6:
        return f"writing {address}+1 (fc6)"
    return f"function code {fc}"


def _secs(value: float) -> str:
    text = f"{value:.3g}"
    return text if "." in text or "e" in text else text + ".0"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _Link(asyncio.Protocol):
    """One open connection: sends one request at a time, hands back the matching reply PDU or fails the waiter.

    The endpoint's lock guarantees at most one request in flight. A reply that does not match (wrong transaction id)
    is dropped; a timeout or a broken stream fails the waiter, and the endpoint then discards the whole link so a late
    reply can never be taken for the next request's.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str) -> None:
        self._loop = loop
        self._label = label
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiter: asyncio.Future[bytes] | None = None
        self._unit = 0
        self._pdu = b""  # the request in flight (or the last one): messages describe it with _describe
        self._timeout_s = 0.0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.made: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.closed = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self.made.done():
            self.made.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            reason = f"connection closed by {self._label}"
        else:
            reason = f"connection to {self._label} lost ({_os_reason(exc)})"
        self._shut(DeviceDisconnected(f"{reason} {self._what}" if self._waiter is not None else reason))
        if not self.lost.done():
            self.lost.set_result(None)

    # -- used by the endpoint --------------------------------------------------------------------------------------
    @property
    def _what(self) -> str:
        return _describe(self._pdu)

    async def request(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send ``pdu`` to ``unit`` and return the reply PDU (function code first); raise a DeviceError on failure."""
        loop = self._loop
        waiter: asyncio.Future[bytes] = loop.create_future()
        self._waiter = waiter
        self._unit = unit
        self._pdu = pdu
        self._timeout_s = timeout_s
        self._deadline = deadline = loop.time() + timeout_s
        # One timer per link, re-armed lazily: a timer per request (call_later + cancel) costs more than the rest
        # of the request's Python code. It only has to fire no later than the current deadline.
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
        try:
            self._send(unit, pdu)
            return await waiter
        finally:
            self._waiter = None

    def close(self, reason: str = "connection closed") -> None:
        """Drop the connection now; a request in flight fails with DeviceDisconnected."""
        transport = self._transport
        self._shut(DeviceDisconnected(f"{reason} {self._what}" if self._waiter is not None else reason))
        if transport is not None:
            self._close_transport(transport)

    # -- internals -------------------------------------------------------------------------------------------------
    def _send(self, unit: int, pdu: bytes) -> None:
        raise NotImplementedError

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # idle: the next request arms a new timer
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)  # armed for an earlier request
        else:
            waiter.set_exception(DeviceTimeout(f"timeout after {_secs(self._timeout_s)} s {self._what}"))

    def _deliver(self, unit: int, pdu: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody is waiting (the request already timed out): drop it
        if unit != self._unit:
            self._fail(DeviceProtocolError(f"reply from unit {unit}, expected {self._unit}, {self._what}"))
        else:
            waiter.set_result(pdu)

    def _fail(self, exc: DeviceError) -> None:
        """The byte stream cannot be trusted any more: fail the request and close."""
        transport = self._transport
        self._shut(exc)
        if transport is not None:
            self._close_transport(transport)

    def _close_transport(self, transport: asyncio.Transport) -> None:
        transport.close()  # asyncio calls connection_lost, which resolves ``lost``

    def _shut(self, exc: DeviceError) -> None:
        self.closed = True
        self._transport = None
        self._buf = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class _TcpLink(_Link, asyncio.BufferedProtocol):
    """Modbus TCP: MBAP header, transaction ids matched.

    A buffered protocol: the socket is read into one buffer per link, not into the fresh 256 KiB ``bytes`` that
    asyncio's ``data_received`` path allocates (then shrinks) per read; measured, about 1.5 us less client CPU per
    request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str) -> None:
        super().__init__(loop, label)
        self._tid = 0
        self._rbuf = bytearray(_RECV_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._have = 0  # bytes received and not yet consumed, at the start of _rbuf

    def _send(self, unit: int, pdu: bytes) -> None:
        transport = self._transport
        if transport is None:
            raise DeviceDisconnected(f"connection to {self._label} closed {self._what}")
        self._tid = tid = (self._tid + 1) & 0xFFFF
        transport.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)

    def _shut(self, exc: DeviceError) -> None:
        self._have = 0
        super()._shut(exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rview[self._have :]

    def buffer_updated(self, nbytes: int) -> None:
        have = self._have + nbytes
        buf = self._rbuf
        pos = 0
        while have - pos >= 8:  # 7-byte MBAP header + function code
            tid, pid, length, unit = _MBAP.unpack_from(buf, pos)
            if pid or not 2 <= length <= 254:
                self._fail(DeviceProtocolError(f"malformed MBAP header {buf[pos : pos + 7].hex()} {self._what}"))
                return
            end = pos + length + 6
            if have < end:
                break
            if tid == self._tid:
                self._deliver(unit, bytes(self._rview[pos + 7 : end]))
            if self.closed:
                return
            pos = end
        if pos:
            buf[: have - pos] = buf[pos:have]
        self._have = have - pos


class _RtuLink(_Link):
    """Modbus RTU: unit id + PDU + CRC; the reply length follows from its function code and byte count."""

    def _close_transport(self, transport: asyncio.Transport) -> None:
        transport.close()  # pymodbus's SerialTransport closes the port at once and calls no connection_lost
        if not self.lost.done():
            self.lost.set_result(None)

    def _send(self, unit: int, pdu: bytes) -> None:
        transport = self._transport
        if transport is None:
            raise DeviceDisconnected(f"{self._label} closed {self._what}")
        self._buf = b""
        frame = bytes((unit,)) + pdu
        transport.write(frame + _crc16(frame).to_bytes(2, "big"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._buf = b""  # bus noise or a reply nobody waits for
            return
        buf = self._buf + data
        if len(buf) < 5:  # the shortest reply (an exception) is 5 bytes
            self._buf = buf
            return
        fc = buf[1]
        if fc & 0x80:
            need = 5
        elif fc in (3, 4):
            need = buf[2] + 5
        elif fc in (6, 16):
            need = 8
        else:
            self._fail(DeviceProtocolError(f"unexpected function code {fc} in RTU reply {self._what}"))
            return
        if len(buf) < need:
            self._buf = buf
            return
        self._buf = b""
        frame = buf[:need]
        if _crc16(frame[:-2]) != int.from_bytes(frame[-2:], "big"):
            self._fail(DeviceProtocolError(f"CRC error in RTU reply {self._what}"))
            return
        if len(buf) > need:
            self._fail(DeviceProtocolError(f"{len(buf) - need} stray bytes after RTU reply {self._what}"))
            return
        self._deliver(frame[0], frame[1:-2])


class ModbusEndpoint(abc.ABC):
    """One physical Modbus endpoint: one lazily opened connection and one lock, shared by every unit id on it.

    Use as an async context manager (closing on exit); the constructor does no I/O. Every request either returns or
    raises a :class:`~gateway.errors.DeviceError` subclass: :class:`~gateway.errors.DeviceTimeout`,
    :class:`~gateway.errors.DeviceDisconnected`, :class:`~gateway.errors.DeviceExceptionResponse` (the connection is
    kept) or :class:`~gateway.errors.DeviceProtocolError`. After any failure but an exception response, and after a
    request is cancelled, the connection is closed; the next request reconnects. Nothing is retried here.
    """

    #: The unit ids this kind of endpoint can address.
    unit_ids: ClassVar[range] = range(256)

    def __init__(self, *, timeout_s: float, connect_timeout_s: float | None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self._lock = asyncio.Lock()
        self._link: _Link | None = None
        self._frame_gap_s = 0.0
        self._quiet_until = 0.0

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """Where this endpoint is, for messages (``host:port`` or the serial port)."""

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (it opens on the next request otherwise)."""
        return self._link is not None and not self._link.closed

    @abc.abstractmethod
    async def _open(self) -> _Link:
        """Open a new connection; raise OSError (or a pymodbus error) on failure."""

    def _timeout_for(self, request_len: int, reply_len: int) -> float:
        _ = request_len, reply_len
        return self.timeout_s

    # -- public API ------------------------------------------------------------------------------------------------
    async def read_holding(self, unit: int, address: int, count: int) -> list[int]:
        """Read ``count`` (1..125) holding registers from ``address`` of ``unit`` (function code 3)."""
        self._check(unit, address, count, MAX_READ_COUNT)
        reply = await self._transact(unit, _READ_PDU.pack(3, address, count), _READ_HEAD[count], count * 2 + 2)
        return list(_REGS[count].unpack_from(reply, 2))

    async def read_holding_bytes(self, unit: int, address: int, count: int) -> bytes:
        """As :meth:`read_holding`, the registers as the reply carries them: ``2 * count`` bytes, big-endian."""
        self._check(unit, address, count, MAX_READ_COUNT)
        reply = await self._transact(unit, _READ_PDU.pack(3, address, count), _READ_HEAD[count], count * 2 + 2)
        return reply[2:]

    async def write_registers(self, unit: int, address: int, values: Sequence[int], function_code: int = 16) -> None:
        """Write ``values`` from ``address`` of ``unit``: function code 16 (write multiple, 1..123 registers) or 6
        (write single; several values are written one register at a time, in order, stopping at the first failure)."""
        count = len(values)
        if not all(0 <= value <= 0xFFFF for value in values):
            raise ValueError(f"register values must be 0..65535, got {list(values)}")
        if function_code == 16:
            self._check(unit, address, count, MAX_WRITE_COUNT)
            pdu = _FC16_HEAD.pack(16, address, count, count * 2) + _REGS[count].pack(*values)
            await self._transact(unit, pdu, pdu[:5], 5)
        elif function_code == 6:
            self._check(unit, address, count, 0x10000)
            for offset, value in enumerate(values):
                pdu = _READ_PDU.pack(6, address + offset, value)
                await self._transact(unit, pdu, pdu, 5)
        else:
            raise ValueError(f"function_code must be 6 or 16, got {function_code}")

    async def close(self) -> None:
        """Close the connection (a request in flight fails with DeviceDisconnected). The endpoint stays usable."""
        link, self._link = self._link, None
        if link is not None:
            link.close(f"{self.label} closed by us")
            if not link.lost.done():
                await asyncio.wait((link.lost,), timeout=1.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------------------------------------
    def _check(self, unit: int, address: int, count: int, max_count: int) -> None:
        if unit not in self.unit_ids:
            raise ValueError(f"unit id {unit} out of range for {self.label}")
        if not 1 <= count <= max_count:
            raise ValueError(f"register count {count} out of range 1..{max_count}")
        if not 0 <= address <= 0x10000 - count:
            raise ValueError(f"register range {address}+{count} out of 0..65535")

    async def _transact(self, unit: int, pdu: bytes, expect_head: bytes, expect_len: int) -> bytes:
        """One request/reply under the endpoint lock; returns the checked reply PDU."""
        async with self._lock:
            link = self._link
            if link is None or link.closed:
                link = self._link = await self._connect()
            if self._frame_gap_s:
                await self._wait_quiet()
            try:
                reply = await link.request(unit, pdu, self._timeout_for(len(pdu), expect_len))
            except BaseException:
                self._discard(link)  # timeout, loss, garbage or cancellation: a late reply must find no one
                raise
            finally:
                if self._frame_gap_s:
                    self._quiet_until = asyncio.get_running_loop().time() + self._frame_gap_s
            if len(reply) == expect_len and reply.startswith(expect_head):
                return reply
            what = _describe(pdu)
            if reply[0] == pdu[0] | 0x80 and len(reply) == 2:
                code = reply[1]
                name = _EXCEPTION_NAMES.get(code, "unknown exception")
                raise DeviceExceptionResponse(f"exception {code} ({name}) {what}", code)
            self._discard(link)
            if reply[0] == 3 and pdu[0] == 3:
                raise DeviceProtocolError(
                    f"malformed reply (byte count {reply[1] if len(reply) > 1 else '-'}, "
                    f"{len(reply) - 2} data bytes, expected {expect_len - 2}) {what}"
                )
            raise DeviceProtocolError(f"unexpected reply {reply[:8].hex()} {what}")

    async def _wait_quiet(self) -> None:
        delay = self._quiet_until - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _connect(self) -> _Link:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await self._open()
        except DeviceError:
            raise
        except TimeoutError:
            raise DeviceTimeout(f"connect timeout after {_secs(self.connect_timeout_s)} s to {self.label}") from None
        except ConnectionRefusedError:
            raise DeviceDisconnected(f"connection refused by {self.label}") from None
        except (OSError, ModbusException) as exc:
            raise DeviceDisconnected(f"cannot connect to {self.label} ({_os_reason(exc)})") from exc

    def _discard(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        link.close(f"connection to {self.label} dropped")


class TcpEndpoint(ModbusEndpoint):
    """A Modbus TCP server at ``host:port`` (a device, or a gateway fronting several unit ids)."""

    def __init__(
        self, host: str, port: int = 502, *, timeout_s: float = 1.0, connect_timeout_s: float | None = None
    ) -> None:
        super().__init__(timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        self.host = host
        self.port = port

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = _TcpLink(loop, self.label)
        await loop.create_connection(lambda: link, self.host, self.port)
        return link

    def __repr__(self) -> str:
        return f"TcpEndpoint({self.host!r}, {self.port})"


class RtuEndpoint(ModbusEndpoint):
    """A Modbus RTU bus on a serial port; every unit id on the bus shares its one lock.

    ``inter_frame_delay_s`` is the silence kept between a reply (or a failed request) and the next request; it comes
    from the device profile or config (``None``: the Modbus spec's 3.5 character times, 1.75 ms above 19200 baud).
    ``timeout_s`` is the device's response time; the time the request and reply take on the wire at ``baudrate`` is
    added to it. ``port`` is a device path, or any pyserial URL (``socket://host:port`` for an RTU-over-TCP bridge).
    """

    unit_ids: ClassVar[range] = range(1, 248)  # 0 is broadcast (no reply), 248..255 reserved

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        inter_frame_delay_s: float | None = None,
        timeout_s: float = 1.0,
        connect_timeout_s: float | None = None,
    ) -> None:
        super().__init__(timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        if parity not in ("N", "E", "O", "M", "S"):
            raise ValueError(f"parity must be one of N, E, O, M, S, got {parity!r}")
        if stopbits not in (1, 2) or bytesize not in (5, 6, 7, 8) or baudrate <= 0:
            raise ValueError(f"bad serial settings: baudrate={baudrate} stopbits={stopbits} bytesize={bytesize}")
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self.char_time_s = (1 + bytesize + (parity != "N") + stopbits) / baudrate
        if inter_frame_delay_s is None:
            inter_frame_delay_s = 0.00175 if baudrate > 19200 else 3.5 * self.char_time_s
        if inter_frame_delay_s < 0:
            raise ValueError(f"inter_frame_delay_s must be >= 0, got {inter_frame_delay_s}")
        self.inter_frame_delay_s = inter_frame_delay_s
        self._frame_gap_s = inter_frame_delay_s

    @property
    def label(self) -> str:
        return self.port

    def _timeout_for(self, request_len: int, reply_len: int) -> float:
        return self.timeout_s + (request_len + reply_len + 6) * self.char_time_s  # + unit id and CRC both ways

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = _RtuLink(loop, self.label)
        transport, _ = await create_serial_connection(
            loop,
            lambda: link,
            self.port,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=0,
        )
        try:
            await link.made
        except BaseException:
            transport.close()
            raise
        return link

    def __repr__(self) -> str:
        return f"RtuEndpoint({self.port!r}, baudrate={self.baudrate}, parity={self.parity!r})"


class UnitIO:
    """One unit id on an endpoint, with the register read/write the SunSpec layer needs (its ``RegisterIO``)."""

    __slots__ = ("endpoint", "unit", "write_function_code")

    def __init__(self, endpoint: ModbusEndpoint, unit: int, *, write_function_code: int = 16) -> None:
        if write_function_code not in (6, 16):
            raise ValueError(f"write_function_code must be 6 or 16, got {write_function_code}")
        if unit not in endpoint.unit_ids:
            raise ValueError(f"unit id {unit} out of range for {endpoint.label}")
        self.endpoint = endpoint
        self.unit = unit
        self.write_function_code = write_function_code

    async def read(self, address: int, count: int) -> list[int]:
        """Read ``count`` (1..125) holding registers from ``address``."""
        return await self.endpoint.read_holding(self.unit, address, count)

    async def read_bytes(self, address: int, count: int) -> bytes:
        """Read ``count`` (1..125) holding registers from ``address``: ``2 * count`` bytes, big-endian."""
        return await self.endpoint.read_holding_bytes(self.unit, address, count)

    async def write(self, address: int, values: Sequence[int]) -> None:
        """Write ``values`` from ``address`` with this unit's write function code."""
        await self.endpoint.write_registers(self.unit, address, values, self.write_function_code)

    def __repr__(self) -> str:
        return f"UnitIO({self.endpoint!r}, unit={self.unit})"
