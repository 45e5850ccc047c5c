"""The project's exception tree: one root, one subclass per failure, each also a stdlib type.

Library code raises these; it never logs-and-raises or returns ``None`` for failure.
"""

from __future__ import annotations


class GridedgeError(Exception):
    """Root of every error gridedge raises on purpose."""


class ConfigError(GridedgeError, ValueError):
    """A configuration file or value is wrong; the message names the key and the fix."""


class ProfileError(ConfigError):
    """A device profile (``device_profiles/*.toml``) is malformed or unknown."""


class DeviceError(GridedgeError, OSError):
    """Talking to a field device failed. ``reason`` is short and stable enough to show as a stale reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceTimeout(DeviceError, TimeoutError):
    """The device did not answer in time."""


class DeviceDisconnected(DeviceError, ConnectionError):
    """The connection to the device could not be opened or was lost."""


class DeviceExceptionResponse(DeviceError):
    """The device answered a Modbus exception (e.g. 2, illegal data address)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class DeviceProtocolError(DeviceError):
    """The device answered something that is not a valid reply (wrong length, garbage)."""


class SunSpecError(DeviceError):
    """The device does not hold a usable SunSpec map (no 'SunS' marker, broken model chain)."""


class WriteVerificationError(DeviceError):
    """A control write was accepted but the read-back does not hold the value written."""


class UnsupportedControl(DeviceError):
    """The device does not implement the model or point a control needs."""


class CommandRejected(GridedgeError):
    """An inbound command that must actuate nothing: unsigned, tampered, unknown key, expired, replayed, malformed.

    ``reason`` is a short stable code (``bad-signature``, ``unknown-key``, ``expired``, ``replayed``, ``malformed``,
    ...) for the audit log and counters; the message says more. Never carries key material.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class SignatureError(GridedgeError, ValueError):
    """A signed message (JWS) that does not verify. Nothing in it may be used.

    ``reason`` is a short stable code: ``malformed`` (not a compact JWS, bad base64url or JSON), ``unknown-key``
    (no ``kid``, or a ``kid`` not among the trusted keys), ``bad-signature`` (tampered, or signed by another key),
    ``bad-alg`` (``alg`` other than ES256: ``none``, ``HS256``, ...). ``detail`` says more; never key material.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MessageError(GridedgeError, ValueError):
    """A payload (signed or not) that is not a valid gridedge wire message; the message names the field."""


class AuditLogError(GridedgeError, ValueError):
    """The audit log cannot be continued: its last line is torn or broken, or another process holds it.

    ``line`` is the 1-based line at fault, when there is one. Dispatch actuates nothing it cannot record.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class UplinkUnavailable(GridedgeError, ConnectionError):
    """An uplink cannot take a message now (not connected, or stopped). The durable outbox keeps it for later."""


class UplinkRefused(GridedgeError, ConnectionError):
    """An upstream peer is not the one trusted, or refused us: a human must look (not a transient outage).

    ``reason`` is a short stable code (``pin-mismatch``, ``bad-signature``, ``refused``, ``not-registered``,
    ``report-refused``); the message says more and names the fix. Never carries key material.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
