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
