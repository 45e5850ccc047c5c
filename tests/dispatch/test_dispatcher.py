"""The dispatcher's decisions and their audit lines: clamps, rejections, expiries, ranking, the fail-safe envelope.

Every decision leaves a ``decision`` line saying why and what bound it; a command that must actuate nothing
leaves ``changed`` False (nothing to write).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit import AuditLog, verify_log
from gateway.dispatch import MAX_COMMANDS_PER_DER, Dispatcher
from gateway.errors import AuditLogError, CommandRejected

from ._helpers import AGG, CERTIFIED, GO, LOCAL, NOW, command, envelope, events, policy


def _decision_of(path: Path, command_id: str) -> dict:
    (line,) = [r for r in events(path, "decision") if r["command_id"] == command_id]
    return line


# --- clamps ---------------------------------------------------------------------------------------------------------


def test_within_everything_is_accepted_as_asked(dispatcher: Dispatcher, log_path: Path) -> None:
    cmd = command(2500, AGG)
    d = dispatcher.submit(cmd, NOW)
    assert (d.outcome, d.changed) == ("accepted", True)
    assert d.setpoint is not None
    assert (d.setpoint.w, d.setpoint.requested_w, d.setpoint.binding) == (2500, 2500, "command")
    line = _decision_of(log_path, cmd.command_id)
    assert line["outcome"] == "accepted"
    assert line["setpoint"]["w"] == 2500


def test_above_the_envelope_actuates_only_up_to_it(dispatcher: Dispatcher, log_path: Path) -> None:
    cmd = command(4800, AGG)  # customer allows 5000, the certified envelope 4000
    d = dispatcher.submit(cmd, NOW)
    assert d.outcome == "clamped"
    assert d.setpoint is not None
    assert (d.setpoint.w, d.setpoint.requested_w, d.setpoint.binding) == (4000, 4800, "envelope-export")
    line = _decision_of(log_path, cmd.command_id)
    assert line["binding"] == "envelope-export"
    assert "asked 4800 W, clamped to 4000 W by envelope-export" in line["reason"]
    assert {"source": "envelope", "export_w": 4000, "import_w": 0} in line["bounds"]
    assert line["envelope"] == {"issuer": "twin", "sequence": 7, "default": False, "reason": None}


def test_above_the_customer_limit_actuates_only_up_to_it(audit: AuditLog, log_path: Path) -> None:
    d = Dispatcher(policy(customer={"inv-1": (3000, 0)}), audit)
    d.set_envelope(envelope({"inv-1": (6000, 6000)}), NOW)  # an envelope more generous than the customer's limit
    cmd = command(5500, GO)  # not even the grid operator exceeds the customer limit
    got = d.submit(cmd, NOW)
    assert got.setpoint is not None
    assert (got.outcome, got.setpoint.w, got.setpoint.binding) == ("clamped", 3000, "customer-export")
    assert _decision_of(log_path, cmd.command_id)["binding"] == "customer-export"


def test_import_beyond_the_customer_limit_is_clamped_to_zero(dispatcher: Dispatcher, log_path: Path) -> None:
    cmd = command(-1000, AGG)  # inv-1's customer limit allows no import
    d = dispatcher.submit(cmd, NOW)
    assert d.setpoint is not None
    assert (d.setpoint.w, d.setpoint.binding) == (0, "customer-import")
    assert _decision_of(log_path, cmd.command_id)["setpoint"]["w"] == 0


def test_battery_import_clamped_by_envelope(dispatcher: Dispatcher) -> None:
    d = dispatcher.submit(command(-2800, AGG, der_id="bat-1"), NOW)
    assert d.setpoint is not None
    assert (d.setpoint.w, d.setpoint.binding) == (-2000, "envelope-import")


# --- commands that actuate nothing ------------------------------------------------------------------------------------


def test_expired_command_actuates_nothing(dispatcher: Dispatcher, log_path: Path) -> None:
    cmd = command(2000, GO, valid_from=NOW - 120, valid_until=NOW - 1)
    d = dispatcher.submit(cmd, NOW)
    assert (d.outcome, d.code, d.changed, d.setpoint) == ("rejected", "expired", False, None)
    assert dispatcher.setpoint("inv-1") is None
    received, decided = [r for r in events(log_path, "command-received", "decision")
                         if r.get("command_id") == cmd.command_id]
    assert received["event"] == "command-received"
    assert received["target_w"] == 2000
    assert (decided["outcome"], decided["code"], decided["changed"]) == ("rejected", "expired", False)
    assert "expired at" in decided["reason"]


def test_expired_command_leaves_the_current_setpoint_alone(dispatcher: Dispatcher) -> None:
    first = dispatcher.submit(command(2000, AGG), NOW)
    d = dispatcher.submit(command(100, GO, valid_until=NOW), NOW)  # validity is [from, until): over at NOW
    assert (d.outcome, d.changed) == ("rejected", False)
    assert d.setpoint == first.setpoint == dispatcher.setpoint("inv-1")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"der_id": "inv-9"}, "unknown-der"),
        ({"valid_from": NOW + 10, "valid_until": NOW + 10}, "malformed"),
        ({"target_w": float("nan")}, "malformed"),
        ({"target_w": float("inf")}, "malformed"),
    ],
)
def test_refused_commands_actuate_nothing_and_say_why(dispatcher: Dispatcher, log_path: Path, kwargs: dict,
                                                      code: str) -> None:
    target = kwargs.pop("target_w", 1000)
    cmd = command(target, AGG, **kwargs)
    d = dispatcher.submit(cmd, NOW)
    assert (d.outcome, d.code, d.changed) == ("rejected", code, False)
    line = _decision_of(log_path, cmd.command_id)
    assert (line["outcome"], line["code"]) == ("rejected", code)
    assert verify_log(log_path).ok  # a NaN in a command is recorded, not a broken log


def test_unranked_authority_is_rejected(audit: AuditLog) -> None:
    d = Dispatcher(policy(ranking=(GO, AGG)), audit)
    got = d.submit(command(1000, LOCAL), NOW)
    assert (got.outcome, got.code) == ("rejected", "unranked-authority")


def test_a_replayed_command_id_is_rejected(dispatcher: Dispatcher) -> None:
    cmd = command(2000, AGG)
    assert dispatcher.submit(cmd, NOW).outcome == "accepted"
    again = dispatcher.submit(cmd, NOW + 1)
    assert (again.outcome, again.code, again.changed) == ("rejected", "duplicate", False)


def test_commands_held_per_der_are_bounded(dispatcher: Dispatcher) -> None:
    for i in range(MAX_COMMANDS_PER_DER):
        dispatcher.submit(command(1000, LOCAL, valid_from=NOW + 100 + i, valid_until=NOW + 200 + i), NOW)
    d = dispatcher.submit(command(1000, LOCAL, valid_from=NOW + 100, valid_until=NOW + 200), NOW)
    assert (d.outcome, d.code) == ("rejected", "too-many-commands")


def test_verifier_rejection_is_recorded_without_the_payload(dispatcher: Dispatcher, log_path: Path) -> None:
    raw = b"eyJhbGciOiJub25lIn0.eyJ0YXJnZXRfdyI6IDk5OTk5fQ."  # alg=none: the verifier refuses it
    dispatcher.reject(CommandRejected("bad-alg", "alg none is not allowed"), source="mqtt", now=NOW, raw=raw)
    (line,) = events(log_path, "command-rejected")
    assert (line["code"], line["source"], line["raw_bytes"]) == ("bad-alg", "mqtt", len(raw))
    assert line["reason"] == "bad-alg: alg none is not allowed"
    assert len(line["raw_sha256"]) == 64
    assert raw.decode() not in log_path.read_text()
    assert dispatcher.setpoint("inv-1") is None


def test_no_audit_no_decision(dispatcher: Dispatcher, audit: AuditLog) -> None:
    audit.close()
    with pytest.raises(AuditLogError):
        dispatcher.submit(command(1000, AGG), NOW)
    assert dispatcher.setpoint("inv-1") is None


# --- ranking through the dispatcher ---------------------------------------------------------------------------------


def test_grid_operator_limit_beats_aggregator_higher_setpoint(dispatcher: Dispatcher, log_path: Path) -> None:
    go = command(2000, GO)
    assert dispatcher.submit(go, NOW).setpoint.w == 2000  # type: ignore[union-attr]
    agg = command(3500, AGG)
    d = dispatcher.submit(agg, NOW + 1)
    assert (d.outcome, d.changed) == ("overruled", False)  # nothing new to write
    assert d.setpoint is not None
    assert (d.setpoint.w, d.setpoint.command_id, d.setpoint.binding) == (2000, go.command_id, "authority:grid-operator")
    line = _decision_of(log_path, agg.command_id)
    assert line["outcome"] == "overruled"
    assert "grid-operator" in line["reason"]
    statuses = {c["command_id"]: (c["status"], c["by"]) for c in line["commands"]}
    assert statuses == {go.command_id: ("winner", None), agg.command_id: ("overruled", "grid-operator")}


def test_most_restrictive_wins_and_is_reported(dispatcher: Dispatcher, log_path: Path) -> None:
    dispatcher.submit(command(3000, GO), NOW)
    agg = command(1200, AGG)
    d = dispatcher.submit(agg, NOW + 1)
    assert (d.outcome, d.changed) == ("accepted", True)
    assert d.setpoint is not None
    assert (d.setpoint.w, d.setpoint.authority, d.setpoint.binding) == (1200, AGG, "authority:aggregator")
    assert _decision_of(log_path, agg.command_id)["binding"] == "authority:aggregator"


def test_when_the_winner_expires_the_next_takes_over(dispatcher: Dispatcher, log_path: Path) -> None:
    dispatcher.submit(command(1000, GO, valid_until=NOW + 60), NOW)
    dispatcher.submit(command(3000, AGG, valid_until=NOW + 600), NOW)
    assert dispatcher.setpoint("inv-1").w == 1000  # type: ignore[union-attr]
    (revised,) = dispatcher.tick(NOW + 60)
    assert (revised.outcome, revised.changed) == ("revised", True)
    assert revised.setpoint is not None
    assert (revised.setpoint.w, revised.setpoint.authority) == (3000, AGG)
    assert [r["event"] for r in events(log_path)][-2:] == ["command-expired", "decision"]
    (released,) = dispatcher.tick(NOW + 600)
    assert (released.outcome, released.setpoint, released.changed) == ("released", None, True)
    assert dispatcher.tick(NOW + 601) == []


def test_pending_command_starts_at_its_time(dispatcher: Dispatcher) -> None:
    d = dispatcher.submit(command(1800, AGG, valid_from=NOW + 30, valid_until=NOW + 90), NOW)
    assert (d.outcome, d.changed, d.setpoint) == ("pending", False, None)
    assert dispatcher.tick(NOW + 29) == []
    (started,) = dispatcher.tick(NOW + 30)
    assert started.setpoint is not None
    assert started.setpoint.w == 1800


# --- fail-safe layer 1 ----------------------------------------------------------------------------------------------


def test_expired_envelope_puts_the_default_in_force_and_reclamps(dispatcher: Dispatcher, log_path: Path) -> None:
    dispatcher.submit(command(3500, AGG, valid_until=NOW + 3600), NOW)
    assert dispatcher.setpoint("inv-1").w == 3500  # type: ignore[union-attr]
    (revised,) = dispatcher.tick(NOW + 900)  # the certified envelope ran out
    assert revised.setpoint is not None
    assert (revised.setpoint.w, revised.setpoint.binding) == (1500, "default-envelope-export")
    assert "default envelope in force" in revised.reason
    envelope_lines = events(log_path, "envelope")
    assert envelope_lines[-1]["default"] is True
    assert "expired at" in envelope_lines[-1]["reason"]
    decision = events(log_path, "decision")[-1]
    assert decision["envelope"]["default"] is True
    assert decision["binding"] == "default-envelope-export"


@pytest.mark.parametrize(
    ("env", "problem", "stale", "why"),
    [
        (None, "twin error: singular matrix", {}, "twin error"),
        (envelope({"inv-1": (4000, 0)}, certified=False, reason="did not converge"), None, {}, "uncertified"),
        (CERTIFIED, None, {"inv-1": "poll timeout after 1 s"}, "stale devices"),
    ],
)
def test_no_valid_certified_envelope_means_default(audit: AuditLog, log_path: Path, env: object,
                                                   problem: str | None, stale: dict, why: str) -> None:
    d = Dispatcher(policy(), audit)
    d.set_stale(stale, NOW)
    d.set_envelope(env, NOW, problem=problem)  # type: ignore[arg-type]
    got = d.submit(command(4000, AGG), NOW)
    assert got.setpoint is not None
    assert (got.setpoint.w, got.setpoint.binding) == (1500, "default-envelope-export")
    assert why in events(log_path, "envelope")[-1]["reason"]


def test_recovery_to_a_certified_envelope_lifts_the_default(audit: AuditLog) -> None:
    d = Dispatcher(policy(), audit)
    d.submit(command(3500, AGG, valid_until=NOW + 3600), NOW)
    assert d.setpoint("inv-1").w == 1500  # type: ignore[union-attr]
    (revised,) = d.set_envelope(CERTIFIED, NOW + 1)
    assert revised.setpoint is not None
    assert (revised.setpoint.w, revised.setpoint.binding) == (3500, "command")


def test_the_log_of_a_session_verifies(dispatcher: Dispatcher, log_path: Path) -> None:
    dispatcher.submit(command(4800, AGG), NOW)
    dispatcher.submit(command(2000, GO, valid_until=NOW - 1), NOW)
    dispatcher.tick(NOW + 2000)
    result = verify_log(log_path)
    assert result.ok
    assert result.records == len(events(log_path))
