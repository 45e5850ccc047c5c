"""``python -m gateway.sim``: serve simulated SunSpec devices from a separate process (benchmarks, demos).

Prints one JSON line on stdout when every server listens::

    {"ready": true, "pid": 1234, "endpoints": [{"host": "127.0.0.1", "port": 15020, "unit": 1, "kind": "inverter"}]}

and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from gateway.errors import ConfigError
from gateway.sim._fleet import KINDS, DeviceSpec, Served, run_simulator
from gateway.sim._physics import PhysicsSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway.sim", description=__doc__.split("\n")[0])
    p.add_argument("specs", nargs="*", metavar="KIND[:N]",
                   help=f"devices to serve: {', '.join(KINDS)} (e.g. inverter:10 meter:1), or dump:PATH")
    p.add_argument("--devices", type=int, default=0, help="serve N devices of --kind (besides any SPECs)")
    p.add_argument("--kind", default="inverter", choices=sorted(KINDS))
    p.add_argument("--dump", action="append", default=[], metavar="PATH", help="serve a register dump (JSON)")
    p.add_argument("--animate-dumps", action="store_true", help="run the physics on dumps too")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-base", type=int, default=5020, help="first TCP port (0: free ports)")
    p.add_argument("--units-per-port", type=int, default=1, help="unit ids per TCP port (1..247)")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between physics steps of the whole fleet")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--start-hour", type=float, default=12.0, help="simulated time of day at start")
    p.add_argument("--seed", type=int, default=0)
    return p


def _specs(args: argparse.Namespace) -> list[DeviceSpec]:
    specs = [DeviceSpec.parse(s) for s in args.specs]
    if args.devices:
        specs.append(DeviceSpec(args.kind, args.devices))
    specs += [DeviceSpec("dump", 1, path, args.animate_dumps) for path in args.dump]
    if not specs:
        specs.append(DeviceSpec(args.kind, 1))
    return specs


def _announce(served: list[Served]) -> None:
    endpoints = [{**s.endpoint._asdict(), "kind": s.kind} for s in served]
    line = {"ready": True, "pid": os.getpid(), "endpoints": endpoints}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    physics = PhysicsSettings(start_hour=args.start_hour, time_scale=args.time_scale, seed=args.seed)
    await run_simulator(_specs(args), args.host, args.port_base, units_per_port=args.units_per_port,
                        physics=physics, tick=args.tick, ready=_announce, stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # pymodbus logs every request for an absent unit id at error level; a simulator has no use for that.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        asyncio.run(_serve(args))
    except ConfigError as exc:
        sys.stderr.write(f"gateway.sim: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
