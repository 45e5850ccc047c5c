"""Device-path benchmark: each gridedge figure beside its reference measured in the same run, with target and result.

Run: ``.venv/bin/python -m tests.benchmarks.bench_devices [--quick] [--json PATH]`` (``make bench``).

Figures (medians over rounds; in each round the contenders take turns, so machine noise falls on all alike):

* requests per full device read, ours beside pysunspec2 (``SunSpecModbusClientDeviceTCP``: ``scan()`` once, then
  ``model.read()`` for every model), and the optimum (the fewest <=125-register windows covering every register of the
  known models, computed here independently of our planner);
* device reads per CPU-second after discovery, ours (``SunSpecDevice.read``: plan, transport, decode of every model
  into scaled values, measurement) beside pysunspec2's full read with computed (scaled) values, ``model.read()`` +
  ``get_dict(computed=True)`` per model: the like-for-like figure and the target's reference. pysunspec2 reading raw
  values only (``model.read()``, no scaling: less than our read returns) is given in a note. On a 296-register map
  and on the FIMER PVS dump;
* client CPU per 125-register request, ours (``UnitIO.read``) beside a bare asyncio Modbus-TCP client (reused from
  ``tests/devices/bench_transport.py``, with its raw server);
* decode time per model 103 block (``decode_bytes``) beside pysunspec2 decoding the same bytes into its model object
  and taking the computed values;
* client-process CPU while polling N devices at 1 Hz with full SunSpec reads (``Fleet`` + ``Poller`` +
  ``SunSpecDevice``), beside a bare client making the same requests at the same rate (the floor).

The 296-register map: 'SunS' (2) + models 1 (68 registers with ID and L), 103 (52), 120 (28), 121 (32), 122 (46),
128 (16), 160 (50, two MPPT modules) + the end marker (2) = 296. Its 7 models are 292 contiguous registers: pysunspec2
reads them one model per request (7); the optimum is ceil(292 / 125) = 3.

Every device is served by the gridedge simulator in a separate process (``tests/benchmarks/_sim_server.py``, or the
raw server of ``bench_transport`` for the per-request figure), so only client CPU is counted (``time.process_time``
in this process). Fleets are served 50 unit ids per TCP port (as an RS-485 gateway would): one connection and one lock
per port, on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sunspec2 import device as ss_device
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from gateway.devices import Fleet, Poller, Reading, SunSpecDevice, TcpEndpoint, UnitIO
from gateway.sim import image_from_dump, image_from_models
from gateway.sunspec import Span, decode_block, decode_bytes, model_def, plan_reads
from tests.benchmarks._table import Row, render, targets_json
from tests.devices.bench_transport import COUNT, _BareClient, _bench_clients, _server_process

REPO = Path(__file__).resolve().parents[2]
FIMER = REPO.parent / "shared" / "sunspec-dumps" / "DeviceFimerPVSDated20240722.json"
MAP_296 = (1, 103, 120, 121, 122, 128, 160)
MAP_296_REGS = 296
UNITS_PER_PORT = 50
MAX_READ = 125


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure: the full run (about 2.5 minutes) or ``--quick``."""

    rounds: int
    reads: int  # device reads per contender per round (296-register map; a fifth of it on the dump)
    requests: int  # requests per contender per round, per-request CPU figure
    decode_number: int  # decodes per timeit repeat
    fleet_sizes: tuple[int, ...]
    fleet_rounds: int
    fleet_settle_s: float
    fleet_window_s: float


FULL = Settings(rounds=5, reads=250, requests=3000, decode_number=20000, fleet_sizes=(200, 1000), fleet_rounds=4,
                fleet_settle_s=2.0, fleet_window_s=5.0)
QUICK = Settings(rounds=3, reads=60, requests=1000, decode_number=5000, fleet_sizes=(200,), fleet_rounds=2,
                 fleet_settle_s=1.5, fleet_window_s=2.5)




