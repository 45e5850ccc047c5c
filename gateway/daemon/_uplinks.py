"""The daemon's uplinks, built from ``[uplink]``: signed messages up (MQTT through the durable outbox, OpenADR
reports), signed commands down (MQTT ``cmd`` and OpenADR events) into dispatch.

Owns :class:`Uplinks`: it opens the gateway's signing key, the sequence numbers and the command replay state
under ``uplink.state_dir``, starts the MQTT connection and the outbox, builds the OpenADR VEN, and runs their
tasks in the daemon's TaskGroup: telemetry at ``telemetry_interval_s``, the command consumer (verify, then
dispatch; a refusal is audited and reported as an event), and the VEN (registration retried with backoff, then an
envelope report whenever the twin publishes). Nothing here stops the daemon at run time: a broker or VTN that is
down is logged and retried while the outbox keeps what is to be sent. A problem found while opening (a key that is
unreadable, of the wrong kind or group-readable; a broken state file) is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Literal

import structlog

from gateway.config import Config, UplinkConfig
from gateway.daemon._build import Gateway, device_states, fresh_measurements
from gateway.daemon._control import Control
from gateway.errors import CommandRejected, ConfigError, GridedgeError, UplinkRefused, UplinkUnavailable
from gateway.types import Command, DerLimit, Envelope, Measurement
from gateway.uplink import (
    CommandVerifier,
    EnvelopeMessage,
    EventMessage,
    Sequencer,
    Signer,
    StatusMessage,
    TelemetryMessage,
    new_id,
    sign_message,
    trusted_signer,
)
from gateway.uplink._mqtt import MqttSettings, MqttUplink
from gateway.uplink._openadr import DEFAULT_SIMPLE_LEVELS, OpenAdrConfig, OpenAdrVen, VenHooks
from gateway.uplink._outbox import MessageKind, Outbox

log = structlog.get_logger("gateway.daemon.uplinks")

#: Commands waiting for verification; more are dropped (a flood must not grow memory).
COMMAND_QUEUE = 64
_VEN_BACKOFF_S = (1.0, 300.0)
EventValue = str | int | float | bool | None


@contextlib.contextmanager
def _keyed(key: str) -> Iterator[None]:
    """A ConfigError (or OSError) raised while opening ``key``'s files names the key."""
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(key) else f"{key}: {text}") from exc
    except OSError as exc:
        raise ConfigError(f"{key}: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''}) — fix the path or "
                          "its permissions") from exc


