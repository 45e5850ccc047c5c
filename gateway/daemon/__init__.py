"""The daemon: builds the gateway from config and runs the whole data path under one TaskGroup until told to stop.

devices -> twin -> envelope -> dispatch and uplinks (ARCHITECTURE.md, "The data path"): :func:`build` makes the
endpoints, devices, pollers and the dispatch policy without I/O; :func:`run` enters the resources on an
``AsyncExitStack`` (Modbus endpoints, the audit log, the MQTT connection and its outbox, the OpenADR VEN) and runs
the pollers, the control loop (which alone feeds systemd's watchdog), the twin and the uplinks in one
``asyncio.TaskGroup``. Each part runs only when its config section is there.
"""

from gateway.daemon._build import Gateway, build, device_states, fresh_measurements
from gateway.daemon._control import Control
from gateway.daemon._run import CYCLE_S, run
from gateway.daemon._uplinks import Uplinks

__all__ = ["CYCLE_S", "Control", "Gateway", "Uplinks", "build", "device_states", "fresh_measurements", "run"]
