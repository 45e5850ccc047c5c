"""The OpenADR 2.0b VEN (openleadr 0.5.36) behind a small adapter, so an OpenADR 3 VEN can sit beside it later.

The rest of the gateway sees only :class:`VenHooks` (what any VEN reads: measurements, the envelope in force, what
each DER can do now; what it hands back: ``Command`` objects and withdrawals) and the :class:`Ven` shape (start,
stop, ``report_now``, ``registered``). Everything OpenADR-2.0b-specific stays in here and in ``_openadr_*.py``:

* registration over mutual TLS (EC P-256 keys only), the VTN pinned by certificate fingerprint at the TLS
  handshake and on every XML signature (``_openadr_client``);
* ``TELEMETRY_USAGE`` reports of per-DER real power and voltage, and a report of the envelope in force and each
  DER's available flexibility (``_openadr_reports``), sent on the VTN's schedule or at once with ``report_now``;
* events (``LOAD_DISPATCH`` setpoints, ``SIMPLE`` levels) turned into ``Command`` objects handed to
  ``VenHooks.on_commands``, opted in or out from ``VenHooks.capabilities`` (``_openadr_events``).

openleadr 0.5.36 defects measured here, and what this adapter does about each (tests in
``tests/uplink/test_openadr.py``):

* ``add_report`` with a measurement dict raises AttributeError (``object.PowerAttributes``): measurements are
  passed as ``objects.Measurement`` instances instead.
* Its VTN registers only TELEMETRY_USAGE / TELEMETRY_STATUS (HISTORY_* are acknowledged, never requested) and
  skips every other report name: the envelope/flexibility report is a TELEMETRY_USAGE report with its own
  specifier (``gridedge-envelope``) and custom measurement descriptions.
* RSA keys cost ~80 ms per signed message and Ed25519 keys cannot sign: any key but EC P-256 is refused when the
  adapter is built, with the fix in the message.
* Its VTN never checks the signature of registration messages (they carry no venID): this VEN signs them anyway,
  and a VTN built on openleadr must bind registration to the TLS client certificate (openleadr hands its
  fingerprint to ``on_create_party_registration`` as ``payload['fingerprint']``), as the test VTN does.
* The signature freshness window is fixed at 5 s (``SIGNATURE_WINDOW_S``, read from openleadr): a message signed
  longer ago is refused by the other side, so both clocks must agree well inside it (NTP). The adapter estimates
  the VTN's clock offset from each answer's HTTP ``Date`` (``clock_offset_s``, 1 s resolution) and warns when it
  eats more than half the window; a report the VTN refuses makes ``report_now`` raise, naming the window.
* ``create_report`` leaks r_ids between report requests and the report worker drops the VTN's answer: fixed in
  ``GatewayClient`` by subclassing.

openleadr's own scheduler (APScheduler on the running loop) polls the VTN and sends scheduled reports between
``start`` and ``stop``; nothing runs before ``start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Protocol

import aiohttp
import structlog
from openleadr import objects

from gateway.errors import ConfigError, UplinkRefused, UplinkUnavailable
from gateway.types import Authority, Command, DerLimit, Envelope, Measurement
from gateway.uplink._lifecycle import StartStop
from gateway.uplink._openadr_client import (
    SIGNATURE_WINDOW_S,
    GatewayClient,
    PinnedClientContext,
    ReportAnswer,
    check_signing_key,
    normalize_fingerprint,
    openadr_fingerprint,
    pinned_client_context,
)
from gateway.uplink._openadr_events import EventDecision, EventPolicy, decide_event
from gateway.uplink._openadr_reports import (
    ENVELOPE_SPECIFIER,
    TELEMETRY_SPECIFIER,
    ReportSources,
    report_points,
)

_KEY = "uplink.openadr"
#: SIMPLE level -> fraction of each DER's export rating (level 0, normal operation, sends no command).
DEFAULT_SIMPLE_LEVELS: Mapping[int, float] = {1: 0.5, 2: 0.2, 3: 0.0}


@dataclass(frozen=True, slots=True)
class OpenAdrConfig:
    """The ``[uplink.openadr]`` settings. Paths are the VEN's certificate, its EC P-256 key and the CA that issued
    the VTN's TLS certificate; ``vtn_fingerprint`` pins the VTN's certificate (SHA-256, or OpenADR's 10-byte form).
    """

    vtn_url: str
    ven_name: str
    cert: Path
    key: Path
    ca: Path
    vtn_fingerprint: str
    der_ids: tuple[str, ...]
    authority: Authority = Authority.AGGREGATOR
    ven_id: str | None = None
    simple_levels: Mapping[int, float] = field(default_factory=lambda: dict(DEFAULT_SIMPLE_LEVELS))
    load_dispatch_sign: Literal["load", "generation"] = "load"
    report_min_period_s: int = 10
    report_max_period_s: int = 3600
    nominal_hz: int = 50
    nominal_v: int = 230
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if not self.vtn_url.startswith("https://"):
            raise ConfigError(f"{_KEY}.vtn_url: {self.vtn_url!r} is not https; fix: the VTN must be reached over "
                              "mutual TLS (https://host:port/OpenADR2/Simple/2.0b)")
        if not self.ven_name.strip():
            raise ConfigError(f"{_KEY}.ven_name: empty; fix: name this VEN as the VTN knows it")
        normalize_fingerprint(self.vtn_fingerprint, key=f"{_KEY}.vtn_fingerprint")
        if not self.der_ids or len(set(self.der_ids)) != len(self.der_ids) or not all(self.der_ids):
            raise ConfigError(f"{_KEY}.der_ids: {list(self.der_ids)!r}; fix: list each DER id once")
        for level, fraction in self.simple_levels.items():
            if level not in (1, 2, 3) or not 0.0 <= fraction <= 1.0:
                raise ConfigError(f"{_KEY}.simple_levels: {level} = {fraction}; fix: levels 1-3 map to a fraction "
                                  "of the export rating in [0, 1] (level 0 is normal operation)")
        if self.load_dispatch_sign not in ("load", "generation"):
            raise ConfigError(f"{_KEY}.load_dispatch_sign: {self.load_dispatch_sign!r}; fix: 'load' (OpenADR: "
                              "positive = consumption) or 'generation'")
        if not 1 <= self.report_min_period_s <= self.report_max_period_s:
            raise ConfigError(f"{_KEY}.report_min_period_s/report_max_period_s: {self.report_min_period_s}/"
                              f"{self.report_max_period_s}; fix: whole seconds, 1 <= min <= max")


def _ignore(_: Sequence[str]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class VenHooks:
    """What a VEN (any OpenADR version) reads from the gateway and hands back to it.

    ``measurements``: the latest fresh measurement per device id. ``envelope``: the envelope in force (None when
    there is none). ``capabilities``: per DER the gateway controls, the most it can export/import now (a DER
    missing here is one it does not control). ``on_commands``: receives the commands of an event the VEN opted
    into; raising opts the event out. ``on_cancel``: command ids withdrawn (event cancelled or modified).
    Each may be a plain function or return an awaitable.
    """

    measurements: Callable[[], Mapping[str, Measurement]]
    envelope: Callable[[], Envelope | None]
    capabilities: Callable[[], Mapping[str, DerLimit]]
    on_commands: Callable[[Sequence[Command]], Awaitable[None] | None]
    on_cancel: Callable[[Sequence[str]], Awaitable[None] | None] = _ignore


class Ven(Protocol):
    """What the daemon needs of any VEN: this OpenADR 2.0b one now, an OpenADR 3 one later."""

    @property
    def registered(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def report_now(self, *, telemetry: bool = True, envelope: bool = True,
                         timeout_s: float = 30.0) -> Sequence[object]: ...


class OpenAdrVen(StartStop):
    """An OpenADR 2.0b VEN for this gateway. Building it checks the key and the settings and does nothing else;
    ``start`` (or ``async with``) registers with the VTN, ``stop`` ends polling and reporting."""

    def __init__(self, config: OpenAdrConfig, hooks: VenHooks, *, clock: Callable[[], float] = time.time) -> None:
        check_signing_key(config.key, config.cert, key_name=f"{_KEY}.key")
        self._config = config
        self._hooks = hooks
        self._clock = clock
        self._pin = normalize_fingerprint(config.vtn_fingerprint, key=f"{_KEY}.vtn_fingerprint")
        self._client: GatewayClient | None = None
        self._context: PinnedClientContext | None = None
        self._vtn_id: str | None = None
        self._issued: dict[str, tuple[tuple[str, ...], float]] = {}
        self._clock_offset: float | None = None
        self._last_status: int | None = None
        self._problem: tuple[str, str] | None = None
        self._awaiting_validation = False
        self._log = structlog.get_logger(__name__).bind(uplink="openadr", ven_name=config.ven_name)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register with the VTN, register the reports, sync events; then openleadr polls on the VTN's schedule.

        Raises UplinkRefused when the VTN is not the pinned one, its answers do not verify, or it refuses us;
        UplinkUnavailable when it cannot be reached."""
        if self._client is not None:
            return
        config = self._config
        self._context = pinned_client_context(ca=config.ca, cert=config.cert, key=config.key, pin=self._pin,
                                              check_hostname=config.check_hostname)
        client = GatewayClient(ven_name=config.ven_name, vtn_url=config.vtn_url, cert=str(config.cert),
                               key=str(config.key), ca_file=str(config.ca), ven_id=config.ven_id,
                               vtn_fingerprint=openadr_fingerprint(self._pin), show_fingerprint=False,
                               check_hostname=config.check_hostname)
        client.client_session = self._session(self._context)
        sources = ReportSources(self._hooks.measurements, self._hooks.envelope, self._hooks.capabilities,
                                self._clock)
        sampling = objects.SamplingRate(min_period=timedelta(seconds=config.report_min_period_s),
                                        max_period=timedelta(seconds=config.report_max_period_s), on_change=False)
        for point in report_points(config.der_ids, sources, hertz=config.nominal_hz, voltage=config.nominal_v):
            client.add_report(callback=point.read, resource_id=point.resource_id, measurement=point.measurement,
                              report_specifier_id=point.report_specifier_id, r_id=point.r_id,
                              report_type=point.report_type, reading_type=point.reading_type,
                              sampling_rate=sampling, report_duration=timedelta(seconds=config.report_max_period_s))
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        client.add_hook("after_receive_xml", self._after_receive)
        client.add_hook("before_parse_xml", self._verified)
        client.add_hook("after_parse_xml", self._after_parse)
        self._client = client
        try:
            await client.run()
        except BaseException:
            await self.stop()
            raise
        if not client.registration_id:
            error = self._registration_error()
            await self.stop()
            raise error
        self._log.info("openadr registered", ven_id=client.ven_id, vtn_id=self._vtn_id,
                       poll_s=client.poll_frequency.total_seconds(), clock_offset_s=self._clock_offset,
                       report_requests=len(client.report_requests))
        self._check_clock()

    async def stop(self) -> None:
        """Stop polling and reporting and close the connection (idempotent)."""
        client, self._client = self._client, None
        if client is None:
            return
        await client.stop()
        task = client.report_queue_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    # -- status ------------------------------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self._client is not None and bool(self._client.registration_id)

    @property
    def ven_id(self) -> str | None:
        return None if self._client is None else self._client.ven_id

    @property
    def vtn_id(self) -> str | None:
        return self._vtn_id

    @property
    def clock_offset_s(self) -> float | None:
        """VTN clock minus ours, from the last answer's HTTP ``Date`` (1 s resolution); None before any answer."""
        return self._clock_offset

    @property
    def signature_window_s(self) -> float:
        return SIGNATURE_WINDOW_S

    # -- reports -----------------------------------------------------------------------------------------------
    async def report_now(self, *, telemetry: bool = True, envelope: bool = True,
                         timeout_s: float = 30.0) -> tuple[ReportAnswer, ...]:
        """Send the telemetry and/or envelope report now (for each report the VTN requested) and wait for the
        VTN's answers (and for any report queued before them). Raises UplinkRefused naming the cause when the VTN
        did not accept one, UplinkUnavailable when not registered or no answer came within ``timeout_s``."""
        client = self._client
        if client is None or not client.registration_id:
            raise UplinkUnavailable("the OpenADR VEN is not registered with its VTN; start it first")
        wanted = {TELEMETRY_SPECIFIER} if telemetry else set()
        wanted |= {ENVELOPE_SPECIFIER} if envelope else set()
        before = client.answer_count
        for request in list(client.report_requests):
            if request["report_specifier_id"] in wanted and request["r_ids"]:
                await client.update_report(request["report_request_id"])
        try:
            async with asyncio.timeout(timeout_s):
                await client.wait_reports_sent()
        except TimeoutError as exc:
            raise UplinkUnavailable(f"the VTN did not answer the reports within {timeout_s:g} s") from exc
        answers = tuple(answer for answer in client.recent_answers(client.answer_count - before)
                        if answer.report_specifier_id in wanted)
        refused = [answer for answer in answers if not answer.accepted]
        if refused:
            first = refused[0]
            raise UplinkRefused("report-refused", (
                f"the VTN did not accept report {first.report_specifier_id} (code {first.code}: "
                f"{first.description}); if the clocks disagree, note openleadr refuses any message signed more "
                f"than {SIGNATURE_WINDOW_S:g} s ago (VTN clock offset {self._clock_offset} s): sync both clocks"))
        return answers

    # -- events ------------------------------------------------------------------------------------------------
    async def _on_event(self, event: dict[str, Any]) -> str:
        try:
            decision = decide_event(event, policy=self._policy(), capabilities=self._hooks.capabilities(),
                                    now=self._clock())
            await self._apply(decision)
        except Exception as exc:  # the VTN gets an opt-out; nothing partial is left actuating
            self._log.exception("openadr event failed: opted out", error=f"{type(exc).__name__}: {exc}")
            return "optOut"
        return "optIn" if decision.opt_in else "optOut"

    def _policy(self) -> EventPolicy:
        return EventPolicy(issuer=self._vtn_id or self._config.vtn_url, authority=self._config.authority,
                           simple_levels=self._config.simple_levels,
                           load_dispatch_sign=self._config.load_dispatch_sign)

    async def _apply(self, decision: EventDecision) -> None:
        now = self._clock()
        for event_id in [eid for eid, (_, until) in self._issued.items() if until <= now]:
            del self._issued[event_id]
        previous, _ = self._issued.pop(decision.event_id, ((), 0.0))
        current = tuple(command.command_id for command in decision.commands)
        withdrawn = [command_id for command_id in previous if command_id not in current]
        if withdrawn:
            await _maybe_await(self._hooks.on_cancel(withdrawn))
        log = self._log.bind(event_id=decision.event_id, modification=decision.modification_number,
                             opt="optIn" if decision.opt_in else "optOut", reason=decision.reason,
                             commands=len(decision.commands), withdrawn=len(withdrawn))
        if decision.commands:
            try:
                await _maybe_await(self._hooks.on_commands(decision.commands))
            except Exception:
                log.exception("openadr commands not accepted by the gateway: opted out")
                raise
            self._issued[decision.event_id] = (current, max(c.valid_until for c in decision.commands))
        if decision.opt_in:
            log.info("openadr event")
        else:
            log.warning("openadr event opted out: nothing actuated")

    # -- observation of the exchange (registration diagnostics, clock offset) ------------------------------------
    def _session(self, context: PinnedClientContext) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_request_end)
        trace.on_request_exception.append(self._on_request_exception)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     headers={"content-type": "application/xml"},
                                     timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=10),
                                     trace_configs=[trace])

    async def _on_request_end(self, _: aiohttp.ClientSession, __: SimpleNamespace,
                              params: aiohttp.TraceRequestEndParams) -> None:
        self._last_status = params.response.status
        if params.response.status != 200:
            self._problem = ("refused", f"HTTP {params.response.status} from {params.url}")
        date = params.response.headers.get("Date")
        if date:
            with contextlib.suppress(TypeError, ValueError):
                self._clock_offset = email.utils.parsedate_to_datetime(date).timestamp() - time.time()

    async def _on_request_exception(self, _: aiohttp.ClientSession, __: SimpleNamespace,
                                    params: aiohttp.TraceRequestExceptionParams) -> None:
        self._problem = ("unreachable", f"{type(params.exception).__name__}: {params.exception}")

    async def _after_receive(self, _: str) -> None:
        self._awaiting_validation = self._last_status == 200

    async def _verified(self, _: str) -> None:
        self._awaiting_validation = False

    async def _after_parse(self, message_type: str, payload: dict[str, Any]) -> None:
        if message_type == "oadrCreatedPartyRegistration" and payload.get("vtn_id"):
            self._vtn_id = str(payload["vtn_id"])
        response = payload.get("response") or {}
        if response.get("response_code") not in (None, 200, "200"):
            self._problem = ("refused", f"OpenADR {response.get('response_code')}: "
                                        f"{response.get('response_description')}")

    def _registration_error(self) -> Exception:
        url = self._config.vtn_url
        if self._context is not None and self._context.refused:
            return UplinkRefused("pin-mismatch", (
                f"the VTN at {url} presented a certificate with SHA-256 {self._context.refused}, not the pinned "
                f"{self._pin}; nothing was sent to it. Fix: {_KEY}.vtn_fingerprint, if the VTN's certificate "
                "really changed"))
        if self._awaiting_validation:
            return UplinkRefused("bad-signature", (
                f"the answers of the VTN at {url} did not verify: not signed by the pinned certificate "
                f"({openadr_fingerprint(self._pin)}), or signed more than {SIGNATURE_WINDOW_S:g} s ago by "
                f"openleadr's clock (offset {self._clock_offset} s): check {_KEY}.vtn_fingerprint and both clocks"))
        if self._problem is not None and self._problem[0] == "unreachable":
            return UplinkUnavailable(f"the VTN at {url} cannot be reached: {self._problem[1]}")
        if self._problem is not None:
            return UplinkRefused("refused", f"the VTN at {url} refused registration: {self._problem[1]}")
        return UplinkRefused("not-registered", f"the VTN at {url} did not register this VEN (no registrationID)")

    def _check_clock(self) -> None:
        if self._clock_offset is not None and abs(self._clock_offset) > SIGNATURE_WINDOW_S / 2:
            self._log.warning("openadr clock offset eats the signature window", clock_offset_s=self._clock_offset,
                              window_s=SIGNATURE_WINDOW_S, fix="sync this clock and the VTN's (NTP)")


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result

