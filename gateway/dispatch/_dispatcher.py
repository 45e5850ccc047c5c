"""The dispatcher: Commands in, Setpoints out, every step recorded in the audit log before it takes effect.

It holds the commands received per DER, the envelope from the twin and the devices' staleness; each entry
point takes the time (``now``, UNIX s) and returns :class:`Decision` s. A decision whose ``changed`` is True is
to be written to the device (:func:`~gateway.dispatch.apply_decision`); nothing else is. Order of audit lines:
``envelope`` (when the envelope in force changes), ``command-received``, ``decision``; ``command-rejected`` for
what the inbound verifier refused; ``command-expired`` when a stored command runs out; ``command-withdrawn``
then ``decision`` when an issuer withdraws commands (:meth:`Dispatcher.withdraw`).

What counts as a change (:func:`setpoint_differs`): another value, a setpoint appearing or going, or an earlier
expiry. A later expiry alone is not: every certified envelope moves the expiry of a setpoint it bounds, and a new
envelope with the same clamp result is no news (no decision, nothing to write); the setpoint is updated quietly
and the owner's refresh renews the device's reversion timer before it runs out.

Synchronous and not thread-safe: call it from one task or thread. Each audit line is fsync'ed before the call
returns (a few ms); an audit failure raises and nothing is decided (no record, no actuation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.audit import AuditLog
from gateway.dispatch._arbiter import AGREES, OVERRULED, RESTRICTED, WINNER, Arbitration, arbitrate
from gateway.dispatch._failsafe import InForce, envelope_in_force
from gateway.dispatch._policy import DispatchPolicy
from gateway.errors import CommandRejected
from gateway.types import Command, Envelope, Setpoint

log = structlog.get_logger("gateway.dispatch")

#: Decision outcomes.
ACCEPTED, CLAMPED, OVERRULED_OUTCOME, REJECTED, PENDING = "accepted", "clamped", "overruled", "rejected", "pending"
REVISED, RELEASED, WITHDRAWN = "revised", "released", "withdrawn"
#: Two setpoint values closer than this (W) are the same value (float noise, far below any device's resolution).
SAME_W = 1e-6
#: Commands kept per DER (active and pending); more are refused.
MAX_COMMANDS_PER_DER = 32


@dataclass(frozen=True, slots=True)
class Decision:
    """What dispatch decided for one DER, and why.

    ``outcome`` is ``accepted``, ``clamped`` (accepted but bound by a limit), ``overruled`` (another command
    wins), ``rejected`` (actuates nothing), ``pending`` (valid later), ``revised`` (the setpoint's value changed
    without a new command: an expiry, a new envelope), ``released`` (no active command left) or ``withdrawn``
    (its issuer withdrew a command). ``setpoint`` is the DER's setpoint after the decision (``None``: none);
    ``changed`` says whether there is something to write (:func:`setpoint_differs`). ``code`` is a short stable
    reason for rejections.
    """

    der_id: str
    outcome: str
    reason: str
    setpoint: Setpoint | None
    changed: bool
    command_id: str | None = None
    code: str | None = None

    @property
    def binding(self) -> str | None:
        return None if self.setpoint is None else self.setpoint.binding


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _w(value: float) -> str:
    return f"{value:g} W"


def _command_fields(c: Command) -> dict[str, Any]:
    """A command as recorded: every field but ``extra``'s values (only its keys: they are not ours to keep)."""
    return {"command_id": c.command_id, "issuer": c.issuer, "authority": c.authority, "der_id": c.der_id,
            "target_w": c.target_w, "valid_from": c.valid_from, "valid_until": c.valid_until, "source": c.source,
            "received_at": c.received_at, "extra_keys": sorted(c.extra)}


def _arbitration_fields(arb: Arbitration | None, in_force: InForce) -> dict[str, Any]:
    env = in_force.envelope
    out: dict[str, Any] = {"envelope": {"issuer": env.issuer, "sequence": env.sequence, "default": in_force.default,
                                        "reason": in_force.reason}}
    if arb is not None:
        out["bounds"] = [{"source": b.source, "export_w": b.export_w, "import_w": b.import_w} for b in arb.bounds]
        out["commands"] = [{"command_id": c.command.command_id, "issuer": c.command.issuer,
                            "authority": c.command.authority, "target_w": c.command.target_w, "status": c.status,
                            "by": c.by} for c in arb.considered]
    return out