class Uplinks:
    """Every configured uplink of one gateway (see the module docstring). Construction does no I/O."""

    def __init__(self, config: Config, gw: Gateway, control: Control | None) -> None:
        assert config.uplink is not None
        self.config: UplinkConfig = config.uplink
        self.site = config.site.id
        self.issuer = config.site.gateway_id
        self.gw = gw
        self.control = control
        self.state_dir = Path(self.config.state_dir)
        self.signer: Signer | None = None
        self.mqtt: MqttUplink | None = None
        self.outbox: Outbox | None = None
        self.verifier: CommandVerifier | None = None
        self.ven: OpenAdrVen | None = None
        self.envelope_seq = Sequencer(self.state_dir / "envelope.seq", start=1)
        self._seq = {kind: Sequencer(self.state_dir / f"{kind}.seq", start=1)
                     for kind in ("telemetry", "status", "event")}
        self._commands: asyncio.Queue[bytes] = asyncio.Queue(COMMAND_QUEUE)
        self._dropped = 0
        self._latest: Envelope | None = None
        self._envelope_changed = asyncio.Event()

    # --- opening --------------------------------------------------------------------------------------------
    async def open(self, stack: AsyncExitStack) -> None:
        """Open keys and state, start MQTT and the outbox, build the VEN; closed by ``stack`` in reverse."""
        cfg = self.config
        with _keyed("uplink.state_dir"):
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            for sequencer in (self.envelope_seq, *self._seq.values()):
                sequencer.load()
        if cfg.signing is not None:
            with _keyed("uplink.signing"):
                self.signer = Signer.from_files(cfg.signing.cert, cfg.signing.key)
        if cfg.headends:
            with _keyed("uplink.headends"):
                allowed = dict(trusted_signer(h.cert, h.authority, h.issuer) for h in cfg.headends)
            self.verifier = CommandVerifier(allowed, replay_window_s=cfg.command_replay_window_s,
                                            max_clock_skew_s=cfg.command_clock_skew_s,
                                            state_path=self.state_dir / "command-replay.json",
                                            gateway=self.issuer, source="mqtt")
            with _keyed("uplink.state_dir"):
                self.verifier.load_state()
        if cfg.mqtt is not None:
            m = cfg.mqtt
            with _keyed("uplink.mqtt"):
                settings = MqttSettings(host=m.host, port=m.port, ca=Path(m.ca), cert=Path(m.cert), key=Path(m.key),
                                        site=self.site, gateway_id=self.issuer, client_id=m.client_id,
                                        keepalive_s=m.keepalive_s)
                self.mqtt = MqttUplink(settings, on_command=self._on_command, status_payload=self._status)
                await stack.enter_async_context(self.mqtt)
            with _keyed("uplink.state_dir"):
                self.outbox = Outbox(self.state_dir / "outbox.sqlite", self.mqtt)
                await stack.enter_async_context(self.outbox)
        if cfg.openadr is not None:
            self.ven = OpenAdrVen(self._openadr_config(), self._hooks())
            stack.push_async_callback(self.ven.stop)

    def _openadr_config(self) -> OpenAdrConfig:
        o = self.config.openadr
        assert o is not None
        policy = self.gw.policy
        der_ids = o.der_ids if o.der_ids is not None else tuple(policy.customer_limits) if policy else ()
        return OpenAdrConfig(vtn_url=o.vtn_url, ven_name=o.ven_name, cert=Path(o.cert), key=Path(o.key),
                             ca=Path(o.ca), vtn_fingerprint=o.vtn_fingerprint, der_ids=tuple(der_ids),
                             authority=o.authority, ven_id=o.ven_id,
                             simple_levels=dict(o.simple_levels or DEFAULT_SIMPLE_LEVELS),
                             load_dispatch_sign=o.load_dispatch_sign, report_min_period_s=o.report_min_period_s,
                             report_max_period_s=o.report_max_period_s, nominal_hz=o.nominal_hz,
                             nominal_v=o.nominal_v, check_hostname=o.check_hostname)

    def _hooks(self) -> VenHooks:
        def capabilities() -> Mapping[str, DerLimit]:
            policy = self.gw.policy
            return dict(policy.customer_limits) if policy is not None else {}

        def measurements() -> Mapping[str, Measurement]:
            return fresh_measurements(self.gw.fleet.snapshot())

        return VenHooks(measurements=measurements, envelope=lambda: self._latest, capabilities=capabilities,
                        on_commands=self._on_openadr_commands, on_cancel=self._on_openadr_cancel)

    # --- tasks ----------------------------------------------------------------------------------------------
    def start(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Start the uplinks' tasks in the daemon's TaskGroup."""
        tasks = []
        if self.outbox is not None:
            tasks.append(tg.create_task(self._telemetry_loop(), name="telemetry"))
        if self.verifier is not None:
            tasks.append(tg.create_task(self._command_loop(), name="commands"))
        if self.ven is not None:
            tasks.append(tg.create_task(self._ven_loop(), name="openadr"))
        return tasks

    async def _telemetry_loop(self) -> None:
        interval = self.config.telemetry_interval_s
        while True:
            await asyncio.sleep(interval)
            measurements = fresh_measurements(self.gw.fleet.snapshot())
            if not measurements or self.signer is None:
                continue
            now = time.time()
            message = TelemetryMessage.from_measurements(measurements.values(), issuer=self.issuer,
                                                         seq=self._seq["telemetry"].next(), issued_at=now)
            await self._put(MessageKind.TELEMETRY, sign_message(self.signer, message))

    async def _put(self, kind: MessageKind, payload: bytes) -> None:
        if self.outbox is None:
            return
        try:
            await self.outbox.put(kind, payload)
        except (UplinkUnavailable, ValueError) as exc:
            log.error("outbox refused a message", kind=kind.value, error=str(exc))

    def _status(self, state: str) -> bytes:
        """The signed ``status`` payload for the MQTT birth (``online``) and will (``offline``)."""
        assert self.signer is not None
        snapshot = self.gw.fleet.snapshot()
        devices = device_states(snapshot).values() if state == "online" else ()
        message = StatusMessage.from_states("online" if state == "online" else "offline", devices,
                                            issuer=self.issuer, seq=self._seq["status"].next(), issued_at=time.time())
        return sign_message(self.signer, message)

    # --- publishing -----------------------------------------------------------------------------------------
    async def publish_envelope(self, envelope: Envelope) -> None:
        """The twin's envelope, signed, to the outbox; and an OpenADR envelope report once registered."""
        self._latest = envelope
        self._envelope_changed.set()
        if self.signer is not None and self.outbox is not None:
            message = EnvelopeMessage.from_envelope(envelope, issued_at=time.time())
            await self._put(MessageKind.ENVELOPE, sign_message(self.signer, message))

    async def publish_event(self, kind: str, severity: Literal["info", "warning", "critical"], message: str,
                            data: Mapping[str, EventValue]) -> None:
        if self.signer is None or self.outbox is None:
            return
        event = EventMessage(id=new_id(), issuer=self.issuer, seq=self._seq["event"].next(), issued_at=time.time(),
                             kind=kind, severity=severity, message=message[:1000], data=dict(data))
        await self._put(MessageKind.EVENTS, sign_message(self.signer, event))

    # --- commands -------------------------------------------------------------------------------------------
    def _on_command(self, payload: bytes) -> None:
        """MQTT ``cmd`` (on the loop thread): queued for the consumer; a full queue drops it, logged."""
        try:
            self._commands.put_nowait(payload)
        except asyncio.QueueFull:
            self._dropped += 1
            log.warning("command dropped: too many waiting", waiting=COMMAND_QUEUE, dropped=self._dropped)

    async def _command_loop(self) -> None:
        assert self.verifier is not None
        while True:
            raw = await self._commands.get()
            try:
                await self._command(raw)
            except GridedgeError as exc:  # the audit log refused: nothing was actuated
                log.error("command not handled", error=f"{type(exc).__name__}: {exc}")

    async def _command(self, raw: bytes) -> None:
        assert self.verifier is not None
        now = time.time()
        try:
            command = await asyncio.to_thread(self.verifier.verify, raw, now)
        except CommandRejected as exc:
            if self.control is not None:
                await self.control.reject(exc, source="mqtt", raw=raw, now=now)
            await self.publish_event("command-rejected", "warning", f"a command was refused: {exc.reason}",
                                     {"code": exc.reason, "source": "mqtt"})
            return
        await self._dispatch([command])

    async def _dispatch(self, commands: Sequence[Command]) -> None:
        if self.control is None:
            return
        for command in commands:
            decision = await self.control.submit(command, time.time())
            sp = decision.setpoint
            await self.publish_event(
                "command-decision", "info" if decision.outcome in ("accepted", "clamped") else "warning",
                decision.reason,
                {"commandId": command.command_id, "issuer": command.issuer, "derId": command.der_id,
                 "outcome": decision.outcome, "code": decision.code, "requestedW": command.target_w,
                 "w": None if sp is None else sp.w, "binding": decision.binding, "source": command.source})

    async def _on_openadr_commands(self, commands: Sequence[Command]) -> None:
        await self._dispatch(commands)

    async def _on_openadr_cancel(self, command_ids: Sequence[str]) -> None:
        """The VTN cancelled or modified an event: its withdrawn commands leave dispatch (audited), and each DER
        concerned falls back to the next command in rank or to its cap; a signed event says so upward."""
        if self.control is None:
            return
        reason = "withdrawn by the OpenADR VTN: event cancelled or modified"
        try:
            decisions = await self.control.withdraw(command_ids, reason, time.time(), source="openadr")
        except GridedgeError as exc:  # the audit log refused: nothing was decided
            log.error("openadr withdrawal not handled", command_ids=list(command_ids),
                      error=f"{type(exc).__name__}: {exc}")
            raise
        for decision in decisions:
            sp = decision.setpoint
            await self.publish_event(
                "command-decision", "info", decision.reason,
                {"commandId": decision.command_id, "derId": decision.der_id, "outcome": decision.outcome,
                 "w": None if sp is None else sp.w, "binding": decision.binding, "source": "openadr"})

    # --- OpenADR --------------------------------------------------------------------------------------------
    async def _ven_loop(self) -> None:
        ven = self.ven
        assert ven is not None
        delay, rng = _VEN_BACKOFF_S[0], random.Random()
        while True:
            try:
                await ven.start()
            except UplinkRefused as exc:
                log.error("openadr registration refused", reason=exc.reason, error=str(exc), retry_in_s=delay)
            except UplinkUnavailable as exc:
                log.warning("openadr vtn unavailable", error=str(exc), retry_in_s=delay)
            except Exception as exc:
                log.exception("openadr start failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
            else:
                break
            await asyncio.sleep(delay * rng.uniform(0.8, 1.2))
            delay = min(_VEN_BACKOFF_S[1], delay * 2)
        while True:
            await self._envelope_changed.wait()
            self._envelope_changed.clear()
            if self._latest is None or not ven.registered:
                continue
            try:
                await ven.report_now(telemetry=False, envelope=True, timeout_s=10.0)
            except (UplinkUnavailable, UplinkRefused) as exc:
                log.warning("openadr envelope report not delivered", error=str(exc))


def twin_sequencer(uplinks: Uplinks | None) -> Sequencer:
    """Envelope sequence numbers: durable under ``uplink.state_dir`` when there is one, else in memory."""
    return uplinks.envelope_seq if uplinks is not None else Sequencer(start=1)


Hook = Callable[[Envelope, float], object]
