"""The device layer end to end: simulator (pymodbus server) -> our transport -> discovery, reads, controls.

Real peers only: every dump served by the simulator over TCP, RTU over a pseudo-terminal pair, the daemon
running against healthy and misbehaving devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import build_config
from gateway.daemon import build, run
from gateway.devices import RtuEndpoint, SunSpecDevice, TcpEndpoint, UnitIO
from gateway.sim import SimulatedDevice, image_from_dump, make_devices, pty_link, serve_fleet, serve_rtu, serve_tcp
from tests.devices.conftest import ScriptedServer, free_port
from tests.shared_data import dump_params, load_dump
from tests.sunspec.reference import assert_matches_dump


@pytest.mark.parametrize("path", dump_params())
async def test_dump_served_discovered_decoded(path: Path) -> None:
    dump = load_dump(path)
    sim = SimulatedDevice(image_from_dump(dump), unit=1, animate=False)
    async with serve_tcp([sim]) as port, TcpEndpoint("127.0.0.1", port) as endpoint:
        device = SunSpecDevice("dut", UnitIO(endpoint, 1))
        reading = await device.read()
        assert device.device_map is not None
        chain = [(m.id, m.addr, m.length) for m in device.device_map.models]
        assert chain == [(m["id"], m["addr"], m["len"]) for m in dump["models"] if m["id"] != 0xFFFF]
        nulls = assert_matches_dump(reading.blocks, dump)
        assert (nulls > 0) == (dump["unreadable_regs"] > 0)
        again = await device.read()  # learned what is unreadable: the plan alone, no probing
        assert again.requests == reading.requests if nulls == 0 else again.requests < reading.requests


@pytest.mark.parametrize("path", dump_params()[:1])
def test_cli_read_json(path: Path) -> None:
    """``gridedge read --json`` against a served dump: the documented shape, values as pysunspec2's cvalue."""
    dump = load_dump(path)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen([sys.executable, "-m", "gateway.sim", "--port-base", str(port), "--dump", str(path)],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert sim.stdout is not None
        ready = json.loads(sim.stdout.readline())
        unit = ready["endpoints"][0]["unit"]
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "read", f"127.0.0.1:{port}", "--unit", str(unit),
                              "--json"], capture_output=True, text=True, timeout=60, check=True)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    doc = json.loads(out.stdout)
    assert doc["base"] == dump["base"]
    assert [m["id"] for m in doc["models"]] == [m["id"] for m in dump["models"] if m["id"] != 0xFFFF]
    for m in doc["models"]:
        assert set(m) == {"id", "start", "length", "points", "groups"}


async def test_rtu_bus_two_units_over_a_pty() -> None:
    devices = [SimulatedDevice(d.image, unit=u, animate=False)
               for u, (_, d) in zip((3, 7), make_devices(["inverter:2"]), strict=True)]
    async with pty_link() as (sim_path, gateway_path), serve_rtu(devices, sim_path, baudrate=19200), \
            RtuEndpoint(gateway_path, baudrate=19200, timeout_s=1.0) as bus:
        a, b = (SunSpecDevice(f"u{u}", UnitIO(bus, u)) for u in (3, 7))
        ra, rb = await asyncio.gather(a.read(), b.read())
    assert ra.measurement.w is not None
    assert rb.measurement.w is not None
    assert {blk.id for blk in ra.blocks} >= {1, 103, 123}


async def test_curtailment_through_the_stack_limits_power() -> None:
    (_kind, sim), = make_devices(["inverter"])
    async with serve_tcp([sim]) as port, TcpEndpoint("127.0.0.1", port) as endpoint:
        device = SunSpecDevice("pv", UnitIO(endpoint, sim.unit))
        before = (await device.read()).measurement
        assert before.w is not None
        assert before.w_max is not None
        assert before.w > 0.3 * before.w_max
        result = await (await device.controls()).limit_active_power_pct(25.0, revert_s=60)
        assert result.reversion_s == 60
        after = (await device.read()).measurement
        assert after.w is not None
        assert after.w <= 0.25 * before.w_max + 1.0


