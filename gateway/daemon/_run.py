"""Running the gateway: resources on one ``AsyncExitStack``, every long-lived task in one ``TaskGroup``.

Tasks: the fleet's pollers; the control loop (once a second: staleness into dispatch, expiries, every DER
written; systemd's watchdog fed only when a cycle completes); the twin (every ``twin.interval_s``: the fleet's
state -> the segment's envelope in a worker thread -> dispatch -> signed to the uplinks); and the uplinks' own
(telemetry, commands, OpenADR). Each part runs only when its section is configured: ``[site]`` and
``[[devices]]`` alone poll and nothing else. SIGTERM/SIGINT start an ordered shutdown bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import structlog

from gateway.audit import AuditLog
from gateway.config import Config
from gateway.daemon._build import Gateway, build, device_states
from gateway.daemon._control import Control
from gateway.daemon._uplinks import Uplinks, twin_sequencer
from gateway.devices import Reading
from gateway.errors import AuditLogError, ConfigError
from gateway.sdnotify import Notifier
from gateway.segment import Segment
from gateway.twin import TwinError
from gateway.types import Envelope
from gateway.uplink import Sequencer

log = structlog.get_logger("gateway.daemon")

CYCLE_S = 1.0

#: ``on_envelope(envelope, seconds it took, the segment)``: the segment says what bound the envelope
#: (``last_binding``) and which operating point it started from (``last_operating_point``).
OnEnvelope = Callable[[Envelope, float, Segment], object]


def _open_audit(config: Config) -> AuditLog:
    assert config.dispatch is not None
    try:
        return AuditLog.open(config.dispatch.audit_log, recover_torn_tail=config.dispatch.audit_recover_torn_tail)
    except AuditLogError as exc:
        raise ConfigError(f"dispatch.audit_log: {exc}") from exc


def _open_segment(config: Config) -> Segment:
    try:
        return Segment(config)
    except (TwinError, ValueError, OSError) as exc:
        raise ConfigError(f"twin: the feeder segment cannot be built: {exc}") from exc


def _watched(config: Config, gw: Gateway) -> set[str]:
    """Devices whose staleness puts the default envelope in force: the DERs, and the meters the twin reads."""
    watched = set(gw.policy.customer_limits) if gw.policy is not None else set()
    if config.twin is not None:
        watched |= {d.device for d in config.twin.ders}
        watched |= {d.id for d in config.devices if d.role == "meter"}
    return watched


async def _control_loop(gw: Gateway, notifier: Notifier, control: Control | None) -> None:
    """Once a second: the fleet's state into dispatch and every DER written; the watchdog is fed only after a
    cycle that completed (an audit log that refuses, for one, leaves it unfed: systemd restarts us)."""
    failing = False
    while True:
        started = time.monotonic()
        snapshot = gw.fleet.snapshot()
        stale = {d: s.stale_reason or "stale" for d, s in snapshot.items() if s.stale}
        try:
            if control is not None:
                await control.cycle(stale, time.time())
        except Exception as exc:
            if not failing:
                log.exception("control cycle failed: the watchdog is not fed", error=f"{type(exc).__name__}: {exc}")
            failing = True
        else:
            if failing:
                log.info("control cycle recovered")
            failing = False
            notifier.status(f"{len(snapshot)} devices, {len(stale)} stale")
            notifier.watchdog()
        await asyncio.sleep(max(0.0, CYCLE_S - (time.monotonic() - started)))


async def _twin_loop(config: Config, gw: Gateway, segment: Segment, sequence: Sequencer, control: Control | None,
                     uplinks: Uplinks | None, on_envelope: OnEnvelope | None) -> None:
    """Every ``twin.interval_s``: a new envelope (certified, or the default with why) into dispatch and up."""
    assert config.twin is not None
    interval = config.twin.interval_s
    # the first envelope once every device had its first poll (before that all would be stale)
    await asyncio.sleep(min(interval, 1.5 * max((d.poll_interval_s for d in config.devices), default=1.0)))
    while True:
        started = time.monotonic()
        now = time.time()
        snapshot = gw.fleet.snapshot()
        states = device_states(snapshot)
        stale = {d: s.stale_reason or "stale" for d, s in snapshot.items() if s.stale}
        try:
            envelope = await asyncio.to_thread(segment.envelope, states, now=now, sequence=sequence.next())
        except Exception as exc:  # a bug, not twin trouble (that gives the default envelope): fail safe
            log.exception("twin failed", error=f"{type(exc).__name__}: {exc}")
            if control is not None:
                await control.set_envelope(None, now, problem=f"twin failed: {type(exc).__name__}: {exc}")
        else:
            elapsed = time.monotonic() - started
            cert = envelope.certificate
            log.info("envelope", sequence=envelope.sequence, certified=envelope.certified, reason=envelope.reason,
                     ms=round(elapsed * 1e3, 1), ac_solves=None if cert is None else cert.ac_solves,
                     binding=segment.last_binding,
                     operating_point=segment.last_operating_point and segment.last_operating_point.as_json(),
                     limits={lim.der_id: [lim.export_w, lim.import_w] for lim in envelope.limits})
            if control is not None:
                await control.set_envelope(envelope, now, stale=stale)
            if on_envelope is not None:
                on_envelope(envelope, elapsed, segment)
            if uplinks is not None:
                await uplinks.publish_envelope(envelope)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def run(config: Config, *, duration_s: float | None = None,
              on_reading: Callable[[Reading], object] | None = None, notifier: Notifier | None = None,
              gateway: Gateway | None = None, on_envelope: OnEnvelope | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT, or for ``duration_s`` seconds when given.

    ``gateway`` is what :func:`build` made of ``config``, when the caller needs it first (the demo does).
    ``on_envelope(envelope, seconds, segment)`` hears each envelope the twin made, how long it took, and the
    segment (what bound it, the operating point it started from). A problem found
    while starting (a key, the audit log, the feeder) raises :class:`ConfigError` before READY.
    """
    notifier = notifier or Notifier()
    gw = gateway or build(config)
    structlog.contextvars.bind_contextvars(site_id=config.site.id, gateway_id=config.site.gateway_id)
    if on_reading is not None:
        for poller in gw.fleet:
            poller.add_listener(on_reading)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        async with AsyncExitStack() as stack:
            for endpoint in gw.endpoints.values():
                await stack.enter_async_context(endpoint)
            control = None
            if gw.policy is not None:
                audit = _open_audit(config)
                stack.callback(audit.close)
                control = Control(gw.policy, audit, gw.devices, watched=_watched(config, gw))
            segment = await asyncio.to_thread(_open_segment, config) if config.twin is not None else None
            uplinks = Uplinks(config, gw, control) if config.uplink is not None else None
            if uplinks is not None:
                await uplinks.open(stack)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(gw.fleet.run(), name="fleet"),
                         tg.create_task(_control_loop(gw, notifier, control), name="control")]
                if segment is not None:
                    tasks.append(tg.create_task(_twin_loop(config, gw, segment, twin_sequencer(uplinks), control,
                                                           uplinks, on_envelope), name="twin"))
                if uplinks is not None:
                    tasks += uplinks.start(tg)
                log.info("started", devices=len(gw.devices), endpoints=len(gw.endpoints),
                         dispatch=control is not None, twin=segment is not None,
                         mqtt=uplinks is not None and uplinks.mqtt is not None,
                         openadr=uplinks is not None and uplinks.ven is not None)
                notifier.ready(f"{len(gw.devices)} devices")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=duration_s)
                notifier.stopping()
                log.info("stopping", after_s=round(time.monotonic() - started, 1))
                for task in tasks:
                    task.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped")
