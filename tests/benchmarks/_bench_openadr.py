"""OpenADR figure for the uplink benchmark: a signed report from VEN to the VTN's handler, median milliseconds.

Run alone: ``.venv/bin/python -m tests.benchmarks._bench_openadr [--n N] [--json PATH]``; ``bench_uplink`` calls
:func:`measure_report_round_trip`.

One real openleadr VTN in-process (mTLS on 127.0.0.1, XML signatures checked, ``tests/uplink/_openadr_fixtures``)
and three VENs registered with it, taking turns in every round so machine noise falls on all alike:

* ours: ``OpenAdrVen.report_now(envelope=False)`` with its EC P-256 key;
* openleadr's own ``OpenADRClient`` with an EC P-256 key (same report: ``update_report`` of the request);
* openleadr's ``OpenADRClient`` with an RSA-2048 key: the reference (openleadr accepts RSA; our adapter refuses it).

Each report carries the same 4 values (2 DERs x real power and voltage). A round trip runs from the call that
triggers the report to the VTN's report handler receiving its last value (``time.perf_counter``, one process).
Polling and scheduled reports are set to an hour so none falls inside a measurement. The cost of one signature
(``openleadr.messaging.create_message`` of an oadrUpdateReport) is given per key type as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID
from openleadr import OpenADRClient, objects
from openleadr.messaging import create_message

from gateway.pki import Identity, init_dev_pki
from gateway.types import DerLimit, Measurement
from gateway.uplink._openadr import OpenAdrConfig, OpenAdrVen, VenHooks
from tests.uplink._openadr_fixtures import InProcessVtn, ReportValue, openadr_fp, sha256_fp

DERS = ("pv1", "bat1")
VALUES_PER_REPORT = 2 * len(DERS)
HOUR = dt.timedelta(hours=1)
OURS, PLAIN_EC, PLAIN_RSA = "gridedge VEN, EC P-256", "openleadr VEN, EC P-256", "openleadr VEN, RSA-2048 (reference)"


def _rsa_identity(directory: Path, name: str) -> Identity:
    """An RSA-2048 leaf issued by the development CA in ``directory`` (for the reference only)."""
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # the development CA is EC P-256
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    leaf = x509.load_pem_x509_certificate((directory / "ven.pem").read_bytes())
    builder = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string(f"CN={name},O=gridedge bench"))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
    for extension in leaf.extensions:
        if extension.oid != ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            builder = builder.add_extension(extension.value, critical=extension.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(name, cert_path, key_path, directory / "ca.pem")


def _measurements() -> dict[str, Measurement]:
    now = time.time()
    return {"pv1": Measurement("pv1", now, "der", w=2500.0, v=231.5),
            "bat1": Measurement("bat1", now, "der", w=-1200.0, v=229.8)}


async def _plain_client(vtn: InProcessVtn, identity: Identity, vtn_identity: Identity) -> Any:
    client = OpenADRClient(ven_name=identity.name, vtn_url=vtn.url, cert=str(identity.cert), key=str(identity.key),
                           ca_file=str(identity.ca), vtn_fingerprint=openadr_fp(vtn_identity),
                           show_fingerprint=False)
    real_power = objects.Measurement(name="powerReal", description="RealPower", unit="W", scale="none",
                                     power_attributes=objects.PowerAttributes(hertz=50, voltage=230, ac=True))
    volts = objects.Measurement(name="voltage", description="Voltage", unit="V", scale="none")
    for der in DERS:
        for suffix, measurement, field in (("W", real_power, "w"), ("V", volts, "v")):
            client.add_report(callback=lambda der=der, field=field: [
                (dt.datetime.now(dt.UTC), float(getattr(_measurements()[der], field)))],
                resource_id=der, measurement=measurement, r_id=f"{der}:{suffix}",
                report_specifier_id="plain-telemetry", sampling_rate=HOUR, report_duration=HOUR)
    await client.run()
    if not client.registration_id:
        raise RuntimeError(f"{identity.name} did not register with the VTN")
    return client


def _sign_ms(identity: Identity, n: int) -> float:
    cert, key = identity.cert.read_bytes(), identity.key.read_bytes()
    payload = objects.ReportPayload(r_id="x", value=1.0)
    report = objects.Report(report_request_id="r", report_specifier_id="s", report_name="TELEMETRY_USAGE",
                            intervals=[objects.ReportInterval(dtstart=dt.datetime.now(dt.UTC), report_payload=payload)])
    times = []
    for _ in range(n):
        started = time.perf_counter()
        create_message("oadrUpdateReport", cert=cert, key=key, ven_id="v", request_id="q", reports=[report])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _measure(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gridedge-bench-openadr-") as tmp:
        directory = Path(tmp)
        ids = init_dev_pki(directory, names=("vtn", "ven", "ven-ec"))
        ids["ven-rsa"] = _rsa_identity(directory, "ven-rsa")
        vtn = InProcessVtn(ids["vtn"], allowed={openadr_fp(ids[name]) for name in ("ven", "ven-ec", "ven-rsa")},
                           poll_s=3600)
        arrived: dict[str, list[ReportValue]] = {}
        waiter: dict[str, asyncio.Event] = {}

        def on_value(value: ReportValue) -> None:
            arrived.setdefault(value.ven_id, []).append(value)
            if len(arrived[value.ven_id]) >= VALUES_PER_REPORT and value.ven_id in waiter:
                waiter[value.ven_id].set()

        vtn.on_value = on_value
        async with contextlib.AsyncExitStack() as stack:
            with contextlib.redirect_stdout(io.StringIO()):  # openleadr's banners, the VEN's log lines
                await vtn.start()
                stack.push_async_callback(vtn.stop)
                ours = OpenAdrVen(
                    OpenAdrConfig(vtn_url=vtn.url, ven_name="ven", cert=ids["ven"].cert, key=ids["ven"].key,
                                  ca=ids["ven"].ca, vtn_fingerprint=sha256_fp(ids["vtn"]), der_ids=DERS,
                                  report_min_period_s=3600, report_max_period_s=3600),
                    VenHooks(measurements=_measurements, envelope=lambda: None,
                             capabilities=lambda: {d: DerLimit(d, 5000.0, 5000.0) for d in DERS},
                             on_commands=lambda _: None))
                await ours.start()
                stack.push_async_callback(ours.stop)
                plain: dict[str, Any] = {}
                for name, identity in ((PLAIN_EC, ids["ven-ec"]), (PLAIN_RSA, ids["ven-rsa"])):
                    plain[name] = await _plain_client(vtn, identity, ids["vtn"])
                    stack.push_async_callback(plain[name].stop)

            async def trigger_ours() -> None:
                await ours.report_now(envelope=False)

            def trigger_plain(client: Any) -> Callable[[], Awaitable[None]]:
                async def trigger() -> None:
                    for request in client.report_requests:
                        await client.update_report(request["report_request_id"])
                return trigger

            contenders: dict[str, tuple[str, Callable[[], Awaitable[None]]]] = {
                OURS: (str(ours.ven_id), trigger_ours),
                PLAIN_EC: (str(plain[PLAIN_EC].ven_id), trigger_plain(plain[PLAIN_EC])),
                PLAIN_RSA: (str(plain[PLAIN_RSA].ven_id), trigger_plain(plain[PLAIN_RSA])),
            }
            times: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for round_ in range(n + 1):  # round 0 warms every path up and is not counted
                for name in names[round_ % 3:] + names[:round_ % 3]:
                    ven_id, trigger = contenders[name]
                    arrived[ven_id] = []
                    waiter[ven_id] = asyncio.Event()
                    started = time.perf_counter()
                    await trigger()
                    await asyncio.wait_for(waiter[ven_id].wait(), timeout=30)
                    if round_:
                        times[name].append((max(v.received for v in arrived[ven_id]) - started) * 1000)
        sign = {"EC P-256": _sign_ms(ids["ven"], max(n, 5)), "RSA-2048": _sign_ms(ids["ven-rsa"], max(n, 5))}
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "figure": "signed OpenADR 2.0b report, VEN to VTN handler (mTLS, XML signature checked), median ms",
        "n": n, "values_per_report": VALUES_PER_REPORT,
        "median_ms": medians,
        "rsa_over_ours": medians[PLAIN_RSA] / medians[OURS],
        "sign_ms": sign,
        "rounds_ms": times,
        "openleadr": _version(),
    }


def _version() -> str:
    from importlib import metadata

    return metadata.version("openleadr")


def measure_report_round_trip(n: int) -> dict[str, Any]:
    """Median ms of ``n`` signed reports VEN -> VTN handler for our VEN (EC P-256), openleadr's own VEN with the
    same key type, and openleadr's VEN with RSA-2048 (the reference), plus the median cost of one signature."""
    if n < 1:
        raise ValueError("n must be at least 1")
    return asyncio.run(_measure(n))


def render(result: dict[str, Any]) -> str:
    lines = [result["figure"] + f" (n={result['n']}, {result['values_per_report']} values per report, "
             f"openleadr {result['openleadr']})"]
    for name, value in result["median_ms"].items():
        lines.append(f"  {name:<40} {value:8.2f} ms")
    lines.append(f"  RSA-2048 reference / ours: {result['rsa_over_ours']:.1f}x")
    lines.append("  one signature (create_message): " + ", ".join(
        f"{name} {value:.2f} ms" for name, value in result["sign_ms"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="reports per contender (default 30)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures (every round) as JSON")
    args = parser.parse_args(argv)
    result = measure_report_round_trip(args.n)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
