"""SunSpec device simulator on pymodbus's server: register images, the plant behind them, TCP/RTU serving.

Used by ``gridedge simulate``, ``make demo``, the integration tests and the benchmarks
(``python -m gateway.sim --devices 1000 --port-base 15020``). Each IEEE 1547 function the simulated DERs
perform is one module (``_volt_var``, ``_active_power_limit``) with a pure ``step``.
"""

from gateway.sim._active_power_limit import (
    ActivePowerLimitInputs,
    ActivePowerLimitSettings,
    ActivePowerLimitState,
)
from gateway.sim._device import SimulatedDevice
from gateway.sim._fleet import (
    KINDS,
    DeviceSpec,
    Endpoint,
    Served,
    build_image,
    kind_models,
    make_devices,
    run_simulator,
    serve_fleet,
    simulated_fleet,
)
from gateway.sim._image import ModelSpan, RegisterImage, image_from_dump, image_from_models, walk_models
from gateway.sim._physics import PhysicsSettings, Plant
from gateway.sim._pty import pty_link
from gateway.sim._server import serve_rtu, serve_tcp
from gateway.sim._volt_var import VoltVarInputs, VoltVarSettings, VoltVarState

__all__ = [
    "KINDS",
    "ActivePowerLimitInputs",
    "ActivePowerLimitSettings",
    "ActivePowerLimitState",
    "DeviceSpec",
    "Endpoint",
    "ModelSpan",
    "PhysicsSettings",
    "Plant",
    "RegisterImage",
    "Served",
    "SimulatedDevice",
    "VoltVarInputs",
    "VoltVarSettings",
    "VoltVarState",
    "build_image",
    "image_from_dump",
    "image_from_models",
    "kind_models",
    "make_devices",
    "pty_link",
    "run_simulator",
    "serve_fleet",
    "serve_rtu",
    "serve_tcp",
    "simulated_fleet",
    "walk_models",
]
