"""The ``gridedge`` command: run the daemon, try it on simulated devices, and look at devices by hand.

``--json`` outputs are a stable interface (ARCHITECTURE.md, "Key contracts"); human output may change.
Exit codes: 0 done, 1 an audit log failed verification, 2 bad usage, 3 a device failed, 4 bad configuration.
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


_FEEDER_HELP = ("a gridedge feeder file (.toml/.json), an OpenDSS master file (.dss), or a bundled feeder: "
                "builtin:case33bw, builtin:ieee-european-lv")


def _add_twin_options(p: argparse.ArgumentParser, ders: str) -> None:
    """The options ``twin envelope`` and ``twin hosting`` share."""
    p.add_argument("feeder", help=_FEEDER_HELP)
    p.add_argument("--der", action="append", default=[], metavar="ID@BUS[:RATING_KW]", help=f"{ders}; repeatable")
    p.add_argument("--policy", choices=["equal", "proportional", "max-total"], default="equal",
                   help="how the room is shared: the same kW each (default), the same fraction of rating, or the "
                        "largest total (LP)")
    p.add_argument("--vmin", type=float, default=None, help="lowest phase voltage, pu (default: the feeder's, 0.95)")
    p.add_argument("--vmax", type=float, default=None, help="highest phase voltage, pu (default: the feeder's, 1.05)")
    p.add_argument("--max-loading", type=float, default=None,
                   help="highest line/transformer loading, fraction of rating (default: the feeder's, 1.0)")
    p.add_argument("--load-scale", type=float, default=1.0, help="operating point: the feeder's loads times this")
    p.add_argument("--source-v", type=float, default=None, help="operating point: source voltage, pu")
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
    p.add_argument("feeder", help=_FEEDER_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output (a stable interface)")
    p = twin.add_parser("envelope", help="certified export/import limits of every DER, AC-checked at once")
    _add_twin_options(p, "the DERs (besides the feeder's own)")
    p.add_argument("--default-export-kw", type=float, default=0.0,
                   help="the default envelope published for a direction that cannot be certified (default 0)")
    p.add_argument("--default-import-kw", type=float, default=0.0, help="likewise for import (default 0)")
    p = twin.add_parser("hosting", help="hosting capacity per bus, today's envelope holders at their limits")
    _add_twin_options(p, "today's envelope holders (besides the feeder's own DERs)")
    p.add_argument("--bus", action="append", default=None, metavar="NAME",
                   help="only this candidate bus (repeatable; default: every bus but the source's, which on a large "
                        "feeder takes a while: ~10 AC scenarios per bus)")
    p.add_argument("--phase", choices=["abc", "a", "b", "c"], default="abc",
                   help="the new DER's phase (default abc: three-phase)")

    p = sub.add_parser("verify", help="verify a signed message (envelope, telemetry, status, event or command)")
    p.add_argument("file", help="the compact JWS: a file, or - for stdin")
    p.add_argument("--keys", action="extend", nargs="+", default=[], metavar="CERT",
                   help="certificates (PEM) whose keys may have signed it, or directories of them (CA certs skipped)")
    p.add_argument("--json", action="store_true", help="machine-readable output (a stable interface)")

    p = sub.add_parser("certs", help="keys and certificates")
    certs = p.add_subparsers(dest="certs_command", required=True)
    p = certs.add_parser("init", help="make a development CA and EC P-256 certificates (loopback tests and demos)")
    p.add_argument("directory", help="where to write ca.pem and NAME.pem/NAME.key (keys mode 0600)")
    p.add_argument("--gateway-id", default=None, help="the gateway certificate's common name (default: gateway)")
    p.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    p.add_argument("--force", action="store_true", help="replace an existing CA in the directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("audit", help="the dispatch audit log")
    audit = p.add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="check the hash chain: exit 1 naming the first edited/removed/torn line")
    p.add_argument("file", help="the audit log (JSON lines)")
    p.add_argument("--anchor", default=None, metavar="HASH",
                   help="a head hash published earlier: the log must contain it (catches lines cut from the end)")
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

    if args.log_level == "info":  # the demo prints what happens; the daemon's own log lines only when asked
        configure("warning", json=False, stream=sys.stderr)
    await demo(inverters=args.inverters, batteries=args.batteries, duration_s=args.duration or None)
    return 0


async def _twin_solve(args: argparse.Namespace) -> int:
    """``gridedge twin solve FEEDER [--json]``: exit 4 with the feeder's issues when it cannot be used."""
    import math

    from gateway.segment import open_feeder  # numpy and power-grid-model: only when needed
    from gateway.twin import FeederError, PowerFlow

    def solve() -> tuple[Any, Any]:
        feeder = open_feeder(args.feeder)
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


