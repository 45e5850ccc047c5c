"""Simulator launcher for the benchmarks: serves a given SunSpec model list (and/or dumps) from its own process.

``python -m gateway.sim`` serves the fixed device kinds and dumps; the benchmarks also need a map made of a chosen
model list (the 296-register map), so this launcher builds the devices with :mod:`gateway.sim`'s public API and
serves them with :func:`gateway.sim.serve_fleet`. Like ``python -m gateway.sim`` it prints one JSON line when every
server listens::

    {"ready": true, "pid": 1234, "endpoints": [{"host": "127.0.0.1", "port": 41234, "unit": 1, "kind": "map"}]}

and serves until SIGTERM/SIGINT. Run: ``python -m tests.benchmarks._sim_server --models 1,103 --count 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.sim import PhysicsSettings, SimulatedDevice, image_from_dump, image_from_models, serve_fleet


def _devices(args: argparse.Namespace) -> list[tuple[str, SimulatedDevice]]:
    out: list[tuple[str, SimulatedDevice]] = []
    models = [int(m) for m in args.models.split(",")] if args.models else []
    for i in range(args.count if models else 0):
        image = image_from_models(models, serial=f"BENCH-{i:06d}")
        physics = PhysicsSettings(seed=i)
        out.append(("map", SimulatedDevice(image, 1, animate=not args.static, physics=physics)))
    # A dump is served as recorded (as ``python -m gateway.sim --dump`` does): it is a real device's answer.
    out += [("dump", SimulatedDevice(image_from_dump(Path(p)), 1, animate=False)) for p in args.dump]
    return out


def _endpoint(served: Any) -> dict[str, Any]:
    """``{"host", "port", "unit", "kind"}`` of one served device (a ``Served(kind, Endpoint)``, or an older flat
    ``Endpoint(host, port, unit, kind)``)."""
    endpoint = getattr(served, "endpoint", served)
    return {"host": endpoint.host, "port": endpoint.port, "unit": endpoint.unit, "kind": served.kind}


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    devices = _devices(args)
    if not devices:
        raise SystemExit("nothing to serve: give --models and --count, or --dump")
    async with serve_fleet(devices, host="127.0.0.1", units_per_port=args.units_per_port, tick=args.tick) as served:
        line = {"ready": True, "pid": os.getpid(), "endpoints": [_endpoint(s) for s in served]}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated SunSpec model ids of each synthetic device")
    p.add_argument("--count", type=int, default=1, help="synthetic devices to serve")
    p.add_argument("--dump", action="append", default=[], metavar="PATH", help="also serve this register dump")
    p.add_argument("--units-per-port", type=int, default=1)
    p.add_argument("--tick", type=float, default=1.0, help="seconds between background physics steps (0: none)")
    p.add_argument("--static", action="store_true", help="serve the synthetic images without running the physics")
    args = p.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
