"""Arbitration: the active commands for one DER, from ranked authorities, and the bounds on it -> one Setpoint.

The rule (house rule 12: one pure function, table-tested):

* A command's ``target_w`` is the power it asks for and the most it allows in that direction: a target of
  3000 W allows anything in ``[0, 3000]``, a target of -2000 W anything in ``[-2000, 0]``.
* Commands are taken highest-ranked authority first. A lower-ranked command that lies inside what the
  commands above it allow is more restrictive, and it wins (most restrictive wins): a grid operator's 3000 W
  and an aggregator's 2000 W give 2000 W. One outside it (higher, or the other direction) is overruled: a grid
  operator's 3000 W beats an aggregator's 5000 W, and its export beats the aggregator's charge request.
  The rank therefore decides only conflicts of direction; in one direction the smallest magnitude wins
  whoever sent it. Zero is inside everything: any authority may stop a DER.
* Per authority only the newest command counts (latest ``received_at``, then ``valid_from``); older ones
  are superseded.
* The winner's target is then clamped to every bound (customer limits, the envelope in force): see
  :func:`~gateway.dispatch._clamp.clamp`.

The Setpoint names what bound it: a clamp (``"customer-export"``, ``"envelope-import"``,
``"default-envelope-export"``), else ``"authority:<winner>"`` when other commands were in play, else
``"command"``. It is valid until the earliest of the winner's and the bounds' expiries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.dispatch._clamp import Bound, Clamped, clamp
from gateway.types import Authority, Command, Setpoint

#: What became of a command in arbitration.
WINNER, AGREES, RESTRICTED, OVERRULED, SUPERSEDED = "winner", "agrees", "restricted", "overruled", "superseded"


@dataclass(frozen=True, slots=True)
class Considered:
    """One command and what became of it: ``winner``, ``agrees`` (asks what a higher-ranked winner asks),
    ``restricted`` (a more restrictive command won), ``overruled`` (outside what a higher-ranked command
    allows) or ``superseded`` (a newer one from the same authority). ``by`` names the authority responsible
    (``None`` for the winner)."""

    command: Command
    status: str
    by: Authority | None = None


@dataclass(frozen=True, slots=True)
class Arbitration:
    """The setpoint for one DER, every command considered, the bounds and the clamp."""

    setpoint: Setpoint
    considered: tuple[Considered, ...]
    bounds: tuple[Bound, ...]
    clamped: Clamped

    @property
    def winner(self) -> Command:
        return next(c.command for c in self.considered if c.status == WINNER)

    def status_of(self, command_id: str, issuer: str) -> Considered | None:
        return next((c for c in self.considered if c.command.command_id == command_id
                     and c.command.issuer == issuer), None)


def _allows(target: float, value: float) -> bool:
    """Whether a command for ``target`` allows ``value``: between zero and the target."""
    return min(0.0, target) <= value <= max(0.0, target)


def arbitrate(der_id: str, commands: Sequence[Command], bounds: Sequence[Bound],
              ranking: Sequence[Authority]) -> Arbitration | None:
    """The setpoint for ``der_id`` from its active ``commands`` within ``bounds``; ``None`` without commands.

    ``ranking`` lists authorities highest first; a command from an unranked authority, for another DER or
    with a non-finite target is a programming error (the dispatcher rejects those first): ``ValueError``.
    """
    rank = {a: i for i, a in enumerate(ranking)}
    for c in commands:
        if c.der_id != der_id:
            raise ValueError(f"command {c.command_id} is for {c.der_id}, not {der_id}")
        if c.authority not in rank:
            raise ValueError(f"authority {c.authority.value} is not ranked")
        if not math.isfinite(c.target_w):
            raise ValueError(f"command {c.command_id}: target {c.target_w!r} is not finite")
    if not commands:
        return None
    newest: dict[Authority, Command] = {}
    for c in commands:
        held = newest.get(c.authority)
        if held is None or (c.received_at, c.valid_from) > (held.received_at, held.valid_from):
            newest[c.authority] = c
    status: dict[int, Considered] = {}
    for c in commands:
        if newest[c.authority] is not c:
            status[id(c)] = Considered(c, SUPERSEDED, c.authority)
    ordered = sorted(newest.values(), key=lambda c: rank[c.authority])
    winner = ordered[0]
    for c in ordered[1:]:
        if _allows(winner.target_w, c.target_w) and abs(c.target_w) < abs(winner.target_w):
            status[id(winner)] = Considered(winner, RESTRICTED, c.authority)
            winner = c
        elif c.target_w == winner.target_w:
            status[id(c)] = Considered(c, AGREES, winner.authority)  # a tie: the higher rank is named
        else:
            status[id(c)] = Considered(c, OVERRULED, winner.authority)
    status[id(winner)] = Considered(winner, WINNER)
    clamped = clamp(winner.target_w, bounds)
    if clamped.binding is not None:
        binding = clamped.binding
    elif len(newest) > 1:
        binding = f"authority:{winner.authority.value}"
    else:
        binding = "command"
    valid_until = min([winner.valid_until, *(b.valid_until for b in bounds)])
    setpoint = Setpoint(der_id=der_id, w=clamped.w, requested_w=winner.target_w, binding=binding,
                        command_id=winner.command_id, authority=winner.authority, valid_until=valid_until)
    return Arbitration(setpoint, tuple(status[id(c)] for c in commands), tuple(bounds), clamped)
