"""The ``gridedge`` command: run the daemon, try it on simulated devices, and look at devices by hand.

``--json`` outputs are a stable interface (ARCHITECTURE.md, "Key contracts"); human output may change.
Exit codes: 0 done, 2 bad usage, 3 a device failed, 4 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError, DeviceError
from gateway.logs import configure

EXIT_DEVICE, EXIT_CONFIG = 3, 4


def parse_target(text: str, default_port: int = 502) -> tuple[str, int]:
    """``HOST[:PORT]``, ``[IPv6]:PORT`` or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def _base(text: str) -> int | None:
    if text == "auto":
        return None
    if text in ("0", "40000", "50000"):
        return int(text)
    raise argparse.ArgumentTypeError("use auto, 0, 40000 or 50000")


def _models(text: str) -> set[int]:
    try:
        return {int(x) for x in text.split(",") if x}
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of model ids, e.g. 1,103,123") from None


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="HOST[:PORT] of a Modbus TCP device (port 502 if omitted)")
    p.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    p.add_argument("--base", type=_base, default=None, help="SunSpec base: auto (default), 0, 40000 or 50000")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output (a stable interface)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridedge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gridedge {__version__}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway daemon from a config file")
    p.add_argument("--config", required=True, help="path of the TOML config")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until stopped)")

    p = sub.add_parser("demo", help="simulated SunSpec devices on loopback and the daemon polling them")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    p.add_argument("--inverters", type=int, default=3, help="simulated inverters (default 3)")
    p.add_argument("--batteries", type=int, default=1, help="simulated batteries (default 1)")

    p = sub.add_parser("discover", help="find a device's SunSpec base and model chain")
    _add_target(p)

    p = sub.add_parser("read", help="read and decode every SunSpec model of a device")
    _add_target(p)
    p.add_argument("--models", type=_models, default=None, help="only these model ids, e.g. 1,103,123")

    p = sub.add_parser("simulate", help="serve simulated SunSpec devices over Modbus TCP on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020, help="first TCP port (one port per unit group)")
    p.add_argument("--device", action="append", default=[], metavar="KIND[:N]",
                   help="inverter, inverter-7xx, battery or meter, N of them (default: one inverter)")
    p.add_argument("--dump", action="append", default=[], metavar="PATH", help="serve a register dump (JSON)")
    p.add_argument("--units-per-port", type=int, default=1, help="unit ids served on each port (an RS-485 gateway)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")

    p = sub.add_parser("twin", help="the feeder twin: solve a feeder model")
    twin = p.add_subparsers(dest="twin_command", required=True)
    p = twin.add_parser("solve", help="AC power flow of a feeder at its base case (DERs at 0 W)")
    p.add_argument("feeder", help="a gridedge feeder file (.toml/.json) or an OpenDSS master file (.dss)")
    p.add_argument("--json", action="store_true", help="machine-readable output (a stable interface)")
    return parser


async def _open_device(args: argparse.Namespace) -> tuple[Any, Any]:
    from gateway.devices import TcpEndpoint, UnitIO

    host, port = parse_target(args.target)
    endpoint = TcpEndpoint(host, port, timeout_s=args.timeout)
    return endpoint, UnitIO(endpoint, args.unit)


def _bases(args: argparse.Namespace) -> tuple[int, ...]:
    from gateway.sunspec import DEFAULT_BASES

    return DEFAULT_BASES if args.base is None else (args.base,)


async def _discover(args: argparse.Namespace) -> int:
    from gateway.errors import SunSpecError
    from gateway.sunspec import discover, model_def

    endpoint, io = await _open_device(args)
    async with endpoint:
        device_map = await discover(io, _bases(args))
    models: list[dict[str, Any]] = []
    for m in device_map.models:
        try:
            name = model_def(m.id).name
        except SunSpecError:
            name = "vendor"
        models.append({"id": m.id, "name": name, "start": m.addr, "length": m.length})
    if args.json:
        print(json.dumps({"base": device_map.base, "end_marker": device_map.end_marker, "models": models}))
        return 0
    print(f"SunSpec base {device_map.base}, {len(models)} models"
          + ("" if device_map.end_marker else " (no end marker)"))
    for row in models:
        print(f"  {row['id']:>5}  {row['name']:<28} at {row['start']:>5}, L={row['length']}")
    return 0


async def _read(args: argparse.Namespace) -> int:
    from gateway.sunspec import SunSpecReader, discover

    endpoint, io = await _open_device(args)
    async with endpoint:
        device_map = await discover(io, _bases(args))
        reader = SunSpecReader(io, device_map, args.models)
        blocks = {b.start: b for b in await reader.read()}
    models: list[dict[str, Any]] = []
    for m in device_map.models:
        if args.models is not None and m.id not in args.models:
            continue
        block = blocks.get(m.addr)
        models.append(block.as_json() if block else
                      {"id": m.id, "start": m.addr, "length": m.length, "points": {}, "groups": {}})
    if args.json:
        print(json.dumps({"base": device_map.base, "models": models}))
        return 0
    for out in models:
        print(f"model {out['id']} at {out['start']} (L={out['length']})")
        for name, value in out["points"].items():
            if value is not None:
                print(f"  {name:<24} {value}")
        for gname, items in out["groups"].items():
            for i, item in enumerate(items if isinstance(items, list) else [items]):
                shown = {k: v for k, v in item.items() if v is not None and not isinstance(v, list)}
                print(f"  {gname}[{i}] {shown}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.daemon import run

    config = load_config(args.config)
    configure(args.log_level if args.log_level != "info" else config.site.log_level)
    await run(config, duration_s=args.duration or None)
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    from gateway.sim import DeviceSpec, Served, run_simulator

    specs = [DeviceSpec.parse(d) for d in args.device or ["inverter"]]
    specs += [DeviceSpec("dump", 1, path) for path in args.dump]
    stop = asyncio.Event()
    if args.duration:
        asyncio.get_running_loop().call_later(args.duration, stop.set)

    def ready(served: list[Served]) -> None:
        for s in served:
            e = s.endpoint
            print(json.dumps({"host": e.host, "port": e.port, "unit": e.unit, "kind": s.kind}), flush=True)

    await run_simulator(specs, args.host, args.port, units_per_port=args.units_per_port, ready=ready, stop=stop)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    await demo(inverters=args.inverters, batteries=args.batteries, duration_s=args.duration or None)
    return 0


async def _twin_solve(args: argparse.Namespace) -> int:
    """``gridedge twin solve FEEDER [--json]``: exit 4 with the feeder's issues when it cannot be used."""
    import math

    from gateway.twin import FeederError, PowerFlow, load_feeder  # numpy and power-grid-model: only when needed

    def solve() -> tuple[Any, Any]:
        feeder = load_feeder(args.feeder)
        return feeder, PowerFlow(feeder).solve()

    try:
        feeder, res = await asyncio.to_thread(solve)  # twin calls block: off the event loop
    except FeederError as exc:
        print(f"gridedge: feeder error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def num(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    names = [str(n) for n in feeder.buses.name]
    ok = bool(res.converged[0])
    out = {
        "converged": ok, "losses_kw": num(res.losses_w[0] / 1e3), "vmin_pu": num(res.vmin_pu[0]),
        "vmin_bus": names[res.vmin_bus[0]] if ok else None, "vmax_pu": num(res.vmax_pu[0]),
        "vmax_bus": names[res.vmax_bus[0]] if ok else None, "max_loading": num(res.max_loading[0]),
        "buses": {n: {"v_pu": [num(v) for v in res.v_pu[0, k]]} for k, n in enumerate(names)},
    }
    if args.json:
        print(json.dumps(out))
        return 0
    kind = "balanced: symmetric solve" if feeder.balanced else "unbalanced: three-phase solve"
    print(f"feeder {feeder.name}: {len(names)} buses, {len(feeder.lines)} lines, {len(feeder.transformers)} "
          f"transformer(s), {len(feeder.loads)} loads, {len(feeder.ders)} DER points ({kind})")
    if not ok:
        print("power flow did not converge")
        return 0
    loading = "unrated" if out["max_loading"] is None else f"{100 * res.max_loading[0]:.1f} %"
    print(f"converged; losses {out['losses_kw']:.3f} kW; source {res.source_p_w[0] / 1e3:.3f} kW, "
          f"{res.source_q_var[0] / 1e3:.3f} kvar")
    print(f"vmin {out['vmin_pu']:.5f} pu at bus {out['vmin_bus']}, vmax {out['vmax_pu']:.5f} pu at bus "
          f"{out['vmax_bus']}; limits {feeder.limits.vmin_pu}-{feeder.limits.vmax_pu} pu; max loading {loading}")
    return 0


_COMMANDS = {"run": _run, "demo": _demo, "discover": _discover, "read": _read, "simulate": _simulate,
             "twin": _twin_solve}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The daemon logs JSON lines to stdout (journald); tools keep stdout for their output and log to stderr.
    if args.command == "run":
        configure(args.log_level)
    else:
        configure(args.log_level, json=False, stream=sys.stderr)
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:
        print(f"gridedge: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DeviceError as exc:
        print(f"gridedge: {args.target if hasattr(args, 'target') else 'device'}: {exc.reason}", file=sys.stderr)
        return EXIT_DEVICE


if __name__ == "__main__":
    sys.exit(main())
