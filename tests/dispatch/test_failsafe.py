"""Fail-safe layer 1: the default envelope is in force whenever the certified one cannot be used, and says why."""

from __future__ import annotations

import pytest

from gateway.dispatch import envelope_in_force

from ._helpers import NOW, envelope, policy

CERTIFIED = envelope({"inv-1": (4000, 0), "bat-1": (2500, 2500)})


def test_a_valid_certified_envelope_is_used() -> None:
    got = envelope_in_force(CERTIFIED, NOW, policy())
    assert not got.default
    assert got.reason is None
    assert got.bound("inv-1", policy()).export_w == 4000
    assert got.bound("inv-1", policy()).source == "envelope"


@pytest.mark.parametrize(
    ("env", "kwargs", "why"),
    [
        (None, {}, "no certified envelope yet"),
        (None, {"problem": "twin error: power flow did not converge"}, "twin error: power flow did not converge"),
        (envelope({"inv-1": (9000, 0)}, certified=False, reason="stale head meter"), {},
         "uncertified envelope: stale head meter"),
        (envelope({"inv-1": (4000, 0)}, valid_until=NOW - 1), {}, "expired at"),
        (envelope({"inv-1": (4000, 0)}, valid_until=NOW), {}, "expired at"),  # validity is [from, until)
        (envelope({"inv-1": (4000, 0)}, valid_from=NOW + 5), {}, "not valid until"),
        (CERTIFIED, {"stale": {"meter-1": "poll timeout after 1 s"}}, "stale devices: meter-1 (poll timeout"),
        (envelope({"inv-1": (float("nan"), 0)}), {}, "malformed limits for inv-1"),
    ],
)
def test_default_envelope_and_why(env: object, kwargs: dict, why: str) -> None:
    p = policy(default={"inv-1": (1500, 0), "bat-1": (1000, 1000)})
    got = envelope_in_force(env, NOW, p, **kwargs)  # type: ignore[arg-type]
    assert got.default
    assert got.reason is not None
    assert why in got.reason
    assert not got.envelope.certified
    b = got.bound("inv-1", p)
    assert (b.source, b.export_w, b.import_w) == ("default-envelope", 1500, 0)
    assert got.bound("bat-1", p).export_w == 1000


def test_a_der_the_certified_envelope_leaves_out_gets_its_default() -> None:
    p = policy()
    got = envelope_in_force(envelope({"inv-1": (4000, 0)}), NOW, p)
    assert not got.default
    b = got.bound("bat-1", p)
    assert (b.source, b.export_w, b.import_w) == ("default-envelope", 1500, 1500)
