"""gridedge: a grid-edge gateway daemon.

The package reads as the data path: ``devices`` (SunSpec over Modbus) -> ``twin`` (feeder model, envelopes)
-> ``dispatch`` and ``uplink``. Shared value types live in :mod:`gateway.types`, errors in :mod:`gateway.errors`.
"""

__version__ = "0.1.0"
