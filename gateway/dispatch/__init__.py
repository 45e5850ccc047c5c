"""Dispatch: Commands become Setpoints after clamping to the envelope in force and the customer's limits,
arbitration between ranked authorities, and an audit line for every step.

The decision part (:class:`Dispatcher`, :func:`arbitrate`, :func:`clamp`, :func:`envelope_in_force`) is
synchronous and pure but for the audit log; only :func:`apply_decision` (write and read-back through the
SunSpec controls) is asynchronous. Uplinks call dispatch; dispatch never imports an uplink.
"""

from gateway.dispatch._apply import Applied, apply_decision, apply_setpoint, release
from gateway.dispatch._arbiter import Arbitration, Considered, arbitrate
from gateway.dispatch._cap import Cap, CapWritten, apply_cap, cap_differs, cap_for, default_cap
from gateway.dispatch._clamp import Bound, Clamped, clamp
from gateway.dispatch._dispatcher import MAX_COMMANDS_PER_DER, Decision, Dispatcher, setpoint_differs
from gateway.dispatch._failsafe import InForce, envelope_in_force
from gateway.dispatch._policy import DispatchPolicy

__all__ = [
    "MAX_COMMANDS_PER_DER",
    "Applied",
    "Arbitration",
    "Bound",
    "Cap",
    "CapWritten",
    "Clamped",
    "Considered",
    "Decision",
    "DispatchPolicy",
    "Dispatcher",
    "InForce",
    "apply_cap",
    "apply_decision",
    "apply_setpoint",
    "arbitrate",
    "cap_differs",
    "cap_for",
    "clamp",
    "default_cap",
    "envelope_in_force",
    "release",
    "setpoint_differs",
]
