"""pysunspec2 as the reference decoder: the same registers must give the same values through gridedge."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from sunspec2 import device as ss_device

from gateway.sunspec import ModelBlock


def reference_decode(model_id: int, regs: Sequence[int | None]) -> dict[str, Any]:
    data = struct.pack(f">{len(regs)}H", *[0 if r is None else r for r in regs])
    model = ss_device.Model(model_id=model_id, model_len=regs[1], data=data)
    out: dict[str, Any] = model.get_dict(computed=True)
    for k in ("mid", "error", "model_id"):
        out.pop(k)
    return out


def _compare(ours: Any, fill0: Any, fill1: Any, where: str) -> int:
    """Where both fills agree the value is real and ours must equal it; where they differ ours must be None."""
    if isinstance(fill0, dict):
        # A short model (L=65 model 1) leaves its last points out: pysunspec2 drops them, we say None.
        assert all(ours[k] is None for k in ours.keys() - fill0.keys()), where
        return sum(_compare(ours.get(k), fill0[k], fill1.get(k), f"{where}.{k}") for k in fill0)
    if isinstance(fill0, list):
        assert isinstance(ours, list), where
        assert len(ours) == len(fill0), where
        return sum(_compare(o, a, b, f"{where}[{i}]") for i, (o, a, b) in enumerate(zip(ours, fill0, fill1,
                                                                                       strict=True)))
    if fill0 == fill1:
        assert ours == fill0, f"{where}: {ours!r} != {fill0!r}"
        return 0
    assert ours is None, f"{where} depends on a refused register, yet decoded as {ours!r}"
    return 1


def assert_matches_dump(blocks: Sequence[ModelBlock], dump: dict[str, Any]) -> int:
    """Every block decodes as pysunspec2 decodes the dump's registers; what refused registers feed is None.

    pysunspec2 decodes the registers twice, refused ones filled with 0x0000 and with 0xFFFF: a value the fill
    changes depends on a refused register. Returns how many such values there were.
    """
    nulls = 0
    for block in blocks:
        lo = block.start - dump["base"]
        regs = dump["regs"][lo : lo + block.length + 2]
        fill0 = reference_decode(block.id, [0 if r is None else r for r in regs])
        fill1 = reference_decode(block.id, [0xFFFF if r is None else r for r in regs])
        nulls += _compare({**block.points, **block.groups}, fill0, fill1, f"model {block.id}")
    return nulls
