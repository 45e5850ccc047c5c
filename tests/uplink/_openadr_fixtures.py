"""The OpenADR tests' and benchmark's VTN: the product's dev VTN (``gateway.uplink._devvtn``: real openleadr
in-process, mTLS on a free 127.0.0.1 port, XML signatures checked, every VEN bound at registration to its TLS client
certificate), polled every second and also recording raw requests, registrations and the reports offered.

openleadr's VTN keeps some settings on the ``VTNService`` class (signing partial, ``ven_lookup``): run one at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from openleadr import enums

from gateway.pki import Identity, fingerprint, load_certificate
from gateway.uplink._devvtn import VTN_ID, DevVtn, ReportValue
from gateway.uplink._devvtn import openadr_fingerprint as openadr_fp

__all__ = ["VTN_ID", "InProcessVtn", "ReportValue", "openadr_fp", "real_power_kw", "sha256_fp", "until"]


def sha256_fp(identity: Identity) -> str:
    return fingerprint(load_certificate(identity.cert))


@dataclass
class InProcessVtn(DevVtn):
    """The dev VTN, polling every second; ``requests``, ``registrations`` and ``offered`` record what reached it."""

    poll_s: int = 1
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    offered: list[tuple[str, str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.server.app.middlewares.append(self._capture)

    @web.middleware
    async def _capture(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.requests.append((request.path, await request.read()))
        return await handler(request)

    async def _register(self, payload: dict[str, Any]) -> tuple[str, str] | bool:
        self.registrations.append(payload)
        return await super()._register(payload)

    async def _register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
                               min_sampling_interval: dt.timedelta, max_sampling_interval: dt.timedelta,
                               ) -> tuple[Callable[[list[tuple[dt.datetime, float]]], None], dt.timedelta]:
        self.offered.append((ven_id, str(resource_id), measurement, unit))
        return await super()._register_report(ven_id, resource_id, measurement, unit, scale, min_sampling_interval,
                                              max_sampling_interval)

    def cancel_event(self, ven_id: str, event_id: str) -> None:
        self.server.cancel_event(ven_id, event_id)

    def opt_for(self, event_id: str) -> str | None:
        return next((opt for _, eid, opt in self.opts if eid == event_id), None)


def real_power_kw() -> Any:
    """The itemBase of a LOAD_DISPATCH setpoint in kW (powerReal, siScaleCode k)."""
    return dataclasses.replace(enums.MEASUREMENTS.REAL_POWER, scale="k")


async def until(predicate: Callable[[], object], within_s: float = 10.0, what: str = "condition") -> None:
    """Wait (polling every 20 ms) until ``predicate()`` holds; fail the test after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.02)