def _twin_feeder(args: argparse.Namespace) -> Any:
    """The feeder of ``twin envelope``/``twin hosting``: the file, plus the ``--der ID@BUS[:RATING_KW]`` points.
    A bad ``--der`` is a FeederError naming the DER and what is wrong with it."""
    import math

    from gateway.segment import open_feeder
    from gateway.twin import FeederError, FeederIssue, with_ders

    feeder = open_feeder(args.feeder)
    if not args.der:
        return feeder
    ids, buses, ratings, issues = [], [], [], []
    for text in args.der:
        der_id, at, rest = text.partition("@")
        bus, colon, rating = rest.rpartition(":") if ":" in rest else (rest, "", "")
        kw = math.nan
        if not (at and der_id and bus):
            issues.append(FeederIssue("der", "", (text,), "expected ID@BUS[:RATING_KW], e.g. pv1@b17:300"))
            continue
        if colon:
            try:
                kw = float(rating)
            except ValueError:
                kw = -1.0
            if not (math.isfinite(kw) and kw > 0):
                issues.append(FeederIssue("der", "rating_w", (der_id,), f"rating {rating!r} (in --der {text}) must "
                                          "be a number of kW > 0"))
                continue
        ids.append(der_id)
        buses.append(bus)
        ratings.append(kw * 1e3)
    if issues:
        raise FeederError(issues, "--der")
    return with_ders(feeder, ids, buses, rating_w=ratings, keep=True)


