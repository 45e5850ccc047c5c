"""The control side of the daemon: dispatch fed from the fleet and the twin, and every DER kept written.

Owns :class:`Control`: the :class:`~gateway.dispatch.Dispatcher` (its audit log opened from ``[dispatch]``), the
devices' staleness fed into it each cycle, new envelopes and commands handed to it, and a reconcile loop per
DER that writes what dispatch wants and re-writes it before the device's reversion timer runs out:

* a DER with an active setpoint gets the setpoint (:func:`~gateway.dispatch.apply_setpoint`);
* any other DER gets its cap: the envelope in force and the customer's limits, as limits
  (:func:`~gateway.dispatch.apply_cap`). A 704 device keeps its export cap (``WMaxLimPct``) under a setpoint
  (``WSet``) too: they are separate points;
* when a setpoint ends on a 704 device its ``WSet`` is released; on 123/124 the cap overwrites it.

A write happens when what dispatch wants changed (:func:`~gateway.dispatch.setpoint_differs`,
:func:`~gateway.dispatch.cap_differs`: a tighter cap at once, a looser one only beyond ``[dispatch]
cap_deadband_pct`` of the cap held) or as a **refresh** of what is held, once half the reversion timer programmed
with the last write has passed (audited with ``refresh``): a new envelope that leaves the clamp where it was, or
loosens it by less than the deadband, writes nothing.
Every write also programs what the device reverts to when its timer runs out, where the device holds such a value
(704): the DER's cap under the default envelope (:func:`~gateway.dispatch.default_cap`), so a dead gateway leaves
it at the default envelope (fail-safe layer 2). 123/124 timers revert to the device's own default.

Writes that fail are logged (once per failure episode; the audit log has every one) and retried with backoff;
they never stop the loop. The dispatcher is synchronous and fsyncs its audit lines: its calls run in a worker
thread, one at a time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from gateway.audit import AuditLog
from gateway.devices import SunSpecDevice
from gateway.dispatch import (
    Cap,
    Decision,
    Dispatcher,
    DispatchPolicy,
    InForce,
    apply_cap,
    apply_setpoint,
    cap_differs,
    cap_for,
    default_cap,
    release,
    setpoint_differs,
)
from gateway.errors import CommandRejected, DeviceError
from gateway.sunspec import SunSpecControls
from gateway.types import Command, Envelope, Setpoint

log = structlog.get_logger("gateway.daemon.control")
T = TypeVar("T")

#: A write is re-done once this fraction of its reversion timer has passed.
REFRESH_AT = 0.5
_BACKOFF_MAX_S = 30.0
_WRITE_TIMEOUT_S = 20.0


@dataclass
class _Der:
    """What the reconcile loop knows of one DER: its controls and what it last wrote there, and when."""

    device: SunSpecDevice
    lock: asyncio.Lock
    controls: SunSpecControls | None = None
    setpoint: Setpoint | None = None  # written and held
    setpoint_at: float = -math.inf
    setpoint_ends: float = -math.inf  # when the timer programmed with it runs out
    cap: Cap | None = None
    cap_at: float = -math.inf
    cap_ends: float = -math.inf
    failures: int = 0
    retry_at: float = -math.inf


def _due(written_at: float, ends_at: float, now: float) -> bool:
    """A write whose reversion timer is past its refresh point."""
    return now >= written_at + (ends_at - written_at) * REFRESH_AT


class Control:
    """Dispatch driven by the daemon (see the module docstring). ``watched``: the devices whose staleness puts
    the default envelope in force (the envelope holders and the meters the twin reads)."""

    def __init__(self, policy: DispatchPolicy, audit: AuditLog, devices: Mapping[str, SunSpecDevice], *,
                 watched: Iterable[str]) -> None:
        self.policy = policy
        self.audit = audit
        self.dispatcher = Dispatcher(policy, audit)
        self._lock = asyncio.Lock()
        self._ders = {d: _Der(devices[d], asyncio.Lock()) for d in policy.customer_limits}
        self._watched = frozenset(watched)
        self._stale: dict[str, str] | None = None
        self.in_force: InForce | None = None

    # --- state in (each runs the dispatcher in a worker thread, one call at a time) ---------------------------
    async def _call(self, fn: Callable[[], T]) -> T:
        async with self._lock:
            result = await asyncio.to_thread(fn)
            self.in_force = await asyncio.to_thread(self.dispatcher.in_force, time.time())
            return result

    async def set_envelope(self, envelope: Envelope | None, now: float, *, problem: str | None = None,
                           stale: Mapping[str, str] | None = None) -> None:
        """A new envelope from the twin (or none, and why): DERs are re-written at once where it changes them.

        ``stale``: the staleness of the snapshot the twin used, so dispatch judges the envelope on the same view.
        """
        if stale is not None:
            watched = {d: why for d, why in stale.items() if d in self._watched}
            if watched != self._stale:
                self._stale = watched
                await self._call(lambda: self.dispatcher.set_stale(watched, now))
        await self._call(lambda: self.dispatcher.set_envelope(envelope, now, problem=problem))
        await self.actuate_all(now)

    async def submit(self, command: Command, now: float) -> Decision:
        """An authenticated command: decided (and recorded), then its DER written at once."""
        decision = await self._call(lambda: self.dispatcher.submit(command, now))
        if command.der_id in self._ders:
            await self.actuate(command.der_id, time.time())
        return decision

    async def withdraw(self, command_ids: Sequence[str], reason: str, now: float, *,
                       source: str | None = None) -> list[Decision]:
        """Commands their issuer withdrew: decided again (and recorded), then the DERs concerned written at once."""
        decisions = await self._call(lambda: self.dispatcher.withdraw(command_ids, reason, now, source=source))
        await asyncio.gather(*(self.actuate(d.der_id, time.time()) for d in decisions if d.der_id in self._ders))
        return decisions

    async def reject(self, error: CommandRejected, *, source: str, raw: bytes | None, now: float) -> None:
        """Record a command the verifier refused: it actuates nothing."""
        async with self._lock:
            await asyncio.to_thread(lambda: self.dispatcher.reject(error, source=source, now=now, raw=raw))

    async def cycle(self, stale: Mapping[str, str], now: float) -> None:
        """One control cycle: staleness in, expiries and re-clamps, then every DER reconciled."""
        watched = {d: why for d, why in stale.items() if d in self._watched}
        if watched != self._stale:
            self._stale = watched
            await self._call(lambda: self.dispatcher.set_stale(watched, now))
        else:
            await self._call(lambda: self.dispatcher.tick(now))
        await self.actuate_all(now)

    # --- writing --------------------------------------------------------------------------------------------
    async def actuate_all(self, now: float) -> None:
        await asyncio.gather(*(self.actuate(der, now) for der in self._ders))

    async def actuate(self, der_id: str, now: float) -> None:
        """Bring one DER to what dispatch wants now; never raises for device trouble (retried later)."""
        der = self._ders[der_id]
        if now < der.retry_at:
            return
        async with der.lock:
            try:
                async with asyncio.timeout(_WRITE_TIMEOUT_S):
                    await self._reconcile(der_id, der, now)
            except (DeviceError, TimeoutError, ValueError) as exc:
                der.failures += 1
                der.retry_at = time.time() + min(_BACKOFF_MAX_S, 2.0 ** (der.failures - 1))
                if isinstance(exc, DeviceError):
                    der.controls = None  # rediscover: the device may have changed or restarted
                (log.warning if der.failures == 1 else log.debug)(
                    "der write failed", der_id=der_id, error=f"{type(exc).__name__}: {exc}",
                    failures=der.failures, retry_in_s=round(der.retry_at - time.time(), 1))
            else:
                if der.failures:
                    log.info("der write recovered", der_id=der_id, after_failures=der.failures)
                der.failures = 0
                der.retry_at = -math.inf

    async def _controls(self, der: _Der) -> SunSpecControls:
        if der.controls is None:
            der.controls = await der.device.controls()
        return der.controls

    async def _reconcile(self, der_id: str, der: _Der, now: float) -> None:
        async with self._lock:
            setpoint = self.dispatcher.setpoint(der_id)
            in_force = self.in_force
        if setpoint is not None and now >= setpoint.valid_until:
            setpoint = None  # expired: the next tick releases it; keep the DER capped meanwhile
        controls = await self._controls(der)
        reversion = self.policy.reversion_s
        fallback_w = default_cap(der_id, self.policy).export_w  # what the device reverts to (704)
        separate = controls.has(704)  # 704: cap (WMaxLimPct) and setpoint (WSet) are separate points
        if setpoint is not None:
            fresh = setpoint_differs(der.setpoint, setpoint)
            # a timer programmed to end with the setpoint's validity needs no refresh: dispatch releases it then
            ends_with_it = der.setpoint_ends >= setpoint.valid_until - 1
            refresh = not fresh and _due(der.setpoint_at, der.setpoint_ends, now) and not ends_with_it
            if fresh or refresh:
                applied = await apply_setpoint(setpoint, controls, self.audit, reversion_s=reversion,
                                               fallback_w=fallback_w, refresh=refresh)
                if applied is not None:
                    der.setpoint, der.setpoint_at = setpoint, time.time()
                    der.setpoint_ends = der.setpoint_at + (applied.reversion_s or reversion)
                    if not separate:
                        der.cap = None  # the setpoint took the cap's points
            if not separate:
                return
        elif der.setpoint is not None:
            if separate:
                await release(der_id, controls, self.audit)  # WSet off; the cap below stays
            else:
                der.cap = None  # 123/124: the cap's points held the setpoint: write the cap again
            der.setpoint = None
        if in_force is None:
            return
        want = cap_for(der_id, in_force, self.policy)
        fresh = cap_differs(der.cap, want, self.policy.cap_deadband_pct)
        if fresh or _due(der.cap_at, der.cap_ends, now):
            cap = want if fresh or der.cap is None else der.cap  # a refresh renews what is held
            written = await apply_cap(cap, controls, self.audit, reversion_s=reversion, fallback_w=fallback_w,
                                      refresh=not fresh)
            der.cap, der.cap_at = cap, time.time()
            der.cap_ends = der.cap_at + (written.reversion_s or reversion)
            log.debug("der capped", der_id=der_id, export_w=cap.export_w, import_w=cap.import_w,
                      export_binding=cap.export_binding, import_binding=cap.import_binding)

    def written(self, der_id: str) -> tuple[Setpoint | None, Cap | None]:
        """What the reconcile loop last wrote to ``der_id`` (setpoint, cap)."""
        der = self._ders[der_id]
        return der.setpoint, der.cap
