"""``gridedge demo``: simulated SunSpec devices on loopback and the daemon polling them, telemetry printed.

Runs on built-in defaults only (the package's simulator and profiles): nothing outside the package is read.
Part-way through, it curtails the first inverter to half its rating (with a reversion timer, as the daemon
always writes limits) so the effect shows in the telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from gateway.config import build_config
from gateway.daemon import build, run
from gateway.devices import Reading
from gateway.sim import DeviceSpec, make_devices, serve_fleet

CURTAIL_AFTER_S = 8.0
CURTAIL_PCT = 50.0
REVERT_S = 30


def _fmt(value: float | None, unit: str, width: int = 9, digits: int = 1) -> str:
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}} {unit}"


def print_reading(r: Reading, out: Any = sys.stdout) -> None:
    m = r.measurement
    soc = "" if m.soc_pct is None else f"  SoC {m.soc_pct:5.1f} %"
    print(f"{r.device_id:<10} {_fmt(m.w, 'W')} {_fmt(m.var, 'var', 7)} {_fmt(m.v, 'V', 6)} "
          f"{_fmt(m.hz, 'Hz', 6, 2)} {_fmt(m.wh, 'Wh', 11, 0)}{soc}  ({len(r.blocks)} models, "
          f"{r.requests} requests)", file=out, flush=True)


async def demo(inverters: int = 3, batteries: int = 1, duration_s: float | None = None) -> None:
    specs = [DeviceSpec("inverter", inverters)] if inverters else []
    specs += [DeviceSpec("battery", batteries)] if batteries else []
    devices = make_devices(specs)
    async with serve_fleet(devices) as served:
        config = build_config({
            "site": {"id": "demo-site", "gateway_id": "demo-gw"},
            "devices": [
                {"id": f"{s.kind}-{i + 1}", "host": s.endpoint.host, "port": s.endpoint.port,
                 "unit": s.endpoint.unit, "role": "battery" if s.kind == "battery" else "inverter",
                 "poll_interval_s": 1.0}
                for i, s in enumerate(served)
            ],
        }, "demo")
        print(f"gridedge demo: {len(served)} simulated SunSpec devices on "
              f"{', '.join(sorted({f'{s.endpoint.host}:{s.endpoint.port}' for s in served}))}", flush=True)
        gw = build(config)
        first = next(iter(gw.devices.values()))

        async def curtail() -> None:
            await asyncio.sleep(CURTAIL_AFTER_S)
            controls = await first.controls()
            result = await controls.limit_active_power_pct(CURTAIL_PCT, revert_s=REVERT_S)
            print(f"-> curtailed {first.device_id} to {CURTAIL_PCT:.0f} % of WMax via model {result.model} "
                  f"(reverts by itself after {result.reversion_s} s without a new write)", flush=True)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(curtail())
            await run(config, duration_s=duration_s, on_reading=print_reading, gateway=gw)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
