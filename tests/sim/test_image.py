"""Register images: built from model lists and from dumps; the model chain and the writable points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import SunSpecError
from gateway.sim import (
    KINDS,
    RegisterImage,
    SimulatedDevice,
    build_image,
    image_from_dump,
    image_from_models,
    kind_models,
    walk_models,
)
from gateway.sunspec import all_model_ids, decode

from ._helpers import dump_params


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_images_decode(kind: str) -> None:
    image = build_image(kind, "SN-42")
    spans = walk_models(image)
    assert [s.id for s in spans] == list(kind_models(kind))
    assert image.regs[:2] == [0x5375, 0x6E53]
    assert image.regs[-2:] == [0xFFFF, 0x0000]
    common = decode(1, image.regs[2 : 2 + 68]).points
    assert (common["Mn"], common["Md"], common["SN"]) == ("gridedge", "sim", "SN-42")
    for span in spans:
        block = decode(span.id, image.regs[span.addr - image.base : span.end - image.base], span.addr)
        assert block.length == span.length


def test_every_defined_model_builds_with_defaults() -> None:
    for mid in all_model_ids():
        if mid == 1:
            continue
        image = image_from_models([mid])
        assert [s.id for s in walk_models(image)] == [1, mid]


def test_values_override_defaults() -> None:
    image = image_from_models([103, 121], {121: {"WMax": 8000}, 1: {"Md": "other"}}, base=50000)
    dev = SimulatedDevice(image, animate=False)
    assert image.base == 50000
    assert dev.value(121, "WMax") == 8000
    assert decode(1, image.regs[2:70]).points["Md"] == "other"


def test_volt_var_curves_as_groups() -> None:
    image = image_from_models([705, 126])
    spans = {s.id: s for s in walk_models(image)}
    b705 = decode(705, image.regs[spans[705].addr - image.base : spans[705].end - image.base])
    assert b705.points["NCrv"] == 3
    curves = b705.groups["Crv"]
    assert isinstance(curves, list)
    assert len(curves) == 3
    assert [p["V"] for p in curves[0]["Pt"]] == [92.0, 98.0, 102.0, 108.0]
    b126 = decode(126, image.regs[spans[126].addr - image.base : spans[126].end - image.base])
    assert len(b126.groups["curve"]) == 2


def test_no_suns_marker() -> None:
    with pytest.raises(SunSpecError):
        walk_models(RegisterImage(40000, [0, 0, 0xFFFF, 0]))


def test_writable_points_follow_the_model_definitions() -> None:
    dev = SimulatedDevice(build_image("inverter-7xx", "x"), animate=False)
    assert dev.address_of(704, "WMaxLimPct") in dev.writable
    assert dev.address_of(701, "W") not in dev.writable
    assert dev.address_of(705, "AdptCrvRslt") not in dev.writable
    # curve 1 of 705 is the active, read-only curve; curve 2 is writable
    assert dev.address_of(705, "Crv[0].Pt[0].V") not in dev.writable
    assert dev.address_of(705, "Crv[1].Pt[0].V") in dev.writable


@pytest.mark.parametrize("path", dump_params(), ids=lambda p: getattr(p, "stem", "absent"))
def test_dump_images(path: Path) -> None:
    data = json.loads(path.read_text())
    image = image_from_dump(path)
    assert image.base == data["base"]
    assert len(image.unreadable) == data["unreadable_regs"]
    assert all(image.regs[i] == v for i, v in enumerate(data["regs"]) if v is not None)
    spans = walk_models(image)
    expected = [(m["id"], m["len"], m["addr"]) for m in data["models"] if m["id"] != 0xFFFF]
    assert [(s.id, s.length, s.addr) for s in spans] == expected
    assert image_from_dump(data).regs == image.regs


@pytest.mark.parametrize("path", dump_params(), ids=lambda p: getattr(p, "stem", "absent"))
def test_dumps_animate_without_inventing_points(path: Path) -> None:
    """With the physics on, a dump's measurements move, and what it left unimplemented stays so."""
    image = image_from_dump(path)
    before = list(image.regs)
    dev = SimulatedDevice(image)
    sentinels = {a for a, v in enumerate(before) if v in (0x8000, 0xFFFF)}
    for t in range(5):
        dev.update(1000.0 + t)
    after = image.regs
    assert after[:2] == before[:2]
    assert all(after[a] in (0x8000, 0xFFFF) for a in sentinels)
    assert [(s.id, s.addr, s.length) for s in walk_models(image)] == [(s.id, s.addr, s.length) for s in dev.spans]
