"""The feeder model: buses, lines, transformers, the source, loads, DER connection points and limits.

Owns the in-memory feeder every twin computation reads, and nothing else (no I/O, no solving). Each component is
a frozen, slotted dataclass of equal-length, read-only NumPy arrays, one array per field, dtypes defined once
below; elements refer to buses by index into :class:`Buses`. Units are SI and named in the field (``_v``, ``_w``,
``_ohm``, ``_f``, ``_a``); per-unit fields end in ``_pu``. "Missing" is NaN, never a magic number.

Conventions:

- Buses are three-phase (power-grid-model's node). ``u_rated_v`` is the line-to-line nominal voltage; per-unit
  phase voltages are relative to ``u_rated_v / sqrt(3)`` (OpenDSS's per-unit node voltages use the same base).
- ``phase`` of a load or DER: :class:`Phase` ``ABC`` (balanced three-phase, connected phase-to-neutral or delta,
  power split equally) or ``A``/``B``/``C`` (single-phase, phase to neutral).
- Loads take power (``p_w``/``q_var`` > 0 consume); DERs inject (positive = export, generation).
- Load voltage dependence follows OpenDSS (``Load.pas``): see :mod:`gateway.twin._loadmodel`. ``u_rated_v`` of a
  load is its kV rating as OpenDSS defines it: line-to-line for three-phase loads, line-to-neutral for
  single-phase ones (NaN: the bus nominal). ``vmin_pu``/``vmax_pu``/``vlow_pu`` are OpenDSS's vminpu/vmaxpu/vlowpu
  on that rating; NaN means "no band" (the load keeps its model at every voltage).
- Unmeasured loads carry an interval ``[p_min_w, p_max_w]`` (NaN for measured loads).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._errors import FeederError, FeederIssue

#: The dtypes, defined once: every float column, every bus/element index, every small code (phase, model, winding).
FLOAT = np.dtype(np.float64)
INDEX = np.dtype(np.int32)
CODE = np.dtype(np.int8)

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.int32]
CodeArray = NDArray[np.int8]
NameArray = NDArray[np.str_]

#: Short-circuit power standing for an ideal source (what power-grid-model matches pandapower's ideal slack with).
IDEAL_SK_VA = 1e15

#: ANSI C84.1 Range A service voltage limits, the default of :class:`Limits`.
ANSI_RANGE_A = (0.95, 1.05)


class Phase(IntEnum):
    """Which phases a load or DER connects to."""

    ABC = 0
    A = 1
    B = 2
    C = 3


class LoadModel(IntEnum):
    """Voltage dependence of a load, numbered as OpenDSS's ``model`` property."""

    PQ = 1  # constant power inside [vmin_pu, vmax_pu]
    Z = 2  # constant impedance
    I = 5  # constant current magnitude inside [vmin_pu, vmax_pu]  # noqa: E741 (OpenDSS's name for it)


class Winding(IntEnum):
    """Transformer winding connection; the codes are power-grid-model's ``WindingType``."""

    WYE = 0  # star, neutral isolated
    WYE_N = 1  # star, neutral grounded
    DELTA = 2


class Side(IntEnum):
    """Which transformer winding holds the tap changer."""

    FROM = 0
    TO = 1


def _column(owner: str, name: str, value: ArrayLike, dtype: np.dtype[Any], n: int | None) -> NDArray[Any]:
    array = np.array(value, dtype=dtype)
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        got = array.shape
        raise FeederError((FeederIssue(owner, name, (), f"expected a 1-D array of {n} values, got shape {got}"),))
    array.setflags(write=False)
    return array


class _Table:
    """Base of the component tables: converts every field to a read-only 1-D array of its dtype, equal lengths."""

    __slots__ = ()
    component: ClassVar[str]
    dtypes: ClassVar[dict[str, np.dtype[Any]]]

    def __post_init__(self) -> None:
        n: int | None = None
        for f in fields(self):  # type: ignore[arg-type]
            array = _column(self.component, f.name, getattr(self, f.name), self.dtypes[f.name], n)
            n = array.shape[0]
            object.__setattr__(self, f.name, array)

    def __len__(self) -> int:
        first: NDArray[Any] = getattr(self, fields(self)[0].name)  # type: ignore[arg-type]
        return int(first.shape[0])


