"""A development OpenADR 2.0b VTN for ``gridedge demo``: openleadr's server in-process, mutual TLS on a free
loopback port, XML signatures checked, each VEN bound at registration to its TLS client certificate (openleadr's
VTN does not check registration signatures itself), and a record of the report values that reached it.

For demos, local trials and the OpenADR tests (``tests/uplink/_openadr_fixtures`` extends it). openleadr keeps some VTN
settings on its ``VTNService`` class (signing partial, ``ven_lookup``): run one at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from openleadr import OpenADRServer, objects, utils

from gateway.pki import Identity
from gateway.uplink._devbroker import free_port

VTN_ID = "GRIDEDGE-DEV-VTN"


def openadr_fingerprint(identity: Identity) -> str:
    """openleadr's short fingerprint of an identity's certificate (what it hands to the registration handler)."""
    return str(utils.certificate_fingerprint(identity.cert.read_text()))


@dataclass(frozen=True, slots=True)
class ReportValue:
    """One value a VEN reported."""

    ven_id: str
    resource_id: str
    measurement: str  # itemDescription: RealPower, Voltage, EXPORT_CAPACITY_LIMIT, ...
    unit: str
    at: dt.datetime
    value: float
    received: float  # time.perf_counter() when the VTN's report handler ran


@dataclass
class DevVtn:
    """An openleadr VTN on 127.0.0.1 that registers the VENs whose certificates are in ``allowed`` (openleadr
    short fingerprints); ``on_value`` hears every report value; ``signer`` (default: ``identity``) signs its XML."""

    identity: Identity
    allowed: set[str]
    poll_s: int = 2
    port: int = field(default_factory=free_port)
    vens: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: list[ReportValue] = field(default_factory=list)
    opts: list[tuple[str, str, str]] = field(default_factory=list)
    on_value: Callable[[ReportValue], None] | None = None
    signer: Identity | None = None

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

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"

    async def start(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # openleadr prints a banner; the demo says it itself
            await self.server.run()

    async def stop(self) -> None:
        await self.server.stop()

    def ven_lookup(self, ven_id: str) -> dict[str, Any] | None:
        return self.vens.get(ven_id)

    async def _register(self, payload: dict[str, Any]) -> tuple[str, str] | bool:
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
        del scale, max_sampling_interval

        def deliver(values: list[tuple[dt.datetime, float]]) -> None:
            for at, value in values:
                item = ReportValue(ven_id, str(resource_id), measurement, unit, at, float(value), time.perf_counter())
                self.values.append(item)
                if self.on_value is not None:
                    self.on_value(item)

        return deliver, min_sampling_interval

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
                                                     market_context="oadr://gridedge.dev", event_status="far"),
            event_signals=[signal], targets=targets)
        self.server.add_raw_event(ven_id=ven_id, event=event, callback=self._opt)
        return event_id

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:  # openleadr checks these parameter names
        self.opts.append((ven_id, event_id, opt_type))
