"""SunSpec over Modbus: model definitions, discovery, read planning, decoding and control writes.

Model definitions come from the official JSON that pysunspec2 ships. Nothing here imports pymodbus: the
device side is reached through the :class:`RegisterIO` protocol that ``gateway.devices`` implements.
"""

from gateway.sunspec._decode import UNIMPLEMENTED, ModelBlock, Value, decode, decode_block, decode_bytes
from gateway.sunspec._defs import GroupDef, ModelDef, PointDef, all_model_ids, model_def

__all__ = [
    "UNIMPLEMENTED",
    "GroupDef",
    "ModelBlock",
    "ModelDef",
    "PointDef",
    "Value",
    "all_model_ids",
    "decode",
    "decode_block",
    "decode_bytes",
    "model_def",
]
