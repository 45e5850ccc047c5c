"""A real openleadr VTN in-process for the OpenADR tests and benchmark: mTLS on a free 127.0.0.1 port, XML signatures
checked, every VEN bound at registration to its TLS client certificate (openleadr's VTN does not check registration
signatures itself), and a record of what reached it: raw requests, registrations, offered and received report
values, opt responses.

openleadr's VTN keeps some settings on the ``VTNService`` class (signing partial, ``ven_lookup``): run one at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from openleadr import OpenADRServer, enums, objects, utils

from gateway.pki import Identity, fingerprint, load_certificate

VTN_ID = "GRIDEDGE-TEST-VTN"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def openadr_fp(identity: Identity) -> str:
    """openleadr's fingerprint form of an identity's certificate (last 10 bytes of the SHA-256, AA:BB:..)."""
    return str(utils.certificate_fingerprint(identity.cert.read_text()))


def sha256_fp(identity: Identity) -> str:
    return fingerprint(load_certificate(identity.cert))


@dataclass(frozen=True)
class ReportValue:
    """One value that reached the VTN's report handler."""

    ven_id: str
    resource_id: str
    measurement: str  # itemDescription: RealPower, Voltage, EXPORT_CAPACITY_LIMIT, ...
    unit: str
    at: dt.datetime
    value: float
    received: float  # time.perf_counter() when the handler ran


@dataclass
class InProcessVtn:
    """An openleadr OpenADRServer with TLS; ``allowed`` are the VEN certificate fingerprints it registers;
    ``signer`` (default: ``identity``) signs its XML messages."""

    identity: Identity
    allowed: set[str]
    poll_s: int = 1
    port: int = field(default_factory=free_port)
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    vens: dict[str, dict[str, Any]] = field(default_factory=dict)
    offered: list[tuple[str, str, str, str]] = field(default_factory=list)
    values: list[ReportValue] = field(default_factory=list)
    opts: list[tuple[str, str, str]] = field(default_factory=list)
    on_value: Callable[[ReportValue], None] | None = None
    signer: Identity | None = None  # signs the XML messages; the TLS identity by default

    def __post_init__(self) -> None:
        ident = self.identity
        signer = self.signer or ident
        self.server = OpenADRServer(
            vtn_id=VTN_ID, cert=str(signer.cert), key=str(signer.key), http_cert=str(ident.cert),
            http_key=str(ident.key), http_ca_file=str(ident.ca), http_host="127.0.0.1", http_port=self.port,
            ven_lookup=self.ven_lookup, show_fingerprint=False, show_server_cert_domain=False,
            requested_poll_freq=dt.timedelta(seconds=self.poll_s))
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._register_report)
        self.server.app.middlewares.append(self._capture)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"

    async def start(self) -> None:
        await self.server.run()

    async def stop(self) -> None:
        await self.server.stop()

    @web.middleware
    async def _capture(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.requests.append((request.path, await request.read()))
        return await handler(request)

    def ven_lookup(self, ven_id: str) -> dict[str, Any] | None:
        return self.vens.get(ven_id)

    async def _register(self, payload: dict[str, Any]) -> tuple[str, str] | bool:
        self.registrations.append(payload)
        fingerprint = payload.get("fingerprint")
        if fingerprint not in self.allowed:
            return False
        ven_id = f"ven-{len(self.vens) + 1}"
        self.vens[ven_id] = {"ven_id": ven_id, "ven_name": payload["ven_name"], "fingerprint": fingerprint,
                             "registration_id": f"reg-{ven_id}"}
        return ven_id, f"reg-{ven_id}"

    async def _register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
                               min_sampling_interval: dt.timedelta, max_sampling_interval: dt.timedelta,
                               ) -> tuple[Callable[[list[tuple[dt.datetime, float]]], None], dt.timedelta]:
        self.offered.append((ven_id, str(resource_id), measurement, unit))

        def deliver(values: list[tuple[dt.datetime, float]]) -> None:
            for at, value in values:
                item = ReportValue(ven_id, str(resource_id), measurement, unit, at, float(value),
                                   time.perf_counter())
                self.values.append(item)
                if self.on_value is not None:
                    self.on_value(item)

        return deliver, min_sampling_interval

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.append((ven_id, event_id, opt_type))

    def add_event(self, ven_id: str, *, signal_name: str, signal_type: str,
                  intervals: Sequence[tuple[dt.datetime, dt.timedelta, float]], resource_ids: Sequence[str] = (),
                  measurement: Any = None) -> str:
        """Queue an event for ``ven_id`` (delivered at its next poll); its opt answer lands in ``opts``."""
        event_id = f"evt-{uuid.uuid4().hex[:8]}"
        signal = objects.EventSignal(
            intervals=[objects.Interval(dtstart=start, duration=duration, signal_payload=payload, uid=index)
                       for index, (start, duration, payload) in enumerate(intervals)],
            signal_name=signal_name, signal_type=signal_type, signal_id=f"sig-{uuid.uuid4().hex[:6]}",
            measurement=measurement)
        targets = [objects.Target(resource_id=r) for r in resource_ids] or [objects.Target(ven_id=ven_id)]
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(event_id=event_id, modification_number=0,
                                                     market_context="oadr://gridedge.test", event_status="far"),
            event_signals=[signal], targets=targets)
        self.server.add_raw_event(ven_id=ven_id, event=event, callback=self._opt)
        return event_id

    def cancel_event(self, ven_id: str, event_id: str) -> None:
        self.server.cancel_event(ven_id, event_id)

    def opt_for(self, event_id: str) -> str | None:
        return next((opt for _, eid, opt in self.opts if eid == event_id), None)


def real_power_kw() -> Any:
    """The itemBase of a LOAD_DISPATCH setpoint in kW (powerReal, siScaleCode k)."""
    return dataclasses.replace(enums.MEASUREMENTS.REAL_POWER, scale="k")


async def until(predicate: Callable[[], bool], within_s: float = 10.0, what: str = "condition") -> None:
    """Wait (polling every 20 ms) until ``predicate()`` holds; fail the test after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.02)
