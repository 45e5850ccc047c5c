"""Test data for the twin: the reference feeders in ../shared/feeders (skipped clearly where absent) and a small
hand-made feeder that needs nothing but the package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.twin import Buses as BusTable
from gateway.twin import Ders, Feeder, Limits, Lines, LoadModel, Loads, Phase, Source, Transformers, Winding

FEEDERS = Path(__file__).resolve().parents[2].parent / "shared" / "feeders"


def shared(relative: str) -> Path:
    """A file under ../shared/feeders, or skip: a fresh clone has no shared test data."""
    path = FEEDERS / relative
    if not path.exists():
        pytest.skip(f"../shared/feeders/{relative} is not present (a fresh clone has no shared test data)")
    return path


def shared_json(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shared(relative).read_text())
    return data


def needs(module: str) -> Any:
    """Import an optional dependency or skip, saying which."""
    return pytest.importorskip(module, reason=f"{module} is not installed (optional for the twin)")


def small_feeder(*, unbalanced: bool = True, banded: bool = True) -> Feeder:
    """An 11/0.416 kV feeder: Dyn1 transformer, a trunk with a branch, a dead end (n5) and a chain (n6-n7-n8).

    Unbalanced: single-phase loads and DERs; balanced: the same, three-phase. Banded: OpenDSS model-1/5 loads
    with vminpu 0.95, vmaxpu 1.05 on a 230 V rating; otherwise constant power at every voltage.
    """
    names = ["mv", "lv", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"]
    buses = BusTable.create(names, [11e3] + [416.0] * (len(names) - 1))
    index = {n: i for i, n in enumerate(names)}
    pairs = [("lv", "n1"), ("n1", "n2"), ("n2", "n3"), ("n1", "n4"), ("n4", "n5"), ("n3", "n6"), ("n6", "n7"),
             ("n7", "n8")]
    n_line = len(pairs)
    rng = np.random.default_rng(7)
    lines = Lines.create(
        name=[f"l{k}" for k in range(n_line)], from_bus=[index[a] for a, _ in pairs],
        to_bus=[index[b] for _, b in pairs], r1_ohm=rng.uniform(0.01, 0.03, n_line),
        x1_ohm=rng.uniform(0.003, 0.01, n_line), r0_ohm=rng.uniform(0.04, 0.1, n_line),
        x0_ohm=rng.uniform(0.01, 0.03, n_line), i_rated_a=np.full(n_line, 200.0),
    )
    trafo = Transformers.create(
        name=["t1"], from_bus=[0], to_bus=[1], sn_va=[250e3], u1_v=[11e3], u2_v=[416.0], uk=[0.04], pk_w=[2500.0],
        winding_from=[Winding.DELTA], winding_to=[Winding.WYE_N], clock=[1],
    )
    load_bus = ["n2", "n3", "n4", "n6", "n8", "n7"]
    phases = [Phase.A, Phase.B, Phase.C, Phase.A, Phase.B, Phase.C] if unbalanced else [Phase.ABC] * 6
    scale = 1.0 if unbalanced else 3.0
    n_load = len(load_bus)
    model = [LoadModel.PQ, LoadModel.PQ, LoadModel.I, LoadModel.PQ, LoadModel.Z, LoadModel.PQ]
    rating = 230.0 if unbalanced else 400.0
    loads = Loads.create(
        name=[f"load{k}" for k in range(n_load)], bus=[index[b] for b in load_bus], phase=phases,
        p_w=np.array([3e3, 4e3, 2e3, 5e3, 1.5e3, 2.5e3]) * scale, q_var=np.array([1e3, 1.2e3, 0.5e3, 1e3, 0.3e3,
                                                                                   0.6e3]) * scale,
        model=model if banded else [LoadModel.PQ] * n_load,
        u_rated_v=np.full(n_load, rating) if banded else None,
        vmin_pu=np.full(n_load, 0.95) if banded else None, vmax_pu=np.full(n_load, 1.05) if banded else None,
        vlow_pu=np.full(n_load, 0.5) if banded else None,
        p_min_w=[np.nan, 0.0, np.nan, np.nan, np.nan, np.nan], p_max_w=[np.nan, 8e3, np.nan, np.nan, np.nan, np.nan],
    )
    ders = Ders.create(name=["pv3", "pv6", "pv4"], bus=[index["n3"], index["n6"], index["n4"]],
                       phase=[Phase.B, Phase.A, Phase.ABC] if unbalanced else [Phase.ABC] * 3,
                       rating_w=[6e3, 8e3, 15e3])
    return Feeder(name="small", buses=buses, source=Source(bus=0, v_pu=1.03, sk_va=100e6, rx_ratio=0.1),
                  lines=lines, transformers=trafo, loads=loads, ders=ders, limits=Limits(), frequency_hz=50.0)


def opendss_factor(model: int, v: float, vmin: float, vmax: float, vlow: float) -> float:
    """Power drawn / nominal at ``v`` (pu of the load rating), written from OpenDSS Load.pas independently of
    gateway.twin._loadmodel: DoConstantPQLoad / DoConstantILoad / DoConstantZLoad with Yeq95/Yeq105/M95."""
    if model == LoadModel.Z or v <= vlow:
        return v * v  # Yeq, the admittance drawing the nominal power at rated voltage
    i_nominal_at_vmin = 1.0 / vmin if model == LoadModel.PQ else 1.0
    if v <= vmin:
        slope = (i_nominal_at_vmin - vlow) / (vmin - vlow)  # M95 (or M95I), pu
        return v * (vlow + slope * (v - vlow))
    if v > vmax:
        return v * v / (vmax * vmax if model == LoadModel.PQ else vmax)  # Yeq105 (or Yeq105I)
    return 1.0 if model == LoadModel.PQ else v