def _twin_inputs(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The feeder, the criteria and the operating point of ``twin envelope``/``twin hosting``."""
    from gateway.twin import Criteria

    feeder = _twin_feeder(args)
    criteria = Criteria(vmin_pu=args.vmin, vmax_pu=args.vmax, max_loading=args.max_loading)
    loads = feeder.loads
    operating = {"load_p_w": loads.p_w * args.load_scale, "load_q_var": loads.q_var * args.load_scale,
                 "source_v_pu": args.source_v}
    return feeder, criteria, operating


async def _twin_run(args: argparse.Namespace, compute: Any) -> Any:
    """Run a blocking twin computation off the event loop; exit 4 with the reason for a bad feeder or request."""
    from gateway.twin import EnvelopeError, FeederError, ScenarioError

    try:
        return await asyncio.to_thread(compute)
    except FeederError as exc:
        print(f"gridedge: feeder error: {exc}", file=sys.stderr)
    except (EnvelopeError, ScenarioError) as exc:
        print(f"gridedge: {args.twin_command}: {exc}", file=sys.stderr)
    return None


def _kw(w: float) -> str:
    return "-" if w != w else f"{w / 1e3:.1f}"  # NaN: missing


async def _twin_envelope(args: argparse.Namespace) -> int:
    """``gridedge twin envelope FEEDER --der ID@BUS[:RATING_KW] ... [--policy ...] [--json]``."""
    from gateway.twin import EnvelopeRequest, PowerFlow, certify_envelope

    def compute() -> tuple[Any, Any]:
        feeder, criteria, operating = _twin_inputs(args)
        request = EnvelopeRequest(policy=args.policy, criteria=criteria, default_export_w=args.default_export_kw * 1e3,
                                  default_import_w=args.default_import_kw * 1e3)
        return feeder, certify_envelope(PowerFlow(feeder), request, **operating)

    done = await _twin_run(args, compute)
    if done is None:
        return EXIT_CONFIG
    feeder, result = done
    if args.json:
        print(json.dumps(result.as_json()))
        return 0
    cert = result.certificate
    print(f"feeder {feeder.name}: {len(result.der_id)} DERs, policy {result.policy.value}; limits "
          f"{cert.vmin_limit_pu:g}-{cert.vmax_limit_pu:g} pu, loading {100 * cert.loading_limit:g} %; margins "
          f"{cert.margin_v_pu:g} pu, {100 * cert.margin_loading:g} %; unmeasured loads {100 * cert.load_bound[0]:g}-"
          f"{100 * cert.load_bound[1]:g} %")
    names = feeder.buses.name
    print(f"{'DER':<16} {'bus':<12} {'rating kW':>10} {'export kW':>10} {'import kW':>10}")
    for k, der_id in enumerate(result.der_id):
        print(f"{der_id:<16} {names[feeder.ders.bus[k]]:<12} {_kw(result.rating_w[k]):>10} "
              f"{_kw(result.export_w[k]):>10} {_kw(result.import_w[k]):>10}")
    for d in (cert.export, cert.import_):
        if d.certified:
            loading = "unrated" if d.max_loading != d.max_loading else f"{100 * d.max_loading:.1f} %"
            print(f"{d.direction}: certified; vmax {d.vmax_pu:.4f} pu, vmin {d.vmin_pu:.4f} pu, loading {loading}; "
                  f"bound by {d.binding}")
        else:
            print(f"{d.direction}: NOT certified, default envelope published: {d.reason}")
    print(f"method: {cert.method}")
    return 0


async def _twin_hosting(args: argparse.Namespace) -> int:
    """``gridedge twin hosting FEEDER [--der ...] [--bus NAME ...] [--json]``."""
    from gateway.twin import HostingRequest, Phase, hosting_capacity

    def compute() -> Any:
        feeder, criteria, operating = _twin_inputs(args)
        request = HostingRequest(buses=None if args.bus is None else tuple(args.bus),
                                 phase=Phase[args.phase.upper()], criteria=criteria, policy=args.policy)
        return hosting_capacity(feeder, request, **operating)

    result = await _twin_run(args, compute)
    if result is None:
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(result.as_json()))
        return 0
    holders = result.holders
    if holders is not None:
        shown = ", ".join(f"{i} {_kw(e)}/{_kw(m)} kW" for i, e, m in zip(holders.der_id, holders.export_w,
                                                                         holders.import_w, strict=True))
        print(f"holders at their limits (export/import, {holders.policy.value}): {shown}")
    print(f"limits {result.vmin_limit_pu:g}-{result.vmax_limit_pu:g} pu, loading {100 * result.loading_limit:g} %; "
          f"new DER phase {result.phase.name.lower()}")
    if result.reason:
        print(f"NOT certified: {result.reason}")
    print(f"{'bus':<12} {'hosting kW':>11}  {'bound by':<28} {'import kW':>10}  bound by")
    for k, bus in enumerate(result.bus):
        print(f"{bus:<12} {_kw(result.export_w[k]):>11}  {result.export_binding[k]:<28} "
              f"{_kw(result.import_w[k]):>10}  {result.import_binding[k]}")
    print(f"method: {result.method}")
    return 0


async def _twin(args: argparse.Namespace) -> int:
    handlers = {"solve": _twin_solve, "envelope": _twin_envelope, "hosting": _twin_hosting}
    return await handlers[args.twin_command](args)


EXIT_INVALID = 1  # gridedge verify: the message does not verify


def _cert_files(paths: Sequence[str]) -> list[Any]:
    """``--keys``: certificates, directories expanded to their ``*.pem`` leaf certificates (CAs sign no messages)."""
    from pathlib import Path

    from cryptography import x509

    from gateway.pki import load_certificate

    found: list[Any] = []
    for text in paths:
        path = Path(text)
        for file in sorted(path.glob("*.pem")) if path.is_dir() else [path]:
            cert = load_certificate(file)
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not (is_ca and path.is_dir()):
                found.append((file, cert))
    return found


async def _verify(args: argparse.Namespace) -> int:
    """``gridedge verify FILE|- --keys CERT ... [--json]``: exit 0 valid, 1 invalid (with the reason), 2 usage."""
    return await asyncio.to_thread(_verify_files, args)  # file reads and crypto: off the event loop


def _verify_files(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.errors import MessageError, SignatureError
    from gateway.pki import fingerprint
    from gateway.uplink import Verifier, parse_message

    if not args.keys:
        print("gridedge verify: no keys — give --keys CERT (the signer's certificate, or a directory of them)",
              file=sys.stderr)
        return 2
    certs = _cert_files(args.keys)
    signers = {fingerprint(cert): str(file) for file, cert in certs}
    verifier = Verifier.from_certs(cert for _, cert in certs)
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"gridedge verify: cannot read {args.file} ({exc.strerror})", file=sys.stderr)
        return 2
    try:
        kid, payload = verifier.verify_with_kid(raw)
        message = parse_message(payload)
    except SignatureError as exc:
        reason, detail = exc.reason, exc.detail
    except MessageError as exc:
        reason, detail = "malformed", str(exc)
    else:
        if args.json:
            print(json.dumps({"valid": True, "type": message.type, "kid": kid, "signer": signers[kid],
                              "payload": payload}))
        else:
            print(f"valid {message.type} from {message.issuer} (seq {message.seq}, id {message.id}), signed by "
                  f"{signers[kid]} (kid {kid[:16]}…)")
            print(json.dumps(payload, indent=2, sort_keys=True))
        return 0
    if args.json:
        print(json.dumps({"valid": False, "reason": reason, "detail": detail}))
    else:
        print(f"gridedge verify: invalid: {reason}: {detail}", file=sys.stderr)
    return EXIT_INVALID


async def _certs_init(args: argparse.Namespace) -> int:
    """``gridedge certs init DIR [--gateway-id ID]``: a development PKI, and what was made."""
    return await asyncio.to_thread(_make_dev_pki, args)


def _make_dev_pki(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cryptography import x509

    from gateway.pki import DEFAULT_NAMES, fingerprint, init_dev_pki, load_certificate

    directory = Path(args.directory)
    if (directory / "ca.key").exists() and not args.force:
        print(f"gridedge certs init: {directory} already holds a CA (ca.key); pass --force to replace it and every "
              f"certificate it issued", file=sys.stderr)
        return 2
    if args.days < 1:
        print("gridedge certs init: --days must be at least 1", file=sys.stderr)
        return 2
    names = {"gateway": args.gateway_id} if args.gateway_id else None
    made = init_dev_pki(directory, DEFAULT_NAMES, days=args.days, common_names=names)
    rows = {}
    for name, ident in made.items():
        cert = load_certificate(ident.cert)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        rows[name] = {"cert": str(ident.cert), "key": str(ident.key), "cn": str(cn), "kid": fingerprint(cert)}
    if args.json:
        print(json.dumps({"directory": str(directory), "ca": str(directory / "ca.pem"), "days": args.days,
                          "identities": rows}))
        return 0
    print(f"development PKI in {directory} (EC P-256, valid {args.days} days, for loopback tests and demos only):")
    print(f"  {'ca':<8} {directory / 'ca.pem'}  (its key ca.key: keep it off shared disks)")
    for name, row in rows.items():
        print(f"  {name:<8} {row['cert']}  {row['key']}  CN={row['cn']}  kid {row['kid']}")
    print("keys are mode 0600; for production see certs/README.md")
    return 0


async def _audit(args: argparse.Namespace) -> int:
    """``gridedge audit verify FILE [--anchor HASH] [--json]``: exit 0 when intact, 1 naming the first bad line.

    ``--json``: ``{"ok", "records", "head", "first_bad_line", "problem", "reason", "anchor_found"}``.
    """
    from gateway.audit import verify_log

    try:
        result = verify_log(args.file, anchor=args.anchor)
    except OSError as exc:
        print(f"gridedge: {args.file}: {exc.strerror or exc} — give the path of an audit log", file=sys.stderr)
        return 2
    bad = result.problem
    reason = bad.reason if bad else None
    if bad is None and result.anchor_found is False:
        reason = (f"anchor {args.anchor} is not in the log: lines were removed from its end, or it is another "
                  "log")
    if args.json:
        print(json.dumps({"ok": result.ok, "records": result.records, "head": result.head,
                          "first_bad_line": bad.line if bad else None, "problem": bad.code if bad else None,
                          "reason": reason, "anchor_found": result.anchor_found}))
    elif bad is not None:
        print(f"{args.file}: line {bad.line}: {bad.reason} ({result.records} good lines before it)", file=sys.stderr)
    elif reason is not None:
        print(f"{args.file}: {reason}", file=sys.stderr)
    else:
        print(f"{args.file}: intact, {result.records} records, head {result.head}")
    return 0 if result.ok else 1


_COMMANDS = {"audit": _audit, "verify": _verify, "certs": _certs_init,
             "run": _run, "demo": _demo, "discover": _discover, "read": _read, "simulate": _simulate,
             "twin": _twin}


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
