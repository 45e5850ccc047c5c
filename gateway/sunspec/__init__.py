"""SunSpec over Modbus: model definitions, discovery, read planning, decoding and control writes.

Model definitions come from the official JSON that pysunspec2 ships. Nothing here imports pymodbus: the
device side is reached through the :class:`RegisterIO` protocol that ``gateway.devices`` implements.
"""

from gateway.sunspec._controls import ControlResult, SunSpecControls
from gateway.sunspec._decode import UNIMPLEMENTED, ModelBlock, Value, decode, decode_block, decode_bytes
from gateway.sunspec._defs import GroupDef, ModelDef, PointDef, all_model_ids, model_def
from gateway.sunspec._discover import DEFAULT_BASES, DeviceMap, ModelLocation, discover, find_base
from gateway.sunspec._encode import EncodeError, encode_group, encode_model, encode_point, to_raw
from gateway.sunspec._io import RegisterIO
from gateway.sunspec._measure import measurement
from gateway.sunspec._plan import MAX_READ, Span, plan_reads
from gateway.sunspec._reader import SunSpecReader

__all__ = [
    "DEFAULT_BASES",
    "MAX_READ",
    "UNIMPLEMENTED",
    "ControlResult",
    "DeviceMap",
    "EncodeError",
    "GroupDef",
    "ModelBlock",
    "ModelDef",
    "ModelLocation",
    "PointDef",
    "RegisterIO",
    "Span",
    "SunSpecControls",
    "SunSpecReader",
    "Value",
    "all_model_ids",
    "decode",
    "decode_block",
    "decode_bytes",
    "discover",
    "encode_group",
    "encode_model",
    "encode_point",
    "find_base",
    "measurement",
    "model_def",
    "plan_reads",
    "to_raw",
]
