"""Fleets: specs, endpoints, several units per port, the ``python -m gateway.sim`` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.errors import ConfigError
from gateway.sim import DeviceSpec, Endpoint, Served, run_simulator, simulated_fleet
from gateway.sunspec import decode

from ._helpers import DUMPS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("inverter", DeviceSpec("inverter", 1)),
        ("meter:3", DeviceSpec("meter", 3)),
        ("inverter-7xx:2", DeviceSpec("inverter-7xx", 2)),
        ("dump:/tmp/x.json", DeviceSpec("dump", 1, "/tmp/x.json")),
    ],
)
def test_spec_parse(text: str, spec: DeviceSpec) -> None:
    assert DeviceSpec.parse(text) == spec


@pytest.mark.parametrize("text", ["toaster", "meter:x", "meter:0", "dump"])
def test_spec_parse_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        DeviceSpec.parse(text)


async def _serials(endpoints: list[Endpoint]) -> list[str]:
    serials = []
    clients: dict[int, AsyncModbusTcpClient] = {}
    try:
        for ep in endpoints:
            client = clients.get(ep.port)
            if client is None:
                client = clients[ep.port] = AsyncModbusTcpClient(ep.host, port=ep.port, retries=0)
                assert await client.connect()
            reply = await client.read_holding_registers(40000, count=70, device_id=ep.unit)
            assert not reply.isError(), (ep, reply)
            common = decode(1, reply.registers[2:70]).points
            assert common["DA"] == ep.unit
            serials.append(str(common["SN"]))
    finally:
        for client in clients.values():
            client.close()
    return serials


async def test_simulated_fleet_units_per_port() -> None:
    async with simulated_fleet(7, kind="inverter-7xx", units_per_port=3) as endpoints:
        assert len(endpoints) == 7
        assert len({e.port for e in endpoints}) == 3
        assert [e.unit for e in endpoints] == [1, 2, 3, 1, 2, 3, 1]
        serials = await _serials(endpoints)
        assert len(set(serials)) == 7


async def test_run_simulator_mixed_specs() -> None:
    specs: list[DeviceSpec | str] = ["inverter:2", "battery", "meter"]
    paths = list(DUMPS.glob("DeviceSolarEdge*.json")) if DUMPS.is_dir() else []
    specs += [DeviceSpec("dump", 1, str(p)) for p in paths]
    ready: asyncio.Future[list[Served]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulator(specs, "127.0.0.1", 0, ready=ready.set_result, stop=stop))
    served = await asyncio.wait_for(ready, 10)
    try:
        assert [s.kind for s in served] == ["inverter", "inverter", "battery", "meter"] + ["dump"] * len(paths)
        host, port, unit = served[3].endpoint
        client = AsyncModbusTcpClient(host, port=port, retries=0)
        await client.connect()
        reply = await client.read_holding_registers(40070, count=107, device_id=unit)
        client.close()
        assert decode(203, reply.registers).points["W"] is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_module_entry_point_announces_endpoints() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.sim", "--devices", "4", "--units-per-port", "2", "--port-base", "0",
        "meter:1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        info = json.loads(line)
        assert info["ready"] is True
        assert info["pid"] == proc.pid
        endpoints = info["endpoints"]
        assert [e["kind"] for e in endpoints] == ["meter", "inverter", "inverter", "inverter", "inverter"]
        assert len({e["port"] for e in endpoints}) == 3
        client = AsyncModbusTcpClient("127.0.0.1", port=endpoints[-1]["port"], retries=0)
        await client.connect()
        reply = await client.read_holding_registers(40000, count=2, device_id=endpoints[-1]["unit"])
        client.close()
        assert reply.registers == [0x5375, 0x6E53]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
