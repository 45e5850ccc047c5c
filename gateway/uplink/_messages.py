"""The wire format of gridedge's signed messages: pydantic v2 schemas of envelope, telemetry, status, event, command.

These models are the wire representation only; the concepts are the shared types of :mod:`gateway.types`
(``Envelope``, ``DerLimit``, ``EnvelopeCertificate``, ``Measurement``, ``DeviceState``, ``Command``), and each
message converts from and to them without loss. Every message is a JSON object with

- ``type``: ``envelope``, ``telemetry``, ``status``, ``event`` or ``command`` (a signed envelope can never be
  taken for a command);
- ``id`` (a lowercase UUID), ``issuer`` (who signed it: the gateway id, or the head-end's name), ``seq``
  (strictly increasing per issuer and type; never reused across restarts, :class:`~gateway.uplink.Sequencer`),
  ``issuedAt``;
- envelopes and commands also ``validFrom``/``validUntil`` (``validFrom < validUntil``).

Times are UNIX seconds (UTC, JSON numbers, as IEEE 2030.5/CSIP-AUS ``TimeType``), powers are W. Envelope limits
use CSIP-AUS names (``opModExpLimW``, ``opModImpLimW``; per DER also ``opModGenLimW``, ``opModLoadLimW``) beside
the OpenADR 3 payload names (``EXPORT_CAPACITY_LIMIT``, ``IMPORT_CAPACITY_LIMIT``, here in W), so head-ends map
them without a table; the duplicates must agree. Limits are magnitudes (>= 0). A value not known is ``null``,
never NaN. Parsing is strict: unknown fields, wrong JSON types and non-finite numbers are errors.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from gateway.errors import MessageError
from gateway.types import (
    Authority,
    Command,
    DerLimit,
    DeviceState,
    Envelope,
    EnvelopeCertificate,
    Measurement,
)
from gateway.uplink._jws import Signer

# --- field types ----------------------------------------------------------------------------------------------------

Uuid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
#: Issuers, DER and device ids, kinds: printable ASCII, no spaces (they end up in logs, topics and audit rows).
Name = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]
Seq = Annotated[int, Field(ge=0, lt=2**63)]
UnixTime = Annotated[float, Field(ge=0, lt=1e11)]
Watts = Annotated[float, Field(ge=0, le=1e10)]
SignedWatts = Annotated[float, Field(ge=-1e10, le=1e10)]
Text = Annotated[str, StringConstraints(max_length=1000)]


def new_id() -> str:
    """A fresh message id (UUID 4, lowercase)."""
    return str(uuid.uuid4())


def _finite(x: float | None) -> float | None:
    """NaN/inf (not known) travel as null: JSON has no NaN."""
    return x if x is not None and math.isfinite(x) else None


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


@contextmanager
def _building(part: str) -> Iterator[None]:
    """Building ``part`` of a message from shared values that break the schema (a NaN limit, a bad id) is a
    MessageError naming the wire field."""
    try:
        yield
    except ValidationError as exc:
        raise MessageError(f"cannot build {part}: {describe(exc)}") from exc


class _Wire(BaseModel):
    """Frozen, strict (no coercion: ``"5"`` is not 5), no unknown fields, finite numbers, camelCase on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False,
                              alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    def payload(self) -> dict[str, Any]:
        """The JSON object to sign (wire names, nulls kept)."""
        return self.model_dump(mode="json")


class _Header(_Wire):
    id: Uuid
    issuer: Name
    seq: Seq
    issued_at: UnixTime


class _Window(_Header):
    valid_from: UnixTime
    valid_until: UnixTime

    @model_validator(mode="after")
    def _window(self) -> Self:
        if not self.valid_from < self.valid_until:
            raise ValueError(f"validFrom ({self.valid_from}) must be before validUntil ({self.valid_until})")
        return self


# --- envelope -------------------------------------------------------------------------------------------------------


