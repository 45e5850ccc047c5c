"""Register images: what a simulated SunSpec device holds, and the builders that make one.

An image is a base address, the registers from there on, and the addresses that answer Modbus exception 2
(``null`` in a dump). It is built either from a JSON dump of a real device (``image_from_dump``; only when a
caller passes one) or from a list of SunSpec model ids with plausible values (``image_from_models``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import SunSpecError
from gateway.sim._defaults import common_values, default_values
from gateway.sunspec import encode_model, model_def

#: The 'SunS' marker: the two registers every SunSpec map begins with.
SUNS_MARKER = (0x5375, 0x6E53)
#: The end-of-chain marker: model id 0xFFFF with length 0.
END_MARKER = (0xFFFF, 0x0000)


@dataclass(slots=True)
class RegisterImage:
    """A device's holding registers from ``base`` on; addresses in ``unreadable`` answer exception 2.

    ``regs`` is mutable: the simulator updates it in place. Unreadable registers keep a placeholder 0.
    """

    base: int
    regs: list[int]
    unreadable: frozenset[int] = field(default_factory=frozenset)

    @property
    def end(self) -> int:
        """One past the last address the image holds."""
        return self.base + len(self.regs)

    def holds(self, address: int, count: int = 1) -> bool:
        """Whether every address in ``address .. address+count-1`` is in the image and readable."""
        if address < self.base or address + count > self.end:
            return False
        return not any(a in self.unreadable for a in range(address, address + count)) if self.unreadable else True

    def copy(self) -> RegisterImage:
        return RegisterImage(self.base, list(self.regs), self.unreadable)


@dataclass(frozen=True, slots=True)
class ModelSpan:
    """One model in the chain: its id, the address of its ``ID`` register, and its length ``L``."""

    id: int
    addr: int
    length: int

    @property
    def end(self) -> int:
        """One past the model's last register."""
        return self.addr + 2 + self.length


def walk_models(image: RegisterImage) -> tuple[ModelSpan, ...]:
    """The model chain of ``image``, as a client discovers it (stops at the end marker or at bad data)."""
    if image.regs[:2] != list(SUNS_MARKER):
        raise SunSpecError(f"no 'SunS' marker at {image.base}")
    spans: list[ModelSpan] = []
    addr = image.base + 2
    while image.holds(addr, 2):
        mid, length = image.regs[addr - image.base], image.regs[addr + 1 - image.base]
        if mid == END_MARKER[0]:
            break
        if addr + 2 + length > image.end:  # a model running past the data: the chain is broken here
            break
        spans.append(ModelSpan(mid, addr, length))
        addr += 2 + length
    return tuple(spans)


def image_from_dump(source: str | os.PathLike[str] | Mapping[str, Any]) -> RegisterImage:
    """An image from a dump (a path to the JSON, or the parsed JSON): ``base`` and ``regs`` with ``null``s."""
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    try:
        base = int(data["base"])
        raw = list(data["regs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SunSpecError(f"not a register dump: {exc}") from exc
    regs: list[int] = []
    unreadable: set[int] = set()
    for i, value in enumerate(raw):
        if value is None:
            unreadable.add(base + i)
            regs.append(0)
        else:
            regs.append(int(value) & 0xFFFF)
    return RegisterImage(base, regs, frozenset(unreadable))


def image_from_models(
    model_ids: Iterable[int],
    values: Mapping[int, Mapping[str, Any]] | None = None,
    base: int = 40000,
    *,
    serial: str = "SIM-000001",
) -> RegisterImage:
    """A full SunSpec map: 'SunS', model 1 (manufacturer "gridedge", model "sim", ``serial``), each model in
    ``model_ids`` with plausible values (``values[model_id]`` overrides them, point by point), the end marker.

    Model 1 is put first whether or not ``model_ids`` names it.
    """
    overrides = values or {}
    regs: list[int] = list(SUNS_MARKER)
    regs += encode_model(model_def(1), {**common_values(serial), **overrides.get(1, {})})
    for mid in model_ids:
        if mid == 1:
            continue
        vals = {**default_values(mid), **overrides.get(mid, {})}
        regs += encode_model(model_def(mid), vals)
    regs += END_MARKER
    return RegisterImage(base, regs, frozenset())