def _names(value: ArrayLike) -> NameArray:
    return np.array([str(v) for v in np.asarray(value, dtype=object).ravel()], dtype=np.str_)


def _full(n: int, value: ArrayLike | None, fill: float) -> ArrayLike:
    return np.full(n, fill) if value is None else value


@dataclass(frozen=True, slots=True)
class Buses(_Table):
    """Buses (three-phase nodes). ``name`` is kept for output; ``u_rated_v`` is the line-to-line nominal voltage."""

    component: ClassVar[str] = "bus"
    dtypes: ClassVar[dict[str, np.dtype[Any]]] = {"name": np.dtype(np.str_), "u_rated_v": FLOAT}

    name: NameArray
    u_rated_v: FloatArray

    @classmethod
    def create(cls, name: ArrayLike, u_rated_v: ArrayLike) -> Buses:
        return cls(_names(name), np.asarray(u_rated_v, dtype=FLOAT))


@dataclass(frozen=True, slots=True)
class Lines(_Table):
    """Three-phase lines by sequence impedance, totals for the whole length (ohm, farad).

    ``i_rated_a`` is the rated (normal) current, OpenDSS's ``normamps``; NaN = unrated (loading NaN).
    ``r0_ohm``/``x0_ohm`` NaN = unknown zero sequence (enough for balanced feeders only).
    """

    component: ClassVar[str] = "line"
    dtypes: ClassVar[dict[str, np.dtype[Any]]] = {
        "name": np.dtype(np.str_), "from_bus": INDEX, "to_bus": INDEX,
        "r1_ohm": FLOAT, "x1_ohm": FLOAT, "c1_f": FLOAT, "r0_ohm": FLOAT, "x0_ohm": FLOAT, "c0_f": FLOAT,
        "i_rated_a": FLOAT,
    }

    name: NameArray
    from_bus: IndexArray
    to_bus: IndexArray
    r1_ohm: FloatArray
    x1_ohm: FloatArray
    c1_f: FloatArray
    r0_ohm: FloatArray
    x0_ohm: FloatArray
    c0_f: FloatArray
    i_rated_a: FloatArray

    @classmethod
    def create(
        cls, *, name: ArrayLike, from_bus: ArrayLike, to_bus: ArrayLike, r1_ohm: ArrayLike, x1_ohm: ArrayLike,
        c1_f: ArrayLike | None = None, r0_ohm: ArrayLike | None = None, x0_ohm: ArrayLike | None = None,
        c0_f: ArrayLike | None = None, i_rated_a: ArrayLike | None = None,
    ) -> Lines:
        names = _names(name)
        n = names.shape[0]
        return cls(
            names, np.asarray(from_bus), np.asarray(to_bus), np.asarray(r1_ohm), np.asarray(x1_ohm),
            np.asarray(_full(n, c1_f, 0.0)), np.asarray(_full(n, r0_ohm, np.nan)),
            np.asarray(_full(n, x0_ohm, np.nan)), np.asarray(_full(n, c0_f, 0.0)),
            np.asarray(_full(n, i_rated_a, np.nan)),
        )


