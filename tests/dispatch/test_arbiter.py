"""Arbitration between ranked authorities: most restrictive wins, rank settles conflicts of direction, the
binding constraint is named; table-tested."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dispatch import Bound, arbitrate
from gateway.types import Authority

from ._helpers import AGG, GO, LOCAL, NOW, command

WIDE = (Bound("customer", 10_000, 10_000),)
RANK = (GO, AGG, LOCAL)


@pytest.mark.parametrize(
    ("asks", "ranking", "w", "winner", "binding"),
    [
        # the grid operator's limit beats an aggregator's higher setpoint
        ({GO: 3000, AGG: 5000}, RANK, 3000, GO, "authority:grid-operator"),
        # most restrictive wins, whoever sends it
        ({GO: 3000, AGG: 2000}, RANK, 2000, AGG, "authority:aggregator"),
        ({GO: 3000, AGG: 2500, LOCAL: 1000}, RANK, 1000, LOCAL, "authority:local"),
        ({GO: 3000, AGG: 2000, LOCAL: 2500}, RANK, 2000, AGG, "authority:aggregator"),  # local exceeds aggregator
        # ... even when the restrictive one is ranked lower or higher
        ({GO: 3000, AGG: 5000}, (AGG, GO, LOCAL), 3000, GO, "authority:grid-operator"),
        # imports: the smaller magnitude is the more restrictive
        ({GO: -1000, AGG: -3000}, RANK, -1000, GO, "authority:grid-operator"),
        # a conflict of direction: the higher rank decides
        ({GO: 3000, AGG: -2000}, RANK, 3000, GO, "authority:grid-operator"),
        ({GO: 3000, AGG: -2000}, (AGG, GO, LOCAL), -2000, AGG, "authority:aggregator"),
        # zero is inside everything: any authority may stop the DER
        ({GO: 3000, LOCAL: 0}, RANK, 0, LOCAL, "authority:local"),
        # one command, nothing clamps
        ({AGG: 2500}, RANK, 2500, AGG, "command"),
    ],
)
def test_ranking_table(asks: dict[Authority, float], ranking: tuple[Authority, ...], w: float, winner: Authority,
                       binding: str) -> None:
    cmds = [command(t, a) for a, t in asks.items()]
    arb = arbitrate("inv-1", cmds, WIDE, ranking)
    assert arb is not None
    assert (arb.setpoint.w, arb.setpoint.authority, arb.setpoint.binding) == (w, winner, binding)
    assert arb.winner.authority == winner
    assert arb.setpoint.command_id == arb.winner.command_id


def test_statuses_say_who_bound_whom() -> None:
    go, agg, loc = command(3000, GO), command(5000, AGG), command(2000, LOCAL)
    arb = arbitrate("inv-1", [go, agg, loc], WIDE, RANK)
    assert arb is not None
    by_id = {c.command.command_id: (c.status, c.by) for c in arb.considered}
    assert by_id[agg.command_id] == ("overruled", GO)  # above the grid operator's 3000
    assert by_id[go.command_id] == ("restricted", LOCAL)  # local's 2000 is more restrictive
    assert by_id[loc.command_id] == ("winner", None)
    assert arb.setpoint.w == 2000


def test_a_clamp_beats_the_authority_in_the_binding() -> None:
    bounds = (Bound("customer", 5000, 0), Bound("envelope", 2500, 0))
    arb = arbitrate("inv-1", [command(3000, GO), command(4000, AGG)], bounds, RANK)
    assert arb is not None
    assert (arb.setpoint.w, arb.setpoint.requested_w, arb.setpoint.binding) == (2500, 3000, "envelope-export")


def test_newest_command_per_authority_counts() -> None:
    old = command(1000, AGG, received_at=NOW - 5)
    new = command(4000, AGG, received_at=NOW)
    arb = arbitrate("inv-1", [new, old], WIDE, RANK)
    assert arb is not None
    assert arb.setpoint.w == 4000
    assert arb.status_of(old.command_id, old.issuer).status == "superseded"  # type: ignore[union-attr]


def test_valid_until_is_the_earliest_of_winner_and_bounds() -> None:
    cmd = command(1000, AGG, valid_until=NOW + 600)
    arb = arbitrate("inv-1", [cmd], (Bound("customer", 5000, 0), Bound("envelope", 5000, 0, NOW + 300)), RANK)
    assert arb is not None
    assert arb.setpoint.valid_until == NOW + 300


def test_no_commands_no_setpoint() -> None:
    assert arbitrate("inv-1", [], WIDE, RANK) is None


def test_unranked_authority_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not ranked"):
        arbitrate("inv-1", [command(1, LOCAL)], WIDE, (GO, AGG))


# --- properties -----------------------------------------------------------------------------------------------------

_power = st.floats(min_value=-20_000, max_value=20_000, allow_nan=False)
_magnitude = st.floats(min_value=0, max_value=20_000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    asks=st.lists(st.tuples(st.sampled_from(list(Authority)), _power), min_size=1, max_size=6),
    limits=st.lists(st.tuples(_magnitude, _magnitude), min_size=1, max_size=3),
    ranking=st.permutations(list(Authority)),
)
def test_no_command_exceeds_a_bound_or_the_top_authority(asks: list[tuple[Authority, float]],
                                                          limits: list[tuple[float, float]],
                                                          ranking: list[Authority]) -> None:
    cmds = [command(t, a, received_at=NOW + i) for i, (a, t) in enumerate(asks)]
    bounds = [Bound(f"b{i}", e, m) for i, (e, m) in enumerate(limits)]
    arb = arbitrate("inv-1", cmds, bounds, ranking)
    assert arb is not None
    w = arb.setpoint.w
    assert -min(m for _, m in limits) <= w <= min(e for e, _ in limits)  # inside every bound
    top = min((c for c in cmds), key=lambda c: (ranking.index(c.authority), -c.received_at))
    assert min(0.0, top.target_w) <= w <= max(0.0, top.target_w)  # never beyond what the top authority allows
    assert sum(c.status == "winner" for c in arb.considered) == 1
