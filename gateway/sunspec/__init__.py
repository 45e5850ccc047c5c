"""SunSpec over Modbus: model definitions, discovery, read planning, decoding and control writes.

Model definitions come from the official JSON that pysunspec2 ships. Nothing here imports pymodbus: the
device side is reached through the :class:`RegisterIO` protocol that ``gateway.devices`` implements.
"""

from gateway.sunspec._decode import UNIMPLEMENTED, ModelBlock, Value, decode, decode_block, decode_bytes
from gateway.sunspec._defs import GroupDef, ModelDef, PointDef, all_model_ids, model_def
from gateway.sunspec._encode import EncodeError, encode_group, encode_model, encode_point, to_raw

__all__ = [
    "UNIMPLEMENTED",
    "EncodeError",
    "GroupDef",
    "ModelBlock",
    "ModelDef",
    "PointDef",
    "Value",
    "all_model_ids",
    "decode",
    "decode_block",
    "decode_bytes",
    "encode_group",
    "encode_model",
    "encode_point",
    "model_def",
    "to_raw",
]