def setpoint_differs(old: Setpoint | None, new: Setpoint | None) -> bool:
    """Whether ``new`` must be written over ``old``: another value, a setpoint appearing or going, or an earlier
    expiry (a reversion timer programmed for ``old`` would outlast ``new``).

    A later expiry with the same value is not a change: re-writing it only renews the device's timer, which the
    owner does on its own schedule (a refresh), not on every new envelope.
    """
    if old is None or new is None:
        return old is not new
    return not math.isclose(old.w, new.w, rel_tol=0.0, abs_tol=SAME_W) or new.valid_until < old.valid_until


class Dispatcher:
    """Turns Commands into Setpoints under a :class:`DispatchPolicy`, recording everything in ``audit``."""

    def __init__(self, policy: DispatchPolicy, audit: AuditLog) -> None:
        self.policy = policy
        self._audit = audit
        self._commands: dict[str, list[Command]] = {}
        self._current: dict[str, Setpoint] = {}
        self._envelope: Envelope | None = None
        self._problem: str | None = None
        self._stale: dict[str, str] = {}
        self._in_force_key: tuple[str, int, bool, str | None] | None = None

    # --- state in -------------------------------------------------------------------------------------------
    def set_envelope(self, envelope: Envelope | None, now: float, *, problem: str | None = None) -> list[Decision]:
        """A new envelope from the twin (or ``None`` and the ``problem``, e.g. ``"twin error: ..."``).

        Every DER is re-clamped: the decisions that change a setpoint are returned.
        """
        self._envelope, self._problem = envelope, problem
        return self.tick(now)

    def set_stale(self, stale: Mapping[str, str], now: float) -> list[Decision]:
        """The devices stale now (id -> reason): any stale device puts the default envelope in force."""
        self._stale = dict(stale)
        return self.tick(now)

    def in_force(self, now: float) -> InForce:
        """The envelope dispatch clamps to at ``now`` (recorded when it changes)."""
        in_force = envelope_in_force(self._envelope, now, self.policy, problem=self._problem, stale=self._stale)
        if in_force.key != self._in_force_key:
            env = in_force.envelope
            self._audit.record("envelope", issuer=env.issuer, sequence=env.sequence, certified=env.certified,
                               default=in_force.default, reason=in_force.reason,
                               limits=[{"der_id": lim.der_id, "export_w": lim.export_w, "import_w": lim.import_w}
                                       for lim in env.limits])
            log.info("envelope in force", issuer=env.issuer, sequence=env.sequence, default=in_force.default,
                     reason=in_force.reason)
            self._in_force_key = in_force.key
        return in_force

    def setpoint(self, der_id: str) -> Setpoint | None:
        """The DER's current setpoint (to re-write before its reversion timer runs out)."""
        return self._current.get(der_id)

    # --- commands -------------------------------------------------------------------------------------------
    def reject(self, error: CommandRejected, *, source: str, now: float, raw: bytes | str | None = None) -> None:
        """Record a command the inbound verifier refused (it actuates nothing). ``raw`` is kept as a hash only."""
        del now  # the audit line carries its own time; kept for a uniform signature
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
        self._audit.record("command-rejected", code=error.reason, reason=str(error), source=source,
                           raw_sha256=None if data is None else hashlib.sha256(data).hexdigest(),
                           raw_bytes=None if data is None else len(data))
        log.info("command rejected", code=error.reason, source=source)

    def submit(self, command: Command, now: float) -> Decision:
        """Decide on an authenticated ``command`` at ``now``: the audit log gets its receipt, then the decision."""
        in_force = self.in_force(now)
        self._audit.record("command-received", **_command_fields(command))
        refusal = self._refusal(command, now)
        der = command.der_id
        if refusal is not None:
            code, why = refusal
            return self._decide(Decision(der, REJECTED, why, self._current.get(der), False, command.command_id, code),
                                None, in_force)
        self._commands.setdefault(der, []).append(command)
        if command.valid_from > now:
            return self._decide(Decision(der, PENDING, f"valid from {_iso(command.valid_from)}: stored until then",
                                         self._current.get(der), False, command.command_id), None, in_force)
        arb = self._arbitrate(der, now, in_force)
        assert arb is not None  # the command itself is active
        changed = setpoint_differs(self._current.get(der), arb.setpoint)
        self._current[der] = arb.setpoint
        outcome, why = self._explain(command, arb)
        return self._decide(Decision(der, outcome, why, arb.setpoint, changed, command.command_id), arb, in_force)

    def tick(self, now: float) -> list[Decision]:
        """Drop expired commands, start pending ones, re-clamp to the envelope in force; the changes."""
        in_force = self.in_force(now)
        out: list[Decision] = []
        for der in sorted(set(self._commands) | set(self._current)):
            kept = []
            for c in self._commands.get(der, []):
                if now >= c.valid_until:
                    self._audit.record("command-expired", der_id=der, command_id=c.command_id, issuer=c.issuer,
                                       authority=c.authority, valid_until=c.valid_until)
                else:
                    kept.append(c)
            self._hold(der, kept)
            arb = self._arbitrate(der, now, in_force)
            new = None if arb is None else arb.setpoint
            old = self._current.get(der)
            if not setpoint_differs(old, new):
                if new is not None:
                    self._current[der] = new  # the same value, a later expiry or another binding: nothing to write
                continue
            if new is None:
                del self._current[der]
                decision = Decision(der, RELEASED, "no active command: the DER's control is released", None, True)
            else:
                self._current[der] = new
                if old is not None and not setpoint_differs(old, dataclasses.replace(new, valid_until=old.valid_until)):
                    why = (f"{_w(new.w)} ({new.binding}) now ends {_iso(new.valid_until)}, before "
                           f"{_iso(old.valid_until)}: re-written so the device's timer does not outlast it")
                else:
                    why = f"{_w(new.w)} ({new.binding}) replaces {_w(old.w) if old else 'no setpoint'}"
                if in_force.default:
                    why += f"; default envelope in force: {in_force.reason}"
                decision = Decision(der, REVISED, why, new, True, new.command_id)
            out.append(self._decide(decision, arb, in_force))
        return out

    def withdraw(self, command_ids: Iterable[str], reason: str, now: float, *,
                 source: str | None = None) -> list[Decision]:
        """The issuer withdrew ``command_ids`` (e.g. an OpenADR event cancelled or modified): forget them, and
        decide again for every DER that held one. ``source`` limits it to commands from that channel (an id is
        unique only per issuer, and a channel cancels only its own).

        Each id is recorded as ``command-withdrawn`` (``held`` false for one dispatch does not hold: expired,
        refused or never received); then, per DER that lost a command, a ``withdrawn`` decision: the next command
        in rank takes over, or, with none left, the setpoint is released and the DER goes back to its cap (the
        envelope in force). The decisions are returned; ``changed`` ones are to be written.
        """
        wanted = list(dict.fromkeys(command_ids))
        in_force = self.in_force(now)
        gone: dict[str, list[Command]] = {}
        for der, held in sorted(self._commands.items()):
            hits = [c for c in held if c.command_id in wanted and (source is None or c.source == source)]
            if hits:
                gone[der] = hits
        found = {c.command_id for hits in gone.values() for c in hits}
        for der, hits in gone.items():
            for c in hits:
                self._audit.record("command-withdrawn", command_id=c.command_id, held=True, reason=reason, der_id=der,
                                   issuer=c.issuer, authority=c.authority, source=c.source, valid_until=c.valid_until)
        for cid in wanted:
            if cid not in found:
                self._audit.record("command-withdrawn", command_id=cid, held=False, reason=reason, source=source)
        if len(found) < len(wanted):
            log.info("withdrawn commands not held", command_ids=[c for c in wanted if c not in found], source=source)
        out: list[Decision] = []
        for der, hits in gone.items():
            kept = [c for c in self._commands.get(der, []) if all(c is not h for h in hits)]
            self._hold(der, kept)
            arb = self._arbitrate(der, now, in_force)
            new = None if arb is None else arb.setpoint
            old = self._current.get(der)
            changed = setpoint_differs(old, new)
            if new is None:
                self._current.pop(der, None)
                then = ("no active command left: the setpoint is released, the DER goes back to its cap"
                        if old is not None else "no active command: nothing was actuating")
            else:
                self._current[der] = new
                who = f"{new.authority.value if new.authority else 'command'} {new.command_id}"
                then = (f"{who} takes over: {_w(new.w)} ({new.binding})" if changed
                        else f"the setpoint stays {_w(new.w)} ({new.binding}, {who})")
            why = f"{', '.join(c.command_id for c in hits)} withdrawn ({reason}); {then}"
            if in_force.default:
                why += f"; default envelope in force: {in_force.reason}"
            out.append(self._decide(Decision(der, WITHDRAWN, why, new, changed, hits[0].command_id), arb, in_force))
        return out

    # --- internals ------------------------------------------------------------------------------------------
    def _refusal(self, c: Command, now: float) -> tuple[str, str] | None:
        if c.der_id not in self.policy.customer_limits:
            return "unknown-der", f"no customer limits for {c.der_id!r}: dispatch commands only configured DERs"
        if not self.policy.ranked(c.authority):
            return "unranked-authority", f"authority {c.authority.value} is not in the ranking"
        if not all(math.isfinite(v) for v in (c.target_w, c.valid_from, c.valid_until)) or (
                c.valid_from >= c.valid_until):
            return "malformed", "target or validity is not finite, or the validity is empty"
        if now >= c.valid_until:
            return "expired", f"expired at {_iso(c.valid_until)} (now {_iso(now)})"
        stored = self._commands.get(c.der_id, [])
        if any(s.command_id == c.command_id and s.issuer == c.issuer for s in stored):
            return "duplicate", f"command {c.command_id} from {c.issuer} is already held"
        if len(stored) >= MAX_COMMANDS_PER_DER:
            return "too-many-commands", f"{len(stored)} commands already held for {c.der_id}"
        return None

    def _hold(self, der: str, commands: list[Command]) -> None:
        """Keep ``commands`` as the DER's held commands (none: forget the DER)."""
        if commands:
            self._commands[der] = commands
        else:
            self._commands.pop(der, None)

    def _arbitrate(self, der: str, now: float, in_force: InForce) -> Arbitration | None:
        active = [c for c in self._commands.get(der, []) if c.valid_from <= now < c.valid_until]
        bounds = (self.policy.customer_bound(der), in_force.bound(der, self.policy))
        return arbitrate(der, active, bounds, self.policy.ranking)

    @staticmethod
    def _explain(command: Command, arb: Arbitration) -> tuple[str, str]:
        sp, st = arb.setpoint, arb.status_of(command.command_id, command.issuer)
        assert st is not None
        if st.status in (WINNER, AGREES):
            lead = "" if st.status == WINNER else f"agrees with {arb.winner.authority.value}: "
            if arb.clamped.binding is None:
                return ACCEPTED, f"{lead}{_w(sp.w)} as asked"
            return CLAMPED, f"{lead}asked {_w(sp.requested_w)}, clamped to {_w(sp.w)} by {arb.clamped.binding}"
        winner = arb.winner
        how = {RESTRICTED: "a more restrictive command wins", OVERRULED: "outside what a higher-ranked command allows"}
        return OVERRULED_OUTCOME, (f"{how.get(st.status, st.status)}: {winner.authority.value} {winner.command_id} "
                                   f"asks {_w(winner.target_w)}; setpoint {_w(sp.w)} ({sp.binding})")

    def _decide(self, d: Decision, arb: Arbitration | None, in_force: InForce) -> Decision:
        self._audit.record("decision", der_id=d.der_id, outcome=d.outcome, code=d.code, reason=d.reason,
                           command_id=d.command_id, binding=d.binding, changed=d.changed, setpoint=d.setpoint,
                           **_arbitration_fields(arb, in_force))
        log.info("dispatch decision", der_id=d.der_id, outcome=d.outcome, binding=d.binding,
                 w=None if d.setpoint is None else d.setpoint.w, command_id=d.command_id)
        return d