class DerLimits(_Wire):
    """One DER's envelope: it may generate/export up to ``opModGenLimW`` = ``opModExpLimW`` and draw up to
    ``opModLoadLimW`` = ``opModImpLimW`` (the twin certifies the DER's own injection, so they coincide)."""

    der_id: Name
    op_mod_exp_lim_w: Watts
    op_mod_imp_lim_w: Watts
    op_mod_gen_lim_w: Watts
    op_mod_load_lim_w: Watts
    EXPORT_CAPACITY_LIMIT: Watts = Field(alias="EXPORT_CAPACITY_LIMIT")
    IMPORT_CAPACITY_LIMIT: Watts = Field(alias="IMPORT_CAPACITY_LIMIT")

    @model_validator(mode="after")
    def _agree(self) -> Self:
        if not (self.op_mod_exp_lim_w == self.op_mod_gen_lim_w == self.EXPORT_CAPACITY_LIMIT):
            raise ValueError("opModExpLimW, opModGenLimW and EXPORT_CAPACITY_LIMIT must be equal")
        if not (self.op_mod_imp_lim_w == self.op_mod_load_lim_w == self.IMPORT_CAPACITY_LIMIT):
            raise ValueError("opModImpLimW, opModLoadLimW and IMPORT_CAPACITY_LIMIT must be equal")
        return self

    @classmethod
    def of(cls, limit: DerLimit) -> DerLimits:
        e, i = limit.export_w, limit.import_w
        with _building(f"ders[{limit.der_id}]"):
            return cls(der_id=limit.der_id, op_mod_exp_lim_w=e, op_mod_imp_lim_w=i, op_mod_gen_lim_w=e,
                       op_mod_load_lim_w=i, EXPORT_CAPACITY_LIMIT=e, IMPORT_CAPACITY_LIMIT=i)

    def to_limit(self) -> DerLimit:
        return DerLimit(self.der_id, self.op_mod_exp_lim_w, self.op_mod_imp_lim_w)


class ConnectionPointLimits(_Wire):
    """The envelope at a connection point (net export/import through it, every DER behind it together)."""

    id: Name
    op_mod_exp_lim_w: Watts
    op_mod_imp_lim_w: Watts
    EXPORT_CAPACITY_LIMIT: Watts = Field(alias="EXPORT_CAPACITY_LIMIT")
    IMPORT_CAPACITY_LIMIT: Watts = Field(alias="IMPORT_CAPACITY_LIMIT")

    @model_validator(mode="after")
    def _agree(self) -> Self:
        if self.op_mod_exp_lim_w != self.EXPORT_CAPACITY_LIMIT:
            raise ValueError("opModExpLimW and EXPORT_CAPACITY_LIMIT must be equal")
        if self.op_mod_imp_lim_w != self.IMPORT_CAPACITY_LIMIT:
            raise ValueError("opModImpLimW and IMPORT_CAPACITY_LIMIT must be equal")
        return self

    @classmethod
    def of(cls, limit: DerLimit) -> ConnectionPointLimits:
        e, i = limit.export_w, limit.import_w
        with _building(f"connectionPoints[{limit.der_id}]"):
            return cls(id=limit.der_id, op_mod_exp_lim_w=e, op_mod_imp_lim_w=i, EXPORT_CAPACITY_LIMIT=e,
                       IMPORT_CAPACITY_LIMIT=i)

    def to_limit(self) -> DerLimit:
        return DerLimit(self.id, self.op_mod_exp_lim_w, self.op_mod_imp_lim_w)


class CertificateWire(_Wire):
    """The twin's certificate: worst voltages and loading the AC power flow saw with every DER at its limit, the
    margin kept, the method and how many AC solves. ``certified`` false: the default envelope, ``reason`` why.
    The figures are null when there is no certificate, and each one the AC check did not reach (``maxLoading`` also
    when nothing is rated)."""

    certified: bool
    reason: Text | None
    vmax_pu: float | None
    vmin_pu: float | None
    max_loading: float | None
    margin_pu: float | None
    method: Text | None
    ac_solves: Annotated[int, Field(ge=0)] | None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        present = self.method is not None
        if present != (self.ac_solves is not None):
            raise ValueError("method and acSolves are given together (a certificate) or both null (none)")
        figures = (self.vmax_pu, self.vmin_pu, self.max_loading, self.margin_pu)
        if not present and any(f is not None for f in figures):
            raise ValueError("vmaxPu, vminPu, maxLoading and marginPu need a certificate (method and acSolves)")
        if self.certified and (not present or None in (self.vmax_pu, self.vmin_pu, self.margin_pu)):
            raise ValueError("a certified envelope carries its figures (vmaxPu, vminPu, marginPu, method, acSolves)")
        if not self.certified and not self.reason:
            raise ValueError("an uncertified envelope says why (reason)")
        return self

    @classmethod
    def of(cls, envelope: Envelope) -> CertificateWire:
        c = envelope.certificate
        if c is None:
            with _building("certificate"):
                return cls(certified=envelope.certified, reason=envelope.reason, vmax_pu=None, vmin_pu=None,
                           max_loading=None, margin_pu=None, method=None, ac_solves=None)
        with _building("certificate"):
            return cls(certified=envelope.certified, reason=envelope.reason, vmax_pu=_finite(c.vmax_pu),
                       vmin_pu=_finite(c.vmin_pu), max_loading=_finite(c.max_loading), margin_pu=_finite(c.margin_pu),
                       method=c.method, ac_solves=c.ac_solves)

    def to_certificate(self) -> EnvelopeCertificate | None:
        if self.method is None or self.ac_solves is None:
            return None
        return EnvelopeCertificate(vmax_pu=_nan(self.vmax_pu), vmin_pu=_nan(self.vmin_pu),
                                   max_loading=_nan(self.max_loading), margin_pu=_nan(self.margin_pu),
                                   method=self.method, ac_solves=self.ac_solves)


