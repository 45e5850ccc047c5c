"""The gateway's configuration file: pydantic models of the TOML, loading, and errors that name the key and the fix.

Owns the ``[site]`` table and the ``[[devices]]`` list. Later sections (``[feeder]``, ``[limits]``, ``[uplink]``,
``[security]``) are added as optional sub-models with defaults on :class:`Config`; only ``site`` and ``devices``
are required, so an older file keeps loading.

Example::

    [site]
    id = "depot-7"
    gateway_id = "gw-1"
    log_level = "info"

    [[devices]]                 # Modbus TCP
    id = "inv-1"
    profile = "generic"         # a file in device_profiles/; port, unit, base and models default from it
    host = "192.0.2.10"
    unit = 1
    poll_interval_s = 1.0
    rated_w = 5000
    role = "inverter"

    [[devices]]                 # Modbus RTU: several devices may share one serial port (one bus)
    id = "meter-1"
    serial = "/dev/ttyUSB0"
    baudrate = 19200            # parity "N", stopbits 1, bytesize 8 unless given
    unit = 2
    role = "meter"

Every problem in a file is reported at once, one per line, as ``FILE: key.path: what is wrong — the fix``, e.g.
``gridedge.toml: devices[2].unit: 300 is not a Modbus unit id — use 1..247``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError, ProfileError
from gateway.profiles import (
    Base,
    DeviceProfile,
    ModelId,
    Port,
    UnitId,
    find_profile,
    load_profile,
    read_profile,
)
from gateway.profiles import _fail as fail
from gateway.profiles import _non_empty as non_empty
from gateway.profiles import _parse_toml as parse_toml
from gateway.profiles import _problems as problems
from gateway.profiles import _show as show
from gateway.types import Authority

__all__ = [
    "BAUDRATES",
    "Config",
    "DefaultEnvelopeConfig",
    "DeviceConfig",
    "DispatchConfig",
    "HeadEndConfig",
    "LogLevel",
    "MqttUplinkConfig",
    "OpenAdrUplinkConfig",
    "Parity",
    "PowerLimits",
    "Role",
    "SerialLink",
    "SigningConfig",
    "SiteConfig",
    "TcpLink",
    "TwinConfig",
    "TwinDerConfig",
    "UplinkConfig",
    "build_config",
    "load_config",
    "parse_config",
]

Role = Literal["inverter", "battery", "meter"]
LogLevel = Literal["debug", "info", "warning", "error"]
Parity = Literal["N", "E", "O"]

#: Serial speeds accepted for Modbus RTU.
BAUDRATES: tuple[int, ...] = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)

_SERIAL_DEFAULTS: dict[str, Any] = {"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8}
_SERIAL_KEYS = tuple(_SERIAL_DEFAULTS)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DEVICE_ID = re.compile(r"[a-z0-9_-]{1,64}")
_PROFILE_DIRS = "profile_dirs"  # validation-context key: directories to find profiles in


# --- field types ----------------------------------------------------------------------------------------------------


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise fail(
            "name",
            f"{show(value)} cannot be used in MQTT topics — use 1-64 letters, digits, '-' or '_' "
            f"(e.g. {show(_slug(value, lower=False, fallback='site-1'))})",
        )
    return value


def _check_device_id(value: str) -> str:
    if not _DEVICE_ID.fullmatch(value):
        raise fail(
            "device_id",
            f"{show(value)} is not a device id — use 1-64 lowercase letters, digits, '-' or '_' "
            f"(e.g. {show(_slug(value, lower=True, fallback='inv-1'))})",
        )
    return value


def _slug(value: str, *, lower: bool, fallback: str) -> str:
    """``value`` made into an id, offered as the fix."""
    text = value.lower() if lower else value
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:64]
    return text or fallback


def _check_host(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise fail("host", f'{show(value)} is not a host name or IP address — write e.g. host = "192.0.2.10"')
    m = re.fullmatch(r"([^:\[\]]+):(\d+)", value)
    if m:
        raise fail("host", f'{show(value)} includes a port — write host = "{m[1]}" and port = {m[2]}')
    return value


def _check_serial(value: str) -> str:
    if not value.strip():
        raise fail("serial", 'is empty — give the serial port, e.g. serial = "/dev/ttyUSB0" (or "COM3" on Windows)')
    return value


def _check_baudrate(value: int) -> int:
    if value not in BAUDRATES:
        raise fail("baudrate", f"{value} is not a serial speed — use one of {', '.join(map(str, BAUDRATES))}")
    return value


def _parity(value: Any) -> Any:
    if isinstance(value, str):
        words = {"n": "N", "none": "N", "e": "E", "even": "E", "o": "O", "odd": "O"}
        if value.strip().lower() in words:
            return words[value.strip().lower()]
    raise fail("parity", f'{show(value)} is not a parity — use "N" (none), "E" (even) or "O" (odd)')


def _log_level(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("debug", "info", "warning", "error"):
        return value.strip().lower()
    raise fail("log_level", f'{show(value)} is not a log level — use "debug", "info", "warning" or "error"')


Name = Annotated[str, AfterValidator(_check_name)]
DeviceId = Annotated[str, AfterValidator(_check_device_id)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


class _Section(BaseModel):
    """Frozen, no unknown keys, no type coercion (TOML is typed: ``"502"`` for a port is a mistake to report)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# --- [site] ---------------------------------------------------------------------------------------------------------