# -- helpers -------------------------------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def _simulator(*args: str) -> Iterator[list[dict[str, Any]]]:
    """Start ``tests.benchmarks._sim_server`` with ``args``; yield its endpoints; stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.benchmarks._sim_server", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            assert proc.stderr is not None
            raise RuntimeError(f"simulator failed to start: {proc.stderr.read()[-2000:]}")
        endpoints: list[dict[str, Any]] = json.loads(line)["endpoints"]
        yield endpoints
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def optimum_requests(model_spans: Sequence[tuple[int, int]], unreadable: frozenset[int] = frozenset()) -> int:
    """The fewest requests of at most 125 registers covering ``[addr, addr + n)`` of every model, none holding an
    unreadable register: greedy from the lowest uncovered register, optimal for covering points on a line."""
    want = sorted({a for addr, n in model_spans for a in range(addr, addr + n)} - unreadable)
    bad = sorted(unreadable)
    requests, i = 0, 0
    while i < len(want):
        limit = want[i] + MAX_READ
        limit = min([limit, *(b for b in bad if b > want[i])])
        requests += 1
        while i < len(want) and want[i] < limit:
            i += 1
    return requests


class _CountingIO:
    """A ``RegisterIO`` that counts the requests it forwards (for counting discovery's requests)."""

    def __init__(self, io: UnitIO) -> None:
        self.io = io
        self.requests = 0

    async def read(self, address: int, count: int) -> list[int]:
        self.requests += 1
        return await self.io.read(address, count)

    async def read_bytes(self, address: int, count: int) -> bytes:
        self.requests += 1
        return await self.io.read_bytes(address, count)

    async def write(self, address: int, values: Sequence[int]) -> None:
        self.requests += 1
        await self.io.write(address, values)


class _PySunSpec:
    """pysunspec2's TCP client on one endpoint: scanned once, connected, requests counted on demand."""

    def __init__(self, port: int, unit: int) -> None:
        self.requests = 0
        self.dev = SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=5,
                                                trace_func=self._trace)
        self.dev.scan()  # connects, discovers, reads every model, disconnects
        self.scan_requests = self.requests
        self.dev.connect()  # keep the socket open for the reads, as a polling application would
        self.requests = 0
        self.read()
        self.read_requests = self.requests
        self.dev.client.trace_func = None  # the trace formats every frame as hex: not part of a read

    def _trace(self, line: str) -> None:
        if line.startswith(">"):
            self.requests += 1

    def read(self) -> None:
        for model in self.dev.model_list:
            model.read()

    def read_computed(self) -> None:
        for model in self.dev.model_list:
            model.read()
            model.get_dict(computed=True)

    def spans(self) -> list[tuple[int, int]]:
        return [(m.model_addr, m.model_len + 2) for m in self.dev.model_list]

    def close(self) -> None:
        self.dev.disconnect()


# -- device reads: requests per read, reads per CPU-second ---------------------------------------------------------
@dataclass(slots=True)
class ReadFigures:
    name: str
    registers: int
    ours_requests: int
    ours_discovery_requests: int
    pss_requests: int
    pss_scan_requests: int
    optimum: int
    ours_rps: list[float]
    pss_rps: list[float]
    pss_computed_rps: list[float]


async def _bench_reads(name: str, port: int, unit: int, reads: int, rounds: int) -> ReadFigures:
    pss = _PySunSpec(port, unit)
    endpoint = TcpEndpoint("127.0.0.1", port, timeout_s=5.0)
    try:
        counting = _CountingIO(UnitIO(endpoint, unit))
        first = SunSpecDevice(f"{name}-count", counting)
        reading = await first.read()  # discovery, then the first full read
        discovery = counting.requests - reading.requests
        dev = SunSpecDevice(name, UnitIO(endpoint, unit))
        for _ in range(3):  # discovery and warm-up; steady state after
            reading = await dev.read()
        assert dev.device_map is not None
        unreadable = dev.device_map.unreadable
        registers = sum(n for _, n in pss.spans())  # the models both clients know (vendor models left out)
        for _ in range(3):
            pss.read()

        async def ours_block() -> float:
            start = time.process_time()
            for _ in range(reads):
                await dev.read()
            return reads / (time.process_time() - start)

        def pss_block(read: Callable[[], None]) -> float:
            start = time.process_time()
            for _ in range(reads):
                read()
            return reads / (time.process_time() - start)

        ours: list[float] = []
        plain: list[float] = []
        computed: list[float] = []
        for _ in range(rounds):
            ours.append(await ours_block())
            plain.append(pss_block(pss.read))
            computed.append(pss_block(pss.read_computed))
        return ReadFigures(name, registers, reading.requests, discovery, pss.read_requests, pss.scan_requests,
                           optimum_requests(pss.spans(), unreadable), ours, plain, computed)
    finally:
        pss.close()
        await endpoint.close()