class EnvelopeMessage(_Window):
    """An operating envelope per DER (and per connection point) with the twin's certificate."""

    type: Literal["envelope"] = "envelope"
    ders: tuple[DerLimits, ...] = Field(strict=False)  # JSON arrays arrive as lists
    connection_points: tuple[ConnectionPointLimits, ...] = Field(default=(), strict=False)
    certificate: CertificateWire

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for what, ids in (("derId", [d.der_id for d in self.ders]), ("id", [c.id for c in self.connection_points])):
            if len(set(ids)) != len(ids):
                raise ValueError(f"each {what} appears once")
        return self

    @classmethod
    def from_envelope(cls, envelope: Envelope, *, issued_at: float, message_id: str | None = None
                      ) -> EnvelopeMessage:
        """The wire form of ``envelope``; ``seq`` is ``envelope.sequence``."""
        with _building("the envelope message"):
            return cls(id=message_id or new_id(), issuer=envelope.issuer, seq=envelope.sequence, issued_at=issued_at,
                       valid_from=envelope.valid_from, valid_until=envelope.valid_until,
                       ders=tuple(DerLimits.of(lim) for lim in envelope.limits),
                       connection_points=tuple(ConnectionPointLimits.of(cp) for cp in envelope.connection_points),
                       certificate=CertificateWire.of(envelope))

    def to_envelope(self) -> Envelope:
        return Envelope(issuer=self.issuer, sequence=self.seq, valid_from=self.valid_from,
                        valid_until=self.valid_until, limits=tuple(d.to_limit() for d in self.ders),
                        certified=self.certificate.certified, certificate=self.certificate.to_certificate(),
                        reason=self.certificate.reason,
                        connection_points=tuple(c.to_limit() for c in self.connection_points))


# --- telemetry ------------------------------------------------------------------------------------------------------


class MeasurementWire(_Wire):
    """One :class:`~gateway.types.Measurement` (same fields, camelCase; sign conventions as there)."""

    device_id: Name
    at: UnixTime
    role: Name
    w: float | None
    var: float | None
    v: float | None
    hz: float | None
    wh: float | None
    soc_pct: float | None
    w_max: float | None
    state: int | None

    @classmethod
    def of(cls, m: Measurement) -> MeasurementWire:
        with _building(f"measurements[{m.device_id}]"):
            return cls(device_id=m.device_id, at=m.at, role=m.role, w=_finite(m.w), var=_finite(m.var), v=_finite(m.v),
                       hz=_finite(m.hz), wh=_finite(m.wh), soc_pct=_finite(m.soc_pct), w_max=_finite(m.w_max),
                       state=m.state)

    def to_measurement(self) -> Measurement:
        return Measurement(device_id=self.device_id, at=self.at, role=self.role, w=self.w, var=self.var, v=self.v,
                           hz=self.hz, wh=self.wh, soc_pct=self.soc_pct, w_max=self.w_max, state=self.state)


class TelemetryMessage(_Header):
    """The latest measurement of some devices."""

    type: Literal["telemetry"] = "telemetry"
    measurements: tuple[MeasurementWire, ...] = Field(strict=False)

    @classmethod
    def from_measurements(cls, measurements: Iterable[Measurement], *, issuer: str, seq: int, issued_at: float,
                          message_id: str | None = None) -> TelemetryMessage:
        with _building("the telemetry message"):
            return cls(id=message_id or new_id(), issuer=issuer, seq=seq, issued_at=issued_at,
                       measurements=tuple(MeasurementWire.of(m) for m in measurements))

    def to_measurements(self) -> tuple[Measurement, ...]:
        return tuple(m.to_measurement() for m in self.measurements)