class SiteConfig(_Section):
    """``[site]``: who this gateway is. Both ids appear in MQTT topics ``gridedge/<site>/<gateway>/...``."""

    id: Name
    gateway_id: Name
    log_level: Annotated[LogLevel, BeforeValidator(_log_level)] = "info"

    @property
    def site_id(self) -> str:
        return self.id


# --- [[devices]] ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpLink:
    """Modbus TCP: one connection per (host, port), shared by every unit behind it."""

    host: str
    port: int

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialLink:
    """Modbus RTU: one bus per serial port, shared (one request at a time) by every unit on it."""

    port: str
    baudrate: int
    parity: Parity
    stopbits: int
    bytesize: int

    @property
    def endpoint(self) -> str:
        return f"serial:{self.port}"


class DeviceConfig(_Section):
    """One ``[[devices]]`` entry: a Modbus unit reached over TCP (``host``) or RTU (``serial``), never both.

    ``port``, ``unit``, ``base`` and ``models`` default from the profile; serial settings default to 9600 8N1.
    ``profile`` is given as a name in the file and holds the loaded :class:`DeviceProfile` here.
    """

    id: DeviceId
    profile: DeviceProfile
    host: Annotated[str, AfterValidator(_check_host)] | None = None
    port: Port | None = None
    serial: Annotated[str, AfterValidator(_check_serial)] | None = None
    baudrate: Annotated[int, AfterValidator(_check_baudrate)] | None = None
    parity: Annotated[Parity, BeforeValidator(_parity)] | None = None
    stopbits: Literal[1, 2] | None = None
    bytesize: Literal[7, 8] | None = None
    unit: UnitId = 1
    base: Base = "auto"
    poll_interval_s: Seconds = 1.0
    timeout_s: Seconds = 1.0
    models: Annotated[tuple[ModelId, ...], Field(strict=False), AfterValidator(non_empty)] = (1,)
    rated_w: Annotated[float, Field(gt=0)] | None = None
    role: Role | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill keys left out from the profile's defaults (and 9600 8N1 for serial), before validation."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        name = data.setdefault("profile", "generic")
        profile = name if isinstance(name, DeviceProfile) else None
        if isinstance(name, str):
            try:
                profile = load_profile(name, _profile_dirs(info))
            except ProfileError:
                profile = None  # reported against the key by the field validator
            else:
                data["profile"] = profile
        if profile is not None:
            data.setdefault("unit", profile.defaults.unit)
            data.setdefault("base", profile.defaults.base)
            data.setdefault("models", profile.defaults.models)
        tcp, rtu = data.get("host") is not None, data.get("serial") is not None
        if tcp and not rtu:
            data.setdefault("port", profile.defaults.port if profile is not None else 502)
        if rtu and not tcp:
            for key, default in _SERIAL_DEFAULTS.items():
                data.setdefault(key, default)
        return data

    @field_validator("profile", mode="before")
    @classmethod
    def _load_profile(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            try:
                path = find_profile(value, _profile_dirs(info))
            except ProfileError as exc:
                raise fail("profile", str(exc)) from None
            try:
                return read_profile(path)
            except ProfileError as exc:
                detail = str(exc).replace("\n", "\n    ")
                raise fail("profile", f"profile {show(value)} is broken — fix its file:\n    {detail}") from None
        if isinstance(value, DeviceProfile):
            return value
        raise fail("profile", f'{show(value)} is not a profile name — write e.g. profile = "generic"')

    @model_validator(mode="after")
    def _one_transport(self) -> DeviceConfig:
        if self.host is not None and self.serial is not None:
            raise fail(
                "transport", "give either host (Modbus TCP) or serial (Modbus RTU), not both — remove one of them"
            )
        if self.host is None and self.serial is None:
            raise fail(
                "transport",
                'give host = "192.0.2.10" for Modbus TCP or serial = "/dev/ttyUSB0" for Modbus RTU',
            )
        if self.serial is not None and self.port is not None:
            raise fail(
                "port", "a serial device has no TCP port — remove port (or use host instead of serial)", key="port"
            )
        if self.host is not None:
            for key in _SERIAL_KEYS:
                if getattr(self, key) is not None:
                    raise fail(
                        key,
                        f"only applies to serial devices — remove {key} (or use serial instead of host)",
                        key=key,
                    )
        return self

    @field_serializer("profile")
    def _profile_name(self, profile: DeviceProfile) -> str:
        """Dump the profile by name, as the file has it, so a dumped config loads again."""
        return profile.name

    @property
    def transport(self) -> Literal["tcp", "rtu"]:
        return "tcp" if self.host is not None else "rtu"

    @property
    def link(self) -> TcpLink | SerialLink:
        """How to reach the device; ``link.endpoint`` keys the one connection and lock per physical endpoint."""
        if self.host is not None:
            return TcpLink(self.host, self.port if self.port is not None else self.profile.defaults.port)
        assert self.serial is not None  # exactly one of host and serial: checked at validation
        return SerialLink(
            self.serial,
            self.baudrate if self.baudrate is not None else _SERIAL_DEFAULTS["baudrate"],
            self.parity if self.parity is not None else _SERIAL_DEFAULTS["parity"],
            self.stopbits if self.stopbits is not None else _SERIAL_DEFAULTS["stopbits"],
            self.bytesize if self.bytesize is not None else _SERIAL_DEFAULTS["bytesize"],
        )

    @property
    def endpoint(self) -> str:
        return self.link.endpoint


def _profile_dirs(info: ValidationInfo) -> tuple[Path, ...] | None:
    ctx = info.context
    if isinstance(ctx, Mapping) and ctx.get(_PROFILE_DIRS) is not None:
        return tuple(Path(d) for d in ctx[_PROFILE_DIRS])
    return None


# --- [dispatch] -----------------------------------------------------------------------------------------------------


def _authority(value: Any) -> Any:
    if isinstance(value, Authority):
        return value
    if isinstance(value, str):
        try:
            return Authority(value.strip().lower())
        except ValueError:
            close = difflib.get_close_matches(value.strip().lower(), [a.value for a in Authority], n=1)
            if close:
                raise fail("authority", f'{show(value)} is not an authority — did you mean "{close[0]}"?') from None
    names = ", ".join(f'"{a.value}"' for a in Authority)
    raise fail("authority", f"{show(value)} is not an authority — use one of {names}")


def _rank_each_once(rank: tuple[Authority, ...]) -> tuple[Authority, ...]:
    example = "[" + ", ".join(f'"{a.value}"' for a in Authority) + "]"
    seen: set[Authority] = set()
    for authority in rank:
        if authority in seen:
            raise fail("authority_rank", f'"{authority.value}" is listed twice — list each authority once, '
                                         f"highest first, e.g. {example}")
        seen.add(authority)
    missing = [a.value for a in Authority if a not in seen]
    if missing:
        raise fail("authority_rank", f'{", ".join(map(show, missing))} missing — list each authority once, highest '
                                     f"first, e.g. {example}")
    return rank


def _path_text(value: str) -> str:
    if not value.strip():
        raise fail("path", 'is empty — give a file path, e.g. audit_log = "/var/lib/gridedge/audit.jsonl"')
    return value


Watts = Annotated[float, Field(ge=0)]


class PowerLimits(_Section):
    """``{ export_w = .., import_w = .. }``: the most a DER may export and import, magnitudes in W (>= 0)."""

    export_w: Watts
    import_w: Watts


class DefaultEnvelopeConfig(_Section):
    """``[dispatch.default_envelope]``: the fail-safe limits used while no valid certified envelope is in force.

    ``export_w``/``import_w`` apply to every DER; ``ders`` overrides them per DER
    (``ders = { bat-1 = { export_w = 0, import_w = 0 } }``). Like CSIP-AUS's DefaultDERControl.
    """

    export_w: Watts
    import_w: Watts
    ders: dict[str, PowerLimits] = Field(default_factory=dict)

    def limits_for(self, der_id: str) -> PowerLimits:
        return self.ders.get(der_id) or PowerLimits(export_w=self.export_w, import_w=self.import_w)


class DispatchConfig(_Section):
    """``[dispatch]``: who may command the DERs, within what, and where every decision is recorded.

    Example::

        [dispatch]
        authority_rank = ["grid-operator", "aggregator", "local"]   # highest first; each once
        reversion_s = 300            # longest reversion timer written with a setpoint
        cap_deadband_pct = 2.0       # a tighter cap is written at once; a looser one when it loosens by more
        audit_log = "/var/lib/gridedge/audit.jsonl"

        [dispatch.customer_limits]   # per DER (every inverter and battery): no command exceeds these
        inv-1 = { export_w = 5000, import_w = 0 }
        bat-1 = { export_w = 3000, import_w = 3000 }

        [dispatch.default_envelope]  # fail-safe: in force while no valid certified envelope is
        export_w = 1500
        import_w = 1500
    """

    authority_rank: Annotated[
        tuple[Annotated[Authority, BeforeValidator(_authority)], ...],
        Field(strict=False),
        AfterValidator(_rank_each_once),
    ] = (Authority.GRID_OPERATOR, Authority.AGGREGATOR, Authority.LOCAL)
    customer_limits: dict[str, PowerLimits] = Field(default_factory=dict)
    default_envelope: DefaultEnvelopeConfig
    reversion_s: Annotated[int, Field(ge=1, le=86_400)] = 300
    cap_deadband_pct: Annotated[float, Field(ge=0, le=20, allow_inf_nan=False)] = 2.0
    audit_log: Annotated[str, AfterValidator(_path_text)]
    audit_recover_torn_tail: bool = False


def _check_dispatch(dispatch: DispatchConfig, devices: tuple[DeviceConfig, ...]) -> None:
    """Customer limits name configured DERs, and every inverter and battery has them."""
    by_id = {d.id: d for d in devices}
    for der_id in dispatch.customer_limits:
        key = f"dispatch.customer_limits.{der_id}"
        dev = by_id.get(der_id)
        if dev is None:
            close = difflib.get_close_matches(der_id, list(by_id), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise fail("unknown_der", f"no device {show(der_id)} in [[devices]]{hint} — fix the id or remove the entry",
                       key=key)
        if dev.role == "meter":
            raise fail("not_a_der", f"{show(der_id)} is a meter — customer limits are for inverters and batteries: "
                                    "remove the entry", key=key)
    for dev in devices:
        if dev.role in ("inverter", "battery") and dev.id not in dispatch.customer_limits:
            export = f"{dev.rated_w:g}" if dev.rated_w is not None else "5000"
            imp = export if dev.role == "battery" else "0"
            raise fail("no_customer_limits",
                       f"no limits for {dev.role} {show(dev.id)} — add {dev.id} = {{ export_w = {export}, import_w = "
                       f"{imp} }} (what its connection agreement allows)", key="dispatch.customer_limits")
    for der_id in dispatch.default_envelope.ders:
        if der_id not in dispatch.customer_limits:
            raise fail("unknown_der", f"{show(der_id)} has no customer limits, so dispatch never commands it — fix the "
                                      "id or remove the entry", key=f"dispatch.default_envelope.ders.{der_id}")


# --- [twin] ---------------------------------------------------------------------------------------------------------

#: Feeders bundled through pip-installed pandapower: ``feeder = "builtin:NAME"``.
BUILTIN_FEEDERS = ("case33bw", "ieee-european-lv")


def _check_feeder(value: str) -> str:
    if value.startswith("builtin:"):
        if value.removeprefix("builtin:") not in BUILTIN_FEEDERS:
            raise fail("feeder", f"{show(value)} is not a bundled feeder — use one of "
                                 f"{', '.join('builtin:' + n for n in BUILTIN_FEEDERS)} or a file path")
        return value
    if not value.lower().endswith((".toml", ".json", ".dss")):
        raise fail("feeder", f"{show(value)} is not a feeder — give a gridedge feeder file (.toml/.json), an OpenDSS "
                             "master file (.dss) or builtin:case33bw")
    return value


class TwinDerConfig(_Section):
    """``[[twin.ders]]``: where a configured inverter or battery connects to the feeder."""

    device: DeviceId
    bus: Annotated[str, Field(min_length=1)]
    phase: Literal["abc", "a", "b", "c"] = "abc"
    rating_w: Annotated[float, Field(gt=0)] | None = None  # default: the device's rated_w


class TwinConfig(_Section):
    """``[twin]``: the feeder segment the gateway sits on and how its envelopes are computed.

    Example::

        [twin]
        feeder = "/etc/gridedge/feeder.toml"   # or a .dss master file, or "builtin:case33bw"
        interval_s = 60                        # a new certified envelope this often
        validity_s = 300                       # each envelope's validUntil - validFrom
        policy = "equal"                       # equal | proportional | max-total
        vmin_pu = 0.95                         # default: the feeder file's limits (ANSI C84.1 Range A)
        vmax_pu = 1.05
        load_bound = [0.2, 1.2]                # unmeasured loads: this range times their estimate
        source_v_pu = 1.02                     # the source (substation busbar) voltage; default: the feeder's
        operating_point = "estimate"           # estimate | head-meter | nominal: where each envelope starts;
                                               # "estimate" falls back to head-meter, then nominal (segment.py)

        [[twin.ders]]
        device = "inv-1"
        bus = "b17"
        phase = "a"
    """

    feeder: Annotated[str, AfterValidator(_check_feeder)]
    interval_s: Seconds = 60.0
    validity_s: Seconds = 300.0
    policy: Literal["equal", "proportional", "max-total"] = "equal"
    vmin_pu: Annotated[float, Field(gt=0.5, lt=1.0)] | None = None
    vmax_pu: Annotated[float, Field(gt=1.0, lt=1.5)] | None = None
    margin_v_pu: Annotated[float, Field(ge=0, le=0.05)] = 0.002
    load_bound: Annotated[tuple[float, float], Field(strict=False)] = (0.2, 1.2)
    source_v_pu: Annotated[float, Field(gt=0.8, lt=1.2)] | None = None  # operating point; default: the feeder's
    operating_point: Literal["estimate", "head-meter", "nominal"] = "estimate"
    ders: Annotated[tuple[TwinDerConfig, ...], Field(strict=False), AfterValidator(non_empty)]


def _check_twin(twin: TwinConfig, devices: tuple[DeviceConfig, ...]) -> None:
    """Every twin DER names a configured inverter or battery, once, with a rating from somewhere."""
    by_id = {d.id: d for d in devices}
    seen: set[str] = set()
    for i, der in enumerate(twin.ders):
        key = f"twin.ders[{i}].device"
        dev = by_id.get(der.device)
        if dev is None:
            close = difflib.get_close_matches(der.device, list(by_id), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise fail("unknown_der", f"no device {show(der.device)} in [[devices]]{hint} — fix the id", key=key)
        if dev.role == "meter":
            raise fail("not_a_der", f"{show(der.device)} is a meter — list inverters and batteries here", key=key)
        if der.device in seen:
            raise fail("duplicate_der", f"{show(der.device)} is listed twice — one connection point per DER", key=key)
        seen.add(der.device)
        if der.rating_w is None and dev.rated_w is None:
            raise fail("no_rating", f"no rating for {show(der.device)} — set rating_w here or rated_w on the device",
                       key=f"twin.ders[{i}].rating_w")
    lo, hi = twin.load_bound
    if not 0 <= lo <= hi:
        raise fail("load_bound", f"{list(twin.load_bound)} — use [low, high] with 0 <= low <= high, e.g. [0.2, 1.2]",
                   key="twin.load_bound")


# --- [uplink] -------------------------------------------------------------------------------------------------------

_FINGERPRINT_HEX = frozenset("0123456789abcdef")
_ISSUER = re.compile(r"[\x21-\x7e]{1,128}")


def _file_path(value: str) -> str:
    if not value.strip():
        raise fail("path", 'is empty — give the path of a PEM file, e.g. "/etc/gridedge/pki/gateway.pem"')
    return value


def _https(value: str) -> str:
    if not value.startswith("https://"):
        raise fail("vtn_url", f"{show(value)} is not https — the VTN is reached over mutual TLS: write e.g. "
                              '"https://vtn.example:8443/OpenADR2/Simple/2.0b"')
    return value


def _fingerprint(value: str) -> str:
    hexed = value.replace(":", "").replace(" ", "").lower()
    if len(hexed) not in (64, 20) or not set(hexed) <= _FINGERPRINT_HEX:
        raise fail("vtn_fingerprint", f"{show(value)} is not a certificate fingerprint — give the VTN certificate's "
                                      "SHA-256 (64 hex digits: openssl x509 -noout -fingerprint -sha256 -in vtn.pem)")
    return value


def _issuer(value: str) -> str:
    if not _ISSUER.fullmatch(value):
        raise fail("issuer", f"{show(value)} is not an issuer name — use 1-128 printable characters without spaces, "
                             'as the head-end writes it in its commands, e.g. "dnsp-headend"')
    return value


def _simple_levels(value: Any) -> Any:
    """``{ "1" = 0.5, ... }`` (TOML keys are text) -> ``{1: 0.5, ...}``; levels 1-3, fractions in [0, 1]."""
    if not isinstance(value, Mapping):
        raise fail("simple_levels", f'{show(value)} is not a table — write e.g. simple_levels = {{ "1" = 0.5, '
                                    '"2" = 0.2, "3" = 0.0 }}')
    out: dict[int, float] = {}
    for key, fraction in value.items():
        level = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        if level not in (1, 2, 3) or isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not 0.0 <= fraction <= 1.0:
            raise fail("simple_levels", f"{show(key)} = {show(fraction)} — SIMPLE levels 1-3 map to a fraction of "
                                        'the export rating in [0, 1], e.g. "1" = 0.5 (level 0 is normal operation)')
        out[int(level)] = float(fraction)
    return out


PemPath = Annotated[str, AfterValidator(_file_path)]


class MqttUplinkConfig(_Section):
    """``[uplink.mqtt]``: the broker, reached over mutual TLS (MQTT v5). The key must be mode 0600, EC P-256."""

    host: Annotated[str, AfterValidator(_check_host)]
    port: Port = 8883
    ca: PemPath
    cert: PemPath
    key: PemPath
    keepalive_s: Annotated[int, Field(ge=5, le=65535)] = 30
    client_id: Name | None = None  # default gridedge-<site>-<gateway_id>


class OpenAdrUplinkConfig(_Section):
    """``[uplink.openadr]``: the OpenADR 2.0b VEN. ``der_ids`` default to every DER dispatch commands."""

    vtn_url: Annotated[str, AfterValidator(_https)]
    ven_name: Annotated[str, Field(min_length=1, max_length=128)]
    cert: PemPath
    key: PemPath
    ca: PemPath
    vtn_fingerprint: Annotated[str, AfterValidator(_fingerprint)]
    der_ids: Annotated[tuple[DeviceId, ...], Field(strict=False)] | None = None
    authority: Annotated[Authority, BeforeValidator(_authority)] = Authority.AGGREGATOR
    ven_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    simple_levels: Annotated[dict[int, float], BeforeValidator(_simple_levels), Field(strict=False)] | None = None
    load_dispatch_sign: Literal["load", "generation"] = "load"
    report_min_period_s: Annotated[int, Field(ge=1, le=86_400)] = 10
    report_max_period_s: Annotated[int, Field(ge=1, le=86_400)] = 3600
    nominal_hz: Literal[50, 60] = 50
    nominal_v: Annotated[int, Field(gt=0, le=1000)] = 230
    check_hostname: bool = True

    @model_validator(mode="after")
    def _periods(self) -> OpenAdrUplinkConfig:
        if self.report_min_period_s > self.report_max_period_s:
            raise fail("report_periods", f"report_min_period_s ({self.report_min_period_s}) is above "
                                         f"report_max_period_s ({self.report_max_period_s}) — make min <= max",
                       key="report_min_period_s")
        return self


class SigningConfig(_Section):
    """``[uplink.signing]``: the gateway's ES256 key and certificate; every message it publishes is signed."""

    cert: PemPath
    key: PemPath


class HeadEndConfig(_Section):
    """``[[uplink.headends]]``: a head-end allowed to send commands: its signing certificate, the authority its
    commands carry, and the issuer name it writes in them."""

    cert: PemPath
    authority: Annotated[Authority, BeforeValidator(_authority)]
    issuer: Annotated[str, AfterValidator(_issuer)]


class UplinkConfig(_Section):
    """``[uplink]``: where the gateway reports to and takes signed commands from.

    Example::

        [uplink]
        state_dir = "/var/lib/gridedge"   # the durable outbox, sequence numbers, command replay state
        telemetry_interval_s = 10

        [uplink.signing]                  # every published message is a JWS (ES256) under this key
        cert = "/etc/gridedge/pki/gateway.pem"
        key = "/etc/gridedge/pki/gateway.key"

        [uplink.mqtt]                     # topics gridedge/<site>/<gateway>/{status,telemetry,envelope,events,cmd}
        host = "broker.example"
        port = 8883
        ca = "/etc/gridedge/pki/ca.pem"
        cert = "/etc/gridedge/pki/gateway.pem"
        key = "/etc/gridedge/pki/gateway.key"

        [[uplink.headends]]               # who may send commands on .../cmd, signed with this certificate
        cert = "/etc/gridedge/pki/dnsp.pem"
        authority = "grid-operator"
        issuer = "dnsp-headend"

        [uplink.openadr]                  # an OpenADR 2.0b VTN: events become commands, reports go up
        vtn_url = "https://vtn.example:8443/OpenADR2/Simple/2.0b"
        ven_name = "depot-7"
        cert = "/etc/gridedge/pki/ven.pem"
        key = "/etc/gridedge/pki/ven.key"
        ca = "/etc/gridedge/pki/ca.pem"
        vtn_fingerprint = "…64 hex digits…"
    """

    state_dir: Annotated[str, AfterValidator(_path_text)] = "/var/lib/gridedge"
    telemetry_interval_s: Seconds = 10.0
    command_replay_window_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    command_clock_skew_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    signing: SigningConfig | None = None
    mqtt: MqttUplinkConfig | None = None
    openadr: OpenAdrUplinkConfig | None = None
    headends: Annotated[tuple[HeadEndConfig, ...], Field(strict=False)] = ()

    @model_validator(mode="after")
    def _consistent(self) -> UplinkConfig:
        if self.mqtt is not None and self.signing is None:
            raise fail("no_signing", "everything the gateway publishes is signed — add [uplink.signing] with cert "
                                     "and key (or remove [uplink.mqtt])", key="signing")
        if self.headends and self.mqtt is None:
            raise fail("no_mqtt", "head-end commands arrive over MQTT (.../cmd) — add [uplink.mqtt] (or remove "
                                  "[[uplink.headends]])", key="headends")
        if self.command_clock_skew_s >= self.command_replay_window_s:
            raise fail("clock_skew", f"{self.command_clock_skew_s:g} s is not below command_replay_window_s "
                                     f"({self.command_replay_window_s:g} s) — lower it (30 is usual)",
                       key="command_clock_skew_s")
        issuers: dict[str, Authority] = {}
        for i, head in enumerate(self.headends):
            seen = issuers.setdefault(head.issuer, head.authority)
            if seen is not head.authority:
                raise fail("issuer_authority", f"issuer {show(head.issuer)} is already listed as {seen.value} — one "
                                               "issuer speaks with one authority: fix the authority or the issuer",
                           key=f"headends[{i}].authority")
        return self


def _check_uplink(uplink: UplinkConfig, dispatch: DispatchConfig | None) -> None:
    """Commands need dispatch; OpenADR's DERs are DERs dispatch commands."""
    if dispatch is None:
        for present, what in ((uplink.headends, "[[uplink.headends]]"), (uplink.openadr, "[uplink.openadr]")):
            if present:
                raise fail("no_dispatch", f"{what} sends commands, and only dispatch carries them out — add a "
                                          "[dispatch] section (customer limits, default envelope, audit log)",
                           key="uplink")
        return
    if uplink.openadr is not None and uplink.openadr.der_ids is not None:
        for i, der in enumerate(uplink.openadr.der_ids):
            if der not in dispatch.customer_limits:
                close = difflib.get_close_matches(der, list(dispatch.customer_limits), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise fail("unknown_der", f"{show(der)} has no customer limits in [dispatch]{hint} — list DERs "
                                          "dispatch commands", key=f"uplink.openadr.der_ids[{i}]")


# --- the whole file -------------------------------------------------------------------------------------------------


def _at_least_one_device(devices: tuple[DeviceConfig, ...]) -> tuple[DeviceConfig, ...]:
    if not devices:
        raise fail("no_devices", "is empty — add at least one [[devices]] table")
    return devices


class Config(_Section):
    """The whole configuration file. ``site`` and ``devices`` are required; later sections will be optional."""

    site: SiteConfig
    devices: Annotated[tuple[DeviceConfig, ...], Field(strict=False), AfterValidator(_at_least_one_device)]
    dispatch: DispatchConfig | None = None
    twin: TwinConfig | None = None
    uplink: UplinkConfig | None = None

    @model_validator(mode="after")
    def _twin_matches_devices(self) -> Config:
        if self.twin is not None:
            _check_twin(self.twin, self.devices)
        return self

    @model_validator(mode="after")
    def _uplink_matches_dispatch(self) -> Config:
        if self.uplink is not None:
            _check_uplink(self.uplink, self.dispatch)
        return self

    @model_validator(mode="after")
    def _dispatch_matches_devices(self) -> Config:
        if self.dispatch is not None:
            _check_dispatch(self.dispatch, self.devices)
        return self

    @model_validator(mode="after")
    def _devices_distinct(self) -> Config:
        ids: dict[str, int] = {}
        units: dict[tuple[str, int], int] = {}
        buses: dict[str, int] = {}
        for i, dev in enumerate(self.devices):
            if dev.id in ids:
                raise fail(
                    "duplicate_id",
                    f"{show(dev.id)} is already the id of devices[{ids[dev.id]}] — give each device its own id",
                    key=f"devices[{i}].id",
                )
            ids[dev.id] = i
            endpoint = dev.endpoint.lower() if dev.transport == "tcp" else dev.endpoint
            if (endpoint, dev.unit) in units:
                first = units[(endpoint, dev.unit)]
                raise fail(
                    "duplicate_unit",
                    f"unit {dev.unit} at {dev.endpoint} is already devices[{first}] — "
                    "one Modbus unit is one device: fix the unit (or the address)",
                    key=f"devices[{i}].unit",
                )
            units[(endpoint, dev.unit)] = i
            if isinstance(dev.link, SerialLink):
                if dev.link.port in buses:
                    first_link = self.devices[buses[dev.link.port]].link
                    assert isinstance(first_link, SerialLink)
                    for key in _SERIAL_KEYS:
                        mine, theirs = getattr(dev.link, key), getattr(first_link, key)
                        if mine != theirs:
                            raise fail(
                                "bus_settings",
                                f"{show(mine)} differs from devices[{buses[dev.link.port]}] on the same serial port "
                                f"{show(dev.link.port)} ({show(theirs)}) — a bus runs at one setting: make them equal",
                                key=f"devices[{i}].{key}",
                            )
                else:
                    buses[dev.link.port] = i
        return self

    def device(self, device_id: str) -> DeviceConfig:
        """The device with ``device_id``; :class:`KeyError` naming the known ids if there is none."""
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        close = difflib.get_close_matches(device_id, [d.id for d in self.devices], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise KeyError(f"no device {show(device_id)}{hint}")


# --- loading --------------------------------------------------------------------------------------------------------


def build_config(
    data: Mapping[str, Any], source: str = "<config>", *, profile_dirs: Iterable[Path | str] | None = None
) -> Config:
    """Validate an already-parsed mapping (e.g. built in code for the demo); :class:`ConfigError` lists every problem.

    ``profile_dirs`` replaces the default profile search path (see :mod:`gateway.profiles`).
    """
    context = {_PROFILE_DIRS: tuple(profile_dirs) if profile_dirs is not None else None}
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems(exc, Config))) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a gridedge config") from None


def parse_config(text: str, source: str = "<config>", *, profile_dirs: Iterable[Path | str] | None = None) -> Config:
    """Parse TOML ``text`` (``source`` names it in messages) into a :class:`Config`, or raise :class:`ConfigError`."""
    return build_config(parse_toml(text, source, ConfigError), source, profile_dirs=profile_dirs)


def load_config(path: Path | str, *, profile_dirs: Iterable[Path | str] | None = None) -> Config:
    """Read and parse the config file at ``path``; :class:`ConfigError` if it is missing, unreadable or invalid."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file — check the path (or create the file)") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a config file — give the path of the .toml file") from None
    except PermissionError:
        raise ConfigError(f"{source}: permission denied — let the gateway's user read it") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start}) — save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    return parse_config(text, source, profile_dirs=profile_dirs)
