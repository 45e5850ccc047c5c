"""What the gateway measured, as state-estimation input: :class:`Reading` and :class:`Measurements`.

Owns the measurement set and its validation, nothing else (no solving). A measurement set holds ``S`` scenarios
(rows; a single estimate is a batch of one) of four sensor kinds, each a :class:`Reading` (values and their
standard deviations, same shape; a NaN value means "not measured" in that scenario):

- ``der_p``/``der_q`` ``(S, n_der)`` W/var, positive = export, and ``der_v`` ``(S, n_der)`` pu: each DER's SunSpec
  P, Q and terminal voltage magnitude. A single-phase DER's voltage is its phase-to-neutral voltage; a
  three-phase DER's is the mean of its three phase-to-neutral magnitudes. A DER with P or Q missing counts as
  unmeasured (power-grid-model's power sensors need both).
- ``head_p``/``head_q``/``head_v`` ``(S, 3)`` per phase a, b, c: the head meter (power flowing into the feeder,
  phase-to-neutral voltage magnitudes). All three phases or none, per scenario.
- ``load_p``/``load_q`` ``(S, n_load)``: AMI readings (or forecasts, with their sigma) of some loads; NaN: the load
  is unmeasured and the estimator uses its pseudo-measurement (:func:`gateway.twin.load_priors`).

Per-unit voltages are of the bus nominal phase voltage (``u_rated_v / sqrt(3)``), as everywhere in the twin.
Arrays are in feeder order; :meth:`Measurements.create` maps DER and load ids onto it and checks every rule,
raising :class:`MeasurementError` with every issue found (component, field, ids), like feeder validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._errors import FeederIssue, TwinError, merge_issues
from gateway.twin._feeder import FLOAT, Feeder

FloatArray = NDArray[np.float64]


class MeasurementError(TwinError, ValueError):
    """A measurement set cannot be used as given; ``issues`` lists every problem (component, field, ids)."""

    def __init__(self, issues: tuple[FeederIssue, ...] | list[FeederIssue]) -> None:
        self.issues = merge_issues(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{len(self.issues)} measurement issue(s):\n{lines}")


@dataclass(frozen=True, slots=True)
class Reading:
    """Values and their standard deviations (same units), equal shapes; NaN value = not measured."""

    value: FloatArray
    sigma: FloatArray

    def __post_init__(self) -> None:
        value = np.array(self.value, dtype=FLOAT)
        sigma = np.array(np.broadcast_to(np.asarray(self.sigma, dtype=FLOAT), value.shape), dtype=FLOAT)
        value.setflags(write=False)
        sigma.setflags(write=False)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "sigma", sigma)

    @property
    def present(self) -> NDArray[np.bool_]:
        """Where a value was measured."""
        return ~np.isnan(self.value)


#: What a reading argument may be: a :class:`Reading`, a ``(value, sigma)`` pair (sigma broadcasts), or ``None``.
ReadingLike = Reading | tuple[ArrayLike, ArrayLike] | None


@dataclass(frozen=True, slots=True)
class Measurements:
    """``S`` scenarios of measurements in feeder order (see the module docstring). Build with :meth:`create`."""

    der_p: Reading
    der_q: Reading
    der_v: Reading
    head_p: Reading
    head_q: Reading
    head_v: Reading
    load_p: Reading
    load_q: Reading

    @property
    def scenarios(self) -> int:
        return int(self.head_p.value.shape[0])

    @classmethod
    def create(
        cls, feeder: Feeder, *, der_ids: ArrayLike | None = None, der_p: ReadingLike = None,
        der_q: ReadingLike = None, der_v: ReadingLike = None, head_p: ReadingLike = None,
        head_q: ReadingLike = None, head_v: ReadingLike = None, load_ids: ArrayLike | None = None,
        load_p: ReadingLike = None, load_q: ReadingLike = None, scenarios: int | None = None,
    ) -> Measurements:
        """Map readings given per id onto feeder order and validate them.

        ``der_ids`` names the columns of the DER readings (default: every feeder DER, in order); DERs not listed
        are unmeasured. ``load_ids`` likewise for the load readings. Values are 2-D ``(S, k)`` (head: ``(S, 3)``);
        sigmas broadcast against them. Omitted readings are all-NaN. ``scenarios`` is needed only when every
        reading is omitted. Raises :class:`MeasurementError` naming every problem.
        """
        issues: list[FeederIssue] = []
        given = {"der_p": der_p, "der_q": der_q, "der_v": der_v, "head_p": head_p, "head_q": head_q,
                 "head_v": head_v, "load_p": load_p, "load_q": load_q}
        readings = {name: _as_reading(name, r, issues) for name, r in given.items()}
        rows = {r.value.shape[0] for r in readings.values() if r is not None and r.value.ndim == 2}
        if scenarios is not None:
            rows.add(scenarios)
        if len(rows) != 1:
            found = sorted(rows) or "none"
            issues.append(FeederIssue("measurements", "", (), f"readings disagree on the number of scenarios "
                                                              f"(rows: {found}); give 2-D values (S, k)"))
            raise MeasurementError(issues)
        s = rows.pop()
        der_cols = _columns(feeder.ders.name, der_ids, "der", issues)
        load_cols = _columns(feeder.loads.name, load_ids, "load", issues)
        n_der, n_load = len(feeder.ders), len(feeder.loads)
        out: dict[str, Reading] = {}
        for name, r in readings.items():
            kind = name.split("_")[0]
            cols, n = {"der": (der_cols, n_der), "load": (load_cols, n_load), "head": (None, 3)}[kind]
            out[name] = _place(name, r, s, cols, n, issues)
        m = cls(**out)
        issues.extend(validate_measurements(feeder, m))
        if issues:
            raise MeasurementError(issues)
        return m


def _as_reading(name: str, r: ReadingLike, issues: list[FeederIssue]) -> Reading | None:
    if r is None:
        return None
    if isinstance(r, Reading):
        reading = r
    else:
        try:
            value, sigma = r
            reading = Reading(np.asarray(value, dtype=FLOAT), np.asarray(sigma, dtype=FLOAT))
        except (TypeError, ValueError) as exc:
            issues.append(FeederIssue(name.split("_")[0], name, (), f"expected (value, sigma) arrays: {exc}"))
            return None
    if reading.value.ndim != 2:
        issues.append(FeederIssue(name.split("_")[0], name, (), f"expected 2-D values (S, k), got shape "
                                                                f"{reading.value.shape}"))
        return None
    return reading


def _columns(names: NDArray[np.str_], ids: ArrayLike | None, component: str,
             issues: list[FeederIssue]) -> NDArray[np.intp] | None:
    if ids is None:
        return None
    wanted = [str(i) for i in np.asarray(ids, dtype=object).ravel()]
    lookup = {str(n): i for i, n in enumerate(names)}
    unknown = tuple(i for i in wanted if i not in lookup)
    if unknown:
        issues.append(FeederIssue(component, "id", unknown, f"no such {component} in the feeder"))
    repeated = tuple(sorted({i for i in wanted if wanted.count(i) > 1}))
    if repeated:
        issues.append(FeederIssue(component, "id", repeated, "listed more than once"))
    return np.array([lookup.get(i, -1) for i in wanted], dtype=np.intp)


def _place(name: str, r: Reading | None, s: int, cols: NDArray[np.intp] | None, n: int,
           issues: list[FeederIssue]) -> Reading:
    value = np.full((s, n), np.nan, dtype=FLOAT)
    sigma = np.full((s, n), np.nan, dtype=FLOAT)
    if r is None:
        return Reading(value, sigma)
    k = n if cols is None else len(cols)
    if r.value.shape != (s, k):
        issues.append(FeederIssue(name.split("_")[0], name, (), f"expected shape ({s}, {k}), got {r.value.shape}"))
        return Reading(value, sigma)
    if cols is None:
        return r
    ok = cols >= 0
    value[:, cols[ok]] = r.value[:, ok]
    sigma[:, cols[ok]] = r.sigma[:, ok]
    return Reading(value, sigma)


def validate_measurements(feeder: Feeder, m: Measurements) -> list[FeederIssue]:
    """Every rule a measurement set in feeder order breaks (empty: usable). Observability is checked by the
    estimator, which knows where the sensors sit."""
    issues: list[FeederIssue] = []
    s = m.scenarios
    shapes = {"der": (s, len(feeder.ders)), "head": (s, 3), "load": (s, len(feeder.loads))}
    names: dict[str, NDArray[Any]] = {"der": feeder.ders.name, "head": np.array(["a", "b", "c"]),
                                      "load": feeder.loads.name}
    for field in Measurements.__slots__:
        r: Reading = getattr(m, field)
        kind = field.split("_")[0]
        if r.value.shape != shapes[kind]:
            issues.append(FeederIssue(kind, field, (), f"expected shape {shapes[kind]}, got {r.value.shape}"))
            continue
        present = r.present
        bad_sigma = present & ~(np.isfinite(r.sigma) & (r.sigma > 0))
        _flag(issues, bad_sigma, kind, field, names[kind], "sigma must be a finite number > 0 where a value is given")
        _flag(issues, np.isinf(r.value), kind, field, names[kind], "value must be finite (NaN = not measured)")
        if field.endswith("_v"):
            _flag(issues, present & ~(r.value > 0), kind, field, names[kind], "voltage must be > 0 pu")
    for field in ("head_p", "head_q", "head_v"):
        r = getattr(m, field)
        if r.value.shape == (s, 3):
            partial = r.present.any(axis=1) & ~r.present.all(axis=1)
            if partial.any():
                rows = tuple(str(i) for i in np.flatnonzero(partial))
                issues.append(FeederIssue("head", field, rows, "give all three phases or none (scenario rows)"))
    return issues


def _flag(issues: list[FeederIssue], bad: NDArray[np.bool_], component: str, field: str, names: NDArray[Any],
          message: str) -> None:
    if bad.any():
        issues.append(FeederIssue(component, field, tuple(str(n) for n in names[bad.any(axis=0)]), message))