# --- status and events ----------------------------------------------------------------------------------------------


class DeviceStatusWire(_Wire):
    """A device's freshness (its readings travel as telemetry)."""

    device_id: Name
    stale: bool
    reason: Text | None
    last_success: UnixTime | None

    @classmethod
    def of(cls, state: DeviceState) -> DeviceStatusWire:
        with _building(f"devices[{state.device_id}]"):
            return cls(device_id=state.device_id, stale=state.stale, reason=state.reason,
                       last_success=state.last_success)


class StatusMessage(_Header):
    """The gateway's state (``online``/``offline``; the MQTT will is a pre-signed ``offline``) and its devices'."""

    type: Literal["status"] = "status"
    state: Literal["online", "offline"]
    version: Text | None = None
    devices: tuple[DeviceStatusWire, ...] = Field(default=(), strict=False)

    @classmethod
    def from_states(cls, state: Literal["online", "offline"], devices: Iterable[DeviceState] = (), *, issuer: str,
                    seq: int, issued_at: float, version: str | None = None, message_id: str | None = None
                    ) -> StatusMessage:
        with _building("the status message"):
            return cls(id=message_id or new_id(), issuer=issuer, seq=seq, issued_at=issued_at, state=state,
                       version=version, devices=tuple(DeviceStatusWire.of(d) for d in devices))


EventValue = str | int | float | bool | None


class EventMessage(_Header):
    """Something an operator should know: a rejected command, a fallback to the default envelope, a stale device."""

    type: Literal["event"] = "event"
    kind: Name
    severity: Literal["info", "warning", "critical"]
    message: Text
    data: dict[Name, EventValue] = Field(default_factory=dict, max_length=64)


# --- commands -------------------------------------------------------------------------------------------------------


class CommandMessage(_Window):
    """A request for one DER's active power (``targetW``, export positive) over ``[validFrom, validUntil)``.

    ``gateway``, when given, is the one gateway the command is for (a command signed for one gateway cannot be
    replayed to another that checks it). The sender's authority is not in the message: it is the key's.
    """

    type: Literal["command"] = "command"
    der_id: Name
    target_w: SignedWatts
    gateway: Name | None = None
    extra: dict[Name, Text] = Field(default_factory=dict, max_length=32)

    @classmethod
    def from_command(cls, command: Command, *, seq: int, issued_at: float, gateway: str | None = None
                     ) -> CommandMessage:
        """The wire form of ``command`` (for head-ends, tools and tests): ``id`` is ``command.command_id``."""
        with _building("the command message"):
            return cls(id=command.command_id, issuer=command.issuer, seq=seq, issued_at=issued_at,
                       valid_from=command.valid_from, valid_until=command.valid_until, der_id=command.der_id,
                       target_w=command.target_w, gateway=gateway, extra=dict(command.extra))

    def to_command(self, *, authority: Authority, source: str, received_at: float) -> Command:
        """The :class:`~gateway.types.Command`, once the signature, issuer, times and replay window are checked."""
        return Command(command_id=self.id, issuer=self.issuer, authority=authority, der_id=self.der_id,
                       target_w=self.target_w, valid_from=self.valid_from, valid_until=self.valid_until,
                       source=source, received_at=received_at, extra=dict(self.extra))


# --- any message ----------------------------------------------------------------------------------------------------

Message = Annotated[EnvelopeMessage | TelemetryMessage | StatusMessage | EventMessage | CommandMessage,
                    Field(discriminator="type")]
MESSAGE_TYPES = ("envelope", "telemetry", "status", "event", "command")
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def describe(error: ValidationError) -> str:
    """A short, input-free summary of a validation error: where and what, the first few."""
    parts = []
    for e in error.errors(include_url=False, include_input=False, include_context=False)[:3]:
        where = ".".join(_wire_name(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _wire_name(part: str | int) -> str:
    """A location part as the wire spells it (errors of messages built in Python carry the Python names)."""
    text = str(part)
    return to_camel(text) if "_" in text and text.islower() else text


def parse_message(payload: Mapping[str, Any]) -> Message:
    """The message a (verified) payload holds, by its ``type``; :class:`MessageError` naming the field if not."""
    try:
        return _MESSAGE.validate_python(payload, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise MessageError(f"not a valid gridedge message: {describe(exc)}") from exc


def sign_message(signer: Signer, message: _Header) -> bytes:
    """The compact JWS of a wire message (its :meth:`payload`, canonical JSON)."""
    return signer.sign(message.payload())