async def test_volt_var_705_adoption_handshake() -> None:
    (_, sim), = make_devices(["inverter-7xx"])
    async with serve_tcp([sim]) as port, TcpEndpoint("127.0.0.1", port) as endpoint:
        device = SunSpecDevice("pv7", UnitIO(endpoint, sim.unit))
        controls = await device.controls()
        curve = [(92.0, 40.0), (98.0, 0.0), (102.0, 0.0), (108.0, -40.0)]
        result = await controls.set_volt_var(curve, revert_s=600)
        assert result.model == 705
        (block,) = [b for b in (await device.read()).blocks if b.id == 705]
        assert block.points["Ena"] == 1
        active = block.groups["Crv"][0]  # the adopted curve becomes the active (first) one
        assert [(p["V"], p["Var"]) for p in active["Pt"][: len(curve)]] == curve


async def test_daemon_survives_misbehaving_devices() -> None:
    """Healthy devices stay fresh while silent, refusing and garbage-answering ones go stale with a reason."""
    devices = make_devices(["inverter:2"])
    refused_port = free_port()
    async with serve_fleet(devices) as served, ScriptedServer(["silent"] * 50) as silent, \
            ScriptedServer(["garbage_length"] * 50) as garbage:
        spec = [{"id": f"ok-{i}", "host": s.endpoint.host, "port": s.endpoint.port, "unit": s.endpoint.unit,
                 "poll_interval_s": 0.5} for i, s in enumerate(served)]
        spec += [{"id": "silent", "host": "127.0.0.1", "port": silent.port, "poll_interval_s": 0.5,
                  "timeout_s": 0.3},
                 {"id": "garbage", "host": "127.0.0.1", "port": garbage.port, "poll_interval_s": 0.5},
                 {"id": "refused", "host": "127.0.0.1", "port": refused_port, "poll_interval_s": 0.5}]
        config = build_config({"site": {"id": "t", "gateway_id": "g"}, "devices": spec}, "test")
        gw = build(config)
        await run(config, duration_s=3.0, gateway=gw)
    snap = gw.fleet.snapshot()
    for i in range(2):
        assert not snap[f"ok-{i}"].stale
        assert snap[f"ok-{i}"].latest is not None
    assert snap["silent"].stale
    assert "timeout" in (snap["silent"].stale_reason or "")
    assert snap["garbage"].stale
    assert snap["garbage"].stale_reason
    assert snap["refused"].stale
    assert "refused" in (snap["refused"].stale_reason or "")


async def test_device_lost_mid_run_goes_stale_and_recovers() -> None:
    (_, sim), = make_devices(["inverter"])
    port = free_port()
    config = build_config({"site": {"id": "t", "gateway_id": "g"}, "devices": [
        {"id": "pv", "host": "127.0.0.1", "port": port, "poll_interval_s": 0.3}]}, "test")
    gw = build(config)
    poller = gw.fleet["pv"]

    async def script() -> list[tuple[bool, str | None]]:
        seen = []
        async with serve_tcp([sim], port=port):
            await asyncio.sleep(1.0)
            seen.append((poller.stale, poller.stale_reason))
        await asyncio.sleep(1.5)
        seen.append((poller.stale, poller.stale_reason))
        async with serve_tcp([sim], port=port):
            await asyncio.sleep(3.0)
            seen.append((poller.stale, poller.stale_reason))
        return seen

    async with asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run(config, duration_s=6.0, gateway=gw))
        seen = await script()
        await daemon
    assert seen[0] == (False, None)
    assert seen[1][0]
    assert seen[1][1]
    assert seen[2] == (False, None)


@pytest.mark.parametrize("path", [p for p in dump_params() if "20250410" in str(p)] or dump_params()[:1])
async def test_profile_unreadable_spans_spare_the_probing(path: Path) -> None:
    """Spans a profile declares unreadable are planned around from the first read: no probing requests."""
    dump = load_dump(path)
    base = dump["base"]
    spans = []
    for m in dump["models"]:
        bad = [i for i in range(m["len"] + 2) if dump["regs"][m["addr"] - base + i] is None]
        spans += [(m["id"], i, 1) for i in bad]
    sim = SimulatedDevice(image_from_dump(dump), unit=1, animate=False)
    async with serve_tcp([sim]) as port, TcpEndpoint("127.0.0.1", port) as endpoint:
        told = SunSpecDevice("told", UnitIO(endpoint, 1), known_unreadable=spans)
        first = await told.read()
        second = await told.read()
    assert spans
    assert first.requests == second.requests
    assert_matches_dump(first.blocks, dump)