@dataclass(frozen=True, slots=True)
class Transformers(_Table):
    """Two-winding three-phase transformers, power-grid-model's parameters.

    ``uk`` short-circuit voltage and ``i0`` no-load current in pu of rating; ``pk_w`` load loss at rated current,
    ``p0_w`` no-load loss. ``clock`` is the IEC clock number (Dyn1: 1). The tap changer sits on ``tap_side``
    (:class:`Side`); the winding voltage there is ``u + (tap_pos - tap_nom) * tap_size_v`` (``-`` when
    ``tap_min > tap_max``, as power-grid-model). Default: no tap (every tap field 0).
    """

    component: ClassVar[str] = "transformer"
    dtypes: ClassVar[dict[str, np.dtype[Any]]] = {
        "name": np.dtype(np.str_), "from_bus": INDEX, "to_bus": INDEX, "sn_va": FLOAT, "u1_v": FLOAT,
        "u2_v": FLOAT, "uk": FLOAT, "pk_w": FLOAT, "i0": FLOAT, "p0_w": FLOAT, "winding_from": CODE,
        "winding_to": CODE, "clock": CODE, "tap_side": CODE, "tap_pos": CODE, "tap_min": CODE, "tap_max": CODE,
        "tap_nom": CODE, "tap_size_v": FLOAT,
    }

    name: NameArray
    from_bus: IndexArray
    to_bus: IndexArray
    sn_va: FloatArray
    u1_v: FloatArray
    u2_v: FloatArray
    uk: FloatArray
    pk_w: FloatArray
    i0: FloatArray
    p0_w: FloatArray
    winding_from: CodeArray
    winding_to: CodeArray
    clock: CodeArray
    tap_side: CodeArray
    tap_pos: CodeArray
    tap_min: CodeArray
    tap_max: CodeArray
    tap_nom: CodeArray
    tap_size_v: FloatArray

    @classmethod
    def create(
        cls, *, name: ArrayLike, from_bus: ArrayLike, to_bus: ArrayLike, sn_va: ArrayLike, u1_v: ArrayLike,
        u2_v: ArrayLike, uk: ArrayLike, pk_w: ArrayLike, i0: ArrayLike | None = None, p0_w: ArrayLike | None = None,
        winding_from: ArrayLike | None = None, winding_to: ArrayLike | None = None, clock: ArrayLike | None = None,
        tap_side: ArrayLike | None = None, tap_pos: ArrayLike | None = None, tap_min: ArrayLike | None = None,
        tap_max: ArrayLike | None = None, tap_nom: ArrayLike | None = None, tap_size_v: ArrayLike | None = None,
    ) -> Transformers:
        names = _names(name)
        n = names.shape[0]
        return cls(
            names, np.asarray(from_bus), np.asarray(to_bus), np.asarray(sn_va), np.asarray(u1_v), np.asarray(u2_v),
            np.asarray(uk), np.asarray(pk_w), np.asarray(_full(n, i0, 0.0)), np.asarray(_full(n, p0_w, 0.0)),
            np.asarray(_full(n, winding_from, Winding.WYE_N)), np.asarray(_full(n, winding_to, Winding.WYE_N)),
            np.asarray(_full(n, clock, 0)), np.asarray(_full(n, tap_side, Side.FROM)),
            np.asarray(_full(n, tap_pos, 0)), np.asarray(_full(n, tap_min, 0)), np.asarray(_full(n, tap_max, 0)),
            np.asarray(_full(n, tap_nom, 0)), np.asarray(_full(n, tap_size_v, 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Loads(_Table):
    """Loads at their nominal (base-case) power; see the module docstring for the voltage-dependence fields."""

    component: ClassVar[str] = "load"
    dtypes: ClassVar[dict[str, np.dtype[Any]]] = {
        "name": np.dtype(np.str_), "bus": INDEX, "phase": CODE, "p_w": FLOAT, "q_var": FLOAT, "model": CODE,
        "u_rated_v": FLOAT, "vmin_pu": FLOAT, "vmax_pu": FLOAT, "vlow_pu": FLOAT, "p_min_w": FLOAT, "p_max_w": FLOAT,
    }

    name: NameArray
    bus: IndexArray
    phase: CodeArray
    p_w: FloatArray
    q_var: FloatArray
    model: CodeArray
    u_rated_v: FloatArray
    vmin_pu: FloatArray
    vmax_pu: FloatArray
    vlow_pu: FloatArray
    p_min_w: FloatArray
    p_max_w: FloatArray

    @classmethod
    def create(
        cls, *, name: ArrayLike, bus: ArrayLike, p_w: ArrayLike, q_var: ArrayLike | None = None,
        phase: ArrayLike | None = None, model: ArrayLike | None = None, u_rated_v: ArrayLike | None = None,
        vmin_pu: ArrayLike | None = None, vmax_pu: ArrayLike | None = None, vlow_pu: ArrayLike | None = None,
        p_min_w: ArrayLike | None = None, p_max_w: ArrayLike | None = None,
    ) -> Loads:
        """Defaults: balanced, constant power at every voltage (no band), no interval."""
        names = _names(name)
        n = names.shape[0]
        return cls(
            names, np.asarray(bus), np.asarray(_full(n, phase, Phase.ABC)), np.asarray(p_w),
            np.asarray(_full(n, q_var, 0.0)), np.asarray(_full(n, model, LoadModel.PQ)),
            np.asarray(_full(n, u_rated_v, np.nan)), np.asarray(_full(n, vmin_pu, np.nan)),
            np.asarray(_full(n, vmax_pu, np.nan)), np.asarray(_full(n, vlow_pu, np.nan)),
            np.asarray(_full(n, p_min_w, np.nan)), np.asarray(_full(n, p_max_w, np.nan)),
        )


@dataclass(frozen=True, slots=True)
class Ders(_Table):
    """DER connection points: ``name`` is the DER's id; ``rating_w`` its active power rating (NaN: unknown).

    Their output is not part of the feeder: every solve is given it (positive = export).
    """

    component: ClassVar[str] = "der"
    dtypes: ClassVar[dict[str, np.dtype[Any]]] = {
        "name": np.dtype(np.str_), "bus": INDEX, "phase": CODE, "rating_w": FLOAT,
    }

    name: NameArray
    bus: IndexArray
    phase: CodeArray
    rating_w: FloatArray

    @classmethod
    def create(
        cls, *, name: ArrayLike, bus: ArrayLike, phase: ArrayLike | None = None, rating_w: ArrayLike | None = None,
    ) -> Ders:
        names = _names(name)
        n = names.shape[0]
        return cls(names, np.asarray(bus), np.asarray(_full(n, phase, Phase.ABC)),
                   np.asarray(_full(n, rating_w, np.nan)))


@dataclass(frozen=True, slots=True)
class Source:
    """The slack: a Thevenin source at ``bus``, ``v_pu`` of the bus nominal.

    ``sk_va`` short-circuit power, ``rx_ratio`` R/X and ``z01_ratio`` |Z0|/|Z1| of its impedance. The default
    ``sk_va`` (:data:`IDEAL_SK_VA`) stands for an ideal source (no impedance).
    """

    bus: int
    v_pu: float = 1.0
    sk_va: float = 1e15
    rx_ratio: float = 0.1
    z01_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Operating limits every envelope keeps: phase voltages in pu (ANSI C84.1 Range A by default), loading."""

    vmin_pu: float = ANSI_RANGE_A[0]
    vmax_pu: float = ANSI_RANGE_A[1]
    max_loading: float = 1.0


def _empty_lines() -> Lines:
    return Lines.create(name=[], from_bus=[], to_bus=[], r1_ohm=[], x1_ohm=[])


def _empty_transformers() -> Transformers:
    return Transformers.create(name=[], from_bus=[], to_bus=[], sn_va=[], u1_v=[], u2_v=[], uk=[], pk_w=[])


def _empty_loads() -> Loads:
    return Loads.create(name=[], bus=[], p_w=[])


def _empty_ders() -> Ders:
    return Ders.create(name=[], bus=[])


@dataclass(frozen=True, slots=True)
class Feeder:
    """A whole feeder. Build it with the importers (:func:`gateway.twin.load_feeder`) or by hand, then check it
    with :func:`gateway.twin.validate_feeder` (the importers do)."""

    name: str
    buses: Buses
    source: Source
    lines: Lines = field(default_factory=_empty_lines)
    transformers: Transformers = field(default_factory=_empty_transformers)
    loads: Loads = field(default_factory=_empty_loads)
    ders: Ders = field(default_factory=_empty_ders)
    limits: Limits = Limits()
    frequency_hz: float = 50.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "frequency_hz", float(self.frequency_hz))

    @property
    def balanced(self) -> bool:
        """True when every load and DER is three-phase: a symmetric (positive-sequence) solve is exact."""
        return bool(np.all(self.loads.phase == Phase.ABC) and np.all(self.ders.phase == Phase.ABC))

    def bus_lookup(self) -> dict[str, int]:
        """Bus name -> index."""
        return {str(name): i for i, name in enumerate(self.buses.name)}
