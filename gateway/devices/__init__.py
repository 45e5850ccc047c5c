"""Field devices: the Modbus transport (TCP and RTU endpoints, one lock each), per-device pollers, the fleet's state.

Other subpackages import only from here. SunSpec code talks to a :class:`UnitIO` (its ``RegisterIO``); the daemon builds
one :class:`Poller` per device and runs them in a :class:`Fleet`.
"""

from gateway.devices._device import Reading, SunSpecDevice
from gateway.devices._fleet import Fleet
from gateway.devices._poller import DeviceStatus, Poller
from gateway.devices._transport import (
    MAX_READ_COUNT,
    MAX_WRITE_COUNT,
    ModbusEndpoint,
    RtuEndpoint,
    TcpEndpoint,
    UnitIO,
)

__all__ = [
    "MAX_READ_COUNT",
    "MAX_WRITE_COUNT",
    "DeviceStatus",
    "Fleet",
    "ModbusEndpoint",
    "Poller",
    "Reading",
    "RtuEndpoint",
    "SunSpecDevice",
    "TcpEndpoint",
    "UnitIO",
]
