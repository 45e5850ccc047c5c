"""Builders shared by the dispatch tests: commands, policies, envelopes, and reading an audit log back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gateway.dispatch import DispatchPolicy
from gateway.types import Authority, Command, DerLimit, Envelope, EnvelopeCertificate

NOW = 1_750_000_000.0
GO, AGG, LOCAL = Authority.GRID_OPERATOR, Authority.AGGREGATOR, Authority.LOCAL
CERTIFICATE = EnvelopeCertificate(vmax_pu=1.049, vmin_pu=0.951, max_loading=0.8, margin_pu=0.005,
                                  method="ac-batch", ac_solves=12)

_counter = 0


def command(target_w: float, authority: Authority = AGG, der_id: str = "inv-1", *, command_id: str | None = None,
            valid_from: float = NOW - 10, valid_until: float = NOW + 600, received_at: float = NOW,
            issuer: str | None = None) -> Command:
    global _counter
    _counter += 1
    return Command(command_id=command_id or f"c{_counter}", issuer=issuer or f"{authority.value}-1",
                   authority=authority, der_id=der_id, target_w=target_w, valid_from=valid_from,
                   valid_until=valid_until, source="test", received_at=received_at)


def policy(ranking: tuple[Authority, ...] = (GO, AGG, LOCAL), *, customer: dict[str, tuple[float, float]] | None = None,
           default: dict[str, tuple[float, float]] | None = None, reversion_s: int = 120) -> DispatchPolicy:
    customer = customer if customer is not None else {"inv-1": (5000, 0), "bat-1": (3000, 3000)}
    default = default if default is not None else dict.fromkeys(customer, (1500, 1500))
    return DispatchPolicy(ranking, {d: DerLimit(d, *v) for d, v in customer.items()},
                          {d: DerLimit(d, *v) for d, v in default.items()}, reversion_s)


def envelope(limits: dict[str, tuple[float, float]], *, sequence: int = 7, valid_from: float = NOW - 60,
             valid_until: float = NOW + 900, certified: bool = True, reason: str | None = None) -> Envelope:
    return Envelope(issuer="twin", sequence=sequence, valid_from=valid_from, valid_until=valid_until,
                    limits=tuple(DerLimit(d, *v) for d, v in limits.items()), certified=certified,
                    certificate=CERTIFICATE if certified else None, reason=reason)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(path: Path, *names: str) -> list[dict[str, Any]]:
    return [r for r in audit_lines(path) if not names or r["event"] in names]


INF = math.inf


#: The certified envelope most dispatch tests start from.
CERTIFIED = envelope({"inv-1": (4000, 0), "bat-1": (2500, 2000)})