def bench_reads(s: Settings) -> list[ReadFigures]:
    assert len(image_from_models(MAP_296).regs) == MAP_296_REGS, "the 296-register map is not 296 registers"
    args = ["--models", ",".join(map(str, MAP_296)), "--count", "1"]
    if FIMER.is_file():
        args += ["--dump", str(FIMER)]
    out: list[ReadFigures] = []
    with _simulator(*args) as endpoints:
        for ep in endpoints:
            name = "296-register map" if ep["kind"] == "map" else "FIMER PVS dump"
            reads = s.reads if ep["kind"] == "map" else max(10, s.reads // 5)
            out.append(asyncio.run(_bench_reads(name, ep["port"], ep["unit"], reads, s.rounds)))
    return out


# -- decode time per 103 block ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class DecodeFigures:
    source: str
    ours_bytes_us: float
    ours_regs_us: float
    pss_set_mb_us: float
    pss_construct_us: float


def _block_103() -> tuple[str, list[int], int]:
    """A real 103 block (the FIMER dump's; the simulator's where ../shared is absent): registers and address."""
    if FIMER.is_file():
        image, source = image_from_dump(FIMER), "FIMER dump"
    else:
        image, source = image_from_models([103]), "simulator image"
    addr = image.base + 2
    while image.regs[addr - image.base] != 103:
        addr += 2 + image.regs[addr + 1 - image.base]
    i = addr - image.base
    return source, image.regs[i : i + 52], addr


def bench_decode(s: Settings) -> DecodeFigures:
    source, regs, addr = _block_103()
    buf = struct.pack(">52H", *regs)
    mdef = model_def(103)
    pss_model = ss_device.Model(model_id=103, model_len=50, data=buf)
    ours_points = decode_bytes(mdef, buf, addr, 50).points
    theirs = pss_model.get_dict(computed=True)
    assert all(ours_points[k] == theirs[k] for k in ours_points), "decoders disagree on the 103 block"

    def per_call_us(fn: Callable[[], object], number: int) -> float:
        return _median(timeit.repeat(fn, number=number, repeat=max(5, s.rounds))) / number * 1e6

    def pss_set_mb() -> object:
        pss_model.set_mb(buf)
        return pss_model.get_dict(computed=True)

    n = s.decode_number
    return DecodeFigures(
        source,
        per_call_us(lambda: decode_bytes(mdef, buf, addr, 50), n),
        per_call_us(lambda: decode_block(mdef, regs, addr), n),
        per_call_us(pss_set_mb, max(100, n // 50)),
        per_call_us(lambda: ss_device.Model(model_id=103, model_len=50, data=buf).get_dict(computed=True),
                    max(100, n // 100)),
    )


# -- client CPU per request ----------------------------------------------------------------------------------------
def bench_requests(s: Settings) -> dict[str, float]:
    """bench_transport's interleaved measurement (bare, pymodbus, gridedge) against its raw server."""
    with _server_process() as port:
        return asyncio.run(_bench_clients(port, s.requests, s.rounds))


# -- fleet CPU at 1 Hz -----------------------------------------------------------------------------------------------
class _UnitBareClient(_BareClient):
    """bench_transport's bare client, addressing a given unit id (its ``read`` always asks unit 1)."""

    async def read_unit(self, unit: int, address: int, count: int) -> list[int]:
        assert self.transport is not None
        self.tid = (self.tid + 1) & 0xFFFF
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(struct.pack(">HHHBBHH", self.tid, 0, 6, unit, 3, address, count))
        frame = await self.fut
        assert struct.unpack_from(">HHHBB", frame) == (self.tid, 0, 3 + 2 * count, unit, 3)
        return list(struct.unpack_from(f">{count}H", frame, 9))


@dataclass(slots=True)
class FleetFigures:
    devices: int
    ports: int
    requests_per_read: int
    ours_core: list[float] = field(default_factory=list)
    bare_core: list[float] = field(default_factory=list)
    ours_reads_per_s: list[float] = field(default_factory=list)
    bare_reads_per_s: list[float] = field(default_factory=list)
    ours_stale: list[int] = field(default_factory=list)
    bare_late: list[int] = field(default_factory=list)


async def _window(s: Settings, polls: list[int]) -> tuple[float, float]:
    """After the settle time, (share of one core, polls per second) over the measuring window."""
    await asyncio.sleep(s.fleet_settle_s)
    before, cpu, wall = polls[0], time.process_time(), time.perf_counter()
    await asyncio.sleep(s.fleet_window_s)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / wall, (polls[0] - before) / wall


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _ours_round(s: Settings, fleet: Fleet[Reading], fig: FleetFigures) -> None:
    polls = [0]

    def count(_: Reading) -> None:
        polls[0] += 1

    removers = [poller.add_listener(count) for poller in fleet]
    task = asyncio.create_task(fleet.run())
    try:
        core, rate = await _window(s, polls)
        fig.ours_stale.append(sum(status.stale for status in fleet.snapshot().values()))
    finally:
        await _stop(task)
        for remove in removers:
            remove()
    fig.ours_core.append(core)
    fig.ours_reads_per_s.append(rate)


async def _bare_round(s: Settings, clients: dict[int, tuple[_UnitBareClient, asyncio.Lock]],
                      units: list[tuple[int, int]], plan: tuple[Span, ...], fig: FleetFigures) -> None:
    """The floor: one task per device, the same requests at 1 Hz, one connection and one lock per port.

    It stops by a flag, each device after its poll in progress: the bare client has no cancellation handling (a
    reply arriving for a cancelled request would break its connection for the next round).
    """
    polls = [0]
    late = [0]
    running = [True]
    loop = asyncio.get_running_loop()

    async def device(port: int, unit: int, delay: float) -> None:
        client, lock = clients[port]
        await asyncio.sleep(delay)
        while running[0]:
            start = loop.time()
            async with lock:
                for span in plan:
                    await client.read_unit(unit, span.start, span.count)
            polls[0] += 1
            elapsed = loop.time() - start
            late[0] += elapsed > 1.0
            await asyncio.sleep(max(0.0, 1.0 - elapsed))

    tasks = [asyncio.create_task(device(port, unit, i / len(units))) for i, (port, unit) in enumerate(units)]
    try:
        core, rate = await _window(s, polls)
    finally:
        running[0] = False
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            await _stop(task)
    if pending:
        raise RuntimeError(f"{len(pending)} bare pollers did not stop: the simulator stopped answering")
    fig.bare_core.append(core)
    fig.bare_reads_per_s.append(rate)
    fig.bare_late.append(late[0])


async def _bench_fleet(s: Settings, endpoints: list[dict[str, Any]]) -> FleetFigures:
    ports = sorted({ep["port"] for ep in endpoints})
    tcp = {port: TcpEndpoint("127.0.0.1", port, timeout_s=2.0) for port in ports}
    devices = [SunSpecDevice(f"dev{i}", UnitIO(tcp[ep["port"]], ep["unit"])) for i, ep in enumerate(endpoints)]
    loop = asyncio.get_running_loop()
    clients: dict[int, tuple[_UnitBareClient, asyncio.Lock]] = {}
    try:
        readings = await asyncio.gather(*(d.read() for d in devices))  # discover every device once
        device_map = devices[0].device_map
        assert device_map is not None
        plan = plan_reads([m.span for m in device_map.models])
        fig = FleetFigures(len(devices), len(ports), readings[0].requests)
        fleet: Fleet[Reading] = Fleet(Poller(d.device_id, 1.0, d.read, timeout_s=5.0) for d in devices)
        for port in ports:
            _, client = await loop.create_connection(_UnitBareClient, "127.0.0.1", port)
            clients[port] = (client, asyncio.Lock())
        units = [(ep["port"], ep["unit"]) for ep in endpoints]
        for _ in range(s.fleet_rounds):
            await _ours_round(s, fleet, fig)
            await _bare_round(s, clients, units, plan, fig)
        return fig
    finally:
        for client, _ in clients.values():
            if client.transport is not None:
                client.transport.close()
        for endpoint in tcp.values():
            await endpoint.close()


def bench_fleet(s: Settings, n: int) -> FleetFigures:
    args = ["--models", ",".join(map(str, MAP_296)), "--count", str(n), "--units-per-port", str(UNITS_PER_PORT)]
    with _simulator(*args) as endpoints:
        return asyncio.run(_bench_fleet(s, endpoints))


# -- report ----------------------------------------------------------------------------------------------------------
def _fmt_rate(value: float) -> str:
    return f"{value:,.0f} /s"


def build_rows(reads: list[ReadFigures], decode: DecodeFigures, requests: dict[str, float],
               fleets: list[FleetFigures], skipped: list[str]) -> list[Row]:
    rows: list[Row] = []
    for r in reads:
        ok = r.ours_requests == r.optimum
        row = Row(f"requests per full read, {r.name}", str(r.ours_requests),
                  f"pysunspec2 {r.pss_requests}", f"{r.pss_requests / r.ours_requests:.2f}x fewer",
                  f"= optimum {r.optimum}", ok, key=f"requests {r.name}")
        row.notes.append(f"{r.registers} registers in the known models (ID and L included); discovery: ours "
                         f"{r.ours_discovery_requests} requests (+ {r.ours_requests} for the first read), "
                         f"pysunspec2 scan (reading every model) {r.pss_scan_requests}")
        rows.append(row)
    for r in reads:
        ours, raw, computed = _median(r.ours_rps), _median(r.pss_rps), _median(r.pss_computed_rps)
        need = 2.0 if r.name.startswith("296") else 3.0
        ratio = ours / computed
        row = Row(f"device reads per CPU-second, {r.name}", _fmt_rate(ours),
                  f"pysunspec2 computed {_fmt_rate(computed)}", f"{ratio:.2f}x", f">= {need:g}x", ratio >= need,
                  key=f"reads/CPU-s {r.name}")
        row.notes.append(f"like for like, both reads return scaled values (pysunspec2: read() + "
                         f"get_dict(computed=True) per model); CPU per read: ours {1e3 / ours:.2f} ms, "
                         f"pysunspec2 {1e3 / computed:.2f} ms")
        row.notes.append(f"note: pysunspec2 raw values only (read(), no scaling) {_fmt_rate(raw)}, "
                         f"{1e3 / raw:.2f} ms per read: ours {ours / raw:.2f}x")
        rows.append(row)
    rows.extend(Row(name, "-", "-", target="= optimum; >= 3x", key=name,
                    notes=[f"skipped: {FIMER} is absent (a fresh clone has no ../shared)"]) for name in skipped)
    bare, ours_req = requests["bare"], requests["gridedge"]
    row = Row(f"client CPU per request ({COUNT} regs)", f"{ours_req:.1f} us", f"bare {bare:.1f} us",
              f"{ours_req / bare:.2f}x", "<= 1.5x bare", ours_req / bare <= 1.5, key="CPU per request")
    pym = requests["pymodbus"]
    row.notes.append(f"pymodbus AsyncModbusTcpClient {pym:.1f} us ({pym / bare:.2f}x)")
    rows.append(row)
    row = Row("decode time per 103 block", f"{decode.ours_bytes_us:.2f} us",
              f"pysunspec2 {decode.pss_set_mb_us:.1f} us", f"{decode.pss_set_mb_us / decode.ours_bytes_us:.0f}x faster",
              "<= 6 us", decode.ours_bytes_us <= 6.0, key="decode 103")
    row.notes.append(f"{decode.source} block; ours decode_bytes (bytes in: the reader's path); from a register list "
                     f"(decode_block) {decode.ours_regs_us:.2f} us; pysunspec2 = set_mb + get_dict(computed=True) "
                     f"on a built model; building the model too {decode.pss_construct_us:.1f} us")
    rows.append(row)
    for f in fleets:
        ours, floor = _median(f.ours_core), _median(f.bare_core)
        target = f.devices == 1000
        row = Row(f"CPU polling {f.devices} devices at 1 Hz", f"{ours:.3f} core", f"bare {floor:.3f} core",
                  f"{ours / floor:.2f}x", "<= 0.5 core, 0 stale" if target else "",
                  (ours <= 0.5 and max(f.ours_stale) == 0) if target else None,
                  key=f"fleet {f.devices}" if target else "")
        row.notes.append(f"{f.ports} ports x {UNITS_PER_PORT} units, {f.requests_per_read} requests per read; "
                         f"reads/s ours {_median(f.ours_reads_per_s):.0f}, bare {_median(f.bare_reads_per_s):.0f}; "
                         f"CPU per poll ours {ours / _median(f.ours_reads_per_s) * 1e6:.0f} us, "
                         f"bare {floor / _median(f.bare_reads_per_s) * 1e6:.0f} us; "
                         f"stale (ours) {max(f.ours_stale)}, polls over 1 s (bare) {max(f.bare_late)}; "
                         f"rounds ours {' '.join(f'{c:.3f}' for c in f.ours_core)}, "
                         f"bare {' '.join(f'{c:.3f}' for c in f.bare_core)}")
        rows.append(row)
    return rows


def _versions() -> str:
    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return (f"Python {platform.python_version()}, pysunspec2 {v('pysunspec2')}, pymodbus {v('pymodbus')}, "
            f"{os.cpu_count()} CPUs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter windows, fleet of 200 only")
    parser.add_argument("--json", metavar="PATH", help="also write the figures (every round) as JSON")
    parser.add_argument("--fleet", metavar="N[,N...]", help="fleet sizes to poll (default 200,1000; quick: 200)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.fleet:
        s = Settings(**{**asdict(s), "fleet_sizes": tuple(int(n) for n in args.fleet.split(","))})
    os.chdir(REPO)  # the servers run as ``python -m tests...`` from the repository root
    started = time.perf_counter()

    def step(what: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f} s] {what}", file=sys.stderr, flush=True)

    step("decode time per 103 block")
    decode = bench_decode(s)
    step("client CPU per request")
    requests = bench_requests(s)
    step("device reads")
    reads = bench_reads(s)
    skipped = [] if FIMER.is_file() else ["FIMER PVS dump: requests per read, reads per CPU-second"]
    fleets: list[FleetFigures] = []
    for n in s.fleet_sizes:
        step(f"fleet of {n} at 1 Hz")
        fleets.append(bench_fleet(s, n))
    rows = build_rows(reads, decode, requests, fleets, skipped)
    if 1000 not in s.fleet_sizes:
        rows.append(Row("CPU polling 1000 devices at 1 Hz", "-", "-", target="<= 0.5 core, 0 stale",
                        key="fleet 1000", notes=["not run (--quick or --fleet without 1000)"]))
    mode = "quick" if args.quick else "full"
    header = (f"gridedge device benchmarks ({mode}: medians of {s.rounds} rounds, fleets {s.fleet_rounds} x "
              f"{s.fleet_window_s:g} s windows), {_versions()}; took {time.perf_counter() - started:.0f} s")
    print(render(rows, header))
    if args.json:
        figures = {
            "settings": asdict(s), "versions": _versions(),
            "decode_103": asdict(decode), "cpu_per_request_us": requests,
            "reads": [asdict(r) for r in reads], "fleets": [asdict(f) for f in fleets],
            "targets": targets_json(rows),
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
